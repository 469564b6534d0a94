import pytest


@pytest.fixture
def store(tmp_path):
    import tpde

    return tpde.Store(tmp_path / "store", keyframe_every=3)
