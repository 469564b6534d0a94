"""The Hugging Face Trainer and PyTorch Lightning integrations, end to end on
tiny CPU models (nothing is downloaded)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

import tpde  # noqa: E402


def _tree_digests(folder):
    """sha256 of every file under ``folder``, by relative path."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _checkpoint_folders(folder):
    return sorted(d for d in os.listdir(folder) if d.startswith("checkpoint-"))


# -- Hugging Face Trainer ----------------------------------------------------


def _hf_trainer(output_dir, callbacks, max_steps=6, **extra):
    transformers = pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n, eval_set=False):
            g = torch.Generator().manual_seed(1 if eval_set else 0)
            self.ids = torch.randint(0, 64, (n, 16), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    transformers.set_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    params = inspect.signature(TrainingArguments.__init__).parameters
    kw = dict(output_dir=str(output_dir), max_steps=max_steps, save_steps=2,
              per_device_train_batch_size=2, report_to=[], logging_steps=1, seed=0,
              disable_tqdm=True)
    kw["use_cpu" if "use_cpu" in params else "no_cuda"] = True
    if "save_safetensors" in params:  # always on (and gone) in transformers 5
        kw["save_safetensors"] = True
    kw.update(extra)
    eval_set = Tokens(4, eval_set=True) if "eval_strategy" in extra else None
    return Trainer(model=model, args=TrainingArguments(**kw), train_dataset=Tokens(16),
                   eval_dataset=eval_set, callbacks=callbacks)


def test_hf_trainer_checkpoints_round_trip(tmp_path):
    pytest.importorskip("transformers")
    from tpde.integrations.transformers import TpdeCallback, restore_checkpoint

    # Run 1: folders kept; every stored step restores the folder byte for byte.
    out1, store1 = tmp_path / "out1", tmp_path / "run1.tpde"
    cb = TpdeCallback(str(store1), keyframe_every=4)
    trainer = _hf_trainer(out1, [cb])
    trainer.train()
    assert _checkpoint_folders(out1) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    store = tpde.Store(store1)
    assert store.steps() == [2, 4, 6]
    for step in (2, 4, 6):
        back = tmp_path / f"back1-{step}"
        store.get(step, back)
        want = _tree_digests(out1 / f"checkpoint-{step}")
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                "training_args.bin"} <= set(want)
        assert _tree_digests(back) == want
    codings = {f["path"]: f["coding"] for s in store.manifest()["steps"] for f in s["files"]}
    assert codings["optimizer.pt"] == "torch archive"
    assert codings["model.safetensors"] == "safetensors"
    later = [s for s in store.manifest()["steps"] if s["step"] > 2]
    assert any(f["delta"] for s in later for f in s["files"])

    # The Trainer saving the same step again is a no-op.
    before = store.manifest()
    cb.on_save(trainer.args, trainer.state, trainer.control)
    assert store.manifest() == before
    assert store.verify().ok

    # Run 2: folders deleted once stored; the store gives them back.
    out2, store2 = tmp_path / "out2", tmp_path / "run2.tpde"
    _hf_trainer(out2, [TpdeCallback(store2, delete_checkpoints=True)]).train()
    assert _checkpoint_folders(out2) == []
    store = tpde.Store(store2)
    assert store.steps() == [2, 4, 6]
    assert store.verify().ok
    for step in (2, 4, 6):
        back = tmp_path / f"back2-{step}"
        store.get(step, back)
        a = _tree_digests(back)
        assert set(a) == set(_tree_digests(out1 / f"checkpoint-{step}"))
        # Same seed on the CPU: the same weights as run 1.
        assert a["model.safetensors"] == _tree_digests(
            out1 / f"checkpoint-{step}")["model.safetensors"]

    # Resume from a restored step. The resumed run saves step 6 again, into
    # another output_dir (so training_args.bin differs): the stored step 6 is
    # replaced by what the Trainer wrote last.
    out3 = tmp_path / "out3"
    path = restore_checkpoint(store2, 4, out3)
    assert path == os.path.join(str(out3), "checkpoint-4")
    assert _tree_digests(path) == _tree_digests(tmp_path / "back2-4")
    resumed = _hf_trainer(out3, [TpdeCallback(store2)])
    with pytest.warns(UserWarning, match=r"step 6 .* differs .*training_args.bin.*replacing"):
        resumed.train(resume_from_checkpoint=path)
    assert resumed.state.global_step == 6
    store = tpde.Store(store2)
    assert store.steps() == [2, 4, 6]
    assert store.files(6) == {
        rel: open(out3 / "checkpoint-6" / rel, "rb").read()
        for rel in _tree_digests(out3 / "checkpoint-6")
    }
    assert store.verify().ok
    # A new callback finding the same folder stored already leaves it be.
    before = store.manifest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TpdeCallback(store2).on_save(resumed.args, resumed.state, resumed.control)
    assert store.manifest() == before
    with pytest.raises(tpde.TpdeError, match="exists already"):
        restore_checkpoint(store2, 4, out3)


def test_hf_trainer_delete_keeps_best(tmp_path):
    pytest.importorskip("transformers")
    from tpde.integrations.transformers import TpdeCallback

    out, store_path = tmp_path / "out", tmp_path / "run.tpde"
    trainer = _hf_trainer(out, [TpdeCallback(store_path, delete_checkpoints=True)],
                          eval_strategy="steps", eval_steps=2, save_strategy="steps",
                          load_best_model_at_end=True, metric_for_best_model="loss",
                          greater_is_better=True,  # the best is an early step here
                          save_total_limit=2)
    trainer.train()  # loads the best checkpoint's folder at the end: it must exist
    best = trainer.state.best_model_checkpoint
    assert best is not None
    assert _checkpoint_folders(out) == [os.path.basename(best)]
    store = tpde.Store(store_path)
    assert store.steps() == [2, 4, 6]
    assert store.verify().ok


def test_hf_callback_edge_cases(tmp_path):
    """Without a Trainer: other ranks, a missing folder, a folder that no
    longer matches its stored step (never deleted)."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from tpde.integrations.transformers import TpdeCallback

    out = tmp_path / "out"
    folder = out / "checkpoint-3"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "data.bin").write_bytes(b"\x01\x02" * 100)
    args = SimpleNamespace(output_dir=str(out), load_best_model_at_end=False)
    cb = TpdeCallback(tmp_path / "s.tpde", delete_checkpoints=True)

    cb.on_save(args, SimpleNamespace(is_world_process_zero=False, global_step=3), None)
    assert not (tmp_path / "s.tpde").exists()  # other ranks never open the store

    with pytest.warns(UserWarning, match="no checkpoint folder"):
        cb.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=5), None)

    class Tamper(TpdeCallback):  # the folder changes between add and check
        def _add(self, folder, step):
            super()._add(folder, step)
            with open(os.path.join(folder, "config.json"), "w") as f:
                f.write("{ }")

    cb = Tamper(tmp_path / "s.tpde", delete_checkpoints=True)
    with pytest.warns(UserWarning, match="config.json: stored bytes differ.*kept"):
        cb.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=3), None)
    assert folder.is_dir()
    assert tpde.Store(tmp_path / "s.tpde").files(3)["config.json"] == b"{}"
    assert tpde.Store(tmp_path / "s.tpde").files(3)["sub/data.bin"] == b"\x01\x02" * 100


# -- PyTorch Lightning ---------------------------------------------------------


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        pl = pytest.importorskip("pytorch_lightning")
    return pl


def _lit_parts(pl):
    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _i):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    return Regression, data


def _lit_trainer(pl, plugin, callbacks, max_epochs=3):
    return pl.Trainer(max_epochs=max_epochs, plugins=[plugin], callbacks=callbacks,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", deterministic=True, num_sanity_val_steps=0)


def _assert_same(a, b, where="checkpoint"):
    """``a`` and ``b`` are equal: tensors by dtype, shape and value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_lightning_checkpoint_io(tmp_path):
    pl = _lightning()
    from tpde.integrations.lightning import TpdeCheckpointIO, read_pointer

    Regression, data = _lit_parts(pl)
    saved = {}

    class Recording(TpdeCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            saved[os.path.basename(path)] = copy.deepcopy(checkpoint)
            super().save_checkpoint(checkpoint, path, storage_options)

    ckpts, store_path = tmp_path / "ckpts", tmp_path / "run.tpde"
    pl.seed_everything(0)
    model = Regression()
    mc = pl.callbacks.ModelCheckpoint(dirpath=ckpts, save_top_k=-1, every_n_epochs=1)
    _lit_trainer(pl, Recording(store_path), [mc]).fit(model, data)

    names = sorted(os.listdir(ckpts))
    assert names == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    store = tpde.Store(store_path)
    assert store.steps() == [4, 8, 12]
    io = TpdeCheckpointIO(store_path)
    for name in names:
        pointer = read_pointer(ckpts / name)
        assert pointer == (os.path.abspath(store_path), saved[name]["global_step"])
        assert json.loads((ckpts / name).read_text()) == {
            "tpde_store": os.path.abspath(store_path), "step": pointer[1]}
        # Everything Lightning handed over comes back: weights, Adam state,
        # loops, callback state.
        _assert_same(saved[name], io.load_checkpoint(str(ckpts / name)))
    assert not torch.equal(saved[names[0]]["state_dict"]["layer.weight"],
                           saved[names[-1]]["state_dict"]["layer.weight"])
    _assert_same(model.state_dict(), io.load_checkpoint(ckpts / names[-1])["state_dict"])

    # Resume from the step-8 pointer: the model starts from the stored weights.
    started = {}

    class Start(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            started.update({k: v.clone() for k, v in pl_module.state_dict().items()})
            started["global_step"] = trainer.global_step

    resumed = Regression()
    trainer = _lit_trainer(pl, TpdeCheckpointIO(store_path), [
        pl.callbacks.ModelCheckpoint(dirpath=ckpts, save_top_k=-1, every_n_epochs=1), Start()],
        max_epochs=4)
    trainer.fit(resumed, data, ckpt_path=str(ckpts / "epoch=1-step=8.ckpt"))
    assert started.pop("global_step") == 8
    _assert_same(saved["epoch=1-step=8.ckpt"]["state_dict"], started)
    assert trainer.global_step == 16
    assert tpde.Store(store_path).steps() == [4, 8, 12, 16]
    assert tpde.Store(store_path).verify().ok


def test_lightning_removal(tmp_path):
    pl = _lightning()
    from tpde.integrations.lightning import TpdeCheckpointIO, read_pointer

    Regression, data = _lit_parts(pl)
    ckpts, store_path = tmp_path / "ckpts", tmp_path / "run.tpde"
    pl.seed_everything(0)
    mc = pl.callbacks.ModelCheckpoint(dirpath=ckpts, save_top_k=1, save_last=True)
    _lit_trainer(pl, TpdeCheckpointIO(store_path), [mc]).fit(Regression(), data)
    # The removed epochs are gone from the store too; last.ckpt and the kept
    # top-1 checkpoint share step 12.
    assert sorted(os.listdir(ckpts)) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    assert read_pointer(ckpts / "last.ckpt")[1] == 12
    store = tpde.Store(store_path)
    assert store.steps() == [12]

    io = TpdeCheckpointIO(store_path)
    ck = io.load_checkpoint(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 12 and ck["state_dict"]["layer.weight"].device.type == "cpu"
    # Spawned processes get a copy of the plugin; it reopens the store.
    assert pickle.loads(pickle.dumps(io)).store.steps() == [12]
    io.remove_checkpoint(ckpts / "epoch=2-step=12.ckpt")
    assert store.steps() == [12]  # last.ckpt still names it
    io.remove_checkpoint(ckpts / "last.ckpt")
    assert store.steps() == []
    assert os.listdir(ckpts) == []

    # A regular torch checkpoint loads and removes as with the default plugin.
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, plain)
    _assert_same(io.load_checkpoint(plain), {"state_dict": {"w": torch.ones(2)},
                                             "global_step": 3})
    io.remove_checkpoint(plain)
    assert not plain.exists()
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(plain)
