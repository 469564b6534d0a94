#!/usr/bin/env python3
"""Fuzzes what ``Store.load(step)`` does without ``trusted=True``: tpde's
restricted unpickler and the tensors it builds (``tpde._state.unflatten``).

    python bindings/python/fuzz/fuzz_unpickler.py --seconds 60

Every case is a ``structure.pkl`` and a ``tensors.safetensors``: a valid
state's files (states of every kind tpde saves, states in the previous
format, crafted attacks) with seeded random mutations, or a random stream of
pickle opcodes. Each must load or raise ``tpde.TpdeError``: any other
exception, a crash, a load over ``--case-timeout`` seconds, or one that runs
out of the memory limit (``--max-mib`` above what the worker uses once its
imports are done, set with ``RLIMIT_AS``) is a failure. The loads run in a
worker process that the parent (stdlib only) restarts after a crash; a
failing case is written to ``--artifacts`` and can be replayed with
``--replay SEED:N``. Case N of a seed is the same on every run. Exits 1
when a case failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# the worker: seeds, mutations, loads
# ---------------------------------------------------------------------------

_WIDTH = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
          "BF16": 2, "I16": 2, "U16": 2}


def safetensors_bytes(tensors: List[Tuple[str, str, List[int], Any]]) -> bytes:
    """A safetensors file of (name, dtype, shape, uint8 array), laid out as
    tpde writes it (widest dtypes first, header padded to 8 bytes)."""
    order = sorted(tensors, key=lambda t: -_WIDTH.get(t[1], 1))
    header: Dict[str, Any] = {}
    data, off = [], 0
    for name, st, shape, raw in order:
        b = bytes(raw.tobytes())
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        data.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(data)


def _s(text: str) -> bytes:
    b = text.encode()
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else b"X" + struct.pack("<I", len(b)) + b


def _g(module: str, name: str) -> bytes:
    return _s(module) + _s(name) + b"\x93"


ALLOWED_GLOBALS = [("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                   ("builtins", "complex"), ("builtins", "slice"), ("builtins", "range"),
                   ("builtins", "bytearray"), ("torch", "Size"), ("torch", "device"),
                   ("torch", "float32"), ("torch", "bfloat16"), ("numpy", "dtype"),
                   ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")]
OTHER_GLOBALS = [("builtins", "eval"), ("builtins", "getattr"), ("os", "system"),
                 ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
                 ("torch._utils", "_rebuild_tensor_v2"), ("builtins", "dict"), ("builtins", "list"),
                 ("copyreg", "_reconstructor"), ("torch", "_C"), ("torch", "Tensor")]
DTYPE_NAMES = ["<f8", "|b1", "<U3", "|S2", "<M8[ns]", "<m8", "<c16", "<f16", "|O", "|V8", "<q",
               "O8", "f8", "U2", "M8", "b1", "V4", ">i4", "<U99999999", "x", ""]
TORCH_VIEWS = ["", "complex128", "float8_e4m3fnuz", "bits8", "qint8", "complex64", "float32"]
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40,
               2**63 - 1, 2**64 - 1, -1, -(2**31)]


class Cases:
    """Case N of a seed, the same on every run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seeds = self._seeds()

    def _seeds(self) -> List[Tuple[str, bytes, bytes]]:
        import pickle
        from collections import OrderedDict

        import numpy as np

        from tpde import _state

        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
        rng = np.random.RandomState(0)
        states: Dict[str, Any] = {
            "numpy": {"a": rng.rand(3, 4), "i": np.arange(5, dtype=">i4"), "b": np.array(True),
                      "c": rng.rand(2) + 1j, "u": np.array(["ab", "c"]), "e": np.empty((0, 2)),
                      "ld": np.ones(2, np.longdouble), "dt": np.array([1, 2], "M8[s]")},
            "values": {"f": np.float64(1.5), "s": np.str_("x"), "q": np.longlong(3),
                       "d": np.dtype(">f4"), "t": np.float32, "od": OrderedDict(a=1), "set": {1, 2},
                       "fs": frozenset({"x"}), "c": 1 + 2j, "sl": slice(1, None, 2),
                       "r": range(3, 9), "ba": bytearray(b"ab"), "n": None, "by": b"\x00",
                       "nest": [(1, 2.5, "x"), {3: [4]}], "big": 2**100, "neg": -5},
            "rng": {"np": np.random.RandomState(1).get_state(), "py": random.Random(2).getstate(),
                    "gen": np.random.default_rng(3).bit_generator.state},
        }
        if torch is not None:
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
            opt = torch.optim.Adam(model.parameters())
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
            w = torch.randn(3, 3)
            states["torch"] = {
                "model": model.state_dict(), "opt": opt.state_dict(),
                "rng": torch.get_rng_state(), "size": torch.Size([2, 3]),
                "dev": torch.device("cpu"), "dt": torch.bfloat16,
                "p": torch.nn.Parameter(torch.ones(2)), "g": torch.zeros(2, requires_grad=True),
                "tied": [w, w.detach()], "c": torch.randn(2, dtype=torch.complex128),
                "f8": torch.zeros(3, dtype=torch.float8_e4m3fnuz) if hasattr(torch, "float8_e4m3fnuz")
                else torch.zeros(3), "bf": torch.ones(2, dtype=torch.bfloat16),
                "b": torch.tensor([True, False]), "s": torch.tensor(2.0),
            }
        out = []
        for name, state in states.items():
            tensors, structure = _state.flatten(state)
            out.append((name, structure, safetensors_bytes(tensors)))
        # The previous format: numpy values pickled by numpy, 3-tuple ids.
        for name, value in [("old scalars", {"f": np.float64(2.5), "s": np.str_("ab"),
                                             "t": np.datetime64("2020-01-01"), "b": np.bool_(1)}),
                            ("old dtype", {"d": np.dtype("f4")})]:
            out.append((name, pickle.dumps(value, protocol=4), safetensors_bytes([])))
        # Plain data in every protocol (text opcodes, Python 2 forms).
        plain = {"a": [1, 2.5, "x", None, True, (1, 2)], "b": {3: b"y"}, "c": {1, 2}}
        for proto in range(0, 6):
            out.append((f"plain protocol {proto}", pickle.dumps(plain, protocol=proto),
                        safetensors_bytes([])))
        for name, data in self._crafted().items():
            out.append((name, data, safetensors_bytes([])))
        return out

    @staticmethod
    def _crafted() -> Dict[str, bytes]:
        state = b"(K\x03" + _s("|") + b"NNNJ\x08\x00\x00\x00J\x08\x00\x00\x00K\x00tb"
        p = lambda body: b"\x80\x04" + body + b"."  # noqa: E731
        return {
            "dtype setstate": p(_g("numpy._core.multiarray", "scalar") + _g("numpy", "dtype")
                                + _s("O8") + b"\x89\x88\x87R" + state + b"C\x08AAAAAAAA\x86R"),
            "bytearray(n)": p(_g("builtins", "bytearray") + b"J\xff\xff\xff\x7f\x85R"),
            "set(range)": p(_g("builtins", "set") + _g("builtins", "range")
                            + b"J\x00\x00\x00\x40\x85R\x85R"),
            "list slice": p(b"]" + _g("builtins", "slice") + b"K\x00K\x00\x86R"
                            + _g("builtins", "range") + b"J\x00\x00\x00\x40\x85Rs"),
            "memo": p(b"Nr\xf0\xff\xff\xff"),
            "tuple dag": p(b"}" + b")\x940" + b"".join(b"h" + bytes([i]) + b"h" + bytes([i])
                                                      + b"\x86\x940" for i in range(60))
                           + b"h" + bytes([60]) + b"Ns"),
        }

    # -- mutations ----------------------------------------------------------

    def _pid(self, r: random.Random, names: List[str]) -> bytes:
        name = r.choice(names + ["nope", "", "x" * 300]) if names else "w"
        kind = r.choice(["torch", "numpy", "other", 3])
        c = r.random()
        if c < 0.4:
            items = [_s("tpde"), _s(name), _s(kind) if isinstance(kind, str) else b"K\x03"]
            if r.random() < 0.5:
                items += [_s(r.choice(TORCH_VIEWS + DTYPE_NAMES)), _s(r.choice(["", "g", "p", "pg", "x"])),
                          self._int(r)]
        elif c < 0.7:
            raw = bytes(r.randrange(256) for _ in range(r.choice([0, 1, 2, 4, 8, 16, 12])))
            items = [_s("tpde-np"), _s("scalar"), _s(r.choice(DTYPE_NAMES)),
                     b"C" + bytes([len(raw)]) + raw]
        elif c < 0.85:
            items = [_s("tpde-np"), _s(r.choice(["dtype", "type"])),
                     _s(r.choice(DTYPE_NAMES + ["float32", "void", "object_", "str_"]))]
        else:
            items = [self._atom(r) for _ in range(r.randrange(0, 7))]
        return b"(" + b"".join(items) + b"tQ"

    def _int(self, r: random.Random) -> bytes:
        n = r.choice(INTERESTING + [r.randrange(-300, 300)])
        if 0 <= n < 256:
            return b"K" + bytes([n])
        if -(2**31) <= n < 2**31:
            return b"J" + struct.pack("<i", n)
        b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(b)]) + b

    def _atom(self, r: random.Random) -> bytes:
        c = r.randrange(8)
        if c == 0:
            return self._int(r)
        if c == 1:
            return _s(r.choice(["a", "tpde", "torch", "numpy", "_metadata", "x" * 70]))
        if c == 2:
            n = r.choice([0, 1, 8, 40])
            return b"C" + bytes([n]) + bytes(r.randrange(256) for _ in range(n))
        if c == 3:
            return b"G" + struct.pack(">d", r.choice([0.0, -0.0, 1e308, float("nan"), 2.5]))
        return r.choice([b"N", b"\x88", b"\x89", b")", b"]", b"}", b"\x8f"])

    def _snippet(self, r: random.Random, names: List[str]) -> bytes:
        c = r.randrange(24)
        if c < 4:
            return self._atom(r)
        if c == 4:
            return _g(*r.choice(ALLOWED_GLOBALS if r.random() < 0.8 else OTHER_GLOBALS))
        if c == 5:
            m, n = r.choice(ALLOWED_GLOBALS + OTHER_GLOBALS)
            return b"c" + m.encode() + b"\n" + n.encode() + b"\n"
        if c == 6:
            return self._pid(r, names)
        if c == 7:
            return r.choice([b"r", b"j"]) + struct.pack("<I", r.choice([0, 1, 5, 2**32 - 16]))
        if c == 8:
            return r.choice([b"q", b"h"]) + bytes([r.randrange(8)])
        if c == 9:
            return b"\x95" + struct.pack("<Q", r.choice([0, 1, 9, 2**40, 2**63 + 5]))
        if c == 10:
            op = r.choice([b"\x8e", b"\x96", b"\x8d", b"B", b"X", b"T", b"\x8b"])
            width = 8 if op in (b"\x8e", b"\x96", b"\x8d") else 4
            n = r.choice([0, 1, 3, 2**31 - 1, 2**32 - 1] + ([2**40, 2**63] if width == 8 else []))
            return op + n.to_bytes(width, "little") + b"abc"
        if c == 11:
            return r.choice([b"I12\n", b"L" + b"9" * r.choice([1, 50, 5000]) + b"L\n",
                             b"F1.5\n", b"S'ab'\n", b"Vx\n", b"p0\n", b"g0\n", b"P0\n",
                             b"I01\n", b"(i__builtin__\nset\n"])
        if c == 12:
            return r.choice([b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00", b"\x97", b"\x98"])
        return r.choice([b"(", b"t", b"\x85", b"\x86", b"\x87", b"l", b"d", b"\x91", b"a", b"e",
                         b"s", b"u", b"\x90", b"R", b"b", b"\x81", b"\x92", b"o", b"0", b"1", b"2",
                         b"\x94", b"(", b"R", b"b", b"\x80\x04"])

    def _mutate(self, r: random.Random, data: bytes, names: List[str]) -> bytes:
        b = bytearray(data)
        for _ in range(r.choice([1, 1, 1, 2, 3, 5, 8])):
            c = r.randrange(9)
            pos = r.randrange(len(b) + 1)
            if c == 0 and b:
                b[min(pos, len(b) - 1)] ^= 1 << r.randrange(8)
            elif c == 1 and b:
                b[min(pos, len(b) - 1)] = r.choice([0, 1, 0x7F, 0x80, 0xFF, r.randrange(256)])
            elif c == 2:
                b[pos:pos] = self._snippet(r, names)
            elif c == 3:
                del b[pos:pos + r.randrange(1, 17)]
            elif c == 4 and b:
                start = r.randrange(len(b))
                b[pos:pos] = b[start:start + r.randrange(1, 33)]
            elif c == 5:
                other = r.choice(self.seeds)[1]
                start = r.randrange(len(other))
                b[pos:pos + r.randrange(0, 9)] = other[start:start + r.randrange(1, 65)]
            elif c == 6:
                b[pos:pos + 4] = struct.pack("<I", r.choice(INTERESTING[:12]))
            elif c == 7:
                del b[pos:]
            else:
                b[pos:pos] = b"".join(self._snippet(r, names) for _ in range(r.randrange(1, 6)))
        return bytes(b)

    def _names(self, buf: bytes) -> List[str]:
        try:
            (n,) = struct.unpack("<Q", buf[:8])
            return [k for k in json.loads(buf[8:8 + n]) if k != "__metadata__"]
        except Exception:
            return []

    def case(self, n: int) -> Tuple[bytes, bytes, bool]:
        if n < len(self.seeds):  # each seed as it is, first
            return self.seeds[n][1], self.seeds[n][2], False
        r = random.Random(f"{self.seed}:{n}")
        name, structure, buf = r.choice(self.seeds)
        names = self._names(buf)
        c = r.random()
        if c < 0.7:
            structure = self._mutate(r, structure, names)
        elif c < 0.9:
            body = b"".join(self._snippet(r, names) for _ in range(r.randrange(1, 60)))
            structure = b"\x80" + bytes([r.choice([2, 3, 4, 5])]) + body + b"."
        else:
            structure = self._mutate(r, structure, names)
            b = bytearray(buf)
            for _ in range(r.randrange(1, 4)):
                if b:
                    b[r.randrange(min(len(b), 8 + 200))] = r.randrange(256)
            buf = bytes(b)
        return structure, buf, r.random() < 0.25


def classify(structure: bytes, buf: bytes, numpy_out: bool) -> Tuple[str, str]:
    """("ok" | "tpde" | "bad", detail) of one untrusted load."""
    import numpy as np

    from tpde import TpdeError, _state

    arr = np.frombuffer(buf, np.uint8).copy()
    try:
        _state.unflatten(structure, arr, numpy=numpy_out, map_location=None, trusted=False)
        return "ok", ""
    except TpdeError as e:
        cause = e.__cause__
        if isinstance(cause, (MemoryError, RecursionError)):
            return "bad", f"TpdeError from {type(cause).__name__}: {str(e)[:300]}"
        return "tpde", str(e)[:120]
    except BaseException as e:  # noqa: B902 - PanicException is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        return "bad", f"{type(e).__module__}.{type(e).__name__}: {str(e)[:300]}"


def limit_memory(max_mib: int) -> None:
    """Address space: what this process uses now, and ``max_mib`` more."""
    import resource

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    limit = vm + max_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker(seed: int, start: int, seconds: float, max_mib: int) -> None:
    import warnings

    warnings.simplefilter("ignore")
    cases = Cases(seed)
    limit_memory(max_mib)
    out = sys.stdout
    out.write(f"ready {len(cases.seeds)}\n")
    out.flush()
    t_end = time.monotonic() + seconds
    n = start
    while time.monotonic() < t_end:
        structure, buf, numpy_out = cases.case(n)
        out.write(f"start {n}\n")
        out.flush()
        outcome, detail = classify(structure, buf, numpy_out)
        out.write(f"done {n} {outcome} {base64.b64encode(detail.encode()).decode()}\n")
        out.flush()
        n += 1
    out.write("end\n")
    out.flush()


# ---------------------------------------------------------------------------
# the parent: runs workers, times cases, keeps failures
# ---------------------------------------------------------------------------

def _start(args: argparse.Namespace, start: int, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(args.seed),
         "--start", str(start), "--seconds", str(seconds), "--max-mib", str(args.max_mib)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _dump(args: argparse.Namespace, failures: List[Tuple[int, str]]) -> List[str]:
    """Writes each failing case's files to a folder of its own (one worker
    regenerates them all)."""
    folders = []
    for n, why in failures:
        folder = os.path.join(args.artifacts, f"case-{args.seed}-{n}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "why.txt"), "w") as f:
            f.write(why + "\n")
        folders.append(folder)
    numbers = ",".join(str(n) for n, _ in failures)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--dump", f"{args.seed}:{numbers}",
                    args.artifacts], timeout=300, capture_output=True)
    return folders


def parent(args: argparse.Namespace) -> int:
    counts = {"ok": 0, "tpde": 0}
    failures: List[Tuple[int, str]] = []
    fuzzed = 0.0
    next_case = 0
    t_start = time.monotonic()
    while fuzzed < args.seconds and time.monotonic() - t_start < args.seconds + 600:
        proc = _start(args, next_case, args.seconds - fuzzed)
        assert proc.stdout is not None
        current: Optional[int] = None
        ready_at: Optional[float] = None
        buf = b""
        ended = False
        while True:
            timeout = args.case_timeout if current is not None else 300
            r, _, _ = select.select([proc.stdout], [], [], timeout)
            if not r:
                proc.kill()
                proc.wait()
                if current is None:
                    print("fuzz_unpickler: the worker did not start", file=sys.stderr)
                    return 2
                why = f"case {args.seed}:{current} ran over {args.case_timeout} s"
                failures.append((current, why))
                next_case = current + 1
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the worker died
                rc = proc.wait()
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                if current is None:
                    print(f"fuzz_unpickler: the worker failed (rc {rc}):\n{err}", file=sys.stderr)
                    return 2
                why = f"case {args.seed}:{current} killed the worker (rc {rc}): {err}"
                failures.append((current, why))
                next_case = current + 1
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode().split(" ")
                if words[0] == "ready":
                    ready_at = time.monotonic()
                elif words[0] == "start":
                    current = int(words[1])
                elif words[0] == "done":
                    n, outcome = int(words[1]), words[2]
                    detail = base64.b64decode(words[3]).decode() if len(words) > 3 else ""
                    if outcome == "bad":
                        failures.append((n, f"case {args.seed}:{n}: {detail}"))
                    else:
                        counts[outcome] += 1
                    current = None
                    next_case = n + 1
                elif words[0] == "end":
                    ended = True
            if ended:
                proc.wait()
                break
        if ready_at is not None:
            fuzzed += time.monotonic() - ready_at
        if ended:
            break
        if len(failures) >= 20:
            break
    total = counts["ok"] + counts["tpde"] + len(failures)
    print(f"fuzz_unpickler: {total} cases in {fuzzed:.1f} s (seed {args.seed}): {counts['ok']} "
          f"loaded, {counts['tpde']} raised TpdeError, {len(failures)} failed")
    for (n, why), folder in zip(failures, _dump(args, failures) if failures else []):
        print(f"FAILED {why}\n  files: {folder}\n  replay: {sys.executable} "
              f"{os.path.abspath(__file__)} --replay {args.seed}:{n}")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="time spent loading cases")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000,
                    help="the cases' seed (default: from the clock; printed)")
    ap.add_argument("--case-timeout", type=float, default=10.0,
                    help="a case that takes longer fails")
    ap.add_argument("--max-mib", type=int, default=1024,
                    help="memory a worker may take beyond its imports (RLIMIT_AS)")
    ap.add_argument("--artifacts", default=os.path.join(tempfile.gettempdir(), "tpde-fuzz-unpickler"),
                    help="where failing cases are written")
    ap.add_argument("--replay", metavar="SEED:N", help="load one case here and print its outcome")
    ap.add_argument("--dump", nargs=2, metavar=("SEED:N,N", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seconds <= 0 or args.case_timeout <= 0 or args.max_mib <= 0:
        ap.error("--seconds, --case-timeout and --max-mib must be positive")
    if args.worker:
        worker(args.seed, args.start, args.seconds, args.max_mib)
        return 0
    if args.dump:
        seed, numbers = args.dump[0].split(":")
        cases = Cases(int(seed))
        for n in numbers.split(","):
            structure, buf, numpy_out = cases.case(int(n))
            folder = os.path.join(args.dump[1], f"case-{seed}-{n}")
            os.makedirs(folder, exist_ok=True)
            for name, data in [("structure.pkl", structure), ("tensors.safetensors", buf),
                               ("numpy.txt", f"numpy={numpy_out}\n".encode())]:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
        return 0
    if args.replay:
        seed, n = args.replay.split(":")
        structure, buf, numpy_out = Cases(int(seed)).case(int(n))
        limit_memory(args.max_mib)
        print(classify(structure, buf, numpy_out))
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
