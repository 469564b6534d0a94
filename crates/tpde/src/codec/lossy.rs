//! The error-bounded lossy mode: float elements quantized against their
//! reference, closed loop, with a guarantee checked element by element.
//!
//! For an element `x` with reference `r` (the reference's *reconstruction*,
//! exactly what the decoder will have; zero in a keyframe) and bound `E`:
//!
//! ```text
//! q  = round((x - r) / 2E)            an integer: the bin of the change
//! x' = to_dtype(r + q * 2E)           computed in f64, rounded once to the dtype
//! ```
//!
//! `x'` is kept when `|x' - x| <= E` holds (checked conservatively, so that
//! rounding can never hide an excess); otherwise — NaN, infinities, huge
//! bins, or an element where the dtype's rounding breaks the bound — the
//! element is an *escape*, stored exactly. Small changes (`|x - r| < E`) fall
//! into bin 0 and cost nothing but their share of the positions. Because
//! each checkpoint is coded against the reconstruction of its reference,
//! errors do not add up along a chain.

use serde::{Deserialize, Serialize};

use crate::source::dtype::Dtype;

/// The guarantee asked of the lossy mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Every restored float element within this absolute distance of the
    /// original.
    MaxAbsError(f64),
    /// Every restored float element within this fraction of its tensor's RMS
    /// (computed over the finite elements of the tensor being encoded; the
    /// resulting absolute bound is recorded in the file).
    MaxRelError(f64),
}

impl Bound {
    /// The absolute bound for a tensor of `kind` elements `data`; `None` when
    /// the tensor stays exact (a bound of zero: an all-zero tensor under a
    /// relative bound).
    pub fn for_tensor(self, kind: FloatKind, data: &[u8]) -> Option<f64> {
        let e = match self {
            Bound::MaxAbsError(e) => e,
            Bound::MaxRelError(r) => {
                let n = data.len() / kind.width();
                let (mut sum, mut count) = (0f64, 0u64);
                for i in 0..n {
                    let v = kind.value(data, i);
                    if v.is_finite() {
                        sum += v * v;
                        count += 1;
                    }
                }
                r * (sum / count.max(1) as f64).sqrt()
            }
        };
        (e.is_finite() && e > 0.0).then_some(e)
    }

    /// Checks the setting itself: a positive, finite number.
    pub fn check(self) -> Result<Bound, String> {
        let (Bound::MaxAbsError(v) | Bound::MaxRelError(v)) = self;
        if v.is_finite() && v > 0.0 {
            Ok(self)
        } else {
            Err(format!(
                "the error bound must be a positive number, not {v}"
            ))
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::MaxAbsError(e) => write!(f, "max abs error {e}"),
            Bound::MaxRelError(r) => write!(f, "max error {r} x tensor RMS"),
        }
    }
}

/// The float formats the lossy mode quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    F16 = 1,
    BF16 = 2,
    F32 = 3,
    F64 = 4,
}

impl FloatKind {
    /// The kind of a dtype; `None` for everything kept exact (integers,
    /// bools, 8-bit and packed floats, unknown types).
    pub fn of(dtype: &Dtype) -> Option<FloatKind> {
        match dtype {
            Dtype::F16 => Some(FloatKind::F16),
            Dtype::BF16 => Some(FloatKind::BF16),
            Dtype::F32 => Some(FloatKind::F32),
            Dtype::F64 => Some(FloatKind::F64),
            _ => None,
        }
    }

    pub fn from_u8(v: u8) -> Option<FloatKind> {
        match v {
            1 => Some(FloatKind::F16),
            2 => Some(FloatKind::BF16),
            3 => Some(FloatKind::F32),
            4 => Some(FloatKind::F64),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            FloatKind::F16 | FloatKind::BF16 => 2,
            FloatKind::F32 => 4,
            FloatKind::F64 => 8,
        }
    }

    /// The value of the little-endian element at `i`.
    fn value(self, bytes: &[u8], i: usize) -> f64 {
        let w = self.width();
        let e = &bytes[i * w..(i + 1) * w];
        match self {
            FloatKind::F16 => half::f16::from_bits(u16::from_le_bytes([e[0], e[1]])).to_f64(),
            FloatKind::BF16 => half::bf16::from_bits(u16::from_le_bytes([e[0], e[1]])).to_f64(),
            FloatKind::F32 => f64::from(f32::from_le_bytes([e[0], e[1], e[2], e[3]])),
            FloatKind::F64 => f64::from_le_bytes(e.try_into().expect("8 bytes")),
        }
    }

    /// `v` rounded once (to nearest, ties to even) to this format, written
    /// little-endian into `out`.
    fn store(self, v: f64, out: &mut [u8]) {
        match self {
            FloatKind::F16 => out.copy_from_slice(&half::f16::from_f64(v).to_bits().to_le_bytes()),
            FloatKind::BF16 => {
                out.copy_from_slice(&half::bf16::from_f64(v).to_bits().to_le_bytes())
            }
            FloatKind::F32 => out.copy_from_slice(&(v as f32).to_le_bytes()),
            FloatKind::F64 => out.copy_from_slice(&v.to_le_bytes()),
        }
    }

    /// Largest bin magnitude: zigzag(q) must fit the element width.
    fn max_bin(self) -> f64 {
        (1u64 << (8 * self.width() - 2)) as f64
    }
}

/// `|a - b| <= e` for the exact difference, not the rounded one. With
/// `s = a - b` rounded and `err` its exact residual (TwoSum): if `|s| < e`,
/// then `e - |s|` is at least the spacing of doubles at `|s|`, which is more
/// than `|err|`; if `|s| == e`, the residual must point inward; otherwise
/// the pair fails (conservatively).
fn within(a: f64, b: f64, e: f64) -> bool {
    let s = a - b;
    let bb = s - a;
    let err = (a - (s - bb)) + (-b - bb);
    s.abs() < e || (s.abs() == e && (err == 0.0 || err.signum() != s.signum()))
}

/// The reconstruction of bin `q` against reference value `r`.
fn reconstruct(kind: FloatKind, r: f64, q: i64, step: f64, out: &mut [u8]) {
    kind.store(r + q as f64 * step, out);
}

fn zigzag(q: i64) -> u64 {
    ((q << 1) ^ (q >> 63)) as u64
}

fn unzigzag(t: u64) -> i64 {
    ((t >> 1) as i64) ^ -((t & 1) as i64)
}

/// One chunk quantized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quantized {
    /// zigzag(q) of every element, little-endian, element width each (0 for
    /// escapes).
    pub bins: Vec<u8>,
    /// Positions of the escapes, increasing.
    pub escapes: Vec<u32>,
    /// The decoder's output: reconstructions, and escapes exact.
    pub recon: Vec<u8>,
    /// Elements in a non-zero bin.
    pub nonzero: u64,
    /// Largest `|x' - x|` over the chunk (escapes count 0).
    pub max_error: f64,
}

/// Quantizes a chunk of `kind` elements against `reference` (same length;
/// zeros when `None`) with bound `bound` (finite, > 0).
pub fn quantize(kind: FloatKind, bound: f64, cur: &[u8], reference: Option<&[u8]>) -> Quantized {
    let w = kind.width();
    let n = cur.len() / w;
    let step = 2.0 * bound;
    let max_bin = kind.max_bin();
    let mut out = Quantized {
        bins: vec![0u8; cur.len()],
        recon: vec![0u8; cur.len()],
        ..Quantized::default()
    };
    for i in 0..n {
        let x = kind.value(cur, i);
        let r = reference.map_or(0.0, |r| kind.value(r, i));
        let slot = i * w..(i + 1) * w;
        let q = ((x - r) / step).round();
        let mut ok = x.is_finite() && r.is_finite() && q.abs() <= max_bin;
        if ok {
            let q = q as i64;
            match (q, reference) {
                // Bin 0 is the reference element itself, bit for bit.
                (0, Some(rb)) => out.recon[slot.clone()].copy_from_slice(&rb[slot.clone()]),
                _ => reconstruct(kind, r, q, step, &mut out.recon[slot.clone()]),
            }
            let got = kind.value(&out.recon, i);
            if got.is_finite() && within(got, x, bound) {
                if q != 0 {
                    let z = zigzag(q).to_le_bytes();
                    out.bins[slot.clone()].copy_from_slice(&z[..w]);
                    out.nonzero += 1;
                }
                out.max_error = out.max_error.max((got - x).abs());
            } else {
                ok = false;
            }
        }
        if !ok {
            out.recon[slot.clone()].copy_from_slice(&cur[slot]);
            out.escapes.push(i as u32);
        }
    }
    out
}

/// Rebuilds a chunk from its bins (zigzag, little-endian, `kind`'s width)
/// and reference (zeros when `None`); escapes are written afterwards by the
/// caller.
pub fn dequantize(
    kind: FloatKind,
    bound: f64,
    bins: &[u8],
    reference: Option<&[u8]>,
    out: &mut [u8],
) {
    let w = kind.width();
    let step = 2.0 * bound;
    for i in 0..bins.len() / w {
        let mut z = [0u8; 8];
        z[..w].copy_from_slice(&bins[i * w..(i + 1) * w]);
        let q = unzigzag(u64::from_le_bytes(z));
        let slot = i * w..(i + 1) * w;
        match (q, reference) {
            // Bin 0 is the reference element itself, bit for bit.
            (0, Some(r)) => out[slot.clone()].copy_from_slice(&r[slot]),
            (_, r) => {
                let rv = r.map_or(0.0, |r| kind.value(r, i));
                reconstruct(kind, rv, q, step, &mut out[slot]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips() {
        for q in [0i64, 1, -1, 2, -2, 1 << 40, -(1 << 40)] {
            assert_eq!(unzigzag(zigzag(q)), q);
        }
    }

    #[test]
    fn within_is_exact_at_the_edge() {
        assert!(within(1.0, 0.5, 0.5));
        assert!(!within(1.0, 0.5, 0.499_999_999_999));
        // A subtraction that rounds: the exact difference exceeds e.
        let a = 1.0e16;
        let b = -1.0;
        assert!(!within(a, b, 1.0e16));
    }

    #[test]
    fn quantize_keeps_the_bound_and_specials() {
        let vals: Vec<f32> = vec![0.0, 1.0, -1.0, f32::NAN, f32::INFINITY, 1e30, 3.0e-3, -0.0];
        let refs: Vec<f32> = vec![0.0, 1.0005, -0.9, 1.0, 1.0, 0.0, 0.0, 0.0];
        let cur: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let r: Vec<u8> = refs.iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = 1e-3;
        let q = quantize(FloatKind::F32, e, &cur, Some(&r));
        let mut out = vec![0u8; cur.len()];
        dequantize(FloatKind::F32, e, &q.bins, Some(&r), &mut out);
        for &i in &q.escapes {
            let s = i as usize * 4..i as usize * 4 + 4;
            out[s.clone()].copy_from_slice(&cur[s]);
        }
        assert_eq!(out, q.recon);
        for (i, v) in vals.iter().enumerate() {
            let got = f32::from_le_bytes(out[i * 4..i * 4 + 4].try_into().unwrap());
            if v.is_nan() || v.is_infinite() {
                assert_eq!(got.to_bits(), v.to_bits());
            } else {
                assert!(
                    (f64::from(got) - f64::from(*v)).abs() <= e,
                    "{i}: {got} vs {v}"
                );
            }
        }
        // Element 1 moved by 5e-4 < E: it stays the reference, bin 0.
        assert_eq!(&out[4..8], &r[4..8]);
        assert!(q.escapes.contains(&3) && q.escapes.contains(&4) && q.escapes.contains(&5));
    }
}
