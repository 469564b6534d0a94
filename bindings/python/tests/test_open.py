"""Store.open(step): one tensor at a time, as load gives it, bit for bit."""

import numpy as np
import pytest

import tpde

torch = pytest.importorskip("torch")

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
                torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16]


def bits(t):
    """The bytes of a tensor or array, with its dtype and shape."""
    if isinstance(t, np.ndarray):
        return ("np", t.dtype.str, t.shape, t.tobytes())
    c = t.detach().contiguous()
    raw = c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""
    return ("pt", c.dtype, tuple(c.shape), raw)


def walk(state, path="", out=None):
    """Path in the state -> tensor or array, as Store.save names them."""
    out = {} if out is None else out
    if isinstance(state, (torch.Tensor, np.ndarray)):
        out.setdefault(path, state)
    elif isinstance(state, dict):
        for k, v in state.items():
            walk(v, f"{path}/{k}" if path else str(k), out)
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            walk(v, f"{path}/{i}" if path else str(i), out)
    return out


def make_state(step, g):
    """Every torch dtype, numpy-only dtypes, 0-d and empty ones, a Parameter,
    tied weights and an optimizer's state, a little different each step."""
    base = torch.randn(64, 48, generator=g) + step * 0.01
    model = {}
    for dt in TORCH_DTYPES:
        name = str(dt).replace("torch.", "")
        if dt.is_complex:
            t = torch.complex(base[:8], base[8:16]).to(dt)
        elif dt == torch.bool:
            t = base[:5] > 0
        elif dt.is_floating_point:
            t = base[:10].to(dt)
        else:
            t = (base[:6] * 50).to(torch.int64).clamp(0 if dt in (torch.uint8, torch.uint16)
                                                      else -100, 100).to(dt)
        model[name] = t
    model["param"] = torch.nn.Parameter(base[:3].clone())
    model["empty"] = torch.zeros(0, 4)
    model["scalar"] = torch.tensor(1.5 + step)
    model["embed.weight"] = base[10:20].clone()
    model["lm_head.weight"] = model["embed.weight"]  # tied
    return {
        "model": model,
        "optimizer": {"state": {0: {"exp_avg": base[:4] * 1e-3, "step": torch.tensor(float(step))}},
                      "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "np": {"be": (np.arange(6.0) + step).astype(">f8").reshape(2, 3), "f4": np.ones(7, np.float32) * step,
               "u": np.array(["ab", "c", str(step), "", "e", "f"]), "when": np.array([step, 2], "datetime64[s]"),
               "i1": np.arange(-3, 3, dtype=np.int8)},
        "step": step,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six steps (keyframe_every=4: depths 1, 2, 3, 4, 1, 2)."""
    store = tpde.Store(tmp_path_factory.mktemp("open") / "s", keyframe_every=4)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        store.save(step, make_state(step, g))
    return store


def test_every_tensor_at_every_depth_is_what_load_gives(run):
    depths = [s["depth"] for s in run.manifest()["steps"]]
    assert depths == [1, 2, 3, 4, 1, 2]
    for step in run.steps():
        loaded = walk(run.load(step))
        loaded_np = walk(run.load(step, numpy=True))
        with run.open(step) as r, run.open(step, framework="np") as rn:
            keys = r.keys()
            assert keys == sorted(keys)
            # Every stored tensor; the tied copy is stored (and listed) once.
            assert "model/embed.weight" in keys and "model/lm_head.weight" not in keys
            assert set(keys) == set(loaded) - {"model/lm_head.weight"}
            for k in keys:
                want = loaded[k]
                if isinstance(want, np.ndarray):
                    if want.dtype.kind in "biufc" and want.dtype.isnative:
                        assert bits(r.get_tensor(k)) == bits(torch.from_numpy(want)), k
                    else:  # >f8, strings, datetimes: numpy only
                        with pytest.raises(tpde.TpdeError, match='framework="np"'):
                            r.get_tensor(k)
                else:
                    assert bits(r.get_tensor(k)) == bits(want), (step, k)
                want_np = loaded_np[k]
                if isinstance(want_np, np.ndarray):
                    assert bits(rn.get_tensor(k)) == bits(want_np), (step, k)
                else:  # bfloat16, float8, complex32: no numpy dtype
                    with pytest.raises(tpde.TpdeError, match="numpy has no dtype"):
                        rn.get_tensor(k)


def test_lossy_steps_give_the_restored_reconstruction(tmp_path):
    store = tpde.Store(tmp_path / "s", keyframe_every=4)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, 100, generator=g)
    for step in range(6):
        w = w + 0.01 * torch.randn(200, 100, generator=g)
        state = {"w": w.clone(), "h": w[:10].to(torch.bfloat16), "c": torch.complex(w[:2], w[2:4]),
                 "n": np.asarray(w[:5].numpy(), dtype=np.float16)}
        bound = {"max_abs_error": 1e-3} if step % 2 else {"max_rel_error": 1e-2} if step == 4 else {}
        store.save(step, state, **bound)
    assert any(f.get("lossy") for s in store.manifest()["steps"] for f in s["files"])
    for step in store.steps():
        loaded = store.load(step)
        r = store.open(step)
        for k in ("w", "h", "c"):
            assert bits(r.get_tensor(k)) == bits(loaded[k]), (step, k)
        assert bits(store.open(step, framework="np").get_tensor("n")) == bits(loaded["n"])


SLICES_2D = [(), Ellipsis, slice(None), slice(1, 3), slice(-3, None), slice(None, None, -1),
             (slice(None, None, 2), slice(-2, None)), (slice(5, 2), slice(None)), 0, -1, (1, -2),
             (slice(None, None, -3), 1), (Ellipsis, slice(1, None, 2))]
SLICES_1D = [(), slice(None), slice(2, 5), slice(-4, -1), slice(None, None, -2), 3, -1,
             slice(7, 2), Ellipsis]
SLICES_0D = [(), Ellipsis]
SLICES_EMPTY = [(), slice(None), (slice(None), slice(1, 3)), (slice(None), -1)]


@pytest.mark.parametrize("name,slices", [
    ("model/float32", SLICES_2D), ("model/bfloat16", SLICES_2D), ("model/complex128", SLICES_2D),
    ("model/bool", SLICES_2D), ("np/be", SLICES_2D), ("np/i1", SLICES_1D), ("np/u", SLICES_1D),
    ("model/scalar", SLICES_0D), ("optimizer/state/0/step", SLICES_0D),
    ("model/empty", SLICES_EMPTY),
])
def test_get_slice_is_numpy_slicing(run, name, slices):
    step = 3  # the deepest step of the first interval
    loaded = walk(run.load(step))[name]
    r, rn = run.open(step), run.open(step, framework="np")
    sl = r.get_slice(name)
    assert sl.get_shape() == list(loaded.shape)
    for idx in slices:
        if isinstance(loaded, np.ndarray):
            want = np.asarray(loaded[idx])
            got = rn.get_slice(name)[idx]
            assert isinstance(got, np.ndarray) and bits(got) == bits(np.array(want)), idx
            if loaded.dtype.isnative and loaded.dtype.kind in "biufc":
                assert bits(sl[idx]) == bits(torch.from_numpy(np.array(want))), idx
            continue
        if loaded.dtype in (torch.bfloat16,):
            ints = loaded.view(torch.int16).numpy()
            want = torch.from_numpy(np.array(ints[idx])).view(loaded.dtype)
        else:
            want = torch.from_numpy(np.array(loaded.numpy()[idx]))
            assert bits(rn.get_slice(name)[idx]) == bits(np.array(loaded.numpy()[idx]))
        got = sl[idx]
        assert isinstance(got, torch.Tensor) and bits(got) == bits(want), idx


def test_shapes_and_dtypes_of_slices(run):
    r = run.open(2)
    assert r.get_slice("model/complex128").get_dtype() == "complex128"
    assert r.get_slice("model/complex128").get_shape() == [8, 48]
    assert r.get_slice("model/float32").get_dtype() == "F32"
    assert r.get_slice("np/be").get_dtype() == ">f8"
    assert r.get_slice("np/be").get_shape() == [2, 3]
    assert r.get_slice("model/empty").get_shape() == [0, 4]
    assert r.get_slice("model/scalar").get_shape() == []


def test_missing_names_steps_and_files_are_clear(run, tmp_path):
    r = run.open(4)
    with pytest.raises(tpde.TpdeError, match=r'no tensor "model/flaot32"; close names: "model/float32"'):
        r.get_tensor("model/flaot32")
    with pytest.raises(tpde.TpdeError, match="close names"):
        r.get_slice("optimizer/state/0/exp_av")
    with pytest.raises(tpde.TpdeError, match=r"no step 9 \(the closest stored: 1, 2, 3, 4, 5"):
        run.open(9)
    with pytest.raises(tpde.TpdeError, match='no file "tensor.safetensors"'):
        run.open(4, file="tensor.safetensors")
    with pytest.raises(tpde.TpdeError, match="opaque bytes"):
        run.open(4, file="structure.pkl")
    with pytest.raises(tpde.TpdeError, match="framework"):
        run.open(4, framework="tf")
    with pytest.raises(tpde.TpdeError, match="step must be an int"):
        run.open(-1)
    with r:
        pass
    with pytest.raises(tpde.TpdeError, match="closed"):
        r.get_tensor("model/float32")


def test_files_added_from_folders(tmp_path):
    from safetensors.numpy import save_file
    from safetensors import safe_open

    store = tpde.Store(tmp_path / "s", keyframe_every=10)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 1024)).astype(np.float32)  # 1 MiB
    for step in (100, 200, 300):
        w = w + 1e-3 * rng.standard_normal(w.shape).astype(np.float32)
        ck = tmp_path / f"checkpoint-{step}"
        ck.mkdir()
        save_file({"big": w, "small": w[0, :8].copy(), "half": w[:4].astype(np.float16)},
                  str(ck / "model.safetensors"), metadata={"step": str(step)})
        torch.save({"m": torch.from_numpy(w[:2].copy())}, ck / "optimizer.pt")
        store.add(ck)
    with store.open(300) as r:  # the only safetensors file
        assert r.file == "model.safetensors"
        assert r.metadata() == {"step": "300"}
        with safe_open(str(tmp_path / "checkpoint-300" / "model.safetensors"), "pt") as f:
            assert r.keys() == sorted(f.keys())
            for k in f.keys():
                assert bits(r.get_tensor(k)) == bits(f.get_tensor(k))
                assert bits(r.get_slice(k)[1:3]) == bits(f.get_slice(k)[1:3])
    rn = store.open(300, file="model.safetensors", framework="np")
    assert rn.get_tensor("big").tobytes() == w.tobytes()
    # One tensor costs a fraction of the step's stored bytes.
    stored = sum(f["stored_len"] for s in store.manifest()["steps"] for f in s["files"]
                 if f["path"] == "model.safetensors")
    one = store.open(300)
    one.get_tensor("small")
    assert 0 < one.stats()["bytes"] < stored / 10
    big = store.open(300)
    big.get_tensor("big")
    assert big.stats()["tensors"] == 3  # along the chain: 300, 200, 100
    assert big.stats()["bytes"] < stored
    with pytest.raises(tpde.TpdeError, match="torch archive"):
        store.open(300, file="optimizer.pt")


def test_the_structure_scan_never_runs_or_crashes():
    import pickle
    import random

    from tpde import _state
    from tpde._open import saved_views

    state = make_state(1, torch.Generator().manual_seed(2))
    _tensors, structure = _state.flatten(state)
    views = saved_views(structure)
    assert views["model/complex128"] == ("torch", "complex128")
    assert views["np/be"] == ("numpy", ">f8")
    assert views["model/float32"] == ("torch", "")
    # A pickle that would run code is only scanned.
    evil = pickle.dumps(__import__("os").system, protocol=4)
    assert saved_views(evil) == {}
    rng = random.Random(0)
    for _ in range(300):
        b = bytearray(structure)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = bytes(b[: rng.randrange(len(b) + 1)]) if rng.random() < 0.3 else bytes(b)
        try:
            assert isinstance(saved_views(cut), dict)
        except tpde.TpdeError:
            pass
