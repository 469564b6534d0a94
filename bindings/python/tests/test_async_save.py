"""Store.save(..., blocking=False): snapshots, call order, failures reported
once, Store.wait(), exit; and the integrations' background modes."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from concurrent.futures import Future

import numpy as np
import pytest

import tpde

torch = pytest.importorskip("torch")


def raw(x):
    """The bytes of a tensor or array, for bitwise comparisons."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous()
        return x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b""
    return np.ascontiguousarray(x).tobytes()


def assert_same(a, b, path="state"):
    """Nested states equal, tensors by dtype, shape and bytes."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, (torch.Tensor, np.ndarray)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert raw(a) == raw(b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def clone(state):
    """A deep copy that keeps dtypes and bytes (the expected value)."""
    if isinstance(state, torch.Tensor):
        c = state.detach().clone()
        return torch.nn.Parameter(c, requires_grad=state.requires_grad) if isinstance(
            state, torch.nn.Parameter) else c
    if isinstance(state, np.ndarray):
        return state.copy()
    if isinstance(state, dict):
        return type(state)((k, clone(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(clone(v) for v in state)
    return state


def training_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "w": torch.nn.Parameter(torch.randn(16, 8, generator=g)),
            "b": torch.randn(16, generator=g),
            "half": torch.randn(5, generator=g).half(),
            "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
            "strided": torch.randn(6, 8, generator=g)[:, ::2],  # not contiguous
            "t": torch.randn(6, 8, generator=g).t(),  # a transposed view
            "i64": torch.arange(10),
            "flags": torch.tensor([True, False, True]),
            "c64": torch.randn(3, dtype=torch.complex64, generator=g),
        },
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(16, 8), "step": torch.tensor(3.0)}},
                      "param_groups": [{"lr": 0.01, "params": [0]}]},
        "np": np.arange(12, dtype=np.float32).reshape(3, 4),
        "np_be": np.arange(4, dtype=">f8"),
        "rng": torch.get_rng_state(),
        "step": 3,
        "history": [1.0, 2.0],
    }


def mutate(state):
    """Changes every tensor and container of ``state`` in place."""
    with torch.no_grad():
        m = state["model"]
        m["w"].add_(1.0)
        m["b"].mul_(-2.0)
        m["half"].fill_(7.0)
        m["bf16"].zero_()
        m["strided"].add_(3.0)
        m["t"].sub_(1.0)
        m["i64"].add_(100)
        m["flags"].logical_not_()
        m["c64"].mul_(2j)
        state["optimizer"]["state"][0]["exp_avg"].add_(0.5)
        state["optimizer"]["state"][0]["step"].add_(1.0)
        state["optimizer"]["param_groups"][0]["lr"] = 0.5
    state["np"] += 1
    state["np_be"][:] = -1
    state["rng"].zero_()
    state["step"] = 4
    state["history"].append(3.0)
    state["new"] = torch.ones(2)


class Gate:
    """A background job that holds the store's queue until ``open()``: the
    saves queued behind it cannot have run when the test looks."""

    def __init__(self, store):
        self.event = threading.Event()
        self.future = store._submit("a test gate", (), lambda: self.event.wait)

    def open(self):
        self.event.set()
        self.future.result()


# -- Store.save(blocking=False) -----------------------------------------------


def test_snapshot_is_taken_when_save_returns(tmp_path):
    store = tpde.Store(tmp_path / "s", max_pending=2)
    state = training_state()
    want = clone(state)
    gate = Gate(store)  # the save below cannot start before the state is changed
    future = store.save(1, state, blocking=False)
    assert isinstance(future, Future) and not future.done()
    mutate(state)
    changed = clone(state)
    assert raw(changed["model"]["w"]) != raw(want["model"]["w"])
    gate.open()
    assert future.result() is None
    assert_same(store.load(1), want)
    # The changed state saves as itself.
    store.save(2, state, blocking=False).result()
    assert_same(store.load(2), changed)
    assert store.verify().ok


def test_async_save_stores_the_same_bytes_as_a_blocking_save(tmp_path):
    a = tpde.Store(tmp_path / "a", keyframe_every=3)
    b = tpde.Store(tmp_path / "b", keyframe_every=3, max_pending=3)
    state = training_state()
    futures = []
    for step in range(1, 6):
        a.save(step, state)
        futures.append(b.save(step, state, blocking=False))
        mutate(state)
    b.wait()
    assert all(f.done() and f.exception() is None for f in futures)
    assert a.steps() == b.steps() == [1, 2, 3, 4, 5]
    for step in a.steps():
        assert a.files(step) == b.files(step)  # safetensors and pickle, byte for byte
        assert_same(a.load(step), b.load(step))
    assert b.verify().ok


def test_saves_commit_in_call_order(tmp_path):
    store = tpde.Store(tmp_path / "s", keyframe_every=2, max_pending=4)
    gate = Gate(store)
    done = []
    states = {}
    for step in (30, 10, 20):  # not in step order: call order is what counts
        states[step] = {"x": torch.full((64,), float(step)), "step": step}
        f = store.save(step, states[step], blocking=False)
        f.add_done_callback(lambda f, step=step: done.append(step))
    assert done == []
    gate.open()
    store.wait()
    assert done == [30, 10, 20]
    assert store.steps() == [10, 20, 30]
    for step, state in states.items():
        assert_same(store.load(step), state)
    assert store.verify().ok


def test_a_failed_background_save_raises_on_result_and_on_the_next_save(tmp_path):
    store = tpde.Store(tmp_path / "s")
    first = training_state(0)
    store.save(1, first)
    future = store.save(1, training_state(1), blocking=False)  # step 1 exists: an error
    with pytest.raises(tpde.TpdeError, match="step 1 is stored already"):
        future.result()
    assert isinstance(future.exception(), tpde.TpdeError)
    # The next save raises it (once) and is not made.
    with pytest.raises(tpde.TpdeError, match=r"the save of step 1 into .* failed in the "
                       r"background: .*stored already.*the save of step 2 was not carried out"):
        store.save(2, training_state(2), blocking=False)
    assert store.steps() == [1]
    store.wait()  # reported already
    store.save(2, training_state(2), blocking=False).result()
    assert store.steps() == [1, 2]
    assert_same(store.load(1), first)
    report = store.verify()
    assert report.ok and report.leftovers == 0


def test_a_failure_raises_on_wait_and_on_blocking_writes(tmp_path):
    store = tpde.Store(tmp_path / "s")
    store.save(5, {"x": torch.ones(3)})
    store.save(5, {"x": torch.zeros(3)}, blocking=False)
    with pytest.raises(tpde.TpdeError, match="the save of step 5 .* failed in the background"):
        store.wait()
    store.wait()  # once only

    store.save(5, {"x": torch.zeros(3)}, blocking=False)
    with pytest.raises(tpde.TpdeError, match="failed in the background.*the save of step 6 was "
                       "not carried out"):
        store.save(6, {"x": torch.zeros(3)})  # a blocking save waits, then reports it
    assert store.steps() == [5]

    store.save(5, {"x": torch.zeros(3)}, blocking=False)
    with pytest.raises(tpde.TpdeError, match="failed in the background.*removal of step 5"):
        store.remove(5)
    assert store.steps() == [5]
    assert_same(store.load(5), {"x": torch.ones(3)})
    assert store.verify().ok


def test_saves_queued_behind_a_failed_one_are_not_made(tmp_path):
    store = tpde.Store(tmp_path / "s", max_pending=4)
    store.save(1, {"x": torch.ones(4)})
    gate = Gate(store)
    failing = store.save(1, {"x": torch.zeros(4)}, blocking=False)
    later = [store.save(s, {"x": torch.full((4,), float(s))}, blocking=False) for s in (2, 3)]
    gate.open()
    with pytest.raises(tpde.TpdeError, match="stored already"):
        failing.result()
    for f, step in zip(later, (2, 3)):
        with pytest.raises(tpde.TpdeError, match=f"the save of step {step} .* was not carried "
                           f"out: the save of step 1, queued before it, failed"):
            f.result()
    with pytest.raises(tpde.TpdeError, match="the save of step 1 .* failed in the background"):
        store.wait()
    assert store.steps() == [1]
    assert_same(store.load(1), {"x": torch.ones(4)})
    assert store.verify().ok


def test_one_save_in_flight_by_default(tmp_path):
    store = tpde.Store(tmp_path / "s")
    assert store.max_pending == 1
    f1 = store.save(1, training_state(1), blocking=False)
    f2 = store.save(2, training_state(2), blocking=False)
    assert f1.done()  # the second save waited for the first before it returned
    f3 = store.save(3, training_state(3))  # blocking: waits for the pending one, then saves
    assert f3 is None and f2.done() and f2.exception() is None
    assert store.steps() == [1, 2, 3]
    store.wait()


def test_reads_of_a_pending_step_wait_for_it(tmp_path):
    store = tpde.Store(tmp_path / "s", max_pending=2)
    store.save(1, {"x": torch.ones(2)})
    for read in (lambda s: s.load(2), lambda s: 2 in s, lambda s: s.steps(),
                 lambda s: s.files(2), lambda s: s.open(2).keys()):
        if 2 in store:
            store.remove(2)
        gate = Gate(store)
        store.save(2, {"x": torch.full((2,), 2.0)}, blocking=False)
        # Opened from another thread a little later: the read below finds
        # step 2 only if it waits for it.
        timer = threading.Timer(0.2, gate.event.set)
        timer.start()
        try:
            got = read(store)
        finally:
            timer.join()
        assert got, got
        assert store.steps() == [1, 2]
    assert_same(store.load(2), {"x": torch.full((2,), 2.0)})
    # Reads of other steps do not wait for the queue (if they did, they would
    # return only once the safety timer opens the gate).
    gate = Gate(store)
    store.save(3, {"x": torch.ones(2)}, blocking=False)
    safety = threading.Timer(60, gate.event.set)
    safety.start()
    try:
        assert_same(store.load(1), {"x": torch.ones(2)})
        assert sorted(store.files(1)) == ["structure.pkl", "tensors.safetensors"]
        assert 1 in store and 7 not in store and [] not in store
        assert not gate.event.is_set()
    finally:
        safety.cancel()
    gate.open()
    store.wait()
    assert store.steps() == [1, 2, 3]


def test_argument_errors_are_raised_by_the_call(tmp_path):
    store = tpde.Store(tmp_path / "s")
    with pytest.raises(tpde.TpdeError, match="max_pending must be an int between 1"):
        tpde.Store(tmp_path / "t", max_pending=0)
    with pytest.raises(tpde.TpdeError, match="blocking must be True or False"):
        store.save(1, {}, blocking="no")
    with pytest.raises(tpde.TpdeError, match="error bound must be a positive number"):
        store.save(1, {"x": torch.ones(2)}, blocking=False, max_abs_error=-1.0)
    with pytest.raises(tpde.TpdeError, match="not both"):
        store.save(1, {"x": torch.ones(2)}, blocking=False, max_abs_error=1e-3,
                   max_rel_error=1e-3)
    with pytest.raises(tpde.TpdeError, match="max_abs_error must be a number"):
        store.save(1, {"x": torch.ones(2)}, blocking=False, max_abs_error="0.1")
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(tpde.TpdeError, match="sparse"):
        store.save(1, {"x": sparse}, blocking=False)
    # None of these reached the background: the store is untouched and usable.
    store.wait()
    assert store.steps() == []
    store.save(1, {"x": torch.ones(2)}, blocking=False, max_abs_error=1e-3).result()
    assert torch.allclose(store.load(1)["x"], torch.ones(2), atol=1e-3)


def test_pending_saves_are_committed_at_exit(tmp_path):
    code = r"""
import sys, torch, tpde
store = tpde.Store(sys.argv[1], max_pending=3)
store.save(1, {"x": torch.ones(1000, 100)})
for step in (2, 3):
    store.save(step, {"x": torch.full((1000, 100), float(step))}, blocking=False)
store.save(1, {"x": torch.zeros(1)}, blocking=False)  # fails: step 1 exists
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tpde: the save of step 1 into" in r.stderr
    assert "failed in the background and no later call reported it" in r.stderr
    assert "stored already" in r.stderr
    store = tpde.Store(tmp_path / "s")
    assert store.steps() == [1, 2, 3]
    assert_same(store.load(3), {"x": torch.full((1000, 100), 3.0)})
    assert store.verify().ok


def test_a_collected_store_finishes_its_saves(tmp_path):
    import gc

    store = tpde.Store(tmp_path / "s")
    store.save(1, {"x": torch.ones(10)}, blocking=False)
    del store
    gc.collect()
    assert tpde.Store(tmp_path / "s").steps() == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_snapshotted(tmp_path):
    store = tpde.Store(tmp_path / "s", max_pending=2)
    state = {"w": torch.randn(1024, 1024, device="cuda"),
             "b": torch.randn(1024, device="cuda").to(torch.bfloat16)}
    want = {k: v.cpu().clone() for k, v in state.items()}
    gate = Gate(store)
    f = store.save(1, state, blocking=False)
    state["w"].add_(1.0)
    state["b"].zero_()
    gate.open()
    f.result()
    assert_same(store.load(1), want)
    assert_same(store.load(1, map_location="cuda")["w"].cpu(), want["w"])


# -- the integrations ---------------------------------------------------------


def test_hf_callback_in_the_background(tmp_path):
    pytest.importorskip("transformers")
    from test_integrations import _checkpoint_folders, _hf_trainer, _tree_digests
    from tpde.integrations.transformers import TpdeCallback

    seen = {}  # step -> the folder's digests when the Trainer saved it
    threads = set()

    class Recording(TpdeCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            seen[state.global_step] = _tree_digests(folder)
            return super().on_save(args, state, control, **kwargs)

        def _store_folder(self, folder, step, best):
            threads.add(threading.current_thread() is threading.main_thread())
            super()._store_folder(folder, step, best)

    # save_total_limit=1: the Trainer deletes each folder at its next save,
    # so the callback must be done with it by then.
    out, store_path = tmp_path / "out", tmp_path / "run.tpde"
    cb = Recording(store_path, blocking=False)
    _hf_trainer(out, [cb], save_total_limit=1).train()
    assert threads == {False}  # stored on the store's thread, never the main one
    assert _checkpoint_folders(out) == ["checkpoint-6"]
    store = tpde.Store(store_path)
    assert store.steps() == [2, 4, 6]
    for step in (2, 4, 6):
        back = tmp_path / f"back-{step}"
        store.get(step, back)
        assert _tree_digests(back) == seen[step]
    assert store.verify().ok

    # With delete_checkpoints, every folder goes once stored (checked byte
    # for byte on the store's thread).
    out2 = tmp_path / "out2"
    _hf_trainer(out2, [TpdeCallback(tmp_path / "run2.tpde", blocking=False,
                                    delete_checkpoints=True)]).train()
    assert _checkpoint_folders(out2) == []
    store2 = tpde.Store(tmp_path / "run2.tpde")
    assert store2.steps() == [2, 4, 6]
    for step in (2, 4, 6):
        assert store2.files(step)["model.safetensors"] == store.files(step)["model.safetensors"]
    assert store2.verify().ok


def test_hf_callback_waits_before_the_trainer_writes_again(tmp_path):
    """Without a Trainer: the events after which it may write (and rotate)
    checkpoints wait for the folder being stored; the others do not."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace as NS

    from tpde.integrations.transformers import TpdeCallback

    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "config.json").write_text("{}")
    args = NS(output_dir=str(out), load_best_model_at_end=False, save_strategy="best")
    state = NS(is_world_process_zero=True, global_step=2, max_steps=10)
    store = tpde.Store(tmp_path / "s.tpde", max_pending=2)
    cb = TpdeCallback(store, blocking=False)
    quiet = [
        ("on_step_end", NS(should_save=False, should_evaluate=False, should_training_stop=False)),
        ("on_epoch_end", NS(should_save=False, should_evaluate=False, should_training_stop=False)),
        ("on_log", NS(should_save=False, should_evaluate=False, should_training_stop=False)),
    ]
    saving = [
        ("on_step_end", NS(should_save=True, should_evaluate=False, should_training_stop=False)),
        ("on_step_end", NS(should_save=False, should_evaluate=True, should_training_stop=False)),
        ("on_epoch_end", NS(should_save=True, should_evaluate=False, should_training_stop=False)),
        ("on_log", NS(should_save=False, should_evaluate=False, should_training_stop=True)),
        ("on_train_end", NS(should_save=False, should_evaluate=False, should_training_stop=True)),
    ]
    for event, control in quiet + saving:
        if 2 in store:
            store.remove(2)
        gate = Gate(store)
        assert cb.on_save(args, state, control) is control
        waits = (event, control) in saving
        # The gate opens at once for the events that must wait (they return
        # once the folder is stored), after a minute for the others (they
        # must return before).
        timer = threading.Timer(0.1 if waits else 60, gate.event.set)
        timer.start()
        try:
            assert getattr(cb, event)(args, state, control) is control
            assert (2 in store._inner.steps()) == waits, (event, control)
        finally:
            timer.cancel()
        gate.open()
        cb.wait()
    assert store.files(2) == {"config.json": b"{}"}


def test_hf_callback_background_failure_stops_training(tmp_path):
    pytest.importorskip("transformers")
    from test_integrations import _hf_trainer
    from tpde.integrations.transformers import TpdeCallback

    class Failing(TpdeCallback):
        def _add(self, folder, step):
            if step == 4:
                raise tpde.TpdeError("no room left (a test)")
            super()._add(folder, step)

    trainer = _hf_trainer(tmp_path / "out", [Failing(tmp_path / "run.tpde", blocking=False)])
    with pytest.raises(tpde.TpdeError, match=r"the add of .*checkpoint-4.* as step 4 into .* "
                       r"failed in the background: no room left \(a test\)"):
        trainer.train()
    assert trainer.state.global_step == 6  # raised at the last save, or at the end
    store = tpde.Store(tmp_path / "run.tpde")
    assert 2 in store and 4 not in store
    assert store.verify().ok
    with pytest.raises(tpde.TpdeError, match="blocking must be True or False"):
        TpdeCallback(tmp_path / "x.tpde", blocking=1)


def test_lightning_plugin_in_the_background(tmp_path):
    from test_integrations import _assert_same, _lightning, _lit_parts, _lit_trainer
    pl = _lightning()
    from tpde.integrations.lightning import TpdeCheckpointIO, read_pointer

    Regression, data = _lit_parts(pl)
    saved = {}
    threads = set()

    class Recording(TpdeCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            # Lightning's dict as it was at the call (the plugin snapshots
            # it; training goes on changing the weights in place).
            saved[os.path.basename(path)] = copy.deepcopy(checkpoint)
            super().save_checkpoint(checkpoint, path, storage_options)

        def _replace_job(self, store, step, checkpoint):
            run = super()._replace_job(store, step, checkpoint)

            def recorded():
                threads.add(threading.current_thread() is threading.main_thread())
                run()

            return recorded

    ckpts, store_path = tmp_path / "ckpts", tmp_path / "run.tpde"
    pl.seed_everything(0)
    mc = pl.callbacks.ModelCheckpoint(dirpath=ckpts, save_top_k=-1, every_n_epochs=1,
                                      save_last=True)
    io = Recording(store_path, blocking=False)
    _lit_trainer(pl, io, [mc]).fit(Regression(), data)
    assert threads == {False}
    names = sorted(os.listdir(ckpts))
    assert names == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt",
                     "last.ckpt"]
    store = tpde.Store(store_path)
    assert store.steps() == [4, 8, 12]
    for name in names[:3]:
        _assert_same(saved[name], TpdeCheckpointIO(store_path).load_checkpoint(ckpts / name))
    assert read_pointer(ckpts / "last.ckpt")[1] == 12
    assert store.verify().ok

    # Removals go through the queue too: top-1 leaves one step.
    ckpts2, store2 = tmp_path / "ckpts2", tmp_path / "run2.tpde"
    pl.seed_everything(0)
    mc = pl.callbacks.ModelCheckpoint(dirpath=ckpts2, save_top_k=1, save_last=True)
    _lit_trainer(pl, TpdeCheckpointIO(store2, blocking=False), [mc]).fit(Regression(), data)
    assert sorted(os.listdir(ckpts2)) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    assert tpde.Store(store2).steps() == [12]
    a, b = store.load(12, trusted=True), tpde.Store(store2).load(12, trusted=True)
    _assert_same(a["state_dict"], b["state_dict"])  # the same run, other callbacks
    _assert_same(a["optimizer_states"], b["optimizer_states"])
    with pytest.raises(tpde.TpdeError, match="blocking must be True or False"):
        TpdeCheckpointIO(store2, blocking=None)


class _FullDisk:
    """The Rust store, failing to add (as a full disk would)."""

    def __init__(self, inner):
        self._real = inner

    def add_tensors(self, step, *args, **kwargs):
        raise tpde.TpdeError(f"cannot write step {step}: no space left on device (a test)")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_lightning_background_failure_is_raised(tmp_path):
    from test_integrations import _lightning
    _lightning()
    from tpde.integrations.lightning import TpdeCheckpointIO

    io = TpdeCheckpointIO(tmp_path / "run.tpde", blocking=False)
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, str(tmp_path / "a.ckpt"))
    io.wait()
    io.store._inner = _FullDisk(io.store._inner)
    io.save_checkpoint({"global_step": 2, "w": torch.ones(3)}, str(tmp_path / "b.ckpt"))
    with pytest.raises(tpde.TpdeError, match="the save of step 2 .* failed in the background: "
                       "cannot write step 2: no space left"):
        io.save_checkpoint({"global_step": 3, "w": torch.ones(3)}, str(tmp_path / "c.ckpt"))
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, str(tmp_path / "d.ckpt"))
    with pytest.raises(tpde.TpdeError, match="the save of step 4 .* failed in the background"):
        io.teardown()
    io.teardown()  # reported once
    io.store._inner = io.store._inner._real
    assert io.store.steps() == [1]
    assert io.store.verify().ok
