"""Turning a (nested) state dict into files the store codes well, and back.

A state is any picklable object: a model's ``state_dict()``, an optimizer's,
a dict of both with RNG states, a Lightning checkpoint. Its tensors (torch
tensors and numpy arrays) go into one safetensors file, each under the path
that leads to it (``model/layer.weight``, ``optimizer/state/0/exp_avg``), so
that the same tensor has the same name at every step and is coded against
its previous value. Everything else is pickled with the tensors replaced by
persistent ids, as ``torch.save`` does.

Loading unpickles with an allowlist (plain containers, ``OrderedDict``, torch
dtypes, devices and sizes, numpy scalars) unless the caller trusts the store
(``trusted=True``), like ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._tpde import TpdeError, safetensors_index

try:  # torch is optional: numpy-only states work without it.
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

TENSORS = "tensors.safetensors"
STRUCTURE = "structure.pkl"

_NUMPY_TO_ST = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.complex64): "C64",
}
_ST_TO_NUMPY = {v: k for k, v in _NUMPY_TO_ST.items()}

if torch is not None:
    _TORCH_TO_ST = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
        torch.complex64: "C64",
    }
    for _name, _st in [("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                       ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")]:
        if hasattr(torch, _name):
            _TORCH_TO_ST[getattr(torch, _name)] = _st
    _ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}
else:  # pragma: no cover
    _TORCH_TO_ST, _ST_TO_TORCH = {}, {}

# Element types numpy lacks: read as unsigned integers of the same width, then
# viewed as the torch dtype.
_CARRIER = {"BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8}


def _is_tensor(obj: Any) -> bool:
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_entry(obj: Any) -> Optional[Tuple[str, str, List[int], np.ndarray]]:
    """(kind, dtype, shape, little-endian bytes) of a tensor or array tpde can
    store as such; None for anything else (it is pickled instead)."""
    if _is_tensor(obj):
        if obj.layout != torch.strided or obj.is_quantized or obj.dtype not in _TORCH_TO_ST:
            return None
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        shape = list(t.shape)
        flat = t.reshape(-1)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
        return "torch", _TORCH_TO_ST[obj.dtype], shape, raw
    if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
        dtype = obj.dtype.newbyteorder("=") if obj.dtype.byteorder == ">" else obj.dtype
        if dtype not in _NUMPY_TO_ST:
            return None
        arr = np.ascontiguousarray(obj, dtype=dtype.newbyteorder("<"))
        return "numpy", _NUMPY_TO_ST[np.dtype(dtype)], list(arr.shape), arr.reshape(-1).view(np.uint8)
    return None


def _paths(obj: Any, prefix: str, out: Dict[int, str], seen: set) -> None:
    """Names every tensor reachable through dicts, lists and tuples by its path."""
    if _is_tensor(obj) or isinstance(obj, np.ndarray):
        if id(obj) not in out:
            name = prefix or "tensor"
            while name in seen:
                name += "'"
            seen.add(name)
            out[id(obj)] = name
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return
    for k, v in items:
        _paths(v, f"{prefix}/{k}" if prefix else str(k), out, seen)


def flatten(state: Any) -> Tuple[List[Tuple[str, str, List[int], np.ndarray]], bytes]:
    """Splits ``state`` into tensors (name, dtype, shape, bytes) and the pickled
    rest."""
    names: Dict[int, str] = {}
    seen: set = set()
    _paths(state, "", names, seen)
    tensors: List[Tuple[str, str, List[int], np.ndarray]] = []
    done: Dict[int, Tuple[str, str]] = {}
    keep_alive: List[Any] = []

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if not (_is_tensor(obj) or isinstance(obj, np.ndarray)):
                return None
            if id(obj) in done:
                return ("tpde", *done[id(obj)])
            entry = _tensor_entry(obj)
            if entry is None:
                return None
            kind, dtype, shape, raw = entry
            name = names.get(id(obj))
            if name is None:  # inside an object the path walk does not enter
                name = f"object/{len(tensors)}"
                while name in seen:
                    name += "'"
                seen.add(name)
            keep_alive.append(obj)
            done[id(obj)] = (name, kind)
            tensors.append((name, dtype, shape, raw))
            return ("tpde", name, kind)

    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=4).dump(state)
    except Exception as e:  # pickling errors come in many types
        raise TpdeError(f"cannot save this state: {type(e).__name__}: {e}") from e
    return tensors, buf.getvalue()


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "bytearray"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


def unflatten(structure: bytes, buf: np.ndarray, *, numpy: bool, map_location: Any,
              trusted: bool) -> Any:
    """Rebuilds a state from its pickled structure and the safetensors bytes."""
    spans, _ = safetensors_index(buf)
    index = {name: (dtype, shape, b, e) for name, dtype, shape, b, e in spans}

    def tensor(name: str, kind: str) -> Any:
        if name not in index:
            raise TpdeError(f"the stored state lacks tensor {name!r}")
        dtype, shape, b, e = index[name]
        raw = buf[b:e]
        if kind == "numpy" or numpy or torch is None:
            if dtype not in _ST_TO_NUMPY:
                if torch is None:
                    raise TpdeError(f"tensor {name!r} is {dtype}, which needs torch")
            else:
                return raw.view(_ST_TO_NUMPY[dtype]).reshape(shape)
        carrier = _CARRIER.get(dtype)
        if carrier is not None:
            t = torch.from_numpy(raw.view(carrier)).view(_ST_TO_TORCH[dtype])
        else:
            t = torch.from_numpy(raw.view(_ST_TO_NUMPY[dtype]))
        t = t.reshape(shape)
        return t.to(map_location) if map_location is not None else t

    loaded: Dict[Tuple[str, str], Any] = {}  # a tensor saved twice is one object

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "tpde":
                key = (pid[1], pid[2])
                if key not in loaded:
                    loaded[key] = tensor(*key)
                return loaded[key]
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")

        def find_class(self, module: str, name: str) -> Any:
            if trusted or (module, name) in _SAFE_GLOBALS or (
                module == "torch" and torch is not None
                and isinstance(getattr(torch, name, None), torch.dtype)
            ):
                return super().find_class(module, name)
            raise TpdeError(
                f"the stored state holds a {module}.{name} object; load it with "
                f"trusted=True if you trust this store (that runs its pickled code)"
            )

    try:
        return _Unpickler(io.BytesIO(structure)).load()
    except TpdeError:
        raise
    except Exception as e:
        raise TpdeError(f"cannot read the stored state: {type(e).__name__}: {e}") from e


__all__ = ["flatten", "unflatten", "TENSORS", "STRUCTURE"]
