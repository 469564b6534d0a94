//! Transforms on bit patterns (never on float arithmetic) and byte planes.
//!
//! Every transform is a bijection that maps "same bits as the reference" to
//! zero, so the changed positions are the non-zero transformed elements.

use crate::common::error::{Error, Result};

/// A transform of an element against its reference element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Transform {
    /// No reference: the values are the raw elements.
    None = 0,
    /// `c ^ r`.
    Xor = 1,
    /// `zigzag(c - r)`, wrapping, on the integer bits.
    IntDiff = 2,
    /// `zigzag(key(c) - key(r))` with the monotone key of sign-magnitude floats.
    Ulp = 3,
}

impl Transform {
    /// Decodes the format's transform byte.
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Transform::None,
            1 => Transform::Xor,
            2 => Transform::IntDiff,
            3 => Transform::Ulp,
            other => return Err(Error::corrupt(format!("unknown transform {other}"))),
        })
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Transform::None => "raw",
            Transform::Xor => "xor",
            Transform::IntDiff => "diff",
            Transform::Ulp => "ulp",
        }
    }
}

/// An unsigned machine word of 1, 2, 4 or 8 bytes, read little-endian.
pub(crate) trait Word: Copy + Eq + Default + Send + Sync {
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
    fn is_zero(self) -> bool;
    fn xor(self, o: Self) -> Self;
    /// zigzag(self - r), wrapping.
    fn diff(self, r: Self) -> Self;
    /// r + unzigzag(t), wrapping.
    fn undiff(r: Self, t: Self) -> Self;
    /// Monotone key of a sign-magnitude float bit pattern.
    fn key(self) -> Self;
    fn unkey(self) -> Self;
    /// Byte `k` (little-endian) of the value.
    fn byte(self, k: usize) -> u8;
    /// The value with `b` OR-ed in as byte `k`.
    fn or_byte(self, b: u8, k: usize) -> Self;
}

macro_rules! word {
    ($u:ty, $i:ty) => {
        impl Word for $u {
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                <$u>::from_le_bytes(b.try_into().expect("element width"))
            }
            #[inline(always)]
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn is_zero(self) -> bool {
                self == 0
            }
            #[inline(always)]
            fn xor(self, o: Self) -> Self {
                self ^ o
            }
            #[inline(always)]
            fn diff(self, r: Self) -> Self {
                let d = self.wrapping_sub(r) as $i;
                ((d << 1) ^ (d >> (<$u>::BITS - 1))) as $u
            }
            #[inline(always)]
            fn undiff(r: Self, t: Self) -> Self {
                let d = (t >> 1) ^ (t & 1).wrapping_neg();
                r.wrapping_add(d)
            }
            #[inline(always)]
            fn key(self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                if self & SIGN == 0 {
                    self ^ SIGN
                } else {
                    !self
                }
            }
            #[inline(always)]
            fn byte(self, k: usize) -> u8 {
                (self >> (8 * k)) as u8
            }
            #[inline(always)]
            fn or_byte(self, b: u8, k: usize) -> Self {
                self | (<$u>::from(b) << (8 * k))
            }
            #[inline(always)]
            fn unkey(self) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                if self & SIGN != 0 {
                    self ^ SIGN
                } else {
                    !self
                }
            }
        }
    };
}
word!(u8, i8);
word!(u16, i16);
word!(u32, i32);
word!(u64, i64);

#[inline(always)]
fn apply<W: Word>(t: Transform, c: W, r: W) -> W {
    match t {
        Transform::None => c,
        Transform::Xor => c.xor(r),
        Transform::IntDiff => c.diff(r),
        Transform::Ulp => c.key().diff(r.key()),
    }
}

#[inline(always)]
fn invert<W: Word>(t: Transform, v: W, r: W) -> W {
    match t {
        Transform::None => v,
        Transform::Xor => v.xor(r),
        Transform::IntDiff => W::undiff(r, v),
        Transform::Ulp => W::undiff(r.key(), v).unkey(),
    }
}

fn transform_of<const T: u8>() -> Transform {
    match T {
        1 => Transform::Xor,
        2 => Transform::IntDiff,
        3 => Transform::Ulp,
        _ => Transform::None,
    }
}

/// Calls `$f::<word, width, transform>($args)` for a width and transform
/// known only at run time: every loop is compiled once per combination.
macro_rules! dispatch {
    ($width:expr, $t:expr, $f:ident, $($arg:expr),*) => {
        match ($width, $t) {
            (1, Transform::None) => $f::<u8, 1, 0>($($arg),*),
            (1, Transform::Xor) => $f::<u8, 1, 1>($($arg),*),
            (1, Transform::IntDiff) => $f::<u8, 1, 2>($($arg),*),
            (1, Transform::Ulp) => $f::<u8, 1, 3>($($arg),*),
            (2, Transform::None) => $f::<u16, 2, 0>($($arg),*),
            (2, Transform::Xor) => $f::<u16, 2, 1>($($arg),*),
            (2, Transform::IntDiff) => $f::<u16, 2, 2>($($arg),*),
            (2, Transform::Ulp) => $f::<u16, 2, 3>($($arg),*),
            (4, Transform::None) => $f::<u32, 4, 0>($($arg),*),
            (4, Transform::Xor) => $f::<u32, 4, 1>($($arg),*),
            (4, Transform::IntDiff) => $f::<u32, 4, 2>($($arg),*),
            (4, Transform::Ulp) => $f::<u32, 4, 3>($($arg),*),
            (8, Transform::None) => $f::<u64, 8, 0>($($arg),*),
            (8, Transform::Xor) => $f::<u64, 8, 1>($($arg),*),
            (8, Transform::IntDiff) => $f::<u64, 8, 2>($($arg),*),
            (8, Transform::Ulp) => $f::<u64, 8, 3>($($arg),*),
            _ => unreachable!("width is checked by the caller"),
        }
    };
}

fn split_mut<const W: usize>(out: &mut [u8], n: usize) -> [&mut [u8]; W] {
    let mut rest = out;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        head
    })
}

/// Transforms `cur` against `reference` (same length, a multiple of
/// `width`; ignored with [`Transform::None`]) and writes the result straight
/// into byte planes, laid out one after another in `planes`: plane k (byte k
/// of each little-endian element) at `[k*n, (k+1)*n)`. One pass. Returns
/// the number of non-zero transformed elements.
pub fn forward_planes(
    t: Transform,
    width: usize,
    cur: &[u8],
    reference: &[u8],
    planes: &mut [u8],
) -> u64 {
    debug_assert_eq!(cur.len(), planes.len());
    debug_assert!(t == Transform::None || cur.len() == reference.len());
    dispatch!(width, t, fwd_planes, cur, reference, planes)
}

/// Elements per block in the fused plane loops: small enough for the stack,
/// long enough for the compiler to vectorize each pass.
const BLOCK: usize = 256;

fn fwd_planes<U: Word, const W: usize, const T: u8>(
    cur: &[u8],
    reference: &[u8],
    planes: &mut [u8],
) -> u64 {
    let t = transform_of::<T>();
    let n = cur.len() / W;
    let mut p: [&mut [u8]; W] = split_mut::<W>(planes, n);
    let mut count = 0u64;
    let mut v = [U::default(); BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let c = &cur[start * W..(start + len) * W];
        if T == 0 {
            for (x, e) in v.iter_mut().zip(c.chunks_exact(W)) {
                *x = U::load(e);
            }
        } else {
            let r = &reference[start * W..(start + len) * W];
            for ((x, e), f) in v.iter_mut().zip(c.chunks_exact(W)).zip(r.chunks_exact(W)) {
                *x = apply(t, U::load(e), U::load(f));
            }
        }
        count += v[..len].iter().filter(|x| !x.is_zero()).count() as u64;
        for (k, plane) in p.iter_mut().enumerate() {
            for (o, x) in plane[start..start + len].iter_mut().zip(&v[..len]) {
                *o = x.byte(k);
            }
        }
        start += len;
    }
    count
}

/// The positions of the elements of `cur` whose transform against
/// `reference` is not zero, and those transformed elements as byte planes
/// (plane k at `[k*m, (k+1)*m)` for `m` positions): what
/// [`forward_planes`] and a gather at the non-zero elements give, without
/// the planes of every element. An element transforms to zero exactly when
/// it equals its reference element (or, with [`Transform::None`], is zero),
/// so the positions come from comparing eight bytes a word.
pub fn forward_sparse(
    t: Transform,
    width: usize,
    cur: &[u8],
    reference: &[u8],
) -> (Vec<u32>, Vec<u8>) {
    debug_assert!(t == Transform::None || cur.len() == reference.len());
    dispatch!(width, t, fwd_sparse, cur, reference)
}

fn fwd_sparse<U: Word, const W: usize, const T: u8>(
    cur: &[u8],
    reference: &[u8],
) -> (Vec<u32>, Vec<u8>) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let t = transform_of::<T>();
    let n = cur.len() / W;
    let per_word = 8 / W;
    let words = cur.len() / 8;
    let mut pos = Vec::new();
    // The values' bytes, a plane each, joined at the end.
    let mut planes: [Vec<u8>; W] = std::array::from_fn(|_| Vec::new());
    let word = |b: &[u8], k: usize| u64::from_le_bytes(b[8 * k..8 * k + 8].try_into().expect("8"));
    let diff = |k: usize| {
        if T == 0 {
            word(cur, k)
        } else {
            word(cur, k) ^ word(reference, k)
        }
    };
    // Element i, found changed: its position and transformed bytes, read
    // while its word is in the cache.
    let mut take = |i: usize| {
        let c = U::load(&cur[i * W..i * W + W]);
        let v = if T == 0 {
            c
        } else {
            apply(t, c, U::load(&reference[i * W..i * W + W]))
        };
        pos.push(i as u32);
        for (k, plane) in planes.iter_mut().enumerate() {
            plane.push(v.byte(k));
        }
    };
    // The high bit of each byte that differs (or is not zero), folded onto
    // bit 7 of the element's first byte.
    let first: u64 = match W {
        1 => HIGH,
        2 => 0x0080_0080_0080_0080,
        4 => 0x0000_0080_0000_0080,
        _ => 0x80,
    };
    let mut k = 0;
    while k < words {
        // Eight words at a time, skipped when none differs.
        let end = (k + 8).min(words);
        if end == k + 8 && (k..end).fold(0, |a, j| a | diff(j)) == 0 {
            k = end;
            continue;
        }
        for j in k..end {
            let x = diff(j);
            let mut b = (((x & LOW7) + LOW7) | x) & HIGH;
            let mut shift = 8;
            while shift < 8 * W {
                b |= b >> shift;
                shift *= 2;
            }
            b &= first;
            while b != 0 {
                take(j * per_word + (b.trailing_zeros() / (8 * W as u32)) as usize);
                b &= b - 1;
            }
        }
        k = end;
    }
    for i in words * per_word..n {
        let changed = if T == 0 {
            !U::load(&cur[i * W..i * W + W]).is_zero()
        } else {
            cur[i * W..i * W + W] != reference[i * W..i * W + W]
        };
        if changed {
            take(i);
        }
    }
    (pos, planes.concat())
}

/// Undoes [`forward_planes`]: rebuilds the original elements from the byte
/// planes (`width` slices) of every transformed element, in one pass.
/// Returns the number of non-zero transformed elements.
pub fn inverse_planes(
    t: Transform,
    width: usize,
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) -> u64 {
    dispatch!(width, t, inv_planes, planes, reference, out)
}

fn inv_planes<U: Word, const W: usize, const T: u8>(
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) -> u64 {
    let p: [&[u8]; W] = std::array::from_fn(|k| planes[k]);
    let t = transform_of::<T>();
    let n = out.len() / W;
    let mut count = 0u64;
    let mut v = [U::default(); BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        v[..len].fill(U::default());
        for (k, plane) in p.iter().enumerate() {
            for (x, &b) in v[..len].iter_mut().zip(&plane[start..start + len]) {
                *x = x.or_byte(b, k);
            }
        }
        count += v[..len].iter().filter(|x| !x.is_zero()).count() as u64;
        let o = &mut out[start * W..(start + len) * W];
        if T == 0 {
            for (x, e) in v.iter().zip(o.chunks_exact_mut(W)) {
                x.store(e);
            }
        } else {
            let r = &reference[start * W..(start + len) * W];
            for ((x, e), f) in v.iter().zip(o.chunks_exact_mut(W)).zip(r.chunks_exact(W)) {
                invert(t, *x, U::load(f)).store(e);
            }
        }
        start += len;
    }
    count
}

/// Rebuilds the original elements of a sparse chunk: every element is its
/// reference element except those at `pos`, whose transformed values are
/// given as byte planes (`width` slices) of `pos.len()` values. With
/// [`Transform::None`] the other elements are zero.
pub fn inverse_sparse(
    t: Transform,
    width: usize,
    pos: &[u32],
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) {
    dispatch!(width, t, inv_sparse, pos, planes, reference, out)
}

fn inv_sparse<U: Word, const W: usize, const T: u8>(
    pos: &[u32],
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) {
    let p: [&[u8]; W] = std::array::from_fn(|k| planes[k]);
    let t = transform_of::<T>();
    if t == Transform::None {
        out.fill(0);
    } else {
        out.copy_from_slice(reference);
    }
    let mut b = [0u8; W];
    for (j, &q) in pos.iter().enumerate() {
        for k in 0..W {
            b[k] = p[k][j];
        }
        let q = q as usize;
        let o = &mut out[q * W..q * W + W];
        let r = if t == Transform::None {
            U::default()
        } else {
            U::load(o)
        };
        invert(t, U::load(&b), r).store(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sparse transform gives what the planes of every element and a
    /// gather at their non-zero elements give, for every width, transform
    /// and density, lengths that are not a multiple of a word included.
    #[test]
    fn forward_sparse_is_the_planes_gathered() {
        let mut next = crate::codec::chunk::tests::rng(5);
        for width in [1usize, 2, 4, 8] {
            for t in [
                Transform::None,
                Transform::Xor,
                Transform::IntDiff,
                Transform::Ulp,
            ] {
                for (n, density) in [
                    (0usize, 1u64),
                    (1, 2),
                    (13, 3),
                    (1000, 1),
                    (4099, 16),
                    (777, 64),
                ] {
                    let r: Vec<u8> = (0..n * width).map(|_| next() as u8).collect();
                    let mut c = r.clone();
                    if t == Transform::None {
                        c.fill(0);
                    }
                    for i in 0..n {
                        if next() % 64 < density {
                            // One byte changed (any of them), or the whole element.
                            let k = (next() as usize) % width;
                            c[i * width + k] ^= (next() as u8) | 1;
                        }
                    }
                    let mut planes = vec![0u8; c.len()];
                    let nnz = forward_planes(t, width, &c, &r, &mut planes);
                    let (pos, values) = forward_sparse(t, width, &c, &r);
                    assert_eq!(pos.len() as u64, nnz, "{width} {t:?} {n}");
                    let m = pos.len();
                    for (j, &q) in pos.iter().enumerate() {
                        for k in 0..width {
                            assert_eq!(values[k * m + j], planes[k * n + q as usize]);
                        }
                    }
                    let listed: Vec<u32> = (0..n as u32)
                        .filter(|&i| (0..width).any(|k| planes[k * n + i as usize] != 0))
                        .collect();
                    assert_eq!(pos, listed, "{width} {t:?} {n}");
                }
            }
        }
    }

    /// Reference: element by element, no planes, no blocks.
    fn scalar<U: Word>(t: Transform, w: usize, cur: &[u8], r: &[u8], inv: bool) -> Vec<u8> {
        let mut out = vec![0u8; cur.len()];
        for (i, o) in out.chunks_exact_mut(w).enumerate() {
            let c = U::load(&cur[i * w..(i + 1) * w]);
            let rr = U::load(&r[i * w..(i + 1) * w]);
            if inv {
                invert(t, c, rr)
            } else {
                apply(t, c, rr)
            }
            .store(o);
        }
        out
    }

    fn reference_impl(t: Transform, width: usize, cur: &[u8], r: &[u8], inv: bool) -> Vec<u8> {
        match width {
            1 => scalar::<u8>(t, 1, cur, r, inv),
            2 => scalar::<u16>(t, 2, cur, r, inv),
            4 => scalar::<u32>(t, 4, cur, r, inv),
            _ => scalar::<u64>(t, 8, cur, r, inv),
        }
    }

    /// Byte planes of elements, as the format lays them out.
    fn planes_of(width: usize, v: &[u8]) -> Vec<u8> {
        let n = v.len() / width;
        let mut p = vec![0u8; v.len()];
        for i in 0..n {
            for k in 0..width {
                p[k * n + i] = v[i * width + k];
            }
        }
        p
    }

    const ALL: [Transform; 4] = [
        Transform::None,
        Transform::Xor,
        Transform::IntDiff,
        Transform::Ulp,
    ];

    fn patterns(width: usize) -> Vec<u8> {
        // Edge bit patterns: zeros, sign bits, all ones, NaN-like and subnormal-like.
        let mut v = Vec::new();
        let specials: [u64; 10] = [
            0,
            1,
            u64::MAX,
            1 << (width * 8 - 1),
            (1 << (width * 8 - 1)) | 1,
            u64::MAX >> 1,
            0x7ff8_0000_0000_0001,
            0xfff0_0000_0000_0000,
            0x0000_0000_0000_0003,
            0x8000_0000_0000_0003,
        ];
        for a in specials {
            v.extend_from_slice(&a.to_le_bytes()[..width]);
        }
        v
    }

    #[test]
    fn every_transform_inverts_on_edge_patterns() {
        for width in [1, 2, 4, 8] {
            let p = patterns(width);
            let n = p.len() / width;
            for shift in 0..n {
                let mut r = p.clone();
                r.rotate_left(shift * width);
                for t in ALL {
                    let tv = reference_impl(t, width, &p, &r, false);
                    assert_eq!(
                        reference_impl(t, width, &tv, &r, true),
                        p,
                        "{t:?} width {width}"
                    );
                    let mut planes = vec![0; p.len()];
                    let nnz = forward_planes(t, width, &p, &r, &mut planes);
                    if t != Transform::None {
                        let changed = p
                            .chunks(width)
                            .zip(r.chunks(width))
                            .filter(|(a, b)| a != b)
                            .count();
                        assert_eq!(nnz as usize, changed);
                    }
                }
            }
        }
    }

    #[test]
    fn ulp_difference_is_small_across_zero_and_powers_of_two() {
        let d = |a: f32, b: f32| {
            let tv = reference_impl(Transform::Ulp, 4, &a.to_le_bytes(), &b.to_le_bytes(), false);
            u32::from_le_bytes(tv.try_into().unwrap())
        };
        assert_eq!(d(0.0, -0.0), 2); // one step: zigzag(1)
        assert_eq!(d(-0.0, 0.0), 1); // zigzag(-1)
        assert_eq!(d(2.0, f32::from_bits(2.0f32.to_bits() - 1)), 2);
        // XOR of the same pair flips many bits.
        assert!((2.0f32.to_bits() ^ (2.0f32.to_bits() - 1)).count_ones() > 20);
    }

    /// The fused, blocked plane loops give what the element-by-element
    /// reference gives, across block boundaries, for every width and transform.
    #[test]
    fn fused_plane_transforms_match_the_reference() {
        for width in [1usize, 2, 4, 8] {
            for n in [1usize, 101, BLOCK, BLOCK + 1, 3 * BLOCK + 7] {
                let cur: Vec<u8> = (0..width * n).map(|i| (i * 37 % 253) as u8).collect();
                let mut r = cur.clone();
                for i in (0..r.len()).step_by(3) {
                    r[i] ^= 0x5a;
                }
                for t in ALL {
                    let tv = reference_impl(t, width, &cur, &r, false);
                    let mut planes = vec![0; cur.len()];
                    let nnz = forward_planes(t, width, &cur, &r, &mut planes);
                    assert_eq!(planes, planes_of(width, &tv), "{t:?} width {width} n {n}");
                    let views: Vec<&[u8]> = planes.chunks(n).collect();
                    let mut back = vec![0; cur.len()];
                    assert_eq!(inverse_planes(t, width, &views, &r, &mut back), nnz);
                    assert_eq!(back, cur);
                    // Sparse: the non-zero elements only.
                    let pos: Vec<u32> = (0..n as u32)
                        .filter(|&i| {
                            tv[i as usize * width..(i as usize + 1) * width]
                                .iter()
                                .any(|&b| b != 0)
                        })
                        .collect();
                    assert_eq!(pos.len() as u64, nnz);
                    let mut gathered: Vec<Vec<u8>> = vec![Vec::new(); width];
                    for &q in &pos {
                        for (k, g) in gathered.iter_mut().enumerate() {
                            g.push(tv[q as usize * width + k]);
                        }
                    }
                    let gviews: Vec<&[u8]> = gathered.iter().map(|g| &g[..]).collect();
                    let mut back = vec![0xee; cur.len()];
                    inverse_sparse(t, width, &pos, &gviews, &r, &mut back);
                    assert_eq!(back, cur, "sparse {t:?} width {width}");
                }
            }
        }
    }
}
