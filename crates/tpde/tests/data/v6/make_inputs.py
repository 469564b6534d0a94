"""Writes ref.safetensors and cur.safetensors (run once, 2026-12-04), the
inputs of the frozen format version 6 samples (fine gap classes, positions
4): sparse deltas whose changes fall at random (BF16 at 8%, F32 at 3%, I32
at 5%, with NaN payloads, -0.0, infinities and subnormals among the changed
F32 values), a dense F32 delta (symbols) and an unchanged tensor. The .tpde
files made from them are never regenerated (see README.md).
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


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


rng = random.Random(2026_12_04_6)
SPECIAL = [0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF]

# BF16: 300k elements, 8% moved by 1 to 3 units in the last place.
b_ref = [f32_bits(rng.gauss(0, 0.02)) >> 16 for _ in range(300_000)]
b_cur = list(b_ref)
for i in rng.sample(range(300_000), 24_000):
    b_cur[i] = (b_cur[i] + rng.choice([-3, -2, -1, 1, 2, 3])) & 0xFFFF
# F32: 30k elements, 3% changed (a few to special values).
s_ref = [f32_bits(rng.gauss(0, 0.05)) for _ in range(30_000)]
s_cur = list(s_ref)
for i in rng.sample(range(30_000), 900):
    s_cur[i] = rng.choice(SPECIAL) if rng.random() < 0.05 else f32_bits(struct.unpack("<f", struct.pack("<I", s_ref[i]))[0] + rng.gauss(0, 1e-4))
# I32: 30k step counters and indices, 5% changed.
i_ref = [rng.randrange(-(1 << 31), 1 << 31) for _ in range(30_000)]
i_cur = list(i_ref)
for i in rng.sample(range(30_000), 1_500):
    i_cur[i] = (i_cur[i] + rng.randrange(1, 1000) + (1 << 31)) % (1 << 32) - (1 << 31)
# Dense F32: 20k elements, all moved a little.
d_ref = [rng.gauss(0, 0.05) for _ in range(20_000)]
d_cur = [x + rng.gauss(0, 1e-5) for x in d_ref]
k = struct.pack("<4000f", *(rng.gauss(0, 1) for _ in range(4000)))

u16 = lambda v: struct.pack(f"<{len(v)}H", *v)
u32 = lambda v: struct.pack(f"<{len(v)}I", *v)
i32 = lambda v: struct.pack(f"<{len(v)}i", *v)
f32 = lambda v: struct.pack(f"<{len(v)}f", *v)
save("ref.safetensors", [
    ("b", "BF16", [300_000], u16(b_ref)),
    ("s", "F32", [300, 100], u32(s_ref)),
    ("i", "I32", [30_000], i32(i_ref)),
    ("d", "F32", [20_000], f32(d_ref)),
    ("k", "F32", [4000], k),
])
save("cur.safetensors", [
    ("b", "BF16", [300_000], u16(b_cur)),
    ("s", "F32", [300, 100], u32(s_cur)),
    ("i", "I32", [30_000], i32(i_cur)),
    ("d", "F32", [20_000], f32(d_cur)),
    ("k", "F32", [4000], k),
])
