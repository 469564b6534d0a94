"""The unpickler of ``Store.load`` without ``trusted=True``.

A hostile store must not be able to run code, corrupt memory, or make a load
take much more memory or time than the size of its pickle. So this is not
``pickle.Unpickler`` with a ``find_class`` allowlist (numpy's
``dtype.__setstate__`` alone takes any state, and C's memo grows to any index
a pickle names), but the pure-Python unpickler with its dangerous opcodes
replaced:

- ``REDUCE`` calls only the constructors of ``_CONSTRUCTORS``, each checking
  its arguments (types, and sizes bounded by the pickle's: no
  ``bytearray(n)``, no ``set(range(n))``).
- ``BUILD`` (``__setstate__``), ``NEWOBJ``, ``INST``, ``OBJ``, extension
  codes and out-of-band buffers are refused, except ``BUILD`` of an
  ``OrderedDict``'s attributes (a ``state_dict()``'s ``_metadata``, put in
  its ``__dict__``) and of the numpy dtypes of the previous state format,
  which is checked against the state numpy itself gives the same dtype (see
  ``_LegacyDtype``) and never reaches numpy.
- ``APPEND(S)``, ``SETITEM(S)`` and ``ADDITEMS`` work on plain lists, dicts
  (``OrderedDict``) and sets only, and the keys they hash are charged to a
  budget proportional to the pickle's size (a DAG of tuples hashes
  exponentially long), with few keys of one hash per container.
- Lengths (``BYTEARRAY8``) longer than the pickle are refused before
  anything is allocated; the memo is a dict.

Tensors and numpy values arrive through ``persistent_load`` (tpde's own
format, see ``_state``), so nothing here builds an array or a dtype from
bytes the pickle controls, except ``_numpy_scalar``, which only reads raw
bytes of a plain numeric, string or datetime dtype.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ._tpde import TpdeError

try:
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

_TRUSTED_HINT = "load it with trusted=True if you trust this store (that runs its pickled code)"


def clip(text: str, n: int = 80) -> str:
    """A string from the pickle, safe to put in a message."""
    return repr(text[:n]) + ("..." if len(text) > n else "")


def short(text: str, n: int = 300) -> str:
    """The start of a long message (from an exception about the pickle)."""
    return text if len(text) <= n else text[:n] + "..."


def _refuse(what: str) -> TpdeError:
    return TpdeError(f"the stored state {what}; {_TRUSTED_HINT}")


# -- numpy dtypes tpde rebuilds from their names -----------------------------

# Plain dtypes only: bool, integers, floats, complex, datetimes, fixed-width
# strings; never objects, structured or void dtypes, or subarrays.
_DTYPE_NAME = re.compile(r"[<>|=]?([biufcmMUS][0-9]{1,9}(\[[0-9]{0,9}[a-zA-Z]{1,7}\])?"
                         r"|[?bBhHiIlLqQpPefdgFDG])")  # or a type code: '<q' is longlong
_SAFE_KINDS = "biufcmMUS"


def numpy_dtype_ok(dt: np.dtype) -> bool:
    """True for a dtype whose values are plain bytes (no pointers, no fields)."""
    return (dt.kind in _SAFE_KINDS and dt.fields is None and dt.subdtype is None
            and not dt.hasobject)


def numpy_dtype(name: Any) -> np.dtype:
    """The numpy dtype named ``name`` (``dtype.str``: ``'<f8'``, ``'<U5'``,
    ``'<M8[ns]'``), refusing any name outside the plain dtypes."""
    if type(name) is not str or not _DTYPE_NAME.fullmatch(name):
        raise TpdeError(f"the stored state names a numpy dtype tpde does not rebuild: "
                        f"{clip(name) if type(name) is str else type(name).__name__}")
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError) as e:
        raise TpdeError(f"the stored state names an invalid numpy dtype {clip(name)}: {e}") from None
    if not numpy_dtype_ok(dt):
        raise TpdeError(f"the stored state names a numpy dtype tpde does not rebuild: {clip(name)}")
    return dt


def numpy_scalar(dt: np.dtype, raw: Any) -> Any:
    """The numpy scalar of dtype ``dt`` (checked by ``numpy_dtype``) whose
    bytes are ``raw``."""
    if type(raw) is not bytes or len(raw) != dt.itemsize:
        raise TpdeError(f"a stored numpy {dt} scalar has {len(raw) if type(raw) is bytes else 'no'} "
                        f"bytes, not {dt.itemsize}")
    if dt.kind == "b" and raw not in (b"\x00", b"\x01"):
        raise TpdeError("a stored numpy bool is neither 0 nor 1")
    return np.frombuffer(raw, dtype=dt)[0]


class _LegacyDtype:
    """``numpy.dtype(name, False, True)`` of the previous state format (numpy
    scalars pickled by numpy), until its ``BUILD`` sets its byte order and
    size; then ``dtype`` is what numpy would have built, checked, not set."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype: Optional[np.dtype] = None

    def build(self, state: Any) -> None:
        if self.dtype is not None or type(state) is not tuple or len(state) not in (8, 9):
            raise _refuse("sets a numpy dtype's state in a form tpde does not check")
        order, kind = state[1], self.name[0]
        if type(order) is not str or order not in "<>|=" or len(order) != 1:
            raise _refuse("sets a numpy dtype's state in a form tpde does not check")
        name = self.name
        if kind in "US":
            elsize = state[5]
            if type(elsize) is not int or not 0 < elsize < 2**31:
                raise _refuse("sets a numpy dtype's state in a form tpde does not check")
            name = f"{kind}{elsize // (4 if kind == 'U' else 1)}"
        elif kind in "mM":
            # (metadata, (unit, count, 1, 1))
            meta = state[8] if len(state) == 9 else None
            meta = meta[1] if type(meta) is tuple and len(meta) == 2 and meta[0] is None else None
            if (type(meta) is not tuple or len(meta) != 4 or type(meta[0]) is not bytes
                    or type(meta[1]) is not int or not re.fullmatch(rb"[a-zA-Z]{1,7}", meta[0])
                    or not 0 < meta[1] < 2**31):
                raise _refuse("sets a numpy datetime dtype's state in a form tpde does not check")
            unit = meta[0].decode()
            name = f"{name}[{unit}]" if meta[1] == 1 else f"{name}[{meta[1]}{unit}]"
        try:
            dt = numpy_dtype(name)
            if order in "<>":
                dt = dt.newbyteorder(order)
            same = dt.__reduce__()[1:] == ((self.name, False, True), state)
        except (TpdeError, TypeError, ValueError):
            same = False
        if not same:
            raise _refuse("sets a numpy dtype's state in a form tpde does not check")
        self.dtype = dt


def _legacy_dtype(u: "SafeUnpickler", args: tuple) -> Any:
    if (len(args) != 3 or type(args[0]) is not str or args[1] is not False or args[2] is not True):
        raise _refuse("builds a numpy dtype in a form tpde does not check")
    name = args[0]
    if not re.fullmatch(r"[biufcmMUS][0-9]{1,9}", name):
        raise _refuse(f"holds a numpy dtype {clip(name)} (objects, structured or void data)")
    u.legacy += 1
    return _LegacyDtype(name)


def _legacy_scalar(u: "SafeUnpickler", args: tuple) -> Any:
    if len(args) != 2:
        raise _refuse("builds a numpy scalar in a form tpde does not check")
    dt = args[0]
    if type(dt) is _LegacyDtype:
        dt = dt.dtype if dt.dtype is not None else numpy_dtype(dt.name)
    if not isinstance(dt, np.dtype) or not numpy_dtype_ok(dt):
        raise _refuse("builds a numpy scalar of a dtype tpde does not check")
    return numpy_scalar(dt, args[1])


# -- the constructors REDUCE may call -----------------------------------------

def _is_int(x: Any) -> bool:
    return type(x) is int


def _ordered_dict(u: "SafeUnpickler", args: tuple) -> Any:
    if args:
        raise _refuse("builds an OrderedDict from arguments")
    return OrderedDict()


def _set(cls: type) -> Callable[["SafeUnpickler", tuple], Any]:
    def make(u: "SafeUnpickler", args: tuple) -> Any:
        if not args:
            return cls()
        if len(args) != 1 or type(args[0]) not in (list, tuple):
            kind = type(args[0]).__name__ if len(args) == 1 else f"{len(args)} arguments"
            raise _refuse(f"builds a {cls.__name__} from a {kind} (only a list is read)")
        u.check_keys(args[0], args[0])
        return cls(args[0])
    return make


def _complex(u: "SafeUnpickler", args: tuple) -> Any:
    if not 1 <= len(args) <= 2 or any(type(a) not in (int, float) for a in args):
        raise _refuse("builds a complex from other than numbers")
    return complex(*args)


def _slice(u: "SafeUnpickler", args: tuple) -> Any:
    if not 1 <= len(args) <= 3 or any(a is not None and type(a) is not int for a in args):
        raise _refuse("builds a slice from other than ints")
    return slice(*args)


def _range(u: "SafeUnpickler", args: tuple) -> Any:
    if not 1 <= len(args) <= 3 or not all(map(_is_int, args)) or (len(args) == 3 and args[2] == 0):
        raise _refuse("builds a range from other than ints")
    r = range(*args)
    # A range is small, but anything that lists it is not: as long as the
    # pickle (a few bytes a number), no longer.
    limit = 8 * u.size + 1024
    try:
        n = len(r)
    except OverflowError:
        n = limit + 1
    if n > limit:
        raise _refuse(f"holds a range of over {limit} numbers, more than its {u.size} bytes "
                      "could hold")
    return r


def _bytearray(u: "SafeUnpickler", args: tuple) -> Any:
    if not args:
        return bytearray()
    if len(args) == 1 and type(args[0]) is bytes:
        return bytearray(args[0])
    if len(args) == 2 and type(args[0]) is str and args[1] == "latin-1":
        return bytearray(args[0], "latin-1")
    if args and type(args[0]) is int:
        raise _refuse("builds bytearray(n) from a number (that allocates n bytes)")
    raise _refuse("builds a bytearray from other than bytes")


def _torch_size(u: "SafeUnpickler", args: tuple) -> Any:
    if (len(args) != 1 or type(args[0]) not in (tuple, list)
            or not all(type(x) is int and -2**63 <= x < 2**63 for x in args[0])):
        raise _refuse("builds a torch.Size from other than ints")
    return torch.Size(args[0])


def _torch_device(u: "SafeUnpickler", args: tuple) -> Any:
    if (not 1 <= len(args) <= 2 or type(args[0]) is not str or len(args[0]) > 64
            or (len(args) == 2 and not (type(args[1]) is int and 0 <= args[1] < 2**31))):
        raise _refuse("builds a torch.device from other than a name and an index")
    return torch.device(*args)


_LEGACY_SCALAR = object()  # what find_class gives for numpy's scalar(): not numpy's function

_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "bytearray"): bytearray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _LEGACY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _LEGACY_SCALAR,
}
_CONSTRUCTORS: Dict[int, Tuple[Any, Callable[["SafeUnpickler", tuple], Any]]] = {
    id(c): (c, f) for c, f in [
        (OrderedDict, _ordered_dict), (set, _set(set)), (frozenset, _set(frozenset)),
        (complex, _complex), (slice, _slice), (range, _range), (bytearray, _bytearray),
        (np.dtype, _legacy_dtype), (_LEGACY_SCALAR, _legacy_scalar),
    ]
}
if torch is not None:
    _GLOBALS[("torch", "Size")] = torch.Size
    _GLOBALS[("torch", "device")] = torch.device
    _CONSTRUCTORS[id(torch.Size)] = (torch.Size, _torch_size)
    _CONSTRUCTORS[id(torch.device)] = (torch.device, _torch_device)
    # torch.float16 and the like, read from the module's dict (getattr could
    # import a submodule).
    for _name, _value in list(vars(torch).items()):
        if isinstance(_value, torch.dtype):
            _GLOBALS[("torch", _name)] = _value


# -- the unpickler ------------------------------------------------------------

_Base = pickle._Unpickler  # type: ignore[attr-defined]
_COLLIDING = 64  # keys of one hash in one container (other than str and bytes)


class _Opcodes(dict):
    def __missing__(self, code: int) -> Any:
        raise pickle.UnpicklingError(f"invalid opcode 0x{code:02x} (the pickle is damaged)")


class SafeUnpickler(_Base):
    dispatch = _Opcodes(_Base.dispatch)

    def __init__(self, data: bytes, persistent_load: Callable[[Any], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self.size = len(data)
        self.budget = 16 * len(data) + 4096  # units of hashing work
        self.hashes: Dict[Tuple[int, int], int] = {}
        self.legacy = 0
        self._persistent = persistent_load

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)

    def find_class(self, module: str, name: str) -> Any:
        obj = _GLOBALS.get((module, name))
        if obj is None:
            raise TpdeError(f"the stored state holds a {module[:60]}.{name[:60]} object; "
                            f"{_TRUSTED_HINT}")
        return obj

    # Keys: what hashing them costs, and how many share a hash.
    def check_keys(self, container: Any, keys: Any) -> None:
        for k in keys:
            t = type(k)
            if t is str or t is bytes:
                continue  # hashed once (cached), with SipHash
            if t is tuple or t is frozenset or t is int or t is slice or t is range:
                self.budget -= self._cost(k)
            else:
                self.budget -= 1
            if self.budget < 0:
                raise _refuse("has keys too costly to hash for its size")
            slot = (id(container), hash(k))
            n = self.hashes.get(slot, 0) + 1
            self.hashes[slot] = n
            if n > _COLLIDING:
                raise _refuse(f"has over {_COLLIDING} keys of one hash in one container")

    def _cost(self, key: Any) -> int:
        n, todo, limit = 0, [key], self.budget + 1
        while todo and n < limit:
            x = todo.pop()
            n += 1
            t = type(x)
            if t is tuple or (torch is not None and t is torch.Size):
                todo.extend(x)
            elif t is int:
                n += x.bit_length() >> 6
            elif t is frozenset:
                n += len(x)  # its hash is cached; comparing it reads its table
            elif t is slice:
                todo.extend((x.start, x.stop, x.step))
            elif t is range:
                todo.extend((x.start, x.stop, x.step))
        return n

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        entry = _CONSTRUCTORS.get(id(func))
        if entry is None or entry[0] is not func:
            raise _refuse(f"calls a {type(func).__name__} object (REDUCE)")
        if type(args) is not tuple:
            raise _refuse(f"calls {getattr(func, '__name__', 'a constructor')} with arguments "
                          "that are not a tuple")
        stack[-1] = entry[1](self, args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is _LegacyDtype:
            inst.build(state)
            return
        # An OrderedDict's attributes (a torch state_dict's _metadata): set in
        # its __dict__, as pickle does, which no method of it reads.
        if (type(inst) is OrderedDict and type(state) is dict
                and all(type(k) is str for k in state)):
            inst.__dict__.update(state)
            return
        raise _refuse(f"sets the state of a {type(inst).__name__} object (BUILD)")
    dispatch[pickle.BUILD[0]] = load_build

    def _refuse_op(what: str) -> Callable[["SafeUnpickler"], None]:  # type: ignore[misc]
        def op(self: "SafeUnpickler") -> None:
            raise _refuse(what)
        return op

    dispatch[pickle.NEWOBJ[0]] = _refuse_op("builds an object with cls.__new__ (NEWOBJ)")
    dispatch[pickle.NEWOBJ_EX[0]] = _refuse_op("builds an object with cls.__new__ (NEWOBJ_EX)")
    dispatch[pickle.INST[0]] = _refuse_op("builds an object of a class (INST)")
    dispatch[pickle.OBJ[0]] = _refuse_op("builds an object of a class (OBJ)")
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_op("names a class by an extension code")
    dispatch[pickle.NEXT_BUFFER[0]] = _refuse_op("refers to out-of-band buffers")
    dispatch[pickle.READONLY_BUFFER[0]] = _refuse_op("refers to out-of-band buffers")
    del _refuse_op, _op

    def load_bytearray8(self) -> None:
        n, = struct.unpack("<Q", self.read(8))
        if n > self.size:
            raise _refuse(f"holds a bytearray of {n} bytes, longer than the whole state")
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("the pickle ends inside a bytearray")
        self.append(bytearray(data))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list:
            raise _refuse(f"appends to a {type(target).__name__} object")
        target.append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            raise _refuse(f"appends to a {type(target).__name__} object")
        target.extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def _mapping(self) -> Any:
        target = self.stack[-1]
        if type(target) is not dict and type(target) is not OrderedDict:
            raise _refuse(f"sets items of a {type(target).__name__} object")
        return target

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._mapping()
        self.check_keys(target, (key,))
        target[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._mapping()
        keys = items[0::2]
        self.check_keys(target, keys)
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: Dict[Any, Any] = {}
        self.check_keys(d, items[0::2])
        for i in range(0, len(items) - 1, 2):
            d[items[i]] = items[i + 1]
        self.append(d)
    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _refuse(f"adds items to a {type(target).__name__} object")
        self.check_keys(target, items)
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self.check_keys(items, items)
        self.append(frozenset(items))
    dispatch[pickle.FROZENSET[0]] = load_frozenset


def _leaks_legacy_dtype(obj: Any) -> bool:
    """Whether a ``_LegacyDtype`` is reachable from ``obj`` (a bare numpy
    dtype of the previous format, which this unpickler does not rebuild)."""
    seen = set()
    todo: List[Any] = [obj]
    while todo:
        x = todo.pop()
        t = type(x)
        if t is _LegacyDtype:
            return True
        if t in (dict, OrderedDict, list, tuple, set, frozenset) and id(x) not in seen:
            seen.add(id(x))
            if t is dict or t is OrderedDict:
                todo.extend(x.keys())
                todo.extend(x.values())
            else:
                todo.extend(x)
    return False


def load(data: bytes, persistent_load: Callable[[Any], Any]) -> Any:
    """Unpickles ``data`` (see the module's docstring)."""
    u = SafeUnpickler(data, persistent_load)
    obj = u.load()
    if u.legacy and _leaks_legacy_dtype(obj):
        raise TpdeError("the stored state holds a numpy dtype object pickled by an earlier tpde; "
                        f"{_TRUSTED_HINT}")
    return obj


__all__ = ["SafeUnpickler", "load", "numpy_dtype", "numpy_dtype_ok", "numpy_scalar", "clip",
           "short"]
