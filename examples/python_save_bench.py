#!/usr/bin/env python3
"""Time tpde.Store.save and load against safetensors and torch.save/load on a real run.

For every epoch of a run of examples/train_checkpoints.py (weights/ and adam/),
rebuilds the model's state_dict and a real Adam's state_dict, then in the same
loop and on the same disk:

  * safetensors.torch.save_file of the same tensors (model + Adam moments),
  * tpde.Store.save(step, {"model": ..., "optimizer": ...}) into one store,

and prints per epoch the seconds and bytes of each, and the totals. tpde's
save fsyncs (durability); save_file does not, so a final `sync` is timed
separately for the safetensors files (and the torch.save files below).

In the same loop it also times torch.save of the same state dict, and the
loads of what was just written: safetensors.torch.load_file, tpde
Store.load(step) and torch.load(weights_only=True) -- all three from a warm
page cache, right after their save -- and prints each save and load as a
ratio to safetensors' time (below 1: faster than safetensors).

    ~/.cache/tpde/venv/bin/python examples/python_save_bench.py --run /tmp/tpde-notes

Needs a release build of the tpde package in that venv (`pip install
./bindings/python`, or `VIRTUAL_ENV=... maturin develop --release -m
bindings/python/Cargo.toml`; ./test.sh installs a debug build, about ten
times slower), torch and safetensors.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

import tpde

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_checkpoints import build_model, epoch_files, optimizer_state, read_metadata  # noqa: E402


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="folder with weights/ and adam/")
    ap.add_argument("--out", help="scratch folder (default: a temporary one)")
    ap.add_argument("--keyframe-every", type=int, default=10)
    args = ap.parse_args()

    weights = epoch_files(os.path.join(args.run, "weights"))
    adams = epoch_files(os.path.join(args.run, "adam"))
    epochs = sorted(e for e in weights if e in adams)
    if not epochs:
        raise SystemExit(f"{args.run}: no epoch has both weights and Adam state")
    meta = read_metadata(weights[epochs[0]])
    model, _ = build_model(weights[epochs[0]], meta)
    lr = float(meta.get("lr", 1e-3))
    n_params = sum(p.numel() for p in model.parameters())

    scratch = args.out or tempfile.mkdtemp(prefix="tpde-save-bench-")
    st_dir = os.path.join(scratch, "safetensors")
    os.makedirs(st_dir, exist_ok=True)
    pt_dir = os.path.join(scratch, "torch")
    os.makedirs(pt_dir, exist_ok=True)
    store = tpde.Store(os.path.join(scratch, "store"), keyframe_every=args.keyframe_every)
    print(f"model: {n_params:,} parameters ({meta.get('preset')}), epochs {epochs[0]}..{epochs[-1]}")
    print(f"{'epoch':>5} {'safetensors s':>14} {'tpde s':>8} {'ratio of times':>15} "
          f"{'safetensors MB':>15} {'tpde MB':>8}")
    t_st, t_tp = [], []
    # Per epoch: torch.save, and the loads of safetensors, tpde and torch.
    t_pt, l_st, l_tp, l_pt = [], [], [], []
    for e in epochs:
        model.load_state_dict(load_file(weights[e]))
        state = {"model": model.state_dict(), "optimizer": optimizer_state(model, lr, adams[e])}
        flat = dict(state["model"])
        for i, s in state["optimizer"]["state"].items():
            for k, v in s.items():
                flat[f"optimizer.{i}.{k}"] = v
        path = os.path.join(st_dir, f"epoch-{e:02d}.safetensors")
        t0 = time.perf_counter()
        save_file(flat, path)
        t1 = time.perf_counter()
        store.save(e, state)
        t2 = time.perf_counter()
        pt_path = os.path.join(pt_dir, f"epoch-{e:02d}.pt")
        torch.save(state, pt_path)
        t3 = time.perf_counter()
        load_file(path)
        t4 = time.perf_counter()
        store.load(e)
        t5 = time.perf_counter()
        torch.load(pt_path, weights_only=True)
        t6 = time.perf_counter()
        t_st.append(t1 - t0)
        t_tp.append(t2 - t1)
        t_pt.append(t3 - t2)
        l_st.append(t4 - t3)
        l_tp.append(t5 - t4)
        l_pt.append(t6 - t5)
        stored = store.manifest()["steps"][-1]
        tp_bytes = sum(f["stored_len"] for f in stored["files"])
        print(f"{e:>5} {t1 - t0:>14.3f} {t2 - t1:>8.3f} {(t2 - t1) / (t1 - t0):>14.1f}x "
              f"{os.path.getsize(path) / 1e6:>15.2f} {tp_bytes / 1e6:>8.2f}")
    t0 = time.perf_counter()
    os.sync()
    sync = time.perf_counter() - t0
    st_total = dir_bytes(st_dir)
    pt_total = dir_bytes(pt_dir)
    tp_total = sum(f["stored_len"] for s in store.manifest()["steps"] for f in s["files"])
    print(f"median: safetensors.save_file {statistics.median(t_st):.3f} s, "
          f"tpde Store.save {statistics.median(t_tp):.3f} s "
          f"({statistics.median(t_tp) / statistics.median(t_st):.1f}x); final sync {sync:.3f} s")
    print(f"total bytes: safetensors {st_total:,}, tpde store {tp_total:,} "
          f"({st_total / tp_total:.3f}x smaller)")

    print("\nsaves and loads, seconds (and ratio to safetensors' time):")
    print(f"{'epoch':>5} {'torch.save':>16} {'load_file':>10} {'Store.load':>16} "
          f"{'torch.load':>16}")
    for i, e in enumerate(epochs):
        print(f"{e:>5} {t_pt[i]:>9.3f} ({t_pt[i] / t_st[i]:>4.1f}x) {l_st[i]:>10.3f} "
              f"{l_tp[i]:>9.3f} ({l_tp[i] / l_st[i]:>4.1f}x) "
              f"{l_pt[i]:>9.3f} ({l_pt[i] / l_st[i]:>4.1f}x)")
    med = statistics.median
    print(f"median save, ratio to safetensors.save_file ({med(t_st):.3f} s): "
          f"tpde Store.save {med(t_tp) / med(t_st):.2f}x, torch.save {med(t_pt) / med(t_st):.2f}x "
          f"({med(t_pt):.3f} s)")
    print(f"median load, ratio to safetensors.load_file ({med(l_st):.3f} s): "
          f"tpde Store.load {med(l_tp) / med(l_st):.2f}x ({med(l_tp):.3f} s), "
          f"torch.load {med(l_pt) / med(l_st):.2f}x ({med(l_pt):.3f} s)")
    print(f"torch.save bytes: {pt_total:,} ({pt_total / tp_total:.3f}x the tpde store)")
    back = store.load(epochs[-1])
    same = all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    print(f"last epoch restored exactly: {same}")
    if not args.out:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
