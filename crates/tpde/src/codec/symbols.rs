//! Codec 5 (format version 4): a float delta chunk coded one symbol per
//! element, in one pass each way.
//!
//! The byte planes of codec 3 spend an entropy-coder step on every byte of
//! every element. Here the ULP difference `d = key(c) - key(r)` of an element
//! becomes one symbol: its sign, its bit length `n` and the (up to) two bits
//! below its leading one. The `n - 3` bits below those are close to uniform
//! and go raw into a bit stream. The symbols are rANS coded, eight
//! interleaved states, with one frequency table per *context*: the group of
//! the reference element's exponent (as in grouped sections), because the
//! size of a change counted in units in the last place follows the float's
//! magnitude. The encoder runs one forward pass (transform, symbol, context,
//! histogram, raw bits) and one backward rANS pass over a byte per element;
//! the decoder one pass that decodes, inverts the transform and stores.
//!
//! Payload (little-endian; see docs/FORMAT.md, "Symbols"):
//!
//! ```text
//! u8 shift, u8 bits, u16 base, u8 count   the reference exponent's field and the window
//! u16 present                              bit g set: context g has a frequency table
//! tables                                   one rANS frequency table per present context
//! 8 x u32 states                           the decoder's initial states
//! u32 raw_len                              bytes of the raw bit stream
//! raw_len bytes                            the raw low bits, LSB first
//! u16 words                                rANS renormalization words, read front to back
//! ```

use crate::codec::ans::{self, EncSym, L, MASK, SCALE_BITS};
use crate::codec::groups::densest_window;
use crate::common::error::{Error, Result};

/// Elements a chunk needs before it is coded with symbols (smaller chunks
/// keep the byte planes, whose tables cost less).
pub(super) const MIN_ELEMENTS: usize = 4096;
/// Contexts at most.
pub(super) const MAX_CONTEXTS: usize = 16;
/// Interleaved rANS states.
const STATES: usize = 8;
/// Bytes of the payload before the tables.
const HEAD: usize = 7;

/// Symbols of a `b`-bit element: 0 for no change, then per bit length.
fn symbol_count(b: u32) -> usize {
    7 + 8 * (b as usize - 2)
}

/// What a symbol stands for: the difference's magnitude without its raw
/// low bits, how many raw bits follow, and its sign.
#[derive(Clone, Copy, Default)]
struct SymInfo {
    lead: u32,
    raw: u32,
    /// All ones for a negative difference, else zero.
    negm: u32,
}

fn sym_info(sym: usize) -> SymInfo {
    match sym {
        0 => SymInfo::default(),
        1 | 2 => SymInfo {
            lead: 1,
            raw: 0,
            negm: u32::from(sym == 2).wrapping_neg(),
        },
        3..=6 => SymInfo {
            lead: 2 | ((sym as u32 - 3) >> 1),
            raw: 0,
            negm: u32::from(sym & 1 == 0).wrapping_neg(),
        },
        _ => {
            let v = sym as u32 - 7;
            let n = v / 8 + 3;
            SymInfo {
                lead: (4 | ((v >> 1) & 3)) << (n - 3),
                raw: n - 3,
                negm: u32::from(v & 1 == 1).wrapping_neg(),
            }
        }
    }
}

/// The symbol of magnitude `m` (not zero) with sign `neg`, and the number
/// of raw low bits.
#[inline(always)]
fn symbol(m: u32, neg: bool) -> (u8, u32) {
    // Without branches (signs and lengths are unpredictable): the first
    // symbol of each bit length, and the mask of the bits below the leading
    // one that go into the symbol.
    const BASE: [u8; 33] = {
        let mut b = [0u8; 33];
        b[1] = 1;
        b[2] = 3;
        let mut n = 3;
        while n <= 32 {
            b[n] = (7 + 8 * (n - 3)) as u8;
            n += 1;
        }
        b
    };
    const TOP: [u8; 33] = {
        let mut t = [3u8; 33];
        t[0] = 0;
        t[1] = 0;
        t[2] = 1;
        t
    };
    let n = (32 - m.leading_zeros()) as usize;
    let k = (n as u32).saturating_sub(3);
    let t = (m >> k) & u32::from(TOP[n]);
    (BASE[n] + 2 * t as u8 + u8::from(neg), k)
}

/// The symbol and raw bit count of the `B`-bit difference `d`.
#[inline(always)]
fn symbol_of(d: u32, half: u32, mask: u32) -> (u8, u32) {
    let neg = d >= half;
    let negm = u32::from(neg).wrapping_neg();
    symbol(((d ^ negm).wrapping_sub(negm)) & mask, neg)
}

/// A `B`-bit float's monotone key (docs/FORMAT.md, transform 3).
#[inline(always)]
fn key<const B: u32>(x: u32) -> u32 {
    let sign = 1u32 << (B - 1);
    let mask = u32::MAX >> (32 - B);
    // x ^ sign when the sign is clear, else !x (within B bits); branch free.
    x ^ (sign | ((x >> (B - 1)).wrapping_neg() & mask >> 1))
}

#[inline(always)]
fn unkey<const B: u32>(k: u32) -> u32 {
    let sign = 1u32 << (B - 1);
    let mask = u32::MAX >> (32 - B);
    x_unkey(k, sign, mask)
}

#[inline(always)]
fn x_unkey(k: u32, sign: u32, mask: u32) -> u32 {
    // k ^ sign when the top bit is set, else !k (within B bits).
    k ^ (sign | (((k >> (mask.count_ones() - 1)) ^ 1).wrapping_neg() & mask >> 1))
}

#[inline(always)]
fn load<const B: u32>(b: &[u8], i: usize) -> u32 {
    if B == 16 {
        u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
    } else {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    }
}

/// The reference exponent's field and the window of exponents that are
/// the contexts: exponent `e` is context `min(max(e - base, 0), count - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) shift: u8,
    pub(super) bits: u8,
    pub(super) base: u16,
    pub(super) count: u8,
}

impl Window {
    /// The window of up to [`MAX_CONTEXTS`] consecutive exponents holding
    /// the most elements of a sample of `reference`.
    pub(super) fn choose(reference: &[u8], width: usize, (shift, bits): (u8, u8)) -> Window {
        let n = reference.len() / width;
        let mut hist = vec![0usize; 1 << bits];
        let stride = (n / 4096).max(1);
        let mask = (1u32 << bits) - 1;
        for i in (0..n).step_by(stride) {
            let r = if width == 2 {
                load::<16>(reference, i)
            } else {
                load::<32>(reference, i)
            };
            hist[((r >> shift) & mask) as usize] += 1;
        }
        let k = MAX_CONTEXTS.min(hist.len());
        Window {
            shift,
            bits,
            base: densest_window(&hist, k) as u16,
            count: k as u8,
        }
    }

    /// Context of every exponent value.
    fn table(&self) -> Vec<u8> {
        let top = u16::from(self.count) - 1;
        (0..1u32 << self.bits)
            .map(|e| (e as u16).saturating_sub(self.base).min(top) as u8)
            .collect()
    }

    fn valid(&self, width: usize) -> bool {
        (1..=11).contains(&self.bits)
            && u32::from(self.shift) + u32::from(self.bits) <= 8 * width as u32
            && (1..=MAX_CONTEXTS as u8).contains(&self.count)
    }
}

/// Estimated bits per element of the symbols of `cur` against `reference`
/// (a sample: `width` 2 or 4), with one context: the symbols' order-0
/// entropy plus the raw bits.
pub(super) fn sample_bits(cur: &[u8], reference: &[u8], width: usize) -> f64 {
    if width == 2 {
        sample_bits_w::<16>(cur, reference)
    } else {
        sample_bits_w::<32>(cur, reference)
    }
}

fn sample_bits_w<const B: u32>(cur: &[u8], reference: &[u8]) -> f64 {
    let n = cur.len() / (B as usize / 8);
    let mask = u32::MAX >> (32 - B);
    let half = 1u32 << (B - 1);
    let mut hist = [0u64; 256];
    let mut raw = 0u64;
    for i in 0..n {
        let d = key::<B>(load::<B>(cur, i)).wrapping_sub(key::<B>(load::<B>(reference, i))) & mask;
        let (s, k) = symbol_of(d, half, mask);
        hist[usize::from(s)] += 1;
        raw += u64::from(k);
    }
    (crate::codec::sample::entropy(&hist) * n as f64 + raw as f64) / n.max(1) as f64
}

/// What the forward pass learned about a chunk.
pub(super) struct Coded {
    pub(super) payload: Vec<u8>,
    /// Elements whose bits differ from the reference's.
    pub(super) nnz: u64,
}

/// Codes `cur` against `reference` (same length, `width` 2 or 4, at least
/// one element). Returns `None` when the payload would not be smaller than
/// `limit` bytes, judged from the exact counts before the rANS pass.
pub(super) fn encode(
    cur: &[u8],
    reference: &[u8],
    width: usize,
    window: Window,
    limit: usize,
) -> Option<Coded> {
    debug_assert!(window.valid(width) && cur.len() == reference.len());
    if width == 2 {
        encode_w::<16>(cur, reference, window, limit)
    } else {
        encode_w::<32>(cur, reference, window, limit)
    }
}

fn encode_w<const B: u32>(
    cur: &[u8],
    reference: &[u8],
    window: Window,
    limit: usize,
) -> Option<Coded> {
    let n = cur.len() / (B as usize / 8);
    let ctx_of = window.table();
    let emask = (1u32 << window.bits) - 1;
    let mask = u32::MAX >> (32 - B);
    let half = 1u32 << (B - 1);
    // Forward pass: symbol and context of each element, their histograms,
    // the raw bits.
    let mut syms = vec![0u8; n];
    let mut ctxs = vec![0u8; n];
    let mut hist = vec![[0u64; 256]; MAX_CONTEXTS];
    // At most B - 3 raw bits per element, plus the word written ahead.
    let mut raw = vec![0u8; n * (B as usize / 8) + 8];
    let mut raw_at = 0usize;
    let (mut acc, mut fill) = (0u64, 0u32);
    let mut nnz = 0u64;
    for i in 0..n {
        let r = load::<B>(reference, i);
        let c = load::<B>(cur, i);
        let d = key::<B>(c).wrapping_sub(key::<B>(r)) & mask;
        let g = ctx_of[((r >> window.shift) & emask) as usize];
        ctxs[i] = g;
        nnz += u64::from(d != 0);
        let (s, k) = symbol_of(d, half, mask);
        syms[i] = s;
        hist[usize::from(g) & (MAX_CONTEXTS - 1)][usize::from(s)] += 1;
        // The low k bits of |d| (the same bits of d ^ sign mask, minus one
        // for negatives, are the magnitude's: take them from the magnitude).
        let negm = u32::from(d >= half).wrapping_neg();
        let m = ((d ^ negm).wrapping_sub(negm)) & mask;
        acc |= u64::from(m & ((1u32 << k) - 1)) << fill;
        fill += k;
        // Branch free: the low word is written every time, kept when full.
        raw[raw_at..raw_at + 4].copy_from_slice(&(acc as u32).to_le_bytes());
        let full = u32::from(fill >= 32);
        raw_at += 4 * full as usize;
        acc >>= 32 * full;
        fill -= 32 * full;
    }
    raw[raw_at..raw_at + 4].copy_from_slice(&(acc as u32).to_le_bytes());
    raw.truncate(raw_at + fill.div_ceil(8) as usize);
    // The size, from the counts, before any coding.
    let tables_est: usize = hist
        .iter()
        .filter(|h| h.iter().any(|&c| c > 0))
        .map(|h| ans::estimate(h) - 9)
        .sum();
    if HEAD + tables_est + 4 * STATES + 4 + raw.len() >= limit {
        return None;
    }

    let mut out = Vec::with_capacity(limit.min(n * 4));
    out.extend_from_slice(&[window.shift, window.bits]);
    out.extend_from_slice(&window.base.to_le_bytes());
    out.push(window.count);
    let mut present = 0u16;
    let mut enc = vec![[EncSym::default(); 256]; MAX_CONTEXTS];
    for (g, h) in hist.iter().enumerate() {
        if h.iter().any(|&c| c > 0) {
            present |= 1 << g;
        }
    }
    out.extend_from_slice(&present.to_le_bytes());
    for (g, h) in hist.iter().enumerate() {
        if present >> g & 1 == 0 {
            continue;
        }
        let freq = ans::normalize(h);
        ans::write_table(&freq, &mut out);
        let mut start = 0;
        for (e, &f) in enc[g].iter_mut().zip(&freq) {
            *e = EncSym::new(f, start);
            start += f;
        }
    }
    // Backward pass: rANS, element i on state i mod 8.
    // At most one word per symbol; written every time, kept when needed
    // (branch free: whether a state renormalizes is unpredictable).
    let mut rev = vec![0u16; n + 1];
    let mut len = 0usize;
    #[inline(always)]
    fn put(x: &mut u32, e: &EncSym, rev: &mut [u16], len: &mut usize) {
        rev[*len] = *x as u16;
        let out = u32::from(u64::from(*x) >= e.x_max);
        *len += out as usize;
        *x >>= 16 * out;
        let q = e.quotient(*x);
        *x = (q << SCALE_BITS) + (*x - q * e.freq) + e.start;
    }
    let mut st = [L; STATES];
    let whole = n / STATES * STATES;
    for i in (whole..n).rev() {
        let e = &enc[usize::from(ctxs[i]) & (MAX_CONTEXTS - 1)][usize::from(syms[i])];
        put(&mut st[i % STATES], e, &mut rev, &mut len);
    }
    for (s, g) in syms[..whole]
        .chunks_exact(STATES)
        .zip(ctxs[..whole].chunks_exact(STATES))
        .rev()
    {
        for j in (0..STATES).rev() {
            let e = &enc[usize::from(g[j]) & (MAX_CONTEXTS - 1)][usize::from(s[j])];
            put(&mut st[j], e, &mut rev, &mut len);
        }
    }
    for x in st {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&raw);
    out.reserve(len * 2);
    for w in rev[..len].iter().rev() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    (out.len() < limit).then_some(Coded { payload: out, nnz })
}

fn corrupt(msg: &str) -> Error {
    Error::corrupt(format!("symbols chunk: {msg}"))
}

/// Raw low bits, read LSB first.
struct RawBits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl RawBits<'_> {
    #[inline(always)]
    fn read(&mut self, len: u32) -> u32 {
        let byte = self.at >> 3;
        let word = match self.bytes.get(byte..byte + 8) {
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            None => {
                // The last bytes, zero padded; reading past the end is
                // caught by the length check at the end.
                let mut b = [0u8; 8];
                let tail = self.bytes.get(byte..).unwrap_or(&[]);
                b[..tail.len()].copy_from_slice(tail);
                u64::from_le_bytes(b)
            }
        };
        let shift = self.at & 7;
        self.at += len as usize;
        ((word >> shift) as u32) & ((1u64 << len) - 1) as u32
    }
}

/// The decoder's tables and cursors.
struct Decoder<'a> {
    slots: &'a [[u32; 1 << SCALE_BITS]],
    ctx_of: &'a [u8],
    words: &'a [u8],
    shift: u32,
    emask: u32,
    st: [u32; STATES],
    /// Next renormalization word (byte offset).
    at: usize,
    /// The words ran out where a state needed one.
    short: bool,
    /// An element's context has no table.
    no_table: bool,
}

impl Decoder<'_> {
    /// Decodes the symbols of `K` elements (the first on state `j0`;
    /// `K` is `STATES` with `j0 = 0`, or 1) against `reference` (their
    /// elements) into `sym`: the states' table lookups first (independent),
    /// then their renormalizations in order (the shared word cursor is the
    /// only chain); no branch depends on the data.
    #[inline(always)]
    fn symbols<const B: u32, const K: usize>(
        &mut self,
        j0: usize,
        reference: &[u8],
        sym: &mut [u8],
    ) {
        for (j, y) in sym[..K].iter_mut().enumerate() {
            let r = load::<B>(reference, j);
            let g = self.ctx_of[((r >> self.shift) & self.emask) as usize];
            self.no_table |= g == u8::MAX;
            let table = &self.slots[usize::from(g) & (MAX_CONTEXTS - 1)];
            let x = self.st[j0 + j];
            let e = table[(x & MASK) as usize];
            *y = (e >> 24) as u8;
            self.st[j0 + j] = ((e >> 12 & MASK) + 1) * (x >> SCALE_BITS) + (e & MASK);
        }
        for x in &mut self.st[j0..j0 + K] {
            // The next word is read every time, taken when the state is
            // below L (running out is an error only then).
            let low = u32::from(*x < L);
            let w = match self.words.get(self.at..self.at + 2) {
                Some(w) => u32::from(u16::from_le_bytes([w[0], w[1]])),
                None => {
                    self.short |= low == 1;
                    0
                }
            };
            *x = (*x << (16 * low)) | (w & low.wrapping_neg());
            self.at += 2 * low as usize;
        }
    }
}

/// Decodes a payload of [`encode`] against `reference` into `out` (same
/// length, `width` 2 or 4); returns the number of changed elements.
pub(super) fn decode(
    payload: &[u8],
    reference: &[u8],
    width: usize,
    out: &mut [u8],
) -> Result<u64> {
    if width == 2 {
        decode_w::<16>(payload, reference, out)
    } else {
        decode_w::<32>(payload, reference, out)
    }
}

fn decode_w<const B: u32>(payload: &[u8], reference: &[u8], out: &mut [u8]) -> Result<u64> {
    let wb = B as usize / 8;
    if reference.len() != out.len() {
        return Err(corrupt("reference length differs"));
    }
    let head = payload
        .get(..HEAD)
        .ok_or_else(|| corrupt("payload cut short"))?;
    let window = Window {
        shift: head[0],
        bits: head[1],
        base: u16::from_le_bytes([head[2], head[3]]),
        count: head[4],
    };
    if !window.valid(wb) {
        return Err(corrupt("bad exponent window"));
    }
    let present = u16::from_le_bytes([head[5], head[6]]);
    if u32::from(present) >> window.count != 0 {
        return Err(corrupt("table for a context past the window"));
    }
    let mut pos = HEAD;
    let nsym = symbol_count(B);
    // Per context, slot -> symbol (bits 24..32), freq - 1 (12..24),
    // slot - start (0..12).
    let mut slots = vec![[0u32; 1 << SCALE_BITS]; MAX_CONTEXTS];
    for (g, table) in slots.iter_mut().enumerate() {
        if present >> g & 1 == 0 {
            continue;
        }
        let (freq, used) = ans::read_table(&payload[pos..])?;
        pos += used;
        if freq[nsym..].iter().any(|&f| f > 0) {
            return Err(corrupt("symbol out of range"));
        }
        ans::fill_slots(&freq, table);
    }
    let mut ctx_of = window.table();
    for g in &mut ctx_of {
        if present >> *g & 1 == 0 {
            *g = u8::MAX;
        }
    }
    let st: [u32; STATES] = ans::read_states(payload, &mut pos).map_err(corrupt)?;
    let raw_len = payload
        .get(pos..pos + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize)
        .ok_or_else(|| corrupt("raw length missing"))?;
    pos += 4;
    let raw_bytes = payload
        .get(pos..pos.saturating_add(raw_len))
        .ok_or_else(|| corrupt("raw bits cut short"))?;
    pos += raw_len;
    let words = &payload[pos..];
    if !words.len().is_multiple_of(2) {
        return Err(corrupt("odd number of renormalization bytes"));
    }
    let info: Vec<SymInfo> = (0..256).map(sym_info).collect();
    let mut d = Decoder {
        slots: &slots,
        ctx_of: &ctx_of,
        words,
        shift: u32::from(window.shift),
        emask: (1u32 << window.bits) - 1,
        st,
        at: 0,
        short: false,
        no_table: false,
    };
    // Pass 1: the symbols. Pass 2: the values, from the symbols, the raw
    // bits and the reference. Two short loops keep their state in registers.
    let n = out.len() / wb;
    let whole = n / STATES * STATES;
    let mut sym = vec![0u8; n];
    for (r, o) in reference[..whole * wb]
        .chunks_exact(STATES * wb)
        .zip(sym.chunks_exact_mut(STATES))
    {
        d.symbols::<B, STATES>(0, r, o);
    }
    for j in 0..n - whole {
        let i = whole + j;
        d.symbols::<B, 1>(j, &reference[i * wb..(i + 1) * wb], &mut sym[i..i + 1]);
    }
    let mask = u32::MAX >> (32 - B);
    let mut raw = RawBits {
        bytes: raw_bytes,
        at: 0,
    };
    let mut nnz = 0u64;
    for ((o, r), &y) in out
        .chunks_exact_mut(wb)
        .zip(reference.chunks_exact(wb))
        .zip(&sym)
    {
        let s = info[usize::from(y)];
        let m = s.lead | raw.read(s.raw);
        nnz += u64::from(m != 0);
        let r = load::<B>(r, 0);
        let kc = key::<B>(r).wrapping_add((m ^ s.negm).wrapping_sub(s.negm)) & mask;
        o.copy_from_slice(&unkey::<B>(kc).to_le_bytes()[..wb]);
    }
    let Decoder {
        st,
        at,
        short,
        no_table,
        ..
    } = d;
    if no_table {
        return Err(corrupt("element in a context without a table"));
    }
    if short {
        return Err(corrupt("renormalization words end early"));
    }
    if st != [L; STATES] || at != words.len() {
        return Err(corrupt("final state or length mismatch"));
    }
    if raw.at.div_ceil(8) != raw_bytes.len() {
        return Err(corrupt("raw bits do not end with the last element"));
    }
    // One coding per chunk: the padding bits of the last raw byte are zero.
    if let (Some(&last), used @ 1..) = (raw_bytes.last(), raw.at % 8) {
        if last >> used != 0 {
            return Err(corrupt("padding bits of the raw bits are not zero"));
        }
    }
    Ok(nnz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunk::tests::rng;

    #[test]
    fn every_symbol_maps_back() {
        for b in [16u32, 32] {
            let mask = u32::MAX >> (32 - b);
            let mut ms: Vec<u32> = (1..5000).collect();
            ms.extend([mask, mask - 1, 1 << (b - 1), (1 << (b - 1)) - 1]);
            for &m in &ms {
                let m = m & mask;
                if m == 0 {
                    continue;
                }
                for neg in [false, true] {
                    let (s, k) = symbol(m, neg);
                    assert!(usize::from(s) < symbol_count(b), "{m} {b}");
                    let i = sym_info(usize::from(s));
                    assert_eq!(i.raw, k);
                    assert_eq!(i.negm != 0, neg);
                    assert_eq!(i.lead | (m & ((1 << k) - 1)), m, "m {m}");
                }
            }
        }
    }

    fn round_trip(width: usize, cur: &[u8], reference: &[u8]) -> Option<usize> {
        let window = Window::choose(reference, width, if width == 2 { (7, 8) } else { (23, 8) });
        let coded = encode(cur, reference, width, window, usize::MAX)?;
        let mut out = vec![0u8; cur.len()];
        let nnz = decode(&coded.payload, reference, width, &mut out).unwrap();
        assert!(out == cur, "width {width}: decoded bytes differ");
        assert_eq!(nnz, coded.nnz);
        Some(coded.payload.len())
    }

    #[test]
    fn round_trips_every_bit_pattern() {
        let mut next = rng(5);
        for width in [2usize, 4] {
            for n in [1usize, 7, 8, 9, 1000, 4099] {
                // Random bits against random bits: every sign, NaN
                // payloads, infinities, subnormals, -0.0 and wrap-arounds.
                let a: Vec<u8> = (0..n * width).map(|_| next() as u8).collect();
                let b: Vec<u8> = (0..n * width).map(|_| next() as u8).collect();
                round_trip(width, &a, &b).unwrap();
                round_trip(width, &a, &a).unwrap();
                // Small changes of a few ULPs.
                let mut c = a.clone();
                for e in c.chunks_exact_mut(width) {
                    let k = next() % 5;
                    e[0] = e[0].wrapping_add(k as u8);
                }
                round_trip(width, &c, &a).unwrap();
                // The extremes of the difference.
                let lo = vec![0u8; n * width];
                let mut hi = vec![0xffu8; n * width];
                round_trip(width, &lo, &hi).unwrap();
                round_trip(width, &hi, &lo).unwrap();
                for e in hi.chunks_exact_mut(width) {
                    e[width - 1] = 0x7f;
                }
                round_trip(width, &hi, &lo).unwrap();
                round_trip(width, &lo, &hi).unwrap();
            }
        }
    }

    #[test]
    fn small_changes_code_small() {
        let mut next = rng(9);
        let n = 100_000;
        let r: Vec<f32> = (0..n).map(|_| (next() >> 40) as f32 / 1e7 - 0.8).collect();
        let c: Vec<f32> = r
            .iter()
            .map(|&x| x * (1.0 + ((next() >> 40) as f32 / 1.6e7 - 0.5) * 1e-4))
            .collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let size = round_trip(4, &bytes(&c), &bytes(&r)).unwrap();
        // Relative changes of 5e-5 at most: about 10 bits of the 32.
        assert!(size < n * 2, "{size} bytes for {n} elements");
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let mut next = rng(3);
        let n = 5000;
        let r: Vec<u8> = (0..n * 4).map(|_| next() as u8).collect();
        let mut c = r.clone();
        for e in c.chunks_exact_mut(4) {
            e[0] = e[0].wrapping_add((next() % 50) as u8);
            e[1] ^= (next() % 3) as u8;
        }
        let window = Window::choose(&r, 4, (23, 8));
        let coded = encode(&c, &r, 4, window, usize::MAX).unwrap();
        let z = coded.payload;
        for cut in 0..z.len() {
            let mut out = vec![0u8; c.len()];
            assert!(decode(&z[..cut], &r, 4, &mut out).is_err(), "cut {cut}");
        }
        let mut caught = 0;
        for bit in (0..z.len() * 8).step_by(7) {
            let mut bad = z.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = vec![0u8; c.len()];
            caught += usize::from(decode(&bad, &r, 4, &mut out).map_or(true, |_| out != c));
        }
        assert!(caught > 0);
    }
}
