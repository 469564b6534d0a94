#!/usr/bin/env python3
"""tpde's lossy mode against the research notes' own lossy method, on a run.

For the weights and the Adam state of a run of examples/train_checkpoints.py,
for each bound E, in one run:

  * tpde lossless: each checkpoint against the previous original;
  * tpde lossy (closed loop): each checkpoint against the *reconstruction* of
    the previous one (what decoding gave), every float element within E;
  * the notes' method (open loop, their section 4): against the previous
    *original*, the elements whose change exceeds E are kept as exact F32
    values at Elias-delta coded positions, the rest are dropped; the decoder
    updates only the kept elements, so dropped changes pile up.

Per step: the ratio of each, the largest error of a restored element (over
every float tensor, measured here against the original), and the share of
elements the notes' method keeps. The first checkpoint is a keyframe for all
(the notes' method stores it whole: zstd -3 of the file).

The notes' size is counted as: Elias-delta bits of the position gaps (exactly,
rounded up to bytes) + zstd -3 of the kept F32 values + 4 bytes per tensor
(the count), as examples/evidence.py counts it.

    ~/.cache/tpde/venv/bin/python examples/lossy_experiment.py --run /tmp/tpde-notes

Needs the tpde package (pip install ./bindings/python), numpy, zstandard.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import zstandard

import tpde

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evidence import checkpoint_files, elias_delta_bits, float_values, max_error  # noqa: E402

def notes_step(prev_orig, cur, recon, thr, zc):
    """One step of the notes' method: returns (bytes, kept share); updates
    recon in place."""
    size, kept, total = 0, 0, 0
    for name, x in cur.items():
        size += 4  # the count of kept elements of the tensor
        d = x - prev_orig[name]
        keep = np.abs(d) > thr
        idx = np.flatnonzero(keep)
        total += x.size
        kept += idx.size
        if idx.size:
            gaps = np.diff(np.concatenate(([-1], idx)))
            size += (elias_delta_bits(gaps) + 7) // 8
            size += len(zc.compress(x[idx].astype(np.float32).tobytes()))
        recon[name][idx] = x[idx]
    return size, kept / max(total, 1)


def run_part(files, bounds, zc):
    rows = []
    originals = [open(p, "rb").read() for p in files]
    tensors = [float_values(b) for b in originals]
    for e in bounds:
        recon_bytes = None
        notes_recon = None
        for i, cur in enumerate(originals):
            row = {"step": i, "file": os.path.basename(files[i]), "bound": e,
                   "original_bytes": len(cur)}
            # tpde lossless, against the previous original.
            prev = originals[i - 1] if i else None
            t0 = time.perf_counter()
            exact = tpde.encode(cur, prev)
            row["lossless_ratio"] = len(cur) / len(exact)
            # tpde lossy, closed loop.
            t1 = time.perf_counter()
            packed = tpde.encode(cur, recon_bytes, max_abs_error=e)
            t2 = time.perf_counter()
            recon_bytes = tpde.decode(packed, recon_bytes)
            row["tpde_ratio"] = len(cur) / len(packed)
            row["tpde_max_error"] = max_error(float_values(recon_bytes), tensors[i])
            row["tpde_encode_s"] = t2 - t1
            row["lossless_encode_s"] = t1 - t0
            # The notes' method, open loop.
            if i == 0:
                size = len(zc.compress(cur))
                notes_recon = {k: v.copy() for k, v in tensors[0].items()}
                share = 1.0
            else:
                size, share = notes_step(tensors[i - 1], tensors[i], notes_recon, e, zc)
            row["notes_ratio"] = len(cur) / size
            row["notes_kept"] = share
            row["notes_max_error"] = max_error(notes_recon, tensors[i])
            rows.append(row)
    return rows


def print_table(part, rows):
    print(f"\n### {part}")
    head = (f"{'bound':>7} {'step':>4} {'lossless':>9} {'tpde lossy':>11} {'tpde max err':>13} "
            f"{'notes':>8} {'notes max err':>14} {'notes kept':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['bound']:>7.0e} {r['step']:>4} {r['lossless_ratio']:>8.3f}x {r['tpde_ratio']:>10.3f}x "
              f"{r['tpde_max_error']:>13.3e} {r['notes_ratio']:>7.3f}x {r['notes_max_error']:>14.3e} "
              f"{100 * r['notes_kept']:>10.1f}%")
    for e in sorted({r["bound"] for r in rows}, reverse=True):
        d = [r for r in rows if r["bound"] == e and r["step"] > 0]
        mean = lambda k: sum(r[k] for r in d) / len(d)  # noqa: E731
        print(f"bound {e:.0e}, deltas: mean ratio lossless {mean('lossless_ratio'):.3f}x, "
              f"tpde lossy {mean('tpde_ratio'):.3f}x (max error {max(r['tpde_max_error'] for r in d):.3e}), "
              f"notes {mean('notes_ratio'):.3f}x (error after the last step "
              f"{d[-1]['notes_max_error']:.3e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="folder with weights/ and adam/")
    ap.add_argument("--bounds", type=float, nargs="+", default=[1e-3, 1e-4])
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    zc = zstandard.ZstdCompressor(level=3)
    out = {}
    for part in ["weights", "adam"]:
        folder = os.path.join(args.run, part)
        if not os.path.isdir(folder):
            continue
        rows = run_part(checkpoint_files(folder), args.bounds, zc)
        print_table(part, rows)
        out[part] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
