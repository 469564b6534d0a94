//! Damaged and wrong inputs: truncations, bit flips, wrong or missing
//! references, inputs that are not safetensors or not `.tpde`. The decoder
//! must answer with an error, never panic, and never return wrong data.

mod common;

use common::{perturb_fraction, safetensors, sha256, small_chunks, Rng, Tensor};
use tpde::container::format::{digest, digest_hex, MAGIC};
use tpde::{EncodeOptions, Error};

/// A small delta: a few tensors, several chunks each (chunk size 64), with
/// delta, keyframe (new tensor), empty and 0-d tensors. Returns
/// (reference, original, container).
fn small_delta() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(100);
    let prev = vec![
        Tensor::new("w", "F32", &[40], rng.f32_weights(40, 0.02)),
        Tensor::random(&mut rng, "h", "BF16", &[40]),
        Tensor::random(&mut rng, "i", "I8", &[9]),
        Tensor::new("e", "F16", &[0], vec![]),
        Tensor::new("s", "F64", &[], 3.25f64.to_le_bytes().to_vec()),
    ];
    let mut cur = prev.clone();
    perturb_fraction(&mut rng, &mut cur[0].data, 4, 0.1);
    perturb_fraction(&mut rng, &mut cur[1].data, 2, 1.0);
    cur[4].data = (-0.0f64).to_le_bytes().to_vec();
    cur.push(Tensor::new("new", "U8", &[70], vec![7; 70]));
    let pf = safetensors(&prev, None);
    let cf = safetensors(&cur, Some(&[("k", "v")]));
    let packed = common::encode(&cf, Some(&pf), &small_chunks(64));
    let r = tpde::container::inspect::inspect(&packed).unwrap();
    let chunks_of = |name: &str| {
        let t = r.tensors.iter().find(|t| t.name == name).unwrap();
        t.raw_bytes.div_ceil(64)
    };
    assert!(chunks_of("w") > 1 && chunks_of("h") > 1);
    assert_eq!(common::decode(&packed, Some(&pf)).unwrap(), cf);
    (pf, cf, packed)
}

/// (reference, current, container) of a dense F32 delta large enough for
/// symbols on 32 states (codec 6, format version 5).
fn small_dense_delta() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(101);
    let prev = vec![Tensor::new(
        "w",
        "F32",
        &[70_000],
        rng.f32_weights(70_000, 0.02),
    )];
    let mut cur = prev.clone();
    perturb_fraction(&mut rng, &mut cur[0].data, 4, 1.0);
    let (pf, cf) = (safetensors(&prev, None), safetensors(&cur, None));
    let packed = common::encode(&cf, Some(&pf), &tpde::EncodeOptions::default());
    let r = tpde::container::inspect::inspect(&packed).unwrap();
    assert_eq!(r.tensors[0].coding, "symbols ulp");
    assert_eq!(common::decode(&packed, Some(&pf)).unwrap(), cf);
    (pf, cf, packed)
}

fn tensor_names(file: &[u8]) -> Vec<(String, Vec<u8>)> {
    let h = tpde::source::safetensors::parse(file).unwrap();
    let hl = h.header_len as usize;
    h.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                file[hl + t.begin as usize..hl + t.end as usize].to_vec(),
            )
        })
        .collect()
}

/// Outcome of decoding a damaged container.
#[derive(Debug, Default)]
struct Tally {
    errors: usize,
    /// Decodes that succeeded and gave the original back exactly.
    ok_exact: Vec<String>,
    /// Leaves `inspect` out (see `inspect_survives_index_damage`).
    skip_inspect: bool,
    calls: usize,
}

/// Decodes a damaged container every way there is (whole file, each tensor,
/// inspect) and checks that nothing panics and nothing returns wrong data.
fn check_damaged(
    damaged: &[u8],
    reference: &[u8],
    original: &[u8],
    tensors: &[(String, Vec<u8>)],
    what: &str,
    tally: &mut Tally,
) {
    match common::decode(damaged, Some(reference)) {
        Err(_) => tally.errors += 1,
        Ok(out) => {
            assert!(
                out == original,
                "{what}: decode returned Ok with wrong data ({} bytes, sha256 {} instead of {})",
                out.len(),
                sha256(&out),
                sha256(original)
            );
            tally.ok_exact.push(what.to_string());
        }
    }
    // One tensor per call, in turn, to keep the sweeps fast.
    tally.calls += 1;
    if let Some((name, want)) = tensors.get(tally.calls % tensors.len().max(1)) {
        if let Ok(got) = tpde::decode_tensor(damaged, Some(reference), name) {
            assert!(
                &got == want,
                "{what}: decode_tensor({name:?}) returned Ok with wrong data"
            );
        }
    }
    if !tally.skip_inspect {
        let _ = tpde::container::inspect::inspect(damaged);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let (pf, cf, packed) = small_delta();
    let tensors = tensor_names(&cf);
    for len in 0..packed.len() {
        let cut = &packed[..len];
        let err = common::decode(cut, Some(&pf)).expect_err("a truncated file must not decode");
        assert!(
            matches!(err, Error::Truncated(_) | Error::Corrupt(_)),
            "truncated to {len} bytes: unexpected error {err:?}"
        );
        assert!(
            tpde::container::inspect::inspect(cut).is_err(),
            "inspect at {len}"
        );
        for (name, _) in &tensors {
            assert!(tpde::decode_tensor(cut, Some(&pf), name).is_err());
        }
    }
    // Trailing bytes after the trailer are refused too.
    for extra in [&[0u8][..], b"TPDEEND\0", &packed[packed.len() - 32..]] {
        let mut longer = packed.clone();
        longer.extend_from_slice(extra);
        assert!(common::decode(&longer, Some(&pf)).is_err());
    }
}

/// Flips every bit of the small delta, one at a time: nothing panics and no
/// decode returns wrong data.
fn bit_flip_sweep() -> (Vec<u8>, Tally) {
    let (pf, cf, packed) = small_delta();
    assert!(packed.len() < 4096, "keep this test fast: {}", packed.len());
    let tensors = tensor_names(&cf);
    let mut tally = Tally::default();
    let mut damaged = packed.clone();
    for byte in 0..packed.len() {
        for bit in 0..8 {
            damaged[byte] ^= 1 << bit;
            let near: Vec<String> = packed[byte..(byte + 9).min(packed.len())]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            check_damaged(
                &damaged,
                &pf,
                &cf,
                &tensors,
                &format!(
                    "bit {bit} of byte {byte} (bytes from there: {}; {})",
                    near.join(" "),
                    index_field(&packed, byte)
                ),
                &mut tally,
            );
            damaged[byte] ^= 1 << bit;
        }
    }
    (packed, tally)
}

#[test]
fn bit_flips_never_give_wrong_data() {
    let (packed, tally) = bit_flip_sweep();
    // Nearly every flip is refused (the exceptions decode to the original).
    assert!(
        tally.errors * 100 >= packed.len() * 8 * 99,
        "{} of {} flips refused",
        tally.errors,
        packed.len() * 8
    );
}

#[test]

fn every_bit_flip_is_refused() {
    let (packed, tally) = bit_flip_sweep();
    assert!(
        tally.ok_exact.is_empty(),
        "{} of {} bit flips decoded without error (to the right data): {:#?}",
        tally.ok_exact.len(),
        packed.len() * 8,
        tally.ok_exact
    );
}

/// Bit flips in the keyframe of the same file.
#[test]
fn every_bit_flip_of_a_keyframe_is_caught() {
    let (_, cf, _) = small_delta();
    let packed = common::encode(&cf, None, &small_chunks(64));
    let tensors = tensor_names(&cf);
    let mut tally = Tally::default();
    let mut damaged = packed.clone();
    for byte in 0..packed.len() {
        for bit in 0..8 {
            damaged[byte] ^= 1 << bit;
            check_damaged(
                &damaged,
                &cf,
                &cf,
                &tensors,
                &format!("bit {bit} of byte {byte}"),
                &mut tally,
            );
            assert!(common::decode(&damaged, None).map_or(true, |out| out == cf));
            damaged[byte] ^= 1 << bit;
        }
    }
    assert!(tally.ok_exact.is_empty(), "{:?}", tally.ok_exact);
}

/// Replaces the index hash in the trailer so that a damaged index gets past
/// the index checksum and reaches the deeper checks.
fn fix_index_hash(file: &mut [u8]) {
    let len = file.len();
    let t = len - 32;
    let index_offset = u64::from_le_bytes(file[t..t + 8].try_into().unwrap()) as usize;
    let h = xxhash_rust::xxh3::xxh3_64(&file[index_offset..t]);
    file[t + 16..t + 24].copy_from_slice(&h.to_le_bytes());
}

/// Names the index field at absolute file offset `at`, e.g.
/// `tensor 0 chunk 1 nnz (codec 3)`, for messages.
fn index_field(file: &[u8], at: usize) -> String {
    let range = index_range(file);
    if !range.contains(&at) {
        return "not in the index".into();
    }
    let ix = &file[range.clone()];
    let rel = at - range.start;
    let u32_at = |i: usize| u32::from_le_bytes(ix[i..i + 4].try_into().unwrap()) as usize;
    let fixed = [
        (0, 2, "flags"),
        (2, 18, "ref_digest"),
        (18, 26, "ref_len"),
        (26, 34, "original_len"),
        (34, 50, "original_digest"),
        (50, 51, "source_kind"),
        (51, 55, "header_len"),
        (55, 59, "header_stored_len"),
    ];
    if let Some((_, _, name)) = fixed.iter().find(|(a, b, _)| (*a..*b).contains(&rel)) {
        return name.to_string();
    }
    let hs = u32_at(55);
    if rel < 59 + hs {
        return "compressed header block".into();
    }
    let mut p = 59 + hs;
    if rel < p + 4 {
        return "n_tensors".into();
    }
    let n = u32_at(p);
    p += 4;
    for t in 0..n {
        let chunks = u32_at(p + 9);
        if rel < p + 13 {
            let f = match rel - p {
                0 => "ref_mode",
                1..=8 => "data_len",
                _ => "n_chunks",
            };
            return format!("tensor {t} {f}");
        }
        p += 13;
        for c in 0..chunks {
            if rel < p + 48 {
                let f = match rel - p {
                    0..=7 => "payload_offset",
                    8..=11 => "payload_len",
                    12..=15 => "raw_len",
                    16..=23 => "nnz",
                    24..=31 => "checksum",
                    32 => "codec",
                    33 => "transform",
                    34 => "positions",
                    35 => "width",
                    _ => "reserved",
                };
                return format!(
                    "tensor {t} chunk {c} {f} (codec {} transform {} positions {} width {})",
                    ix[p + 32],
                    ix[p + 33],
                    ix[p + 34],
                    ix[p + 35]
                );
            }
            p += 48;
        }
    }
    "past the last tensor entry".into()
}

fn index_range(file: &[u8]) -> std::ops::Range<usize> {
    let t = file.len() - 32;
    let index_offset = u64::from_le_bytes(file[t..t + 8].try_into().unwrap()) as usize;
    index_offset..t
}

/// Every bit flip of the index, and extreme values written over every field
/// position, with the index hash made to match, so that the damage reaches
/// the decoder's own checks (field ranges, overflow, chunk checksums, the
/// whole-file digest).
fn index_damage_sweep(with_inspect: bool) -> Tally {
    let (pf, cf, packed) = small_delta();
    let tensors = tensor_names(&cf);
    let mut tally = Tally {
        skip_inspect: !with_inspect,
        ..Tally::default()
    };
    for byte in index_range(&packed) {
        for bit in 0..8 {
            let mut damaged = packed.clone();
            damaged[byte] ^= 1 << bit;
            fix_index_hash(&mut damaged);
            check_damaged(
                &damaged,
                &pf,
                &cf,
                &tensors,
                &format!(
                    "index bit {bit} of byte {byte} ({})",
                    index_field(&packed, byte)
                ),
                &mut tally,
            );
        }
    }
    for at in index_range(&packed) {
        for value in [u64::MAX, u64::MAX / 2 + 1, u32::MAX as u64, 1 << 32, 0] {
            for width in [4usize, 8] {
                let mut damaged = packed.clone();
                let end = (at + width).min(index_range(&packed).end);
                damaged[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                if damaged == packed {
                    continue;
                }
                fix_index_hash(&mut damaged);
                check_damaged(
                    &damaged,
                    &pf,
                    &cf,
                    &tensors,
                    &format!(
                        "{value:#x} over {width} bytes at {at} ({})",
                        index_field(&packed, at)
                    ),
                    &mut tally,
                );
            }
        }
    }
    tally
}

#[test]
fn index_damage_behind_a_valid_index_hash() {
    // Some damage decodes, to the right bytes: fields the decoder does not
    // need (the `nnz` of a stored chunk), the choice of transform for a chunk
    // whose transformed values are all zero, an equivalent zstd frame of the
    // header. Wrong data is never returned (checked inside).
    let tally = index_damage_sweep(false);
    assert!(tally.errors > 0);
}

#[test]

fn inspect_survives_index_damage() {
    index_damage_sweep(true);
}

/// Absolute offsets of the chunk entries of a container, tensor by tensor.
fn chunk_entries(file: &[u8]) -> Vec<Vec<usize>> {
    let range = index_range(file);
    let ix = &file[range.clone()];
    let u32_at = |i: usize| u32::from_le_bytes(ix[i..i + 4].try_into().unwrap()) as usize;
    let mut p = 59 + u32_at(55);
    let n = u32_at(p);
    p += 4;
    let mut out = Vec::new();
    for _ in 0..n {
        let chunks = u32_at(p + 9);
        p += 13;
        out.push((0..chunks).map(|c| range.start + p + 48 * c).collect());
        p += 48 * chunks;
    }
    assert_eq!(p, ix.len());
    out
}

/// Exact inputs of the `inspect` panics: a valid small delta whose delta
/// chunk entries get width 0, or nnz = u64::MAX (two in one tensor), with the
/// index hash fixed. `Container::open` accepts both; `inspect` divides by the
/// width and sums the nnz unchecked.
#[test]

fn inspect_refuses_zero_width_and_huge_nnz() {
    let (pf, _, packed) = small_delta();
    let delta_chunks: Vec<usize> = chunk_entries(&packed)
        .into_iter()
        .flatten()
        .filter(|&at| packed[at + 32] == 3)
        .collect();
    assert!(delta_chunks.len() >= 2);
    for at in &delta_chunks {
        let mut bad = packed.clone();
        bad[at + 35] = 0; // width
        fix_index_hash(&mut bad);
        assert!(common::decode(&bad, Some(&pf)).is_err());
        inspect_refuses(&bad, &format!("width 0 in the chunk entry at byte {at}"));
    }
    let mut bad = packed.clone();
    for at in &delta_chunks {
        bad[at + 16..at + 24].copy_from_slice(&u64::MAX.to_le_bytes()); // nnz
    }
    fix_index_hash(&mut bad);
    assert!(common::decode(&bad, Some(&pf)).is_err());
    inspect_refuses(&bad, "nnz = u64::MAX");
}

/// FORMAT.md: a chunk entry's `nnz` is the element count for codecs 0 and 1
/// and the number of non-zero transformed elements otherwise. The decoder
/// does not check it for stored chunks nor for dense (positions 0) chunks, so
/// a crafted index (hash fixed) with a wrong `nnz` decodes, and `inspect`
/// reports a wrong changed count.
#[test]

fn wrong_nnz_is_refused() {
    let (pf, _, packed) = small_delta();
    let mut checked = 0;
    for at in chunk_entries(&packed).into_iter().flatten() {
        let (codec, positions) = (packed[at + 32], packed[at + 34]);
        if !(codec == 0 || positions == 0) {
            continue;
        }
        let nnz = u64::from_le_bytes(packed[at + 16..at + 24].try_into().unwrap());
        let mut bad = packed.clone();
        bad[at + 16..at + 24].copy_from_slice(&(nnz ^ 1).to_le_bytes());
        fix_index_hash(&mut bad);
        checked += 1;
        assert!(
            common::decode(&bad, Some(&pf)).is_err(),
            "nnz {nnz} -> {} accepted in the chunk entry at byte {at} ({})",
            nnz ^ 1,
            index_field(&packed, at + 16)
        );
    }
    assert!(checked > 0);
}

/// Byte ranges (head included) of the sections coded with `coding` in the
/// payloads of a container's section-coded chunks (codecs 2 and 3).
fn sections_with_coding(file: &[u8], coding: u8) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    for at in chunk_entries(file).into_iter().flatten() {
        if file[at + 32] < 2 {
            continue;
        }
        let off = u64::from_le_bytes(file[at..at + 8].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        let mut p = off;
        while p < off + len {
            let stored = u32::from_le_bytes(file[p + 5..p + 9].try_into().unwrap()) as usize;
            if file[p] == coding && !found.iter().any(|r: &std::ops::Range<usize>| r.start == p) {
                found.push(p..p + 9 + stored);
            }
            p += 9 + stored;
        }
        assert_eq!(p, off + len, "sections end with the payload");
    }
    found
}

/// Flips, one at a time, the bits of `ranges` of `packed` that `keep`
/// selects (given the range's index, the byte's offset in it and the bit's
/// index in the file), and decodes each damaged copy every way there is.
fn flip_bits(
    packed: &[u8],
    reference: &[u8],
    original: &[u8],
    ranges: &[std::ops::Range<usize>],
    what: &str,
    keep: impl Fn(usize, usize, usize) -> bool,
) -> Tally {
    let tensors = tensor_names(original);
    let mut tally = Tally::default();
    let mut damaged = packed.to_vec();
    for (k, range) in ranges.iter().enumerate() {
        for byte in range.clone() {
            for bit in 0..8 {
                if !keep(k, byte - range.start, byte * 8 + bit) {
                    continue;
                }
                damaged[byte] ^= 1 << bit;
                check_damaged(
                    &damaged,
                    reference,
                    original,
                    &tensors,
                    &format!("bit {bit} of byte {byte} ({what} at {})", range.start),
                    &mut tally,
                );
                damaged[byte] ^= 1 << bit;
            }
        }
    }
    tally
}

/// Every bit flip inside an rANS-coded section (skewed byte planes: nearly
/// every element one ULP up) is refused.
#[test]
fn rans_section_damage() {
    let mut rng = Rng::new(105);
    let n = 4096;
    let prev = rng.f32_weights(n, 0.02);
    let cur: Vec<u8> = prev
        .chunks(4)
        .flat_map(|c| {
            let v = u32::from_le_bytes(c.try_into().unwrap());
            let step = if rng.chance(0.97) {
                1
            } else {
                2 + rng.below(5) as u32
            };
            v.wrapping_add(step).to_le_bytes()
        })
        .collect();
    let pf = safetensors(&[Tensor::new("w", "F32", &[n as u64], prev)], None);
    let cf = safetensors(&[Tensor::new("w", "F32", &[n as u64], cur)], None);
    // Chunks of 2048 elements: too small for the symbols (codec 5), which
    // `symbols_damage` covers.
    let packed = common::encode(&cf, Some(&pf), &small_chunks(8192));
    assert_eq!(common::decode(&packed, Some(&pf)).unwrap(), cf);
    let rans = sections_with_coding(&packed, 3);
    assert!(
        !rans.is_empty(),
        "no rANS section in this container: adjust the input so that the test covers one"
    );
    // Every bit of the first section; every 7th bit of the others.
    let tally = flip_bits(&packed, &pf, &cf, &rans, "rANS section", |k, _, b| {
        k == 0 || b % 7 == 0
    });
    assert!(tally.ok_exact.is_empty(), "{:#?}", tally.ok_exact);
}

/// Every bit flip inside a symbols payload (codec 5: a dense F32 and a
/// BF16 delta of weight-like steps) is refused: none decodes, not even to
/// the original (one coding per chunk).
#[test]
fn symbols_damage() {
    let mut rng = Rng::new(106);
    let n = 6000;
    let prev = rng.f32_weights(n, 0.02);
    let step = |rng: &mut Rng, v: u32| v.wrapping_add(rng.below(30) as u32).wrapping_sub(15);
    let cur: Vec<u8> = prev
        .chunks(4)
        .flat_map(|c| step(&mut rng, u32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    let bprev: Vec<u8> = prev.chunks(4).flat_map(|c| [c[2], c[3]]).collect();
    let bcur: Vec<u8> = bprev
        .chunks(2)
        .flat_map(|c| {
            let v = u32::from(u16::from_le_bytes([c[0], c[1]]));
            (step(&mut rng, v) as u16).to_le_bytes()
        })
        .collect();
    let pf = safetensors(
        &[
            Tensor::new("w", "F32", &[n as u64], prev),
            Tensor::new("b", "BF16", &[n as u64], bprev),
        ],
        None,
    );
    let cf = safetensors(
        &[
            Tensor::new("w", "F32", &[n as u64], cur),
            Tensor::new("b", "BF16", &[n as u64], bcur),
        ],
        None,
    );
    let packed = common::encode(&cf, Some(&pf), &small_chunks(1 << 20));
    assert_eq!(common::decode(&packed, Some(&pf)).unwrap(), cf);
    let payloads: Vec<std::ops::Range<usize>> = chunk_entries(&packed)
        .into_iter()
        .flatten()
        .filter(|&at| packed[at + 32] == 5)
        .map(|at| {
            let off = u64::from_le_bytes(packed[at..at + 8].try_into().unwrap()) as usize;
            let len = u32::from_le_bytes(packed[at + 8..at + 12].try_into().unwrap()) as usize;
            off..off + len
        })
        .collect();
    assert_eq!(payloads.len(), 2, "both tensors are symbols chunks");
    // Every bit of the first 400 bytes of each payload (the window, the
    // tables, the states, the start of the raw bits); every 41st after.
    let tally = flip_bits(
        &packed,
        &pf,
        &cf,
        &payloads,
        "symbols payload",
        |_, at, b| at < 400 || b % 41 == 0,
    );
    assert!(tally.ok_exact.is_empty(), "{:#?}", tally.ok_exact);
}

/// Trailer fields pointing anywhere must not make the decoder read out of bounds.
#[test]
fn trailer_damage() {
    let (pf, cf, packed) = small_delta();
    let tensors = tensor_names(&cf);
    let mut tally = Tally::default();
    let t = packed.len() - 32;
    for field in [0usize, 8] {
        for value in [
            0u64,
            15,
            16,
            17,
            (t - 1) as u64,
            t as u64,
            t as u64 + 1,
            packed.len() as u64,
            u64::MAX,
            u64::MAX - 15,
            i64::MAX as u64,
        ] {
            let mut damaged = packed.clone();
            damaged[t + field..t + field + 8].copy_from_slice(&value.to_le_bytes());
            check_damaged(&damaged, &pf, &cf, &tensors, "trailer", &mut tally);
            fix_index_hash_if_possible(&mut damaged);
            check_damaged(
                &damaged,
                &pf,
                &cf,
                &tensors,
                "trailer, hash fixed",
                &mut tally,
            );
        }
    }
    assert!(tally.ok_exact.is_empty(), "{:?}", tally.ok_exact);
}

fn fix_index_hash_if_possible(file: &mut [u8]) {
    let t = file.len() - 32;
    let off = u64::from_le_bytes(file[t..t + 8].try_into().unwrap());
    if off as usize <= t {
        fix_index_hash(file);
    }
}

#[test]
fn wrong_reference() {
    let (pf, cf, packed) = small_delta();
    let mut rng = Rng::new(101);
    // Another valid safetensors file, of another length.
    let other = safetensors(&[Tensor::random(&mut rng, "w", "F32", &[40])], None);
    // The same length, one bit different.
    let mut near = pf.clone();
    let last = near.len() - 1;
    near[last] ^= 1;
    for wrong in [&other, &near, &cf] {
        let err = common::decode(&packed, Some(wrong)).expect_err("wrong reference");
        let msg = err.to_string();
        match &err {
            Error::WrongReference {
                expected,
                actual,
                expected_len,
                actual_len,
            } => {
                assert_eq!(*expected, digest_hex(digest(&pf)));
                assert_eq!(*actual, digest_hex(digest(wrong)));
                assert_eq!(*expected_len, pf.len() as u64);
                assert_eq!(*actual_len, wrong.len() as u64);
            }
            e => panic!("expected WrongReference, got {e:?}"),
        }
        assert!(msg.contains("wrong reference"), "{msg}");
        assert!(msg.contains(&digest_hex(digest(&pf))), "{msg}");
        assert!(msg.contains(&digest_hex(digest(wrong))), "{msg}");
    }
    // Decoding one tensor: a reference of the wrong length is refused; one of
    // the right length but other bytes never yields wrong data.
    for (name, want) in tensor_names(&cf) {
        assert!(matches!(
            tpde::decode_tensor(&packed, Some(&other), &name),
            Err(Error::WrongReference { .. })
        ));
        if let Ok(got) = tpde::decode_tensor(&packed, Some(&near), &name) {
            assert_eq!(got, want, "{name}");
        }
    }
    // The changed byte is in tensor "s", the last of the reference's data.
    let r = tpde::container::inspect::inspect(&packed).unwrap();
    let s = r.tensors.iter().find(|t| t.name == "s").unwrap();
    if s.coding.contains("delta") {
        assert!(matches!(
            tpde::decode_tensor(&packed, Some(&near), "s"),
            Err(Error::ChecksumMismatch { .. })
        ));
    }
}

#[test]
fn missing_reference() {
    let (_, cf, packed) = small_delta();
    assert!(matches!(
        common::decode(&packed, None),
        Err(Error::MissingReference)
    ));
    for (name, _) in tensor_names(&cf) {
        assert!(matches!(
            tpde::decode_tensor(&packed, None, &name),
            Err(Error::MissingReference)
        ));
    }
    let msg = Error::MissingReference.to_string();
    assert!(msg.contains("reference"), "{msg}");
}

#[test]
fn encode_refuses_what_is_not_safetensors() {
    let (pf, _, packed) = small_delta();
    let mut huge = (u64::MAX).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let mut past_end = 100u64.to_le_bytes().to_vec();
    past_end.extend_from_slice(b"{}");
    let mut not_json = Vec::new();
    common::raw_safetensors("not json", &[], &mut not_json);
    let mut array = Vec::new();
    common::raw_safetensors("[1,2]", &[], &mut array);
    let mut short = Vec::new();
    common::raw_safetensors(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &[&[0; 12]],
        &mut short,
    );
    let mut bad_tensor = Vec::new();
    common::raw_safetensors(r#"{"a":{"dtype":"F32"}}"#, &[], &mut bad_tensor);
    let mut bad_offsets = Vec::new();
    common::raw_safetensors(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}}"#,
        &[&[0]],
        &mut bad_offsets,
    );
    let mut big_offsets = Vec::new();
    common::raw_safetensors(
        r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
        &[&[0]],
        &mut big_offsets,
    );
    let mut negative = Vec::new();
    common::raw_safetensors(
        r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
        &[&[0]],
        &mut negative,
    );
    let cases: Vec<(&str, &[u8])> = vec![
        ("empty", b""),
        ("three bytes", b"abc"),
        ("text", b"hello, this is certainly not a safetensors file"),
        ("a .tpde file", &packed),
        ("huge header size", &huge),
        ("header past the end", &past_end),
        ("not JSON", &not_json),
        ("a JSON array", &array),
        ("data too short", &short),
        ("tensor without fields", &bad_tensor),
        ("reversed offsets", &bad_offsets),
        ("offsets past the end", &big_offsets),
        ("negative shape", &negative),
    ];
    for (what, input) in cases {
        for reference in [None, Some(&pf[..])] {
            let mut out = Vec::new();
            let r = tpde::encode(input, reference, &EncodeOptions::default(), &mut out, None);
            match r {
                Err(Error::Safetensors(msg)) => {
                    let full = Error::Safetensors(msg).to_string();
                    assert!(full.contains("not a valid safetensors"), "{full}");
                }
                other => panic!("{what}: expected Error::Safetensors, got {other:?}"),
            }
        }
    }
    // A reference that is not safetensors is refused (as a reference problem).
    let (_, cf, _) = small_delta();
    let mut out = Vec::new();
    let r = tpde::encode(
        &cf,
        Some(b"junk"),
        &EncodeOptions::default(),
        &mut out,
        None,
    );
    assert!(
        matches!(r, Err(Error::ReferenceMismatch(_) | Error::Safetensors(_))),
        "{r:?}"
    );
}

#[test]
fn invalid_chunk_sizes_are_refused() {
    let (_, cf, _) = small_delta();
    for chunk_size in [0, 1, 8, 56, 63, 65, 100, 1001, usize::MAX] {
        let mut out = Vec::new();
        let r = tpde::encode(&cf, None, &small_chunks(chunk_size), &mut out, None);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "chunk size {chunk_size}: {r:?}"
        );
    }
}

#[test]
fn wrong_magic_and_unsupported_version() {
    let (pf, _, packed) = small_delta();
    for i in 0..8 {
        for bit in 0..8 {
            let mut bad = packed.clone();
            bad[i] ^= 1 << bit;
            assert!(
                matches!(common::decode(&bad, Some(&pf)), Err(Error::WrongMagic)),
                "magic byte {i} bit {bit}"
            );
            assert!(matches!(
                tpde::container::inspect::inspect(&bad),
                Err(Error::WrongMagic)
            ));
        }
    }
    // A file is marked with exactly the lowest version that has its
    // features: this one is version 1, and marked 2 or 3 it is refused.
    for version in [2u16, 3] {
        let mut v = packed.clone();
        v[8..10].copy_from_slice(&version.to_le_bytes());
        let err = common::decode(&v, Some(&pf)).unwrap_err();
        assert!(err.to_string().contains("without the features"), "{err}");
    }
    // Any file with a reference may be marked version 4 (written so before
    // its chunks are coded, when a chunk may come out as symbols).
    let mut v4 = packed.clone();
    v4[8..10].copy_from_slice(&4u16.to_le_bytes());
    assert_eq!(
        common::decode(&v4, Some(&pf)).unwrap(),
        common::decode(&packed, Some(&pf)).unwrap()
    );
    // Marked version 5 or 6, whose trailer checksum also covers the file
    // header, it is refused; and a version 6 file marked otherwise is
    // refused too.
    for version in [5u16, 6] {
        let mut v = packed.clone();
        v[8..10].copy_from_slice(&version.to_le_bytes());
        let err = common::decode(&v, Some(&pf)).unwrap_err();
        assert!(err.to_string().contains("index checksum"), "{err}");
    }
    let dense = small_dense_delta();
    assert_eq!(u16::from_le_bytes([dense.2[8], dense.2[9]]), 6);
    for version in [1u16, 3, 4, 5] {
        let mut v = dense.2.clone();
        v[8..10].copy_from_slice(&version.to_le_bytes());
        let err = common::decode(&v, Some(&dense.0)).unwrap_err();
        assert!(
            err.to_string().contains("index checksum"),
            "{version}: {err}"
        );
    }
    for version in [0u16, 7, 0x0100, u16::MAX] {
        let mut bad = packed.clone();
        bad[8..10].copy_from_slice(&version.to_le_bytes());
        match common::decode(&bad, Some(&pf)) {
            Err(Error::UnsupportedVersion { version: v, .. }) => assert_eq!(v, version),
            other => panic!("version {version}: {other:?}"),
        }
        let msg = common::decode(&bad, Some(&pf)).unwrap_err().to_string();
        assert!(msg.contains("unsupported"), "{msg}");
        // It names the versions this build reads (it once said "1 to 4"
        // when the build read 5).
        let newest = tpde::container::format::VERSION;
        assert!(msg.contains(&format!("versions 1 to {newest})")), "{msg}");
    }
    // A safetensors file given to the decoder.
    assert!(matches!(common::decode(&pf, None), Err(Error::WrongMagic)));
}

#[test]
fn random_garbage() {
    let mut rng = Rng::new(102);
    for i in 0..300 {
        let len = rng.below(2000) as usize;
        let mut junk = rng.bytes(len);
        if i % 3 == 1 && len >= 16 {
            // A valid file header in front of garbage.
            junk[..8].copy_from_slice(&MAGIC);
            junk[8..16].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        }
        let r = common::decode(&junk, None);
        let starts_like_magic = MAGIC.starts_with(&junk[..junk.len().min(8)]);
        if !starts_like_magic {
            assert!(matches!(r, Err(Error::WrongMagic)), "{r:?}");
        } else {
            assert!(r.is_err());
        }
        let _ = tpde::container::inspect::inspect(&junk);
        let _ = tpde::decode_tensor(&junk, None, "w");
    }
}

/// Garbage behind a valid header and trailer (with a matching index hash):
/// the index parser sees random fields.
#[test]
fn random_index_behind_valid_framing() {
    let mut rng = Rng::new(103);
    let (pf, _, packed) = small_delta();
    let real_index = packed[index_range(&packed)].to_vec();
    for i in 0..500 {
        let payload_len = rng.below(200) as usize;
        let index = if i % 2 == 0 {
            let n = rng.below(400) as usize;
            rng.bytes(n)
        } else {
            // The real index with a few random bytes changed.
            let mut x = real_index.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(x.len() as u64) as usize;
                x[at] = rng.next_u64() as u8;
            }
            x
        };
        let mut f = packed[..16].to_vec();
        f.extend_from_slice(&rng.bytes(payload_len));
        let index_offset = f.len() as u64;
        f.extend_from_slice(&index);
        f.extend_from_slice(&index_offset.to_le_bytes());
        f.extend_from_slice(&(index.len() as u64).to_le_bytes());
        f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&index).to_le_bytes());
        f.extend_from_slice(b"TPDEEND\0");
        let r = common::decode(&f, Some(&pf));
        assert!(r.is_err(), "garbage index {i} decoded");
        let _ = tpde::container::inspect::inspect(&f);
        let _ = tpde::decode_tensor(&f, Some(&pf), "w");
    }
}

/// A small safetensors file for the parser tests.
fn small_safetensors() -> Vec<u8> {
    let mut rng = Rng::new(104);
    safetensors(
        &[
            Tensor::random(&mut rng, "a", "F32", &[3]),
            Tensor::random(&mut rng, "b", "F4", &[2, 2]),
            Tensor::new("c", "U8", &[0], vec![]),
            Tensor::random(&mut rng, "d", "Q4_K", &[5]),
        ],
        Some(&[("format", "pt")]),
    )
}

fn check_parsed(file: &[u8], h: &tpde::source::safetensors::Header) {
    assert_eq!(h.file_len(), file.len() as u64);
    let mut cursor = 0;
    for t in &h.tensors {
        assert_eq!(t.begin, cursor);
        assert!(t.end >= t.begin);
        cursor = t.end;
    }
}

#[test]
fn safetensors_parser_survives_truncation_and_bit_flips() {
    let file = small_safetensors();
    let h = tpde::source::safetensors::parse(&file).unwrap();
    check_parsed(&file, &h);
    for len in 0..file.len() {
        assert!(
            tpde::source::safetensors::parse(&file[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut parsed_ok = 0;
    let mut damaged = file.clone();
    for byte in 0..file.len() {
        for bit in 0..8 {
            damaged[byte] ^= 1 << bit;
            if let Ok(h) = tpde::source::safetensors::parse(&damaged) {
                parsed_ok += 1;
                check_parsed(&damaged, &h);
                // Whatever parses must also round trip.
                let packed = common::encode(&damaged, Some(&file), &small_chunks(64));
                assert_eq!(common::decode(&packed, Some(&file)).unwrap(), damaged);
                let packed = common::encode(&damaged, None, &EncodeOptions::default());
                assert_eq!(common::decode(&packed, None).unwrap(), damaged);
            }
            let block_len = h.header_len as usize;
            let _ = tpde::source::safetensors::parse_header(
                &damaged[..block_len],
                damaged.len() as u64,
            );
            damaged[byte] ^= 1 << bit;
        }
    }
    // Flips in the data section (and some in the JSON) keep the file valid.
    assert!(parsed_ok >= (file.len() - h.header_len as usize) * 8);
}

#[test]
fn safetensors_parser_on_hostile_headers() {
    let headers = [
        r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}}"#,
        r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#,
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        r#"{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}"#,
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#,
        r#"{"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}}"#,
        r#"{"a":[]}"#,
        r#"{"a":null}"#,
        r#"{"__metadata__":[1,2,3]}"#,
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}}"#,
        "",
        "{",
        "\u{feff}{}",
        "null",
    ];
    for h in headers {
        let mut f = Vec::new();
        common::raw_safetensors(h, &[&[9u8]], &mut f);
        if let Ok(parsed) = tpde::source::safetensors::parse(&f) {
            check_parsed(&f, &parsed);
            let packed = common::encode(&f, None, &EncodeOptions::default());
            assert_eq!(common::decode(&packed, None).unwrap(), f, "{h}");
        }
    }
    // A header size over the limit and one that overflows when 8 is added.
    for n in [
        tpde::source::safetensors::MAX_HEADER_SIZE + 1,
        u64::MAX - 7,
        u64::MAX,
    ] {
        let mut f = n.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            tpde::source::safetensors::parse(&f),
            Err(Error::Safetensors(_))
        ));
    }
}

/// `inspect` must return an error for `bad`: neither panic nor accept it.
fn inspect_refuses(bad: &[u8], what: &str) {
    let r = std::panic::catch_unwind(|| tpde::container::inspect::inspect(bad).is_err());
    let got = match r {
        Ok(true) => return,
        Ok(false) => "returned Ok",
        Err(_) => "panicked",
    };
    panic!("{what}: inspect {got}");
}
