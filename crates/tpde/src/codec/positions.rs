//! Positions of a sparse chunk's changed elements: found from its byte
//! planes, written as Elias-delta gaps, gap classes (entropy-coded bit
//! lengths plus low bits) or a bitmap, the estimates that choose between
//! them, and reading gaps back.

use crate::codec::ans;
use crate::codec::bits::{elias_delta_len, BitReader, BitWriter};
use crate::codec::sections::SECTION_HEAD;
use crate::common::error::{Error, Result};

/// Positions of the non-zero elements, from their byte planes (`n`
/// elements each), eight elements a word: a byte's high bit is set where it
/// is not zero, the bits of every plane OR-ed, and the set ones listed.
pub(super) fn changed_positions(planes: &[u8], n: usize, nnz: u64) -> Vec<u32> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let nonzero = |x: u64| (((x & LOW7) + LOW7) | x) & HIGH;
    let mut pos = Vec::with_capacity(nnz as usize);
    let words = n / 8;
    for k in 0..words {
        let mut acc = 0u64;
        for p in planes.chunks_exact(n) {
            let b: [u8; 8] = p[8 * k..8 * k + 8].try_into().expect("8 bytes");
            acc |= nonzero(u64::from_le_bytes(b));
        }
        while acc != 0 {
            // The lowest set high bit is element 8k + (its bit / 8).
            pos.push((8 * k) as u32 + acc.trailing_zeros() / 8);
            acc &= acc - 1;
        }
    }
    for i in 8 * words..n {
        if planes.chunks_exact(n).any(|p| p[i] != 0) {
            pos.push(i as u32);
        }
    }
    pos
}

/// The gaps between increasing positions, the first from position -1.
fn gaps(pos: &[u32]) -> impl Iterator<Item = u64> + '_ {
    let mut prev = -1i64;
    pos.iter().map(move |&p| {
        let g = (i64::from(p) - prev) as u64;
        prev = i64::from(p);
        g
    })
}

pub(super) fn elias_gaps(pos: &[u32]) -> Vec<u8> {
    let mut w = BitWriter::with_capacity(pos.len() / 2 + 8);
    for g in gaps(pos) {
        w.write_elias_delta(g);
    }
    w.finish()
}

/// The gaps as classes (bit length of each gap, one byte each) and the bits
/// of each gap below its leading one, packed most significant first.
pub(super) fn gap_classes(pos: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let mut classes = Vec::with_capacity(pos.len());
    let mut w = BitWriter::with_capacity(pos.len() * 3 / 4 + 8);
    for g in gaps(pos) {
        let l = 64 - g.leading_zeros();
        classes.push(l as u8);
        if l > 1 {
            w.write(g & (u64::MAX >> (65 - l)), l - 1);
        }
    }
    (classes, w.finish())
}

/// The fine gap class (positions 4) of a gap `g >= 1` and how many low
/// bits follow it: `g` itself up to 7, else its bit length and the two bits
/// below its leading one.
#[inline]
pub(super) fn fine_class(g: u64) -> (u8, u32) {
    let l = 64 - g.leading_zeros();
    if l <= 3 {
        (g as u8, 0)
    } else {
        ((8 + 4 * (l - 4) + ((g >> (l - 3)) & 3) as u32) as u8, l - 3)
    }
}

/// Highest fine gap class (a 32-bit gap).
pub(super) const MAX_FINE_CLASS: u8 = 123;

/// The gaps as fine classes (one byte each) and the low bits below each
/// class, packed most significant first.
pub(super) fn fine_gap_classes(pos: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let mut classes = Vec::with_capacity(pos.len());
    let mut w = BitWriter::with_capacity(pos.len() * 3 / 4 + 8);
    for g in gaps(pos) {
        let (c, low) = fine_class(g);
        classes.push(c);
        if low > 0 {
            w.write(g & (u64::MAX >> (64 - low)), low);
        }
    }
    (classes, w.finish())
}

/// Estimated bytes of the gap classes of `pos` and of its fine gap classes:
/// the classes at their entropy plus the low bits (one pass for both).
pub(super) fn classes_estimates(pos: &[u32]) -> (u64, u64) {
    let mut hist = [0u64; 256];
    let mut fine = [0u64; 256];
    let mut low_bits = 0u64;
    let mut fine_low = 0u64;
    for g in gaps(pos) {
        let l = 64 - g.leading_zeros();
        hist[l as usize] += 1;
        low_bits += u64::from(l - 1);
        let (c, low) = fine_class(g);
        fine[c as usize] += 1;
        fine_low += u64::from(low);
    }
    let head = 2 * SECTION_HEAD as u64;
    (
        ans::estimate(&hist) as u64 + low_bits.div_ceil(8) + head,
        ans::estimate(&fine) as u64 + fine_low.div_ceil(8) + head,
    )
}

/// Reads the positions of gap classes (`fine`: fine gap classes), one class
/// byte per gap and the low bits in `bytes`, each position below `n`; the
/// low bits must end with the last gap.
pub(super) fn read_classes(classes: &[u8], bytes: &[u8], n: usize, fine: bool) -> Result<Vec<u32>> {
    let mut r = BitReader::new(bytes);
    let mut pos = Vec::with_capacity(classes.len());
    let mut prev = -1i64;
    for &c in classes.iter() {
        let g = if fine {
            match c {
                1..=7 => u64::from(c),
                8..=MAX_FINE_CLASS => {
                    let k = u32::from(c - 8);
                    let low = k / 4 + 1;
                    (u64::from(4 | (k & 3)) << low) | r.read(low)?
                }
                _ => return Err(Error::corrupt("fine gap class out of range")),
            }
        } else {
            if !(1..=32).contains(&c) {
                return Err(Error::corrupt("gap class out of range"));
            }
            (1u64 << (c - 1)) | r.read(u32::from(c) - 1)?
        };
        let p = prev + g as i64;
        if p >= n as i64 {
            return Err(Error::corrupt("changed position past the end of the chunk"));
        }
        pos.push(p as u32);
        prev = p;
    }
    r.expect_end()?;
    Ok(pos)
}

pub(super) fn gaps_bits(pos: &[u32]) -> u64 {
    gaps(pos).map(|g| u64::from(elias_delta_len(g))).sum()
}

pub(super) fn bitmap(n: usize, pos: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; n.div_ceil(8)];
    for &p in pos {
        b[p as usize / 8] |= 0x80 >> (p % 8);
    }
    b
}

/// Gathers the values at `pos` from dense byte planes of `n` elements.
pub(super) fn gather_planes(width: usize, planes: &[u8], n: usize, pos: &[u32]) -> Vec<u8> {
    let m = pos.len();
    let mut out = vec![0u8; m * width];
    for (src, dst) in planes.chunks_exact(n).zip(out.chunks_exact_mut(m.max(1))) {
        for (d, &p) in dst.iter_mut().zip(pos) {
            *d = src[p as usize];
        }
    }
    out
}

/// Reads `count` Elias-delta gaps (the first from position -1) into
/// positions, each below `n`; the stream must end after them.
pub(super) fn read_gaps(bytes: &[u8], count: usize, n: usize, what: &str) -> Result<Vec<u32>> {
    let mut r = BitReader::new(bytes);
    let mut pos = Vec::with_capacity(count);
    let mut prev = -1i64;
    for _ in 0..count {
        let g = r.read_elias_delta()?;
        let p = i64::try_from(g)
            .ok()
            .and_then(|g| prev.checked_add(g))
            .filter(|&p| p < n as i64)
            .ok_or_else(|| Error::corrupt(format!("{what} past the end of the chunk")))?;
        pos.push(p as u32);
        prev = p;
    }
    r.expect_end()?;
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gap's fine class and low bits give the gap back, classes in
    /// 1..=123, and the gaps of random positions cost less as fine classes
    /// than as gap classes.
    #[test]
    fn fine_gap_classes_map_back() {
        let mut gaps: Vec<u64> = (1..5000).collect();
        for l in 4..=32 {
            gaps.extend([1u64 << (l - 1), (1u64 << l) - 1, 3u64 << (l - 2)]);
        }
        for &g in &gaps {
            let (c, low) = fine_class(g);
            assert!((1..=MAX_FINE_CLASS).contains(&c), "{g}: {c}");
            let pos = [g as u32 - 1];
            let (classes, bits) = fine_gap_classes(&pos);
            assert_eq!(classes, [c]);
            assert_eq!(bits.len() as u32, low.div_ceil(8));
            assert_eq!(read_classes(&classes, &bits, 1 << 32, true).unwrap(), pos);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut pos = Vec::new();
        for i in 0..1_000_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(100) {
                pos.push(i);
            }
        }
        let (classes, fine) = classes_estimates(&pos);
        assert!(fine < classes, "{fine} >= {classes}");
        let (c, bits) = fine_gap_classes(&pos);
        assert_eq!(read_classes(&c, &bits, 1_000_000, true).unwrap(), pos);
    }

    /// A class out of range, low bits cut short or left over, and a position
    /// past the chunk are errors.
    #[test]
    fn bad_fine_gap_classes_are_errors() {
        let pos = [0u32, 100, 5000];
        let (classes, bits) = fine_gap_classes(&pos);
        for bad in [0u8, MAX_FINE_CLASS + 1, 255] {
            let mut c = classes.clone();
            c[1] = bad;
            assert!(read_classes(&c, &bits, 10_000, true).is_err(), "{bad}");
        }
        assert!(read_classes(&classes, &bits[..bits.len() - 1], 10_000, true).is_err());
        let mut longer = bits.clone();
        longer.push(0xff);
        assert!(read_classes(&classes, &longer, 10_000, true).is_err());
        assert!(read_classes(&classes, &bits, 5000, true).is_err());
        assert_eq!(read_classes(&classes, &bits, 5001, true).unwrap(), pos);
    }
}
