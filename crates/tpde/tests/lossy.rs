//! The lossy mode's guarantee: along chains of any length, every restored
//! float element is within the bound of its original (checked exactly), NaN
//! and infinities come back bit for bit, and everything else is exact.

mod common;

use common::{safetensors, Rng, Tensor};
use proptest::prelude::*;
use tpde::codec::lossy::Bound;
use tpde::{EncodeOptions, InputKind};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F16,
    BF16,
    F32,
    F64,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::F16 => "F16",
            Kind::BF16 => "BF16",
            Kind::F32 => "F32",
            Kind::F64 => "F64",
        }
    }
    fn width(self) -> usize {
        match self {
            Kind::F16 | Kind::BF16 => 2,
            Kind::F32 => 4,
            Kind::F64 => 8,
        }
    }
    fn get(self, b: &[u8], i: usize) -> f64 {
        let w = self.width();
        let e = &b[i * w..(i + 1) * w];
        match self {
            Kind::F16 => half::f16::from_le_bytes([e[0], e[1]]).to_f64(),
            Kind::BF16 => half::bf16::from_le_bytes([e[0], e[1]]).to_f64(),
            Kind::F32 => f64::from(f32::from_le_bytes(e.try_into().unwrap())),
            Kind::F64 => f64::from_le_bytes(e.try_into().unwrap()),
        }
    }
    fn put(self, v: f64) -> Vec<u8> {
        match self {
            Kind::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            Kind::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            Kind::F32 => (v as f32).to_le_bytes().to_vec(),
            Kind::F64 => v.to_le_bytes().to_vec(),
        }
    }
}

/// `|a - b| <= e`, exactly. For values read from F16/BF16/F32 the f64
/// difference is exact; for F64 it is off by at most half an ulp of the
/// result, which the factor covers.
fn within(kind: Kind, a: f64, b: f64, e: f64) -> bool {
    let d = (a - b).abs();
    match kind {
        Kind::F64 => d * (1.0 + f64::EPSILON) <= e,
        _ => d <= e,
    }
}

fn options(bound: Bound, chunk: usize) -> EncodeOptions {
    EncodeOptions {
        chunk_size: chunk,
        input: InputKind::Safetensors,
        lossy: Some(bound),
        ..EncodeOptions::default()
    }
}

/// One step of a training-like chain: most elements move a little, some a
/// lot, a few become NaN, infinities or subnormals.
fn evolve(rng: &mut Rng, kind: Kind, values: &mut [f64], scale: f64) {
    for v in values.iter_mut() {
        let u = rng.below(1000);
        *v = match u {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => 1e-40,
            4..=30 => rng.normal() * 10.0,
            _ if v.is_finite() => *v + rng.normal() * scale,
            _ => rng.normal(),
        };
        // Round to the dtype, as a training step would store it.
        *v = kind.get(&kind.put(*v), 0);
    }
}

/// Runs a chain of `steps` checkpoints and checks the bound at every step.
fn chain(kind: Kind, bound: Bound, steps: usize, n: usize, seed: u64, chunk: usize) {
    let mut rng = Rng::new(seed);
    let mut values: Vec<f64> = (0..n).map(|_| rng.normal() * 0.05).collect();
    let counter: Vec<u8> = (0..n as u64).flat_map(|i| i.to_le_bytes()).collect();
    let mut recon: Option<Vec<u8>> = None;
    for step in 0..steps {
        evolve(&mut rng, kind, &mut values, 2e-3);
        let data: Vec<u8> = values.iter().flat_map(|&v| kind.put(v)).collect();
        let file = safetensors(
            &[
                Tensor::new("w", kind.name(), &[n as u64], data.clone()),
                Tensor::new("steps", "I64", &[n as u64], counter.clone()),
            ],
            Some(&[("step", &step.to_string())]),
        );
        let mut packed = Vec::new();
        let stats = tpde::encode(
            &file,
            recon.as_deref(),
            &options(bound, chunk),
            &mut packed,
            None,
        )
        .unwrap();
        let mut out = Vec::new();
        tpde::decode(&packed, recon.as_deref(), &mut out, None).unwrap();
        assert_eq!(format_digest(&out), stats.output_digest);
        assert_eq!(out.len(), file.len());
        let h = tpde::source::safetensors::parse(&out).unwrap();
        // The header and the integer tensor are exact.
        assert_eq!(out[..h.header_len as usize], file[..h.header_len as usize]);
        let at = |name: &str| {
            let t = h.get(name).unwrap();
            (h.header_len + t.begin) as usize..(h.header_len + t.end) as usize
        };
        assert_eq!(out[at("steps")], file[at("steps")]);
        let e = match bound {
            Bound::MaxAbsError(e) => e,
            Bound::MaxRelError(r) => {
                let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
                r * (finite.iter().map(|v| v * v).sum::<f64>() / finite.len().max(1) as f64).sqrt()
            }
        };
        let got = &out[at("w")];
        let mut max = 0f64;
        for (i, &x) in values.iter().enumerate() {
            let y = kind.get(got, i);
            if x.is_nan() || x.is_infinite() {
                let w = kind.width();
                assert_eq!(
                    got[i * w..(i + 1) * w],
                    data[i * w..(i + 1) * w],
                    "step {step}, element {i}"
                );
            } else {
                assert!(
                    within(kind, y, x, e),
                    "{kind:?} step {step}, element {i}: {y} vs {x}, bound {e}"
                );
                max = max.max((y - x).abs());
            }
        }
        let reported = stats.max_abs_error.unwrap();
        assert!(reported <= e * (1.0 + 1e-12) && (reported - max).abs() <= e * 1e-9 + f64::EPSILON);
        let report = tpde::container::inspect::inspect(&packed).unwrap();
        assert!(report.lossy);
        recon = Some(out);
    }
}

fn format_digest(b: &[u8]) -> u128 {
    tpde::container::format::digest(b)
}

#[test]
fn fifty_step_chains_stay_within_the_bound() {
    for (k, kind) in [Kind::F32, Kind::F16, Kind::BF16, Kind::F64]
        .into_iter()
        .enumerate()
    {
        chain(kind, Bound::MaxAbsError(1e-3), 50, 3000, k as u64, 4096);
    }
}

#[test]
fn relative_bounds_and_keyframes() {
    chain(Kind::F32, Bound::MaxRelError(0.01), 5, 2000, 11, 1024);
    chain(Kind::BF16, Bound::MaxRelError(0.05), 5, 2000, 12, 1 << 20);
}

#[test]
fn lossy_is_smaller_and_says_so() {
    let mut rng = Rng::new(3);
    let a = rng.f32_weights(50_000, 0.05);
    let mut b = a.clone();
    common::perturb_fraction(&mut rng, &mut b, 4, 0.5);
    let fa = safetensors(&[Tensor::new("w", "F32", &[50_000], a)], None);
    let fb = safetensors(&[Tensor::new("w", "F32", &[50_000], b)], None);
    let exact = common::encode(&fb, Some(&fa), &EncodeOptions::default());
    let mut lossy = Vec::new();
    tpde::encode(
        &fb,
        Some(&fa),
        &options(Bound::MaxAbsError(1e-3), 4 << 20),
        &mut lossy,
        None,
    )
    .unwrap();
    assert!(
        lossy.len() * 2 < exact.len(),
        "{} vs {}",
        lossy.len(),
        exact.len()
    );
    let r = tpde::container::inspect::inspect(&lossy).unwrap();
    // Version 6: with reference data, a float chunk may be symbols.
    assert!(r.lossy && r.version == 6);
    assert_eq!(r.tensors[0].max_abs_error, Some(1e-3));
    let exact_report = tpde::container::inspect::inspect(&exact).unwrap();
    assert!(!exact_report.lossy && exact_report.tensors[0].max_abs_error.is_none());
    // A bad bound is refused.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = tpde::encode(
            &fb,
            None,
            &options(Bound::MaxAbsError(bad), 4096),
            &mut Vec::new(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("positive number"), "{err}");
    }
    // The lossy flag cannot be dropped: a quantized chunk in a file that
    // does not say it is lossy is corrupt (index checksum made to match).
    let mut forged = lossy.clone();
    let len = forged.len();
    let index_offset = u64::from_le_bytes(forged[len - 32..len - 24].try_into().unwrap()) as usize;
    forged[index_offset] &= !2;
    // Version 5: the checksum covers the file header and the index.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&forged[..16]);
    h.update(&forged[index_offset..len - 32]);
    forged[len - 16..len - 8].copy_from_slice(&h.digest().to_le_bytes());
    let err = tpde::decode(&forged, Some(&fa), &mut Vec::new(), None).unwrap_err();
    assert!(
        err.to_string().contains("does not say it is lossy"),
        "{err}"
    );
    // Nor can the version: a lossy file marked version 2 is refused.
    // (Index checksum made to match: before version 5 it is of the index.)
    let mut old = lossy.clone();
    old[8..10].copy_from_slice(&2u16.to_le_bytes());
    let hash = xxhash_rust::xxh3::xxh3_64(&old[index_offset..len - 32]);
    old[len - 16..len - 8].copy_from_slice(&hash.to_le_bytes());
    let err = tpde::decode(&old, Some(&fa), &mut Vec::new(), None).unwrap_err();
    assert!(
        err.to_string().contains("lossy flag in a version 2 file"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_chains(
        seed in any::<u64>(),
        kind in prop::sample::select(vec![Kind::F16, Kind::BF16, Kind::F32, Kind::F64]),
        exp in -6i32..0,
        n in 1usize..700,
        chunk in prop::sample::select(vec![64usize, 256, 4096]),
    ) {
        chain(kind, Bound::MaxAbsError(10f64.powi(exp)), 50, n, seed, chunk);
    }
}

/// Chunks with the same bytes share a payload only when they are coded the
/// same way: an integer tensor whose bytes equal those of a float tensor
/// stays exact, and two float tensors with the same bytes but different
/// relative bounds (other RMS) each keep their own bound. Found by fuzzing.
#[test]
fn equal_bytes_coded_differently_are_not_shared() {
    let mut rng = Rng::new(11);
    let n = 4096u64;
    let w = rng.f32_weights(n as usize, 0.5);
    let mut big = rng.f32_weights(n as usize, 100.0);
    big[..w.len() / 2].copy_from_slice(&w[..w.len() / 2]);
    let cur = safetensors(
        &[
            Tensor::new("f", "F32", &[n], w.clone()),
            Tensor::new("i", "I32", &[n], w.clone()),
            Tensor::new("g", "F32", &[n], big.clone()),
        ],
        None,
    );
    for bound in [Bound::MaxAbsError(1e-2), Bound::MaxRelError(0.05)] {
        let opts = EncodeOptions {
            chunk_size: 8192,
            lossy: Some(bound),
            ..EncodeOptions::default()
        };
        let mut packed = Vec::new();
        let stats = tpde::encode(&cur, None, &opts, &mut packed, None).unwrap();
        let out = common::decode(&packed, None).unwrap();
        assert_eq!(tpde::container::format::digest(&out), stats.output_digest);
        let hl = cur.len() - 3 * w.len();
        let part = |k: usize| &out[hl + k * w.len()..hl + (k + 1) * w.len()];
        assert_eq!(part(1), &w[..], "{bound:?}: the I32 tensor is exact");
        // Each float tensor within its own bound (relative: times its RMS).
        let rms = |b: &[u8]| {
            let v: Vec<f64> = b
                .chunks_exact(4)
                .map(|x| f64::from(f32::from_le_bytes(x.try_into().unwrap())))
                .filter(|x| x.is_finite())
                .collect();
            (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
        };
        for (k, orig) in [(0, &w), (2, &big)] {
            let e = match bound {
                Bound::MaxAbsError(e) => e,
                Bound::MaxRelError(r) => r * rms(orig),
            };
            for (x, y) in part(k).chunks_exact(4).zip(orig.chunks_exact(4)) {
                let (x, y) = (
                    f32::from_le_bytes(x.try_into().unwrap()),
                    f32::from_le_bytes(y.try_into().unwrap()),
                );
                assert!(
                    (f64::from(x) - f64::from(y)).abs() <= e,
                    "{bound:?}, tensor {k}: {x} vs {y}"
                );
            }
        }
    }
}
