"""Store.load without trusted=True on hostile stores: crafted pickles must
raise tpde.TpdeError (or load plain data) without crashing the process,
allocating far more than their size, or running for long. The loads run in
a child process (under a memory limit) so that a crash shows as a failure."""

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest

import tpde

torch = pytest.importorskip("torch")


# -- a tiny pickle assembler ------------------------------------------------

def s(text):
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b


def g(module, name):
    return s(module) + s(name) + b"\x93"


def i32(n):
    return b"J" + struct.pack("<i", n)


def i64(n):
    b = n.to_bytes(9, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def p(body):
    return b"\x80\x04" + body + b"."


STATE = b"(K\x03" + s("|") + b"NNN" + i32(8) + i32(8) + b"K\x00tb"  # dtype state, flags 0


def crafted():
    """label -> (pickle, what the error must say, or None when it may load)."""
    # A DAG of 60 tuples (t[i+1] = (t[i], t[i])) whose tree has 2**60 nodes:
    # hashing or printing it never ends.
    tup = (b")\x940" + b"".join(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x940" for i in range(60))
           + b"h" + bytes([60]))
    return {
        # numpy.dtype('O8') with flags 0 via BUILD, then scalar(): numpy reads
        # the 8 attacker bytes as a PyObject* (a segfault).
        "dtype setstate object": (p(g("numpy._core.multiarray", "scalar") + g("numpy", "dtype")
                                    + s("O8") + b"\x89\x88\x87R" + STATE + b"C\x08" + b"A" * 8
                                    + b"\x86R"), "trusted=True"),
        "dtype setstate f8 flags": (p(g("numpy._core.multiarray", "scalar") + g("numpy", "dtype")
                                      + s("f8") + b"\x89\x88\x87R"
                                      + b"(K\x03" + s("|") + b"NNN" + i32(8) + i32(8) + b"K\x19tb"
                                      + b"C\x08" + b"A" * 8 + b"\x86R"), "dtype"),
        "dtype setstate old numpy": (p(g("numpy.core.multiarray", "scalar") + g("numpy", "dtype")
                                       + s("V8") + b"\x89\x88\x87R" + STATE + b"C\x08" + b"A" * 8
                                       + b"\x86R"), "trusted=True"),
        "bytearray(n)": (p(g("builtins", "bytearray") + i32(2**31 - 1) + b"\x85R"), "bytearray"),
        "bytearray(n) long": (p(g("builtins", "bytearray") + i64(2**40) + b"\x85R"), "bytearray"),
        "set(range)": (p(g("builtins", "set") + g("builtins", "range") + i32(2**30) + b"\x85R\x85R"),
                       "range"),
        "frozenset(range)": (p(g("builtins", "frozenset") + g("builtins", "range") + i64(2**40)
                               + b"\x85R\x85R"), "range"),
        "list[0:0] = range": (p(b"]" + g("builtins", "slice") + b"K\x00K\x00\x86R"
                                + g("builtins", "range") + i32(2**30) + b"\x85Rs"), "range"),
        "range huge": (p(g("builtins", "range") + i64(2**62) + b"\x85R"), "range"),
        "bytearray8 huge": (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"x.", "bytearray"),
        "memo index huge": (p(b"N" + b"r" + struct.pack("<I", 0xFFFFFFF0)), None),
        "tuple DAG key": (p(b"}" + tup + b"Ns"), "too"),
        "tuple DAG pid": (p(tup + b"Q"), "persistent id"),
        "os.system": (p(g("os", "system") + s("echo pwned") + b"\x85R"), "os.system"),
        "getattr": (p(g("builtins", "getattr") + g("builtins", "dict") + s("fromkeys") + b"\x86R"),
                    "getattr"),
        "build OrderedDict": (p(g("collections", "OrderedDict") + b")R}K\x01K\x01sb"), "BUILD"),
        "build dict": (p(b"}}" + s("x") + b"K\x01sb"), "BUILD"),
        "build list": (p(b"]}" + s("append") + b"K\x01sb"), "BUILD"),
        "build Size": (p(g("torch", "Size") + b"K\x01\x85\x85R}" + s("x") + b"K\x01sb"), "BUILD"),
        "newobj set": (p(g("builtins", "set") + b")\x81"), "trusted=True"),
        "inst": (b"(ibuiltins\nset\n.", "trusted=True"),
        "setitem on Size": (p(g("torch", "Size") + b"K\x01K\x02\x86\x85R" + b"K\x00K\x05s"),
                            "Size"),
        "append to bytearray": (p(g("builtins", "bytearray") + b"C\x01a\x85R" + b"K\x01a"),
                                "bytearray"),
        "Size of strings": (p(g("torch", "Size") + s("a") + b"\x85\x85R"), "Size"),
        "device junk": (p(g("torch", "device") + b"K\x01K\x02K\x03\x87R"), "device"),
        "legit": (p(b"}" + s("a") + g("collections", "OrderedDict") + b")R" + s("b") + b"K\x01s"
                    + b"}" + s("_metadata") + b"}sb" + b"s"), None),
    }


CHILD = textwrap.dedent("""
    import json, os, pickle, resource, signal, sys
    import numpy as np
    from tpde import _state, TpdeError
    with open('/proc/self/status') as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize'))
    limit = vm + (1 << 30)  # 1 GiB more than after the imports
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cases = pickle.load(open(sys.argv[1], 'rb'))
    buf = np.frombuffer(b'\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\x00{}      ', np.uint8).copy()
    def alarm(*_): raise TimeoutError('took over 10 s')
    signal.signal(signal.SIGALRM, alarm)
    for label, data in cases:
        print(json.dumps({'label': label, 'started': True}), flush=True)
        signal.alarm(10)
        try:
            _state.unflatten(data, buf, numpy=False, map_location=None, trusted=False)
            out = {'outcome': 'loaded'}
        except TpdeError as e:
            out = {'outcome': 'TpdeError', 'message': str(e)}
        except BaseException as e:
            out = {'outcome': type(e).__name__, 'message': str(e)[:300]}
        signal.alarm(0)
        out['label'] = label
        print(json.dumps(out), flush=True)
""")


def run_child(tmp_path, cases):
    path = tmp_path / "cases.pkl"
    path.write_bytes(pickle.dumps(list(cases)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                       timeout=240, env=env)
    results = {}
    last = None
    for line in r.stdout.splitlines():
        d = json.loads(line)
        if d.get("started"):
            last = d["label"]
        else:
            results[d["label"]] = d
    assert r.returncode == 0, f"the child died (rc {r.returncode}) on {last!r}: {r.stderr[-2000:]}"
    return results


def test_crafted_pickles_raise_tpde_error_and_never_crash(tmp_path):
    cases = crafted()
    results = run_child(tmp_path, [(k, v[0]) for k, v in cases.items()])
    for label, (_data, word) in cases.items():
        r = results[label]
        if word is None:
            assert r["outcome"] in ("loaded", "TpdeError"), (label, r)
            continue
        assert r["outcome"] == "TpdeError", (label, r)
        assert word.lower() in r["message"].lower(), (label, r["message"])
        assert "MemoryError" not in r["message"], (label, r["message"])
    assert results["legit"]["outcome"] == "loaded"


def test_dtype_setstate_attack_through_store_load(tmp_path):
    """The 94-byte pickle of the report, stored as a step and loaded with
    Store.load in a child process: TpdeError, not a segfault."""
    store = tpde.Store(tmp_path / "store")
    data = crafted()["dtype setstate object"][0]
    store._inner.add_tensors(1, "step-1", [], [("structure.pkl", data)])
    code = textwrap.dedent(f"""
        import sys, tpde
        try:
            tpde.Store({str(tmp_path / 'store')!r}).load(1)
        except tpde.TpdeError as e:
            print('TpdeError:', e)
            sys.exit(0)
        print('loaded')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.startswith("TpdeError:") and "trusted=True" in r.stdout, r.stdout
    with pytest.raises(tpde.TpdeError):  # and in this process too, for good measure
        store.load(1)

