//! The symbols coder (codecs 5 and 6: 8 or 32 states) on its own: a float
//! chunk of at least 4096 elements (or, with the mode's top bit, enough for
//! 32 states), derived from the input, against a reference derived from it;
//! encoded with `encode_chunk` and decoded back byte for byte; then the
//! payload mutated at positions the input gives, and the input's tail taken
//! as a payload: decoding either must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tpde::codec::chunk::{decode_chunk, encode_chunk, ChunkCoding, ChunkParams, Codec, Positions};
use tpde::codec::transform::Transform;
use tpde::source::dtype::Family;

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, size, seed0, seed1], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    // F32, BF16 or F16 (the exponent fields of their references).
    let (width, exponent) = match mode % 3 {
        0 => (4usize, (23u8, 8u8)),
        1 => (2, (7, 8)),
        _ => (2, (10, 5)),
    };
    let n = if mode & 0x80 != 0 {
        140_000 + usize::from(size) * 7
    } else {
        4096 + usize::from(size) * 7
    };
    // Weight-like references: small magnitudes around zero (a few bits
    // from the input change the scale), every sign.
    let mut x = u64::from(u16::from_le_bytes([seed0, seed1])) | 1 << 32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let reference: Vec<u8> = (0..n)
        .flat_map(|_| {
            let v = ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
            if width == 4 {
                v.to_le_bytes().to_vec()
            } else if exponent.1 == 8 {
                half::bf16::from_f32(v).to_le_bytes().to_vec()
            } else {
                half::f16::from_f32(v).to_le_bytes().to_vec()
            }
        })
        .collect();
    // The current chunk: each input byte pair adds a small step to the low
    // bytes of an element (dense when the pairs are many), or, when the high
    // bit of its first byte is set, writes raw bits (NaNs, infinities, ...).
    let mut cur = reference.clone();
    let mut step = 0usize;
    for p in rest.chunks_exact(2) {
        step = (step + usize::from(p[0] & 0x3f) + 1) % n;
        let e = &mut cur[step * width..(step + 1) * width];
        if p[0] & 0x80 != 0 {
            e[width - 1] = p[1];
        } else {
            e[0] = e[0].wrapping_add(p[1]);
        }
        // Spread small changes over the following elements too.
        if p[0] & 0x40 != 0 {
            for k in 1..64usize {
                let i = (step + k) % n;
                cur[i * width] = cur[i * width].wrapping_add(p[1] >> (k % 8));
            }
        }
    }
    let params = ChunkParams {
        width,
        family: Family::Float,
        level: 1,
        exponent: Some(exponent),
        fine_classes: true,
    };
    let (coding, payload) = encode_chunk(&cur, Some(&reference), params).expect("encode");
    let mut out = vec![0u8; cur.len()];
    decode_chunk(&coding, &payload, Some(&reference), &mut out).expect("decode");
    assert!(out == cur, "round trip");

    // Mutations of a symbols payload, and the input's tail as one.
    let symbols = ChunkCoding {
        codec: if coding.codec.is_symbols() {
            coding.codec
        } else if mode & 0x40 != 0 {
            Codec::Symbols32
        } else {
            Codec::Symbols
        },
        transform: Transform::Ulp,
        positions: Positions::Dense,
        width: width as u8,
        nnz: coding.nnz,
    };
    if coding.codec.is_symbols() && !payload.is_empty() {
        let mut bad = payload.clone();
        for p in rest.chunks_exact(3).take(4) {
            let at = usize::from(u16::from_le_bytes([p[0], p[1]])) % bad.len();
            bad[at] ^= p[2] | 1;
        }
        let _ = decode_chunk(&symbols, &bad, Some(&reference), &mut out);
        let cut = usize::from(size) % payload.len();
        let _ = decode_chunk(&symbols, &payload[..cut], Some(&reference), &mut out);
    }
    let _ = decode_chunk(&symbols, rest, Some(&reference), &mut out);
});
