"""examples/dcp_train.py at a tiny size: 2-process FSDP2 training on gloo
saving torch.distributed.checkpoint folders, every one added to a store and
restored byte for byte, and the restored copy loaded back with dcp.load."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys

import pytest

torch = pytest.importorskip("torch")

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples")


def _dcp_example():
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed has no gloo backend")
    try:
        importlib.import_module("torch.distributed.checkpoint")
        importlib.import_module("torch.distributed.fsdp").fully_shard  # noqa: B018
    except (ImportError, AttributeError) as e:
        pytest.skip(f"this torch lacks DCP or FSDP2 fully_shard: {e}")
    sys.path.insert(0, os.path.abspath(EXAMPLES))
    try:
        import dcp_train
    finally:
        sys.path.pop(0)
    return dcp_train


def _digests(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_dcp_checkpoints_round_trip_through_a_store(tmp_path):
    dcp_train = _dcp_example()
    import tpde

    run_dir = str(tmp_path / "run")
    store_dir = str(tmp_path / "store")
    res = dcp_train.run(run_dir, store_dir, steps=6, save_every=2, size="tiny",
                        explain=False, quiet=True)

    assert res["saves"] == [2, 4, 6]
    losses = res["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]

    store = tpde.Store(store_dir, create=False)
    assert store.steps() == [2, 4, 6]
    assert store.verify().ok
    for step in res["saves"]:
        folder = dcp_train.checkpoint_dir(run_dir, step)
        names = sorted(os.listdir(folder))
        # DCP wrote one data file per rank and the global metadata.
        assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        want = _digests(folder)
        # The restored copy the example wrote, and the store's files in memory.
        assert _digests(os.path.join(run_dir, "restored", f"checkpoint-{step}")) == want
        got = {p: hashlib.sha256(b).hexdigest() for p, b in store.files(step).items()}
        assert got == want
        # Every shard holds tensors of its own (the model is really sharded).
        _md, items = dcp_train.distcp_items(folder)
        assert all(any(kind == "tensor" for _f, _o, kind, _off, _n in items[name])
                   for name in ("__0_0.distcp", "__1_0.distcp"))

    # Later steps are deltas against the step before, and they pay: the
    # shards are stored smaller than a keyframe of the same files.
    by_step = {s["step"]: s for s in store.manifest()["steps"]}
    assert by_step[2]["reference"] is None
    assert by_step[4]["reference"] == 2 and by_step[6]["reference"] == 4
    key = {f["path"]: f["stored_len"] for f in by_step[2]["files"]}
    for step in (4, 6):
        for f in by_step[step]["files"]:
            if f["path"].endswith(".distcp"):
                assert f["delta"], (step, f["path"])
                assert f["stored_len"] < key[f["path"]], (step, f)

    # dcp.load of the restored last checkpoint gave every rank its shards back.
    assert len(res["loads"]) == 2
    for d in res["loads"]:
        assert d["tensors"] > 0 and d["changed_by_load"] > 0


def test_the_direct_example_saves_asynchronously_into_a_store(tmp_path):
    """examples/dcp_store_train.py at the tiny size: dcp.async_save through
    tpde.dcp.StoreWriter on both ranks, then dcp.load through StoreReader
    into a new model, bit-identical (the example checks and fails)."""
    import subprocess

    _dcp_example()  # skips where torch lacks DCP, FSDP2 or gloo
    store = tmp_path / "store"
    example = os.path.join(EXAMPLES, "dcp_store_train.py")
    r = subprocess.run([sys.executable, example, "--store", str(store), "--size", "tiny",
                        "--steps", "6", "--save-every", "2"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-identical" in r.stdout and "all intact" in r.stdout, r.stdout
    import tpde

    steps = tpde.Store(str(store)).manifest()["steps"]
    assert [s["step"] for s in steps] == [2, 4, 6]
    assert [s["reference"] for s in steps] == [None, 2, 4]
    for s in steps:
        assert sorted(f["path"] for f in s["files"]) == [".metadata", "__0_0.distcp",
                                                         "__1_0.distcp"]
