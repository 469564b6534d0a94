//! The element loops of a diff: changed elements, max and RMS absolute
//! change and relative change of one tensor between two steps, from the
//! values of each dtype (floats in f64, integers exact in i128, complex as
//! pairs, F8 by their formats, anything else byte by byte).
//!
//! May call: `source` (dtypes, safetensors' tensor info).

use super::{DiffKind, TensorDiff};
use crate::source::dtype::{Dtype, Family};
use crate::source::safetensors::TensorInfo;

pub(super) fn fraction(changed: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        changed as f64 / elements as f64
    }
}

/// What the element loops add up.
#[derive(Default)]
struct Acc {
    elements: u64,
    changed: u64,
    nonfinite: u64,
    max: f64,
    sum_sq_diff: f64,
    sum_sq_a: f64,
}

impl Acc {
    fn diff(&mut self, d: f64) {
        if d.is_finite() {
            self.max = self.max.max(d.abs());
            self.sum_sq_diff += d * d;
        } else {
            self.nonfinite += 1;
        }
    }
}

fn floats<const W: usize>(a: &[u8], b: &[u8], val: impl Fn([u8; W]) -> f64) -> Acc {
    let mut acc = Acc::default();
    for (x, y) in a.chunks_exact(W).zip(b.chunks_exact(W)) {
        let x: [u8; W] = x.try_into().expect("W bytes");
        let va = val(x);
        if va.is_finite() {
            acc.sum_sq_a += va * va;
        }
        acc.elements += 1;
        if x != y {
            acc.changed += 1;
            let y: [u8; W] = y.try_into().expect("W bytes");
            acc.diff(val(y) - va);
        }
    }
    acc
}

fn ints<const W: usize>(a: &[u8], b: &[u8], val: impl Fn([u8; W]) -> i128) -> Acc {
    let mut acc = Acc::default();
    for (x, y) in a.chunks_exact(W).zip(b.chunks_exact(W)) {
        acc.elements += 1;
        if x != y {
            acc.changed += 1;
            let x: [u8; W] = x.try_into().expect("W bytes");
            let y: [u8; W] = y.try_into().expect("W bytes");
            acc.diff((val(y) - val(x)) as f64);
        }
    }
    acc
}

fn complex(a: &[u8], b: &[u8]) -> Acc {
    let mut acc = Acc::default();
    let parts = |x: &[u8]| {
        let re = f32::from_le_bytes(x[..4].try_into().expect("4 bytes")) as f64;
        let im = f32::from_le_bytes(x[4..].try_into().expect("4 bytes")) as f64;
        (re, im)
    };
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (ar, ai) = parts(x);
        let sq = ar * ar + ai * ai;
        if sq.is_finite() {
            acc.sum_sq_a += sq;
        }
        acc.elements += 1;
        if x != y {
            acc.changed += 1;
            let (br, bi) = parts(y);
            acc.diff((br - ar).hypot(bi - ai));
        }
    }
    acc
}

fn bytewise(a: &[u8], b: &[u8]) -> Acc {
    Acc {
        elements: a.len() as u64,
        changed: a.iter().zip(b).filter(|(x, y)| x != y).count() as u64,
        ..Acc::default()
    }
}

/// F8 E4M3 (the "fn" kind: no infinities, S.1111.111 is NaN).
fn f8e4m3(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xf, b & 7);
    if e == 0xf && m == 7 {
        return f64::NAN;
    }
    let v = if e == 0 {
        f64::from(m) / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + f64::from(m) / 8.0) * 2f64.powi(i32::from(e) - 7)
    };
    sign * v
}

/// F8 E5M2 (IEEE-like: infinities and NaNs at exponent 31).
fn f8e5m2(b: u8) -> f64 {
    half::f16::from_bits(u16::from(b) << 8).to_f64()
}

/// F8 E8M0: a power of two, 0xff is NaN.
fn f8e8m0(b: u8) -> f64 {
    if b == 0xff {
        f64::NAN
    } else {
        2f64.powi(i32::from(b) - 127)
    }
}

/// Compares one tensor of the same dtype and shape in both steps.
pub(super) fn compare(file: &str, t: &TensorInfo, a: &[u8], b: &[u8]) -> TensorDiff {
    use Dtype::*;
    let (acc, values) = match t.dtype {
        F16 => (
            floats(a, b, |x: [u8; 2]| half::f16::from_le_bytes(x).to_f64()),
            true,
        ),
        BF16 => (
            floats(a, b, |x: [u8; 2]| half::bf16::from_le_bytes(x).to_f64()),
            true,
        ),
        F32 => (
            floats(a, b, |x: [u8; 4]| f64::from(f32::from_le_bytes(x))),
            true,
        ),
        F64 => (floats(a, b, f64::from_le_bytes), true),
        F8E4M3 => (floats(a, b, |x: [u8; 1]| f8e4m3(x[0])), true),
        F8E5M2 => (floats(a, b, |x: [u8; 1]| f8e5m2(x[0])), true),
        F8E8M0 => (floats(a, b, |x: [u8; 1]| f8e8m0(x[0])), true),
        C64 => (complex(a, b), true),
        Bool | U8 => (ints(a, b, |x: [u8; 1]| i128::from(x[0])), true),
        I8 => (ints(a, b, |x: [u8; 1]| i128::from(x[0] as i8)), true),
        U16 => (ints(a, b, |x| i128::from(u16::from_le_bytes(x))), true),
        I16 => (ints(a, b, |x| i128::from(i16::from_le_bytes(x))), true),
        U32 => (ints(a, b, |x| i128::from(u32::from_le_bytes(x))), true),
        I32 => (ints(a, b, |x| i128::from(i32::from_le_bytes(x))), true),
        U64 => (ints(a, b, |x| i128::from(u64::from_le_bytes(x))), true),
        I64 => (ints(a, b, |x| i128::from(i64::from_le_bytes(x))), true),
        F4 | F6E2M3 | F6E3M2 | Unknown(_) => (bytewise(a, b), false),
    };
    let float = t.dtype.family() == Family::Float;
    let rms = (values && acc.elements > 0).then(|| (acc.sum_sq_diff / acc.elements as f64).sqrt());
    let rel = if !float || !values {
        None
    } else if acc.sum_sq_diff == 0.0 {
        Some(0.0)
    } else if acc.sum_sq_a > 0.0 {
        Some((acc.sum_sq_diff / acc.sum_sq_a).sqrt())
    } else {
        None
    };
    TensorDiff {
        file: file.to_string(),
        name: t.name.clone(),
        kind: DiffKind::Compared,
        dtype: t.dtype.name().to_string(),
        shape: t.shape.clone(),
        before: None,
        elements: acc.elements,
        changed: acc.changed,
        changed_from_store: false,
        changed_fraction: Some(fraction(acc.changed, acc.elements)),
        max_abs: values.then_some(acc.max),
        rms,
        rel,
        nonfinite: acc.nonfinite,
        sum_sq_diff: if float { acc.sum_sq_diff } else { 0.0 },
        sum_sq_a: if float { acc.sum_sq_a } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f8_values() {
        assert_eq!(f8e4m3(0x38), 1.0);
        assert_eq!(f8e4m3(0x7e), 448.0);
        assert!(f8e4m3(0x7f).is_nan());
        assert_eq!(f8e4m3(0x01), 2f64.powi(-9));
        assert_eq!(f8e5m2(0x3c), 1.0);
        assert_eq!(f8e5m2(0x7b), 57344.0);
        assert!(f8e5m2(0x7c).is_infinite());
        assert_eq!(f8e8m0(127), 1.0);
        assert!(f8e8m0(0xff).is_nan());
    }

    #[test]
    fn values_and_counts() {
        let t = TensorInfo {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![4],
            begin: 0,
            end: 16,
        };
        let a: Vec<u8> = [1.0f32, 2.0, 3.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [1.0f32, 2.5, 1.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let d = compare("f", &t, &a, &b);
        assert_eq!((d.elements, d.changed, d.nonfinite), (4, 3, 1));
        assert_eq!(d.max_abs, Some(2.0));
        assert_eq!(d.rms, Some(((0.25 + 4.0) / 4.0f64).sqrt()));
        assert_eq!(d.rel, Some((4.25f64 / 14.0).sqrt()));
        let i = TensorInfo {
            dtype: Dtype::I64,
            shape: vec![2],
            ..t
        };
        let a: Vec<u8> = [i64::MIN, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [i64::MAX, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let d = compare("f", &i, &a, &b);
        assert_eq!(
            (d.changed, d.max_abs, d.rel),
            (1, Some(u64::MAX as f64), None)
        );
    }
}
