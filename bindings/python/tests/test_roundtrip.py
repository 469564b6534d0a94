"""Store.save/load give every tensor, array and numpy value back exactly: shape
(0-d, empty), dtype (byte order included), bytes, and for torch the tensor's
kind (nn.Parameter, requires_grad) and aliasing (tied weights), all without
trusted=True. What tpde cannot store as tensor data is refused at save."""

import io
import pickle
import warnings

import numpy as np
import pytest

import tpde

torch = pytest.importorskip("torch")


def same_array(a, b):
    return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())


def same_tensor(a, b):
    """dtype, shape and bytes (of the values, in C order)."""
    if type(a) is not type(b) or a.dtype != b.dtype or a.shape != b.shape:
        return False
    a = a.detach().resolve_conj().resolve_neg().contiguous()
    b = b.detach().resolve_conj().resolve_neg().contiguous()
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def numpy_cases():
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    return {
        "0d_f64": np.array(1.25),
        "0d_i8": np.array(-3, dtype=np.int8),
        "0d_bool": np.array(True),
        "0d_big_endian": np.array(7, dtype=">i4"),
        "0d_c64": np.array(1 + 2j, dtype=np.complex64),
        "empty": np.empty(0, dtype=np.float32),
        "empty_2d": np.empty((0, 3), dtype=np.int64),
        "empty_3d": np.zeros((3, 0, 2), dtype=np.uint16),
        "transposed": base.T,
        "strided": base[:, ::2, 1::2],
        "reversed": base[::-1, :, ::-1],
        "fortran": np.asfortranarray(base),
        "broadcast": np.broadcast_to(np.arange(3.0), (4, 3)),
        "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "c128": (np.arange(6) + 1j * np.arange(6)[::-1]).reshape(3, 2),
        "c128_0d": np.array(-0.0 - 1j),
        "longdouble": np.arange(3, dtype=np.longdouble) / 3,
        "datetime": np.array(["2020-01-01", "NaT", "1969-12-31"], dtype="datetime64[ns]"),
        "timedelta": np.array([1, -2], dtype="timedelta64[s]"),
        "unicode": np.array(["a", "héllo", ""], dtype="U5"),
        "bytes": np.array([b"ab", b"\x00c"], dtype="S3"),
        "f16": np.array([1.5, -0.0, np.inf], dtype=np.float16),
    }


SHARING = "ignore:tpde. some tensors share storage"


@pytest.mark.parametrize("numpy_out", [False, True])
def test_numpy_arrays_round_trip_exactly(store, numpy_out):
    cases = numpy_cases()
    store.save(1, cases)
    back = store.load(1, numpy=numpy_out)
    for name, a in cases.items():
        assert same_array(np.ascontiguousarray(a) if a.ndim else a, back[name]), name
        assert back[name].shape == a.shape and back[name].dtype == a.dtype, name


def torch_cases():
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    c = torch.randn(2, 3, dtype=torch.complex64)
    return {
        "0d": torch.tensor(3.5),
        "0d_i64": torch.tensor(-7),
        "0d_bf16": torch.tensor(1.5, dtype=torch.bfloat16),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(0, 3, dtype=torch.int32),
        "empty_3d": torch.zeros(3, 0, 2, dtype=torch.uint8),
        "transposed": base.transpose(0, 2),
        "strided": base[:, ::2, 1::2],
        "expanded": torch.arange(3.0).expand(4, 3),
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "conj": c.conj(),
        "neg_view": torch._neg_view(base),
        "offset": base.reshape(-1)[5:11],
    }


@pytest.mark.filterwarnings(SHARING)  # views of one base tensor
def test_torch_tensors_round_trip_exactly(store):
    cases = torch_cases()
    store.save(1, cases)
    back = store.load(1)
    for name, t in cases.items():
        assert same_tensor(t, back[name]), name
        assert not back[name].is_conj() and not back[name].is_neg(), name
    as_numpy = store.load(1, numpy=True)
    assert as_numpy["0d"].shape == () and as_numpy["0d"].dtype == np.float32
    assert as_numpy["empty_2d"].shape == (0, 3)


def torch_dtype(name):
    if not hasattr(torch, name):
        pytest.skip(f"torch {torch.__version__} has no {name}")
    return getattr(torch, name)


@pytest.mark.filterwarnings(SHARING)
@pytest.mark.parametrize("name", ["complex128", "complex32", "float8_e8m0fnu", "float8_e4m3fnuz",
                                  "float8_e5m2fnuz", "float4_e2m1fn_x2", "uint16", "uint64",
                                  "float8_e4m3fn", "float8_e5m2"])
def test_torch_dtypes_without_a_plain_safetensors_name_load_without_trusted(store, name):
    dtype = torch_dtype(name)
    raw = torch.arange(192, dtype=torch.uint8).reshape(2, 96)
    t = raw.view(dtype)  # every bit pattern, dtype-agnostic
    scalar = raw.reshape(-1)[: dtype.itemsize].view(dtype).reshape(())
    store.save(1, {"t": t, "s": scalar, "e": t[:0]})
    back = store.load(1)
    for k, v in {"t": t, "s": scalar, "e": t[:0]}.items():
        assert back[k].dtype == dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    if name == "complex128":
        assert same_array(store.load(1, numpy=True)["t"], t.numpy())


def test_numpy_scalars_dtypes_and_types_load_without_trusted(store):
    values = {
        "f64": np.float64(1.25), "nan": np.float32("nan"), "i8": np.int8(-5),
        "u64": np.uint64(2**64 - 1), "bool": np.bool_(True), "c128": np.complex128(1 - 2j),
        "c64": np.complex64(3j), "f16": np.float16(0.5), "ld": np.longdouble(1) / 3,
        "str": np.str_("héllo"), "bytes": np.bytes_(b"ab\x00c"),
        "dt": np.datetime64("2020-01-02T03:04", "m"), "td": np.timedelta64(-3, "D"),
        "dtype": np.dtype("float32"), "dtype_be": np.dtype(">i8"), "dtype_u": np.dtype("U7"),
        "dtype_dt": np.dtype("M8[ns]"), "type": np.float32, "type_c": np.complex128,
        "key": {np.int64(3): "int64 key"},
    }
    store.save(1, values)
    back = store.load(1)
    for k, v in values.items():
        b = back[k]
        assert type(b) is type(v), k
        if k == "ld":  # the 6 padding bytes of an 80-bit long double are not kept
            assert b.dtype == v.dtype and b == v
        elif isinstance(v, np.generic):
            assert b.dtype == v.dtype and b.tobytes() == v.tobytes(), k
        elif isinstance(v, dict):
            (bk, bv), = b.items()
            assert type(bk) is np.int64 and bk == 3 and bv == "int64 key"
        else:
            assert b == v, k
    # and inside what the numpy RNG state holds, with trusted=False
    np.random.seed(5)
    store.save(2, {"rng": np.random.get_state(), "gen": np.random.default_rng(3).bit_generator.state})
    np.random.set_state(store.load(2)["rng"])
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.set_state(store.load(2)["rng"])
    assert np.random.rand(3).tobytes() == expected.tobytes()


def test_states_written_by_the_previous_format_still_load(store):
    """Until now numpy scalars were pickled by numpy (numpy.dtype + BUILD +
    scalar) and tensors named by 3-tuples: the well-formed ones still load
    without trusted=True; a bare numpy.dtype in that form asks for trusted."""
    values = {"f64": np.float64(1.25), "be": np.array(1, ">f4")[()], "str": np.str_("ab"),
              "dt": np.datetime64("2020-01-01"), "b": np.bool_(False), "c": np.complex64(1j)}

    class OldPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, torch.Tensor):
                return ("tpde", "w", "torch")
            return None

    w = torch.arange(4.0)
    buf = io.BytesIO()
    OldPickler(buf, protocol=4).dump({"w": w, "scalars": values})
    store._inner.add_tensors(1, "step-1", [("w", "F32", [4], w.view(torch.uint8).numpy())],
                             [("structure.pkl", buf.getvalue())])
    back = store.load(1)
    assert torch.equal(back["w"], w)
    for k, v in values.items():
        assert type(back["scalars"][k]) is type(v) and back["scalars"][k].tobytes() == v.tobytes(), k
    store._inner.add_tensors(2, "step-2", [], [("structure.pkl", pickle.dumps({"d": np.dtype("f4")}, 4))])
    with pytest.raises(tpde.TpdeError, match="trusted=True"):
        store.load(2)
    assert store.load(2, trusted=True)["d"] == np.dtype("f4")


def refused_values():
    sparse = torch.sparse_coo_tensor([[0, 1]], [1.0, 2.0], (3,))
    out = {
        "numpy object": (np.array([1, "a"], dtype=object), "object"),
        "numpy structured": (np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), "structured"),
        "numpy masked": (np.ma.masked_array([1, 2], mask=[0, 1]), "MaskedArray"),
        "numpy matrix": (np.matrix([[1, 2]]), "matrix"),
        "numpy void scalar": (np.zeros(1, dtype=[("a", "i4")])[0], "structured"),
        "torch sparse": (sparse, "sparse"),
        "torch sparse csr": (torch.eye(3).to_sparse_csr(), "sparse"),
        "torch quantized": (torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "quantized"),
    }
    return out


@pytest.mark.parametrize("what", list(refused_values()))
def test_values_load_would_refuse_are_refused_at_save(store, what):
    value, word = refused_values()[what]
    with pytest.raises(tpde.TpdeError, match=f"(?s)x/y.*{word}.*pickle_tensors=True"):
        store.save(1, {"x": {"y": value}})
    assert store.steps() == []
    store.save(1, {"x": {"y": value}}, pickle_tensors=True)
    with pytest.raises(tpde.TpdeError, match="trusted=True"):
        store.load(1)
    back = store.load(1, trusted=True)["x"]["y"]
    assert type(back) is type(value)


def test_parameters_and_requires_grad_come_back_as_torch_load_gives_them(store):
    p = torch.nn.Parameter(torch.randn(3))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    g = torch.randn(2, requires_grad=True)
    nonleaf = g * 2
    state = {"p": p, "frozen": frozen, "g": g, "nonleaf": nonleaf, "plain": torch.ones(2),
             "list": [p, g]}
    expected = torch.load(io.BytesIO(_torch_save(state)), weights_only=True)
    store.save(1, state)
    back = store.load(1)
    for k in ["p", "frozen", "g", "nonleaf", "plain"]:
        assert type(back[k]) is type(expected[k]), k
        assert back[k].requires_grad == expected[k].requires_grad, k
        assert back[k].is_leaf, k
        assert same_tensor(back[k].detach(), expected[k].detach()), k
    assert back["list"][0] is back["p"] and back["list"][1] is back["g"]


def _torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_tied_weights_stay_tied_and_other_shared_storages_warn(store):
    emb = torch.randn(5, 3)
    state = {"embed.weight": emb.detach(), "head.weight": emb.detach(), "same": emb}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical views are kept as views: no warning
        store.save(1, state)
    back = store.load(1)
    assert back["embed.weight"] is not back["head.weight"]
    ptr = back["embed.weight"].untyped_storage().data_ptr()
    assert back["head.weight"].untyped_storage().data_ptr() == ptr
    assert back["same"].untyped_storage().data_ptr() == ptr
    back["embed.weight"][0, 0] = 42.0
    assert back["head.weight"][0, 0] == 42.0 and back["same"][0, 0] == 42.0
    stored = np.frombuffer(store.files(1)["tensors.safetensors"], np.uint8).copy()
    assert len(tpde._tpde.safetensors_index(stored)[0]) == 1  # the data once, not three times

    w = torch.randn(4, 4)
    with pytest.warns(UserWarning, match="share storage.*'a'.*'row'"):
        store.save(2, {"a": w, "row": w[1]})
    back = store.load(2)
    assert same_tensor(back["row"], w[1]) and same_tensor(back["a"], w)
    assert back["row"].untyped_storage().data_ptr() != back["a"].untyped_storage().data_ptr()


def test_complex_values_stay_exact_under_a_lossy_bound(store):
    torch.manual_seed(0)
    state = {"c": torch.randn(100, dtype=torch.complex128), "n": np.arange(50) * (1 + 1e-7j),
             "w": torch.randn(100, dtype=torch.float64)}
    store.save(1, state, max_abs_error=0.1)
    back = store.load(1)
    assert same_tensor(back["c"], state["c"]) and same_array(back["n"], state["n"])
    assert not torch.equal(back["w"], state["w"])  # the bound applies to the floats
    assert (back["w"] - state["w"]).abs().max() <= 0.1
