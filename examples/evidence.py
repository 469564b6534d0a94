#!/usr/bin/env python3
"""The evidence: every method on every regime, side by side, and docs/RESULTS.md.

For each regime folder under --runs (made by examples/regimes.sh: notes,
bf16, frozen, steps, bf16-lowlr; each with weights/ and adam/ holding
consecutive safetensors checkpoints), and for each part, this runs in one go:

  tpde            lossless, `tpde -j 1 encode cur --ref prev` / decode (CLI)
  tpde E=...      lossy, closed loop (each file against the reconstruction of
                  the previous one), at the two --bounds
  zstd -3, -19    each file alone (python zstandard, one thread)
  patch-from      `zstd -3 -T1 --patch-from=prev` (CLI)
  ZipNN, ZipNN-d  ZipNN 0.5.4 on each file, and its XOR delta mode against
                  prev (plain compress() rewrites its input: it gets a copy,
                  timed with it)
  notes           the research notes' method as they describe it: elements
                  whose change exceeds 1e-3 kept as F32 values at Elias-delta
                  positions (+ zstd -3 of the values, + 4 bytes per tensor for
                  the count), the rest dropped, open loop (lossy; its error is
                  reported)

Each method runs in a process of its own; per method and part: ratio per step
(original / stored bytes of each delta), compress and decompress MB/s (one
thread; CLI timings include process start and file I/O), and peak RSS of
that process (for the Python methods it includes the interpreter, the
libraries and both files in memory). Every lossless result is decompressed
and compared with the original; lossy ones are checked against their bound.

It also measures, per step, the fraction of elements whose bits changed, and
the lengths of the gaps between changed positions: their histogram, with a
discrete power law fitted by maximum likelihood (the notes claim an exponent
of 1.5-2) and, for comparison, the geometric law that randomly placed changes
would give.

Writes OUT/RESULTS.md, OUT/results/*.png and OUT/results/evidence.json.

    ~/.cache/tpde/venv/bin/python examples/evidence.py --runs /tmp/tpde-regimes --out docs

examples/evidence.sh does everything from nothing (venv, training, this).
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REGIMES = [
    ("notes", "(a) the notes' experiment: FP32, Adam lr 1e-3, a checkpoint per epoch"),
    ("bf16", "(b) the same training in BF16 (smaller model)"),
    ("frozen", "(c) fine-tuning with most layers frozen"),
    ("steps", "(d) a checkpoint every few steps"),
    ("bf16-lowlr", "(e) BF16 weights, learning rate 1e-5"),
]
PARTS = ["weights", "adam"]
NOTES_THRESHOLD = 1e-3
WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
ZIPNN_DTYPE = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def natural(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def checkpoint_files(folder):
    names = sorted((n for n in os.listdir(folder) if n.endswith(".safetensors")), key=natural)
    return [os.path.join(folder, n) for n in names]


def header(data):
    n = int.from_bytes(data[:8], "little")
    return 8 + n, json.loads(data[8:8 + n])


def tensors(data):
    """[(name, dtype, array)] of a safetensors file's bytes (raw element views)."""
    start, h = header(data)
    out = []
    for name, info in h.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = info["dtype"]
        raw = np.frombuffer(data, dtype=np.uint8, count=e - b, offset=start + b)
        out.append((name, dt, raw))
    return out


def main_dtype(data):
    by = {}
    for _, dt, raw in tensors(data):
        by[dt] = by.get(dt, 0) + raw.size
    return max(by.items(), key=lambda kv: kv[1])[0] if by else "U8"


def float_values(data):
    """{name: float64 values} of the float tensors."""
    out = {}
    for name, dt, raw in tensors(data):
        if dt == "F32":
            out[name] = raw.view(np.float32).astype(np.float64)
        elif dt == "F16":
            out[name] = raw.view(np.float16).astype(np.float64)
        elif dt == "F64":
            out[name] = raw.view(np.float64).copy()
        elif dt == "BF16":
            out[name] = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return out


def max_error(restored, original):
    worst = 0.0
    for name, x in original.items():
        y = restored[name]
        fin = np.isfinite(x)
        if fin.any():
            worst = max(worst, float(np.abs(y[fin] - x[fin]).max()))
    return worst


# ---------------------------------------------------------------- workers

def timed_run(cmd):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS in KB)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")
    return dt, int(p.stderr.strip().splitlines()[-1])


def worker(method, folder, args):
    """Runs one method over the consecutive files of a folder; returns a dict."""
    files = checkpoint_files(folder)
    tmp = tempfile.mkdtemp(prefix="tpde-evidence-")
    res = {"ratios": [], "enc_s": 0.0, "dec_s": 0.0, "bytes": 0, "peak_kb": 0, "max_error": None}
    try:
        if method == "tpde" or method.startswith("tpde-lossy"):
            lossy = method.startswith("tpde-lossy")
            bound = float(method.split("=")[1]) if lossy else None
            prev_ref = None
            for i, cur_path in enumerate(files):
                cur = open(cur_path, "rb").read()
                out = os.path.join(tmp, f"{i}.tpde")
                back = os.path.join(tmp, f"{i}.back")
                ref = prev_ref if lossy else (files[i - 1] if i else None)
                cmd = [args.tpde, "-j", "1", "encode", cur_path, "-o", out]
                if ref:
                    cmd += ["--ref", ref]
                if lossy:
                    cmd += ["--max-abs-error", str(bound)]
                te, pe = timed_run(cmd)
                dcmd = [args.tpde, "-j", "1", "decode", out, "-o", back] + (["--ref", ref] if ref else [])
                td, pd = timed_run(dcmd)
                restored = open(back, "rb").read()
                if lossy:
                    err = max_error(float_values(restored), float_values(cur))
                    if err > bound:
                        raise RuntimeError(f"{method}: error {err} above the bound")
                    res["max_error"] = max(res["max_error"] or 0.0, err)
                    if prev_ref:
                        os.remove(prev_ref)
                    prev_ref = back
                elif restored != cur:
                    raise RuntimeError(f"tpde round trip failed on {cur_path}")
                else:
                    os.remove(back)
                if i:
                    res["ratios"].append(len(cur) / os.path.getsize(out))
                    res["enc_s"] += te
                    res["dec_s"] += td
                    res["bytes"] += len(cur)
                res["peak_kb"] = max(res["peak_kb"], pe, pd)
                os.remove(out)
        elif method == "patch-from":
            for i in range(1, len(files)):
                cur = open(files[i], "rb").read()
                out, back = os.path.join(tmp, "p.zst"), os.path.join(tmp, "p.out")
                te, pe = timed_run([args.zstd, "-3", "-T1", "-q", "-f", "--patch-from=" + files[i - 1],
                                    files[i], "-o", out])
                td, pd = timed_run([args.zstd, "-d", "-T1", "-q", "-f", "--patch-from=" + files[i - 1],
                                    out, "-o", back])
                if open(back, "rb").read() != cur:
                    raise RuntimeError("zstd --patch-from round trip failed")
                res["ratios"].append(len(cur) / os.path.getsize(out))
                res["enc_s"] += te
                res["dec_s"] += td
                res["bytes"] += len(cur)
                res["peak_kb"] = max(res["peak_kb"], pe, pd)
        else:
            python_method(method, files, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def elias_delta_bits(gaps):
    L = np.floor(np.log2(gaps)).astype(np.int64) + 1
    N = np.floor(np.log2(L)).astype(np.int64)
    return int((2 * N + L).sum())


def python_method(method, files, res):
    import zstandard

    def step(cur, enc, dec):
        t0 = time.perf_counter()
        packed = enc()
        t1 = time.perf_counter()
        back = dec(packed)
        t2 = time.perf_counter()
        if back is not None and bytes(back) != cur:
            raise RuntimeError(f"{method}: round trip failed")
        res["ratios"].append(len(cur) / len(packed))
        res["enc_s"] += t1 - t0
        res["dec_s"] += t2 - t1
        res["bytes"] += len(cur)

    if method in ("zstd-3", "zstd-19"):
        level = int(method.split("-")[1])
        c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
        for path in files[1:]:
            cur = open(path, "rb").read()
            step(cur, lambda: c.compress(cur), d.decompress)
    elif method in ("zipnn", "zipnn-delta"):
        from zipnn import ZipNN
        for i in range(1, len(files)):
            prev, cur = open(files[i - 1], "rb").read(), open(files[i], "rb").read()
            zd = ZIPNN_DTYPE.get(main_dtype(cur))
            if zd is None:
                return
            if method == "zipnn":
                z = ZipNN(input_format="byte", bytearray_dtype=zd, threads=1)
                step(cur, lambda: bytes(z.compress(bytearray(cur))), z.decompress)
            else:
                if len(prev) != len(cur):
                    continue
                z1 = ZipNN(input_format="byte", bytearray_dtype=zd, threads=1, delta_compressed_type="byte")
                z2 = ZipNN(input_format="byte", bytearray_dtype=zd, threads=1, delta_compressed_type="byte")
                step(cur, lambda: bytes(z1.compress(cur, delta_second_data=prev)),
                     lambda p: z2.decompress(p, delta_second_data=prev))
    elif method == "notes":
        zc = zstandard.ZstdCompressor(level=3)
        prev = float_values(open(files[0], "rb").read())
        recon = {k: v.copy() for k, v in prev.items()}
        for path in files[1:]:
            cur_bytes = open(path, "rb").read()
            cur = float_values(cur_bytes)
            t0 = time.perf_counter()
            size = 0
            for name, x in cur.items():
                size += 4  # the count of kept elements of the tensor
                if name not in prev or prev[name].shape != x.shape:
                    size += len(zc.compress(x.astype(np.float32).tobytes()))
                    recon[name] = x.copy()
                    continue
                idx = np.flatnonzero(np.abs(x - prev[name]) > NOTES_THRESHOLD)
                if idx.size:
                    gaps = np.diff(np.concatenate(([-1], idx)))
                    size += (elias_delta_bits(gaps) + 7) // 8
                    size += len(zc.compress(x[idx].astype(np.float32).tobytes()))
                recon[name][idx] = x[idx]
            res["enc_s"] += time.perf_counter() - t0
            res["ratios"].append(len(cur_bytes) / size)
            res["bytes"] += len(cur_bytes)
            res["max_error"] = max_error(recon, cur)
            prev = cur
        res["dec_s"] = None
    else:
        raise SystemExit(f"unknown method {method}")


# ---------------------------------------------------------- measurements

def count_gaps(idx, counts):
    """Adds the gaps between the sorted positions idx (from -1) to counts."""
    if idx.size:
        vals, c = np.unique(np.diff(np.concatenate(([-1], idx))), return_counts=True)
        for v, k in zip(vals.tolist(), c.tolist()):
            counts[v] = counts.get(v, 0) + k


def change_stats(folder):
    """Per step: the fraction of elements whose bits changed. Over all steps:
    the gap lengths between changed positions (bits changed), and between
    the positions the notes' method keeps (float elements with |change| >
    1e-3, their setting)."""
    files = checkpoint_files(folder)
    fractions, bit_gaps, thr_gaps = [], {}, {}
    prev = open(files[0], "rb").read()
    for path in files[1:]:
        cur = open(path, "rb").read()
        changed = total = 0
        pt = {n: (d, r) for n, d, r in tensors(prev)}
        for name, dt, raw in tensors(cur):
            w = WIDTH.get(dt, 1)
            if name not in pt or pt[name][1].size != raw.size or raw.size % w:
                continue
            view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[w]
            diff = raw.view(view) != pt[name][1].view(view)
            changed += int(diff.sum())
            total += diff.size
            count_gaps(np.flatnonzero(diff), bit_gaps)
        pv, cv = float_values(prev), float_values(cur)
        for name, x in cv.items():
            if name in pv and pv[name].shape == x.shape:
                count_gaps(np.flatnonzero(np.abs(x - pv[name]) > NOTES_THRESHOLD), thr_gaps)
        fractions.append(changed / max(total, 1))
        prev = cur
    return fractions, bit_gaps, thr_gaps


def fit_gaps(gap_counts):
    """Discrete power law P(g) ~ g^-a (g >= 1; MLE with the continuous
    approximation a = 1 + n / sum ln(g / 0.5)) and geometric P(g) = p(1-p)^(g-1)
    (MLE p = 1/mean); returns a, p and the log-likelihood of each (exact pmfs)."""
    if not gap_counts:
        return None
    g = np.array(list(gap_counts.keys()), dtype=np.float64)
    c = np.array(list(gap_counts.values()), dtype=np.float64)
    n = c.sum()
    a = 1.0 + n / float((c * np.log(g / 0.5)).sum())
    p = n / float((c * g).sum())
    # Exact log-likelihoods: zeta normalisation for the power law.
    zeta = float(np.sum(np.arange(1, 200_001, dtype=np.float64) ** -a)) + (200_000 ** (1 - a)) / (a - 1)
    ll_pow = float((c * (-a * np.log(g))).sum() - n * math.log(zeta))
    ll_geo = float((c * (np.log(p) + (g - 1) * np.log1p(-p))).sum()) if p < 1 else 0.0
    return {"alpha": a, "p": p, "n": int(n), "ll_power": ll_pow, "ll_geometric": ll_geo,
            "mean_gap": float((c * g).sum() / n)}


# --------------------------------------------------------------- report

METHOD_ORDER = ["tpde", "tpde-lossy", "zstd-3", "zstd-19", "patch-from", "zipnn", "zipnn-delta", "notes"]


def methods(bounds):
    return (["tpde"] + [f"tpde-lossy={b:g}" for b in bounds]
            + ["zstd-3", "zstd-19", "patch-from", "zipnn", "zipnn-delta", "notes"])


def label(m):
    return {"tpde": "tpde (lossless)", "zstd-3": "zstd -3", "zstd-19": "zstd -19",
            "patch-from": "zstd --patch-from", "zipnn": "ZipNN", "zipnn-delta": "ZipNN delta",
            "notes": "notes' method (lossy, 1e-3)"}.get(m, m.replace("tpde-lossy=", "tpde lossy E="))


def plot(results, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for regime, parts in results.items():
        fig, axes = plt.subplots(1, len(parts) + 1, figsize=(5 * (len(parts) + 1), 3.6))
        for ax, (part, r) in zip(axes, parts.items()):
            for m, v in r["methods"].items():
                if v.get("ratios"):
                    ax.plot(range(1, len(v["ratios"]) + 1), v["ratios"], marker=".", label=label(m))
            ax.set_yscale("log")
            ax.set_title(f"{regime}: {part}, ratio per step")
            ax.set_xlabel("step (delta)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        ax = axes[-1]
        for part, r in parts.items():
            ax.plot(range(1, len(r["changed"]) + 1), [100 * f for f in r["changed"]], marker=".", label=part)
        ax.set_title(f"{regime}: elements changed (%)")
        ax.set_xlabel("step (delta)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        p = os.path.join(outdir, f"{regime}-ratios.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths[(regime, "ratios")] = p

        panels = [(part, kind) for part in parts for kind in ("bits", "threshold")]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
        for ax, (part, kind) in zip(np.atleast_1d(axes), panels):
            gc, fit = parts[part]["gaps"][kind], parts[part]["gap_fit"][kind]
            what = "bits changed" if kind == "bits" else "|change| > 1e-3"
            if not gc:
                ax.set_title(f"{regime}/{part}: no gaps ({what})", fontsize=9)
                continue
            g = np.array(sorted(gc))
            c = np.array([gc[k] for k in g], dtype=np.float64)
            ax.loglog(g, c / c.sum(), ".", label="measured")
            xs = np.unique(np.logspace(0, math.log10(max(g.max(), 2)), 60).astype(int))
            zeta = sum(k ** -fit["alpha"] for k in range(1, 200_001))
            ax.loglog(xs, xs ** -fit["alpha"] / zeta, "-", label=f"power law a={fit['alpha']:.2f}")
            if fit["p"] < 1:
                ax.loglog(xs, fit["p"] * (1 - fit["p"]) ** (xs - 1), "--",
                          label=f"geometric p={fit['p']:.3f}")
            ax.set_ylim(max(1e-12, 0.5 / c.sum()), 1.5)
            ax.set_title(f"{regime}/{part}: gaps ({what})", fontsize=9)
            ax.set_xlabel("gap between positions")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        p = os.path.join(outdir, f"{regime}-gaps.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths[(regime, "gaps")] = p
    return paths


def results_elapsed(results):
    return max((r.get("elapsed_s", 0) for p in results.values() for r in p.values()), default=0)


def mean(v):
    return sum(v) / len(v) if v else None


def report(results, args, outdir, plots, elapsed):
    lines = ["# Results", "",
             "Generated by `examples/evidence.sh` (which trains the runs with "
             "`examples/regimes.sh` and then runs `examples/evidence.py`); every number below "
             "comes from that run. Do not edit by hand.", "",
             f"Machine: {os.cpu_count()} CPU cores. Every method runs single-threaded (`tpde -j 1`, "
             "`zstd -T1`, ZipNN threads=1). Speeds are MB/s of original bytes; for the command-line "
             "tools (tpde, zstd --patch-from) they include process start and file I/O. Peak memory is "
             "the peak RSS of the process running the method; for the Python methods (zstd, ZipNN, the "
             "notes' method) it includes the interpreter, numpy, the library and both files in memory. "
             f"The whole run took {elapsed / 60:.0f} minutes.", ""]
    claims = []
    for regime, desc in REGIMES:
        if regime not in results:
            continue
        lines += [f"## {desc}", ""]
        for part, r in results[regime].items():
            lines += [f"### {regime}: {part} ({r['files']} checkpoints, {r['bytes'] / 1e6:.1f} MB each)", "",
                      "| method | mean ratio | best | worst | compress MB/s | decompress MB/s | peak MB | max error |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for m, v in r["methods"].items():
                if not v.get("ratios"):
                    lines.append(f"| {label(m)} | - | - | - | - | - | - | - |")
                    continue
                enc = v["bytes"] / 1e6 / v["enc_s"] if v["enc_s"] else None
                dec = v["bytes"] / 1e6 / v["dec_s"] if v.get("dec_s") else None
                err = v.get("max_error")
                lines.append(
                    f"| {label(m)} | {mean(v['ratios']):.3f}x | {max(v['ratios']):.3f}x | "
                    f"{min(v['ratios']):.3f}x | {enc:.0f} | " + (f"{dec:.0f}" if dec else "-") +
                    f" | {v['peak_kb'] / 1024:.0f} | " + ("exact" if err is None else f"{err:.2e}") + " |")
            ch = r["changed"]
            lines += ["", f"Elements whose bits changed per step: {100 * min(ch):.1f}% to "
                      f"{100 * max(ch):.1f}% (mean {100 * mean(ch):.1f}%)."]
            for kind, what in (("bits", "positions whose bits changed"),
                               ("threshold", "positions the notes' method keeps (|change| > 1e-3)")):
                fit = r["gap_fit"][kind]
                if not fit:
                    lines.append(f"Gaps between {what}: none.")
                    continue
                better = "power law" if fit["ll_power"] > fit["ll_geometric"] else "geometric law"
                lines.append(f"Gaps between {what}: {fit['n']:,} gaps, mean {fit['mean_gap']:.2f}; "
                             f"power-law exponent {fit['alpha']:.2f}, geometric p = {fit['p']:.3f}; "
                             f"log-likelihood {fit['ll_power']:.4g} (power law) vs {fit['ll_geometric']:.4g} "
                             f"(geometric): the {better} fits better.")
            lines.append("")
        lines += [f"![{regime} ratios]({os.path.relpath(plots[(regime, 'ratios')], outdir)})", "",
                  f"![{regime} gaps]({os.path.relpath(plots[(regime, 'gaps')], outdir)})", ""]

    # The notes' claims, checked against the numbers above.
    lines += ["## The research notes' claims", ""]
    nw = results.get("notes", {}).get("weights")
    if nw:
        t = nw["methods"]["tpde"]["ratios"]
        lines.append(f"- *1.36x on average, 1.94x at best (FP32 weights).* tpde lossless measures "
                     f"{mean(t):.3f}x on average and {max(t):.3f}x at best on the same experiment: "
                     + ("the average holds" if abs(mean(t) - 1.36) < 0.05 else "the average does not hold")
                     + ("; the best step does not reach 1.94x." if max(t) < 1.9 else "; the best step is near it."))
        nm = nw["methods"]["notes"]
        lines.append(f"- *The 1e-3 threshold is lossless.* It is not: the notes' method as described "
                     f"restores weights with errors up to {nm['max_error']:.2e} after {len(nm['ratios'])} "
                     f"steps (open loop: dropped changes add up), at a mean ratio of {mean(nm['ratios']):.3f}x. "
                     f"tpde's lossy mode at the same bound E=1e-3 stays within it and gets "
                     f"{mean(nw['methods']['tpde-lossy=' + format(args.bounds[0], 'g')]['ratios']):.3f}x.")
    alphas = [(reg, part, r["gap_fit"]["threshold"]) for reg, parts in results.items()
              for part, r in parts.items() if r["gap_fit"]["threshold"]]
    if alphas:
        in_range = [f"{reg}/{part}" for reg, part, f in alphas if 1.5 <= f["alpha"] <= 2.0]
        geo = [f"{reg}/{part}" for reg, part, f in alphas if f["ll_geometric"] > f["ll_power"]]
        lines.append("- *Gaps between kept positions follow a power law with exponent 1.5-2.* "
                     "Fitted exponents (positions with |change| > 1e-3): "
                     + ", ".join(f"{reg}/{part} {f['alpha']:.2f}" for reg, part, f in alphas)
                     + f". In 1.5-2: {', '.join(in_range) or 'none'}. The geometric law of randomly "
                     f"placed changes fits better than the power law in: {', '.join(geo) or 'none'}.")
    lines.append("")
    lines += ["## Conclusions", ""] + conclusions(results, args) + [""]
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))


def conclusions(results, args):
    """Plain statements, each computed from the measurements above."""
    out = []
    rows = []  # (name, means by method, run)
    for regime, parts in results.items():
        for part, r in parts.items():
            ms = {m: mean(v["ratios"]) for m, v in r["methods"].items() if v.get("ratios")}
            rows.append((f"{regime}/{part}", ms, r))
    lossless_of = lambda ms: {m: v for m, v in ms.items()  # noqa: E731
                              if not m.startswith("tpde-lossy") and m != "notes"}
    wins = [n for n, ms, _ in rows if max(lossless_of(ms), key=lossless_of(ms).get) == "tpde"]
    losses = [(n, max(lossless_of(ms), key=lossless_of(ms).get)) for n, ms, _ in rows if n not in wins]
    out.append(f"- **Lossless ratio.** tpde is the best lossless method in {len(wins)} of {len(rows)} "
               "regime/part pairs" + (": " + ", ".join(f"{n} (won by {label(m)})" for n, m in losses)
                                       + " are the exceptions." if losses else "."))
    for n, ms, r in rows:
        lo = lossless_of(ms)
        others = {m: v for m, v in lo.items() if m != "tpde"}
        best_other = max(others, key=others.get)
        out.append(f"  - {n}: tpde {ms['tpde']:.3f}x, best other {label(best_other)} {others[best_other]:.3f}x, "
                   f"zstd -3 {ms['zstd-3']:.3f}x; {100 * mean(r['changed']):.0f}% of elements change per step.")
    sparse = [(n, ms["tpde"]) for n, ms, r in rows if mean(r["changed"]) < 0.5]
    dense = [(n, ms["tpde"]) for n, ms, r in rows if mean(r["changed"]) >= 0.9]
    if sparse and dense:
        out.append(f"- **Where the changes are sparse** (under half the elements per step: "
                   f"{', '.join(n for n, _ in sparse)}) tpde reaches {min(v for _, v in sparse):.2f}x to "
                   f"{max(v for _, v in sparse):.2f}x; where nearly every element changes "
                   f"({', '.join(n for n, _ in dense)}) {min(v for _, v in dense):.2f}x to "
                   f"{max(v for _, v in dense):.2f}x. Dense FP32 training leaves little for any lossless "
                   "method: the low mantissa bits of every weight change at every step.")

    def speeds(m):
        enc, dec = [], []
        for _, _, r in rows:
            v = r["methods"].get(m)
            if v and v.get("ratios") and v["enc_s"]:
                enc.append(v["bytes"] / 1e6 / v["enc_s"])
                if v.get("dec_s"):
                    dec.append(v["bytes"] / 1e6 / v["dec_s"])
        return enc, dec

    parts = []
    for m in ["tpde", "zstd-3", "patch-from", "zipnn", "zipnn-delta"]:
        enc, dec = speeds(m)
        if enc:
            parts.append(f"{label(m)} {min(enc):.0f}-{max(enc):.0f} MB/s to compress, "
                         f"{min(dec):.0f}-{max(dec):.0f} to decompress")
    t_enc, _ = speeds("tpde")
    z_enc, _ = speeds("zstd-3")
    n_enc, _ = speeds("zipnn")
    slower = [f"{label(m)} {statistics.median(o) / statistics.median(t_enc):.1f}x"
              for m, o in (("zstd-3", z_enc), ("zipnn", n_enc)) if o and t_enc]
    out.append("- **Speed, one thread.** " + "; ".join(parts) + ". Median compression speed relative "
               "to tpde: " + ", ".join(slower) + " (tpde's command-line timings include starting the "
               "process and reading and writing the files).")
    peaks = {m: max(r["methods"][m]["peak_kb"] for _, _, r in rows if m in r["methods"]) / 1024
             for m in ["tpde", "zstd-3", "zipnn", "patch-from"]}
    biggest = max(r["bytes"] for _, _, r in rows) / 1e6
    out.append(f"- **Peak memory** over all regimes (largest file {biggest:.0f} MB): "
               + ", ".join(f"{label(m)} {v:.0f} MB" for m, v in peaks.items()) + ".")
    e1 = f"tpde-lossy={args.bounds[0]:g}"
    w = [(n, ms[e1]) for n, ms, _ in rows if n.endswith("/weights") and e1 in ms]
    a = [(n, ms[e1]) for n, ms, _ in rows if n.endswith("/adam") and e1 in ms]
    if w:
        out.append(f"- **Lossy, E = {args.bounds[0]:g}.** Weights: {min(v for _, v in w):.1f}x to "
                   f"{max(v for _, v in w):.1f}x, every element within the bound. On Adam state the same "
                   f"absolute bound gives {min(v for _, v in a):.0f}x to {max(v for _, v in a):.0f}x because "
                   "it exceeds most moments outright (second moments are around 1e-8): use a bound "
                   "relative to each tensor's RMS there (`--max-rel-error`).")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", help="folder of regime runs (examples/regimes.sh)")
    ap.add_argument("--out", default="docs", help="where RESULTS.md and results/ go")
    ap.add_argument("--tpde", default="target/release/tpde")
    ap.add_argument("--zstd", default=shutil.which("zstd") or "/usr/bin/zstd")
    ap.add_argument("--bounds", type=float, nargs=2, default=[1e-3, 1e-4])
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--from-json", metavar="PATH",
                    help="rewrite RESULTS.md and the plots from a previous run's evidence.json")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args)))
        return 0
    if not args.runs:
        ap.error("--runs is required")
    t0 = time.time()
    outdir = os.path.join(args.out, "results")
    os.makedirs(outdir, exist_ok=True)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        for parts in results.values():
            for r in parts.values():
                r["gaps"] = {k: {int(g): c for g, c in v.items()} for k, v in r["gaps"].items()}
        plots = plot(results, outdir)
        report(results, args, args.out, plots, results_elapsed(results))
        return 0
    results = {}
    for regime, _ in REGIMES:
        for part in PARTS:
            folder = os.path.join(args.runs, regime, part)
            if not os.path.isdir(folder) or len(checkpoint_files(folder)) < 2:
                continue
            files = checkpoint_files(folder)
            r = {"files": len(files), "bytes": os.path.getsize(files[-1]), "methods": {}}
            for m in methods(args.bounds):
                t = time.time()
                # Under /usr/bin/time: a process forked from this one would
                # report this one's memory as its own peak.
                p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, __file__, "--worker", m,
                                    folder, "--tpde", args.tpde, "--zstd", args.zstd],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"{m} on {folder} failed:\n{p.stderr[-2000:]}")
                r["methods"][m] = json.loads(p.stdout.strip().splitlines()[-1])
                if m not in ("patch-from",) and not m.startswith("tpde"):
                    r["methods"][m]["peak_kb"] = int(p.stderr.strip().splitlines()[-1])
                v = r["methods"][m]
                print(f"{regime}/{part} {m:16} mean ratio "
                      f"{mean(v['ratios']) or 0:8.3f}x  ({time.time() - t:.0f} s)", flush=True)
            r["changed"], bit_gaps, thr_gaps = change_stats(folder)
            r["gaps"] = {"bits": bit_gaps, "threshold": thr_gaps}
            r["gap_fit"] = {"bits": fit_gaps(bit_gaps), "threshold": fit_gaps(thr_gaps)}
            results.setdefault(regime, {})[part] = r
    plots = plot(results, outdir)
    for parts in results.values():
        for r in parts.values():
            r["elapsed_s"] = time.time() - t0
    with open(os.path.join(outdir, "evidence.json"), "w") as f:
        json.dump({reg: {part: dict(r, gaps={kind: {str(k): v for k, v in g.items()}
                                             for kind, g in r["gaps"].items()})
                         for part, r in parts.items()} for reg, parts in results.items()}, f, indent=1)
    report(results, args, args.out, plots, time.time() - t0)
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')} and {outdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
