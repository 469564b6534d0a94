//! Transforms on bit patterns (never on float arithmetic) and byte planes.
//!
//! Every transform is a bijection that maps "same bits as the reference" to
//! zero, so the changed positions are the non-zero transformed elements.

use crate::error::{Error, Result};

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
    const BYTES: usize;
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
            const BYTES: usize = std::mem::size_of::<$u>();
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

fn forward_w<W: Word>(t: Transform, cur: &[u8], reference: &[u8], out: &mut [u8]) -> u64 {
    let mut nnz = 0u64;
    let w = W::BYTES;
    match t {
        // Monomorphize the loop per transform so that it vectorizes.
        Transform::Xor => fwd_loop::<W, 1>(cur, reference, out, &mut nnz),
        Transform::IntDiff => fwd_loop::<W, 2>(cur, reference, out, &mut nnz),
        Transform::Ulp => fwd_loop::<W, 3>(cur, reference, out, &mut nnz),
        Transform::None => {
            out.copy_from_slice(cur);
            nnz = cur
                .chunks_exact(w)
                .filter(|e| !W::load(e).is_zero())
                .count() as u64;
        }
    }
    nnz
}

fn transform_of<const T: u8>() -> Transform {
    match T {
        1 => Transform::Xor,
        2 => Transform::IntDiff,
        3 => Transform::Ulp,
        _ => Transform::None,
    }
}

#[inline(always)]
fn fwd_loop<W: Word, const T: u8>(cur: &[u8], reference: &[u8], out: &mut [u8], nnz: &mut u64) {
    let t = transform_of::<T>();
    let w = W::BYTES;
    let mut count = 0u64;
    for ((c, r), o) in cur
        .chunks_exact(w)
        .zip(reference.chunks_exact(w))
        .zip(out.chunks_exact_mut(w))
    {
        let v = apply(t, W::load(c), W::load(r));
        count += u64::from(!v.is_zero());
        v.store(o);
    }
    *nnz = count;
}

fn inverse_w<W: Word>(t: Transform, values: &[u8], reference: &[u8], out: &mut [u8]) {
    let w = W::BYTES;
    for ((v, r), o) in values
        .chunks_exact(w)
        .zip(reference.chunks_exact(w))
        .zip(out.chunks_exact_mut(w))
    {
        invert(t, W::load(v), W::load(r)).store(o);
    }
}

/// Transforms `cur` against `reference` (same length, a multiple of `width`)
/// into `out`, and returns the number of non-zero transformed elements.
/// With [`Transform::None`] the reference is ignored.
pub fn forward(t: Transform, width: usize, cur: &[u8], reference: &[u8], out: &mut [u8]) -> u64 {
    debug_assert_eq!(cur.len(), out.len());
    debug_assert!(t == Transform::None || cur.len() == reference.len());
    match width {
        1 => forward_w::<u8>(t, cur, reference, out),
        2 => forward_w::<u16>(t, cur, reference, out),
        4 => forward_w::<u32>(t, cur, reference, out),
        8 => forward_w::<u64>(t, cur, reference, out),
        _ => unreachable!("width is checked by the caller"),
    }
}

/// Undoes [`forward`]: rebuilds the original elements into `out`.
pub fn inverse(t: Transform, width: usize, values: &[u8], reference: &[u8], out: &mut [u8]) {
    if t == Transform::None {
        out.copy_from_slice(values);
        return;
    }
    match width {
        1 => inverse_w::<u8>(t, values, reference, out),
        2 => inverse_w::<u16>(t, values, reference, out),
        4 => inverse_w::<u32>(t, values, reference, out),
        8 => inverse_w::<u64>(t, values, reference, out),
        _ => unreachable!("width is checked by the caller"),
    }
}

fn split_w<const W: usize>(values: &[u8], out: &mut [u8]) {
    let n = values.len() / W;
    let planes: [&mut [u8]; W] = split_mut::<W>(out, n);
    for (i, e) in values.chunks_exact(W).enumerate() {
        for k in 0..W {
            planes[k][i] = e[k];
        }
    }
}

fn merge_w<const W: usize>(planes: &[u8], out: &mut [u8]) {
    let n = out.len() / W;
    let p: [&[u8]; W] = std::array::from_fn(|k| &planes[k * n..(k + 1) * n]);
    for (i, e) in out.chunks_exact_mut(W).enumerate() {
        for k in 0..W {
            e[k] = p[k][i];
        }
    }
}

fn split_mut<const W: usize>(out: &mut [u8], n: usize) -> [&mut [u8]; W] {
    let mut rest = out;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        head
    })
}

/// Splits elements of `width` bytes into byte planes, laid out one after
/// another in `out`: plane k (byte k of each element) at `[k*n, (k+1)*n)`.
pub fn split_planes(width: usize, values: &[u8], out: &mut [u8]) {
    debug_assert_eq!(values.len(), out.len());
    match width {
        1 => out.copy_from_slice(values),
        2 => split_w::<2>(values, out),
        4 => split_w::<4>(values, out),
        8 => split_w::<8>(values, out),
        _ => unreachable!("width is checked by the caller"),
    }
}

/// Undoes [`split_planes`].
pub fn merge_planes(width: usize, planes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(planes.len(), out.len());
    match width {
        1 => out.copy_from_slice(planes),
        2 => merge_w::<2>(planes, out),
        4 => merge_w::<4>(planes, out),
        8 => merge_w::<8>(planes, out),
        _ => unreachable!("width is checked by the caller"),
    }
}

/// Transforms `cur` against `reference` and writes the result straight into
/// byte planes (as [`split_planes`] lays them out), in one pass. Returns the
/// number of non-zero transformed elements.
pub fn forward_planes(
    t: Transform,
    width: usize,
    cur: &[u8],
    reference: &[u8],
    planes: &mut [u8],
) -> u64 {
    debug_assert_eq!(cur.len(), planes.len());
    debug_assert!(t == Transform::None || cur.len() == reference.len());
    macro_rules! go {
        ($u:ty, $w:literal) => {
            match t {
                Transform::None => fwd_planes::<$u, $w, 0>(cur, reference, planes),
                Transform::Xor => fwd_planes::<$u, $w, 1>(cur, reference, planes),
                Transform::IntDiff => fwd_planes::<$u, $w, 2>(cur, reference, planes),
                Transform::Ulp => fwd_planes::<$u, $w, 3>(cur, reference, planes),
            }
        };
    }
    match width {
        1 => go!(u8, 1),
        2 => go!(u16, 2),
        4 => go!(u32, 4),
        8 => go!(u64, 8),
        _ => unreachable!("width is checked by the caller"),
    }
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

/// Undoes [`forward_planes`]: rebuilds the original elements from the byte
/// planes of every transformed element, in one pass. Returns the number of
/// non-zero transformed elements.
pub fn inverse_planes(
    t: Transform,
    width: usize,
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) -> u64 {
    macro_rules! go {
        ($u:ty, $w:literal) => {{
            let p: [&[u8]; $w] = std::array::from_fn(|k| planes[k]);
            match t {
                Transform::None => inv_planes::<$u, $w, 0>(p, reference, out),
                Transform::Xor => inv_planes::<$u, $w, 1>(p, reference, out),
                Transform::IntDiff => inv_planes::<$u, $w, 2>(p, reference, out),
                Transform::Ulp => inv_planes::<$u, $w, 3>(p, reference, out),
            }
        }};
    }
    match width {
        1 => go!(u8, 1),
        2 => go!(u16, 2),
        4 => go!(u32, 4),
        8 => go!(u64, 8),
        _ => unreachable!("width is checked by the caller"),
    }
}

fn inv_planes<U: Word, const W: usize, const T: u8>(
    p: [&[u8]; W],
    reference: &[u8],
    out: &mut [u8],
) -> u64 {
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
/// given as byte planes of `pos.len()` values. With [`Transform::None`] the
/// other elements are zero.
pub fn inverse_sparse(
    t: Transform,
    width: usize,
    pos: &[u32],
    planes: &[&[u8]],
    reference: &[u8],
    out: &mut [u8],
) {
    macro_rules! go {
        ($u:ty, $w:literal) => {{
            let p: [&[u8]; $w] = std::array::from_fn(|k| planes[k]);
            inv_sparse::<$u, $w>(t, pos, p, reference, out)
        }};
    }
    match width {
        1 => go!(u8, 1),
        2 => go!(u16, 2),
        4 => go!(u32, 4),
        8 => go!(u64, 8),
        _ => unreachable!("width is checked by the caller"),
    }
}

fn inv_sparse<U: Word, const W: usize>(
    t: Transform,
    pos: &[u32],
    p: [&[u8]; W],
    reference: &[u8],
    out: &mut [u8],
) {
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
                for t in [
                    Transform::None,
                    Transform::Xor,
                    Transform::IntDiff,
                    Transform::Ulp,
                ] {
                    let mut tv = vec![0; p.len()];
                    let nnz = forward(t, width, &p, &r, &mut tv);
                    let mut back = vec![0; p.len()];
                    inverse(t, width, &tv, &r, &mut back);
                    assert_eq!(back, p, "{t:?} width {width}");
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
            let mut out = [0u8; 4];
            forward(
                Transform::Ulp,
                4,
                &a.to_le_bytes(),
                &b.to_le_bytes(),
                &mut out,
            );
            u32::from_le_bytes(out)
        };
        assert_eq!(d(0.0, -0.0), 2); // one step: zigzag(1)
        assert_eq!(d(-0.0, 0.0), 1); // zigzag(-1)
        assert_eq!(d(2.0, f32::from_bits(2.0f32.to_bits() - 1)), 2);
        // XOR of the same pair flips many bits.
        assert!((2.0f32.to_bits() ^ (2.0f32.to_bits() - 1)).count_ones() > 20);
    }

    #[test]
    fn fused_plane_transforms_match_the_separate_ones() {
        for width in [1usize, 2, 4, 8] {
            let cur: Vec<u8> = (0..width * 101).map(|i| (i * 37 % 253) as u8).collect();
            let mut r = cur.clone();
            for i in (0..r.len()).step_by(3) {
                r[i] ^= 0x5a;
            }
            for t in [
                Transform::None,
                Transform::Xor,
                Transform::IntDiff,
                Transform::Ulp,
            ] {
                let mut tv = vec![0; cur.len()];
                let nnz = forward(t, width, &cur, &r, &mut tv);
                let mut expected = vec![0; cur.len()];
                split_planes(width, &tv, &mut expected);
                let mut planes = vec![0; cur.len()];
                assert_eq!(forward_planes(t, width, &cur, &r, &mut planes), nnz);
                assert_eq!(planes, expected, "{t:?} width {width}");
                let n = cur.len() / width;
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

    #[test]
    fn planes_round_trip() {
        for width in [1, 2, 4, 8] {
            let v: Vec<u8> = (0..width * 37).map(|i| (i * 31 % 251) as u8).collect();
            let mut p = vec![0; v.len()];
            split_planes(width, &v, &mut p);
            assert_eq!(p[0], v[0]);
            if width > 1 {
                assert_eq!(p[37], v[1]);
            }
            let mut back = vec![0; v.len()];
            merge_planes(width, &p, &mut back);
            assert_eq!(back, v);
        }
    }
}
