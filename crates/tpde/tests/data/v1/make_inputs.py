"""Writes the inputs of the frozen format-v1 samples (run once, 2026-11-30).

ref.safetensors and cur.safetensors: a few tensors of several dtypes with
special float values; cur is ref with sparse and dense changes, one tensor
added, one removed and one reshaped. key.tpde and delta.tpde were then made
with `tpde encode` (see README.md beside this file) and are never regenerated:
tests decode them forever.
"""
import json
import math
import random
import struct


def save(path, tensors, metadata):
    header = {"__metadata__": metadata}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


rng = random.Random(1234)
w = [rng.gauss(0, 0.05) for _ in range(3000)]
specials = [float("nan"), -0.0, float("inf"), -float("inf"), 1e-45, 3.4e38, 0.0, -1.5]
emb = [rng.gauss(0, 1) for _ in range(1024)]
ids = [rng.randrange(1 << 30) for _ in range(300)]
bf16 = bytes(rng.randrange(256) for _ in range(2 * 700))

ref = [
    ("layer.weight", "F32", [30, 100], struct.pack("<3000f", *w)),
    ("special", "F32", [8], struct.pack("<8f", *specials)),
    ("emb", "F64", [32, 32], struct.pack("<1024d", *emb)),
    ("ids", "I64", [300], struct.pack("<300q", *ids)),
    ("half", "BF16", [700], bf16),
    ("removed", "U8", [5], bytes([1, 2, 3, 4, 5])),
    ("scalar", "F32", [], struct.pack("<f", 0.5)),
    ("empty", "F16", [0, 4], b""),
]

w2 = [x + rng.gauss(0, 1e-3) for x in w]  # dense change
emb2 = list(emb)
for i in rng.sample(range(1024), 10):  # sparse change
    emb2[i] += 1.0
nan_payload = struct.pack("<I", 0x7FC00123)  # a NaN with a payload
special2 = nan_payload + struct.pack("<7f", 0.0, float("inf"), -float("inf"), 1.4e-45, -3.4e38, -0.0, -1.5)
half2 = bytearray(bf16)
for i in range(0, len(half2), 50):
    half2[i] ^= 1

cur = [
    ("layer.weight", "F32", [30, 100], struct.pack("<3000f", *w2)),
    ("special", "F32", [8], special2),
    ("emb", "F64", [32, 32], struct.pack("<1024d", *emb2)),
    ("ids", "I64", [20, 15], struct.pack("<300q", *ids)),  # reshaped
    ("half", "BF16", [700], bytes(half2)),
    ("added", "I32", [4], struct.pack("<4i", -1, 0, 1, 2**31 - 1)),
    ("scalar", "F32", [], struct.pack("<f", math.pi)),
    ("empty", "F16", [0, 4], b""),
]
save("ref.safetensors", ref, {"step": "100"})
save("cur.safetensors", cur, {"step": "200"})
