//! Byte-identical round trips: every dtype, float special values, empty and
//! 0-d tensors, structural changes between reference and current, identical
//! and unrelated files, metadata, multi-chunk tensors, sparse and dense
//! changes, and random inputs (proptest).

mod common;

use common::{
    byte_len, coding_width, perturb, perturb_fraction, roundtrip, safetensors, sha256,
    small_chunks, Rng, Tensor, KNOWN_DTYPES,
};
use proptest::prelude::*;
use tpde::EncodeOptions;

/// Shapes whose element count fills whole bytes for every dtype (a multiple of 4).
const SHAPE: &[u64] = &[8, 125];

fn all_dtypes() -> Vec<&'static str> {
    let mut d = KNOWN_DTYPES.to_vec();
    d.push("Q4_K");
    d
}

fn opts_list() -> Vec<EncodeOptions> {
    vec![
        EncodeOptions::default(),
        small_chunks(256),
        small_chunks(64),
    ]
}

fn report(packed: &[u8]) -> tpde::container::inspect::Report {
    tpde::container::inspect::inspect(packed).expect("inspect")
}

fn tensor_report<'r>(
    r: &'r tpde::container::inspect::Report,
    name: &str,
) -> &'r tpde::container::inspect::TensorReport {
    r.tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name:?} in the report"))
}

// ---------------------------------------------------------------- dtypes

#[test]
fn every_dtype_as_keyframe() {
    let mut rng = Rng::new(1);
    for dtype in all_dtypes() {
        let t = Tensor::random(&mut rng, "w", dtype, SHAPE);
        let file = safetensors(&[t], None);
        for opts in opts_list() {
            let packed = roundtrip(&file, None, &opts);
            let r = report(&packed);
            assert!(r.reference.is_none());
            assert_eq!(r.tensors[0].dtype, dtype);
            assert!(!r.tensors[0].has_reference);
        }
    }
}

#[test]
fn every_dtype_as_delta() {
    let mut rng = Rng::new(2);
    for dtype in all_dtypes() {
        let width = coding_width(dtype);
        let prev = Tensor::random(&mut rng, "w", dtype, SHAPE);
        for p in [0.0, 0.01, 0.5, 1.0] {
            let mut cur = prev.clone();
            perturb_fraction(&mut rng, &mut cur.data, width, p);
            let (pf, cf) = (
                safetensors(std::slice::from_ref(&prev), None),
                safetensors(&[cur], None),
            );
            for opts in opts_list() {
                let packed = roundtrip(&cf, Some(&pf), &opts);
                let r = report(&packed);
                assert!(r.reference.is_some());
                assert!(
                    r.tensors[0].has_reference,
                    "{dtype}: the tensor should be coded against its reference"
                );
            }
        }
    }
}

#[test]
fn all_dtypes_in_one_file() {
    let mut rng = Rng::new(3);
    let prev: Vec<Tensor> = all_dtypes()
        .iter()
        .enumerate()
        .map(|(i, d)| Tensor::random(&mut rng, &format!("t{i}.{d}"), d, SHAPE))
        .collect();
    let mut cur = prev.clone();
    for t in &mut cur {
        perturb_fraction(&mut rng, &mut t.data, coding_width(&t.dtype), 0.02);
    }
    let meta = [("format", "pt")];
    let (pf, cf) = (
        safetensors(&prev, Some(&meta)),
        safetensors(&cur, Some(&meta)),
    );
    for opts in opts_list() {
        roundtrip(&pf, None, &opts);
        roundtrip(&cf, None, &opts);
        let packed = roundtrip(&cf, Some(&pf), &opts);
        let r = report(&packed);
        assert_eq!(r.tensors.len(), prev.len());
        assert!(r.tensors.iter().all(|t| t.has_reference));
        // The reverse direction too.
        roundtrip(&pf, Some(&cf), &opts);
    }
}

/// Every F8 bit pattern against every F8 bit pattern.
#[test]
fn f8_all_pairs() {
    let cur: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let prev: Vec<u8> = (0..65536u32).map(|i| (i >> 8) as u8).collect();
    for dtype in [
        "F8_E5M2", "F8_E4M3", "F8_E8M0", "U8", "I8", "BOOL", "F4", "F6_E2M3",
    ] {
        // F4 packs two elements a byte; 65535 bytes hold 87380 F6 elements.
        let (shape, len): (Vec<u64>, usize) = match dtype {
            "F4" => (vec![256, 512], 65536),
            "F6_E2M3" => (vec![87380], 65535),
            _ => (vec![256, 256], 65536),
        };
        assert_eq!(byte_len(dtype, &shape), Some(len));
        let (prev, cur) = (&prev[..len], &cur[..len]);
        let pf = safetensors(&[Tensor::new("x", dtype, &shape, prev.to_vec())], None);
        let cf = safetensors(&[Tensor::new("x", dtype, &shape, cur.to_vec())], None);
        roundtrip(&cf, Some(&pf), &small_chunks(4096));
        roundtrip(&pf, Some(&cf), &EncodeOptions::default());
    }
}

// ---------------------------------------------------------------- float specials

/// Special bit patterns of a binary float format with `exp` exponent bits and
/// `mant` mantissa bits: zeros, subnormals, normals, extremes, infinities and
/// NaNs (quiet, signalling, various payloads), of both signs.
fn float_specials(exp: u32, mant: u32) -> Vec<u64> {
    let bits = 1 + exp + mant;
    let mant_mask = (1u64 << mant) - 1;
    let exp_mask = (1u64 << exp) - 1;
    let bias = (1u64 << (exp - 1)) - 1;
    let inf = exp_mask << mant;
    let mut magnitudes = vec![
        0,                                             // zero
        1,                                             // smallest subnormal
        1 << (mant - 1),                               // a middle subnormal
        mant_mask,                                     // largest subnormal
        1 << mant,                                     // smallest normal
        bias << mant,                                  // one
        (bias << mant) | 1,                            // one plus an ulp
        (bias << mant) - 1,                            // one minus an ulp
        ((exp_mask - 1) << mant) | mant_mask,          // largest finite
        inf,                                           // infinity
        inf | (1 << (mant - 1)),                       // quiet NaN
        inf | 1,                                       // signalling NaN, smallest payload
        inf | mant_mask,                               // NaN, all payload bits
        inf | (mant_mask & 0x5555_5555_5555_5555) | 1, // NaN, another payload
        inf | (1 << (mant - 1)) | 1,                   // quiet NaN with payload
    ];
    magnitudes.dedup();
    let sign = 1u64 << (bits - 1);
    magnitudes.iter().flat_map(|&m| [m, m | sign]).collect()
}

fn to_bytes(values: &[u64], width: usize) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| v.to_le_bytes()[..width].to_vec())
        .collect()
}

#[test]
fn float_special_values() {
    let formats = [
        ("F16", 5, 10),
        ("BF16", 8, 7),
        ("F32", 8, 23),
        ("F64", 11, 52),
    ];
    let mut rng = Rng::new(4);
    for (dtype, exp, mant) in formats {
        let width = ((1 + exp + mant) / 8) as usize;
        let specials = float_specials(exp, mant);
        let n = specials.len();
        // Every special value changing into every special value.
        let prev: Vec<u64> = (0..n * n).map(|i| specials[i / n]).collect();
        let cur: Vec<u64> = (0..n * n).map(|i| specials[i % n]).collect();
        // Specials changing into ordinary values and back.
        let ordinary: Vec<u64> = (0..n)
            .map(|_| {
                let v = rng.normal();
                match dtype {
                    "F64" => v.to_bits(),
                    "F32" => u64::from((v as f32).to_bits()),
                    "BF16" => u64::from((v as f32).to_bits() >> 16),
                    _ => {
                        // A finite F16: sign, exponent 1..30, random mantissa.
                        (rng.next_u64() & 0x83FF) | ((1 + rng.below(30)) << 10)
                    }
                }
            })
            .collect();
        let shape = [(n * n) as u64];
        let cases: Vec<(Vec<u8>, Vec<u8>, Vec<u64>)> = vec![
            (
                to_bytes(&prev, width),
                to_bytes(&cur, width),
                shape.to_vec(),
            ),
            (
                to_bytes(&specials, width),
                to_bytes(&ordinary, width),
                vec![n as u64],
            ),
            (
                to_bytes(&ordinary, width),
                to_bytes(&specials, width),
                vec![n as u64],
            ),
            (
                to_bytes(&specials, width),
                to_bytes(&specials, width),
                vec![n as u64],
            ),
        ];
        for (p, c, shape) in cases {
            let pf = safetensors(&[Tensor::new("s", dtype, &shape, p)], None);
            let cf = safetensors(&[Tensor::new("s", dtype, &shape, c)], None);
            for opts in opts_list() {
                roundtrip(&cf, Some(&pf), &opts);
                roundtrip(&pf, Some(&cf), &opts);
                roundtrip(&cf, None, &opts);
            }
        }
    }
}

/// Every F16 and BF16 bit pattern, against a permutation of them and against
/// their sign flips.
#[test]
fn sixteen_bit_floats_exhaustive() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let perm: Vec<u16> = all.iter().map(|&i| i.wrapping_mul(40503)).collect();
    let flipped: Vec<u16> = all.iter().map(|&i| i ^ 0x8000).collect();
    let bytes = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    for dtype in ["F16", "BF16"] {
        let file = |v: &[u16]| safetensors(&[Tensor::new("x", dtype, &[256, 256], bytes(v))], None);
        let cur = file(&all);
        for other in [&perm, &flipped] {
            let prev = file(other);
            roundtrip(&cur, Some(&prev), &small_chunks(16384));
            roundtrip(&prev, Some(&cur), &EncodeOptions::default());
        }
    }
}

// ---------------------------------------------------------------- empty and 0-d

#[test]
fn empty_and_scalar_tensors() {
    let mut rng = Rng::new(5);
    let prev = vec![
        Tensor::new("empty", "F32", &[0], vec![]),
        Tensor::new("empty2", "BF16", &[3, 0], vec![]),
        Tensor::new("empty3", "Q4_K", &[0, 5], vec![]),
        Tensor::new("scalar", "F64", &[], 1.5f64.to_le_bytes().to_vec()),
        Tensor::new("scalar_i", "I32", &[], 7i32.to_le_bytes().to_vec()),
        Tensor::random(&mut rng, "w", "F32", &[100]),
        Tensor::new("empty_mid", "U8", &[0], vec![]),
        Tensor::new("bscalar", "BOOL", &[], vec![1]),
    ];
    let mut cur = prev.clone();
    cur[3].data = 2.5f64.to_le_bytes().to_vec(); // scalar changes
    perturb_fraction(&mut rng, &mut cur[5].data, 4, 0.1);
    let (pf, cf) = (safetensors(&prev, None), safetensors(&cur, None));
    for opts in opts_list() {
        roundtrip(&pf, None, &opts);
        roundtrip(&cf, Some(&pf), &opts);
        roundtrip(&cf, Some(&cf), &opts);
        let packed = roundtrip(&pf, Some(&cf), &opts);
        let r = report(&packed);
        for name in ["empty", "empty2", "empty3", "empty_mid"] {
            let t = tensor_report(&r, name);
            assert_eq!(t.raw_bytes, 0);
            assert_eq!(t.elements, 0);
        }
        assert_eq!(tensor_report(&r, "scalar").elements, 1);
        assert_eq!(tensor_report(&r, "scalar").shape, Vec::<u64>::new());
    }
    // A file of only empty tensors, and a file with no tensors at all.
    let only_empty = safetensors(&prev[..3], None);
    let nothing = safetensors(&[], None);
    let meta_only = safetensors(&[], Some(&[("a", "b")]));
    for opts in opts_list() {
        for f in [&only_empty, &nothing, &meta_only] {
            roundtrip(f, None, &opts);
            for r in [&only_empty, &nothing, &meta_only, &cf] {
                roundtrip(f, Some(r), &opts);
                roundtrip(r, Some(f), &opts);
            }
        }
    }
}

// ---------------------------------------------------------------- structure

#[test]
fn tensors_added_removed_renamed_reshaped_retyped() {
    let mut rng = Rng::new(6);
    let a = Tensor::random(&mut rng, "a", "F32", &[64]);
    let b = Tensor::random(&mut rng, "b", "F32", &[64]);
    let c = Tensor::random(&mut rng, "c", "BF16", &[100]);
    let d = Tensor::random(&mut rng, "d", "F32", &[4, 8]);
    let e = Tensor::random(&mut rng, "e", "F32", &[16]);
    let g = Tensor::random(&mut rng, "g", "F32", &[16]);
    let h = Tensor::random(&mut rng, "h", "I64", &[10]);
    let prev = vec![a.clone(), b, c.clone(), d.clone(), e.clone(), g, h];

    let mut a2 = a;
    perturb_fraction(&mut rng, &mut a2.data, 4, 0.1);
    let mut c2 = c; // renamed, same data
    c2.name = "c_renamed".into();
    let mut d2 = d; // reshaped, same bytes
    d2.shape = vec![8, 4];
    let mut e2 = e; // retyped, same bytes
    e2.dtype = "I32".into();
    let g2 = Tensor::random(&mut rng, "g", "F16", &[16]); // retyped, other length
    let h2 = Tensor::random(&mut rng, "h", "I64", &[12]); // resized
    let f = Tensor::random(&mut rng, "f", "U16", &[33]); // added
                                                         // "b" is removed. The data order differs from the reference too.
    let cur = vec![f, h2, g2, e2, d2, c2, a2];
    let (pf, cf) = (safetensors(&prev, None), safetensors(&cur, None));
    for opts in opts_list() {
        let packed = roundtrip(&cf, Some(&pf), &opts);
        let r = report(&packed);
        assert!(tensor_report(&r, "a").has_reference);
        for name in ["c_renamed", "f", "g", "h"] {
            assert!(
                !tensor_report(&r, name).has_reference,
                "{name} has no same-name tensor of the same length in the reference"
            );
        }
        roundtrip(&pf, Some(&cf), &opts);
    }
}

#[test]
fn identical_files() {
    let mut rng = Rng::new(7);
    let tensors = vec![
        Tensor::new("w", "F32", &[64, 256], rng.f32_weights(64 * 256, 0.02)),
        Tensor::random(&mut rng, "b", "BF16", &[256]),
        Tensor::random(&mut rng, "i", "I64", &[3]),
    ];
    let file = safetensors(&tensors, Some(&[("step", "100")]));
    for opts in opts_list() {
        let key = roundtrip(&file, None, &opts);
        let mut out = Vec::new();
        let stats = tpde::encode(&file, Some(&file), &opts, &mut out, None).unwrap();
        assert_eq!(stats.changed, 0);
        assert_eq!(stats.elements, 64 * 256 + 256 + 3);
        let packed = roundtrip(&file, Some(&file), &opts);
        assert_eq!(packed, out, "encoding is deterministic");
        let r = report(&packed);
        for t in &r.tensors {
            assert!(t.has_reference);
            assert_eq!(t.changed, 0, "{}", t.name);
        }
        // Tiny chunks carry a fixed cost each (index entry, section heads).
        let factor = if opts.chunk_size >= 4096 { 10 } else { 1 };
        assert!(
            packed.len() * factor < key.len(),
            "identical delta {} bytes vs keyframe {} bytes (chunk size {})",
            packed.len(),
            key.len(),
            opts.chunk_size
        );
    }
}

#[test]
fn unrelated_reference() {
    let mut rng = Rng::new(8);
    let cur = safetensors(
        &[
            Tensor::random(&mut rng, "model.w", "F32", &[300]),
            Tensor::random(&mut rng, "model.b", "F16", &[30]),
        ],
        None,
    );
    // Entirely different tensors.
    let other = safetensors(
        &[
            Tensor::random(&mut rng, "x", "I8", &[7]),
            Tensor::random(&mut rng, "y", "U64", &[1000]),
        ],
        Some(&[("k", "v")]),
    );
    // The same names with other dtypes and shapes.
    let same_names = safetensors(
        &[
            Tensor::random(&mut rng, "model.w", "F64", &[300]),
            Tensor::random(&mut rng, "model.b", "F16", &[31]),
        ],
        None,
    );
    // The same names, dtypes and shapes, but unrelated random bytes.
    let random = safetensors(
        &[
            Tensor::random(&mut rng, "model.w", "F32", &[300]),
            Tensor::random(&mut rng, "model.b", "F16", &[30]),
        ],
        None,
    );
    for opts in opts_list() {
        for reference in [&other, &same_names] {
            let packed = roundtrip(&cur, Some(reference), &opts);
            let r = report(&packed);
            assert!(r.reference.is_some());
            assert!(r.tensors.iter().all(|t| !t.has_reference));
        }
        roundtrip(&cur, Some(&random), &opts);
    }
}

#[test]
fn keyframes() {
    let mut rng = Rng::new(9);
    let file = safetensors(
        &[
            Tensor::new("w", "F32", &[1000], rng.f32_weights(1000, 0.1)),
            Tensor::new("zeros", "F32", &[1000], vec![0; 4000]),
            Tensor::random(&mut rng, "r", "U8", &[999]),
        ],
        None,
    );
    for opts in opts_list() {
        let packed = roundtrip(&file, None, &opts);
        let r = report(&packed);
        assert!(r.reference.is_none());
        assert!(r
            .tensors
            .iter()
            .all(|t| !t.has_reference && t.changed_fraction().is_none()));
        // A keyframe decodes the same when a (useless) reference is given.
        let mut out = Vec::new();
        tpde::decode(&packed, Some(&file), &mut out, None).unwrap();
        assert_eq!(sha256(&out), sha256(&file));
    }
}

#[test]
fn metadata_and_header_bytes_are_preserved() {
    let mut rng = Rng::new(10);
    let w = Tensor::random(&mut rng, "w", "F32", &[10]);
    let meta = [
        ("format", "pt"),
        ("note", "quote \" backslash \\ newline \n unicode é ✓"),
        ("", ""),
    ];
    let file = safetensors(std::slice::from_ref(&w), Some(&meta));
    for opts in opts_list() {
        let packed = roundtrip(&file, None, &opts);
        let back = common::decode(&packed, None).unwrap();
        let h = tpde::source::safetensors::parse(&back).unwrap();
        let m: serde_json::Value =
            serde_json::from_str(h.metadata.expect("metadata kept").get()).unwrap();
        assert_eq!(m["note"], meta[1].1);
        assert_eq!(m["format"], "pt");
    }
    // A hand-written header: pretty-printed, keys out of order, unicode and
    // escaped names, metadata last, no padding (length not a multiple of 8).
    let header = "{\n  \"z\\u00e9\\\"name\": {\"shape\": [2], \"dtype\": \"I16\", \"data_offsets\": [40, 44]},\n  \"a/ü\": { \"data_offsets\" : [0,40], \"dtype\":\"F32\",\"shape\":[10] } ,\n  \"__metadata__\": {\"x\": \"y\"}\n}\t";
    assert_ne!(header.len() % 8, 0);
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&w.data);
    file.extend_from_slice(&[1, 2, 3, 4]);
    let mut prev = file.clone();
    let last = prev.len() - 1;
    prev[last] ^= 0x55;
    for opts in opts_list() {
        roundtrip(&file, None, &opts);
        let packed = roundtrip(&file, Some(&prev), &opts);
        assert_eq!(
            tpde::decode_tensor(&packed, Some(&prev), "zé\"name").unwrap(),
            vec![1, 2, 3, 4]
        );
    }
}

// ---------------------------------------------------------------- chunks

#[test]
fn tensors_larger_than_one_chunk() {
    let mut rng = Rng::new(11);
    let prev = vec![
        Tensor::new("w", "F32", &[2500], rng.f32_weights(2500, 0.05)), // 10000 bytes
        Tensor::random(&mut rng, "h", "F16", &[999]),                  // not a multiple
        Tensor::random(&mut rng, "d", "F64", &[33]),                   // 264 bytes
        Tensor::random(&mut rng, "c", "C64", &[100]),
        Tensor::random(&mut rng, "u", "Q4_K", &[10]),
    ];
    let mut cur = prev.clone();
    for t in &mut cur {
        perturb_fraction(&mut rng, &mut t.data, coding_width(&t.dtype), 0.05);
    }
    let (pf, cf) = (safetensors(&prev, None), safetensors(&cur, None));
    for chunk in [64, 72, 256, 1000, 4096] {
        let opts = small_chunks(chunk);
        let key = roundtrip(&cf, None, &opts);
        let packed = roundtrip(&cf, Some(&pf), &opts);
        let r = report(&packed);
        let w = tensor_report(&r, "w");
        assert!(w.coding.contains("delta"), "{}", w.coding);
        assert!(packed.len() < key.len());
    }
}

/// Identical chunks (copies of a layer, runs of zeros) are stored once and
/// still decode to the right place.
#[test]
fn repeated_chunks() {
    let mut rng = Rng::new(12);
    let layer = rng.f32_weights(1024, 0.02);
    let mut tensors: Vec<Tensor> = (0..6)
        .map(|i| Tensor::new(&format!("layer.{i}"), "F32", &[1024], layer.clone()))
        .collect();
    tensors.push(Tensor::new("zeros", "F32", &[4096], vec![0; 16384]));
    let key_file = safetensors(&tensors, None);
    let mut cur = tensors.clone();
    for t in cur.iter_mut().take(3) {
        perturb_fraction(&mut rng, &mut t.data, 4, 0.01);
    }
    let cur_file = safetensors(&cur, None);
    let opts = small_chunks(512);
    let single = safetensors(&tensors[..1], None);
    let one = roundtrip(&single, None, &opts);
    let key = roundtrip(&key_file, None, &opts);
    assert!(
        key.len() < 2 * one.len() + 2048,
        "copies should share payloads: {} bytes for 6 copies, {} for one",
        key.len(),
        one.len()
    );
    roundtrip(&cur_file, Some(&key_file), &opts);
    roundtrip(&key_file, Some(&cur_file), &opts);
}

// ---------------------------------------------------------------- change density

#[test]
fn sparse_changes() {
    let mut rng = Rng::new(13);
    let n = 100_000;
    let prev = Tensor::new("w", "F32", &[100, 1000], rng.f32_weights(n, 0.02));
    let mut cur = prev.clone();
    let mut positions: Vec<usize> = (0..n)
        .filter(|i| i % 1000 == 0)
        .map(|i| i + rng.below(1000) as usize)
        .collect();
    positions.dedup();
    for &i in &positions {
        perturb(&mut rng, &mut cur.data, 4, i);
    }
    let changed = positions.len();
    assert_eq!(changed, 100);
    let (pf, cf) = (safetensors(&[prev], None), safetensors(&[cur], None));
    for opts in [EncodeOptions::default(), small_chunks(4096)] {
        let key = roundtrip(&cf, None, &opts);
        let packed = roundtrip(&cf, Some(&pf), &opts);
        let mut sink = Vec::new();
        let stats = tpde::encode(&cf, Some(&pf), &opts, &mut sink, None).unwrap();
        assert_eq!(stats.changed, changed as u64);
        assert_eq!(stats.elements, n as u64);
        let r = report(&packed);
        let t = &r.tensors[0];
        assert_eq!(t.changed, changed as u64);
        let frac = t.changed_fraction().expect("coded as a delta");
        assert!(frac <= 0.0011, "changed fraction {frac}");
        assert!(
            packed.len() * 20 < key.len(),
            "sparse delta {} bytes vs keyframe {} bytes",
            packed.len(),
            key.len()
        );
    }
}

#[test]
fn dense_changes() {
    let mut rng = Rng::new(14);
    let n = 20_000;
    let prev = Tensor::new("w", "F32", &[n as u64], rng.f32_weights(n, 0.02));
    for p in [0.1, 0.5, 0.9] {
        let mut cur = prev.clone();
        perturb_fraction(&mut rng, &mut cur.data, 4, p);
        let (pf, cf) = (
            safetensors(std::slice::from_ref(&prev), None),
            safetensors(&[cur], None),
        );
        for opts in opts_list() {
            roundtrip(&cf, Some(&pf), &opts);
        }
    }
}

#[test]
fn all_elements_changed() {
    let mut rng = Rng::new(15);
    let n = 20_000;
    for dtype in ["F32", "BF16", "F16", "F64", "I32", "U8"] {
        let width = coding_width(dtype);
        let prev = Tensor::random(&mut rng, "w", dtype, &[n]);
        let prev = if dtype == "F32" {
            Tensor::new("w", "F32", &[n], rng.f32_weights(n as usize, 0.02))
        } else {
            prev
        };
        // Every element takes a small step (as in a training step).
        let mut cur = prev.clone();
        for i in 0..n as usize {
            let el = &mut cur.data[i * width..(i + 1) * width];
            let mut v = 0u64;
            for (k, b) in el.iter().enumerate() {
                v |= (*b as u64) << (8 * k);
            }
            let step = 1 + rng.below(7);
            v = if rng.chance(0.5) {
                v.wrapping_add(step)
            } else {
                v.wrapping_sub(step)
            };
            for (k, b) in el.iter_mut().enumerate() {
                *b = (v >> (8 * k)) as u8;
            }
        }
        let (pf, cf) = (safetensors(&[prev], None), safetensors(&[cur], None));
        for opts in opts_list() {
            let packed = roundtrip(&cf, Some(&pf), &opts);
            let r = report(&packed);
            let t = &r.tensors[0];
            if let Some(f) = t.changed_fraction() {
                assert_eq!(
                    t.changed, t.delta_elements,
                    "{dtype}: every element changed ({f})"
                );
            }
        }
        // And random rewrites of every element.
        let prev = Tensor::random(&mut rng, "w", dtype, &[n]);
        let mut cur = prev.clone();
        for i in 0..n as usize {
            perturb(&mut rng, &mut cur.data, width, i);
        }
        let (pf, cf) = (safetensors(&[prev], None), safetensors(&[cur], None));
        roundtrip(&cf, Some(&pf), &small_chunks(1024));
    }
}

/// Small ULP steps of every F32 weight code smaller than a keyframe.
#[test]
fn small_steps_code_smaller_than_keyframe() {
    let mut rng = Rng::new(16);
    let n = 50_000;
    let prev = rng.f32_weights(n, 0.02);
    let cur: Vec<u8> = prev
        .chunks(4)
        .flat_map(|c| {
            let v = u32::from_le_bytes(c.try_into().unwrap());
            let step = rng.below(9) as u32;
            (if rng.chance(0.5) {
                v.wrapping_add(step)
            } else {
                v.wrapping_sub(step)
            })
            .to_le_bytes()
        })
        .collect();
    let pf = safetensors(&[Tensor::new("w", "F32", &[n as u64], prev)], None);
    let cf = safetensors(&[Tensor::new("w", "F32", &[n as u64], cur)], None);
    let key = roundtrip(&cf, None, &EncodeOptions::default());
    let packed = roundtrip(&cf, Some(&pf), &EncodeOptions::default());
    assert!(
        packed.len() * 2 < key.len(),
        "delta {} bytes vs keyframe {} bytes",
        packed.len(),
        key.len()
    );
}

// ---------------------------------------------------------------- opaque input

#[test]
fn opaque_files() {
    let mut rng = Rng::new(17);
    let cur = rng.bytes(5000);
    let mut near = cur.clone();
    perturb_fraction(&mut rng, &mut near, 1, 0.01);
    let shorter = near[..3001].to_vec();
    let mut longer = near.clone();
    longer.extend_from_slice(&rng.bytes(77));
    for chunk in [64, 256, 4 << 20] {
        let opts = EncodeOptions {
            chunk_size: chunk,
            input: tpde::InputKind::Opaque,
            ..Default::default()
        };
        for reference in [
            None,
            Some(&near[..]),
            Some(&shorter[..]),
            Some(&longer[..]),
            Some(&[][..]),
        ] {
            for file in [&cur[..], &[][..], &cur[..1]] {
                let packed = common::encode(file, reference, &opts);
                let back = common::decode(&packed, reference).unwrap();
                assert_eq!(sha256(&back), sha256(file));
                assert!(matches!(
                    tpde::decode_tensor(&packed, reference, ""),
                    Err(tpde::Error::InvalidArgument(_))
                ));
            }
        }
    }
}

#[test]
fn decode_tensor_of_a_missing_name() {
    let mut rng = Rng::new(18);
    let file = safetensors(&[Tensor::random(&mut rng, "w", "F32", &[4])], None);
    let packed = common::encode(&file, None, &EncodeOptions::default());
    assert!(matches!(
        tpde::decode_tensor(&packed, None, "nope"),
        Err(tpde::Error::InvalidArgument(_))
    ));
}

// ---------------------------------------------------------------- proptest

const PROP_DTYPES: &[&str] = &[
    "F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "C64", "I8", "I32", "I64", "U16", "BOOL",
    "F4", "F6_E3M2", "Q8_0",
];

#[derive(Debug, Clone)]
struct TensorCase {
    dtype: usize,
    shape: Vec<u64>,
    /// 0: same tensor in the reference; 1: absent there; 2: another dtype there.
    ref_kind: u8,
    /// Fraction of elements changed.
    density: f64,
}

fn tensor_case() -> impl Strategy<Value = TensorCase> {
    (
        0..PROP_DTYPES.len(),
        prop::collection::vec(0u64..40, 0..=3),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        prop_oneof![Just(0.0), Just(0.001), 0.0..0.05f64, 0.3..0.7f64, Just(1.0)],
    )
        .prop_map(|(dtype, mut shape, ref_kind, density)| {
            // At most a few thousand elements.
            while shape.iter().product::<u64>() > 4000 {
                shape.pop();
            }
            TensorCase {
                dtype,
                shape,
                ref_kind,
                density,
            }
        })
}

fn build_case(seed: u64, cases: &[TensorCase]) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let mut prev = Vec::new();
    let mut cur = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let dtype = PROP_DTYPES[c.dtype];
        let mut shape = c.shape.clone();
        if byte_len(dtype, &shape).is_none() && common::dtype_bits(dtype).is_some() {
            shape.push(4); // sub-byte types: a multiple of 4 elements fills whole bytes
        }
        let name = format!("layers.{i}.{dtype}");
        let mut t = Tensor::random(&mut rng, &name, dtype, &shape);
        if dtype == "F32" && rng.chance(0.5) {
            t.data = rng.f32_weights(t.data.len() / 4, 0.02);
        }
        let mut c2 = t.clone();
        perturb_fraction(&mut rng, &mut c2.data, coding_width(dtype), c.density);
        match c.ref_kind {
            0 => prev.push(t),
            1 => {}
            _ => {
                let other = if dtype == "F32" { "I32" } else { "F32" };
                prev.push(Tensor::random(&mut rng, &name, other, &shape));
            }
        }
        cur.push(c2);
    }
    // The reference stores its tensors in another order.
    prev.reverse();
    (
        safetensors(&prev, None),
        safetensors(&cur, Some(&[("seed", "x")])),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_round_trips(
        seed in any::<u64>(),
        cases in prop::collection::vec(tensor_case(), 0..5),
        chunk in 8usize..160,
    ) {
        let opts = small_chunks(chunk * 8);
        let (pf, cf) = build_case(seed, &cases);
        let packed = roundtrip(&cf, Some(&pf), &opts);
        let r = report(&packed);
        prop_assert_eq!(r.tensors.len(), cases.len());
        roundtrip(&cf, None, &opts);
        roundtrip(&pf, Some(&cf), &opts);
    }
}

/// A torch.distributed.checkpoint shard (`__0_0.distcp`, a run of torch.save
/// archives) is coded as a torch archive against the same shard of the
/// previous checkpoint, its storages as tensors, and comes back exactly.
#[test]
fn dcp_shard_round_trips() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dcp");
    let read = |step: u32| std::fs::read(format!("{dir}/step-{step}/__0_0.distcp")).unwrap();
    let (prev, cur) = (read(1), read(2));
    let opts = tpde::EncodeOptions {
        input: tpde::InputKind::Auto,
        ..Default::default()
    };
    let mut packed = Vec::new();
    let stats = tpde::encode(&cur, Some(&prev), &opts, &mut packed, None).unwrap();
    assert_eq!(
        stats.source_kind,
        tpde::container::format::SourceKind::Archive
    );
    assert!(stats.reference_used);
    let restored = common::decode(&packed, Some(&prev)).unwrap();
    assert_eq!(common::sha256(&restored), common::sha256(&cur));
    let report = tpde::container::inspect::inspect(&packed).unwrap();
    // 4 model tensors and Adam's step, exp_avg, exp_avg_sq per parameter.
    assert_eq!(report.tensors.len(), 16);
}
