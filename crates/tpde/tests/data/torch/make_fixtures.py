"""Writes the torch.save fixtures of `src/archive.rs` (run once; the outputs are committed).

Run from this folder with the project's Python (torch, numpy, safetensors):

    ~/.cache/tpde/venv/bin/python make_fixtures.py

It writes a tiny Hugging Face Trainer-style checkpoint pair, `step-1/` and
`step-2/`, of a Linear(16, 8) + LayerNorm(8) model trained with Adam for one
and two steps. Each holds:

- `optimizer.pt`: torch.save of the Adam state_dict (per parameter: `step`,
  a 0-d F32 tensor, and `exp_avg`, `exp_avg_sq`);
- `scheduler.pt`: torch.save of a LambdaLR state_dict (no tensors at all);
- `rng_state.pth`: torch.save of {"python", "numpy", "cpu"} RNG states as the
  Trainer saves them (one uint8 tensor, the rest plain pickle);
- `model.safetensors`, `trainer_state.json`, `config.json`.

Beside them:

- `mixed.pt`: torch.save of a dict of small tensors of eight dtypes
  (storage keys "0".."7" in the dict's order);
- `expected.safetensors`: the same tensors, written independently by the
  safetensors library, so tests compare the bytes they find in the archives
  with these. Names are `<file>:<key>`, e.g. `step-2/optimizer.pt:1` holds
  the storage `optimizer/data/1` of `step-2/optimizer.pt`
  (`state.0.exp_avg`); torch.save numbers storages in the order it pickles
  them, and the script checks that order with pickletools;
- `deflated.zip`: `mixed.pt` rewritten by Python's zipfile (no 64-byte
  alignment), `mixed/data/0` deflated and everything else stored;
- `README.md`: the sha256 of every file written.

Everything is seeded: with torch 2.15.0 two runs wrote byte-identical files.
Other torch versions may write a different serialization_id, other entries or
another layout, so the committed files are the reference: never regenerate
them without committing the new README.md alongside.
"""
import hashlib
import io
import json
import os
import pickletools
import random
import zipfile

import numpy as np
import safetensors.torch
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def storage_keys(path):
    """Storage keys in pickle order, with their storage type, from pickletools."""
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
        assert len(pkl) == 1, pkl
        ops = list(pickletools.genops(z.read(pkl[0])))
    # Items between a MARK and its TUPLE, memoized values resolved.
    memo, found, stack = {}, [], []
    for op, arg, _pos in ops:
        name = op.name
        if name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif name == "MARK":
            stack.append("<mark>")
        elif name == "TUPLE":
            i = len(stack) - 1 - stack[::-1].index("<mark>")
            items, stack = stack[i + 1 :], stack[:i]
            if len(items) == 5 and items[0] == "storage":
                found.append((items[2], items[1]))
            stack.append(None)
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "GLOBAL"):
            stack.append(arg)
        else:
            stack.append(None)  # only the pushes above matter here
    return found


def model_and_adam():
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return model, opt, sched


def main():
    random.seed(1234)
    np.random.seed(1234)
    model, opt, sched = model_and_adam()
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(99)
    expected = {}
    for step in (1, 2):
        x = torch.randn(4, 16, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        # Advance the global RNGs too, so the two rng_state.pth differ.
        random.random()
        np.random.rand()
        torch.rand(1)

        out = os.path.join(HERE, f"step-{step}")
        os.makedirs(out, exist_ok=True)
        state = opt.state_dict()
        torch.save(state, os.path.join(out, "optimizer.pt"))
        torch.save(sched.state_dict(), os.path.join(out, "scheduler.pt"))
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
            os.path.join(out, "rng_state.pth"),
        )
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            os.path.join(out, "model.safetensors"),
            metadata={"format": "pt"},
        )
        with open(os.path.join(out, "trainer_state.json"), "w") as f:
            json.dump(
                {
                    "global_step": step,
                    "epoch": step / 2,
                    "log_history": [{"step": step, "loss": round(loss.item(), 6), "learning_rate": sched.get_last_lr()[0]}],
                    "max_steps": 2,
                },
                f,
                indent=2,
            )
            f.write("\n")
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"model_type": "tiny", "hidden_sizes": [16, 8], "layer_norm": True, "torch_dtype": "float32"}, f, indent=2)
            f.write("\n")

        # Storage keys: per parameter index p, in order step, exp_avg, exp_avg_sq.
        keys = storage_keys(os.path.join(out, "optimizer.pt"))
        assert [k for k, _ in keys] == [str(i) for i in range(3 * len(names))], keys
        for p in range(len(names)):
            for j, field in enumerate(("step", "exp_avg", "exp_avg_sq")):
                expected[f"step-{step}/optimizer.pt:{3 * p + j}"] = state["state"][p][field].reshape(-1).clone()
        keys = storage_keys(os.path.join(out, "rng_state.pth"))
        assert [k for k, _ in keys] == ["0"], keys
        expected[f"step-{step}/rng_state.pth:0"] = torch.random.get_rng_state().clone()

    mixed = {
        "f32": torch.linspace(-2, 2, 10, dtype=torch.float32),
        "f16": torch.linspace(-1, 1, 6, dtype=torch.float16),
        "bf16": torch.linspace(-3, 3, 5, dtype=torch.bfloat16),
        "i64": torch.arange(-3, 4, dtype=torch.int64) * 1_000_000_007,
        "i32": torch.arange(-4, 5, dtype=torch.int32) * 65537,
        "u8": torch.arange(0, 250, 25, dtype=torch.uint8),
        "bool": torch.tensor([True, False, False, True, True]),
        "f64": torch.tensor([1.0 / 3.0, -0.0, 1e300, -2.5], dtype=torch.float64).reshape(2, 2),
    }
    path = os.path.join(HERE, "mixed.pt")
    torch.save(mixed, path)
    keys = storage_keys(path)
    assert [k for k, _ in keys] == [str(i) for i in range(len(mixed))], keys
    for i, t in enumerate(mixed.values()):
        expected[f"mixed.pt:{i}"] = t.reshape(-1).clone()
    safetensors.torch.save_file(expected, os.path.join(HERE, "expected.safetensors"))

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(os.path.join(HERE, "deflated.zip"), "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename == "mixed/data/0" else zipfile.ZIP_STORED
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2026, 1, 1, 0, 0, 0)), src.read(info), compress_type=method)

    files = sorted(
        os.path.relpath(os.path.join(d, f), HERE)
        for d, _, fs in os.walk(HERE)
        for f in fs
        if f not in ("README.md", "make_fixtures.py")
    )
    lines = [
        "# torch.save fixtures of `src/archive.rs`",
        "",
        f"Written once by `make_fixtures.py` (see its docstring) with torch {torch.__version__},",
        f"numpy {np.__version__} and safetensors {safetensors.__version__}. sha256 of each file:",
        "",
    ]
    for f in files:
        with open(os.path.join(HERE, f), "rb") as fh:
            lines.append(f"- `{f}`: `{hashlib.sha256(fh.read()).hexdigest()}`")
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
