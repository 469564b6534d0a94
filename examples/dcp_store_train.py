#!/usr/bin/env python3
"""Sharded 2-process training whose torch.distributed.checkpoint (DCP) saves go
straight into a tpde store: no checkpoint folder is written anywhere.

The two processes (gloo on 127.0.0.1, CPU) train examples/dcp_train.py's
FSDP2-sharded TinyLM with AdamW. Every --save-every steps both call

    dcp.async_save(state, storage_writer=tpde.dcp.StoreWriter(STORE, step=N))

(``dcp.save`` with --sync; the async saves run their collectives on a
process group of their own, as DCP asks): each rank codes its own shards against the
shards it saved last, the coordinator commits the step. Training goes on
while a save runs; the next save first waits for the previous one. Then both
ranks build a new, differently initialised model and optimizer and
``dcp.load`` the last step through ``tpde.dcp.StoreReader``, and check that
every local shard equals, bit for bit, what the training held when it saved.
Rank 0 prints the store's steps (keyframes, deltas, bytes) and the time the
training loop spent blocked in each save.

    ~/.cache/tpde/venv/bin/python examples/dcp_store_train.py --store /tmp/run.tpde
    ~/.cache/tpde/venv/bin/python examples/dcp_store_train.py --store s3://bucket/run \\
        --size medium --steps 60 --save-every 10

--store is a folder or s3://bucket/prefix that holds no steps yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcp_train import SIZES, WORLD, _local, _setup, _sharded_model, free_port, save_steps  # noqa: E402


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _worker(rank: int, port: int, cfg: dict, a: dict) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    import tpde.dcp

    mesh = _setup(rank, port, a["threads"])
    model, opt = _sharded_model(cfg, mesh, a["seed"], a["lr"])
    data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1),
                         generator=torch.Generator().manual_seed(a["seed"] + 1))
    saves = set(save_steps(a["steps"], a["save_every"]))
    # async_save runs its collectives in a background thread: on a group of
    # its own, or they would interleave with FSDP's on the default group.
    ckpt_group = dist.new_group(backend="gloo")
    expected, blocked, pending = None, [], None
    for step in range(1, a["steps"] + 1):
        order = torch.randperm(cfg["samples"], generator=torch.Generator().manual_seed(
            a["seed"] * 100003 + step))[: WORLD * cfg["batch"]]
        batch = data[order[rank * cfg["batch"]:(rank + 1) * cfg["batch"]]]
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, cfg["vocab"]),
                               batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in saves:
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": step}
            expected = _local(state)  # what this rank holds now
            t = time.perf_counter()
            if pending is not None:
                pending.result()  # one save in flight at a time
            writer = tpde.dcp.StoreWriter(a["store"], step=step)
            if a["sync"]:
                dcp.save(state, storage_writer=writer)
            else:
                pending = dcp.async_save(state, storage_writer=writer,
                                         process_group=ckpt_group)
            blocked.append(time.perf_counter() - t)
    if pending is not None:
        pending.result()
    last = max(saves)
    # A fresh, differently initialised model and optimizer, loaded from the store.
    model, opt = _sharded_model(cfg, mesh, a["seed"] + 12345, a["lr"])
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "step": -1}
    t = time.perf_counter()
    dcp.load(state, storage_reader=tpde.dcp.StoreReader(a["store"], step=last))
    load_s = time.perf_counter() - t
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    msd, osd = get_state_dict(model, opt)
    got = _local({"model": msd, "optim": osd, "step": state["step"]})
    if state["step"] != last or sorted(got) != sorted(expected):
        raise AssertionError(f"rank {rank}: loaded step {state['step']} with other keys")
    for k, want in expected.items():
        if got[k].dtype != want.dtype or got[k].shape != want.shape or \
                _bits(got[k]) != _bits(want):
            raise AssertionError(f"rank {rank}: {k} differs after dcp.load")
    with open(os.path.join(a["out"], f"rank-{rank}.json"), "w") as f:
        json.dump({"blocked": blocked, "load_s": load_s, "tensors": len(expected)}, f)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="a folder or s3://bucket/prefix, no steps yet")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--sync", action="store_true", help="dcp.save instead of dcp.async_save")
    args = ap.parse_args()
    import tpde

    if tpde.Store(args.store).steps():
        raise SystemExit(f"store {args.store} already holds steps: give a new one")
    cfg = dict(SIZES[args.size])
    with tempfile.TemporaryDirectory() as out:
        a = dict(vars(args), out=out)
        mp.spawn(_worker, args=(free_port(), cfg, a), nprocs=WORLD, join=True)
        ranks = []
        for r in range(WORLD):
            with open(os.path.join(out, f"rank-{r}.json")) as f:
                ranks.append(json.load(f))
    m = tpde.Store(args.store).manifest()
    mode = "dcp.save" if args.sync else "dcp.async_save"
    print(f"{WORLD} ranks (FSDP2, gloo), {args.size} model with AdamW, {mode} into {args.store}")
    print(f"{'step':>6} {'kind':>8} {'DCP bytes':>11} {'stored':>9} {'ratio':>6} {'blocked':>9}")
    for k, s in enumerate(m["steps"]):
        orig = sum(f["len"] for f in s["files"])
        stored = sum(f["stored_len"] for f in s["files"])
        kind = "keyframe" if s["reference"] is None else f"delta<{s['reference']}"
        worst = max(r["blocked"][k] for r in ranks)
        print(f"{s['step']:>6} {kind:>8} {orig:>11,} {stored:>9,} {orig / stored:>6.2f} "
              f"{worst * 1000:>7.1f} ms")
    print(f"dcp.load of step {m['steps'][-1]['step']} through StoreReader into a new model: "
          f"{max(r['load_s'] for r in ranks):.2f} s, every local shard ({ranks[0]['tensors']} "
          f"tensors per rank) bit-identical to what was saved")
    report = tpde.Store(args.store).verify()
    if not report.ok:
        raise SystemExit(f"verify: {report.problems}")
    print(f"verify: {report.steps} steps, {report.files} files, all intact")


if __name__ == "__main__":
    main()
