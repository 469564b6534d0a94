"""tpde.dcp: torch.distributed.checkpoint (DCP) saving into and loading from
a tpde store, with real processes.

Every test launches 2 or 4 worker processes (this file run as a script:
``python test_dcp_store.py SPEC.json``), backend gloo on 127.0.0.1, each
process group with a 30 s timeout. The workers train a tiny model sharded
with FSDP2 (``fully_shard`` on a 1-D CPU device mesh) with AdamW, save with
``dcp.save(..., storage_writer=tpde.dcp.StoreWriter(store, step=N))`` and
load with ``tpde.dcp.StoreReader``. Each worker writes what it saw (results,
errors) to a JSON file that the test reads; a launch that has not ended by
its deadline is killed (every process of it, SIGKILL to its process group)
and the test fails, so nothing hangs and nothing is left running.

At every save each rank records the sha256, dtype and shape of every local
shard (``DTensor.to_local()``) of the model and the optimizer state, and of
every other value of the state; a load into a freshly (differently)
initialised model and optimizer must give the same records: bit for bit.
With ``record_full`` the ranks also record full tensors
(``DTensor.full_tensor()``), to compare across world sizes.

Skipped when torch.distributed, gloo, DCP or FSDP2 is missing, or when
tpde.dcp is missing. ``TPDE_DCP_TEST_FAKE=1`` runs the tests against a
stand-in made of DCP's FileSystemWriter/FileSystemReader and Store.add /
Store.get (to check this harness itself, without tpde.dcp; a few tests of
tpde.dcp's own behaviour are skipped then). The S3 test needs the S3 test
server (``eval "$(scripts/s3-server.sh)"``; TPDE_TEST_S3=1), as test_s3.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

FAKE = os.environ.get("TPDE_DCP_TEST_FAKE") == "1"
PG_TIMEOUT_S = 30  # every process group: a collective waits at most this long
LAUNCH_TIMEOUT_S = 300  # a whole launch (all its processes), then it is killed
SEED = 1234

# ---------------------------------------------------------------------------
# The worker: this file run as a script. It must not need pytest.
# ---------------------------------------------------------------------------


def _tensor_record(t):
    import torch

    t = t.detach()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return [str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()]


def _records(obj, prefix="", full=False):
    """{path: record} of every leaf of a nested state: tensors as [dtype,
    shape, sha256] (a DTensor's local shard, or with full=True its full
    tensor: a collective), other values as their repr."""
    import torch
    from torch.distributed.tensor import DTensor

    out = {}
    if isinstance(obj, DTensor):
        out[prefix] = _tensor_record(obj.full_tensor() if full else obj.to_local())
    elif isinstance(obj, torch.Tensor):
        out[prefix] = _tensor_record(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_records(v, f"{prefix}/{k}" if prefix else str(k), full))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_records(v, f"{prefix}/{i}" if prefix else str(i), full))
    else:
        out[prefix] = ["value", repr(obj)]
    return out


def _fake_classes():
    """A stand-in for tpde.dcp built from DCP's FileSystemWriter/Reader: the
    writer writes a DCP folder, and the coordinator adds it to the store in
    finish(); the reader gets the step from the store into a folder of its
    own rank. Only for checking this harness (TPDE_DCP_TEST_FAKE=1)."""
    import tpde
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    staging = os.environ["TPDE_DCP_FAKE_STAGING"]

    def location(store):
        return store.path if isinstance(store, tpde.Store) else os.fspath(store)

    class FakeStoreWriter(FileSystemWriter):
        def __init__(self, store, step):
            self._store, self._step = location(store), step
            # Every rank writes to the same folder (the staging folder is the launch's own).
            self._dir = os.path.join(staging, f"checkpoint-{step}")
            super().__init__(self._dir)

        def finish(self, metadata, results):
            super().finish(metadata, results)
            tpde.Store(self._store).add(self._dir, self._step)

    class FakeStoreReader(FileSystemReader):
        def __init__(self, store, step):
            out = os.path.join(staging, f"read-{os.environ['RANK']}-{uuid.uuid4().hex}",
                               f"checkpoint-{step}")
            os.makedirs(os.path.dirname(out))
            tpde.Store(location(store), create=False).get(step, out)
            super().__init__(out)

    return FakeStoreWriter, FakeStoreReader


def _tpde_classes():
    if FAKE:
        return _fake_classes()
    import tpde.dcp

    return tpde.dcp.StoreWriter, tpde.dcp.StoreReader


class _Worker:
    def __init__(self, spec):
        self.spec = spec
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.result = {"rank": self.rank, "world": self.world, "events": [], "done": False}
        self.result_path = os.path.join(spec["results"], f"rank-{self.rank}.json")

    # -- bookkeeping --------------------------------------------------------

    def flush(self):
        tmp = self.result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f)
        os.replace(tmp, self.result_path)

    def event(self, **kw):
        self.result["events"].append(kw)
        self.flush()

    @staticmethod
    def describe(e):
        import tpde

        failures = {}
        for rank, pair in (getattr(e, "failures", None) or {}).items():
            exc = pair[0] if isinstance(pair, tuple) else pair
            failures[str(rank)] = {"type": type(exc).__qualname__, "msg": str(exc)[:2000],
                                   "tpde": isinstance(exc, tpde.TpdeError)}
        return {"type": type(e).__qualname__, "module": type(e).__module__,
                "tpde": isinstance(e, tpde.TpdeError), "msg": str(e)[:4000],
                "failures": failures}

    # -- the model ------------------------------------------------------------

    def setup(self):
        import torch
        import torch.distributed as dist
        from datetime import timedelta
        from torch.distributed.device_mesh import init_device_mesh

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{self.spec['port']}",
                                rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=PG_TIMEOUT_S))
        self.mesh = init_device_mesh("cpu", (self.world,))
        self.async_pg = None

    def build(self, seed):
        """A tiny model: FSDP2 on its two Linear layers and on the root (so the
        embedding and the norm are sharded too), with AdamW. The output layer
        has 3 rows: with 4 ranks one rank's shard of it is empty."""
        import torch
        import torch.nn as nn
        from torch.distributed.fsdp import fully_shard

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(37, 16)
                self.l1 = nn.Linear(16, 24)
                self.norm = nn.LayerNorm(24)
                self.l2 = nn.Linear(24, 3)

            def forward(self, x):
                h = self.emb(x).mean(dim=1)
                return self.l2(self.norm(torch.relu(self.l1(h))))

        torch.manual_seed(seed)
        model = Net()
        fully_shard(model.l1, mesh=self.mesh)
        fully_shard(model.l2, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        return model, opt

    def train_step(self, model, opt, step):
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(SEED * 1000 + step * 16 + self.rank)
        x = torch.randint(0, 37, (8, 5), generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def state(self, model, opt, step):
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(model, opt)
        g = torch.Generator().manual_seed(step)
        return {"model": msd, "optim": osd, "step": step,
                "extra": {"note": f"step {step}",
                          "counter": torch.tensor([step, -step], dtype=torch.int64),
                          "bf16": torch.randn(5, generator=g).to(torch.bfloat16)}}

    def template(self, seed):
        """A state to load into: a new model and optimizer, initialised
        differently (another seed), and other values that differ."""
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, opt = self.build(seed)
        msd, osd = get_state_dict(model, opt)  # initialises AdamW's state (zeros)
        state = {"model": msd, "optim": osd, "step": -1,
                 "extra": {"note": "", "counter": torch.zeros(2, dtype=torch.int64),
                           "bf16": torch.zeros(5, dtype=torch.bfloat16)}}
        return model, opt, state

    def loaded_records(self, model, opt, state, full):
        """Records of what the model and optimizer hold after a load: the
        loaded state set into them (set_state_dict) and read out again."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        msd, osd = get_state_dict(model, opt)
        return _records({"model": msd, "optim": osd, "step": state["step"],
                         "extra": state["extra"]}, full=full)

    def expected_path(self, step, full):
        name = f"step-{step}-full.json" if full else f"step-{step}-world-{self.world}-rank-{self.rank}.json"
        return os.path.join(self.spec["expected"], name)

    # -- actions ------------------------------------------------------------

    def save_one(self, state, store, step, mode, writer_cls):
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        writer = writer_cls(store, step=step)
        t = time.perf_counter()
        if mode == "async":
            if self.async_pg is None:
                self.async_pg = dist.new_group(backend="gloo", timeout=__import__(
                    "datetime").timedelta(seconds=PG_TIMEOUT_S))
            fut = dcp.async_save(state, storage_writer=writer, process_group=self.async_pg)
            fut.result()
        else:
            dcp.save(state, storage_writer=writer)
        return time.perf_counter() - t

    def faulty_writer(self, base, fault):
        kind, frank = fault["kind"], fault["rank"]
        me = self

        class FaultyWriter(base):
            def write_data(self, plan, planner):
                if me.rank == frank and kind in ("kill_before", "raise_before"):
                    me.event(op="fault", kind=kind)
                    if kind == "kill_before":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"injected fault on rank {me.rank} ({kind})")
                fut = super().write_data(plan, planner)
                if me.rank == frank and kind in ("kill_after", "raise_after"):
                    fut.wait()  # this rank's shards are written
                    me.event(op="fault", kind=kind)
                    if kind == "kill_after":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"injected fault on rank {me.rank} ({kind})")
                return fut

            def finish(self, metadata, results):
                if me.rank == frank and kind == "kill_finish":
                    me.event(op="fault", kind=kind)
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().finish(metadata, results)

        return FaultyWriter

    def store_check(self, store, step):
        """Rank 0 (the others wait): whether `step` is committed, and verify."""
        import tpde
        import torch.distributed as dist

        if self.rank == 0:
            s = tpde.Store(store, create=False)
            report = s.verify()
            self.event(op="store_check", step=step, committed=step in s.steps(),
                       steps=s.steps(), verify_ok=report.ok,
                       problems=[str(p) for p in report.problems])
        dist.barrier()

    def act_train_save(self, a):
        """Trains from scratch (seed SEED), `between` optimizer steps before
        each save of `saves`; records what it saved; optionally loads every
        saved step back afterwards (`load_after`)."""
        writer_cls, _ = _tpde_classes()
        model, opt = self.build(SEED)
        fault = a.get("fault")
        done = 0
        for step in a["saves"]:
            while done < step:
                done += 1
                self.train_step(model, opt, done)
            state = self.state(model, opt, step)
            local = _records(state)
            full = _records(state, full=True) if a.get("record_full") else None
            os.makedirs(self.spec["expected"], exist_ok=True)
            with open(self.expected_path(step, False), "w") as f:
                json.dump(local, f)
            if full is not None and self.rank == 0:
                with open(self.expected_path(step, True), "w") as f:
                    json.dump(full, f)
            cls = writer_cls
            if fault and fault["step"] == step:
                cls = self.faulty_writer(writer_cls, fault)
            try:
                secs = self.save_one(state, a["store"], step, a.get("mode", "sync"), cls)
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                self.event(op="save", step=step, ok=False, error=self.describe(e))
                if not (fault and fault["step"] == step and a.get("retry")):
                    return
                self.store_check(a["store"], step)
                secs = self.save_one(state, a["store"], step, a.get("mode", "sync"), writer_cls)
                self.event(op="save", step=step, ok=True, retried=True, seconds=secs)
                continue
            self.event(op="save", step=step, ok=True, seconds=secs)
        if a.get("load_after"):
            self.act_load({"steps": a["saves"], "store": a["store"]})

    def act_load(self, a):
        """Loads each step into a fresh model and optimizer (through
        StoreReader, or FileSystemReader of `dirs[step]`) and compares with
        the records of the save: `compare` "local" (the same world size) or
        "full" (any world size)."""
        import torch.distributed.checkpoint as dcp

        _, reader_cls = _tpde_classes()
        full = a.get("compare") == "full"
        for i, step in enumerate(a["steps"]):
            model, opt, state = self.template(SEED + 1000 + i)
            before = _records(state, full=full)
            try:
                if a.get("dirs"):
                    reader = dcp.FileSystemReader(a["dirs"][str(step)])
                else:
                    reader = reader_cls(a["store"], step=step)
                dcp.load(state, storage_reader=reader)
                got = self.loaded_records(model, opt, state, full)
            except BaseException as e:
                self.event(op="load", step=step, ok=False, error=self.describe(e))
                return
            with open(self.expected_path(step, full)) as f:
                want = json.load(f)
            differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            changed = sum(before.get(k) != v for k, v in want.items())
            self.event(op="load", step=step, ok=True, compare="full" if full else "local",
                       entries=len(want), differ=differ, changed_by_load=changed,
                       tensors=sum(v[0] != "value" for v in want.values()))

    def act_bad_load(self, a):
        """One StoreReader + dcp.load that must fail; records how."""
        import torch.distributed.checkpoint as dcp

        _, reader_cls = _tpde_classes()
        _model, _opt, state = self.template(SEED + 77)
        t = time.perf_counter()
        try:
            reader = reader_cls(a["store"], step=a["step"])
            stage = "load"
            dcp.load(state, storage_reader=reader)
        except BaseException as e:
            self.event(op="bad_load", ok=False, stage=locals().get("stage", "constructor"),
                       seconds=time.perf_counter() - t, error=self.describe(e))
            return
        self.event(op="bad_load", ok=True, seconds=time.perf_counter() - t)

    def run(self):
        import torch.distributed as dist

        self.setup()
        self.event(op="setup")
        try:
            for a in self.spec["actions"]:
                getattr(self, "act_" + a["op"])(a)
                if a.get("barrier", True) and not any(
                        e.get("ok") is False for e in self.result["events"]):
                    dist.barrier()
        except BaseException as e:
            self.event(op="crash", error=self.describe(e))
        self.result["done"] = True
        self.flush()
        try:
            dist.destroy_process_group()
        except BaseException:
            pass


def _worker_main(spec_path):
    import faulthandler

    with open(spec_path) as f:
        spec = json.load(f)
    # A last resort inside the worker, before the launch's own deadline.
    faulthandler.dump_traceback_later(spec.get("self_timeout", LAUNCH_TIMEOUT_S - 20), exit=True)
    w = _Worker(spec)
    w.flush()
    w.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker_main(sys.argv[1])

# ---------------------------------------------------------------------------
# The tests (pytest from here on).
# ---------------------------------------------------------------------------

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)
if not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed has no gloo backend", allow_module_level=True)
try:
    import torch.distributed.checkpoint  # noqa: F401
    from torch.distributed.fsdp import fully_shard  # noqa: F401
    from torch.distributed.tensor import DTensor  # noqa: F401
except (ImportError, AttributeError) as _e:
    pytest.skip(f"this torch lacks DCP, DTensor or FSDP2 fully_shard: {_e}",
                allow_module_level=True)

import tpde  # noqa: E402

if not FAKE:
    pytest.importorskip("tpde.dcp", reason="tpde.dcp is not in this build of tpde")

needs_real = pytest.mark.skipif(FAKE, reason="tests tpde.dcp itself (TPDE_DCP_TEST_FAKE=1)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """What a launch's processes did: per rank its exit status, its result
    (None when it wrote none) and its output."""

    def __init__(self, world, returncodes, results, logs, timed_out):
        self.world, self.returncodes, self.results = world, returncodes, results
        self.logs, self.timed_out = logs, timed_out

    def events(self, rank, op=None):
        res = self.results[rank] or {"events": []}
        return [e for e in res["events"] if op is None or e["op"] == op]

    def explain(self):
        out = [f"world {self.world}, exit statuses {self.returncodes}, timed out: {self.timed_out}"]
        for r in range(self.world):
            out.append(f"--- rank {r}: result {json.dumps(self.results[r])[:3000]}")
            out.append(f"--- rank {r}: output (tail)\n{self.logs[r][-4000:]}")
        return "\n".join(out)

    def check_clean(self):
        """Every process ended by itself, status 0, and ran all its actions
        without an error; returns self."""
        assert not self.timed_out and self.returncodes == [0] * self.world, self.explain()
        for r in range(self.world):
            res = self.results[r]
            assert res is not None and res["done"], self.explain()
            bad = [e for e in res["events"] if e.get("ok") is False or e["op"] == "crash"]
            assert not bad, self.explain()
        return self


def launch(tmp, world, actions, timeout=LAUNCH_TIMEOUT_S, expected=None):
    """Runs `actions` in `world` fresh worker processes; kills them all at the
    deadline (and whatever they started: each is its own process group)."""
    run = os.path.join(tmp, f"launch-{uuid.uuid4().hex[:8]}")
    results = os.path.join(run, "results")
    os.makedirs(results)
    spec = {"port": _free_port(), "results": results, "actions": actions,
            "expected": expected or os.path.join(tmp, "expected"),
            "self_timeout": max(10, timeout - 20)}
    spec_path = os.path.join(run, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
               TPDE_DCP_FAKE_STAGING=os.path.join(run, "fake-staging"))
    procs, logs = [], []
    try:
        for rank in range(world):
            log = open(os.path.join(run, f"rank-{rank}.log"), "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), spec_path],
                env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        timed_out = False
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the process and anything it started
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            p.wait()
    texts, res = [], []
    for rank, log in enumerate(logs):
        log.seek(0)
        texts.append(log.read())
        log.close()
        try:
            with open(os.path.join(results, f"rank-{rank}.json")) as f:
                res.append(json.load(f))
        except (OSError, ValueError):
            res.append(None)
    return Launch(world, [p.returncode for p in procs], res, texts, timed_out)


def check_loads(run, steps, compare="local"):
    """Every rank loaded every step, and got back exactly what was saved
    (and the load changed something: the template differed)."""
    for r in range(run.world):
        loads = run.events(r, "load")
        assert [e["step"] for e in loads] == list(steps), run.explain()
        for e in loads:
            assert e["ok"] and e["compare"] == compare, run.explain()
            assert e["differ"] == [], f"rank {r} step {e['step']}: {e['differ']}\n{run.explain()}"
            assert e["tensors"] > 0 and e["changed_by_load"] > 0, run.explain()


def check_stored_steps(location, steps, world):
    """The store holds exactly `steps`, each a DCP folder step
    `checkpoint-N` with .metadata and one .distcp file per rank; the first is
    a keyframe, every later one a delta against the step before, stored
    smaller than the keyframe; verify is clean."""
    store = tpde.Store(location, create=False)
    assert store.steps() == list(steps)
    report = store.verify()
    assert report.ok, report.problems
    by_step = {s["step"]: s for s in store.manifest()["steps"]}
    want_files = sorted([".metadata"] + [f"__{r}_0.distcp" for r in range(world)])
    stored = {}
    for s in steps:
        rec = by_step[s]
        assert rec["name"] == f"checkpoint-{s}", rec
        assert rec.get("kind", "dir") == "dir", rec
        assert sorted(f["path"] for f in rec["files"]) == want_files, rec
        stored[s] = sum(f["stored_len"] for f in rec["files"])
        assert sum(f["len"] for f in rec["files"]) > 0
    first = steps[0]
    assert by_step[first]["reference"] is None, by_step[first]
    for prev, s in zip(steps, steps[1:]):
        assert by_step[s]["reference"] == prev, by_step[s]
        assert stored[s] < stored[first], (stored, by_step[s]["files"], by_step[first]["files"])
    return store, by_step


SAVES = [2, 4, 6, 8, 10]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """2 ranks: 5 saves, 2 optimizer steps apart, into a local store, every
    step loaded back in the same processes into a fresh model."""
    tmp = str(tmp_path_factory.mktemp("dcp2"))
    store = os.path.join(tmp, "store")
    run = launch(tmp, 2, [{"op": "train_save", "store": store, "saves": SAVES,
                           "record_full": True, "load_after": True}])
    return tmp, store, run


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    """The same with 4 ranks (one rank's shard of the output layer is empty)."""
    tmp = str(tmp_path_factory.mktemp("dcp4"))
    store = os.path.join(tmp, "store")
    run = launch(tmp, 4, [{"op": "train_save", "store": store, "saves": SAVES,
                           "record_full": True, "load_after": True}])
    return tmp, store, run


@pytest.mark.parametrize("world", [2, 4])
def test_saves_are_deltas_and_load_back_bit_identical(world, request):
    tmp, store, run = request.getfixturevalue(f"run{world}")
    run.check_clean()
    for r in range(world):
        assert [e["step"] for e in run.events(r, "save")] == SAVES, run.explain()
    check_loads(run, SAVES)
    check_stored_steps(store, SAVES, world)


def test_save_with_4_ranks_load_with_2(run4):
    tmp, store, run = run4
    run.check_clean()
    again = launch(tmp, 2, [{"op": "load", "store": store, "steps": [SAVES[0], SAVES[-1]],
                             "compare": "full"}])
    again.check_clean()
    check_loads(again, [SAVES[0], SAVES[-1]], compare="full")


def _cli():
    exe = os.environ.get("TPDE_CLI")
    if exe:
        return exe
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
    for kind in ("release", "debug"):
        p = os.path.join(root, "target", kind, "tpde")
        if os.path.exists(p):
            return p
    return shutil.which("tpde")


@pytest.mark.parametrize("how", ["python", "cli"])
def test_store_get_gives_a_folder_that_file_system_reader_loads(run2, how, tmp_path):
    tmp, store, run = run2
    run.check_clean()
    dirs = {}
    for step in (SAVES[0], SAVES[2], SAVES[-1]):
        out = tmp_path / f"checkpoint-{step}"
        if how == "python":
            tpde.Store(store, create=False).get(step, out)
        else:
            exe = _cli()
            if exe is None:
                if os.environ.get("CI"):  # test.sh builds it before the Python tests
                    pytest.fail("no tpde binary (TPDE_CLI, target/*/tpde, PATH) under CI")
                pytest.skip("no tpde binary (TPDE_CLI, target/release/tpde, PATH)")
            subprocess.run([exe, "store", "get", store, str(step), "-o", str(out)],
                           check=True, timeout=120, capture_output=True)
        assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        dirs[str(step)] = str(out)
    again = launch(tmp, 2, [{"op": "load", "steps": [int(s) for s in dirs], "dirs": dirs}])
    again.check_clean()
    check_loads(again, [int(s) for s in dirs])


def test_async_save_round_trip(tmp_path):
    tmp = str(tmp_path)
    store = os.path.join(tmp, "store")
    run = launch(tmp, 2, [{"op": "train_save", "store": store, "saves": [2, 4, 6],
                           "mode": "async", "load_after": True}])
    run.check_clean()
    check_loads(run, [2, 4, 6])
    check_stored_steps(store, [2, 4, 6], 2)


def test_store_passed_as_a_tpde_store_or_pathlike(tmp_path):
    """StoreWriter and StoreReader also take a tpde.Store and an
    os.PathLike; done in the parent, without distributed (one process, no
    process group: DCP's no-dist mode)."""
    if FAKE:
        pytest.skip("tests tpde.dcp itself")
    import torch.distributed.checkpoint as dcp
    import tpde.dcp

    store_dir = tmp_path / "store"
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "n": 3}
    dcp.save(state, storage_writer=tpde.dcp.StoreWriter(store_dir, step=1), no_dist=True)
    s = tpde.Store(store_dir, create=False)
    state2 = {"w": state["w"] + 1, "n": 4}
    dcp.save(state2, storage_writer=tpde.dcp.StoreWriter(s, step=2), no_dist=True)
    for step, want, src in ((1, state, s), (2, state2, store_dir)):
        back = {"w": torch.zeros(3, 4), "n": 0}
        dcp.load(back, storage_reader=tpde.dcp.StoreReader(src, step=step), no_dist=True)
        assert torch.equal(back["w"], want["w"]) and back["n"] == want["n"]
    assert tpde.Store(store_dir, create=False).steps() == [1, 2]
    assert tpde.Store(store_dir, create=False).verify().ok


@pytest.mark.skipif(os.environ.get("TPDE_TEST_S3") != "1",
                    reason="no S3 test server (TPDE_TEST_S3 is not set; ./test.sh starts one)")
def test_saves_on_s3_are_deltas_and_load_back_bit_identical(tmp_path):
    bucket = os.environ.get("TPDE_TEST_S3_BUCKET", "tpde-test")
    location = f"s3://{bucket}/pytest/dcp-{uuid.uuid4().hex}"
    run = launch(str(tmp_path), 2, [{"op": "train_save", "store": location, "saves": SAVES,
                                     "load_after": True}])
    run.check_clean()
    check_loads(run, SAVES)
    check_stored_steps(location, SAVES, 2)


# -- faults ------------------------------------------------------------------

FAULT_SAVES = [2, 4, 6]


@pytest.mark.parametrize("kind,rank", [("kill_after", 1), ("kill_before", 1),
                                       ("kill_after", 0), ("kill_finish", 0)])
def test_rank_killed_during_save_commits_nothing(kind, rank, tmp_path):
    """A rank SIGKILLs itself during the third save (after or before its
    shards are written, or the coordinator just before it commits): the
    other rank's dcp.save fails instead of hanging, the step is not
    committed, the store verifies clean with the earlier steps intact, and
    new processes load those and save the step again."""
    tmp = str(tmp_path)
    store = os.path.join(tmp, "store")
    fault_step = FAULT_SAVES[-1]
    run = launch(tmp, 2, [{"op": "train_save", "store": store, "saves": FAULT_SAVES,
                           "fault": {"kind": kind, "rank": rank, "step": fault_step}}])
    assert not run.timed_out, run.explain()
    assert run.returncodes[rank] == -signal.SIGKILL, run.explain()
    assert [e["kind"] for e in run.events(rank, "fault")] == [kind], run.explain()
    other = 1 - rank
    saves = run.events(other, "save")
    assert [(e["step"], e["ok"]) for e in saves] == [(2, True), (4, True), (fault_step, False)], \
        run.explain()

    s = tpde.Store(store, create=False)
    assert s.steps() == FAULT_SAVES[:-1]
    report = s.verify()
    assert report.ok, report.problems
    committed = FAULT_SAVES[:-1]

    # New processes: the committed steps load bit for bit; the step saves again.
    again = launch(tmp, 2, [{"op": "load", "store": store, "steps": committed},
                            {"op": "train_save", "store": store, "saves": [fault_step],
                             "load_after": True}])
    again.check_clean()
    for r in range(2):
        loads = again.events(r, "load")
        assert [e["step"] for e in loads] == committed + [fault_step], again.explain()
        for e in loads:
            assert e["ok"] and e["differ"] == [], again.explain()
    store_after, by_step = check_stored_steps(store, FAULT_SAVES, 2)


@pytest.mark.parametrize("kind", ["raise_before", "raise_after"])
def test_rank_raising_in_write_data_fails_save_on_every_rank(kind, tmp_path):
    """Rank 1's write_data raises (before or after writing its shards):
    dcp.save raises on both ranks, naming the fault; nothing is committed and
    the store verifies clean; the same processes then save the step again
    with a plain StoreWriter, and it loads back bit for bit."""
    tmp = str(tmp_path)
    store = os.path.join(tmp, "store")
    fault_step = FAULT_SAVES[-1]
    run = launch(tmp, 2, [{"op": "train_save", "store": store, "saves": FAULT_SAVES,
                           "fault": {"kind": kind, "rank": 1, "step": fault_step},
                           "retry": True, "load_after": True}])
    assert not run.timed_out and run.returncodes == [0, 0], run.explain()
    for r in range(2):
        saves = run.events(r, "save")
        assert [(e["step"], e["ok"]) for e in saves] == [
            (2, True), (4, True), (fault_step, False), (fault_step, True)], run.explain()
        err = saves[2]["error"]
        assert "injected fault on rank 1" in err["msg"], run.explain()
    check = run.events(0, "store_check")
    assert len(check) == 1 and not check[0]["committed"], run.explain()
    assert check[0]["steps"] == FAULT_SAVES[:-1] and check[0]["verify_ok"], run.explain()
    check_loads(run, FAULT_SAVES)
    check_stored_steps(store, FAULT_SAVES, 2)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing_step", "not_a_store", "no_such_path",
                                  "store_save_step"])
def test_bad_reader_raises_tpde_error_on_every_rank(case, run2, tmp_path):
    """StoreReader for a step the store lacks, for a folder that is not a
    store, for a path that does not exist (which is not created), and for a
    step saved with Store.save (not a DCP folder): every process gets a
    tpde.TpdeError, and none hangs."""
    tmp, good_store, run = run2
    run.check_clean()
    if case == "missing_step":
        store, step = good_store, 7
    elif case == "not_a_store":
        store, step = str(tmp_path / "other"), 2
        os.makedirs(store)
        with open(os.path.join(store, "notes.txt"), "w") as f:
            f.write("not a store\n")
    elif case == "no_such_path":
        store, step = str(tmp_path / "nothing" / "here"), 2
    else:
        store, step = str(tmp_path / "plain"), 3
        tpde.Store(store).save(3, {"w": torch.ones(4), "step": 3})
    run2b = launch(str(tmp_path), 2, [{"op": "bad_load", "store": store, "step": step}],
                   timeout=180)
    assert not run2b.timed_out and run2b.returncodes == [0, 0], run2b.explain()
    for r in range(2):
        evs = run2b.events(r, "bad_load")
        assert len(evs) == 1 and evs[0]["ok"] is False, run2b.explain()
        err = evs[0]["error"]
        if FAKE:
            continue
        assert err["tpde"], f"rank {r} got {err['type']} (at {evs[0]['stage']}), " \
                            f"not a tpde.TpdeError: {err['msg'][:1500]}"
    if case == "no_such_path":
        assert not os.path.exists(store) and not os.path.exists(os.path.dirname(store))
    if case == "not_a_store":
        assert sorted(os.listdir(store)) == ["notes.txt"]
    if case == "missing_step":
        assert tpde.Store(good_store, create=False).steps() == SAVES


@needs_real
def test_saving_a_stored_step_again_fails_on_every_rank_and_changes_nothing(run2, tmp_path):
    """A StoreWriter for a step the store holds: dcp.save raises on both
    ranks (DCP's CheckpointException, naming the coordinator's TpdeError),
    and the store is as it was."""
    tmp, store, run = run2
    run.check_clean()
    before = tpde.Store(store, create=False).manifest()
    again = launch(str(tmp_path), 2, [{"op": "train_save", "store": store, "saves": [SAVES[1]]}],
                   timeout=180)
    assert not again.timed_out and again.returncodes == [0, 0], again.explain()
    for r in range(2):
        saves = again.events(r, "save")
        assert [(e["step"], e["ok"]) for e in saves] == [(SAVES[1], False)], again.explain()
        err = saves[0]["error"]
        assert err["tpde"] or any(f["tpde"] for f in err["failures"].values()), again.explain()
        assert "stored already" in err["msg"], again.explain()
    after = tpde.Store(store, create=False)
    assert after.manifest() == before
    assert after.verify().ok
