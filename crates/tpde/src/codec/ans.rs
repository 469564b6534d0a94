//! A static order-0 rANS coder for byte streams (tpde's own entropy coder).
//!
//! zstd's Huffman literals cannot go below one bit per byte, so a byte plane
//! that is mostly zeros (the top byte of small differences) costs zstd far
//! more than its entropy; rANS codes it at its entropy.
//!
//! Layout of a coded stream (all integers little-endian):
//!
//! ```text
//! u8 table kind              0: list, 1: bitmap
//!   list:   u8 m-1, then m x (u8 symbol, varint freq), symbols increasing
//!   bitmap: 32 bytes (bit s%8 of byte s/8 set when symbol s is present),
//!           then a varint freq per present symbol, in increasing order
//! 4 x u32 states             initial decoder states, each in [L, 2^32)
//! u16 words                  renormalization words, read forward
//! ```
//!
//! Frequencies are LEB128 varints, each >= 1, summing to 2^SCALE_BITS.
//! Symbol i uses state i mod 4 (four interleaved states for
//! instruction-level parallelism); a state below L after a symbol takes one
//! 16-bit word. After the last symbol every state is back at `L` and every
//! word has been read; the decoder checks both.

use crate::common::error::{Error, Result};

pub(super) const SCALE_BITS: u32 = 12;
pub(super) const TOTAL: u32 = 1 << SCALE_BITS;
pub(super) const MASK: u32 = TOTAL - 1;
/// Lower bound of the state interval.
pub(super) const L: u32 = 1 << 16;
/// Interleaved states.
const STATES: usize = 4;

/// Frequencies of the symbols, normalized to sum to `TOTAL`, every present
/// symbol at least 1: the table that codes `hist` in the fewest bits.
///
/// Each symbol starts at its share rounded down (at least 1); the slots
/// left over then go, one at a time, to the symbol whose code shortens the
/// most by one more slot (count x log2((f + 1) / f)), and where the
/// at-least-1 floor overshot, slots are taken where they cost least. The
/// cost is convex in each frequency, so this greedy allocation is optimal.
/// Rounding every share down, as tpde did before, costs a rare symbol up to
/// a fifth of a bit each: 1.8% on a byte plane with 1% non-zero bytes.
pub(super) fn normalize(hist: &[u64; 256]) -> [u32; 256] {
    let total: u64 = hist.iter().sum();
    let mut f = [0u32; 256];
    if total == 0 {
        return f;
    }
    let mut sum = 0u32;
    for (fi, &c) in f.iter_mut().zip(hist) {
        if c > 0 {
            // Sections are under 4 GiB: c * TOTAL fits in 64 bits.
            *fi = ((c * u64::from(TOTAL) / total) as u32).max(1);
            sum += *fi;
        }
    }
    // What one more slot saves, and one fewer costs, symbol s (bits, f > 0).
    let step = &tables().step;
    let gain = |c: u64, f: u32| c as f64 * step[f as usize];
    let loss = |c: u64, f: u32| c as f64 * step[f as usize - 1];
    if sum < TOTAL {
        let mut heap: std::collections::BinaryHeap<Slot> = (0..256)
            .filter(|&s| f[s] > 0)
            .map(|s| Slot::new(gain(hist[s], f[s]), s))
            .collect();
        while sum < TOTAL {
            let top = heap.pop().expect("a present symbol");
            let s = top.symbol();
            f[s] += 1;
            sum += 1;
            heap.push(Slot::new(gain(hist[s], f[s]), s));
        }
    } else if sum > TOTAL {
        // The floor of 1 lifted some: take from those a slot costs least.
        let mut heap: std::collections::BinaryHeap<Slot> = (0..256)
            .filter(|&s| f[s] > 1)
            .map(|s| Slot::new(-loss(hist[s], f[s]), s))
            .collect();
        while sum > TOTAL {
            // At most 256 symbols are present and TOTAL > 256: some symbol
            // is above 1 while the sum is over TOTAL.
            let top = heap.pop().expect("a symbol above 1");
            let s = top.symbol();
            f[s] -= 1;
            sum -= 1;
            if f[s] > 1 {
                heap.push(Slot::new(-loss(hist[s], f[s]), s));
            }
        }
    }
    f
}

/// A heap entry of [`normalize`]: a priority and a symbol, ordered by the
/// priority, then by the lower symbol (so that ties resolve the same way
/// every time).
#[derive(Clone, Copy, PartialEq)]
struct Slot(f64, usize);

impl Slot {
    fn new(priority: f64, symbol: usize) -> Slot {
        Slot(priority, symbol)
    }
    fn symbol(self) -> usize {
        self.1
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// Bits that `hist`'s symbols take when coded with the frequencies `freq`
/// (rANS codes within a few bytes of this).
pub(super) fn coded_bits(hist: &[u64; 256], freq: &[u32; 256]) -> f64 {
    let cost = &tables().cost;
    hist.iter()
        .zip(freq)
        .filter(|(&c, _)| c > 0)
        .map(|(&c, &f)| c as f64 * cost[f as usize])
        .sum()
}

/// The logarithms [`normalize`] and [`coded_bits`] use, computed once (the
/// estimates run them for every plane and group; `log2` was 4% of encoding).
struct Tables {
    /// `step[f]` = log2((f + 1) / f): the bits one more slot saves a symbol
    /// at frequency f, per occurrence (`step[0]` unused).
    step: Vec<f64>,
    /// `cost[f]` = log2(TOTAL / f): the bits of a symbol at frequency f
    /// (`cost[0]` unused).
    cost: Vec<f64>,
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let n = TOTAL as usize + 1;
        let mut step = vec![0.0; n];
        let mut cost = vec![0.0; n];
        for f in 1..n as u32 {
            step[f as usize] = (f64::from(f + 1) / f64::from(f)).log2();
            cost[f as usize] = (f64::from(TOTAL) / f64::from(f)).log2();
        }
        Tables { step, cost }
    })
}

/// Size in bytes the coded stream would have: its symbols at the
/// frequencies [`normalize`] gives them, its table, its states.
pub fn estimate(hist: &[u64; 256]) -> usize {
    let bits = coded_bits(hist, &normalize(hist));
    let m = hist.iter().filter(|&&c| c > 0).count();
    let table = if m < 32 { 2 + 3 * m } else { 33 + 2 * m };
    (bits / 8.0) as usize + table + 9
}

/// Histogram of a byte slice.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    // Four sub-histograms break the dependency chain on repeated bytes.
    let mut h = [[0u64; 256]; 4];
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h[0][c[0] as usize] += 1;
        h[1][c[1] as usize] += 1;
        h[2][c[2] as usize] += 1;
        h[3][c[3] as usize] += 1;
    }
    for &b in chunks.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u64; 256];
    for (i, o) in out.iter_mut().enumerate() {
        *o = h[0][i] + h[1][i] + h[2][i] + h[3][i];
    }
    out
}

/// Codes `data` (not empty).
#[cfg(test)]
pub fn encode(data: &[u8]) -> Vec<u8> {
    encode_with(data, &histogram(data))
}

/// The reciprocal of a frequency, which turns the encoder's division into
/// a multiplication ([`Enc`] packs it for the coding step).
#[derive(Clone, Copy, Default)]
pub(super) struct EncSym {
    /// ceil(2^(32+l) / freq) with l = ceil(log2 freq): exact quotients for
    /// every 32-bit x (Granlund and Montgomery, 1994, theorem 4.2).
    rcp: u64,
    shift: u32,
}

impl EncSym {
    pub(super) fn new(freq: u32) -> Self {
        let l = 32 - (freq.max(1) - 1).leading_zeros(); // ceil(log2 freq)
        let shift = 32 + l;
        EncSym {
            rcp: ((1u128 << shift).div_ceil(u128::from(freq.max(1)))) as u64,
            shift,
        }
    }

    /// The reciprocal of the frequency (see `rcp`).
    pub(super) fn rcp(&self) -> u64 {
        self.rcp
    }

    /// The shift that goes with [`EncSym::rcp`].
    pub(super) fn shift(&self) -> u32 {
        self.shift
    }

    /// `x / freq`, by the reciprocal.
    #[cfg(test)]
    fn quotient(&self, x: u32) -> u32 {
        ((u128::from(x) * u128::from(self.rcp)) >> self.shift) as u32
    }
}

/// Per-symbol constants of the encoder, packed in 8 bytes (two 32-bit
/// words, so that a vector kernel gathers them): the division by the
/// frequency is a multiplication by its reciprocal. With `l = ceil(log2
/// freq)`, `rcp = ceil(2^(32+l) / freq)` (see [`EncSym`]) lies in
/// `[2^32, 2^33)`, so `x * rcp >> 32 = x + hi` with `hi = x * (rcp - 2^32)
/// >> 32`, and the quotient `(x + hi) >> l` is computed without 33-bit
/// values as `(hi + ((x - hi) >> s1)) >> s2`: `s1 = 1, s2 = l - 1`, or
/// `s1 = s2 = 0` for `freq = 1` (then `hi = 0` and the quotient is `x`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
pub(super) struct Enc {
    /// `rcp - 2^32`.
    pub(super) rcp_lo: u32,
    /// `freq | start << START | s1 << S1 | s2 << S2`.
    pub(super) packed: u32,
}

impl Enc {
    /// The low bits of `packed`: the frequency (up to 2^12, 13 bits).
    pub(super) const FREQ: u32 = 0x1fff;
    /// Where the start (12 bits), `s1` (1 bit) and `s2` (4 bits) lie.
    pub(super) const START: u32 = 13;
    pub(super) const S1: u32 = 25;
    pub(super) const S2: u32 = 26;

    pub(super) fn new(freq: u32, start: u32) -> Enc {
        let e = EncSym::new(freq);
        let l = e.shift() - 32;
        let (s1, s2) = if l == 0 { (0, 0) } else { (1, l - 1) };
        Enc {
            rcp_lo: (e.rcp() - (1 << 32)) as u32,
            packed: freq | start << Self::START | s1 << Self::S1 | s2 << Self::S2,
        }
    }

    /// The frequency (1 to 2^12).
    #[inline(always)]
    pub(super) fn freq(self) -> u32 {
        self.packed & Self::FREQ
    }

    /// `x` coded: `(x / freq) << 12 + x mod freq + start`, as
    /// `x + (x / freq) * (2^12 - freq) + start` (mod 2^32, the result fits).
    #[inline(always)]
    pub(super) fn code(self, x: u32) -> u32 {
        let hi = ((u64::from(x) * u64::from(self.rcp_lo)) >> 32) as u32;
        let s1 = (self.packed >> Self::S1) & 1;
        let s2 = self.packed >> Self::S2;
        let q = (hi + ((x - hi) >> s1)) >> s2;
        let start = (self.packed >> Self::START) & MASK;
        x.wrapping_add(q.wrapping_mul((1 << SCALE_BITS) - self.freq()))
            .wrapping_add(start)
    }
}

/// Codes one symbol on state `x`: first its renormalization word (written
/// every time, kept when `x >= 2^20 freq`, so that x stays below 2^32
/// after coding), then the coding step.
#[inline(always)]
pub(super) fn put_one(x: &mut u32, e: Enc, rev: &mut [u16], len: &mut usize) {
    rev[*len] = *x as u16;
    let out = u32::from(*x >> 20 >= e.freq());
    *len += out as usize;
    *x >>= 16 * out;
    *x = e.code(*x);
}

/// Codes `data` (not empty) whose histogram is `hist`.
#[cfg(test)]
pub fn encode_with(data: &[u8], hist: &[u64; 256]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(data, hist, &mut out);
    out
}

/// Codes `data` (not empty) whose histogram is `hist`, appending the stream
/// to `out`; returns its length.
pub fn encode_into(data: &[u8], hist: &[u64; 256], out: &mut Vec<u8>) -> usize {
    debug_assert!(!data.is_empty());
    let freq = normalize(hist);
    let mut syms = [Enc::default(); 256];
    let mut acc = 0;
    for (e, &f) in syms.iter_mut().zip(&freq) {
        // Absent symbols keep a frequency of zero; they are never coded.
        if f > 0 {
            *e = Enc::new(f, acc);
        }
        acc += f;
    }
    let start = out.len();
    REV.with(|rev| {
        let rev = &mut rev.borrow_mut();
        // At most one renormalization word per symbol (written every time,
        // kept when needed: branch free, as whether a state renormalizes is
        // unpredictable).
        if rev.len() < data.len() {
            rev.resize(data.len(), 0);
        }
        let (states, len) = encode_states(data, &syms, &mut rev[..data.len()]);
        out.reserve(64 + 2 * len);
        write_table(&freq, out);
        for x in states {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend(rev[..len].iter().rev().flat_map(|w| w.to_le_bytes()));
    });
    out.len() - start
}

thread_local! {
    /// The encoder's renormalization words, kept per thread across calls.
    static REV: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The coding of `data` back to front, symbol i on state i mod 4 (so the
/// tail beyond whole blocks of four is coded first): the final states,
/// and the renormalization words in `rev` (as produced, back to front).
#[inline(always)]
fn encode_states(data: &[u8], syms: &[Enc; 256], rev: &mut [u16]) -> ([u32; STATES], usize) {
    let mut len = 0usize;
    let mut states = [L; STATES];
    let whole = data.len() / STATES * STATES;
    for i in (whole..data.len()).rev() {
        put_one(
            &mut states[i % STATES],
            syms[usize::from(data[i])],
            rev,
            &mut len,
        );
    }
    let [mut s0, mut s1, mut s2, mut s3] = states;
    for b in data[..whole].chunks_exact(STATES).rev() {
        put_one(&mut s3, syms[usize::from(b[3])], rev, &mut len);
        put_one(&mut s2, syms[usize::from(b[2])], rev, &mut len);
        put_one(&mut s1, syms[usize::from(b[1])], rev, &mut len);
        put_one(&mut s0, syms[usize::from(b[0])], rev, &mut len);
    }
    ([s0, s1, s2, s3], len)
}

fn put_varint(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes the frequency table, as a list or a bitmap, whichever is shorter.
pub(super) fn write_table(freq: &[u32; 256], out: &mut Vec<u8>) {
    let present = || freq.iter().enumerate().filter(|(_, &f)| f > 0);
    let m = present().count();
    if m < 32 {
        out.push(0);
        out.push((m - 1) as u8);
        for (s, &f) in present() {
            out.push(s as u8);
            put_varint(f, out);
        }
    } else {
        out.push(1);
        let mut bits = [0u8; 32];
        for (s, _) in present() {
            bits[s / 8] |= 1 << (s % 8);
        }
        out.extend_from_slice(&bits);
        for (_, &f) in present() {
            put_varint(f, out);
        }
    }
}

/// Reads a frequency table; returns the frequencies and the offset after it.
pub(super) fn read_table(src: &[u8]) -> Result<([u32; 256], usize)> {
    let mut pos = 0usize;
    let byte = |pos: &mut usize| -> Result<u8> {
        let b = *src
            .get(*pos)
            .ok_or_else(|| corrupt("frequency table cut short"))?;
        *pos += 1;
        Ok(b)
    };
    let varint = |pos: &mut usize| -> Result<u32> {
        let mut v = 0u32;
        for shift in [0, 7, 14] {
            let b = byte(pos)?;
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("frequency varint too long"))
    };
    let mut symbols = Vec::with_capacity(256);
    match byte(&mut pos)? {
        0 => {
            let m = usize::from(byte(&mut pos)?) + 1;
            for _ in 0..m {
                let s = byte(&mut pos)?;
                symbols.push((s, varint(&mut pos)?));
            }
        }
        1 => {
            let bits = src
                .get(pos..pos + 32)
                .ok_or_else(|| corrupt("frequency table cut short"))?
                .to_vec();
            pos += 32;
            for s in 0..256usize {
                if bits[s / 8] >> (s % 8) & 1 == 1 {
                    symbols.push((s as u8, varint(&mut pos)?));
                }
            }
        }
        _ => return Err(corrupt("unknown table kind")),
    }
    let mut freq = [0u32; 256];
    let mut sum = 0u32;
    let mut last: Option<u8> = None;
    for (s, f) in symbols {
        if last.is_some_and(|l| l >= s) || f == 0 || f > TOTAL {
            return Err(corrupt("frequency table out of order or out of range"));
        }
        last = Some(s);
        freq[s as usize] = f;
        sum += f;
    }
    if sum != TOTAL {
        return Err(corrupt("frequencies do not sum to the scale"));
    }
    Ok((freq, pos))
}

fn corrupt(msg: &str) -> Error {
    Error::corrupt(format!("rANS stream: {msg}"))
}

/// The decoder's table of a normalized frequency table (`TOTAL` slots):
/// slot -> symbol (bits 24..32), freq - 1 (bits 12..24), slot - start
/// (bits 0..12).
pub(super) fn fill_slots(freq: &[u32; 256], slots: &mut [u32]) {
    let mut acc = 0usize;
    for (s, &f) in freq.iter().enumerate() {
        for (k, slot) in slots[acc..acc + f as usize].iter_mut().enumerate() {
            *slot = (s as u32) << 24 | (f - 1) << 12 | k as u32;
        }
        acc += f as usize;
    }
}

/// `N` initial states at `*pos` (each at least `L`), advancing `*pos`; the
/// error says what is wrong, for the caller to name its stream.
pub(super) fn read_states<const N: usize>(
    src: &[u8],
    pos: &mut usize,
) -> std::result::Result<[u32; N], &'static str> {
    let mut states = [0u32; N];
    for x in &mut states {
        let b = src.get(*pos..*pos + 4).ok_or("states missing")?;
        *x = u32::from_le_bytes(b.try_into().expect("4"));
        if *x < L {
            return Err("state out of range");
        }
        *pos += 4;
    }
    Ok(states)
}

/// Decodes a stream of [`encode`] into exactly `out.len()` bytes.
pub fn decode(src: &[u8], out: &mut [u8]) -> Result<()> {
    let (freq, mut pos) = read_table(src)?;
    // Slot -> symbol (bits 24..32), freq - 1 (bits 12..24), slot - start (bits 0..12):
    // one 16 KiB table, one lookup per symbol.
    let mut slots = vec![0u32; TOTAL as usize];
    fill_slots(&freq, &mut slots);
    let states: [u32; STATES] = read_states(src, &mut pos).map_err(corrupt)?;
    let words = &src[pos..];
    if !words.len().is_multiple_of(2) {
        return Err(corrupt("odd number of renormalization bytes"));
    }
    let mut at = 0usize;
    #[inline(always)]
    fn decode_one(slots: &[u32], x: u32) -> (u8, u32) {
        let e = slots[(x & MASK) as usize];
        (
            (e >> 24) as u8,
            ((e >> 12 & MASK) + 1) * (x >> SCALE_BITS) + (e & MASK),
        )
    }
    let [mut s0, mut s1, mut s2, mut s3] = states;
    // Fast path: while eight more bytes are surely there, a block of four
    // symbols (at most one word each) reads them without further checks.
    let mut i = 0;
    // Branch free: the next word is read every time and taken when the
    // state fell below L (which is unpredictable).
    while i + STATES <= out.len() && at + 2 * STATES <= words.len() {
        let w = u64::from_le_bytes(words[at..at + 8].try_into().expect("8 bytes"));
        let block = &mut out[i..i + STATES];
        let mut k = 0u32;
        for (x, o) in [&mut s0, &mut s1, &mut s2, &mut s3]
            .into_iter()
            .zip(block.iter_mut())
        {
            let (sym, nx) = decode_one(&slots, *x);
            *o = sym;
            let low = u32::from(nx < L);
            let word = (w >> (8 * k)) as u32 & 0xffff;
            *x = (nx << (16 * low)) | (word & low.wrapping_neg());
            k += 2 * low;
        }
        at += k as usize;
        i += STATES;
    }
    // The rest with full checks; i is a multiple of four, so symbol i goes
    // to state 0 again.
    finish(&slots, [s0, s1, s2, s3], &mut out[i..], words, at)
}

/// Decodes the symbols of `out` (the first one going to state 0) with full
/// bounds checks, then checks that the stream ends exactly.
fn finish(
    slots: &[u32],
    mut states: [u32; STATES],
    out: &mut [u8],
    words: &[u8],
    mut at: usize,
) -> Result<()> {
    for (i, o) in out.iter_mut().enumerate() {
        let x = &mut states[i % STATES];
        let e = slots[(*x & MASK) as usize];
        *o = (e >> 24) as u8;
        *x = ((e >> 12 & MASK) + 1) * (*x >> SCALE_BITS) + (e & MASK);
        if *x < L {
            let w = words.get(at..at + 2).ok_or_else(|| corrupt("ends early"))?;
            *x = *x << 16 | u32::from(u16::from_le_bytes([w[0], w[1]]));
            at += 2;
        }
    }
    if states != [L; STATES] || at != words.len() {
        return Err(corrupt("final state or length mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: &[u8]) -> usize {
        let z = encode(data);
        let mut back = vec![0u8; data.len()];
        decode(&z, &mut back).unwrap();
        assert_eq!(back, data);
        z.len()
    }

    #[test]
    fn round_trips_and_reaches_the_entropy() {
        round_trip(&[7]);
        round_trip(&[1, 2]);
        round_trip(&(0..=255u8).collect::<Vec<_>>());
        // 90% zeros: entropy ~0.57 bits per byte with 10 other symbols.
        let mut x = 12345u64;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(10) {
                    (x >> 20) as u8 % 10 + 1
                } else {
                    0
                }
            })
            .collect();
        let size = round_trip(&data);
        let est = estimate(&histogram(&data));
        assert!(size <= est + est / 50, "{size} vs estimate {est}");
        // The estimate counts the coded symbols at their frequencies: the
        // coder is within a few bytes of it, both ways.
        assert!(size + size / 200 >= est, "{size} vs estimate {est}");
        // Entropy: H(0.9) + 0.1 log2(10) = 0.80 bits per byte.
        assert!(size < data.len() / 9, "{size}");
    }

    /// The frequencies of every share rounded down, the rest to the
    /// largest symbol (tpde's table before the optimal one).
    fn normalize_rounded_down(hist: &[u64; 256]) -> [u32; 256] {
        let total: u64 = hist.iter().sum();
        let mut f = [0u32; 256];
        for (fi, &c) in f.iter_mut().zip(hist) {
            if c > 0 {
                *fi = ((c * u64::from(TOTAL) / total) as u32).max(1);
            }
        }
        let sum: u32 = f.iter().sum();
        let top = (0..256).max_by_key(|&s| f[s]).unwrap();
        f[top] = f[top] + TOTAL - sum;
        f
    }

    /// The table is a valid one (every present symbol at least 1, absent
    /// ones 0, summing to TOTAL), the best one where two symbols can be
    /// checked against every split of TOTAL, and never worse than shares
    /// rounded down; with many rare symbols, smaller by far.
    #[test]
    fn normalized_tables_cost_least() {
        for (a, b) in [
            (1u64, 1u64),
            (1, 1000),
            (99, 1),
            (2_076_288, 20_864),
            (5, 7),
        ] {
            let mut hist = [0u64; 256];
            hist[3] = a;
            hist[200] = b;
            let f = normalize(&hist);
            let best = (1..TOTAL)
                .map(|x| {
                    let mut g = [0u32; 256];
                    g[3] = x;
                    g[200] = TOTAL - x;
                    coded_bits(&hist, &g)
                })
                .fold(f64::INFINITY, f64::min);
            assert!(coded_bits(&hist, &f) <= best + 1e-6, "{a} {b}: {f:?}");
        }
        let mut x = 99u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let mut hist = [0u64; 256];
            let present = 1 + next() as usize % 256;
            for _ in 0..present {
                // Skewed counts: a few large, many of one or two.
                hist[next() as usize % 256] += next() % (1 << (next() % 24));
            }
            hist[round % 256] += 1;
            let f = normalize(&hist);
            assert_eq!(f.iter().sum::<u32>(), TOTAL);
            for (&c, &fi) in hist.iter().zip(&f) {
                assert_eq!(c > 0, fi > 0, "round {round}");
            }
            let down = normalize_rounded_down(&hist);
            assert!(coded_bits(&hist, &f) <= coded_bits(&hist, &down) + 1e-6);
        }
        // A hundred rare symbols whose shares are 1.9 slots: rounded down
        // each gets 1.
        let mut hist = [0u64; 256];
        hist[0] = 1_000_000;
        for h in &mut hist[1..101] {
            *h = 486;
        }
        let (ours, down) = (
            coded_bits(&hist, &normalize(&hist)),
            coded_bits(&hist, &normalize_rounded_down(&hist)),
        );
        assert!(ours < down * 0.99, "{ours} vs {down} bits");
    }

    /// The coder as first written: a branch on renormalization and plain
    /// division, words pushed as they come.
    fn encode_plain(data: &[u8], hist: &[u64; 256]) -> Vec<u8> {
        let freq = normalize(hist);
        let start: Vec<u32> = freq
            .iter()
            .scan(0, |acc, &f| {
                let s = *acc;
                *acc += f;
                Some(s)
            })
            .collect();
        let mut rev = Vec::new();
        let mut st = [L; STATES];
        for i in (0..data.len()).rev() {
            let x = &mut st[i % STATES];
            let s = usize::from(data[i]);
            if u64::from(*x) >= (1u64 << 20) * u64::from(freq[s]) {
                rev.push(*x as u16);
                *x >>= 16;
            }
            *x = ((*x / freq[s]) << SCALE_BITS) + *x % freq[s] + start[s];
        }
        let mut out = Vec::new();
        write_table(&freq, &mut out);
        for x in st {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend(rev.iter().rev().flat_map(|w| w.to_le_bytes()));
        out
    }

    #[test]
    fn encoder_matches_the_plain_coder() {
        let mut r = 0x0123_4567_89ab_cdefu64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        for round in 0..60 {
            let len = match round % 4 {
                0 => 1 + (next() % 9) as usize,
                1 => 1 + (next() % 2000) as usize,
                _ => 10_000 + (next() % 60_000) as usize,
            };
            // From nearly constant to nearly uniform bytes.
            let spread = 1 + round % 8;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let v = next();
                    ((v & 0xff) >> (8 - spread)) as u8
                        ^ if v >> 60 == 0 { (v >> 40) as u8 } else { 0 }
                })
                .collect();
            let hist = histogram(&data);
            let mut got = vec![0xaa];
            let n = encode_into(&data, &hist, &mut got);
            assert_eq!(n, got.len() - 1);
            assert_eq!(
                got[1..],
                encode_plain(&data, &hist)[..],
                "round {round}, {len} bytes"
            );
            let mut back = vec![0u8; len];
            decode(&got[1..], &mut back).unwrap();
            assert_eq!(back, data, "round {round}");
        }
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let mut xs: Vec<u32> = vec![0, 1, u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) - 1];
        let mut r = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            xs.push(r as u32);
        }
        for f in 1..=TOTAL {
            let e = EncSym::new(f);
            for &x in &xs {
                assert_eq!(e.quotient(x), x / f, "{x} / {f}");
            }
            // Around multiples of f near the top of the range.
            let top = u32::MAX - u32::MAX % f;
            for x in [top, top - 1, top.wrapping_sub(f), top - f + 1] {
                assert_eq!(e.quotient(x), x / f, "{x} / {f}");
            }
        }
    }

    #[test]
    fn corrupt_streams_are_errors_not_panics() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * i % 7) as u8).collect();
        let z = encode(&data);
        for cut in 0..z.len() {
            let mut out = vec![0u8; data.len()];
            assert!(decode(&z[..cut], &mut out).is_err(), "cut {cut}");
        }
        // A flipped bit gives an error or other bytes, never a panic; the
        // chunk checksums of the container catch the other bytes.
        let mut caught = 0;
        for bit in 0..z.len() * 8 {
            let mut bad = z.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = vec![0u8; data.len()];
            caught += usize::from(decode(&bad, &mut out).is_err());
        }
        assert!(caught > z.len() * 8 / 2, "only {caught} flips detected");
    }
}
