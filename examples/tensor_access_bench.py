#!/usr/bin/env python3
"""Reading one tensor of a stored step against restoring the whole step.

Stores a run given as a folder of per-epoch safetensors files
(``epoch-00.safetensors`` ... ``epoch-10.safetensors``; the step is the number
in each name) in a new store, then reads one tensor (by default the one
closest to 1 MB) of the deepest step of the first keyframe interval, where a
restore walks the longest chain, with ``Store.open(step).get_tensor(name)``,
and compares it with restoring the whole step (``Store.files``, in memory,
and ``Store.get``, to disk): stored bytes read and time.

    python examples/tensor_access_bench.py examples/data/tiny/weights
    python examples/tensor_access_bench.py /tmp/tpde-notes/weights --keyframe-every 10

Bytes read: for the tensor, the indexes of the content files opened and the
payloads of the chunks decoded along the chain (``StepReader.stats()``); for
a whole step, every content file of the step's chain (what a restore reads).
Times are the median of ``--repeat`` runs (page cache warm).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import tpde
from tpde._tpde import step_from_name


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def human(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a folder of step-numbered .safetensors files")
    ap.add_argument("--keyframe-every", type=int, default=10)
    ap.add_argument("--store", help="where to make the store (a new folder; default: a "
                                    "temporary one, removed at the end)")
    ap.add_argument("--tensor", help="the tensor to read (default: the one closest to 1 MB)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    files = sorted(f for f in os.listdir(args.run_dir) if f.endswith(".safetensors"))
    numbered = [(step_from_name(f), f) for f in files]
    numbered = sorted((s, f) for s, f in numbered if s is not None)
    if len(numbered) < 2:
        sys.exit(f"{args.run_dir}: fewer than two step-numbered .safetensors files")

    tmp = tempfile.TemporaryDirectory(prefix="tpde-bench-") if args.store is None else None
    store_dir = args.store or os.path.join(tmp.name, "store")
    store = tpde.Store(store_dir, keyframe_every=args.keyframe_every)
    t = time.perf_counter()
    for step, f in numbered:
        store.add(os.path.join(args.run_dir, f), step)
    add_s = time.perf_counter() - t

    m = store.manifest()
    steps = m["steps"]
    by_step = {s["step"]: s for s in steps}
    # The first keyframe interval: from the first step to the one before the
    # next keyframe; its deepest step has the longest chain.
    first = [steps[0]]
    for s in steps[1:]:
        if s["reference"] is None:
            break
        first.append(s)
    target = max(first, key=lambda s: s["depth"])
    step = target["step"]

    def chain_bytes(step):
        """Stored bytes of every content file a restore of `step` reads."""
        total, need = 0, {f["path"] for f in by_step[step]["files"]}
        s = by_step[step]
        while s is not None:
            nxt = set()
            for f in s["files"]:
                if f["path"] in need:
                    total += f["stored_len"]
                    if f["delta"]:
                        nxt.add(f.get("reference_path", f["path"]))
            need = nxt
            s = by_step.get(s["reference"]) if s["reference"] is not None and need else None
        return total

    with store.open(step, framework="np") as r:
        sizes = {}
        for k in r.keys():
            sl = r.get_slice(k)
            n = int(np.prod(sl.get_shape())) if sl.get_shape() else 1
            st = sl.get_dtype()
            width = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
                     "BF16": 2, "I16": 2, "U16": 2}.get(st, 1)
            sizes[k] = n * width
    name = args.tensor or min(sizes, key=lambda k: abs(sizes[k] - 1_000_000))
    if name not in sizes:
        sys.exit(f"no tensor {name!r} in step {step}")

    stats = {}

    def read_one():
        with store.open(step, framework="np") as r:
            r.get_tensor(name)
            stats.update(r.stats())

    one_s = median_time(read_one, args.repeat)
    want = store.files(step)[target["files"][0]["path"]]
    files_s = median_time(lambda: store.files(step), args.repeat)

    def get_whole():
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(store_dir))) as d:
            store.get(step, os.path.join(d, "out"))

    get_s = median_time(get_whole, args.repeat)

    # The tensor read alone is the one of the step restored whole.
    from safetensors.numpy import load as st_load
    with store.open(step, framework="np") as r:
        assert r.get_tensor(name).tobytes() == st_load(want)[name].tobytes()

    step_len = sum(f["len"] for f in target["files"])
    whole = chain_bytes(step)
    print(f"run {args.run_dir}: {len(numbered)} steps, keyframe every {args.keyframe_every}, "
          f"added in {add_s:.2f} s")
    print(f"step {step} (depth {target['depth']}, the deepest of the first interval), "
          f"{len(target['files'])} file(s) of {human(step_len)}; tensor {name!r}, "
          f"{human(sizes[name])} raw")
    print()
    rows = [
        ("open(step).get_tensor(name)", stats["bytes"], one_s,
         f"{stats['objects']} content files opened, {stats['tensors']} tensors / "
         f"{stats['chunks']} chunks decoded"),
        ("files(step) (whole step, memory)", whole, files_s, "every file of the chain"),
        ("get(step, out) (whole step, disk)", whole, get_s, "every file of the chain"),
    ]
    print(f"{'read':<36} {'stored bytes read':>18} {'time ms':>9}  note")
    for what, b, s, note in rows:
        print(f"{what:<36} {b:>18,} {s * 1e3:>9.2f}  {note}")
    print()
    print(f"one tensor reads {stats['bytes'] / whole:.1%} of the bytes of the whole step "
          f"({stats['index_bytes']:,} of them index bytes), in {one_s / files_s:.0%} of the time "
          f"of files(step)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
