//! Positions of a sparse chunk's changed elements: found from its byte
//! planes, written as Elias-delta gaps, gap classes (entropy-coded bit
//! lengths plus low bits) or a bitmap, the estimates that choose between
//! them, and reading gaps back.

use crate::codec::ans;
use crate::codec::bits::{elias_delta_len, BitReader, BitWriter};
use crate::codec::sections::SECTION_HEAD;
use crate::common::error::{Error, Result};

/// Positions of the non-zero elements, from their byte planes.
pub(super) fn changed_positions(planes: &[u8], n: usize, nnz: u64) -> Vec<u32> {
    let mut pos = Vec::with_capacity(nnz as usize);
    let mut any = planes[..n].to_vec();
    for p in planes[n..].chunks_exact(n) {
        for (a, &b) in any.iter_mut().zip(p) {
            *a |= b;
        }
    }
    pos.extend(
        any.iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .map(|(i, _)| i as u32),
    );
    pos
}

pub(super) fn elias_gaps(pos: &[u32]) -> Vec<u8> {
    let mut w = BitWriter::with_capacity(pos.len() / 2 + 8);
    let mut prev = -1i64;
    for &p in pos {
        w.write_elias_delta((i64::from(p) - prev) as u64);
        prev = i64::from(p);
    }
    w.finish()
}

/// The gaps as classes (bit length of each gap, one byte each) and the bits
/// of each gap below its leading one, packed most significant first.
pub(super) fn gap_classes(pos: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let mut classes = Vec::with_capacity(pos.len());
    let mut w = BitWriter::with_capacity(pos.len() * 3 / 4 + 8);
    let mut prev = -1i64;
    for &p in pos {
        let g = (i64::from(p) - prev) as u64;
        prev = i64::from(p);
        let l = 64 - g.leading_zeros();
        classes.push(l as u8);
        if l > 1 {
            w.write(g & (u64::MAX >> (65 - l)), l - 1);
        }
    }
    (classes, w.finish())
}

/// Estimated bytes of the gap classes of `pos`: the classes at their entropy
/// plus the low bits.
pub(super) fn classes_estimate(pos: &[u32]) -> u64 {
    let mut hist = [0u64; 256];
    let mut low_bits = 0u64;
    let mut prev = -1i64;
    for &p in pos {
        let g = (i64::from(p) - prev) as u64;
        prev = i64::from(p);
        let l = 64 - g.leading_zeros();
        hist[l as usize] += 1;
        low_bits += u64::from(l - 1);
    }
    ans::estimate(&hist) as u64 + low_bits.div_ceil(8) + 2 * SECTION_HEAD as u64
}

pub(super) fn gaps_bits(pos: &[u32]) -> u64 {
    let mut prev = -1i64;
    pos.iter()
        .map(|&p| {
            let g = (i64::from(p) - prev) as u64;
            prev = i64::from(p);
            u64::from(elias_delta_len(g))
        })
        .sum()
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
