"""``Store.open(step)``: one step's tensors read one at a time, shaped like
``safetensors.safe_open``.

Reading a tensor decodes only its chunks, and those of the same tensor in
the steps its file is coded against, down to the keyframe: never whole
files (see ``StepView`` in ``crates/tpde/src/store/tensor.rs``). For a step
saved with ``Store.save``, a tensor comes back with the dtype and shape
``Store.load`` gives it (complex tensors, numpy-only dtypes such as ``>f8``
or ``<U5``): the dtype each one was saved as is read from ``structure.pkl``
by scanning its opcodes for tpde's persistent ids, without unpickling it.
"""

from __future__ import annotations

import json
import pickletools
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _state
from ._tpde import TpdeError, store_open_step, store_read_file, store_tensor

_FRAMEWORKS = {"pt": "pt", "torch": "pt", "pytorch": "pt", "np": "np", "numpy": "np"}
_STATS = ("objects", "index_bytes", "payload_bytes", "chunks", "tensors")
# Integer dtypes of each width, to slice tensors of dtypes numpy lacks.
_INT_VIEWS = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


class _Unknown:
    """A value the opcode scan does not follow."""


_UNKNOWN = _Unknown()


def saved_views(structure: bytes) -> Dict[str, Tuple[str, str]]:
    """Tensor name -> (kind, view) from the persistent ids of a ``Store.save``
    structure (see ``_state``), found by following the pickle's opcodes on
    a stack of plain values (strings, numbers, tuples of them) and leaving
    everything else opaque: nothing is built, imported or called. Raises
    TpdeError when the pickle is malformed."""
    stack: List[Any] = []
    marks: List[int] = []
    memo: Dict[Any, Any] = {}
    out: Dict[str, Tuple[str, str]] = {}

    def pop(n: int) -> List[Any]:
        if n > len(stack) - (marks[-1] if marks else 0):
            raise ValueError("stack underflow")
        items = stack[len(stack) - n:] if n else []
        del stack[len(stack) - n:]
        return items

    def pop_mark() -> List[Any]:
        if not marks:
            raise ValueError("no mark")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    try:
        for op, arg, _pos in pickletools.genops(structure):
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("MEMOIZE",):
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _UNKNOWN))
            elif name == "BINPERSID":
                pid = pop(1)[0]
                if (type(pid) is tuple and len(pid) in (3, 6) and pid[0] == "tpde"
                        and all(type(x) is str for x in pid[1:3])):
                    view = pid[3] if len(pid) == 6 and type(pid[3]) is str else ""
                    out.setdefault(pid[1], (pid[2], view))
                stack.append(_UNKNOWN)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(tuple(pop(int(name[-1]))))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "STOP":
                break
            elif not op.stack_before and len(op.stack_after) == 1 and arg is not None:
                stack.append(arg if isinstance(arg, (str, int, float, bytes)) else _UNKNOWN)
            else:  # anything else: pop what it takes, push opaque results
                before = op.stack_before
                if pickletools.markobject in before:
                    pop_mark()
                    pop(before.index(pickletools.markobject))
                else:
                    pop(len(before))
                stack.extend([_UNKNOWN] * len(op.stack_after))
    except (ValueError, IndexError, KeyError) as e:
        raise TpdeError(f"the step's structure.pkl is malformed ({e}); "
                        f"Store.load would fail on it too") from None
    return out


class StepReader:
    """A safetensors file of a stored step, read tensor by tensor:
    ``keys()``, ``metadata()``, ``get_tensor(name)``, ``get_slice(name)[...]``,
    as ``safetensors.safe_open`` (and a context manager). Returned by
    :meth:`tpde.Store.open`. ``stats()`` says how many stored bytes the reads
    have cost so far."""

    def __init__(self, inner: Any, step: int, file: Optional[str], framework: str,
                 device: Any) -> None:
        fw = _FRAMEWORKS.get(framework) if isinstance(framework, str) else None
        if fw is None:
            raise TpdeError(f"framework must be \"pt\" or \"np\", not {framework!r}")
        if fw == "pt" and _state.torch is None:
            raise TpdeError("framework=\"pt\" needs torch; pass framework=\"np\" for numpy")
        if file is not None and not isinstance(file, str):
            raise TpdeError(f"file must be a str (a path in the step), not "
                            f"{type(file).__name__}")
        self._inner, self._step, self._fw, self._device = inner, step, fw, device
        self._file, self._object, specs, meta, stats = store_open_step(inner, step, file)
        self._specs = {name: (dtype, shape) for name, dtype, shape in specs}
        self._metadata: Optional[Dict[str, str]] = json.loads(meta) if meta else None
        self._stats = dict(zip(_STATS, stats))
        self._views: Optional[Dict[str, Tuple[str, str]]] = None
        self._closed = False

    # -- safe_open's interface ---------------------------------------------

    def __enter__(self) -> "StepReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the reader (nothing is held open between reads)."""
        self._closed = True

    def keys(self) -> List[str]:
        """The names of the file's tensors, sorted (for a ``Store.save``
        step, their paths in the state: ``model/layer.weight``)."""
        return sorted(self._specs)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The file's safetensors ``__metadata__``."""
        return dict(self._metadata) if self._metadata is not None else None

    def get_tensor(self, name: str) -> Any:
        """Tensor ``name``: a torch tensor (``framework="pt"``) or a numpy
        array (``"np"``), of the dtype and shape ``Store.load`` gives it."""
        value = self._load(name)
        return self._out(name, value)

    def get_slice(self, name: str) -> "TensorSlice":
        """Tensor ``name`` to index: ``get_slice(name)[0:2, ::-1]``. The
        tensor's chunks are decoded whole (a delta needs them), then cut."""
        self._check(name)
        return TensorSlice(self, name)

    # -- tpde's additions ----------------------------------------------------

    @property
    def step(self) -> int:
        return self._step

    @property
    def file(self) -> str:
        """The path of the file read in the step."""
        return self._file

    def stats(self) -> Dict[str, int]:
        """What the reads have cost so far: content files opened, their
        ``index_bytes`` and the chunk ``payload_bytes`` decoded (``bytes``:
        both), ``chunks`` and ``tensors`` decoded (those of the chain
        included), ``structure_bytes`` read for dtypes."""
        s = dict(self._stats)
        s["bytes"] = s["index_bytes"] + s["payload_bytes"]
        s.setdefault("structure_bytes", 0)
        return s

    def __repr__(self) -> str:
        return f"<tpde StepReader step {self._step}, {self._file}, {len(self._specs)} tensors>"

    # -- inside ----------------------------------------------------------------

    def _check(self, name: Any) -> None:
        if self._closed:
            raise TpdeError("this StepReader is closed")
        if not isinstance(name, str):
            raise TpdeError(f"a tensor name is a str, not {type(name).__name__}")
        if name not in self._specs:
            # The library's message, with the close names.
            store_tensor(self._inner, self._step, self._file, self._object, name)

    def _saved_views(self) -> Dict[str, Tuple[str, str]]:
        """The kinds and dtype views of a ``Store.save`` step (empty for a
        file added from a folder)."""
        if self._views is None:
            self._views = {}
            if self._file == _state.TENSORS:
                m = json.loads(self._inner.manifest_json())
                rec = next((s for s in m["steps"] if s["step"] == self._step), None)
                paths = {f["path"] for f in rec["files"]} if rec else set()
                if rec and rec["kind"] == "dir" and _state.STRUCTURE in paths:
                    data, stats = store_read_file(self._inner, self._step, _state.STRUCTURE)
                    self._stats["structure_bytes"] = (self._stats.get("structure_bytes", 0)
                                                      + stats[2])
                    self._views = saved_views(bytes(data))
        return self._views

    def _load(self, name: str) -> Any:
        """Tensor ``name`` as ``Store.load`` would give it (numpy where it
        can for "np", torch where it can for "pt")."""
        self._check(name)
        kind, view = self._saved_views().get(name, ("torch", ""))
        raw, stats = store_tensor(self._inner, self._step, self._file, self._object, name)
        for k, v in zip(_STATS, stats):
            self._stats[k] += v
        if not raw.size:
            raw = np.zeros(8, np.uint8)[:0]  # a stride of 1, as torch views need
        st, shape = self._specs[name]
        loader = _state._Loader.__new__(_state._Loader)
        loader.numpy = self._fw == "np" or _state.torch is None
        loader.map_location = None
        return loader.decode(name, kind, view, st, list(shape), raw)

    def _out(self, name: str, value: Any) -> Any:
        """``value`` as the framework asks, or a TpdeError saying why not."""
        torch = _state.torch
        if self._fw == "np":
            if not isinstance(value, np.ndarray):
                raise TpdeError(f"tensor {name!r} is {value.dtype}, which numpy has no dtype "
                                f"for: open the step with framework=\"pt\"")
            return value
        if isinstance(value, np.ndarray):
            try:
                value = torch.from_numpy(value)
            except (TypeError, ValueError):
                raise TpdeError(f"tensor {name!r} was saved as a numpy {value.dtype} array, "
                                f"which torch has no dtype for: open the step with "
                                f"framework=\"np\"") from None
        if self._device is not None and str(self._device) != "cpu":
            value = value.to(self._device)
        return value


def _index(value: Any, index: Any) -> Any:
    """``value[index]`` with numpy's rules (negative steps included), as a new
    array or tensor of the same kind."""
    if isinstance(value, np.ndarray):
        return np.array(value[index])
    torch = _state.torch
    try:
        a = value.numpy()
        return torch.from_numpy(np.array(a[index]))
    except TypeError:  # a dtype numpy lacks: slice its bits as integers
        ints = getattr(torch, _INT_VIEWS[value.element_size()])
        a = value.view(ints).numpy()
        return torch.from_numpy(np.array(a[index])).view(value.dtype)


class TensorSlice:
    """A tensor of a :class:`StepReader` to index (``safe_open``'s
    ``get_slice``): ``get_shape()``, ``get_dtype()``, ``[...]``."""

    def __init__(self, reader: StepReader, name: str) -> None:
        self._reader, self._name = reader, name

    def get_shape(self) -> List[int]:
        """The shape ``get_tensor`` gives (for a complex tensor saved as
        pairs, without the pairs' dimension)."""
        st, shape = self._reader._specs[self._name]
        kind, view = self._reader._saved_views().get(self._name, ("torch", ""))
        trailing = None
        if view and kind == "torch" and view in _state._TORCH_VIEWS:
            trailing = _state._TORCH_VIEWS[view][1]
        elif view and kind == "numpy":
            try:
                trailing = _state._numpy_layout(np.dtype(view).newbyteorder("<"))[1]
            except TypeError:
                trailing = None
        return list(shape[:-1]) if trailing and shape else list(shape)

    def get_dtype(self) -> str:
        """The safetensors dtype (``"F32"``), or for a tensor saved as another
        dtype's bytes, what it was saved as (``"complex128"``, ``">f8"``)."""
        st, _shape = self._reader._specs[self._name]
        _kind, view = self._reader._saved_views().get(self._name, ("torch", ""))
        return view or st

    def __getitem__(self, index: Any) -> Any:
        r = self._reader
        value = _index(r._load(self._name), index)
        return r._out(self._name, value)

    def __repr__(self) -> str:
        return f"<tpde TensorSlice {self._name!r} of step {self._reader.step}>"


__all__ = ["StepReader", "TensorSlice", "saved_views"]
