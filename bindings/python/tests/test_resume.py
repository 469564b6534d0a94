"""The research notes' open task 3: train, save through tpde every k steps,
restore a middle checkpoint (model, optimizer, scheduler and every RNG), resume,
and get the uninterrupted run's losses bit for bit."""

import random
import struct

import numpy as np
import pytest

import tpde

torch = pytest.importorskip("torch")

STEPS, EVERY, RESUME_AT = 24, 4, 12


def make():
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    return model, opt, sched


def state(model, opt, sched, step):
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": np.random.get_state()},
        "step": step,
    }


def train(store=None, resume_from=None, skip=()):
    """Losses (as exact bit patterns) of steps [start, STEPS)."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model, opt, sched = make()
    start = 0
    if resume_from is not None:
        s = store.load(resume_from)
        model.load_state_dict(s["model"])
        if "optimizer" not in skip:
            opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        if "torch" not in skip:
            torch.set_rng_state(s["rng"]["torch"])
        if "python" not in skip:
            random.setstate(s["rng"]["python"])
        if "numpy" not in skip:
            np.random.set_state(s["rng"]["numpy"])
        start = s["step"]
    losses = []
    for step in range(start, STEPS):
        # Data from all three generators, so that each RNG state matters.
        x = torch.randn(8, 16) + random.random() + float(np.random.rand())
        y = torch.randn(8, 4)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(struct.pack("<f", loss.item()).hex())
        if store is not None and resume_from is None and (step + 1) % EVERY == 0:
            store.save(step + 1, state(model, opt, sched, step + 1))
    return losses, model


def test_resumed_run_matches_bit_for_bit(tmp_path):
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = tpde.Store(tmp_path / "run", keyframe_every=3)
        full, model = train(store)
        assert store.steps() == list(range(EVERY, STEPS + 1, EVERY))
        # Most checkpoints are deltas against the previous one.
        refs = [s["reference"] for s in store.manifest()["steps"]]
        assert refs.count(None) == 2
        resumed, model2 = train(store, resume_from=RESUME_AT)
        assert len(resumed) == STEPS - RESUME_AT
        assert resumed == full[RESUME_AT:]
        for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
            assert torch.equal(a, b)
        # Leaving out any part of the state changes the losses: the
        # comparison above can fail.
        for part in ["optimizer", "torch", "python", "numpy"]:
            partial, _ = train(store, resume_from=RESUME_AT, skip=(part,))
            assert partial != resumed, part
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
