#!/usr/bin/env python3
"""Resume training from lossy-restored checkpoints, beside the exact run.

Trains the model of examples/train_checkpoints.py (preset "tiny" by
default) for --epochs epochs, saving model, Adam state and data-order RNG
after every epoch into one tpde store per bound: lossless, and lossy at each
--bounds value (every float element of model and optimizer state within E;
the step counters and RNG state are integers and stay exact). Then, for
every store, restores the checkpoint of epoch --resume-at, resumes training
to the end, and prints the per-epoch loss of each resumed run beside the
uninterrupted run's, with the stores' sizes.

    ~/.cache/tpde/venv/bin/python examples/lossy_resume.py
    ~/.cache/tpde/venv/bin/python examples/lossy_resume.py --bounds 1e-2 1e-3 1e-4 --epochs 8

The lossless store must resume bit for bit (the script checks it); the
lossy ones show how far a bounded perturbation of the weights and the Adam
moments moves the rest of the run.

Needs torch and the tpde package (pip install ./bindings/python).
"""

import argparse
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F

import tpde

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_checkpoints import PRESETS, TinyLM  # noqa: E402


def train(cfg, epochs, stores=None, resume=None, seed=0):
    """Per-epoch mean losses of epochs [start, epochs]; saves each epoch into
    every (store, bound) of `stores`, or resumes from `resume` = (store, epoch)."""
    torch.manual_seed(seed)
    model = TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], cfg["ff"], cfg["seq"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(seed + 1)
    data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1), generator=gen)
    steps = (cfg["samples"] + cfg["batch"] - 1) // cfg["batch"]
    start = 1
    if resume is not None:
        store, epoch = resume
        state = store.load(epoch)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = epoch + 1
    losses = {}
    for epoch in range(start, epochs + 1):
        model.train()
        perm = torch.randperm(cfg["samples"], generator=gen)
        total = 0.0
        for s in range(steps):
            batch = data[perm[s * cfg["batch"]:(s + 1) * cfg["batch"]]]
            x, y = batch[:, :-1], batch[:, 1:]
            loss = F.cross_entropy(model(x).reshape(-1, cfg["vocab"]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        losses[epoch] = total / cfg["samples"]
        for store, bound in stores or []:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state()}
            kind, value = bound if bound else (None, None)
            store.save(epoch, state, max_abs_error=value if kind == "abs" else None,
                       max_rel_error=value if kind == "rel" else None)
    return losses


def stored_bytes(store):
    return sum(f["stored_len"] for s in store.manifest()["steps"] for f in s["files"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--resume-at", type=int, default=2)
    ap.add_argument("--bounds", type=float, nargs="*", default=[1e-2, 1e-3, 1e-4],
                    help="absolute bounds (max_abs_error)")
    ap.add_argument("--rel-bounds", type=float, nargs="*", default=[1e-2, 1e-3],
                    help="bounds relative to each tensor's RMS (max_rel_error)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not 1 <= args.resume_at < args.epochs:
        raise SystemExit("--resume-at must be an epoch before the last")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = dict(PRESETS[args.preset])

    root = tempfile.mkdtemp(prefix="tpde-lossy-resume-")
    try:
        bounds = [("abs", b) for b in args.bounds] + [("rel", b) for b in args.rel_bounds]
        stores = [(tpde.Store(os.path.join(root, "exact")), None)]
        stores += [(tpde.Store(os.path.join(root, f"{k}{b:g}")), (k, b)) for k, b in bounds]
        exact = train(cfg, args.epochs, stores=stores)
        runs = {}
        for store, bound in stores:
            runs[bound] = train(cfg, args.epochs, resume=(store, args.resume_at))
        ok = all(runs[None][e] == exact[e] for e in runs[None])
        names = ["uninterrupted", "lossless"] + [
            f"E={b:g}" if k == "abs" else f"R={b:g}xRMS" for k, b in bounds]
        print(f"preset {args.preset}, {args.epochs} epochs, resumed after epoch {args.resume_at}\n")
        print(f"{'epoch':>5} " + " ".join(f"{n:>14}" for n in names))
        for e in range(1, args.epochs + 1):
            cells = [f"{exact[e]:>14.6f}"]
            for _store, bound in stores:
                v = runs[bound].get(e)
                cells.append(f"{v:>14.6f}" if v is not None else f"{'(restored)':>14}")
            print(f"{e:>5} " + " ".join(cells))
        print(f"\n{'store MB':>5} {'':>14} " + " ".join(
            f"{stored_bytes(s) / 1e6:>14.3f}" for s, _ in stores))
        print(f"\nlossless resume repeats the uninterrupted losses bit for bit: {ok}")
        if not ok:
            return 1
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
