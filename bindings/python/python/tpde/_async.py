"""Background saves of one :class:`tpde.Store` handle.

A :class:`Writer` runs a handle's background jobs (``Store.save(...,
blocking=False)``, and the integrations' asynchronous modes) one at a time,
in the order they were submitted, on a daemon thread that it starts when a
job arrives and that ends when the queue is empty. At most ``max_pending``
saves are pending (queued or running): submitting one more first waits for
the oldest to finish, so that at most that many snapshots are held in memory.
Jobs that hold no snapshot (the Lightning plugin's removals of steps) are
queued in order too, but without waiting for room.

No failure is lost: a job's exception is set on its future, and the first
failure is also kept until the handle's next write or ``wait()`` raises it
(once). Jobs still queued behind a failed one are not run (their futures
fail, naming it), so that the store holds what a blocking loop would have
left: every step before the failure, none after it. A store whose handle is
garbage collected, or still alive at interpreter exit, waits for its pending
jobs first (:func:`weakref.finalize` runs at exit too) and writes a failure
nobody was told about to stderr.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Collection, Counter, Deque, Optional, Tuple

from ._tpde import TpdeError

# A job as the worker runs it: (what, steps, run, future, bounded).
_Job = Tuple[str, Tuple[int, ...], Callable[[], None], "Future[None]", bool]

# Every live writer, so that a forked child can forget its parent's jobs.
_writers: "weakref.WeakSet[Writer]" = weakref.WeakSet()


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, TpdeError) else f"{type(e).__name__}: {e}"


class Writer:
    """The background job queue of one store handle (``where`` names the
    store in messages)."""

    def __init__(self, where: str, max_pending: int) -> None:
        self.where = where
        self.max_pending = max_pending
        self._finalizer: Optional[weakref.finalize] = None  # closes the writer with its handle
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: Deque[_Job] = collections.deque()
        self._pending = 0  # jobs queued or running, and slots being filled
        self._bounded = 0  # those of them that count towards max_pending
        self._steps: Counter[Any] = collections.Counter()  # the steps of queued/running jobs
        self._error: Optional[Tuple[str, BaseException]] = None  # the first unreported failure
        self._worker: Optional[threading.Thread] = None
        self._closed = False  # the handle is gone: the worker reports what fails

    # -- submitting -----------------------------------------------------------

    def submit(self, owner: Any, what: str, steps: Collection[int],
               prepare: Callable[[], Callable[[], None]], *,
               bounded: bool = True) -> "Future[None]":
        """Queues a job and returns its future. First waits until fewer than
        ``max_pending`` bounded jobs are pending (``bounded=False``: a job
        that holds no snapshot does not wait for room) and raises an
        unreported failure; then calls ``prepare()`` in the caller's thread
        (the snapshot: its errors are the caller's) and queues the callable
        it returns. ``owner`` is the handle: its collection waits for the
        jobs."""
        if self.in_worker():
            raise TpdeError(f"{what}: a background job of {self.where} cannot queue another "
                            f"(it would wait for itself); save with blocking=True there")
        with self._cond:
            while bounded and self._bounded >= self.max_pending:
                self._cond.wait()
            self._raise_error(what)
            self._pending += 1  # this slot is ours while prepare() runs
            self._bounded += bounded
        queued = False
        try:
            run = prepare()
            future: "Future[None]" = Future()
            future.set_running_or_notify_cancel()  # queued jobs are not cancelled
            with self._cond:
                self._raise_error(what)  # a job failed while we were preparing
                self._queue.append((what, tuple(steps), run, future, bounded))
                self._steps.update(steps)
                queued = True
                if self._finalizer is None:
                    self._finalizer = weakref.finalize(owner, self.close)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, daemon=True,
                                                    name=f"tpde-save {self.where}")
                    self._worker.start()
            return future
        finally:
            if not queued:
                with self._cond:
                    self._pending -= 1
                    self._bounded -= bounded
                    self._cond.notify_all()

    # -- waiting ----------------------------------------------------------------

    def in_worker(self) -> bool:
        """True on the worker thread (a job reading or writing the store
        itself must not wait for the queue it is part of)."""
        w = self._worker
        return w is not None and threading.current_thread() is w

    def wait(self, *, report: bool = False, what: Optional[str] = None) -> None:
        """Waits until no job is pending; with ``report``, raises the first
        unreported failure (``what``: the call that is then not carried
        out, for the message)."""
        with self._cond:
            if not self.in_worker():
                while self._pending:
                    self._cond.wait()
            if report:
                self._raise_error(what)

    def wait_for(self, steps: Collection[Any]) -> None:
        """Waits until no pending job writes any of ``steps`` (reads of other
        steps need not wait)."""
        with self._cond:
            if self.in_worker():
                return
            while any(self._steps.get(s) for s in steps):
                self._cond.wait()

    def pending_steps(self) -> Collection[Any]:
        """The steps that queued or running jobs write."""
        with self._cond:
            return set(self._steps)

    def _raise_error(self, what: Optional[str]) -> None:
        """Raises (once) the first failure not reported yet, saying that
        ``what`` is not carried out because of it; holds the lock."""
        if self._error is None:
            return
        failed, e = self._error
        self._error = None
        then = f"; {what} was not carried out" if what else ""
        raise TpdeError(f"{failed} into {self.where} failed in the background: "
                        f"{_describe(e)}{then}") from e

    # -- the worker ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._worker = None
                    lost = self._take_lost()
                    self._cond.notify_all()
                    break
                what, steps, run, future, bounded = self._queue.popleft()
            try:
                run()
            except BaseException as e:  # noqa: B902 - it goes to the future and the handle
                self._failed(what, steps, bounded, future, e)
            else:
                future.set_result(None)
                self._done(steps, bounded)
            del run, future
        if lost:
            _write_lost(*lost)

    def _failed(self, what: str, steps: Tuple[int, ...], bounded: bool,
                future: "Future[None]", e: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = (what, e)
            doomed = list(self._queue)
            self._queue.clear()
        future.set_exception(e)
        self._done(steps, bounded)
        for d_what, d_steps, _run, d_future, d_bounded in doomed:
            d_future.set_exception(TpdeError(
                f"{d_what} into {self.where} was not carried out: {what}, queued before it, "
                f"failed: {_describe(e)}"))
            self._done(d_steps, d_bounded)

    def _done(self, steps: Tuple[int, ...], bounded: bool) -> None:
        with self._cond:
            self._pending -= 1
            self._bounded -= bounded
            self._steps.subtract(steps)
            for s in steps:
                if self._steps[s] <= 0:
                    del self._steps[s]
            self._cond.notify_all()

    # -- the end ------------------------------------------------------------------

    def _take_lost(self) -> Optional[Tuple[str, str, BaseException]]:
        """The unreported failure of a closed writer, taken; holds the lock."""
        if not self._closed or self._error is None:
            return None
        failed, e = self._error
        self._error = None
        return self.where, failed, e

    def close(self) -> None:
        """The handle is gone (collected, or the interpreter exits): waits
        for the pending jobs, then writes an unreported failure to stderr."""
        with self._cond:
            self._closed = True
            if not self.in_worker():
                while self._pending:
                    self._cond.wait()
            lost = self._take_lost()  # on the worker, the worker reports it at its end
        if lost:
            _write_lost(*lost)


def _write_lost(where: str, failed: str, e: BaseException) -> None:
    try:
        sys.stderr.write(f"tpde: {failed} into {where} failed in the background and no later "
                         f"call reported it: {_describe(e)}\n")
        sys.stderr.flush()
    except Exception:  # pragma: no cover - stderr closed at exit
        pass


def _after_fork_in_child() -> None:
    # The parent's jobs and worker thread are not the child's: the child starts
    # with empty queues (and locks nobody holds).
    for w in list(_writers):
        w._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
