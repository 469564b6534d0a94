#!/usr/bin/env python3
"""How long checkpointing blocks a training loop, and how many bytes each
checkpoint takes, for torch.save, torch.distributed.checkpoint (DCP) and tpde.

Each method trains its own run from the same seed (so every method sees the
same states), --steps-between real optimizer steps before each of
--checkpoints checkpoints, and checkpoints with:

    torch.save          torch.save(state, FILE) (FSDP: each rank its local shards)
    dcp                 dcp.save with FileSystemWriter(DIR)
    dcp+zstd            the same with its zstd extension (torch's _extension.ZStandard;
                        needs the zstandard or pyzstd package)
    dcp async           dcp.async_save with FileSystemWriter(DIR)
    tpde.dcp            dcp.save with tpde.dcp.StoreWriter(store, step=N)
    tpde.dcp async      dcp.async_save with tpde.dcp.StoreWriter(store, step=N)
    Store.save          tpde.Store(store).save(N, state) (FSDP: a store per rank)
    Store.save async    the same with blocking=False (a concurrent.futures.Future)

"blocked" is the wall time from the call until it returns control to the
training loop. For the async methods the loop then trains on; before the next
checkpoint (or at the end) it waits for the previous one's future ("waited");
"total" is the time from the call until the future completed. "stored" is the
checkpoint's bytes: the file, the DCP folder, or for a store the step's
stored_len in its manifest. A method the installed packages lack is a row
saying so. The folders go under --out (/dev/shm by default, to leave the disk
out); each file and folder is deleted once measured, unless --keep.

Workloads:
  single  one process: the research notes' model of examples/train_checkpoints.py
          (preset "notes": 8.3M FP32 parameters, Adam: about 100 MB a
          checkpoint), with a smaller batch (--notes-batch) so that it runs in a
          few minutes on 2 cores.
  fsdp    2 processes (gloo, FSDP2 fully_shard on a CPU mesh, AdamW): the model
          of examples/dcp_train.py (--fsdp-size).

    ~/.cache/tpde/venv/bin/python examples/dcp_store_bench.py --checkpoints 4 --steps-between 3
    ~/.cache/tpde/venv/bin/python examples/dcp_store_bench.py --workloads fsdp --json /tmp/b.json

--verify (single process) loads every checkpoint back after the run and
checks it is bit-identical to what was passed at the call (sha256 of every
tensor): it catches an async save that reads the tensors after they changed.
Times vary from run to run; sizes do not (up to DCP's .metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from datetime import timedelta

import warnings

import torch
import torch.nn.functional as F

# dcp.save/load in one process without a process group say so at every call.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

METHODS = ["torch.save", "dcp", "dcp+zstd", "dcp async", "tpde.dcp", "tpde.dcp async",
           "Store.save", "Store.save async"]


# -- helpers -------------------------------------------------------------------


def tree_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def records(obj, prefix=""):
    """{path: sha256 of dtype, shape and bytes} of every tensor of a state,
    and repr of every other value (DTensors: the local shard)."""
    out = {}
    if hasattr(obj, "to_local") and isinstance(obj, torch.Tensor):
        obj = obj.to_local()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h = hashlib.sha256(f"{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
        out[prefix] = h.hexdigest()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(records(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(records(v, f"{prefix}/{i}"))
    else:
        out[prefix] = repr(obj)
    return out


def empty_like_state(obj):
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj)
    if isinstance(obj, dict):
        return {k: empty_like_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [empty_like_state(v) for v in obj]
    return obj


def zstd_reason():
    try:
        from torch.distributed.checkpoint._extension import ZStandard
    except ImportError:
        return "n/a: this torch has no torch.distributed.checkpoint._extension.ZStandard"
    if not ZStandard.is_available():
        return "n/a: zstandard (or pyzstd) is not installed"
    return None


def tpde_dcp_reason():
    try:
        import tpde.dcp  # noqa: F401
    except ImportError as e:
        return f"n/a: no tpde.dcp in this tpde ({e})"
    return None


def blocking_false_reason():
    try:
        import tpde
    except ImportError as e:
        return f"n/a: no tpde ({e})"
    if "blocking" not in inspect.signature(tpde.Store.save).parameters:
        return "n/a: this tpde's Store.save has no blocking="
    return None


# -- the methods ---------------------------------------------------------------


class Method:
    """One way to checkpoint. start() is the call the loop is blocked by; it
    returns a future for the async ones. stored() is the checkpoint's bytes
    this rank accounts for (the sum over ranks is reported)."""

    is_async = False

    def __init__(self, name, root, rank, world, pg):
        self.name, self.root, self.rank, self.world, self.pg = name, root, rank, world, pg
        os.makedirs(root, exist_ok=True)

    def reason(self):
        return None

    def start(self, step, state):
        raise NotImplementedError

    def stored(self, step):
        raise NotImplementedError

    def cleanup(self, step):
        pass

    def load(self, step, like):
        raise NotImplementedError


class TorchSave(Method):
    def path(self, step):
        return os.path.join(self.root, f"step-{step}-rank-{self.rank}.pt")

    def start(self, step, state):
        torch.save(local_state(state), self.path(step))

    def stored(self, step):
        return os.path.getsize(self.path(step))

    def cleanup(self, step):
        os.remove(self.path(step))

    def load(self, step, like):
        return torch.load(self.path(step), weights_only=False)


def local_state(obj):
    """A state with every DTensor replaced by its local shard (torch.save of
    an FSDP state)."""
    if isinstance(obj, torch.Tensor) and hasattr(obj, "to_local"):
        return obj.to_local()
    if isinstance(obj, dict):
        return {k: local_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [local_state(v) for v in obj]
    return obj


class DcpFolder(Method):
    zstd = False

    def __init__(self, *a, is_async=False, zstd=False):
        super().__init__(*a)
        self.is_async, self.zstd = is_async, zstd

    def reason(self):
        return zstd_reason() if self.zstd else None

    def folder(self, step):
        return os.path.join(self.root, f"checkpoint-{step}")

    def writer(self, step):
        from torch.distributed.checkpoint import FileSystemWriter

        if self.zstd:
            from torch.distributed.checkpoint._extension import ZStandard

            return FileSystemWriter(self.folder(step), _extensions=[ZStandard()])
        return FileSystemWriter(self.folder(step))

    def start(self, step, state):
        import torch.distributed.checkpoint as dcp

        if self.is_async:
            return dcp.async_save(state, storage_writer=self.writer(step), process_group=self.pg)
        dcp.save(state, storage_writer=self.writer(step))

    def stored(self, step):
        return tree_size(self.folder(step)) if self.rank == 0 else 0

    def cleanup(self, step):
        if self.rank == 0:
            shutil.rmtree(self.folder(step))

    def load(self, step, like):
        import torch.distributed.checkpoint as dcp

        state = empty_like_state(like)
        dcp.load(state, storage_reader=dcp.FileSystemReader(self.folder(step)))
        return state


class TpdeDcp(Method):
    def __init__(self, *a, is_async=False):
        super().__init__(*a)
        self.is_async = is_async
        self._store = None

    def reason(self):
        return tpde_dcp_reason()

    def store(self):
        import tpde

        if self._store is None:
            self._store = tpde.Store(os.path.join(self.root, "store"))
        return self._store

    def start(self, step, state):
        import torch.distributed.checkpoint as dcp
        import tpde.dcp

        writer = tpde.dcp.StoreWriter(self.store(), step=step)
        if self.is_async:
            return dcp.async_save(state, storage_writer=writer, process_group=self.pg)
        dcp.save(state, storage_writer=writer)

    def stored(self, step):
        if self.rank != 0:
            return 0
        import tpde

        m = tpde.Store(os.path.join(self.root, "store"), create=False).manifest()
        rec = next(s for s in m["steps"] if s["step"] == step)
        return sum(f["stored_len"] for f in rec["files"])

    def load(self, step, like):
        import torch.distributed.checkpoint as dcp
        import tpde.dcp

        state = empty_like_state(like)
        dcp.load(state, storage_reader=tpde.dcp.StoreReader(self.store(), step=step))
        return state


class StoreSave(Method):
    def __init__(self, *a, is_async=False):
        super().__init__(*a)
        self.is_async = is_async
        self._store = None

    def reason(self):
        if self.is_async:
            return blocking_false_reason()
        try:
            import tpde  # noqa: F401
        except ImportError as e:
            return f"n/a: no tpde ({e})"
        return None

    def location(self):
        return os.path.join(self.root, f"store-rank-{self.rank}")

    def start(self, step, state):
        import tpde

        if self._store is None:
            self._store = tpde.Store(self.location())
        if self.is_async:
            return self._store.save(step, local_state(state), blocking=False)
        self._store.save(step, local_state(state))

    def stored(self, step):
        rec = next(s for s in self._store.manifest()["steps"] if s["step"] == step)
        return sum(f["stored_len"] for f in rec["files"])

    def load(self, step, like):
        import tpde

        return tpde.Store(self.location(), create=False).load(step)


def make_method(name, root, rank, world, pg):
    args = (name, root, rank, world, pg)
    return {
        "torch.save": lambda: TorchSave(*args),
        "dcp": lambda: DcpFolder(*args),
        "dcp+zstd": lambda: DcpFolder(*args, zstd=True),
        "dcp async": lambda: DcpFolder(*args, is_async=True),
        "tpde.dcp": lambda: TpdeDcp(*args),
        "tpde.dcp async": lambda: TpdeDcp(*args, is_async=True),
        "Store.save": lambda: StoreSave(*args),
        "Store.save async": lambda: StoreSave(*args, is_async=True),
    }[name]()


# -- the training runs ---------------------------------------------------------


class NotesRun:
    """The notes model (examples/train_checkpoints.py, preset notes) with Adam,
    in this process."""

    def __init__(self, args):
        from train_checkpoints import PRESETS, TinyLM

        self.cfg = dict(PRESETS["notes"], batch=args.notes_batch)
        self.args = args
        cfg = self.cfg
        torch.manual_seed(args.seed)
        self.model = TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], cfg["ff"],
                            cfg["seq"])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"])
        self.data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1),
                                  generator=torch.Generator().manual_seed(args.seed + 1))
        self.model.train()

    def params(self):
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self, step):
        cfg = self.cfg
        idx = torch.randint(0, cfg["samples"], (cfg["batch"],),
                            generator=torch.Generator().manual_seed(self.args.seed * 7919 + step))
        batch = self.data[idx]
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(self.model(x).reshape(-1, cfg["vocab"]), y.reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def state(self, step):
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "step": step}


class FsdpRun:
    """examples/dcp_train.py's sharded TinyLM and AdamW, on this rank."""

    def __init__(self, args, rank, world, mesh):
        import dcp_train

        self.cfg = dict(dcp_train.SIZES[args.fsdp_size])
        self.args, self.rank, self.world = args, rank, world
        self.model, self.opt = dcp_train._sharded_model(self.cfg, mesh, args.seed, 1e-3)
        cfg = self.cfg
        self.data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1),
                                  generator=torch.Generator().manual_seed(args.seed + 1))
        torch.manual_seed(args.seed * 1000 + 7 + rank)
        self.model.train()

    def params(self):
        return sum(p.numel() for p in self.model.parameters())  # local shards

    def train_step(self, step):
        cfg = self.cfg
        order = torch.randperm(cfg["samples"], generator=torch.Generator().manual_seed(
            self.args.seed * 100003 + step))[: self.world * cfg["batch"]]
        batch = self.data[order[self.rank * cfg["batch"]:(self.rank + 1) * cfg["batch"]]]
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(self.model(x).reshape(-1, cfg["vocab"]), y.reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def state(self, step):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.opt)
        return {"model": msd, "optim": osd, "step": step}


def run_method(name, make_run, root, rank, world, pg, args, verify):
    """One training run checkpointed with one method: a row per checkpoint
    (this rank's numbers), or the reason the method is not available."""
    method = make_method(name, os.path.join(root, name.replace(" ", "-").replace("+", "-")),
                         rank, world, pg)
    reason = method.reason()
    if reason is not None:
        return {"method": name, "na": reason}
    run = make_run()
    rows, pending, expected = [], None, {}
    barrier = (lambda: torch.distributed.barrier()) if world > 1 else (lambda: None)

    def finish(p, wait_from):
        t = time.perf_counter()
        err = None
        try:
            p["future"].result()
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            err = f"{type(e).__name__}: {str(e)[:300]}"
        now = time.perf_counter()
        p["row"]["waited_s"] = now - t
        # The done callback may run just after result() returns: then it is now.
        p["row"]["total_s"] = (p["done_at"][0] if p["done_at"] else now) - p["t0"]
        if err:
            p["row"]["error"] = err
        complete(p["row"])

    def complete(row):
        barrier()  # every rank's part is written before rank 0 measures a folder
        if "error" not in row:
            row["stored_b"] = method.stored(row["step"])
            if not (args.keep or verify):
                method.cleanup(row["step"])

    t_train = 0.0
    for c in range(1, args.checkpoints + 1):
        t = time.perf_counter()
        for k in range(args.steps_between):
            run.train_step((c - 1) * args.steps_between + k + 1)
        t_train += time.perf_counter() - t
        step = c * args.steps_between
        if pending is not None:
            finish(pending, None)
            pending = None
        state = run.state(step)
        if verify:
            expected[step] = records(state)
        barrier()
        row = {"checkpoint": c, "step": step}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            fut = method.start(step, state)
        except BaseException as e:
            row["blocked_s"] = time.perf_counter() - t0
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            complete(row)
            continue
        row["blocked_s"] = time.perf_counter() - t0
        if fut is None:
            row["total_s"], row["waited_s"] = row["blocked_s"], 0.0
            complete(row)
        else:
            done_at = []
            fut.add_done_callback(lambda _f, d=done_at: d.append(time.perf_counter()))
            pending = {"future": fut, "t0": t0, "done_at": done_at, "row": row}
    if pending is not None:
        finish(pending, None)
    out = {"method": name, "rows": rows, "train_s": t_train}
    if verify:
        bad = []
        for step, want in expected.items():
            try:
                got = records(method.load(step, run.state(step)))
            except BaseException as e:
                bad.append(f"step {step}: load failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            if differ:
                bad.append(f"step {step}: {len(differ)} entries differ, e.g. {differ[:3]}")
        out["verify"] = bad or "ok"
        if not args.keep:
            for step in expected:
                try:
                    method.cleanup(step)
                except OSError:
                    pass
    barrier()  # every rank is done with the method's files
    if not args.keep and rank == 0:
        shutil.rmtree(method.root, ignore_errors=True)
    return out


def single_workload(args, root):
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = NotesRun(args)
    info = {"workload": "single", "world": 1, "params": probe.params(),
            "desc": f"notes model, {probe.params():,} FP32 parameters + Adam, batch "
                    f"{args.notes_batch}, {torch.get_num_threads()} threads"}
    del probe
    results = []
    for name in args.methods:
        print(f"[single] {name} ...", file=sys.stderr, flush=True)
        results.append(run_method(name, lambda: NotesRun(args), os.path.join(root, "single"),
                                  0, 1, None, args, args.verify))
    return info, results


def _fsdp_worker(rank, world, port, args, root, out_json):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (world,))
    pg = dist.new_group(backend="gloo", timeout=timedelta(seconds=120))  # for async saves
    results = []
    for name in args.methods:
        if rank == 0:
            print(f"[fsdp] {name} ...", file=sys.stderr, flush=True)
        res = run_method(name, lambda: FsdpRun(args, rank, world, mesh),
                         os.path.join(root, "fsdp"), rank, world, pg, args, False)
        gathered = [None] * world
        dist.all_gather_object(gathered, res)
        results.append(gathered)
    if rank == 0:
        with open(out_json, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def fsdp_workload(args, root):
    import torch.multiprocessing as mp

    import dcp_train

    world = 2
    cfg = dcp_train.SIZES[args.fsdp_size]
    from train_checkpoints import TinyLM

    params = sum(p.numel() for p in TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"],
                                           cfg["ff"], cfg["seq"]).parameters())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_json = os.path.join(root, "fsdp-results.json")
    os.makedirs(root, exist_ok=True)
    mp.spawn(_fsdp_worker, args=(world, port, args, root, out_json), nprocs=world, join=True)
    with open(out_json) as f:
        per_rank = json.load(f)
    results = []
    for gathered in per_rank:
        first = gathered[0]
        if "na" in first:
            results.append(first)
            continue
        rows = []
        for i, row in enumerate(first["rows"]):
            ranks = [g["rows"][i] for g in gathered]
            merged = dict(row)
            for key in ("blocked_s", "waited_s", "total_s"):
                vals = [r.get(key) for r in ranks]
                merged[key] = None if any(v is None for v in vals) else max(vals)
            errs = [f"rank {k}: {r['error']}" for k, r in enumerate(ranks) if "error" in r]
            if errs:
                merged["error"] = "; ".join(errs)
            else:
                merged["stored_b"] = sum(r.get("stored_b", 0) for r in ranks)
            rows.append(merged)
        results.append({"method": first["method"], "rows": rows,
                        "train_s": max(g["train_s"] for g in gathered)})
    info = {"workload": "fsdp", "world": world, "params": params,
            "desc": f"examples/dcp_train.py's model ({args.fsdp_size}), {params:,} FP32 "
                    f"parameters + AdamW, FSDP2 on 2 ranks (gloo), 1 thread each"}
    return info, results


# -- the tables ----------------------------------------------------------------


def fmt_s(v):
    return "-" if v is None else f"{v:.3f}"


def fmt_mb(v):
    return "-" if v is None else f"{v / 1e6:.2f}"


def print_tables(all_results, args):
    print(f"\n{args.checkpoints} checkpoints, {args.steps_between} optimizer steps apart; "
          f"files under {args.out}\n")
    for info, results in all_results:
        print(f"### {info['workload']}: {info['desc']}\n")
        print("| method | ckpt | step | blocked s | waited s | total s | stored MB | note |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for res in results:
            if "na" in res:
                print(f"| {res['method']} | | | | | | | {res['na']} |")
                continue
            for r in res["rows"]:
                note = r.get("error", "")
                print(f"| {res['method']} | {r['checkpoint']} | {r['step']} | "
                      f"{fmt_s(r.get('blocked_s'))} | {fmt_s(r.get('waited_s'))} | "
                      f"{fmt_s(r.get('total_s'))} | {fmt_mb(r.get('stored_b'))} | {note} |")
        print()
        base = next((sum(r.get("stored_b", 0) for r in res["rows"]) for res in results
                     if res["method"] == "torch.save" and "rows" in res), None)
        print("| method | mean blocked s | max blocked s | mean total s | first MB | "
              "later mean MB | all MB | vs torch.save | training s | verify |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for res in results:
            if "na" in res:
                print(f"| {res['method']} | {res['na']} | | | | | | | | |")
                continue
            rows = res["rows"]
            ok = [r for r in rows if "error" not in r]
            if not ok:
                print(f"| {res['method']} | failed: {rows[0].get('error', '?')[:200]} "
                      f"| | | | | | | | |")
                continue
            blocked = [r["blocked_s"] for r in ok]
            totals = [r["total_s"] for r in ok if r.get("total_s") is not None]
            stored = [r["stored_b"] for r in ok]
            later = stored[1:]
            allb = sum(stored)
            ratio = f"{base / allb:.2f}x" if base and len(ok) == len(rows) else "-"
            ver = res.get("verify", "-")
            ver = ver if isinstance(ver, str) else "; ".join(ver)[:200]
            print(f"| {res['method']} | {sum(blocked) / len(blocked):.3f} | {max(blocked):.3f} | "
                  f"{(sum(totals) / len(totals)) if totals else float('nan'):.3f} | "
                  f"{stored[0] / 1e6:.2f} | "
                  f"{(sum(later) / len(later) / 1e6) if later else float('nan'):.2f} | "
                  f"{allb / 1e6:.2f} | {ratio} | {res['train_s']:.1f} | {ver} |")
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoints", type=int, default=4, help="checkpoints per run (default 4)")
    ap.add_argument("--steps-between", type=int, default=3,
                    help="optimizer steps before each checkpoint (default 3)")
    ap.add_argument("--out", default="/dev/shm",
                    help="where the files go (a new folder is made in it; default /dev/shm)")
    ap.add_argument("--workloads", default="single,fsdp", help="single, fsdp or both (default)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"a comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--notes-batch", type=int, default=8,
                    help="batch size of the single-process notes run (the notes: 32; default 8)")
    ap.add_argument("--fsdp-size", default="medium", help="dcp_train.py's size (default medium)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the single-process run (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true",
                    help="single: load every checkpoint back and compare with what was saved")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    if args.checkpoints < 1 or args.steps_between < 1:
        ap.error("--checkpoints and --steps-between are at least 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {METHODS}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not set(workloads) <= {"single", "fsdp"}:
        ap.error("--workloads takes single, fsdp")
    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="tpde-dcp-bench-", dir=args.out)
    args.out = root
    all_results = []
    try:
        if "single" in workloads:
            all_results.append(single_workload(args, root))
        if "fsdp" in workloads:
            all_results.append(fsdp_workload(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_tables(all_results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()},
                       "workloads": [{"info": i, "results": r} for i, r in all_results]}, f,
                      indent=1)


if __name__ == "__main__":
    main()
