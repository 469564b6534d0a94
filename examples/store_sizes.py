#!/usr/bin/env python3
"""Sizes of checkpoints as stored plainly and with each file compressed by zstd
level 3: the baseline a delta store has to beat.

Every argument is one checkpoint: a folder (all the files in it, recursively)
or a single file. Checkpoints are listed in natural order (checkpoint-2 before
checkpoint-10). For each, and in total: the original bytes, the sum of the
zstd level 3 sizes of its files compressed one by one (python zstandard, one
frame per file), and the ratio original / zstd. Files are compressed on
several threads (zstandard releases the GIL); each thread holds one whole
file in memory.

Examples:

    ~/.cache/tpde/venv/bin/python examples/store_sizes.py /tmp/tpde-notes-hf/checkpoint-*
    ~/.cache/tpde/venv/bin/python examples/store_sizes.py --json /tmp/tpde-notes/weights/*.safetensors

Needs zstandard.
"""

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import zstandard


def natural_key(text):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def checkpoint_files(path):
    """The files of one checkpoint: path itself, or every file under it."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise SystemExit(f"{path}: not a file or folder")
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)


def file_sizes(path, level):
    """(original bytes, zstd bytes) of one file."""
    with open(path, "rb") as f:
        data = f.read()
    return len(data), len(zstandard.ZstdCompressor(level=level).compress(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint folders or files")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="compression threads (default: the CPU count)")
    args = ap.parse_args()

    paths = sorted(args.paths, key=natural_key)
    files = {p: checkpoint_files(p) for p in paths}
    t0 = time.time()
    every_file = sorted({f for fs in files.values() for f in fs})
    with ThreadPoolExecutor(args.threads) as pool:
        done = dict(zip(every_file, pool.map(lambda f: file_sizes(f, args.level), every_file)))
    sizes = {p: [done[f] for f in fs] for p, fs in files.items()}
    seconds = time.time() - t0

    rows = []
    for p in paths:
        original = sum(o for o, _ in sizes[p])
        zstd = sum(z for _, z in sizes[p])
        rows.append({"checkpoint": p, "files": len(files[p]), "original_bytes": original, "zstd_bytes": zstd,
                     "ratio": original / zstd if zstd else None})
    original = sum(r["original_bytes"] for r in rows)
    zstd = sum(r["zstd_bytes"] for r in rows)
    total = {"checkpoints": len(rows), "files": sum(r["files"] for r in rows), "original_bytes": original,
             "zstd_bytes": zstd, "ratio": original / zstd if zstd else None}

    if args.json:
        print(json.dumps({"zstd_level": args.level, "checkpoints": rows, "total": total,
                          "seconds": round(seconds, 3), "threads": args.threads}, indent=2))
        return
    width = max(len("checkpoint"), *(len(r["checkpoint"]) for r in rows))
    header = f"{'checkpoint':<{width}}  {'files':>5}  {'original':>15}  {f'zstd -{args.level}':>15}  {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in rows + [dict(total, checkpoint="total")]:
        ratio = f"{r['ratio']:6.3f}" if r["ratio"] else f"{'-':>6}"
        print(f"{r['checkpoint']:<{width}}  {r['files']:>5}  {r['original_bytes']:>15,}  {r['zstd_bytes']:>15,}  {ratio}")
    print(f"\n{total['files']} files, {original / 1e6:,.1f} MB compressed in {seconds:.1f}s on {args.threads} threads")


if __name__ == "__main__":
    sys.exit(main())
