"""Writes ref.safetensors and cur.safetensors (run once, 2026-12-03), the
inputs of the frozen format version 5 samples: a dense float delta of F32
weights large enough for the symbols on 32 states (codec 6), dense BF16 and
F16 deltas on 8 (codec 5), with NaN payloads, -0.0, infinities and
subnormals among the F32 elements, unchanged elements, a sparse delta and an
unchanged tensor. The .tpde files made from them are never regenerated (see
README.md).
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


def bits_f32(b):
    return struct.pack("<I", b)


def bf16(x):
    # Round to nearest even from the f32 bits (finite inputs).
    b = f32_bits(x)
    b += 0x7FFF + ((b >> 16) & 1)
    return struct.pack("<H", (b >> 16) & 0xFFFF)


rng = random.Random(2026_12_03_5)
SPECIAL = [0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x00000000]


def f32_pair(n):
    ref, cur = bytearray(), bytearray()
    for i in range(n):
        w = rng.gauss(0, 0.05)
        r = f32_bits(w)
        u = rng.random()
        if u < 0.3:
            c = r
        elif u < 0.301:
            c = rng.choice(SPECIAL)
        elif u < 0.302:
            r, c = rng.choice(SPECIAL), f32_bits(w)
        else:
            c = f32_bits(w + rng.gauss(0, 1e-5))
        ref += bits_f32(r)
        cur += bits_f32(c)
    return bytes(ref), bytes(cur)


def half_pair(n, conv, scale):
    ref, cur = bytearray(), bytearray()
    for i in range(n):
        w = rng.gauss(0, 0.05)
        ref += conv(w)
        cur += conv(w + rng.gauss(0, scale))
    return bytes(ref), bytes(cur)


w_ref, w_cur = f32_pair(100_000)
b_ref, b_cur = half_pair(50_000, bf16, 2e-4)
f_ref, f_cur = half_pair(20_000, lambda x: struct.pack("<e", x), 2e-5)
s_ref = struct.pack("<8192f", *(rng.gauss(0, 1) for _ in range(8192)))
s_cur = bytearray(s_ref)
for i in rng.sample(range(8192), 80):
    s_cur[4 * i:4 * i + 4] = struct.pack("<f", rng.gauss(0, 1))
k = struct.pack("<5000f", *(rng.gauss(0, 1) for _ in range(5000)))

save("ref.safetensors", [
    ("w", "F32", [500, 200], w_ref),
    ("b", "BF16", [50_000], b_ref),
    ("f", "F16", [20_000], f_ref),
    ("s", "F32", [8192], s_ref),
    ("k", "F32", [5000], k),
])
save("cur.safetensors", [
    ("w", "F32", [500, 200], w_cur),
    ("b", "BF16", [50_000], b_cur),
    ("f", "F16", [20_000], f_cur),
    ("s", "F32", [8192], bytes(s_cur)),
    ("k", "F32", [5000], k),
])
