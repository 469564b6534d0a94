"""Misuse of the Python API raises tpde.TpdeError with a message naming the
argument (and its range) or the place in the state; the error class is
tpde.TpdeError everywhere and survives pickling."""

import pickle
import time

import numpy as np
import pytest

import tpde

U64 = 2**64 - 1


def test_tpde_error_is_tpde_tpde_error_and_picklable(store):
    with pytest.raises(tpde.TpdeError) as info:
        store.load(9)
    e = info.value
    assert type(e).__module__ == "tpde" and type(e).__qualname__ == "TpdeError"
    assert type(e) is tpde.TpdeError and isinstance(e, Exception)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is tpde.TpdeError and str(back) == str(e) and "no step 9" in str(back)
    from tpde import _tpde

    assert _tpde.TpdeError is tpde.TpdeError
    assert "tpde.TpdeError: " in "".join(__import__("traceback").format_exception_only(type(e), e))


def test_a_cyclic_state_raises_tpde_error_naming_the_path(store):
    state = {"model": {"w": [1, 2]}, "opt": {}}
    state["opt"]["again"] = state
    with pytest.raises(tpde.TpdeError, match=r"cycle.*opt/again"):
        store.save(1, state)
    lst = [1]
    lst.append([lst])
    with pytest.raises(tpde.TpdeError, match=r"cycle.*x/1/0"):
        store.save(1, {"x": lst})
    assert store.steps() == []


def test_deep_and_shared_states(store):
    deep = leaf = {}
    for _ in range(5000):
        leaf["k"] = {}
        leaf = leaf["k"]
    with pytest.raises(tpde.TpdeError, match=r"nested .*deep.*k/k/k"):
        store.save(1, {"deep": deep})
    # A DAG with 2**60 paths (every level refers to the one below twice) is
    # not a cycle: it saves in linear time, and the tensors get one name.
    d = {"w": np.arange(3)}
    for _ in range(60):
        d = {"a": d, "b": d}
    t0 = time.monotonic()
    store.save(2, d)
    assert time.monotonic() - t0 < 10
    back = store.load(2)
    assert back["a"] is back["b"]
    assert list(back["a"]["b"]["a"]["a"]["a"]) == ["a", "b"]


def test_integer_arguments_say_their_range(store, tmp_path):
    checks = [
        (lambda: tpde.Store(tmp_path / "k", keyframe_every=2**40),
         "keyframe_every must be an int between 1 and 4294967295"),
        (lambda: tpde.Store(tmp_path / "k", keyframe_every=0), "keyframe_every must be an int between 1"),
        (lambda: tpde.Store(tmp_path / "k", keyframe_every=-5), "keyframe_every must be an int between 1"),
        (lambda: tpde.Store(tmp_path / "k", keyframe_every=2.0), "keyframe_every must be an int"),
        (lambda: store.save(-1, {}), f"step must be an int between 0 and {U64}"),
        (lambda: store.save(2**64, {}), f"step must be an int between 0 and {U64}"),
        (lambda: store.load(-3), f"step must be an int between 0 and {U64}"),
        (lambda: store.get(2**70, tmp_path / "o"), f"step must be an int between 0 and {U64}"),
        (lambda: store.remove(-1), "step must be"),
        (lambda: store.files(True), "step must be an int"),
        (lambda: store.files(np.bool_(True)), "step must be an int"),
        (lambda: store.files(1.0), "step must be an int"),
        (lambda: store.add(tmp_path, step=-2), "step must be"),
        (lambda: store.prune(keep_last=-1), f"keep_last must be an int between 0 and {U64}"),
        (lambda: store.prune(keep_last=2**64), f"keep_last must be an int between 0 and {U64}"),
        (lambda: store.prune(keep_every=0), f"keep_every must be an int between 1 and {U64}"),
        (lambda: store.prune(keep_every=-1), "keep_every must be an int between 1"),
        (lambda: store.prune(keep_every=2**64), "keep_every must be an int between 1"),
        (lambda: tpde.encode(b"x", level=2**40), "level must be an int between -131072 and 22"),
        (lambda: tpde.encode(b"x", level=1000), "level must be an int between -131072 and 22"),
        (lambda: tpde.encode(b"x", chunk_kib=0), "chunk_kib must be an int between 1 and 65536"),
        (lambda: tpde.encode(b"x", chunk_kib=-1), "chunk_kib must be an int between 1 and 65536"),
        (lambda: tpde.encode(b"x", chunk_kib=2**63), "chunk_kib must be an int between 1 and 65536"),
        (lambda: store.load(1, trusted="no"), "trusted must be True or False"),
        (lambda: store.load(1, numpy=1), "numpy must be True or False"),
        (lambda: tpde.Store(tmp_path / "k", create="yes"), "create must be True or False"),
        (lambda: store.save(1, {}, pickle_tensors=None), "pickle_tensors must be True or False"),
        (lambda: store.load(1, map_location={"cuda:0": "cpu"}), "map_location must be a device"),
    ]
    for fn, message in checks:
        with pytest.raises(tpde.TpdeError, match=message.replace("(", r"\(")):
            fn()
    store.save(np.uint64(U64), {"a": 1})  # numpy integers are ints
    assert store.load(U64) == {"a": 1} and store.steps() == [U64]
    assert tpde.encode(b"x" * 100, level=-131072, chunk_kib=65536)
    assert not (tmp_path / "k").exists()


def test_decode_bombs_are_refused_within_the_callers_limit(tmp_path):
    # Issue 12, items 9 and 14: a 911-byte container decoded to 1 GiB in
    # memory (and one claiming 1 TiB aborted the interpreter). With
    # max_output the claim is checked before anything is allocated.
    import pathlib
    bomb = (pathlib.Path(__file__).parents[3] / "crates/tpde/tests/data/bad/14-bomb-1gib.tpde")
    data = bomb.read_bytes()
    assert len(data) < 4096
    with pytest.raises(tpde.TpdeError, match="more than the limit"):
        tpde.decode(data, max_output=1 << 20)
    out = tmp_path / "out.bin"
    with pytest.raises(tpde.TpdeError, match="more than the limit"):
        tpde.decode_file(bomb, out, max_output=1 << 20)
    assert not out.exists()
    with pytest.raises(tpde.TpdeError, match="max_output"):
        tpde.decode(data, max_output=-1)
