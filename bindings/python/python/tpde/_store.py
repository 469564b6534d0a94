"""``tpde.Store``: a training run's checkpoints, saved from Python."""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Dict, Iterator, List, Optional, Union

from . import _state
from ._api import U32_MAX, U64_MAX, USIZE_MAX, _flag, _int, _path, tpde_errors
from ._async import Writer
from ._tpde import Store as _Store
from ._tpde import TpdeError, step_from_name

if TYPE_CHECKING:  # pragma: no cover
    from ._report import TensorDiff

PathLike = Union[str, "os.PathLike[str]"]


def _step(step: Any) -> int:
    return _int("step", step, 0, U64_MAX)


def _check_bound(max_abs_error: Any, max_rel_error: Any) -> None:
    """Refuses a lossy bound the Rust core would refuse, before a background
    save is queued (so that the mistake is raised by the call that made it)."""
    if max_abs_error is not None and max_rel_error is not None:
        raise TpdeError("give max_abs_error or max_rel_error, not both")
    for what, v in (("max_abs_error", max_abs_error), ("max_rel_error", max_rel_error)):
        if v is None:
            continue
        if isinstance(v, (str, bytes)) or not (hasattr(v, "__float__") or hasattr(v, "__index__")):
            raise TpdeError(f"{what} must be a number, not {type(v).__name__}")
        f = float(v)
        if not (math.isfinite(f) and f > 0):
            raise TpdeError(f"the error bound must be a positive number, not {f}")


@dataclass
class VerifyReport:
    """What :meth:`Store.verify` found."""

    steps: int
    files: int
    bytes: int
    problems: List[str] = field(default_factory=list)
    leftovers: int = 0

    @property
    def ok(self) -> bool:
        """True when every step restored and every content file was intact."""
        return not self.problems


class Store:
    """A checkpoint store (a folder, or ``s3://bucket/prefix`` on S3-compatible
    object storage): every checkpoint coded against the previous one, with a
    keyframe at least every ``keyframe_every`` steps, and any of them back
    byte for byte.

    ``Store(path)`` opens the store at ``path`` or creates it: in a new or
    empty folder (a store never adopts a folder holding other files), whose
    parent must exist unless ``create_parents=True``. Every rank of a run
    may call it at once; they all get the same store. For
    ``s3://`` the endpoint, region and credentials come from the ``AWS_*``
    environment variables (see docs/STORE.md). Saving
    (:meth:`save`, :meth:`add`) keeps the last saved checkpoint in memory so
    that the next one is coded against it without decoding the chain.

    ``save(..., blocking=False)`` codes in a background thread; at most
    ``max_pending`` such saves are pending at once (a further one first
    waits for the oldest), each holding a copy of its state's tensors.
    Calls that write (``save``, ``add``, ``remove``, ``prune``) and
    :meth:`wait` first wait for them and raise a background failure no
    call has reported yet; calls that read wait for the pending saves of
    the steps they read (all of them for ``steps()``, ``manifest()``,
    ``verify()``).
    """

    @tpde_errors
    def __init__(self, path: PathLike, *, keyframe_every: Optional[int] = None,
                 create: bool = True, create_parents: bool = False,
                 max_pending: int = 1) -> None:
        if keyframe_every is not None:
            keyframe_every = _int("keyframe_every", keyframe_every, 1, U32_MAX)
        create = _flag("create", create)
        create_parents = _flag("create_parents", create_parents)
        max_pending = _int("max_pending", max_pending, 1, U32_MAX)
        self._inner = _Store(_path("path", path), keyframe_every=keyframe_every, create=create,
                             create_parents=create_parents)
        self._writer = Writer(self.path, max_pending)

    @property
    def path(self) -> str:
        """The store's folder, or its ``s3://`` URL."""
        return os.fspath(self._inner.path)

    @property
    def max_pending(self) -> int:
        """How many background saves may be pending at once."""
        return self._writer.max_pending

    @tpde_errors
    def steps(self) -> List[int]:
        """The stored steps, in increasing order (once the pending
        background saves are committed)."""
        self._writer.wait()
        return self._inner.steps()

    def __contains__(self, step: object) -> bool:
        try:
            self._writer.wait_for((step,))
        except TypeError:  # unhashable: not a step
            return False
        return step in self._inner.steps()

    def __len__(self) -> int:
        return len(self.steps())

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps())

    def __repr__(self) -> str:
        return f"tpde.Store({self.path!r})"

    @tpde_errors
    def save(self, step: int, state: Any, *, blocking: bool = True,
             max_abs_error: Optional[float] = None, max_rel_error: Optional[float] = None,
             pickle_tensors: bool = False) -> Optional["Future[None]"]:
        """Stores ``state`` (a state dict, or any nesting of dicts, lists and
        tuples holding torch tensors, numpy arrays and plain values: model,
        optimizer and RNG states together) as step ``step``.

        With ``blocking=False`` it returns a :class:`concurrent.futures.Future`
        as soon as the state is snapshotted (its tensors copied to host
        memory, the rest pickled: the caller may change them right away) and
        codes it in a background thread; ``result()`` raises what failed (a
        :class:`tpde.TpdeError`). Steps commit in call order. A failure is
        also raised, once, by the handle's next write or :meth:`wait`, and
        the saves queued after a failed one are not made. First, while
        ``max_pending`` saves are pending, it waits for the oldest to finish.
        ``blocking=True`` waits for every pending save, then saves.

        Lossless unless a bound is given: with ``max_abs_error=E`` every float
        element (F16, BF16, F32, F64) is restored within E of its value (with
        ``max_rel_error=R``, within R times its tensor's RMS); NaN, infinities,
        integers, bools and complex values stay exact, and errors do not add
        up from step to step.

        Tensors and arrays tpde cannot store as data (sparse, quantized,
        nested or subclassed tensors; object, structured, masked arrays) are
        refused, unless ``pickle_tensors=True``: then they are pickled as
        ``torch.save`` would, and loading the step needs ``trusted=True``.
        A cycle (a dict that contains itself) is refused."""
        step = _step(step)
        blocking = _flag("blocking", blocking)
        pickle_tensors = _flag("pickle_tensors", pickle_tensors)
        what = f"the save of step {step}"
        if blocking:
            self._writer.wait(report=True, what=what)
            self._snapshot(step, state, max_abs_error=max_abs_error, max_rel_error=max_rel_error,
                           pickle_tensors=pickle_tensors, copy=False)()
            return None
        _check_bound(max_abs_error, max_rel_error)
        return self._writer.submit(self, what, (step,), lambda: self._snapshot(
            step, state, max_abs_error=max_abs_error, max_rel_error=max_rel_error,
            pickle_tensors=pickle_tensors, copy=True))

    def _snapshot(self, step: int, state: Any, *, max_abs_error: Optional[float],
                  max_rel_error: Optional[float], pickle_tensors: bool,
                  copy: bool) -> Callable[[], None]:
        """Flattens ``state`` (its tensors copied with ``copy=True``) and
        returns the call that stores it as step ``step`` (which may run on
        another thread: the Rust core codes with the GIL released)."""
        lossy = max_abs_error is not None or max_rel_error is not None
        tensors, structure = _state.flatten(state, pickle_tensors=pickle_tensors, lossy=lossy,
                                            copy=copy)
        inner = self._inner

        def commit() -> None:
            inner.add_tensors(step, f"step-{step}", tensors, [(_state.STRUCTURE, structure)],
                              max_abs_error=max_abs_error, max_rel_error=max_rel_error)

        return commit

    def _submit(self, what: str, steps: Collection[int],
                prepare: Callable[[], Callable[[], None]], *,
                bounded: bool = True) -> "Future[None]":
        """Queues work of an integration behind the pending saves (see
        ``Writer.submit``): ``prepare()`` runs now, what it returns in the
        background, in order with the saves; ``bounded=False`` for work
        that holds no snapshot (it does not wait for room)."""
        return self._writer.submit(self, what, steps, prepare, bounded=bounded)

    def _pending(self, step: int) -> bool:
        """True while a background job that writes ``step`` is pending."""
        return step in self._writer.pending_steps()

    @tpde_errors
    def wait(self) -> None:
        """Waits until every background save of this handle is committed;
        raises the first failure no call has reported yet (a
        :class:`tpde.TpdeError` naming the step)."""
        self._writer.wait(report=True)

    @tpde_errors
    def load(self, step: int, *, numpy: bool = False, map_location: Any = None,
             trusted: bool = False) -> Any:
        """Restores the state saved as step ``step``: torch tensors (numpy
        arrays with ``numpy=True``; moved with ``map_location``). Objects other
        than containers, plain values, torch dtypes/devices/sizes and numpy
        scalars, dtypes and types are unpickled only with ``trusted=True``
        (which runs whatever the stored pickle says: only for stores you
        trust)."""
        step = _step(step)
        numpy = _flag("numpy", numpy)
        trusted = _flag("trusted", trusted)
        self._writer.wait_for((step,))
        if map_location is not None and not isinstance(map_location, str) and (
            _state.torch is None or not isinstance(map_location, _state.torch.device)
        ):
            raise TpdeError(f"map_location must be a device (a str or torch.device), not a "
                            f"{type(map_location).__name__}: tpde does not apply remapping "
                            f"functions or dicts")
        name, kind, files, _dirs = self._inner.restore(step)
        by_path = dict(files)
        if kind != "dir" or _state.TENSORS not in by_path or _state.STRUCTURE not in by_path:
            raise TpdeError(
                f"step {step} ({name}) was added as files, not saved with Store.save: "
                f"restore it with Store.get(step, path)"
            )
        return _state.unflatten(by_path[_state.STRUCTURE].tobytes(), by_path[_state.TENSORS],
                                numpy=numpy, map_location=map_location, trusted=trusted)

    @tpde_errors
    def open(self, step: int, *, file: Optional[str] = None, framework: str = "pt",
             device: Any = "cpu") -> Any:
        """One step's tensors, read one at a time without restoring the step:
        a :class:`tpde._open.StepReader` shaped like ``safetensors.safe_open``
        (``keys()``, ``metadata()``, ``get_tensor(name)``,
        ``get_slice(name)[...]``; a context manager). ``file`` names the
        step's safetensors file to read (by default ``Store.save``'s
        tensors, or the step's only safetensors file); ``framework`` is
        ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays)."""
        from ._open import StepReader
        step = _step(step)
        self._writer.wait_for((step,))
        return StepReader(self._inner, step, file, framework, device)

    @tpde_errors
    def add(self, path: PathLike, step: Optional[int] = None, *,
            max_abs_error: Optional[float] = None, max_rel_error: Optional[float] = None) -> None:
        """Adds a checkpoint file or folder (a Hugging Face ``checkpoint-N/``:
        every file is kept). The step defaults to the number in its name.
        A bound makes it lossy, as in :meth:`save`."""
        if step is None:
            step = step_from_name(os.path.basename(os.path.normpath(_path("path", path))))
            if step is None:
                raise TpdeError(f"no step number in {os.fspath(path)!r}: pass step=")
        self._writer.wait(report=True, what=f"the add of {os.fspath(path)!r}")
        self._inner.add_path(_path("path", path), _step(step), max_abs_error=max_abs_error,
                             max_rel_error=max_rel_error)

    @tpde_errors
    def get(self, step: int, out: PathLike) -> None:
        """Writes step ``step`` to ``out`` (a file or folder, as it was added;
        ``out`` must not exist)."""
        step = _step(step)
        self._writer.wait_for((step,))
        self._inner.get(step, _path("out", out))

    @tpde_errors
    def files(self, step: int) -> Dict[str, bytes]:
        """The files of step ``step`` in memory, by relative path."""
        step = _step(step)
        self._writer.wait_for((step,))
        _name, _kind, files, _dirs = self._inner.restore(step)
        return {p: a.tobytes() for p, a in files}

    @tpde_errors
    def manifest(self) -> Dict[str, Any]:
        """The store's manifest (see docs/STORE.md)."""
        self._writer.wait()
        return json.loads(self._inner.manifest_json())

    @tpde_errors
    def verify(self) -> VerifyReport:
        """Checks every content file and restores every step."""
        self._writer.wait()
        steps, files, nbytes, problems, leftovers = self._inner.verify()
        return VerifyReport(steps, files, nbytes, problems, leftovers)

    @tpde_errors
    def remove(self, step: int) -> List[int]:
        """Removes step ``step``; returns the steps re-coded because of it."""
        step = _step(step)
        self._writer.wait(report=True, what=f"the removal of step {step}")
        return self._inner.remove(step)

    @tpde_errors
    def diff(self, a: int, b: int, *, sort: str = "rel") -> List["TensorDiff"]:
        """What changed from step ``a`` to step ``b``, tensor by tensor (every
        tensor of every safetensors file, ``save``'s tensors included):
        :class:`tpde.TensorDiff` items, sorted by relative change (``sort=
        "changed"`` by changed fraction, ``"name"`` by file and name)."""
        from ._report import diff

        a, b = _step(a), _step(b)
        self._writer.wait_for((a, b))
        return diff(self, a, b, sort=sort)

    @tpde_errors
    def prune(self, keep_last: int = 0, keep_every: Optional[int] = None) -> List[int]:
        """Keeps the last ``keep_last`` steps and the multiples of
        ``keep_every``; returns the removed steps."""
        keep_last = _int("keep_last", keep_last, 0, USIZE_MAX)
        if keep_every is not None:
            keep_every = _int("keep_every", keep_every, 1, U64_MAX)
        if keep_last == 0 and keep_every is None:
            raise TpdeError("say what to keep: keep_last and/or keep_every")
        self._writer.wait(report=True, what="the prune")
        return self._inner.prune(keep_last, keep_every)
