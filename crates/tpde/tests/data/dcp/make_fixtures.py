"""Writes the torch.distributed.checkpoint fixtures of `src/archive.rs` (run
once; the outputs are committed).

    ~/.cache/tpde/venv/bin/python make_fixtures.py

`step-1/` and `step-2/` are what `torch.distributed.checkpoint.save` writes in
one process (no process group) for a Linear(16, 8) + LayerNorm(8) model and its
Adam state after one and two steps: `.metadata` and `__0_0.distcp`, the latter
a run of torch.save archives, one per tensor and per pickled value.
`expected.safetensors` holds each saved tensor (names `<step>/<fqn>`), so tests
compare the storages tpde finds with them. `README.md` lists the sha256 of
every file. With torch 2.15.0 the .distcp files come out the same every run;
`.metadata` holds a random save id.
"""
import hashlib
import os

import safetensors.torch
import torch
import torch.distributed.checkpoint as dcp

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(99)
    expected = {}
    for step in (1, 2):
        loss = model(torch.randn(4, 16, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = {"model": model.state_dict(), "optim": opt.state_dict()}
        dcp.save(state, checkpoint_id=os.path.join(HERE, f"step-{step}"), no_dist=True)
        for k, v in model.state_dict().items():
            expected[f"step-{step}/model.{k}"] = v.detach().clone().contiguous()
        for i, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                expected[f"step-{step}/optim.state.{i}.{k}"] = v.detach().clone().contiguous()
    safetensors.torch.save_file(expected, os.path.join(HERE, "expected.safetensors"))
    lines = ["# DCP fixtures (written by make_fixtures.py)", "", "| file | sha256 |", "|---|---|"]
    for root, _, files in sorted(os.walk(HERE)):
        for f in sorted(files):
            if f in ("README.md", "make_fixtures.py"):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, HERE)
            lines.append(f"| {rel} | {hashlib.sha256(open(p, 'rb').read()).hexdigest()} |")
    open(os.path.join(HERE, "README.md"), "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
