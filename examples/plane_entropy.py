#!/usr/bin/env python3
"""Order-0 entropy of the ULP-difference byte planes of consecutive checkpoints.

For each consecutive pair of safetensors files in a folder (name order), and
over the F32 tensors the two files share, this computes the ULP difference of
every element against the previous file (the monotone integer key of the
float bits, subtracted, zigzagged: tpde's transform 3) and reports, in bits
per element:

  planes   the sum over the 4 byte planes of each plane's order-0 entropy:
           what an ideal order-0 coder of each plane would spend;
  grouped  the same with each plane's entropy conditioned on the exponent of
           the previous value (clamped to 31 values): what coding the planes
           in groups by the reference's exponent could reach.

and the ratio 32 / bits each would give. No coder of byte planes with
order-0 statistics beats `planes`; tpde's grouped sections aim at `grouped`.
Small tensors (< 4096 elements) are left out, as their entropy estimates are
biased.

    python examples/plane_entropy.py /tmp/tpde-notes/weights
"""

import argparse
import json
import os
import struct
import sys

import numpy as np


def load_f32(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        s, e = t["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + s : 8 + n + e], dtype="<u4")
    return out


def entropy(x):
    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def key(u):
    neg = (u >> 31) == 1
    return np.where(neg, ~u, u | np.uint32(0x80000000)).astype(np.uint32)


def pair(prev, cur):
    n_total, planes, grouped = 0, 0.0, 0.0
    for name, r in prev.items():
        c = cur.get(name)
        if c is None or c.size != r.size or r.size < 4096:
            continue
        d = key(c).astype(np.int64) - key(r).astype(np.int64)
        d = (((d << 1) ^ (d >> 63)).astype(np.uint64) & 0xFFFFFFFF).astype(np.uint32)
        ctx = np.clip(((r >> 23) & 255).astype(np.int64), 100, 130)
        h_ctx = entropy(ctx)
        n = d.size
        for k in range(4):
            p = ((d >> (8 * k)) & 255).astype(np.int64)
            planes += entropy(p) * n
            grouped += (entropy(ctx * 256 + p) - h_ctx) * n
        n_total += n
    return planes / n_total, grouped / n_total, n_total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    args = ap.parse_args()
    files = sorted(f for f in os.listdir(args.folder) if f.endswith(".safetensors"))
    if len(files) < 2:
        sys.exit("need at least two .safetensors files")
    print(f"{'pair':<44} {'elements':>10} {'planes':>14} {'grouped':>14}")
    prev = load_f32(os.path.join(args.folder, files[0]))
    rows = []
    for a, b in zip(files, files[1:]):
        cur = load_f32(os.path.join(args.folder, b))
        p, g, n = pair(prev, cur)
        rows.append((p, g))
        print(f"{a + ' -> ' + b:<44} {n:>10} {p:6.2f} b {32 / p:5.3f}x {g:6.2f} b {32 / g:5.3f}x")
        prev = cur
    mp = sum(32 / p for p, _ in rows) / len(rows)
    mg = sum(32 / g for _, g in rows) / len(rows)
    print(f"{'mean ratio':<44} {'':>10} {'':>8}{mp:5.3f}x {'':>8}{mg:5.3f}x")


if __name__ == "__main__":
    main()
