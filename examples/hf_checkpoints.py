#!/usr/bin/env python3
"""Turn a run of examples/train_checkpoints.py into Hugging Face Trainer-style
checkpoint folders, laid out and written as transformers.Trainer writes them:

    OUT/checkpoint-N/model.safetensors    byte-for-byte copy of weights/epoch-NN.safetensors
    OUT/checkpoint-N/optimizer.pt         torch.optim.Adam(...).state_dict(), from adam/epoch-NN
    OUT/checkpoint-N/scheduler.pt         constant LambdaLR state_dict after N steps
    OUT/checkpoint-N/rng_state.pth        python / numpy / torch CPU RNG states (seeded with N)
    OUT/checkpoint-N/trainer_state.json   global_step, epoch, one log_history entry per epoch
    OUT/checkpoint-N/training_args.bin    the arguments (a plain dict, where the Trainer
                                          pickles its TrainingArguments)
    OUT/checkpoint-N/config.json          the model's shape (the same in every checkpoint)

N is the global step: the Adam "step" count stored in adam/epoch-NN (0 for
epoch 00, which has no Adam file and gets the empty state of a fresh
optimizer). The safetensors __metadata__ does not record the steps per epoch.

optimizer.pt is made exactly: the model of train_checkpoints.py is rebuilt
from the preset named in the metadata, a real Adam on it loads the state
(parameter indices in named_parameters() order) and its state_dict() is saved.
The output is deterministic except for the serialization_id torch.save writes
into each .pt/.pth/.bin archive.

Examples:

    ~/.cache/tpde/venv/bin/python examples/hf_checkpoints.py --run examples/data/tiny --out /tmp/tiny-hf
    ~/.cache/tpde/venv/bin/python examples/hf_checkpoints.py --run /tmp/tpde-notes --out /tmp/tpde-notes-hf

Needs torch, numpy and safetensors.
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_checkpoints import PRESETS, TinyLM  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def epoch_files(folder):
    """{epoch: path} of the epoch-NN.safetensors files in folder."""
    out = {}
    for name in os.listdir(folder):
        m = re.fullmatch(r"epoch-(\d+)\.safetensors", name)
        if m:
            out[int(m.group(1))] = os.path.join(folder, name)
    return out


def build_model(weights_path, meta):
    """The train_checkpoints.py model for this run; checks that its parameters
    are exactly the tensors of the weights file (names and shapes)."""
    cfg = PRESETS[meta["preset"]]
    with safe_open(weights_path, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    pos = "learned" if "pos_emb.weight" in shapes else "sinusoidal"
    model = TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], cfg["ff"], cfg["seq"], pos=pos)
    model = model.to(DTYPES[meta["dtype"]])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != shapes:
        raise SystemExit(f"{weights_path}: tensors do not match the {meta['preset']!r} preset's model")
    return model, dict(cfg, pos=pos)


def adam_step(path):
    """The optimizer step count of an Adam file (the same for every parameter)."""
    with safe_open(path, framework="pt") as f:
        steps = {f.get_tensor(k).item() for k in f.keys() if k.endswith(".step")}
    if len(steps) != 1:
        raise SystemExit(f"{path}: parameters have different step counts {sorted(steps)}")
    return int(steps.pop())


def optimizer_state(model, lr, adam_path):
    """Adam(model.parameters(), lr).state_dict() holding the state of adam_path
    (None: a fresh optimizer, empty state)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sd = opt.state_dict()
    if adam_path is not None:
        tensors = load_file(adam_path)
        names = [name for name, _ in model.named_parameters()]
        if set(tensors) != {f"{n}.{k}" for n in names for k in ("step", "exp_avg", "exp_avg_sq")}:
            raise SystemExit(f"{adam_path}: tensor names do not match the model's parameters")
        # Key order as in Adam's own state: step, exp_avg, exp_avg_sq. Clones,
        # so that torch.save writes each tensor's own storage only.
        sd["state"] = {
            i: {k: tensors[f"{n}.{k}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
            for i, n in enumerate(names)
        }
        opt.load_state_dict(sd)
        sd = opt.state_dict()
    return sd


def scheduler_state(lr, steps):
    """state_dict of the Trainer's "constant" schedule (LambdaLR) after `steps`
    optimizer steps."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    opt.step()  # no gradient, so a no-op; marks the optimizer as stepped first
    for _ in range(steps):
        sched.step()
    return sched.state_dict()


def rng_state(seed):
    """The RNG states the Trainer saves, after seeding everything with seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}


def write_json(path, obj):
    """As the Trainer writes trainer_state.json and config.json."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def trainer_state(epoch, step, num_epochs, max_steps, batch, log_history):
    return {
        "best_global_step": None,
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": float(epoch),
        "eval_steps": 500,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": list(log_history),
        "logging_steps": 500,
        "max_steps": max_steps,
        "num_input_tokens_seen": 0,
        "num_train_epochs": num_epochs,
        "save_steps": 500,
        "stateful_callbacks": {
            "TrainerControl": {
                "args": {
                    "should_epoch_stop": False,
                    "should_evaluate": False,
                    "should_log": False,
                    "should_save": True,
                    "should_training_stop": False,
                },
                "attributes": {},
            }
        },
        "total_flos": 0.0,  # the Trainer counts FLOPs only for PreTrainedModel
        "train_batch_size": batch,
        "trial_name": None,
        "trial_params": None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="folder of a train_checkpoints.py run (weights/ and adam/)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint-N/ folders are made in it)")
    ap.add_argument("--limit", type=int, help="write only the first K checkpoints")
    args = ap.parse_args()

    weights = epoch_files(os.path.join(args.run, "weights"))
    adam = epoch_files(os.path.join(args.run, "adam"))
    epochs = sorted(weights)
    if not epochs or epochs[0] != 0:
        raise SystemExit(f"{args.run}/weights: no epoch-00.safetensors")
    missing = [e for e in epochs[1:] if e not in adam]
    if missing:
        raise SystemExit(f"{args.run}/adam: no Adam state for epochs {missing}")

    meta0 = read_metadata(weights[0])
    lr = float(meta0["lr"])
    model, cfg = build_model(weights[0], meta0)
    steps = {e: adam_step(adam[e]) if e else 0 for e in epochs}
    print(f"run {args.run}: preset={meta0['preset']} dtype={meta0['dtype']} lr={lr} "
          f"params={sum(p.numel() for p in model.parameters()):,} epochs 0..{epochs[-1]}", flush=True)
    print(f"checkpoint numbers: global steps from the Adam state's step tensors "
          f"({steps[epochs[1]] if len(epochs) > 1 else 0} steps in epoch 1); "
          f"the safetensors metadata has no steps per epoch", flush=True)

    config = {
        "architectures": ["TinyLM"],
        "hidden_size": cfg["dim"],
        "intermediate_size": cfg["ff"],
        "max_position_embeddings": cfg["seq"],
        "model_type": "tpde-tinylm",
        "num_attention_heads": cfg["heads"],
        "num_hidden_layers": cfg["layers"],
        "position_embedding": cfg["pos"],
        "torch_dtype": str(DTYPES[meta0["dtype"]]).removeprefix("torch."),
        "vocab_size": cfg["vocab"],
    }
    training_args = {
        "output_dir": args.out,
        "num_train_epochs": epochs[-1],
        "per_device_train_batch_size": cfg["batch"],
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "optim": "torch.optim.Adam",
        "logging_strategy": "epoch",
        "save_strategy": "epoch",
        "seed": int(meta0["seed"]),
    }

    t_all = time.time()
    log_history = []
    for epoch in epochs[: args.limit]:
        t0 = time.time()
        step = steps[epoch]
        meta = read_metadata(weights[epoch])
        loss = float(meta.get("train_loss", "nan"))
        if epoch and math.isfinite(loss):
            log_history.append({"epoch": float(epoch), "learning_rate": lr, "loss": round(loss, 4), "step": step})

        ckpt = os.path.join(args.out, f"checkpoint-{step}")
        os.makedirs(ckpt, exist_ok=True)
        shutil.copyfile(weights[epoch], os.path.join(ckpt, "model.safetensors"))
        torch.save(optimizer_state(model, lr, adam.get(epoch)), os.path.join(ckpt, "optimizer.pt"))
        torch.save(scheduler_state(lr, step), os.path.join(ckpt, "scheduler.pt"))
        torch.save(rng_state(step), os.path.join(ckpt, "rng_state.pth"))
        write_json(os.path.join(ckpt, "trainer_state.json"),
                   trainer_state(epoch, step, epochs[-1], steps[epochs[-1]], cfg["batch"], log_history))
        torch.save(training_args, os.path.join(ckpt, "training_args.bin"))
        write_json(os.path.join(ckpt, "config.json"), config)
        print(f"epoch {epoch:2d} -> {ckpt}  ({time.time() - t0:.1f}s)", flush=True)
    print(f"done in {time.time() - t_all:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
