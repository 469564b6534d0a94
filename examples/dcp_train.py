#!/usr/bin/env python3
"""Sharded 2-process training with torch.distributed.checkpoint (DCP), its
checkpoints kept in a tpde store.

Two processes (torch.multiprocessing.spawn, backend gloo, CPU) train the small
Transformer language model of examples/train_checkpoints.py on fixed random
token sequences. The model is sharded across the two ranks with FSDP2
(``fully_shard`` on a 1-D CPU device mesh: every parameter and every AdamW
moment is a DTensor whose rows are split between the ranks). Every
--save-every steps they write a DCP checkpoint,

    RUN_DIR/checkpoint-N/.metadata        the global layout (written by rank 0)
    RUN_DIR/checkpoint-N/__0_0.distcp     rank 0's shards
    RUN_DIR/checkpoint-N/__1_0.distcp     rank 1's shards

with ``dcp.save({"model": ..., "optim": ..., "step": N}, checkpoint_id=...)``.
When training is done, rank 0 (after a barrier; rank 1 waits) adds every
checkpoint folder to the store (``tpde.Store(STORE).add(folder, N)``),
restores every step (``store.get(N, out)``), and checks that every file is
byte-identical to what DCP wrote (sha256). Then both ranks build a new,
differently initialised sharded model and optimizer, ``dcp.load`` the restored
copy of the last checkpoint (--load-step) and check that every local shard of
the model and the optimizer equals, bit for bit, what the training held when
it saved. This process prints a table of sizes and times.

Last, it shows what a .distcp file is made of (each tensor shard, and each
pickled value, is a whole ``torch.save`` zip, one after another, at the offsets
recorded in .metadata) and how the store coded each file (opaque bytes against
the same byte range of the previous step's file, or a "torch archive" when
tpde's zip reader takes the whole file for the last shard's zip). For
comparison the same tensors are also coded with ``tpde.encode`` as a
safetensors file (float tensors, each against the same tensor of the previous
step) and as their raw bytes one after another (opaque).

    ~/.cache/tpde/venv/bin/python examples/dcp_train.py --run-dir /tmp/dcp-run \\
        --store /tmp/dcp-run/store
    ~/.cache/tpde/venv/bin/python examples/dcp_train.py --size medium --steps 60 --save-every 10 \\
        --run-dir /tmp/dcp-med --store /tmp/dcp-med.tpde --keep

--store takes whatever ``tpde.Store`` takes (a local folder; an
``s3://bucket/prefix`` URL once stores support it); it must hold no steps yet.
Without --keep the checkpoint folders and restored copies are deleted at the
end (the store stays). Deterministic: the same arguments give the same losses
and the same .distcp bytes (one thread per process, fixed seeds); .metadata
differs from run to run, since DCP writes a random save_id (uuid4) and the
checkpoint's absolute path into it.

Needs torch with torch.distributed (gloo) and the tpde package
(pip install ./bindings/python).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import time
import zipfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_checkpoints import TinyLM  # noqa: E402

WORLD = 2

SIZES = {
    # For the test: 21,760 parameters (0.64 MB per checkpoint with AdamW's moments).
    "tiny": dict(vocab=64, dim=32, heads=2, layers=2, ff=64, seq=16, batch=8, samples=64),
    # The default: 135,040 parameters, as train_checkpoints.py's "tiny" (2.0 MB).
    "small": dict(vocab=256, dim=64, heads=4, layers=2, ff=256, seq=32, batch=16, samples=256),
    # 1,064,448 parameters (13.5 MB per checkpoint).
    "medium": dict(vocab=1024, dim=128, heads=4, layers=4, ff=512, seq=64, batch=16, samples=512),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"checkpoint-{step}")


def save_steps(steps: int, every: int):
    """The steps a checkpoint is written at: every `every` steps and the last."""
    out = list(range(every, steps + 1, every))
    if not out or out[-1] != steps:
        out.append(steps)
    return out


# -- the distributed part (runs in the spawned processes) --------------------


def _setup(rank: int, port: int, threads: int):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (WORLD,))


def _sharded_model(cfg: dict, mesh, seed: int, lr: float):
    """TinyLM with every encoder layer and the root sharded by FSDP2, and AdamW."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)  # the same full model on every rank, then sharded
    model = TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], cfg["ff"], cfg["seq"])
    for layer in model.encoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return model, opt


def _local(obj, prefix=""):
    """{path: local tensor} of a (nested) state dict: a DTensor's local shard."""
    from torch.distributed.tensor import DTensor

    out = {}
    if isinstance(obj, DTensor):
        out[prefix] = obj.to_local().detach().clone()
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_local(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_local(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


def _train(rank: int, mesh, cfg: dict, args_d: dict):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    t = time.perf_counter()
    model, opt = _sharded_model(cfg, mesh, args_d["seed"], args_d["lr"])
    data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1),
                         generator=torch.Generator().manual_seed(args_d["seed"] + 1))
    torch.manual_seed(args_d["seed"] * 1000 + 7 + rank)  # dropout, different per rank
    saves = set(save_steps(args_d["steps"], args_d["save_every"]))
    losses = []
    model.train()
    for step in range(1, args_d["steps"] + 1):
        # The same global batch order on both ranks; each takes its half.
        order = torch.randperm(cfg["samples"], generator=torch.Generator().manual_seed(
            args_d["seed"] * 100003 + step))[: WORLD * cfg["batch"]]
        batch = data[order[rank * cfg["batch"]:(rank + 1) * cfg["batch"]]]
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(model(x).reshape(-1, cfg["vocab"]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()  # FSDP2 reduce-scatters the gradients
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / WORLD)
        if step in saves:
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": step}
            dcp.save(state, checkpoint_id=checkpoint_dir(args_d["run_dir"], step))
            if step == args_d["load_step"]:
                # What this rank holds, to compare with what dcp.load gives back.
                torch.save(_local(state), os.path.join(args_d["run_dir"], "expected",
                                                       f"step-{step}-rank-{rank}.pt"))
    if rank == 0:
        with open(os.path.join(args_d["run_dir"], "train.json"), "w") as f:
            json.dump({"losses": losses, "seconds": time.perf_counter() - t}, f)


def _load(rank: int, mesh, cfg: dict, args_d: dict):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    t = time.perf_counter()
    # Another seed: a different initialisation, so a load that did nothing fails.
    model, opt = _sharded_model(cfg, mesh, args_d["seed"] + 12345, args_d["lr"])
    msd, osd = get_state_dict(model, opt)  # initialises the AdamW state (zeros)
    state = {"model": msd, "optim": osd, "step": -1}
    before = _local(state)
    dcp.load(state, checkpoint_id=args_d["load_dir"])
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    msd2, osd2 = get_state_dict(model, opt)
    got = _local({"model": msd2, "optim": osd2, "step": state["step"]})
    expected = torch.load(os.path.join(args_d["run_dir"], "expected",
                                       f"step-{args_d['load_step']}-rank-{rank}.pt"))
    if state["step"] != args_d["load_step"]:
        raise AssertionError(f"rank {rank}: loaded step {state['step']}, not {args_d['load_step']}")
    if sorted(got) != sorted(expected):
        raise AssertionError(f"rank {rank}: keys differ: {sorted(set(got) ^ set(expected))}")
    changed = 0
    for k, want in expected.items():
        g = got[k]
        if g.dtype != want.dtype or g.shape != want.shape or not torch.equal(
                g.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)):
            raise AssertionError(f"rank {rank}: {k} differs after dcp.load")
        changed += not torch.equal(before[k], want)
    numel = sum(want.numel() for want in expected.values())
    with open(os.path.join(args_d["run_dir"], f"load-rank-{rank}.json"), "w") as f:
        json.dump({"tensors": len(expected), "elements": numel, "changed_by_load": changed,
                   "seconds": time.perf_counter() - t}, f)


def _worker(rank: int, port: int, cfg: dict, args_d: dict):
    """One of the two processes: trains and saves; rank 0 stores and restores
    every checkpoint while rank 1 waits; both load the restored copy."""
    mesh = _setup(rank, port, args_d["threads"])
    _train(rank, mesh, cfg, args_d)
    dist.barrier()  # every checkpoint is complete
    if rank == 0:
        rows, manifest = store_run(args_d["store"], args_d["run_dir"],
                                   save_steps(args_d["steps"], args_d["save_every"]),
                                   args_d["keyframe_every"])
        with open(os.path.join(args_d["run_dir"], "store.json"), "w") as f:
            json.dump({"rows": rows, "manifest": manifest}, f)
    dist.barrier()  # every step is restored
    _load(rank, mesh, cfg, args_d)
    dist.barrier()
    dist.destroy_process_group()


# -- the store (rank 0, after the training) ------------------------------------


def sha256_tree(folder: str) -> dict:
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def store_run(store_arg: str, run_dir: str, steps, keyframe_every=None):
    """Adds every checkpoint folder, restores every step and compares every
    file. Returns a row per step and the manifest."""
    import tpde

    store = tpde.Store(store_arg, keyframe_every=keyframe_every)
    rows = []
    for step in steps:
        t = time.perf_counter()
        store.add(checkpoint_dir(run_dir, step), step)
        rows.append({"step": step, "add_s": time.perf_counter() - t})
    restored = os.path.join(run_dir, "restored")
    shutil.rmtree(restored, ignore_errors=True)
    os.makedirs(restored)
    manifest = store.manifest()
    by_step = {s["step"]: s for s in manifest["steps"]}
    for row in rows:
        step = row["step"]
        out = os.path.join(restored, f"checkpoint-{step}")
        t = time.perf_counter()
        store.get(step, out)
        row["get_s"] = time.perf_counter() - t
        orig, back = sha256_tree(checkpoint_dir(run_dir, step)), sha256_tree(out)
        if orig != back:
            bad = sorted(p for p in set(orig) | set(back) if orig.get(p) != back.get(p))
            raise AssertionError(f"step {step}: restored files differ from DCP's: {bad}")
        rec = by_step[step]
        row.update(files=len(rec["files"]), reference=rec["reference"],
                   bytes=sum(f["len"] for f in rec["files"]),
                   stored=sum(f["stored_len"] for f in rec["files"]),
                   file_rows=rec["files"], identical=True)
    report = store.verify()
    if not report.ok:
        raise AssertionError(f"verify: {report.problems}")
    return rows, manifest


def print_table(rows):
    print(f"{'step':>6} {'ref':>5} {'files':>5} {'original B':>11} {'stored B':>10} "
          f"{'ratio':>7} {'add s':>7} {'get s':>7}  sha256")
    for r in rows:
        ref = "-" if r["reference"] is None else str(r["reference"])
        print(f"{r['step']:>6} {ref:>5} {r['files']:>5} {r['bytes']:>11,} {r['stored']:>10,} "
              f"{r['bytes'] / r['stored']:>7.2f} {r['add_s']:>7.3f} {r['get_s']:>7.3f}  "
              f"{'identical' if r['identical'] else 'DIFFERENT'}")
    total_b = sum(r["bytes"] for r in rows)
    total_s = sum(r["stored"] for r in rows)
    print(f"{'all':>6} {'':>5} {sum(r['files'] for r in rows):>5} {total_b:>11,} {total_s:>10,} "
          f"{total_b / total_s:>7.2f} {sum(r['add_s'] for r in rows):>7.3f} "
          f"{sum(r['get_s'] for r in rows):>7.3f}")


def print_files(rows):
    print(f"{'step':>6}  {'file':<14} {'bytes':>10} {'stored':>10} {'ratio':>7}  coding")
    for r in rows:
        for f in r["file_rows"]:
            how = f"{f['coding']}, {'delta' if f['delta'] else 'keyframe'}"
            print(f"{r['step']:>6}  {f['path']:<14} {f['len']:>10,} {f['stored_len']:>10,} "
                  f"{f['len'] / f['stored_len']:>7.2f}  {how}")


# -- what a .distcp file is made of ------------------------------------------


def distcp_items(folder: str):
    """{file: [(fqn, chunk offsets, kind, offset, length)]} from .metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(folder).read_metadata()
    out = {}
    for idx, info in md.storage_data.items():
        kind = "tensor" if idx.offset is not None else "bytes"
        out.setdefault(info.relative_path, []).append(
            (idx.fqn, tuple(idx.offset) if idx.offset is not None else None, kind,
             info.offset, info.length))
    for items in out.values():
        items.sort(key=lambda it: it[3])
    return md, out


_ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float64: "F64", torch.int64: "I64", torch.int32: "I32"}


def safetensors_bytes(tensors) -> bytes:
    """A safetensors file of [(name, tensor)] (header keys sorted, 8-byte
    aligned), written here so that the safetensors package is not needed."""
    header, blobs, pos = {}, [], 0
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + b"".join(blobs)


def _storage_ranges(blob: bytes):
    """(start, end) of the tensor data of one torch.save zip (its data/<key>
    entries, stored uncompressed), relative to the zip."""
    out = []
    for i in zipfile.ZipFile(io.BytesIO(blob)).infolist():
        if "/data/" in i.filename and not i.filename.endswith("serialization_id"):
            h = i.header_offset  # local header: 30 bytes, the name, the extra field
            start = h + 30 + int.from_bytes(blob[h + 26:h + 28], "little") \
                + int.from_bytes(blob[h + 28:h + 30], "little")
            out.append((start, start + i.file_size))
    return out


def file_tensors(folder: str, name: str, items):
    """The bytes of one .distcp file, [(name, tensor)] of its tensor items (each
    read by torch.load from its byte range), and the file's other bytes: the
    file with every tensor's data cut out (zip headers, pickles, padding)."""
    with open(os.path.join(folder, name), "rb") as f:
        data = f.read()
    out, rest, pos = [], [], 0
    for fqn, offs, kind, off, length in items:
        if kind == "tensor":
            blob = data[off:off + length]
            out.append((f"{fqn}@{','.join(map(str, offs))}",
                        torch.load(io.BytesIO(blob), weights_only=True)))
            for start, end in _storage_ranges(blob):
                rest.append(data[pos:off + start])
                pos = off + end
    rest.append(data[pos:])
    return data, out, b"".join(rest)


def explain_layout(run_dir: str, steps):
    first = checkpoint_dir(run_dir, steps[0])
    md, files = distcp_items(first)
    print(f"\n.metadata of checkpoint-{steps[0]}: {len(md.state_dict_metadata)} entries "
          f"(tensors with their chunks per rank, and pickled values), "
          f"{len(md.storage_data)} stored items")
    for name in sorted(files):
        items = files[name]
        size = os.path.getsize(os.path.join(first, name))
        tens = [it for it in items if it[2] == "tensor"]
        _data, _tensors, rest = file_tensors(first, name, items)
        raw = size - len(rest)
        print(f"  {name}: {size:,} bytes = {len(tens)} tensor shards + "
              f"{len(items) - len(tens)} pickled values, each a torch.save zip; "
              f"tensor data {raw:,} bytes, the rest ({size - raw:,}) zip headers, pickles, padding")
    fqn, offs, _kind, off, length = next(it for it in files[sorted(files)[0]] if it[2] == "tensor")
    with open(os.path.join(first, sorted(files)[0]), "rb") as f:
        f.seek(off)
        blob = f.read(length)
    print(f"  e.g. {fqn} at {off}+{length} in {sorted(files)[0]}:")
    for i in zipfile.ZipFile(io.BytesIO(blob)).infolist():
        print(f"    {i.filename:<34} {i.file_size:>7} bytes at {i.header_offset}")


def compare_codings(run_dir: str, steps, manifest):
    """Per rank file and step, the bytes tpde stores for the same tensors coded
    four ways, each against the previous step's: the .distcp file as the store
    coded it (see its coding), the .distcp file as opaque bytes, the tensors
    as a safetensors file (coded as float tensors), and their raw bytes one
    after another (opaque). Also the .distcp files' other bytes, coded as
    opaque bytes: with the safetensors coding of the tensors, about what a
    coding that reads the layout from .metadata would store."""
    import tpde

    by_step = {s["step"]: {f["path"]: f for f in s["files"]} for s in manifest["steps"]}
    print("\nThe same tensors coded four ways, each against the previous step's (stored bytes, "
          "ratio):")
    print(f"{'step':>6}  {'file':<13} {'tensor B':>9} | {'.distcp B':>9} {'store':>16} "
          f"{'opaque':>16} | {'safetensors':>16} | {'raw opaque':>16}")
    prev = {}
    totals = {k: [0, 0] for k in ("store", "opaque", "safetensors", "raw", "rest")}
    for step in steps:
        folder = checkpoint_dir(run_dir, step)
        _md, files = distcp_items(folder)
        for name in sorted(files):
            data, tensors, rest = file_tensors(folder, name, files[name])
            st = safetensors_bytes(tensors)
            raw = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                           for _n, t in tensors)
            ref = prev.get(name)
            rec = by_step[step][name]
            got = {
                "store": (len(data), rec["stored_len"]),
                "opaque": (len(data), len(tpde.encode(data, ref and ref[0], kind="bytes"))),
                "safetensors": (len(st), len(tpde.encode(st, ref and ref[1], kind="safetensors"))),
                "raw": (len(raw), len(tpde.encode(raw, ref and ref[2], kind="bytes"))),
                "rest": (len(rest), len(tpde.encode(rest, ref and ref[3], kind="bytes"))),
            }
            prev[name] = (data, st, raw, rest)
            cells = {k: f"{n:>9,} {o / n:>5.2f}x" for k, (o, n) in got.items() if k != "rest"}
            coding = "torch" if rec["coding"] == "torch archive" else rec["coding"].split()[0]
            print(f"{step:>6}  {name:<13} {len(raw):>9,} | {len(data):>9,} {cells['store']} "
                  f"{cells['opaque']} | {cells['safetensors']} | {cells['raw']}  "
                  f"(store: {coding}, {'delta' if rec['delta'] else 'keyframe'})")
            if ref is not None:
                for k, (o, n) in got.items():
                    totals[k][0] += o
                    totals[k][1] += n
    if totals["store"][0]:
        print("deltas, all files: " + ", ".join(
            f"{k} {n:,} B ({o / n:.2f}x)" for k, (o, n) in totals.items() if k != "rest"))
        (o, n), aware = totals["rest"], totals["safetensors"][1] + totals["rest"][1]
        files_b = totals["opaque"][0]
        print(f"the .distcp files' bytes other than tensor data: {o:,} B, coded as opaque bytes "
              f"to {n:,} B ({o / n:.1f}x)")
        print(f"tensors as floats + those bytes: {aware:,} B, ratio {files_b / aware:.2f}x on "
              f"the .distcp files (opaque {files_b / totals['opaque'][1]:.2f}x, the store now "
              f"{files_b / totals['store'][1]:.2f}x): {1 - aware / totals['opaque'][1]:.0%} less "
              f"than opaque, {1 - aware / totals['store'][1]:.0%} less than the store now")
    return totals


# -- main ---------------------------------------------------------------------


def run(run_dir, store, steps=20, save_every=5, size="small", dim=None, lr=1e-3, seed=0,
        load_step=None, keyframe_every=None, threads=1, explain=True, quiet=False):
    """The whole example; returns a dict of what it found (for the test)."""
    cfg = dict(SIZES[size])
    if dim is not None:
        cfg["dim"], cfg["ff"] = dim, 4 * dim
    saves = save_steps(steps, save_every)
    load_step = saves[-1] if load_step is None else load_step
    if load_step not in saves:
        raise SystemExit(f"--load-step {load_step} is not a checkpoint step ({saves})")
    os.makedirs(os.path.join(run_dir, "expected"), exist_ok=True)
    for name in ("train.json", "store.json", "load-rank-0.json", "load-rank-1.json"):
        if os.path.exists(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
    for step in saves:
        if os.path.exists(checkpoint_dir(run_dir, step)):
            raise SystemExit(f"{checkpoint_dir(run_dir, step)} exists: give an empty --run-dir")
    import tpde

    held = tpde.Store(store, keyframe_every=keyframe_every).steps()
    if held:
        raise SystemExit(f"store {store} already holds steps {held}: give a new one")
    say = (lambda *a: None) if quiet else print
    load_dir = os.path.join(run_dir, "restored", f"checkpoint-{load_step}")
    args_d = dict(run_dir=run_dir, store=store, steps=steps, save_every=save_every, lr=lr,
                  seed=seed, load_step=load_step, load_dir=load_dir, threads=threads,
                  keyframe_every=keyframe_every)
    params = sum(p.numel() for p in TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"],
                                           cfg["ff"], cfg["seq"]).parameters())
    say(f"{WORLD} processes (gloo, FSDP2 fully_shard on a CPU mesh), {params:,} parameters "
        f"({size}, dim {cfg['dim']}), AdamW, {steps} steps, a DCP checkpoint at steps {saves}")
    mp.spawn(_worker, args=(free_port(), cfg, args_d), nprocs=WORLD, join=True)

    def read(name):
        with open(os.path.join(run_dir, name)) as f:
            return json.load(f)

    trained, stored = read("train.json"), read("store.json")
    losses, rows, manifest = trained["losses"], stored["rows"], stored["manifest"]
    loads = [read(f"load-rank-{rank}.json") for rank in range(WORLD)]
    say(f"trained in {trained['seconds']:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    say(f"\nrank 0, after a barrier: store {store}: every checkpoint folder added, every step "
        f"got back and compared (sha256)")
    if not quiet:
        print_table(rows)
        print()
        print_files(rows)
    say(f"\nboth ranks: dcp.load of the restored checkpoint-{load_step} into a new, differently "
        f"initialised sharded model and AdamW ({max(d['seconds'] for d in loads):.1f} s): "
        + "; ".join(f"rank {r}: {d['tensors']} local tensors, {d['elements']:,} elements, all "
                    f"equal to the saved ones ({d['changed_by_load']} differed before the load)"
                    for r, d in enumerate(loads)))
    totals = None
    if explain:
        explain_layout(run_dir, saves)
        totals = compare_codings(run_dir, saves, manifest)
    return dict(rows=rows, manifest=manifest, loads=loads, losses=losses, saves=saves,
                coding_totals=totals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="where DCP writes checkpoint-N/ folders")
    ap.add_argument("--store", required=True, help="the tpde store (a folder; must hold no steps)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--dim", type=int, help="override the size's model width (ff = 4 x dim)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-step", type=int, help="the step to dcp.load back (default: the last)")
    ap.add_argument("--keyframe-every", type=int, help="for a new store (default: tpde's, 10)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--no-explain", action="store_true",
                    help="skip the .distcp layout and the coding comparison")
    ap.add_argument("--keep", action="store_true",
                    help="keep the checkpoint folders and restored copies")
    args = ap.parse_args()
    if args.steps < 1 or args.save_every < 1:
        ap.error("--steps and --save-every are positive")
    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    try:
        run(run_dir, args.store, steps=args.steps, save_every=args.save_every, size=args.size,
            dim=args.dim, lr=args.lr, seed=args.seed, load_step=args.load_step,
            keyframe_every=args.keyframe_every, threads=args.threads,
            explain=not args.no_explain)
    finally:
        if not args.keep:
            for step in save_steps(args.steps, args.save_every):
                shutil.rmtree(checkpoint_dir(run_dir, step), ignore_errors=True)
            for name in ("restored", "expected"):
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
