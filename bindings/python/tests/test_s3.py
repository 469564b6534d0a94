"""tpde.Store("s3://bucket/prefix") against the S3 test server that
./test.sh starts (scripts/s3-server.sh); skipped without TPDE_TEST_S3=1."""

import hashlib
import os
import time
import uuid

import numpy as np
import pytest

import tpde

pytestmark = pytest.mark.skipif(
    os.environ.get("TPDE_TEST_S3") != "1",
    reason="no S3 test server (TPDE_TEST_S3 is not set; ./test.sh starts one)",
)


@pytest.fixture
def location(request):
    bucket = os.environ.get("TPDE_TEST_S3_BUCKET", "tpde-test")
    return f"s3://{bucket}/pytest/{request.node.name}-{uuid.uuid4().hex}"


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_load_add_get_on_s3(location, tmp_path):
    store = tpde.Store(location, keyframe_every=3)
    assert store.path == location
    assert repr(store) == f"tpde.Store({location!r})"
    assert len(store) == 0
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    states = {}
    for step in (10, 20, 30):
        w = w.copy()
        w[rng.random(w.shape) < 0.1] += np.float32(1e-3)
        states[step] = {"w": w, "step": step, "lr": [1e-3, 0.9]}
        store.save(step, states[step])
    # A checkpoint folder from disk, its step from its name.
    ck = tmp_path / "checkpoint-40"
    (ck / "sub").mkdir(parents=True)
    (ck / "config.json").write_text('{"a": 1}\n')
    (ck / "sub" / "blob.bin").write_bytes(rng.bytes(100_000))
    store.add(ck)
    assert store.steps() == [10, 20, 30, 40]

    # Another handle (another process, as far as the store knows) reads it.
    again = tpde.Store(location, create=False)
    for step, state in states.items():
        back = again.load(step, numpy=True)
        assert back["w"].tobytes() == state["w"].tobytes()
        assert back["step"] == step and back["lr"] == [1e-3, 0.9]
    out = tmp_path / "restored-40"
    again.get(40, out)
    assert sha(out / "config.json") == sha(ck / "config.json")
    assert sha(out / "sub" / "blob.bin") == sha(ck / "sub" / "blob.bin")
    assert again.files(40)["sub/blob.bin"] == (ck / "sub" / "blob.bin").read_bytes()

    report = again.verify()
    assert report.ok and report.steps == 4, report.problems
    assert again.manifest()["steps"][1]["reference"] == 10
    assert again.remove(20) == [30]
    assert again.prune(keep_last=1) == [10, 30]
    assert again.steps() == [40]
    assert again.verify().ok


def test_missing_s3_store_is_not_created_without_create(location):
    with pytest.raises(tpde.TpdeError, match="not a tpde store"):
        tpde.Store(location, create=False)


def test_bad_s3_url_is_refused():
    with pytest.raises(tpde.TpdeError, match="not a usable store URL"):
        tpde.Store("s3:///no-bucket")
