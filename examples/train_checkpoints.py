#!/usr/bin/env python3
"""Train a small Transformer language model on synthetic random tokens and
write one checkpoint per epoch (or every K optimizer steps) as safetensors
files.

This reproduces the experiment of the research notes (see the "What the data
says" section of DESIGN.md): token embedding + learned positional embedding,
N x nn.TransformerEncoderLayer (batch_first, causal mask), untied Linear head,
Adam, cross-entropy on next-token prediction over a fixed set of random
sequences that is reshuffled every epoch.

Output layout (epoch numbers zero-padded so that lexical order is step order):

    OUT/weights/epoch-00.safetensors   initial weights, before any training
    OUT/weights/epoch-01.safetensors   weights after epoch 1
    ...
    OUT/adam/epoch-01.safetensors      Adam state after epoch 1: for every
                                       trainable parameter P the tensors
                                       "P.exp_avg", "P.exp_avg_sq" and
                                       "P.step" (0-d float32)
    ...

Every file carries the safetensors metadata "epoch" and "train_loss" (plus the
preset, dtype, lr and seed). The output is byte-for-byte deterministic for a
given seed, preset, dtype, options and --threads (the header is written in a
canonical order, because safetensors itself writes the metadata map in a
random order), and all the files of one kind in a run have the same size and
layout (the header is padded to a length that does not depend on the metadata
values).

Other training regimes (none of them changes the output of a run without the
option):

  --save-every-steps K   a checkpoint every K optimizer steps instead of one
                         per epoch, named step-NNNNNN.safetensors (step-000000:
                         before training) in the same weights/ and adam/
                         folders; training lasts --epochs epochs, or exactly
                         --max-steps steps (the last epoch then possibly
                         partial). The end of training is always checkpointed,
                         even when it is not a multiple of K. Metadata: "step",
                         "epoch" (fractional: steps / steps per epoch) and
                         "train_loss" (mean over the steps since the previous
                         checkpoint).
  --freeze-most          fine-tuning with most layers frozen: only the last
                         Transformer layer and the output head are trained
                         (the model has no final norm); the weights files still
                         hold every parameter (the frozen ones never change),
                         the Adam files only the trainable ones. Metadata
                         "freeze": "most".
  --init FILE            start from the weights in FILE (a weights file of a
                         run of the same preset, e.g. its last checkpoint)
                         instead of the random initialization: with
                         --freeze-most, a real fine-tune. Metadata "init": the
                         file's name.

Examples:

    python examples/train_checkpoints.py --preset tiny --out examples/data/tiny
    python examples/train_checkpoints.py --preset notes --out /tmp/tpde-notes --threads 2
    python examples/train_checkpoints.py --preset notes --dtype bf16 --out /tmp/notes-bf16
    python examples/train_checkpoints.py --preset small --threads 2 --epochs 2 \
        --save-every-steps 10 --max-steps 100 --out /tmp/small-steps
    python examples/train_checkpoints.py --preset small --threads 2 --freeze-most \
        --init /tmp/small/weights/epoch-10.safetensors --seed 1 --out /tmp/small-frozen

examples/regimes.sh makes one run per regime (notes FP32, BF16, frozen
fine-tuning, a checkpoint every few steps, BF16 with a small learning rate).

Needs torch, numpy and safetensors.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file as st_load
from safetensors.torch import save as st_save

PRESETS = {
    # The research notes' model: about 8.3M parameters, 313 steps per epoch.
    "notes": dict(vocab=10000, dim=256, heads=8, layers=4, ff=1024, seq=64,
                  batch=32, samples=10000, epochs=10, lr=1e-3, threads=None),
    # Small enough to bundle in the repository (examples/data/tiny): 135,040
    # parameters; vocabulary 256 and 3 epochs keep the folder (4 weight files
    # + 3 Adam files, 5.4 MB) under 6 MB. One thread by default, so that the
    # plain command reproduces the bundled files (float results depend on the
    # thread count).
    "tiny": dict(vocab=256, dim=64, heads=4, layers=2, ff=256, seq=32,
                 batch=16, samples=1024, epochs=3, lr=1e-3, threads=1),
    # For the regimes of examples/regimes.sh, each of which must run in a few
    # minutes on 2 CPU cores: 0.92M parameters, 64 steps per epoch.
    "small": dict(vocab=2000, dim=128, heads=4, layers=2, ff=512, seq=32,
                  batch=32, samples=2048, epochs=10, lr=1e-3, threads=None),
}


class TinyLM(nn.Module):
    def __init__(self, vocab, dim, heads, layers, ff, seq, dropout=0.1, pos="learned"):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_kind = pos
        if pos == "learned":
            self.pos_emb = nn.Embedding(seq, dim)
        else:
            # Fixed sinusoidal table: a non-persistent buffer, so it is not a
            # parameter and is not written to the checkpoints.
            position = torch.arange(seq, dtype=torch.float32).unsqueeze(1)
            div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
            table = torch.zeros(seq, dim)
            table[:, 0::2] = torch.sin(position * div)
            table[:, 1::2] = torch.cos(position * div)
            self.register_buffer("pos_table", table, persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=ff, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer(
            "causal_mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False
        )

    def forward(self, x):
        n = x.shape[1]
        if self.pos_kind == "learned":
            pos = self.pos_emb(torch.arange(n, device=x.device))
        else:
            pos = self.pos_table[:n].to(self.tok_emb.weight.dtype)
        h = self.tok_emb(x) + pos
        mask = self.causal_mask[:n, :n].to(h.dtype)
        h = self.encoder(h, mask=mask, is_causal=True)
        return self.head(h)


METADATA_ROOM = 256  # bytes of header reserved for the metadata


def canonical_safetensors(tensors, metadata):
    """safetensors.torch.save, with the header rewritten in a canonical form.

    The safetensors library serializes the metadata map in a random (hash)
    order, so two identical runs would give files that differ in the header;
    and the header length would follow the length of the metadata values
    (e.g. the loss), so the files of one run could differ in size and layout.
    Here "__metadata__" comes first with sorted keys, the tensor entries keep
    the library's order and offsets, and the header is padded with spaces (as
    the format allows) to a length that depends only on the tensor entries:
    all the files of one run have the same size and the same data offsets."""
    raw = st_save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = dict(sorted(header.pop("__metadata__", {}).items()))
    entries = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    target = (len(entries) + METADATA_ROOM + 7) // 8 * 8
    if len(text) > target:
        raise RuntimeError("metadata too long for the reserved header room")
    text += b" " * (target - len(text))
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def write_file(path, tensors, metadata):
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    data = canonical_safetensors(tensors, {k: str(v) for k, v in metadata.items()})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    # Sanity check: the library reads back what we wrote.
    with safe_open(path, framework="pt") as f:
        assert set(f.keys()) == set(tensors), path


def adam_state(model, opt):
    """The Adam state of every parameter that has one (the trainable ones)."""
    out = {}
    for name, p in model.named_parameters():
        st = opt.state.get(p)
        if not st:
            continue
        out[name + ".exp_avg"] = st["exp_avg"]
        out[name + ".exp_avg_sq"] = st["exp_avg_sq"]
        step = st["step"]
        step = step.detach().to(torch.float32).reshape(()) if torch.is_tensor(step) else torch.tensor(float(step))
        out[name + ".step"] = step
    return out


def trainable_under_freeze_most(model):
    """Names of the parameters that --freeze-most leaves trainable: those of
    the last Transformer layer and of the output head (TinyLM has no final
    norm)."""
    last = f"encoder.layers.{len(model.encoder.layers) - 1}."
    return [n for n, _ in model.named_parameters() if n.startswith(last) or n.startswith("head.")]


def load_init(model, path):
    """Loads the weights file at path into model (same parameter names and
    shapes; the values are cast to the model's dtype)."""
    state = st_load(path)
    own = model.state_dict()
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise SystemExit(f"--init {path}: not a weights file of this model "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, t in state.items():
        if t.shape != own[name].shape:
            raise SystemExit(f"--init {path}: {name} has shape {tuple(t.shape)}, "
                             f"the model {tuple(own[name].shape)} (another preset?)")
    model.load_state_dict(state)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--out", required=True, help="output folder (weights/ and adam/ are made in it)")
    ap.add_argument("--epochs", type=int, help="override the preset's epoch count")
    ap.add_argument("--samples", type=int, help="override the preset's samples per epoch")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the model is converted to bfloat16 and trained in bfloat16")
    ap.add_argument("--lr", type=float, help="override the preset's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int,
                    help="torch.set_num_threads (results depend on it; preset tiny defaults to 1, "
                         "notes and small to torch's default)")
    ap.add_argument("--pos", choices=["learned", "sinusoidal"], default="learned",
                    help="positional embedding (default learned; sinusoidal is not a parameter)")
    ap.add_argument("--no-adam", action="store_true", help="do not write the optimizer state")
    ap.add_argument("--freeze-most", action="store_true",
                    help="train only the last Transformer layer and the output head (requires_grad=False "
                         "elsewhere; Adam over the trainable parameters only, so the adam files hold "
                         "only theirs; the weights files still hold every parameter)")
    ap.add_argument("--init", metavar="FILE",
                    help="start from this weights file (of a run of the same preset, e.g. its last "
                         "checkpoint) instead of the random initialization; with --freeze-most, a "
                         "fine-tune")
    ap.add_argument("--save-every-steps", type=int, metavar="K",
                    help="write a checkpoint every K optimizer steps (weights/step-NNNNNN.safetensors, "
                         "step-000000 before training, and adam/step-NNNNNN.safetensors) instead of one "
                         "per epoch; the end of training is always written")
    ap.add_argument("--max-steps", type=int, metavar="N",
                    help="with --save-every-steps: train exactly N optimizer steps (as many epochs as "
                         "that takes, the last one possibly partial) instead of --epochs epochs")
    args = ap.parse_args()
    if args.save_every_steps is not None and args.save_every_steps < 1:
        ap.error("--save-every-steps must be at least 1")
    if args.max_steps is not None:
        if args.save_every_steps is None:
            ap.error("--max-steps needs --save-every-steps")
        if args.max_steps < 1:
            ap.error("--max-steps must be at least 1")

    cfg = dict(PRESETS[args.preset])
    for key in ("epochs", "samples", "lr", "threads"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    model = TinyLM(cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], cfg["ff"], cfg["seq"], pos=args.pos)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    if args.init:
        load_init(model, args.init)
    if args.freeze_most:
        keep = set(trainable_under_freeze_most(model))
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])

    # A fixed set of random sequences (seq + 1 tokens: input and shifted target),
    # reshuffled each epoch, as in the notes ("synthetic random sequences, 10k samples").
    gen = torch.Generator().manual_seed(args.seed + 1)
    data = torch.randint(0, cfg["vocab"], (cfg["samples"], cfg["seq"] + 1), generator=gen)
    steps = (cfg["samples"] + cfg["batch"] - 1) // cfg["batch"]
    every = args.save_every_steps
    total_steps = args.max_steps if args.max_steps is not None else cfg["epochs"] * steps
    n_epochs = (total_steps + steps - 1) // steps

    wdir = os.path.join(args.out, "weights")
    adir = os.path.join(args.out, "adam")
    os.makedirs(wdir, exist_ok=True)
    if not args.no_adam:
        os.makedirs(adir, exist_ok=True)

    # Metadata keys beyond the original ones only when their option is given,
    # so that the files of a plain run stay byte-identical.
    base_meta = {"preset": args.preset, "dtype": args.dtype, "seed": args.seed, "lr": cfg["lr"]}
    if args.freeze_most:
        base_meta["freeze"] = "most"
    if args.init:
        base_meta["init"] = os.path.basename(args.init)[-48:]
    extra = ""
    if args.freeze_most:
        extra += f" freeze=most trainable={n_trainable:,}"
    if args.init:
        extra += f" init={args.init}"
    if every:
        extra += f" save_every_steps={every} total_steps={total_steps}"
    print(
        f"preset={args.preset} dtype={args.dtype} params={n_params:,} ({n_params / 1e6:.2f}M) "
        f"vocab={cfg['vocab']} dim={cfg['dim']} heads={cfg['heads']} layers={cfg['layers']} "
        f"ff={cfg['ff']} seq={cfg['seq']} batch={cfg['batch']} samples={cfg['samples']} "
        f"steps/epoch={steps} epochs={n_epochs if every else cfg['epochs']} lr={cfg['lr']} "
        f"threads={torch.get_num_threads()} seed={args.seed} pos={args.pos}{extra}",
        flush=True,
    )

    def epoch_name(e):
        return f"epoch-{e:02d}.safetensors" if cfg["epochs"] < 100 else f"epoch-{e:03d}.safetensors"

    step_digits = max(6, len(str(total_steps)))

    def step_name(k):
        return f"step-{k:0{step_digits}d}.safetensors"

    def save(name, meta):
        write_file(os.path.join(wdir, name), dict(model.state_dict()), meta)
        if not args.no_adam:
            write_file(os.path.join(adir, name), adam_state(model, opt), meta)

    if every:
        write_file(os.path.join(wdir, step_name(0)), dict(model.state_dict()),
                   dict(base_meta, step=0, epoch=0, train_loss="nan"))
    else:
        write_file(os.path.join(wdir, epoch_name(0)), dict(model.state_dict()),
                   dict(base_meta, epoch=0, train_loss="nan"))

    t_all = time.time()
    global_step = 0
    win_total, win_count, t_win = 0.0, 0, time.time()  # since the last step checkpoint
    for epoch in range(1, n_epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(cfg["samples"], generator=gen)
        total, count = 0.0, 0
        for s in range(steps):
            if global_step == total_steps:
                break
            idx = perm[s * cfg["batch"] : (s + 1) * cfg["batch"]]
            batch = data[idx]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, cfg["vocab"]).float(), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            global_step += 1
            total += loss.item() * len(idx)
            count += len(idx)
            if every:
                win_total += loss.item() * len(idx)
                win_count += len(idx)
                if global_step % every == 0 or global_step == total_steps:
                    win_loss = win_total / win_count
                    save(step_name(global_step), dict(base_meta, step=global_step,
                                                      epoch=f"{global_step / steps:.4f}",
                                                      train_loss=f"{win_loss:.6f}"))
                    print(f"  step {global_step:{len(str(total_steps))}d}/{total_steps}  "
                          f"train_loss {win_loss:.4f}  time {time.time() - t_win:.1f}s", flush=True)
                    win_total, win_count, t_win = 0.0, 0, time.time()
        mean_loss = total / count
        dt = time.time() - t0
        if not every:
            save(epoch_name(epoch), dict(base_meta, epoch=epoch, train_loss=f"{mean_loss:.6f}"))
        print(f"epoch {epoch:2d}/{n_epochs}  train_loss {mean_loss:.4f}  time {dt:.1f}s", flush=True)
    if every:
        print(f"done: {global_step} steps ({n_epochs} epochs) in {time.time() - t_all:.1f}s, "
              f"output in {args.out}", flush=True)
    else:
        print(f"done: {cfg['epochs']} epochs in {time.time() - t_all:.1f}s, output in {args.out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
