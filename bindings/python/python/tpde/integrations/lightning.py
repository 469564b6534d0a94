"""PyTorch Lightning checkpoints into a :class:`tpde.Store`.

>>> from tpde.integrations.lightning import TpdeCheckpointIO
>>> trainer = Trainer(plugins=[TpdeCheckpointIO("run.tpde")], ...)    # doctest: +SKIP
>>> trainer.fit(model)                                                 # doctest: +SKIP
>>> trainer.fit(model, ckpt_path="checkpoints/last.ckpt")             # doctest: +SKIP

Each checkpoint dict Lightning saves is stored (:meth:`tpde.Store.save`) as
step ``checkpoint["global_step"]``, and the ``.ckpt`` file Lightning asked
for becomes a small JSON pointer, ``{"tpde_store": "/abs/run.tpde", "step":
N}``, so that ``ModelCheckpoint`` keeps tracking, linking and removing files
by path as usual. With ``blocking=False`` the checkpoint is coded in the
background while training goes on.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from typing import Any, Dict, FrozenSet, Optional, Set, Tuple, Union

try:  # the unified package first, then the standalone one
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.plugins.io import CheckpointIO
except ImportError:  # pragma: no cover - exercised only with pytorch_lightning
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
    from pytorch_lightning.plugins.io import CheckpointIO

from .. import Store, TpdeError
from .._api import _flag

logger = logging.getLogger(__name__)

StoreLike = Union[Store, str, "os.PathLike[str]"]

__all__ = ["TpdeCheckpointIO", "read_pointer"]

# A pointer file is a few hundred bytes; anything longer is not one.
_POINTER_MAX = 64 * 1024


def read_pointer(path: Union[str, "os.PathLike[str]"]) -> Optional[Tuple[str, int]]:
    """``(store path, step)`` if the file at ``path`` is a tpde pointer, else
    None (a regular checkpoint, a missing file, a broken link)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_POINTER_MAX + 1)
    except OSError:
        return None
    if len(head) > _POINTER_MAX or not head.lstrip().startswith(b"{"):
        return None
    try:
        obj = json.loads(head)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    store, step = obj.get("tpde_store"), obj.get("step")
    if not isinstance(store, str) or isinstance(step, bool) or not isinstance(step, int):
        return None
    return store, step


def _local(path: Any) -> str:
    p = os.fspath(path)
    if "://" in p:
        raise TpdeError(f"TpdeCheckpointIO writes local files only, not {p!r}")
    return p


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class TpdeCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that keeps checkpoints in a tpde store.

    ``store`` is a :class:`tpde.Store` or the path of one (created, with a
    keyframe every ``keyframe_every`` steps, when missing).

    - ``save_checkpoint`` stores the dict as step ``checkpoint["global_step"]``
      and writes a JSON pointer at ``path``. Lightning may save one step under
      two names (``last.ckpt`` and ``epoch=..-step=N.ckpt``): a step this
      plugin saved already is reused (both pointers name it), unless the new
      dict has top-level keys the stored one lacks (a full checkpoint after a
      ``save_weights_only`` one), which replaces it. A step the store held
      before this plugin saved it (an earlier run) is replaced.
    - ``load_checkpoint`` reads a pointer and loads its step (unpickling the
      non-tensor objects of the checkpoint, as ``weights_only=False`` does,
      unless ``weights_only=True`` is asked for); a file that is not a
      pointer is loaded as a regular ``torch.save`` checkpoint.
    - ``remove_checkpoint`` deletes the pointer, and the step when no other
      pointer to it remains in the pointer's folder or in any folder this
      plugin has written pointers to. Overwriting a pointer (``last.ckpt``)
      drops the step it named in the same way.

    With ``blocking=False``, ``save_checkpoint`` returns once the checkpoint
    is snapshotted (its tensors copied to host memory) and writes the
    pointer at once; the step is coded, and removed steps are removed, in
    the store's background thread, in call order (see
    :meth:`tpde.Store.save`). A second save first waits for the previous
    one (the store's ``max_pending``). ``load_checkpoint`` of a step still
    being saved waits for it; ``teardown`` (the end of ``fit``) waits for
    all and raises a background failure, as does the next save.
    """

    def __init__(self, store: StoreLike, keyframe_every: Optional[int] = None,
                 blocking: bool = True) -> None:
        if not isinstance(store, (Store, str, os.PathLike)):
            raise TpdeError(f"store is a tpde.Store or a path, not {store!r}")
        self.blocking = _flag("blocking", blocking)
        super().__init__()
        self._store_path = os.path.abspath(store.path if isinstance(store, Store) else os.fspath(store))
        self._keyframe_every = keyframe_every
        self._store: Optional[Store] = store if isinstance(store, Store) else None
        self._saved: Dict[int, FrozenSet[str]] = {}  # step -> top-level keys, saved here
        self._dirs: Set[str] = set()  # folders this plugin wrote pointers to
        self._fallback = TorchCheckpointIO()

    @property
    def store(self) -> Store:
        """The store, opened (or created) on first use."""
        if self._store is None:
            # The trainer makes its own folders as needed; so does its store.
            self._store = Store(self._store_path, keyframe_every=self._keyframe_every,
                                create_parents=True)
        return self._store

    def __getstate__(self) -> Dict[str, Any]:  # spawned processes reopen the store
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    # -- saving -----------------------------------------------------------

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = _local(path)
        step = checkpoint.get("global_step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TpdeError(f"the checkpoint's global_step is {step!r}, not a step number")
        store = self.store
        keys = frozenset(str(k) for k in checkpoint)
        saved = self._saved.get(step)
        if saved is not None and keys <= saved and (store._pending(step) or step in store):
            logger.info("tpde: step %d is stored already; %s points to it", step, path)
        elif self.blocking:
            if step in store:
                logger.info("tpde: replacing stored step %d", step)
                store.remove(step)
            # As torch.save would: tensors tpde does not store as data
            # (sparse, quantized...) are pickled (loading is trusted, below).
            store.save(step, checkpoint, pickle_tensors=True)
            self._saved[step] = keys
        else:
            store._submit(f"the save of step {step}", (step,),
                          lambda: self._replace_job(store, step, checkpoint))
            self._saved[step] = keys
        old = read_pointer(path)
        self._write_pointer(path, step)
        if old is not None and old[1] != step and _same_path(old[0], self._store_path):
            self._drop_if_unreferenced(old[1], os.path.dirname(os.path.abspath(path)))

    @staticmethod
    def _replace_job(store: Store, step: int, checkpoint: Dict[str, Any]) -> Any:
        """Snapshots ``checkpoint``; returns the background job that stores it
        as step ``step``, replacing a stored one."""
        commit = store._snapshot(step, checkpoint, max_abs_error=None, max_rel_error=None,
                                 pickle_tensors=True, copy=True)

        def run() -> None:
            if step in store:  # on the store's thread: the queue before it is done
                logger.info("tpde: replacing stored step %d", step)
                store.remove(step)
            commit()

        return run

    def _write_pointer(self, path: str, step: int) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        data = json.dumps({"tpde_store": self._store_path, "step": step}).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=".tpde-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._dirs.add(folder)

    # -- loading ----------------------------------------------------------

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        path = _local(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        pointer = read_pointer(path)
        if pointer is None:  # a regular checkpoint
            if map_location is None:
                return self._fallback.load_checkpoint(path, weights_only=weights_only)
            return self._fallback.load_checkpoint(path, map_location=map_location,
                                                  weights_only=weights_only)
        store_path, step = pointer
        if _same_path(store_path, self._store_path):
            store = self.store
        else:
            store = Store(store_path, create=False)
        # tpde restores tensors on the CPU; a device or a device name moves
        # them there, a callable or dict remapping is not applied (CPU).
        where = map_location if isinstance(map_location, str) or _is_device(map_location) else None
        return store.load(step, map_location=where, trusted=weights_only is not True)

    # -- removing ---------------------------------------------------------

    def remove_checkpoint(self, path: Any) -> None:
        path = _local(path)
        pointer = read_pointer(path)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                self._fallback.remove_checkpoint(path)
            else:
                os.remove(path)
        if pointer is not None and _same_path(pointer[0], self._store_path):
            self._drop_if_unreferenced(pointer[1], os.path.dirname(os.path.abspath(path)))

    def _drop_if_unreferenced(self, step: int, folder: str) -> None:
        for d in {folder} | self._dirs:
            for other in glob.glob(os.path.join(glob.escape(d), "*.ckpt")):
                p = read_pointer(other)
                if p is not None and p[1] == step and _same_path(p[0], self._store_path):
                    return
        store = self.store

        def drop() -> None:
            if step in store:
                store.remove(step)
                logger.info("tpde: removed step %d (no pointer names it)", step)

        if self.blocking:
            drop()
        else:  # after the pending saves, without waiting for them
            store._submit(f"the removal of step {step}", (step,), lambda: drop, bounded=False)
        self._saved.pop(step, None)

    def wait(self) -> None:
        """Waits for the checkpoints still being saved in the background;
        raises a failure (a :class:`tpde.TpdeError`) not reported yet."""
        if self._store is not None:
            self._store.wait()

    def teardown(self) -> None:
        """Waits for the background saves (the end of ``fit``, ``validate``...)."""
        self.wait()


def _is_device(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.device)
