"""Hugging Face ``Trainer`` checkpoints into a :class:`tpde.Store`.

>>> from tpde.integrations.transformers import TpdeCallback, restore_checkpoint
>>> trainer = Trainer(..., callbacks=[TpdeCallback("run.tpde")])   # doctest: +SKIP
>>> trainer.train()                                                  # doctest: +SKIP
>>> path = restore_checkpoint("run.tpde", 500, "out")               # doctest: +SKIP
>>> trainer.train(resume_from_checkpoint=path)                      # doctest: +SKIP

Every ``checkpoint-N/`` folder the ``Trainer`` writes is added, whole (model,
optimizer, scheduler, RNG and trainer state, tokenizer files...), as step
``N``; the store gives it back byte for byte. With ``blocking=False`` the
folder is coded in the background while training goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Any, Dict, Optional, Set, Union

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import Store, TpdeError
from .._api import _flag

logger = logging.getLogger(__name__)

StoreLike = Union[Store, str, "os.PathLike[str]"]

__all__ = ["TpdeCallback", "restore_checkpoint"]


def _open(store: StoreLike, keyframe_every: Optional[int] = None, create: bool = True) -> Store:
    if isinstance(store, Store):
        return store
    # The Trainer makes its output folders as needed; so does its store.
    return Store(store, keyframe_every=keyframe_every, create=create, create_parents=create)


def _folder_files(folder: str) -> Dict[str, str]:
    """The files under ``folder``: relative path (with ``/``) -> full path."""
    out: Dict[str, str] = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            out[rel] = full
    return out


def _differences(store: Store, step: int, folder: str) -> list:
    """What differs between stored step ``step`` (decoded from the store, in
    memory) and ``folder`` on disk; empty when every file matches byte for
    byte."""
    stored = store.files(step)
    on_disk = _folder_files(folder)
    problems = []
    for rel in sorted(set(stored) | set(on_disk)):
        if rel not in on_disk:
            problems.append(f"{rel}: stored, not in the folder")
        elif rel not in stored:
            problems.append(f"{rel}: in the folder, not stored")
        else:
            with open(on_disk[rel], "rb") as f:
                if f.read() != stored[rel]:
                    problems.append(f"{rel}: stored bytes differ")
    return problems


class TpdeCallback(TrainerCallback):
    """Adds each checkpoint the ``Trainer`` saves to a tpde store.

    ``store`` is a :class:`tpde.Store` or the path of one (created, with a
    keyframe every ``keyframe_every`` steps, when missing). On every save
    (``on_save``, on the world process zero only) the folder
    ``{output_dir}/checkpoint-{global_step}`` is added as step
    ``global_step``:

    - A step this callback added already (the ``Trainer`` saved the same step
      twice) is skipped. A step the store held before (an earlier run into
      the same store) is kept when the folder matches it byte for byte and
      replaced, with a warning, when it does not: the store mirrors what the
      ``Trainer`` wrote last, as the folder itself would.
    - With ``delete_checkpoints=True`` the folder is deleted once the stored
      step, decoded in memory from the store, matches every file of the
      folder byte for byte. A folder that does not match is kept (and a
      warning says why). With ``load_best_model_at_end`` the folder of
      ``state.best_model_checkpoint`` is kept until another one is best, so
      that the ``Trainer`` can load it at the end.

    The ``Trainer``'s own rotation (``save_total_limit``) deletes folders
    before ``on_save`` runs and never touches the store: the folder just
    written is always kept by it, and every earlier folder was added when it
    was written, so the store keeps every step while the output folder keeps
    ``save_total_limit``. Thin the store with :meth:`tpde.Store.prune`.

    With ``blocking=False`` the adding (and checking and deleting) runs in
    the store's background thread (:meth:`tpde.Store.save` with
    ``blocking=False``) while training goes on. The folder must stay as the
    ``Trainer`` wrote it until then, so the callback waits for it before the
    ``Trainer`` writes or rotates checkpoints again (at the end of a step or
    epoch that saves, or that evaluates for ``save_strategy="best"``), when
    training is over (before the ``Trainer`` loads the best checkpoint or
    deletes folders) and at ``on_train_end``; a background failure is raised
    there, stopping training.
    """

    def __init__(self, store: StoreLike, keyframe_every: Optional[int] = None,
                 delete_checkpoints: bool = False, blocking: bool = True) -> None:
        if not isinstance(store, (Store, str, os.PathLike)):
            raise TpdeError(f"store is a tpde.Store or a path, not {store!r}")
        self._store_arg = store
        self._keyframe_every = keyframe_every
        self.delete_checkpoints = bool(delete_checkpoints)
        self.blocking = _flag("blocking", blocking)
        self._store: Optional[Store] = store if isinstance(store, Store) else None
        self._added: Set[int] = set()  # steps this callback added
        self._kept_best: Set[str] = set()  # verified folders kept as the best

    @property
    def store(self) -> Store:
        """The store, opened (or created) on first use: only the process that
        saves opens it, so that ranks do not race to create it."""
        if self._store is None:
            self._store = _open(self._store_arg, self._keyframe_every)
        return self._store

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        step = int(state.global_step)
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if not os.path.isdir(folder):
            msg = (f"tpde: no checkpoint folder {folder!r} after the save of step {step}; "
                   f"it is not stored")
            logger.warning(msg)
            warnings.warn(msg, stacklevel=2)
            return control
        best = getattr(state, "best_model_checkpoint", None) if getattr(
            args, "load_best_model_at_end", False) else None
        if self.blocking:
            self._store_folder(folder, step, best)
        else:
            self.store._submit(f"the add of {folder!r} as step {step}", (step,),
                               lambda: lambda: self._store_folder(folder, step, best))
        return control

    def _store_folder(self, folder: str, step: int, best: Optional[str]) -> None:
        self._add(folder, step)
        if self.delete_checkpoints:
            self._delete(folder, step, best)

    # The Trainer writes (and rotates) checkpoints right after these events;
    # in the background mode the folder being stored must be left alone.

    def _wait(self) -> None:
        if not self.blocking and self._store is not None:
            self._store.wait()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if _saves_next(args, control):
            self._wait()
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if _saves_next(args, control):
            self._wait()
        return control

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # The last log comes before the Trainer loads the best checkpoint
        # and deletes folders (save_total_limit=1).
        if getattr(control, "should_training_stop", False) or (
                0 < getattr(state, "max_steps", 0) <= getattr(state, "global_step", 0)):
            self._wait()
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._wait()
        return control

    def wait(self) -> None:
        """Waits for the checkpoints still being stored in the background;
        raises a failure (a :class:`tpde.TpdeError`) not reported yet."""
        self._wait()

    def _add(self, folder: str, step: int) -> None:
        store = self.store
        if step in self._added and step in store:
            logger.info("tpde: step %d is stored already; skipped", step)
            return
        if step in store:
            problems = _differences(store, step, folder)
            if not problems:
                logger.info("tpde: step %d is stored already, the same; skipped", step)
                self._added.add(step)
                return
            msg = (f"tpde: step {step} in {store.path} differs from {folder} "
                   f"({problems[0]}{', ...' if len(problems) > 1 else ''}); replacing it")
            logger.warning(msg)
            warnings.warn(msg, stacklevel=3)
            store.remove(step)
        store.add(folder, step)
        self._added.add(step)
        logger.info("tpde: added %s as step %d", folder, step)

    def _delete(self, folder: str, step: int, best: Optional[str]) -> None:
        def same(a: str, b: Optional[str]) -> bool:
            return b is not None and os.path.abspath(a) == os.path.abspath(b)

        # Folders kept only because they were the best: delete those that no
        # longer are (they were checked when they were kept).
        for kept in sorted(self._kept_best):
            if not same(kept, best):
                shutil.rmtree(kept, ignore_errors=True)
                self._kept_best.discard(kept)
                logger.info("tpde: deleted %s (stored; no longer the best)", kept)
        problems = _differences(self.store, step, folder)
        if problems:
            msg = (f"tpde: step {step} as stored does not match {folder} "
                   f"({'; '.join(problems[:3])}); the folder is kept")
            logger.warning(msg)
            warnings.warn(msg, stacklevel=3)
            return
        if same(folder, best):
            self._kept_best.add(folder)
            logger.info("tpde: kept %s (stored; the best checkpoint)", folder)
            return
        shutil.rmtree(folder)
        logger.info("tpde: deleted %s (stored as step %d)", folder, step)


def _saves_next(args: Any, control: Any) -> bool:
    """Whether the Trainer may save a checkpoint after this event."""
    if getattr(control, "should_save", False):
        return True
    return bool(getattr(control, "should_evaluate", False)) and getattr(
        args, "save_strategy", None) == "best"


def restore_checkpoint(store: StoreLike, step: int, output_dir: Union[str, "os.PathLike[str]"]) -> str:
    """Writes stored step ``step`` back as ``{output_dir}/checkpoint-{step}``
    (which must not exist) and returns that path, for
    ``trainer.train(resume_from_checkpoint=path)``."""
    s = _open(store, create=False)
    path = os.path.join(os.fspath(output_dir), f"{PREFIX_CHECKPOINT_DIR}-{step}")
    os.makedirs(os.fspath(output_dir), exist_ok=True)
    s.get(step, path)
    return path
