"""Writes ref-b.safetensors and cur-b.safetensors (run once, 2026-11-30): a
dense F32 delta of small steps (its top byte plane is rANS-coded) and a BF16
tensor whose changes come in runs (gap classes). delta-b.tpde was then made
with `tpde encode cur-b.safetensors --ref ref-b.safetensors -o delta-b.tpde`
and is never regenerated.
"""
import json
import random
import struct


def save(path, tensors):
    header = {}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


rng = random.Random(99)
w = [rng.gauss(0, 0.05) for _ in range(50_000)]
w2 = [x + rng.gauss(0, 1e-5) for x in w]
b = bytearray(rng.randrange(256) for _ in range(2 * 40_000))
b2 = bytearray(b)
i = 0
while i < 40_000:
    if rng.random() < 0.01:
        for k in range(i, min(i + rng.randrange(1, 40), 40_000)):
            b2[2 * k] ^= rng.randrange(1, 4)
        i += 40
    i += 1
save("ref-b.safetensors", [("w", "F32", [50_000], struct.pack("<50000f", *w)), ("h", "BF16", [40_000], bytes(b))])
save("cur-b.safetensors", [("w", "F32", [50_000], struct.pack("<50000f", *w2)), ("h", "BF16", [40_000], bytes(b2))])
