"""Writes ref.pt and cur.pt, the inputs of the frozen version-2 samples.

    ~/.cache/tpde/venv/bin/python make_inputs.py

Two torch.save archives of the same structure (an optimizer-like nested
dict: F32 moments, a BF16 and an F16 tensor, an I64 counter, a bool mask);
cur changes a few percent of the elements of some tensors by a few ULPs,
replaces one tensor by a differently sized one, and adds one.
"""
import torch

g = torch.Generator().manual_seed(20261130)


def nudge(t, frac):
    bits = t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)
    mask = torch.rand(t.shape, generator=g) < frac
    step = torch.randint(-3, 4, t.shape, generator=g, dtype=bits.dtype)
    return (bits + mask.to(bits.dtype) * step).view(t.dtype)


ref = {
    "state": {
        0: {"step": torch.tensor(10.0),
            "exp_avg": torch.randn(64, 33, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(64, 33, generator=g) * 1e-6},
        1: {"step": torch.tensor(10.0),
            "exp_avg": torch.randn(257, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(257, generator=g) * 1e-6},
    },
    "bf16": torch.randn(300, generator=g).to(torch.bfloat16),
    "f16": torch.randn(40, generator=g).to(torch.float16),
    "count": torch.arange(50, dtype=torch.int64),
    "mask": torch.rand(77, generator=g) < 0.5,
    "gone": torch.randn(5, generator=g),
    "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
}
torch.save(ref, "ref.pt")

cur = {
    "state": {
        0: {"step": torch.tensor(11.0),
            "exp_avg": nudge(ref["state"][0]["exp_avg"], 0.05),
            "exp_avg_sq": nudge(ref["state"][0]["exp_avg_sq"], 0.3)},
        1: {"step": torch.tensor(11.0),
            "exp_avg": ref["state"][1]["exp_avg"].clone(),
            "exp_avg_sq": nudge(ref["state"][1]["exp_avg_sq"], 0.02)},
    },
    "bf16": nudge(ref["bf16"], 0.1),
    "f16": ref["f16"].clone(),
    "count": torch.arange(50, dtype=torch.int64) + 1,
    "mask": ref["mask"].clone(),
    "gone": torch.randn(9, generator=g),
    "new": torch.randn(12, generator=g),
    "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
}
torch.save(cur, "cur.pt")
