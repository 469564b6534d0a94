"""Turning a (nested) state dict into files the store codes well, and back.

A state is any picklable object: a model's ``state_dict()``, an optimizer's,
a dict of both with RNG states, a Lightning checkpoint. Its tensors (torch
tensors and numpy arrays) go into one safetensors file, each under the path
that leads to it (``model/layer.weight``, ``optimizer/state/0/exp_avg``), so
that the same tensor has the same name at every step and is coded against
its previous value. Everything else is pickled with the tensors replaced by
persistent ids, as ``torch.save`` does, and numpy scalars, dtypes and scalar
types too, so that loading never asks numpy to unpickle anything.

Persistent ids (what ``structure.pkl`` refers to):

- ``("tpde", name, kind)``: tensor ``name`` of the safetensors file, as
  stored; ``kind`` is ``"torch"`` or ``"numpy"`` (what it was saved as).
- ``("tpde", name, kind, view, flags, alias)``: the same, where ``view`` (if
  not ``""``) is the dtype the stored bytes are viewed as (a torch dtype name
  such as ``"complex128"``, or a numpy ``dtype.str`` such as ``">f8"``,
  ``"<U5"``), the stored dtype and shape following from it (complex as its
  real dtype with a last dimension of 2, others as unsigned integers of
  their width, or bytes with a last dimension of their size); ``flags`` has
  ``"p"`` for an ``nn.Parameter`` and ``"g"`` for ``requires_grad``; and
  ``alias`` numbers the distinct tensor objects that are the same view of
  one storage (tied weights), which come back as views of one tensor.
- ``("tpde-np", "scalar", dtype, raw)``, ``("tpde-np", "dtype", dtype)``,
  ``("tpde-np", "type", name)``: a numpy scalar (its little-endian bytes), a
  numpy dtype (by ``dtype.str``), a numpy scalar type (``"float32"``).

Loading unpickles with tpde's restricted unpickler (``_unpickler``: plain
containers and values, ``OrderedDict``, torch dtypes, devices and sizes; the
numpy scalars of the previous format, checked) unless the caller trusts the
store (``trusted=True``), in the spirit of ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _unpickler
from ._tpde import TpdeError, safetensors_index
from ._unpickler import clip, numpy_dtype, numpy_dtype_ok, numpy_scalar, short

try:  # torch is optional: numpy-only states work without it.
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

TENSORS = "tensors.safetensors"
STRUCTURE = "structure.pkl"

# Deeper nesting of dicts, lists and tuples is refused (pickling it would
# overflow the stack).
MAX_DEPTH = 500

_NUMPY_TO_ST = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("|i1"): "I8",
    np.dtype("<u8"): "U64",
    np.dtype("<u4"): "U32",
    np.dtype("<u2"): "U16",
    np.dtype("|u1"): "U8",
    np.dtype("|b1"): "BOOL",
    np.dtype("<c8"): "C64",
}
_ST_TO_NUMPY = {v: k for k, v in _NUMPY_TO_ST.items()}
_UINT_ST = {1: "U8", 2: "U16", 4: "U32", 8: "U64"}
# With a lossy bound, complex values are stored as the unsigned integers of
# their parts' width (exact), not as floats the bound would apply to.
_EXACT_PARTS = {"F64": "U64", "F16": "U16", "BF16": "U16"}

# Numpy scalar types (np.float32 as a value), by name.
_NUMPY_TYPES = {
    t.__name__: t for t in set(np.sctypeDict.values())
    if np.dtype(t).kind in "biufcmMUS" and np.dtype(t).type is t
}
_NUMPY_TYPE_NAMES = {t: n for n, t in _NUMPY_TYPES.items()}

# Torch dtypes stored under a dtype of their own; then those stored as
# another dtype's bytes: name -> (stored dtype, last dimension, numpy dtype).
_TORCH_ST_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
}
_TORCH_VIEWS: Dict[str, Tuple[str, Optional[int], Optional[np.dtype]]] = {
    "complex128": ("F64", 2, np.dtype("<c16")),
    "complex32": ("F16", 2, None),
    "bcomplex32": ("BF16", 2, None),
    "bits16": ("U16", None, None),
    **{n: ("U8", None, None) for n in [
        "float8_e4m3fnuz", "float8_e5m2fnuz", "float4_e2m1fn_x2", "bits8", "bits1x8", "bits2x4",
        "bits4x2", *(f"int{i}" for i in range(1, 8)), *(f"uint{i}" for i in range(1, 8))]},
}
if torch is not None:
    _TORCH_TO_ST = {getattr(torch, n): st for n, st in _TORCH_ST_NAMES.items() if hasattr(torch, n)}
    _ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}
    _TORCH_VIEW_DTYPES = {n: getattr(torch, n) for n in _TORCH_VIEWS if hasattr(torch, n)}
    _TORCH_VIEW_NAMES = {d: n for n, d in _TORCH_VIEW_DTYPES.items()}
else:  # pragma: no cover
    _TORCH_TO_ST, _ST_TO_TORCH, _TORCH_VIEW_DTYPES, _TORCH_VIEW_NAMES = {}, {}, {}, {}


def _is_tensor(obj: Any) -> bool:
    return torch is not None and isinstance(obj, torch.Tensor)


def _numpy_layout(le: np.dtype) -> Tuple[str, Optional[int]]:
    """(stored dtype, last dimension added) of a little-endian numpy dtype."""
    st = _NUMPY_TO_ST.get(le)
    if st is not None:
        return st, None
    if le.kind == "c" and le.itemsize == 16:
        return "F64", 2
    if le.itemsize in _UINT_ST:
        return _UINT_ST[le.itemsize], None
    return "U8", le.itemsize


# -- saving -------------------------------------------------------------------

class _Unsupported(Exception):
    """A value tpde does not store as data: what it is, and what to do."""

    def __init__(self, what: str, how: str) -> None:
        super().__init__(what)
        self.what, self.how = what, how


class _Tensor:
    """What one tensor or array is stored as."""

    __slots__ = ("kind", "st", "shape", "raw", "view", "flags", "storage", "layout")

    def __init__(self, kind: str, st: str, shape: List[int], raw: Any, view: str = "",
                 flags: str = "", storage: Any = None, layout: Any = None) -> None:
        self.kind, self.st, self.shape, self.raw = kind, st, shape, raw
        self.view, self.flags, self.storage, self.layout = view, flags, storage, layout


def _torch_tensor(obj: Any, lossy: bool) -> _Tensor:
    """How a torch tensor is stored (``raw`` filled in by ``_torch_bytes``)."""
    cls = type(obj)
    if cls is not torch.Tensor and cls is not torch.nn.Parameter:
        raise _Unsupported(f"a {cls.__module__}.{cls.__qualname__} (a torch.Tensor subclass)",
                           "convert it with t.as_subclass(torch.Tensor)")
    if obj.is_quantized:
        raise _Unsupported(f"a quantized torch tensor ({obj.dtype})",
                           "dequantize it (t.dequantize())")
    if obj.is_nested:
        raise _Unsupported("a nested torch tensor", "unbind it into a list (t.unbind())")
    if obj.layout != torch.strided:
        raise _Unsupported(f"a {str(obj.layout).replace('torch.', '')} torch tensor",
                           "make it dense (t.to_dense())")
    dt = obj.dtype
    if dt in _TORCH_TO_ST:
        st, trailing, view = _TORCH_TO_ST[dt], None, ""
    elif dt in _TORCH_VIEW_NAMES:
        view = _TORCH_VIEW_NAMES[dt]
        st, trailing, _ = _TORCH_VIEWS[view]
    else:
        raise _Unsupported(f"a {dt} torch tensor", "convert it to another dtype")
    if obj.device.type == "meta":
        raise _Unsupported("a tensor on the meta device (it has no data)", "materialize it")
    flags = ("p" if cls is torch.nn.Parameter else "") + ("g" if obj.requires_grad else "")
    storage = layout = None
    try:
        s = obj.untyped_storage()
        if s.nbytes() and s.data_ptr():
            storage = (str(obj.device), s.data_ptr())
            layout = (obj.storage_offset(), tuple(obj.shape), obj.stride(), dt,
                      obj.is_conj(), obj.is_neg())
    except (RuntimeError, NotImplementedError):  # storages some tensors lack
        pass
    if trailing and lossy:
        st = _EXACT_PARTS[st]
    shape = list(obj.shape) + ([trailing] if trailing else [])
    return _Tensor("torch", st, shape, None, view, flags, storage, layout)


def _torch_bytes(obj: Any, copy: bool = False) -> np.ndarray:
    """The tensor's bytes, in its own memory where they are contiguous on the
    CPU already (``copy=True``: always in memory of their own, copied once)."""
    t = obj.detach()
    moved = t.device.type != "cpu"
    if moved:
        t = t.cpu()  # a copy, made synchronously
    c = t.resolve_conj().resolve_neg().contiguous()
    if copy and not moved and c.data_ptr() == t.data_ptr():  # still the caller's memory
        c = c.clone()
    return c.reshape(-1).view(torch.uint8).numpy() if c.numel() else np.empty(0, np.uint8)


def _numpy_array(obj: np.ndarray, lossy: bool, copy: bool = False) -> _Tensor:
    cls = type(obj)
    if cls is not np.ndarray and cls is not np.memmap:
        how = ("store its .data and .mask as two arrays" if isinstance(obj, np.ma.MaskedArray)
               else "convert it with np.asarray(x)")
        raise _Unsupported(f"a {cls.__module__}.{cls.__qualname__} (a numpy.ndarray subclass)",
                           how)
    dt = obj.dtype
    if not numpy_dtype_ok(dt):
        what = ("a structured" if dt.names is not None
                else "an object" if dt.hasobject else "a")
        raise _Unsupported(f"{what} numpy array of dtype {dt}",
                           "convert it to arrays of plain dtypes")
    if dt.itemsize == 0:
        raise _Unsupported(f"a numpy array of 0-byte elements ({dt})", "give it a size")
    le = dt.newbyteorder("<")
    st, trailing = _numpy_layout(le)
    if trailing == 2 and lossy:
        st = _EXACT_PARTS[st]
    view = "" if le in _NUMPY_TO_ST and dt == le else dt.str
    arr = np.ascontiguousarray(obj, dtype=le)  # 1-d at least: keep obj.shape
    if copy and np.may_share_memory(arr, obj):
        arr = arr.copy()
    raw = arr.reshape(-1).view(np.uint8)
    return _Tensor("numpy", st, list(obj.shape) + ([trailing] if trailing else []), raw, view)


def _numpy_value_pid(obj: Any) -> Optional[tuple]:
    """The persistent id of a numpy scalar, dtype or scalar type (None for
    anything else); raises _Unsupported for structured ones."""
    if isinstance(obj, np.generic):
        dt = obj.dtype
        if not numpy_dtype_ok(dt):
            raise _Unsupported(f"a numpy {'structured ' if dt.names else ''}scalar of dtype {dt}",
                               "convert it (x.item(), or a dict of its fields)")
        if dt.itemsize == 0:  # np.str_('') and np.bytes_(b'')
            dt = np.dtype(dt.kind + "1")
        le = dt.newbyteorder("<")
        name = le.str if numpy_dtype(le.str).type is type(obj) else "<" + le.char
        return ("tpde-np", "scalar", name, np.asarray(obj, dtype=le).tobytes())
    if isinstance(obj, np.dtype):
        ok = numpy_dtype_ok(obj) and obj.itemsize > 0
        if ok and _unpickler._DTYPE_NAME.fullmatch(obj.str) and np.dtype(obj.str) == obj:
            return ("tpde-np", "dtype", obj.str)
        raise _Unsupported(f"a numpy dtype tpde does not rebuild ({obj})",
                           "store its name (str(dtype)) or dtype.descr instead")
    if isinstance(obj, type) and obj in _NUMPY_TYPE_NAMES:
        return ("tpde-np", "type", _NUMPY_TYPE_NAMES[obj])
    return None


def _where(path: str, n: int = 120) -> str:
    if not path:
        return "the state itself"
    return repr(path if len(path) <= n else path[:n] + "...")


def _paths(state: Any, leaves: Dict[int, str]) -> Dict[int, str]:
    """Names every tensor reachable through dicts, lists and tuples by its
    path (and puts the paths of numpy values in ``leaves``, for messages);
    refuses cycles and nesting deeper than MAX_DEPTH. A container reached
    twice (a DAG) is walked once."""
    out: Dict[int, str] = {}
    used: set = set()
    visited: set = set()
    on_path: Dict[int, str] = {}
    stack: List[Tuple[int, str, Iterator[Tuple[Any, Any]]]] = []

    def enter(obj: Any, path: str) -> None:
        if _is_tensor(obj) or isinstance(obj, np.ndarray):
            if id(obj) not in out:
                name = path or "tensor"
                while name in used:
                    name += "'"
                used.add(name)
                out[id(obj)] = name
            return
        if isinstance(obj, (np.generic, np.dtype)):
            leaves.setdefault(id(obj), path)
            return
        if isinstance(obj, dict):
            items: Iterator[Tuple[Any, Any]] = iter(list(obj.items()))
        elif isinstance(obj, (list, tuple)):
            items = enumerate(list(obj))
        else:
            return
        oid = id(obj)
        if oid in on_path:
            raise TpdeError(f"cannot save this state: it contains itself (a cycle): {_where(path)} "
                            f"is {_where(on_path[oid])}; tpde saves trees of dicts, lists "
                            f"and tuples")
        if oid in visited:
            return
        if len(stack) >= MAX_DEPTH:
            raise TpdeError(f"cannot save this state: it is nested more than {MAX_DEPTH} levels "
                            f"deep, at {_where(path, 60)}")
        visited.add(oid)
        on_path[oid] = path
        stack.append((oid, path, items))

    enter(state, "")
    while stack:
        oid, path, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            del on_path[oid]
            continue
        k, v = item
        enter(v, f"{path}/{k}" if path else str(k))
    return out


def flatten(state: Any, *, pickle_tensors: bool = False, lossy: bool = False,
            copy: bool = False) -> Tuple[List[Tuple[str, str, List[int], np.ndarray]], bytes]:
    """Splits ``state`` into tensors (name, dtype, shape, bytes) and the pickled
    rest. Tensors and arrays tpde cannot store as data are refused, or
    pickled as torch and numpy pickle them with ``pickle_tensors=True``.
    ``lossy``: the step gets an error bound (which must not apply to the
    parts of complex values). ``copy``: every tensor's bytes are a copy
    (made once: tensors moved off a GPU or made contiguous are copies
    already), so that the caller may change its tensors at once; without it
    the bytes of contiguous CPU tensors and arrays are their own memory."""
    leaves: Dict[int, str] = {}
    names = _paths(state, leaves)
    used = set(names.values())
    tensors: List[Tuple[str, str, List[int], np.ndarray]] = []
    pids: Dict[int, Any] = {}
    keep_alive: List[Any] = []
    # storage -> {view layout: [name, next alias number]}
    storages: Dict[Any, Dict[Any, List[Any]]] = {}
    shared: List[Tuple[str, str]] = []

    def new_name(obj: Any) -> str:
        name = names.get(id(obj))
        if name is None:  # inside an object the path walk does not enter
            name = f"object/{len(tensors)}"
            while name in used:
                name += "'"
            used.add(name)
        return name

    def refuse(obj: Any, u: _Unsupported) -> TpdeError:
        name = names.get(id(obj), leaves.get(id(obj)))
        where = repr(name) if name else "a value inside an object of the state"
        return TpdeError(f"cannot save {where}: it is {u.what}, which tpde does not store as "
                         f"data; {u.how}, or pass pickle_tensors=True to pickle it (loading it "
                         f"then needs trusted=True)")

    def tensor_pid(obj: Any) -> Any:
        if _is_tensor(obj):
            t = _torch_tensor(obj, lossy)
            group = storages.setdefault(t.storage, {}) if t.storage is not None else None
            if group is not None and t.layout in group:  # tied: the same view of one storage
                same = group[t.layout]
                same[1] += 1
                return ("tpde", same[0], "torch", t.view, t.flags, same[1] - 1)
            name = new_name(obj)
            if group is not None:
                if group:
                    shared.append((next(iter(group.values()))[0], name))
                group[t.layout] = [name, 1]
            t.raw = _torch_bytes(obj, copy)
        else:
            t = _numpy_array(obj, lossy, copy)
            name = new_name(obj)
        tensors.append((name, t.st, t.shape, t.raw))
        if t.view or t.flags:
            return ("tpde", name, t.kind, t.view, t.flags, 0)
        return ("tpde", name, t.kind)

    plain = {str, int, float, bool, bytes, type(None), tuple, list, dict}

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if type(obj) in plain:
                return None
            pid = pids.get(id(obj))
            if pid is not None:
                return pid
            try:
                if _is_tensor(obj) or isinstance(obj, np.ndarray):
                    pid = tensor_pid(obj)
                else:
                    pid = _numpy_value_pid(obj)
            except _Unsupported as u:
                if pickle_tensors:
                    return None
                raise refuse(obj, u) from None
            if pid is not None:
                keep_alive.append(obj)  # ids stay unique while pickling
                pids[id(obj)] = pid
            return pid

    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=4).dump(state)
    except TpdeError:
        raise
    except RecursionError as e:
        raise TpdeError("cannot save this state: it is nested too deeply for pickle (inside "
                        f"objects tpde does not walk): {e}") from e
    except Exception as e:  # pickling errors come in many types
        raise TpdeError(f"cannot save this state: {type(e).__name__}: {e}") from e
    if shared:
        (a, b), more = shared[0], len(shared) - 1
        warnings.warn(
            f"tpde: some tensors share storage as different views of it, first {a!r} and {b!r}"
            f"{f' (and {more} more pairs)' if more else ''}: tpde stores each view's data, and "
            "load gives them back as separate tensors, where torch.load would give views of one "
            "storage", UserWarning, stacklevel=4)
    return tensors, buf.getvalue()


# -- loading ------------------------------------------------------------------

_FLAGS = ("", "g", "p", "pg")


class _Loader:
    """Builds the objects the pickle's persistent ids name, each tensor's data
    once (the same tensor saved twice is one object)."""

    def __init__(self, buf: np.ndarray, numpy: bool, map_location: Any) -> None:
        spans, _ = safetensors_index(buf)
        self.buf = buf
        self.index = {name: (dtype, shape, b, e) for name, dtype, shape, b, e in spans}
        self.numpy = numpy or torch is None
        self.map_location = map_location
        self.data: Dict[str, Tuple[Tuple[str, str], Any]] = {}
        self.objs: Dict[Tuple[str, str, int], Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and pid and type(pid[0]) is str:
            if pid[0] == "tpde":
                return self.tensor(pid)
            if pid[0] == "tpde-np":
                return self.numpy_value(pid)
        raise TpdeError(f"the stored state has a persistent id tpde does not know "
                        f"(a {type(pid).__name__}{f' of {len(pid)}' if type(pid) is tuple else ''})")

    def numpy_value(self, pid: tuple) -> Any:
        what = pid[1] if len(pid) > 1 and type(pid[1]) is str else None
        if what == "scalar" and len(pid) == 4:
            return numpy_scalar(numpy_dtype(pid[2]), pid[3])
        if what == "dtype" and len(pid) == 3:
            return numpy_dtype(pid[2])
        if what == "type" and len(pid) == 3 and type(pid[2]) is str and pid[2] in _NUMPY_TYPES:
            return _NUMPY_TYPES[pid[2]]
        raise TpdeError("the stored state has a malformed numpy value")

    def tensor(self, pid: tuple) -> Any:
        if len(pid) == 3:
            _, name, kind = pid
            view, flags, alias = "", "", 0
        elif len(pid) == 6:
            _, name, kind, view, flags, alias = pid
        else:
            raise TpdeError("the stored state has a malformed tensor reference")
        if (type(name) is not str or type(kind) is not str or kind not in ("torch", "numpy")
                or type(view) is not str or type(flags) is not str or flags not in _FLAGS
                or type(alias) is not int or not 0 <= alias < 2**31):
            raise TpdeError("the stored state has a malformed tensor reference")
        key = (name, flags, alias)
        obj = self.objs.get(key)
        if obj is None:
            data = self.tensor_data(name, kind, view)
            if isinstance(data, np.ndarray):
                obj = data if alias == 0 else data.view()
            elif not flags and alias == 0:
                obj = data
            else:
                obj = data.detach()  # another tensor object viewing the same data
                if "p" in flags:
                    obj = torch.nn.Parameter(obj, requires_grad="g" in flags)
                elif "g" in flags:
                    obj.requires_grad_(True)
            self.objs[key] = obj
        return obj

    def tensor_data(self, name: str, kind: str, view: str) -> Any:
        got = self.data.get(name)
        if got is not None:
            if got[0] != (kind, view):
                raise TpdeError(f"the stored state refers to tensor {clip(name)} as two dtypes")
            return got[1]
        if name not in self.index:
            raise TpdeError(f"the stored state lacks tensor {clip(name)}")
        st, shape, b, e = self.index[name]
        value = self.decode(name, kind, view, st, shape, self.buf[b:e])
        self.data[name] = ((kind, view), value)
        return value

    def decode(self, name: str, kind: str, view: str, st: str, shape: List[int],
               raw: np.ndarray) -> Any:
        def layout_error() -> TpdeError:
            return TpdeError(f"tensor {clip(name)} is stored as {st} {shape[-4:]}, which is not "
                             f"how tpde stores {clip(view)}")

        def layout_ok(want_st: str, trailing: Optional[int]) -> bool:
            if trailing and (not shape or shape[-1] != trailing):
                return False
            return st == want_st or (trailing == 2 and st == _EXACT_PARTS.get(want_st))

        if st == "BOOL" and raw.size and int(raw.max()) > 1:
            raise TpdeError(f"tensor {clip(name)} holds bools other than 0 and 1")
        if kind == "numpy":
            if not view:
                if st not in _ST_TO_NUMPY:
                    raise TpdeError(f"tensor {clip(name)} is {st}, which numpy lacks")
                return raw.view(_ST_TO_NUMPY[st]).reshape(shape)
            dt = numpy_dtype(view)
            le = dt.newbyteorder("<")
            want_st, trailing = _numpy_layout(le)
            if dt.itemsize == 0 or not layout_ok(want_st, trailing):
                raise layout_error()
            arr = raw.view(le).reshape(shape[:-1] if trailing else shape)
            return arr if dt == le else arr.astype(dt)
        # a torch tensor
        if view:
            if view not in _TORCH_VIEWS:
                raise TpdeError(f"tensor {clip(name)} is of a torch dtype tpde does not know: "
                                f"{clip(view)}")
            want_st, trailing, np_dtype = _TORCH_VIEWS[view]
            if not layout_ok(want_st, trailing):
                raise layout_error()
            shape = shape[:-1] if trailing else shape
            torch_dtype = _TORCH_VIEW_DTYPES.get(view)
        else:
            np_dtype = _ST_TO_NUMPY.get(st)
            torch_dtype = _ST_TO_TORCH.get(st)
        if self.numpy and np_dtype is not None:
            return raw.view(np_dtype).reshape(shape)
        if torch_dtype is None:
            raise TpdeError(f"tensor {clip(name)} is {view or st}, which needs "
                            f"{'torch' if torch is None else 'a newer torch'}")
        if raw.ctypes.data % torch_dtype.itemsize:
            raw = raw.copy()  # aligned
        t = torch.from_numpy(raw).view(torch_dtype).reshape(shape)
        return t.to(self.map_location) if self.map_location is not None else t


def unflatten(structure: bytes, buf: np.ndarray, *, numpy: bool, map_location: Any,
              trusted: bool) -> Any:
    """Rebuilds a state from its pickled structure and the safetensors bytes."""
    loader = _Loader(buf, numpy, map_location)

    class _TrustedUnpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return loader.persistent_load(pid)

    try:
        if trusted:
            return _TrustedUnpickler(io.BytesIO(structure)).load()
        return _unpickler.load(structure, loader.persistent_load)
    except TpdeError:
        raise
    except Exception as e:
        raise TpdeError(f"cannot read the stored state: {type(e).__name__}: {short(str(e))}") from e


__all__ = ["flatten", "unflatten", "TENSORS", "STRUCTURE", "MAX_DEPTH"]
