#!/usr/bin/env python3
"""Compare lossless baselines on consecutive checkpoint files.

Given a folder of safetensors files that are consecutive checkpoints of one
run (taken in file-name order), this measures for every consecutive pair
(prev, cur), single-threaded:

  zstd3      zstd level 3 on cur alone (python `zstandard`)
  patch      `zstd -3 --patch-from=prev` on cur (the zstd CLI)
  zipnn      ZipNN 0.5.4 on cur alone (byte input, dtype from the file)
  zipnn_d    ZipNN 0.5.4 delta mode: ZipNN(delta_compressed_type="byte")
             .compress(cur, delta_second_data=prev)  (XOR with prev inside)
  xor_bp     cur XOR prev, split into byte planes (byte i of every element,
             element width from the file's main dtype), each plane zstd -3
  tpde       optional: the per-step "ratio" from `TPDE bench FOLDER --json`

Ratios are (size of cur) / (compressed size); every compressed form is
decompressed and checked byte for byte against cur. Speeds are MB/s
(10^6 bytes of cur per second) for compression / decompression; the zstd CLI
speeds include starting the process and its file I/O. ZipNN 0.5.4's plain
compress() rewrites its input buffer in place, so it gets a fresh copy each
time and the copy is timed with it.

Examples:

    python examples/compare_baselines.py examples/data/tiny/weights
    python examples/compare_baselines.py /tmp/tpde-notes/adam --json adam.json \\
        --tpde target/release/tpde

Needs numpy, zstandard and zipnn==0.5.4 (pip install zstandard zipnn==0.5.4)
and the zstd CLI (>= 1.4.5 for --patch-from).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)

try:
    import zstandard
except ImportError:  # pragma: no cover - reported at run time
    zstandard = None

try:
    from zipnn import ZipNN
except ImportError:  # pragma: no cover - reported at run time
    ZipNN = None

# safetensors dtype -> (element bytes, ZipNN bytearray_dtype name or None)
DTYPES = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
    "I64": (8, None), "I32": (4, None), "I16": (2, None), "I8": (1, None),
    "U64": (8, None), "U32": (4, None), "U16": (2, None), "U8": (1, None), "BOOL": (1, None),
}

COLUMNS = ["zstd3", "patch", "zipnn", "zipnn_d", "xor_bp", "tpde"]
SPEEDS = ["zstd3", "patch", "zipnn", "zipnn_d"]


def main_dtype(data):
    """The dtype that holds most of the tensor bytes of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    by = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        by[info["dtype"]] = by.get(info["dtype"], 0) + (hi - lo)
    if not by:
        return "U8"
    return max(by.items(), key=lambda kv: kv[1])[0]


def timed(fn, repeat):
    best, out = None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return out, best


def mbps(nbytes, seconds):
    return nbytes / 1e6 / seconds if seconds and seconds > 0 else None


def xor_bytes(a, b):
    """a XOR b over the common length, followed by the tail of a (if longer)."""
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    m = min(len(x), len(y))
    out = np.empty(len(x), dtype=np.uint8)
    np.bitwise_xor(x[:m], y[:m], out=out[:m])
    out[m:] = x[m:]
    return out


def changed_fraction(cur, prev, width):
    """Fraction of width-byte words (over the whole file) whose bits differ."""
    if len(cur) != len(prev) or len(cur) % width:
        return None
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    a = np.frombuffer(cur, dtype=dt)
    b = np.frombuffer(prev, dtype=dt)
    return float(np.count_nonzero(a != b)) / len(a)


def run_quiet(cmd):
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.decode(errors='replace')}")


def zstd_cli_patch(zstd_bin, prev_path, cur_path, cur, tmp, repeat):
    out_path = os.path.join(tmp, "patch.zst")
    dec_path = os.path.join(tmp, "patch.out")
    cmd = [zstd_bin, "-3", "-T1", "-q", "-f", "--patch-from=" + prev_path, cur_path, "-o", out_path]
    _, tc = timed(lambda: run_quiet(cmd), repeat)
    size = os.path.getsize(out_path)
    cmd = [zstd_bin, "-d", "-T1", "-q", "-f", "--patch-from=" + prev_path, out_path, "-o", dec_path]
    _, td = timed(lambda: run_quiet(cmd), repeat)
    with open(dec_path, "rb") as f:
        ok = f.read() == cur
    if not ok:
        raise RuntimeError(f"zstd --patch-from round trip failed for {cur_path}")
    return size, tc, td


def measure_pair(prev_path, cur_path, args, tmp):
    with open(prev_path, "rb") as f:
        prev = f.read()
    with open(cur_path, "rb") as f:
        cur = f.read()
    digest = hashlib.sha256(cur).digest()
    n = len(cur)
    dtype = main_dtype(cur)
    width, zdtype = DTYPES.get(dtype, (1, None))
    row = {"prev": os.path.basename(prev_path), "file": os.path.basename(cur_path),
           "original_bytes": n, "dtype": dtype,
           "changed_fraction": changed_fraction(cur, prev, width)}
    sizes, speed = {}, {}

    # zstd -3 on cur alone
    if zstandard is not None:
        cctx = zstandard.ZstdCompressor(level=3, threads=0)
        dctx = zstandard.ZstdDecompressor()
        comp, tc = timed(lambda: cctx.compress(cur), args.repeat)
        dec, td = timed(lambda: dctx.decompress(comp), args.repeat)
        assert dec == cur, "zstd round trip"
        sizes["zstd3"] = len(comp)
        speed["zstd3"] = (mbps(n, tc), mbps(n, td))

    # zstd -3 --patch-from=prev (CLI)
    if args.zstd:
        size, tc, td = zstd_cli_patch(args.zstd, prev_path, cur_path, cur, tmp, args.repeat)
        sizes["patch"] = size
        speed["patch"] = (mbps(n, tc), mbps(n, td))

    # ZipNN plain and delta
    if ZipNN is not None and zdtype is not None:
        z = ZipNN(input_format="byte", bytearray_dtype=zdtype, threads=1)
        # compress() rewrites its input in place: a fresh copy every time, timed with it.
        comp, tc = timed(lambda: z.compress(bytearray(cur)), args.repeat)
        comp = bytes(comp)
        dec, td = timed(lambda: z.decompress(comp), args.repeat)
        assert bytes(dec) == cur, "ZipNN round trip"
        sizes["zipnn"] = len(comp)
        speed["zipnn"] = (mbps(n, tc), mbps(n, td))

        if len(prev) == n:
            zd = ZipNN(input_format="byte", bytearray_dtype=zdtype, threads=1, delta_compressed_type="byte")
            comp, tc = timed(lambda: zd.compress(cur, delta_second_data=prev), args.repeat)
            comp = bytes(comp)
            zd2 = ZipNN(input_format="byte", bytearray_dtype=zdtype, threads=1, delta_compressed_type="byte")
            dec, td = timed(lambda: zd2.decompress(comp, delta_second_data=prev), args.repeat)
            assert bytes(dec) == cur, "ZipNN delta round trip"
            sizes["zipnn_d"] = len(comp)
            speed["zipnn_d"] = (mbps(n, tc), mbps(n, td))

    # XOR with prev, byte planes, zstd -3 per plane
    if zstandard is not None:
        cctx = zstandard.ZstdCompressor(level=3, threads=0)
        dctx = zstandard.ZstdDecompressor()
        x = xor_bytes(cur, prev)
        usable = len(x) - len(x) % width
        planes = [x[i:usable:width].tobytes() for i in range(width)] + [x[usable:].tobytes()]
        comps = [cctx.compress(p) for p in planes]
        # round trip
        back = np.empty(len(x), dtype=np.uint8)
        for i in range(width):
            back[i:usable:width] = np.frombuffer(dctx.decompress(comps[i]), dtype=np.uint8)
        back[usable:] = np.frombuffer(dctx.decompress(comps[width]), dtype=np.uint8)
        assert back.tobytes() == x.tobytes(), "byte-plane round trip"
        sizes["xor_bp"] = sum(len(c) for c in comps)

    assert hashlib.sha256(cur).digest() == digest, "input was modified"
    for k, v in sizes.items():
        row[k + "_bytes"] = v
        row[k] = n / v
    for k, (c, d) in speed.items():
        row[k + "_compress_mbps"] = c
        row[k + "_decompress_mbps"] = d
    return row


def run_tpde(binary, folder):
    """Run `binary bench folder --json`; return {file basename: row} or None."""
    try:
        p = subprocess.run([binary, "bench", folder, "--json"], capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"note: could not run {binary}: {e}", file=sys.stderr)
        return None
    if p.returncode != 0:
        print(f"note: {binary} bench exited with {p.returncode}: {p.stderr.strip()[:500]}", file=sys.stderr)
        return None
    try:
        rows = json.loads(p.stdout)
    except json.JSONDecodeError:
        # tolerate text before the JSON (e.g. a table, then the JSON)
        start = p.stdout.find("[")
        try:
            rows = json.loads(p.stdout[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            rows = None
    if not isinstance(rows, list):
        print(f"note: {binary} bench --json did not print a JSON list", file=sys.stderr)
        return None
    return {os.path.basename(str(r.get("file", ""))): r for r in rows if isinstance(r, dict)}


def fmt(v, width=8, suffix="x"):
    if v is None:
        return "-".rjust(width)
    return f"{v:.2f}{suffix}".rjust(width)


def fmt_speed(c, d):
    if c is None:
        return "-".rjust(11)
    return f"{c:.0f}/{d:.0f}".rjust(11)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="folder of consecutive .safetensors files (sorted by name)")
    ap.add_argument("--json", metavar="PATH", help="write every number to PATH")
    ap.add_argument("--tpde", metavar="BINARY", help="also run `BINARY bench FOLDER --json` and merge its ratios")
    ap.add_argument("--zstd", default=shutil.which("zstd") or "/usr/bin/zstd", help="zstd CLI (for --patch-from)")
    ap.add_argument("--repeat", type=int, default=1, help="time each operation N times, keep the fastest")
    ap.add_argument("--ext", default=".safetensors", help="file name ending to pick (default .safetensors)")
    args = ap.parse_args()

    files = sorted(f for f in os.listdir(args.folder) if f.endswith(args.ext))
    files = [os.path.join(args.folder, f) for f in files]
    if len(files) < 2:
        sys.exit(f"need at least two {args.ext} files in {args.folder}, found {len(files)}")
    missing = []
    if zstandard is None:
        missing.append("zstandard (pip install zstandard): zstd3 and xor_bp skipped")
    if ZipNN is None:
        missing.append("zipnn (pip install zipnn==0.5.4): zipnn and zipnn_d skipped")
    if not (args.zstd and os.path.exists(args.zstd)):
        missing.append(f"zstd CLI not found ({args.zstd}): patch skipped")
        args.zstd = None
    for m in missing:
        print("note: " + m, file=sys.stderr)

    tpde = run_tpde(args.tpde, args.folder) if args.tpde else None

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prev, cur in zip(files, files[1:]):
            row = measure_pair(prev, cur, args, tmp)
            if tpde is not None:
                t = tpde.get(row["file"])
                if t is not None and t.get("ratio") is not None:
                    row["tpde"] = float(t["ratio"])
                    row["tpde_bytes"] = t.get("tpde_bytes")
                    row["tpde_zstd3_ratio"] = t.get("zstd3_ratio")
                    row["tpde_changed_fraction"] = t.get("changed_fraction")
            rows.append(row)
            print_row(row, header=len(rows) == 1)

    mean = {"file": "mean"}
    for c in COLUMNS + ["changed_fraction"]:
        vals = [r[c] for r in rows if r.get(c) is not None]
        mean[c] = statistics.fmean(vals) if vals and len(vals) == len(rows) else None
    for c in SPEEDS:
        for d in ("compress", "decompress"):
            k = f"{c}_{d}_mbps"
            vals = [r[k] for r in rows if r.get(k) is not None]
            mean[k] = statistics.fmean(vals) if vals else None
    total = sum(r["original_bytes"] for r in rows)
    aggregate = {}
    for c in COLUMNS:
        if all(r.get(c + "_bytes") for r in rows):
            aggregate[c] = total / sum(r[c + "_bytes"] for r in rows)
    print_row(mean, header=False, rule=True)
    print(f"{len(rows)} pairs; ratios = size / compressed size (mean of per-pair ratios); "
          "speeds MB/s compress/decompress, one thread; patch speeds include the zstd CLI's start and file I/O")

    tpde_keyframe = None
    if tpde is not None and files:
        tpde_keyframe = tpde.get(os.path.basename(files[0]))
    if args.json:
        out = {
            "folder": os.path.abspath(args.folder),
            "files": [os.path.basename(f) for f in files],
            "pairs": rows,
            "mean": mean,
            "aggregate_ratio": aggregate,
            "tpde_first_row": tpde_keyframe,
            "tpde_available": tpde is not None,
            "versions": versions(args.zstd),
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


def versions(zstd_bin):
    v = {"python": sys.version.split()[0], "numpy": np.__version__}
    if zstandard is not None:
        v["zstandard"] = zstandard.__version__
        v["libzstd"] = ".".join(map(str, zstandard.ZSTD_VERSION))
    try:
        from importlib.metadata import version
        v["zipnn"] = version("zipnn")
    except Exception:
        pass
    if zstd_bin:
        try:
            v["zstd_cli"] = subprocess.run([zstd_bin, "--version"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return v


def print_row(row, header, rule=False):
    names = ["zstd -3", "patch", "ZipNN", "ZipNN-d", "XOR+bp", "tpde"]
    if header:
        head = f"{'file':<24}{'changed':>8}" + "".join(n.rjust(8) for n in names)
        head += "".join(f"{n} MB/s".rjust(15) for n in ["zstd", "patch", "ZipNN", "ZipNN-d"])
        print(head)
        print("-" * len(head))
    if rule:
        print("-" * (32 + 8 * len(names) + 60))
    line = f"{row['file']:<24}" + fmt(
        None if row.get("changed_fraction") is None else 100 * row["changed_fraction"], 8, "%")
    line += "".join(fmt(row.get(c)) for c in COLUMNS)
    for c in SPEEDS:
        line += "    " + fmt_speed(row.get(f"{c}_compress_mbps"), row.get(f"{c}_decompress_mbps"))
    print(line, flush=True)


if __name__ == "__main__":
    main()
