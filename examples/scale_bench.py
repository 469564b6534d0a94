#!/usr/bin/env python3
"""Encode and decode a checkpoint far larger than memory, measuring peak memory
and throughput with 1 and 2 threads.

The checkpoint is synthetic but shaped like a real one: the tensors of
Llama-3-8B (8.03 billion parameters) in F32, 32.1 GB, split into safetensors
shards of at most --shard-gb as Hugging Face writes them. Two consecutive
steps are made, the second evolving from the first as in training: every
weight moves by a small Adam-like step (lr times a noise of unit scale), the
norms stay near 1, and only the embedding rows of the tokens seen in the step
change.

Two full steps would not fit on the disk of a small machine (2 x 32 GB plus
outputs), so the shards are made, coded and checked one after another; each
`tpde encode` / `tpde decode` process sees one whole shard and its reference,
and /usr/bin/time gives its peak resident memory (memory-mapped pages
included). Every decoded shard is compared with the original by SHA-256.

    python examples/scale_bench.py --work /tmp/tpde-scale [--tpde target/release/tpde]

--layers N makes a smaller model (e.g. --layers 2 for a quick try). Writes a
JSON report (--json) and prints a table.

--store instead writes both steps whole, as sharded Hugging Face-style
folders (twice the checkpoint on disk, plus the store), and measures
`tpde store add` of each (the second against the first, its reference decoded
through its chain) and `tpde store get` of the second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOCAB, HIDDEN, INTER, KV = 128256, 4096, 14336, 1024
PIECE = 1 << 24  # elements generated at once (64 MB of F32)


def llama3_8b_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of Llama-3-8B's weights, in the order HF writes them."""
    t = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        t += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
        ]
    t += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return t


def shards(tensors, shard_bytes: int):
    out, cur, size = [], [], 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 4
        if cur and size + n > shard_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    if cur:
        out.append(cur)
    return out


def header(tensors) -> bytes:
    meta, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 4
        meta[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(meta, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h


def pieces(name: str, shape, seed: int, lr: float):
    """The tensor at step A and step B, piece by piece (deterministic)."""
    n = int(np.prod(shape))
    rows = shape[0] if len(shape) == 2 else 1
    row_len = n // rows
    for k, start in enumerate(range(0, n, PIECE)):
        m = min(PIECE, n - start)
        rng = np.random.default_rng([seed, k])
        if len(shape) == 1:  # a norm: near 1
            a = (1.0 + 0.05 * rng.standard_normal(m, dtype=np.float32)).astype(np.float32)
        else:
            a = rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)
        step = rng.standard_normal(m, dtype=np.float32) * np.float32(lr)
        if "embed_tokens" in name:
            # Only the rows of the tokens seen in the step change (30% here).
            seen = np.random.default_rng([seed, 10**6]).random(rows) < 0.3
            step *= seen[(start + np.arange(m)) // row_len]
        b = (a + step).astype(np.float32)
        yield a.tobytes(), b.tobytes()


def make_shard(tensors, seed0: int, lr: float, path_a: Path, path_b: Path) -> tuple[int, str]:
    h = header(tensors)
    sha = hashlib.sha256(h)
    with open(path_a, "wb") as fa, open(path_b, "wb") as fb:
        fa.write(h)
        fb.write(h)
        for i, (name, shape) in enumerate(tensors):
            for a, b in pieces(name, shape, seed0 + i, lr):
                fa.write(a)
                fb.write(b)
                sha.update(b)
    return path_b.stat().st_size, sha.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one command."""
    r = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True
    )
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    wall, kb = r.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) * 1024


def store_bench(args, plan) -> None:
    """Both steps as sharded folders, through `tpde store add` and `get`."""
    steps = {1: args.work / "checkpoint-1", 2: args.work / "checkpoint-2"}
    for d in steps.values():
        d.mkdir(parents=True, exist_ok=True)
    want, seed, total = {}, 0, 0
    n = len(plan)
    for s, tensors in enumerate(plan):
        name = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        size, want[name] = make_shard(tensors, seed, args.lr, steps[1] / name, steps[2] / name)
        seed += len(tensors)
        total += size
    store = args.work / "store"
    subprocess.run([args.tpde, "store", "init", str(store)], check=True, capture_output=True)
    rows = []
    for step, d in steps.items():
        wall, rss = timed([args.tpde, "store", "add", str(store), str(d), "--step", str(step)])
        rows.append((f"store add step {step}", wall, rss))
    out = args.work / "restored"
    wall, rss = timed([args.tpde, "store", "get", str(store), "2", "-o", str(out)])
    rows.append(("store get step 2", wall, rss))
    for name, digest in want.items():
        if sha256(out / name) != digest:
            sys.exit(f"{name}: the restored file differs from the original")
    ls = subprocess.run([args.tpde, "store", "ls", str(store), "--json"], check=True,
                        capture_output=True, text=True)
    stored = {s["step"]: sum(f["stored_len"] for f in s["files"]) for s in json.loads(ls.stdout)["steps"]}
    print(f"\n{n} shards per step, {total / 1e9:.2f} GB; stored: step 1 {stored[1] / 1e9:.2f} GB, "
          f"step 2 {stored[2] / 1e9:.2f} GB ({total / stored[2]:.3f}x); every shard of step 2 "
          "restored byte-identical (SHA-256)\n")
    print("| operation | seconds | MB/s | peak RSS |")
    print("|---|---:|---:|---:|")
    for what, wall, rss in rows:
        print(f"| {what} | {wall:.1f} | {total / 1e6 / wall:.0f} | {rss / 2**20:.0f} MiB |")
    if args.json:
        args.json.write_text(json.dumps({"bytes": total, "stored": stored, "rows": rows}, indent=1))
    if not args.keep:
        import shutil
        shutil.rmtree(args.work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (about 3 shards of space)")
    ap.add_argument("--tpde", default="target/release/tpde")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--shard-gb", type=float, default=4.3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--lr", type=float, default=1e-4, help="scale of a weight's change in one step")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--store", action="store_true",
                    help="make both steps whole (sharded folders) and time tpde store add/get instead")
    ap.add_argument("--keep", action="store_true", help="keep the --store run's files")
    ap.add_argument("--zstd", action="store_true",
                    help="also time zstd -3 (-T1 and -T2) on every shard, the baseline")
    ap.add_argument("--only", help="code only these shards (1-based, comma-separated)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    plan = shards(llama3_8b_tensors(args.layers), int(args.shard_gb * 1e9))
    if args.store:
        return store_bench(args, plan)
    only = {int(k) for k in args.only.split(",")} if args.only else None
    rows = []
    seed = 0
    for s, tensors in enumerate(plan):
        if only and s + 1 not in only:
            seed += len(tensors)
            continue
        a = args.work / f"a-{s:05d}.safetensors"
        b = args.work / f"b-{s:05d}.safetensors"
        out, dec = args.work / "b.tpde", args.work / "b.decoded"
        t0 = time.perf_counter()
        size, want = make_shard(tensors, seed, args.lr, a, b)
        gen = time.perf_counter() - t0
        seed += len(tensors)
        row = {"shard": s, "tensors": len(tensors), "bytes": size, "generate_s": gen}
        for j in threads:
            out.unlink(missing_ok=True)
            row[f"encode_s_j{j}"], row[f"encode_rss_j{j}"] = timed(
                [args.tpde, "-j", str(j), "encode", str(b), "--ref", str(a), "-o", str(out)]
            )
            row["encoded"] = out.stat().st_size
            dec.unlink(missing_ok=True)
            row[f"decode_s_j{j}"], row[f"decode_rss_j{j}"] = timed(
                [args.tpde, "-j", str(j), "decode", str(out), "--ref", str(a), "-o", str(dec)]
            )
            if sha256(dec) != want:
                sys.exit(f"shard {s}: the decoded file differs from the original")
            dec.unlink()
        row["identical"] = True
        if args.zstd:
            z = args.work / "b.zst"
            for j in threads:
                z.unlink(missing_ok=True)
                row[f"zstd_s_j{j}"], row[f"zstd_rss_j{j}"] = timed(
                    ["zstd", "-3", f"-T{j}", "-q", str(b), "-o", str(z)])
            row["zstd_encoded"] = z.stat().st_size
            row["unzstd_s"], row["unzstd_rss"] = timed(["zstd", "-d", "-q", "-c", str(z), "-o", "/dev/null"])
            z.unlink()
        for p in (a, b, out):
            p.unlink()
        rows.append(row)
        print(
            f"shard {s + 1}/{len(plan)}: {size / 1e9:.2f} GB, ratio {size / row['encoded']:.3f}x, "
            + ", ".join(
                f"j{j}: enc {size / 1e6 / row[f'encode_s_j{j}']:.0f} MB/s "
                f"{row[f'encode_rss_j{j}'] / 2**20:.0f} MiB, dec {size / 1e6 / row[f'decode_s_j{j}']:.0f} MB/s "
                f"{row[f'decode_rss_j{j}'] / 2**20:.0f} MiB"
                for j in threads
            ),
            flush=True,
        )
    total = sum(r["bytes"] for r in rows)
    enc = sum(r["encoded"] for r in rows)
    summary = {
        "model": f"Llama-3-8B shapes, {args.layers} layers, F32, lr {args.lr:g}",
        "shards": len(rows),
        "bytes": total,
        "encoded": enc,
        "ratio": total / enc,
        "all_identical": all(r["identical"] for r in rows),
    }
    print(f"\n{summary['model']}: {len(rows)} shards, {total / 1e9:.2f} GB -> {enc / 1e9:.2f} GB "
          f"({total / enc:.3f}x), every shard decoded byte-identical (SHA-256)\n")
    print("| threads | encode MB/s | encode peak RSS | decode MB/s | decode peak RSS |")
    print("|---:|---:|---:|---:|---:|")
    for j in threads:
        e = sum(r[f"encode_s_j{j}"] for r in rows)
        d = sum(r[f"decode_s_j{j}"] for r in rows)
        er = max(r[f"encode_rss_j{j}"] for r in rows)
        dr = max(r[f"decode_rss_j{j}"] for r in rows)
        summary[f"j{j}"] = {"encode_mb_s": total / 1e6 / e, "decode_mb_s": total / 1e6 / d,
                            "encode_peak_rss": er, "decode_peak_rss": dr}
        print(f"| {j} | {total / 1e6 / e:.0f} | {er / 2**20:.0f} MiB | {total / 1e6 / d:.0f} | {dr / 2**20:.0f} MiB |")
    if args.zstd:
        zenc = sum(r["zstd_encoded"] for r in rows)
        print(f"\nzstd -3 of the same shards: {total / 1e9:.2f} GB -> {zenc / 1e9:.2f} GB ({total / zenc:.3f}x); "
              f"tpde's output is {zenc / enc:.2f}x smaller")
        print("| threads | zstd -3 MB/s | tpde encode speed vs zstd | zstd peak RSS | zstd -d MB/s | tpde decode speed vs zstd -d |")
        print("|---:|---:|---:|---:|---:|---:|")
        d1 = sum(r["unzstd_s"] for r in rows)
        for j in threads:
            zs = sum(r[f"zstd_s_j{j}"] for r in rows)
            e = sum(r[f"encode_s_j{j}"] for r in rows)
            d = sum(r[f"decode_s_j{j}"] for r in rows)
            zr = max(r[f"zstd_rss_j{j}"] for r in rows)
            print(f"| {j} | {total / 1e6 / zs:.0f} | {zs / e:.2f}x | {zr / 2**20:.0f} MiB | "
                  f"{total / 1e6 / d1:.0f} | {d1 / d:.2f}x |")
        summary["zstd"] = {"encoded": zenc}
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "shards": rows}, indent=1))


if __name__ == "__main__":
    main()
