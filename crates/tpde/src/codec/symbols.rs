//! Codecs 5 (format version 4) and 6 (version 5): a float delta chunk coded
//! one symbol per element, in one pass each way.
//!
//! The byte planes of codec 3 spend an entropy-coder step on every byte of
//! every element. Here the ULP difference `d = key(c) - key(r)` of an element
//! becomes one symbol: its sign, its bit length `n` and the (up to) two bits
//! below its leading one. The `n - 3` bits below those are close to uniform
//! and go raw into a bit stream. The symbols are rANS coded, 8 interleaved
//! states (codec 5) or 32 (codec 6: four vectors of eight whose table
//! lookups overlap; payloads of [`WIDE_MIN`] bytes and more), with one
//! frequency table per *context*: the group of
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
//! S x u32 states                           the decoder's initial states (S = 8 or 32)
//! u32 raw_len                              bytes of the raw bit stream
//! raw_len bytes                            the raw low bits, LSB first
//! u16 words                                rANS renormalization words, read front to back
//! ```

use std::cell::RefCell;

use crate::codec::ans::{self, L, MASK, SCALE_BITS};
pub(super) use crate::codec::ans::{put_one, Enc};
use crate::codec::groups::densest_window;
use crate::codec::simd::{self, symbols_pass1, Kernel};
use crate::common::error::{Error, Result};

/// Elements a chunk needs before it is coded with symbols (smaller chunks
/// keep the byte planes, whose tables cost less).
pub(super) const MIN_ELEMENTS: usize = 4096;
/// Contexts at most.
pub(super) const MAX_CONTEXTS: usize = 16;
/// Interleaved rANS states of codec 5 (format version 4, and small
/// chunks since).
pub(super) const NARROW: usize = 8;
/// Interleaved rANS states of codec 6 (format version 5): four vectors of
/// eight, whose table lookups overlap.
pub(super) const WIDE: usize = 32;
/// Payload bytes (as estimated before the rANS pass) from which a chunk is
/// coded on [`WIDE`] states: the 96 bytes of the extra states are then
/// under 0.08% of it.
pub(super) const WIDE_MIN: usize = 128 << 10;
/// Bytes of the payload before the tables.
const HEAD: usize = 7;

/// Symbols of a `b`-bit element: 0 for no change, then per bit length.
fn symbol_count(b: u32) -> usize {
    7 + 8 * (b as usize - 2)
}

/// What a symbol stands for: the difference's magnitude without its raw
/// low bits, how many raw bits follow, and its sign.
#[derive(Clone, Copy, Default)]
pub(super) struct SymInfo {
    pub(super) lead: u32,
    pub(super) raw: u32,
    /// The low `raw` bits set.
    mask: u32,
    /// All ones for a negative difference, else zero.
    pub(super) negm: u32,
}

/// What the raw-bits pass reads per symbol: [`SymInfo`], and for a vector
/// kernel the same in one word (`top | raw << 8 | neg << 16`, with `lead =
/// top << raw`), so that eight are one gather.
pub(super) struct SymTable {
    pub(super) info: [SymInfo; 256],
    pub(super) packed: [u32; 256],
}

impl SymTable {
    pub(super) fn new() -> SymTable {
        let info: [SymInfo; 256] = std::array::from_fn(sym_info);
        let packed = std::array::from_fn(|y| {
            let i = info[y];
            (i.lead.checked_shr(i.raw).unwrap_or(0)) | i.raw << 8 | (i.negm & 1) << 16
        });
        SymTable { info, packed }
    }
}

fn sym_info(sym: usize) -> SymInfo {
    let s = sym_info_unmasked(sym);
    SymInfo {
        mask: ((1u64 << s.raw) - 1) as u32,
        ..s
    }
}

fn sym_info_unmasked(sym: usize) -> SymInfo {
    match sym {
        0 => SymInfo::default(),
        1 | 2 => SymInfo {
            lead: 1,
            negm: u32::from(sym == 2).wrapping_neg(),
            ..SymInfo::default()
        },
        3..=6 => SymInfo {
            lead: 2 | ((sym as u32 - 3) >> 1),
            negm: u32::from(sym & 1 == 0).wrapping_neg(),
            ..SymInfo::default()
        },
        _ => {
            let v = sym as u32 - 7;
            let n = v / 8 + 3;
            SymInfo {
                lead: (4 | ((v >> 1) & 3)) << (n - 3),
                raw: n - 3,
                negm: u32::from(v & 1 == 1).wrapping_neg(),
                mask: 0,
            }
        }
    }
}

/// The symbol of magnitude `m` (zero for no change) with sign `neg`, and
/// the number of raw low bits. In arithmetic form, branch free and without
/// tables, so that the loops calling it vectorize: bit length n, raw bits
/// k = max(n - 3, 0); from n = 2 on the symbol is 8n - 17 + 2 * (the two
/// bits below the leading one) + sign, below that n + sign (0, or 1 and 2).
#[inline(always)]
fn symbol(m: u32, neg: bool) -> (u32, u32) {
    let neg = u32::from(neg);
    let n = 32 - m.leading_zeros();
    let k = n.saturating_sub(3);
    let top = (m >> k) & 3;
    let sym = if n >= 2 {
        (8 * n + 2 * top + neg).wrapping_sub(17)
    } else {
        n + neg
    };
    (sym, k)
}

/// The symbol and raw bit count of the `B`-bit difference `d`.
#[inline(always)]
fn symbol_of(d: u32, half: u32, mask: u32) -> (u32, u32) {
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
        u32::from(u16::from_le_bytes(
            b[2 * i..2 * i + 2].try_into().expect("2 bytes"),
        ))
    } else {
        u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"))
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
        hist[s as usize] += 1;
        raw += u64::from(k);
    }
    (crate::codec::sample::entropy(&hist) * n as f64 + raw as f64) / n.max(1) as f64
}

/// What the forward pass learned about a chunk.
pub(super) struct Coded {
    pub(super) payload: Vec<u8>,
    /// Elements whose bits differ from the reference's.
    pub(super) nnz: u64,
    /// Interleaved states: [`NARROW`] (codec 5) or [`WIDE`] (codec 6).
    pub(super) states: usize,
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
    encode_with(Kernel::best(), cur, reference, width, window, limit)
}

/// [`encode`] with `kernel`'s passes (every kernel gives the same payload).
fn encode_with(
    kernel: Kernel,
    cur: &[u8],
    reference: &[u8],
    width: usize,
    window: Window,
    limit: usize,
) -> Option<Coded> {
    debug_assert!(window.valid(width) && cur.len() == reference.len());
    if width == 2 {
        encode_w::<16>(kernel, cur, reference, window, limit)
    } else {
        encode_w::<32>(kernel, cur, reference, window, limit)
    }
}

/// Buffers of the encoder, kept per thread across chunks (no allocation
/// and no zeroing per chunk once they have grown).
#[derive(Default)]
struct EncScratch {
    /// Per element: context << 8 | symbol.
    idx: Vec<u16>,
    raw: Vec<u8>,
    rev: Vec<u16>,
}

thread_local! {
    static ENC_SCRATCH: RefCell<EncScratch> = RefCell::new(EncScratch::default());
    static DEC_SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Grows `v` to at least `n` elements (never shrinks: the contents are
/// overwritten before they are read).
fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

fn encode_w<const B: u32>(
    kernel: Kernel,
    cur: &[u8],
    reference: &[u8],
    window: Window,
    limit: usize,
) -> Option<Coded> {
    ENC_SCRATCH.with(|s| encode_in::<B>(kernel, &mut s.borrow_mut(), cur, reference, window, limit))
}

/// What the encoder's forward pass reads: the chunk, its reference, and
/// the reference exponent's field and window (`window` is valid).
#[derive(Clone, Copy)]
pub(super) struct Forward<'a> {
    pub(super) cur: &'a [u8],
    pub(super) reference: &'a [u8],
    pub(super) window: Window,
}

/// What the forward pass writes: each element's context and symbol, the
/// raw bits (with room for 8 bytes past them) and the four histograms.
pub(super) struct ForwardOut<'a> {
    pub(super) idx: &'a mut [u16],
    pub(super) raw: &'a mut [u8],
    pub(super) hist: &'a mut [u32; HIST],
}

/// The encoder's forward pass: each element's context and symbol into
/// `idx` (context << 8 | symbol), counted in `hist` (four histograms, element
/// i in histogram i mod 4, so that repeated symbols do not wait on each
/// other's counts), and its raw bits into `raw`. Returns the raw bytes and
/// the unchanged elements. Run through `simd::forward`, in a function of
/// its own, so that the bit writer's state stays in registers.
#[inline(always)]
pub(super) fn forward_body<const B: u32>(
    f: &Forward<'_>,
    o: &mut ForwardOut<'_>,
) -> (usize, usize) {
    let Forward {
        cur,
        reference,
        window,
    } = *f;
    let ForwardOut { idx, raw, hist } = o;
    let wb = B as usize / 8;
    // The bit writer: `acc` holds `fill` (< 8) bits not yet whole bytes,
    // the bytes before `raw_at` are done.
    let mut raw_at = 0usize;
    let (mut acc, mut fill) = (0u64, 0u32);
    let mut zeros = 0usize;
    // Per element of a block: its raw bit count and raw bits.
    let mut kb = [0u32; FORWARD_BLOCK];
    let mut low = [0u32; FORWARD_BLOCK];
    for ((cb, rb), ib) in cur
        .chunks(FORWARD_BLOCK * wb)
        .zip(reference.chunks(FORWARD_BLOCK * wb))
        .zip(idx.chunks_mut(FORWARD_BLOCK))
    {
        let len = ib.len();
        zeros += symbols_of::<B>(cb, rb, window, ib, &mut kb[..len], &mut low[..len]);
        // Histograms: a fixed-size table, masked indices (no bounds checks
        // in the loop).
        for (e, &i) in ib.iter().enumerate() {
            hist[((e & 3) << 12 | usize::from(i)) & (HIST - 1)] += 1;
        }
        // The bit writer, with nothing else in its loop so that its state
        // stays in registers: 8 bytes stored every time, the whole bytes
        // kept (at most 7 + 29 bits are pending: they fit in 64).
        for (&k, &bits) in kb[..len].iter().zip(&low[..len]) {
            acc |= u64::from(bits) << fill;
            fill += k;
            raw[raw_at..raw_at + 8].copy_from_slice(&acc.to_le_bytes());
            raw_at += (fill >> 3) as usize;
            acc >>= fill & !7;
            fill &= 7;
        }
    }
    raw[raw_at..raw_at + 8].copy_from_slice(&acc.to_le_bytes());
    (raw_at + fill.div_ceil(8) as usize, zeros)
}

/// Entries of the forward pass's four histograms.
pub(super) const HIST: usize = 4 * (MAX_CONTEXTS << 8);

/// Elements per block of the forward pass (its per-element values stay in
/// L1 between its loops).
const FORWARD_BLOCK: usize = 1024;

/// The first loop of the forward pass, branch free and without table
/// lookups so that the compiler vectorizes it: each element's context and
/// symbol (see [`symbol`]; the context computed as [`Window::table`] has
/// it) into `idx`, its raw bit count into `kb` and its raw bits into `low`.
/// Returns the unchanged elements.
#[inline(always)]
fn symbols_of<const B: u32>(
    cur: &[u8],
    reference: &[u8],
    window: Window,
    idx: &mut [u16],
    kb: &mut [u32],
    low: &mut [u32],
) -> usize {
    let wb = B as usize / 8;
    let mask = u32::MAX >> (32 - B);
    let half = 1u32 << (B - 1);
    let shift = u32::from(window.shift);
    let emask = (1u32 << window.bits) - 1;
    let base = i32::from(window.base);
    let top = i32::from(window.count) - 1;
    let mut zeros = 0usize;
    for ((((c, r), i), kk), l) in cur
        .chunks_exact(wb)
        .zip(reference.chunks_exact(wb))
        .zip(idx.iter_mut())
        .zip(kb.iter_mut())
        .zip(low.iter_mut())
    {
        let r = load::<B>(r, 0);
        let c = load::<B>(c, 0);
        let d = key::<B>(c).wrapping_sub(key::<B>(r)) & mask;
        zeros += usize::from(d == 0);
        let neg = d >= half;
        let negm = u32::from(neg).wrapping_neg();
        let m = ((d ^ negm).wrapping_sub(negm)) & mask;
        let (sym, k) = symbol(m, neg);
        let g = (((r >> shift) & emask) as i32 - base).max(0).min(top) as u32;
        *i = (g << 8 | sym) as u16;
        *kk = k;
        *l = m & ((1u32 << k) - 1);
    }
    zeros
}

/// The encoder's backward pass: rANS, element i on state i mod S, the
/// renormalization words into `rev` back to front (at most one per symbol;
/// written every time, kept when needed: whether a state renormalizes is
/// unpredictable). Returns the final states and the words written. Run
/// through `simd::backward`, in a function of its own, so that the states
/// stay in registers.
#[inline(always)]
pub(super) fn backward_body<const S: usize>(
    idx: &[u16],
    enc: &[Enc],
    rev: &mut [u16],
) -> ([u32; S], usize) {
    let mut len = 0usize;
    let mut st = [L; S];
    backward_tail(idx, enc, rev, &mut st, &mut len);
    for b in idx.chunks_exact(S).rev() {
        for j in (0..S).rev() {
            put_one(&mut st[j], enc[usize::from(b[j])], rev, &mut len);
        }
    }
    (st, len)
}

/// The encoder's backward pass over the last `idx.len() % S` elements
/// (the first it codes), on the states `st` (element i on state i mod S).
pub(super) fn backward_tail<const S: usize>(
    idx: &[u16],
    enc: &[Enc],
    rev: &mut [u16],
    st: &mut [u32; S],
    len: &mut usize,
) {
    let n = idx.len();
    for i in (n / S * S..n).rev() {
        put_one(&mut st[i % S], enc[usize::from(idx[i])], rev, len);
    }
}

fn encode_in<const B: u32>(
    kernel: Kernel,
    s: &mut EncScratch,
    cur: &[u8],
    reference: &[u8],
    window: Window,
    limit: usize,
) -> Option<Coded> {
    let wb = B as usize / 8;
    let n = cur.len() / wb;
    // Forward pass: symbol and context of each element, their histograms,
    // the raw bits.
    grow(&mut s.idx, n);
    // At most B - 3 raw bits per element, plus the word written ahead.
    grow(&mut s.raw, n * (B as usize - 3) / 8 + 8);
    let idx = &mut s.idx[..n];
    let raw = &mut s.raw[..];
    let mut hist = vec![0u32; HIST];
    let f = Forward {
        cur,
        reference,
        window,
    };
    let mut o = ForwardOut {
        idx,
        raw,
        hist: (&mut hist[..]).try_into().expect("HIST entries"),
    };
    let (raw_len, zeros) = simd::forward::<B>(kernel, &f, &mut o);
    let hists: Vec<[u64; 256]> = (0..MAX_CONTEXTS)
        .map(|g| {
            std::array::from_fn(|k| (0..4).map(|c| u64::from(hist[c << 12 | g << 8 | k])).sum())
        })
        .collect();
    let present_hist = |h: &[u64; 256]| h.iter().any(|&c| c > 0);
    // The size, from the counts, before any coding.
    let tables_est: usize = hists
        .iter()
        .filter(|h| present_hist(h))
        .map(|h| ans::estimate(h) - 9)
        .sum();
    let estimate = HEAD + tables_est + 4 * NARROW + 4 + raw_len;
    let states = if estimate >= WIDE_MIN { WIDE } else { NARROW };
    if estimate + 4 * (states - NARROW) >= limit {
        return None;
    }

    let mut out = Vec::with_capacity(limit.min(n * 4));
    out.extend_from_slice(&[window.shift, window.bits]);
    out.extend_from_slice(&window.base.to_le_bytes());
    out.push(window.count);
    let mut present = 0u16;
    for (g, h) in hists.iter().enumerate() {
        if present_hist(h) {
            present |= 1 << g;
        }
    }
    out.extend_from_slice(&present.to_le_bytes());
    let mut enc = vec![Enc::default(); simd::ENC_ENTRIES];
    for (g, h) in hists.iter().enumerate() {
        if present >> g & 1 == 0 {
            continue;
        }
        let freq = ans::normalize(h);
        ans::write_table(&freq, &mut out);
        let mut start = 0;
        for (e, &f) in enc[g << 8..(g + 1) << 8].iter_mut().zip(&freq) {
            *e = Enc::new(f, start);
            start += f;
        }
    }
    // Backward pass (a kernel stores eight words at a time).
    grow(&mut s.rev, n + WIDE);
    let rev = &mut s.rev[..n + WIDE];
    let len = if states == WIDE {
        let (st, len) = simd::backward::<WIDE>(kernel, idx, &enc, rev);
        st.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        len
    } else {
        let (st, len) = simd::backward::<NARROW>(kernel, idx, &enc, rev);
        st.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        len
    };
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
    out.extend_from_slice(&raw[..raw_len]);
    out.reserve(len * 2);
    out.extend(rev[..len].iter().rev().flat_map(|w| w.to_le_bytes()));
    (out.len() < limit).then_some(Coded {
        payload: out,
        nnz: (n - zeros) as u64,
        states,
    })
}

fn corrupt(msg: &str) -> Error {
    Error::corrupt(format!("symbols chunk: {msg}"))
}

/// Raw low bits, read LSB first.
struct RawBits<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Each element's difference from its symbol and the raw bits of `bytes`
/// from bit `*at` on. Run through `simd::differences`, in a function of
/// its own, so that the bit cursor (the one serial chain) stays in a
/// register.
#[inline(always)]
pub(super) fn differences_body(
    bytes: &[u8],
    at: &mut usize,
    table: &SymTable,
    sym: &[u8],
    diff: &mut [u32],
) {
    let mut a = *at;
    for (dv, &y) in diff.iter_mut().zip(sym) {
        let s = table.info[usize::from(y)];
        let byte = a >> 3;
        let word = match bytes.get(byte..byte + 8) {
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            None => tail_word(bytes, byte),
        };
        let bits = ((word >> (a & 7)) as u32) & s.mask;
        a += s.raw as usize;
        let m = s.lead | bits;
        *dv = (m ^ s.negm).wrapping_sub(s.negm);
    }
    *at = a;
}

/// The 8 bytes at `byte` of `bytes`, zero padded past the end (reading
/// past the end is caught by the length check at the end).
#[cold]
fn tail_word(bytes: &[u8], byte: usize) -> u64 {
    let mut b = [0u8; 8];
    let tail = bytes.get(byte..).unwrap_or(&[]);
    b[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(b)
}

/// `out = unkey(key(reference) + diff)` per element, in a loop the compiler
/// vectorizes (fixed widths, no data-dependent branch). Run through
/// `simd::values`.
#[inline(always)]
pub(super) fn values_body<const B: u32>(out: &mut [u8], reference: &[u8], diff: &[u32]) {
    if B == 16 {
        for ((o, r), &d) in out
            .chunks_exact_mut(2)
            .zip(reference.chunks_exact(2))
            .zip(diff)
        {
            let r = u32::from(u16::from_le_bytes([r[0], r[1]]));
            let v = unkey::<16>(key::<16>(r).wrapping_add(d) & 0xffff) as u16;
            o.copy_from_slice(&v.to_le_bytes());
        }
    } else {
        for ((o, r), &d) in out
            .chunks_exact_mut(4)
            .zip(reference.chunks_exact(4))
            .zip(diff)
        {
            let r = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            let v = unkey::<32>(key::<32>(r).wrapping_add(d));
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Set in a context's table offset when the context has no table.
pub(super) const ABSENT: u32 = 1 << 31;

/// The tables and words of the decoder's symbol pass.
pub(super) struct Pass1<'a> {
    /// One slot table per present context (symbol in bits 24..32,
    /// frequency - 1 in 12..24, slot - start in 0..12), back to back.
    pub(super) slots: &'a [u32],
    /// Per masked reference exponent: its context's offset in `slots`, with
    /// [`ABSENT`] set when the context has no table (the offset is then
    /// that of a table that does exist, or 0).
    pub(super) ctx_off: &'a [u32],
    /// The renormalization words, then [`WIDE`] zeros.
    pub(super) words: &'a [u16],
    /// Words before the zeros.
    pub(super) nwords: usize,
    pub(super) shift: u32,
    pub(super) emask: u32,
    /// [`Pass1::bounds_hold`], checked once when made (the fields cannot
    /// change after: the kernels see the tables through a shared borrow).
    in_bounds: bool,
}

/// Where the symbol pass stands, on `S` interleaved states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pass1State<const S: usize> {
    pub(super) st: [u32; S],
    /// The next word.
    pub(super) at: usize,
    /// The OR of the context offsets used (ABSENT set: a context had no
    /// table).
    pub(super) absent: u32,
    /// The words ran out: a group of `S` started past the last word (the
    /// pass stopped there).
    pub(super) short: bool,
}

impl<'a> Pass1<'a> {
    pub(super) fn new(
        slots: &'a [u32],
        ctx_off: &'a [u32],
        words: &'a [u16],
        nwords: usize,
        shift: u32,
        emask: u32,
    ) -> Self {
        let mut p = Pass1 {
            slots,
            ctx_off,
            words,
            nwords,
            shift,
            emask,
            in_bounds: false,
        };
        p.in_bounds = p.bounds_hold();
        p
    }

    /// Whether [`Pass1::bounds_hold`] held when the tables were made.
    pub(super) fn in_bounds(&self) -> bool {
        self.in_bounds
    }

    /// What the kernels' loads rely on: every offset plus a slot is within
    /// `slots`, every masked exponent has an offset, and [`WIDE`] words
    /// follow `nwords`.
    fn bounds_hold(&self) -> bool {
        self.ctx_off.len() == self.emask as usize + 1
            && self
                .ctx_off
                .iter()
                .all(|&o| ((o & !ABSENT) as usize) + (MASK as usize) < self.slots.len())
            && self.words.len() >= self.nwords + WIDE
    }

    /// One element's symbol on state `j`: the table lookup and the state's
    /// update (the renormalization comes after, in element order).
    #[inline(always)]
    pub(super) fn step<const B: u32, const S: usize>(
        &self,
        s: &mut Pass1State<S>,
        r: &[u8],
        j: usize,
    ) -> u8 {
        let r = load::<B>(r, 0);
        let o = self.ctx_off[((r >> self.shift) & self.emask) as usize];
        s.absent |= o;
        let x = s.st[j];
        let e = self.slots[((o & !ABSENT) | (x & MASK)) as usize];
        s.st[j] = ((e >> 12 & MASK) + 1) * (x >> SCALE_BITS) + (e & MASK);
        (e >> 24) as u8
    }

    /// State `j` takes the next word when it is below L (branch free: the
    /// word is read every time; past the end it reads zero).
    #[inline(always)]
    pub(super) fn renorm<const S: usize>(&self, s: &mut Pass1State<S>, j: usize) {
        let x = s.st[j];
        let low = u32::from(x < L);
        let w = u32::from(self.words.get(s.at).copied().unwrap_or(0));
        s.st[j] = (x << (16 * low)) | (w & low.wrapping_neg());
        s.at += low as usize;
    }
}

/// The scalar kernel of the symbol pass (the twin of the SIMD ones in
/// `simd`): the symbols of `reference`'s elements (whole groups of `S`)
/// into `sym`, stopping at a group that starts past the last word. A
/// group's symbols are decoded first, then its states renormalize in
/// state order.
pub(super) fn pass1_scalar<const B: u32, const S: usize>(
    p: &Pass1<'_>,
    s: &mut Pass1State<S>,
    reference: &[u8],
    sym: &mut [u8],
) {
    let wb = B as usize / 8;
    for (rg, sg) in reference.chunks_exact(S * wb).zip(sym.chunks_exact_mut(S)) {
        if s.at > p.nwords {
            s.short = true;
            return;
        }
        for (j, y) in sg.iter_mut().enumerate() {
            *y = p.step::<B, S>(s, &rg[j * wb..], j);
        }
        for j in 0..S {
            p.renorm(s, j);
        }
    }
}

/// How many bytes of `b` are zero, eight a word (a byte's high bit set
/// where it is not zero, counted).
fn zero_bytes(b: &[u8]) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = b.chunks_exact(8);
    let mut nonzero = 0usize;
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        nonzero += ((((x & LOW7) + LOW7) | x) & HIGH).count_ones() as usize;
    }
    let rest = words.remainder();
    b.len() - nonzero - rest.iter().filter(|&&y| y != 0).count()
}

/// Elements per block of the decoder: the symbols of a block are decoded
/// first (into a buffer that stays in L1), then its values.
const BLOCK: usize = 2048;

/// Decodes a payload of [`encode`] with `states` interleaved states
/// ([`NARROW`] for codec 5, [`WIDE`] for codec 6) against `reference` into
/// `out` (same length, `width` 2 or 4); returns the number of changed
/// elements.
pub(super) fn decode(
    payload: &[u8],
    reference: &[u8],
    width: usize,
    states: usize,
    out: &mut [u8],
) -> Result<u64> {
    decode_with(Kernel::best(), payload, reference, width, states, out)
}

/// [`decode`] with the symbol pass's `kernel`.
fn decode_with(
    kernel: Kernel,
    payload: &[u8],
    reference: &[u8],
    width: usize,
    states: usize,
    out: &mut [u8],
) -> Result<u64> {
    DEC_SCRATCH.with(|s| {
        let slots = &mut s.borrow_mut();
        match (width, states) {
            (2, NARROW) => decode_w::<16, NARROW>(kernel, slots, payload, reference, out),
            (2, WIDE) => decode_w::<16, WIDE>(kernel, slots, payload, reference, out),
            (_, NARROW) => decode_w::<32, NARROW>(kernel, slots, payload, reference, out),
            (_, WIDE) => decode_w::<32, WIDE>(kernel, slots, payload, reference, out),
            _ => Err(corrupt("bad number of states")),
        }
    })
}

fn decode_w<const B: u32, const S: usize>(
    kernel: Kernel,
    slots: &mut Vec<u32>,
    payload: &[u8],
    reference: &[u8],
    out: &mut [u8],
) -> Result<u64> {
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
    // One slot table (TOTAL entries: symbol in bits 24..32, freq - 1 in
    // 12..24, slot - start in 0..12) per present context, back to back;
    // `offset[g]` is context g's, or ABSENT.
    grow(slots, (present.count_ones() as usize) << SCALE_BITS);
    let mut offset = [ABSENT; MAX_CONTEXTS];
    let mut k = 0usize;
    for (g, o) in offset.iter_mut().enumerate() {
        if present >> g & 1 == 0 {
            continue;
        }
        let (freq, used) = ans::read_table(&payload[pos..])?;
        pos += used;
        if freq[nsym..].iter().any(|&f| f > 0) {
            return Err(corrupt("symbol out of range"));
        }
        ans::fill_slots(&freq, &mut slots[k << SCALE_BITS..(k + 1) << SCALE_BITS]);
        *o = (k << SCALE_BITS) as u32;
        k += 1;
    }
    // An absent context reads the first table (or, with none, the first
    // slots) and is reported after the loop.
    let ctx_off: Vec<u32> = window
        .table()
        .iter()
        .map(|&g| offset[usize::from(g) & (MAX_CONTEXTS - 1)])
        .collect();
    let slots = &slots[..(k.max(1)) << SCALE_BITS];
    let st: [u32; S] = ans::read_states(payload, &mut pos).map_err(corrupt)?;
    let raw_len = payload
        .get(pos..pos + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize)
        .ok_or_else(|| corrupt("raw length missing"))?;
    pos += 4;
    let raw_bytes = payload
        .get(pos..pos.saturating_add(raw_len))
        .ok_or_else(|| corrupt("raw bits cut short"))?;
    pos += raw_len;
    let word_bytes = &payload[pos..];
    if !word_bytes.len().is_multiple_of(2) {
        return Err(corrupt("odd number of renormalization bytes"));
    }
    // The words, then WIDE zeros (a kernel reads eight at a time, for each
    // of up to four vectors of a group).
    let mut words: Vec<u16> = Vec::with_capacity(word_bytes.len() / 2 + WIDE);
    words.extend(
        word_bytes
            .chunks_exact(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]])),
    );
    let nwords = words.len();
    words.extend([0; WIDE]);
    let p = Pass1::new(
        slots,
        &ctx_off,
        &words,
        nwords,
        u32::from(window.shift),
        (1u32 << window.bits) - 1,
    );
    let table = SymTable::new();
    let mut raw = RawBits {
        bytes: raw_bytes,
        at: 0,
    };
    let mut s = Pass1State {
        st,
        at: 0,
        absent: 0,
        short: false,
    };
    let mut zeros = 0usize;
    let mut sym = [0u8; BLOCK];
    let mut diff = [0u32; BLOCK];
    for (ob, rb) in out.chunks_mut(BLOCK * wb).zip(reference.chunks(BLOCK * wb)) {
        let cnt = rb.len() / wb;
        // Pass 1: the symbols, a group of S states at a time.
        let whole = cnt / S * S;
        symbols_pass1::<B, S>(kernel, &p, &mut s, &rb[..whole * wb], &mut sym[..whole]);
        if s.short {
            return Err(corrupt("renormalization words end early"));
        }
        // Only the chunk's last block has a partial group.
        for j in 0..cnt - whole {
            sym[whole + j] = p.step::<B, S>(&mut s, &rb[(whole + j) * wb..], j);
            p.renorm(&mut s, j);
        }
        // Pass 2: each element's difference, from its symbol and raw bits
        // (the one serial chain: the raw bits' cursor).
        simd::differences(
            kernel,
            raw.bytes,
            &mut raw.at,
            &table,
            &sym[..cnt],
            &mut diff[..cnt],
        );
        zeros += zero_bytes(&sym[..cnt]);
        // Pass 3: the values, from the differences and the reference
        // (independent per element).
        simd::values::<B>(kernel, &mut ob[..cnt * wb], &rb[..cnt * wb], &diff[..cnt]);
    }
    if s.absent & ABSENT != 0 {
        return Err(corrupt("element in a context without a table"));
    }
    if s.at > nwords {
        return Err(corrupt("renormalization words end early"));
    }
    if s.st != [L; S] || s.at != nwords {
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
    Ok((out.len() / wb - zeros) as u64)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunk::tests::rng;

    #[test]
    fn zero_bytes_counts_every_zero() {
        let mut next = rng(11);
        for len in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            for density in [0u64, 1, 4, 8] {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        let x = next();
                        if x % 8 < density {
                            (x >> 8) as u8 | 1
                        } else if x % 16 == 9 {
                            0x80
                        } else {
                            0
                        }
                    })
                    .collect();
                assert_eq!(zero_bytes(&b), b.iter().filter(|&&y| y == 0).count());
            }
        }
    }

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
                    assert!((s as usize) < symbol_count(b), "{m} {b}");
                    let i = sym_info(s as usize);
                    assert_eq!(i.raw, k);
                    assert_eq!(i.negm != 0, neg);
                    assert_eq!(i.lead | (m & ((1 << k) - 1)), m, "m {m}");
                }
            }
        }
    }

    /// The packed encoder step is the rANS step by plain division, for
    /// every frequency and states at the edges and at random (every state
    /// the encoder can hold: below 2^20 freq once renormalized).
    #[test]
    fn packed_coding_step_divides_exactly() {
        let mut next = crate::codec::chunk::tests::rng(5);
        for freq in 1..=1u32 << SCALE_BITS {
            let start = (next() as u32) % ((1 << SCALE_BITS) - freq + 1);
            let e = Enc::new(freq, start);
            assert_eq!(e.freq(), freq);
            let top = ((u64::from(freq) << 20).min(1 << 32) - 1) as u32;
            let xs = [0, 1, freq - 1, freq, freq + 1, L, top - 1, top];
            for x in xs
                .into_iter()
                .chain((0..64).map(|_| (next() % (u64::from(top) + 1)) as u32))
            {
                let want = ((x / freq) << SCALE_BITS) + x % freq + start;
                assert_eq!(e.code(x), want, "x {x} freq {freq} start {start}");
            }
        }
    }

    /// The forward pass's symbols, raw bit counts and raw bits are
    /// `symbol_of`'s and the magnitude's low bits, for every bit length,
    /// sign and the bits below the leading one, both widths.
    #[test]
    fn arithmetic_symbols_match_the_table() {
        for b in [16u32, 32] {
            let wb = b as usize / 8;
            let mask = u32::MAX >> (32 - b);
            let half = 1u32 << (b - 1);
            let mut pairs = Vec::new();
            for n in 0..b {
                for low in [0u32, 1, 2, 3, 5, u32::MAX] {
                    let m = if n == 0 {
                        0
                    } else {
                        (1u32 << n) | (low & ((1u32 << n) - 1))
                    };
                    for neg in [false, true] {
                        let d = if neg { m.wrapping_neg() & mask } else { m };
                        pairs.push(d);
                    }
                }
            }
            pairs.extend([half, half - 1, half + 1, mask]);
            // cur = unkey(key(r) + d) against r = the key of zero's value.
            let r0 = unkey_w(b, 1 << (b - 1));
            let mut cur = Vec::new();
            let mut reference = Vec::new();
            for &d in &pairs {
                let c = unkey_w(b, (1u32 << (b - 1)).wrapping_add(d) & mask);
                cur.extend_from_slice(&c.to_le_bytes()[..wb]);
                reference.extend_from_slice(&r0.to_le_bytes()[..wb]);
            }
            let mut idx = vec![0u16; pairs.len()];
            let mut kb = vec![0u32; pairs.len()];
            let mut low = vec![0u32; pairs.len()];
            let window = Window {
                shift: 0,
                bits: 1,
                base: 0,
                count: 1,
            };
            if b == 16 {
                symbols_of::<16>(&cur, &reference, window, &mut idx, &mut kb, &mut low);
            } else {
                symbols_of::<32>(&cur, &reference, window, &mut idx, &mut kb, &mut low);
            }
            for (((&d, &i), &k2), &l) in pairs.iter().zip(&idx).zip(&kb).zip(&low) {
                let (s, k) = symbol_of(d, half, mask);
                assert_eq!((u32::from(i), k2), (s, k), "width {b} d {d:#x}");
                let negm = u32::from(d >= half).wrapping_neg();
                let m = ((d ^ negm).wrapping_sub(negm)) & mask;
                assert_eq!(l, m & ((1u32 << k) - 1), "width {b} d {d:#x}");
            }
        }
    }

    /// The forward pass's arithmetic context is the window's table, for
    /// every exponent value of random windows of both widths.
    #[test]
    fn arithmetic_contexts_match_the_table() {
        let mut next = crate::codec::chunk::tests::rng(9);
        for _ in 0..200 {
            let b = if next().is_multiple_of(2) { 16u32 } else { 32 };
            let wb = b as usize / 8;
            let bits = 1 + (next() % 11) as u8;
            let shift = (next() % u64::from(b - u32::from(bits) + 1)) as u8;
            let window = Window {
                shift,
                bits,
                base: (next() % (1 << bits)) as u16,
                count: (1 + next() % 16).min(1 << bits) as u8,
            };
            assert!(window.valid(wb));
            let n = 1usize << bits;
            let mut reference = Vec::new();
            for e in 0..n as u32 {
                let other = (next() as u32) & !(((1u32 << bits) - 1) << shift);
                let r = (e << shift | other) & (u32::MAX >> (32 - b));
                reference.extend_from_slice(&r.to_le_bytes()[..wb]);
            }
            let cur = reference.clone();
            let (mut idx, mut kb, mut low) = (vec![0u16; n], vec![0u32; n], vec![0u32; n]);
            if b == 16 {
                symbols_of::<16>(&cur, &reference, window, &mut idx, &mut kb, &mut low);
            } else {
                symbols_of::<32>(&cur, &reference, window, &mut idx, &mut kb, &mut low);
            }
            let table = window.table();
            for (e, &i) in idx.iter().enumerate() {
                assert_eq!(i, u16::from(table[e]) << 8, "{window:?} exponent {e}");
            }
        }
    }

    fn unkey_w(b: u32, k: u32) -> u32 {
        if b == 16 {
            unkey::<16>(k)
        } else {
            unkey::<32>(k)
        }
    }

    fn round_trip(width: usize, cur: &[u8], reference: &[u8]) -> Option<usize> {
        let window = Window::choose(reference, width, if width == 2 { (7, 8) } else { (23, 8) });
        let coded = encode_with(Kernel::Scalar, cur, reference, width, window, usize::MAX)?;
        // Every kernel writes the same payload.
        for kernel in Kernel::all() {
            let other = encode_with(kernel, cur, reference, width, window, usize::MAX).unwrap();
            assert!(
                other.payload == coded.payload,
                "width {width} {kernel:?}: payload differs"
            );
            assert_eq!(other.nnz, coded.nnz);
        }
        for kernel in Kernel::all() {
            let mut out = vec![0u8; cur.len()];
            let nnz = decode_with(
                kernel,
                &coded.payload,
                reference,
                width,
                coded.states,
                &mut out,
            )
            .unwrap();
            assert!(out == cur, "width {width} {kernel:?}: decoded bytes differ");
            assert_eq!(nnz, coded.nnz);
        }
        // The wide states from an estimated WIDE_MIN bytes on (the estimate
        // is within 2% of the payload).
        let narrow_len = coded.payload.len() - 4 * (coded.states - NARROW);
        if narrow_len > WIDE_MIN + WIDE_MIN / 50 {
            assert_eq!(coded.states, WIDE, "{narrow_len} bytes");
        }
        if narrow_len < WIDE_MIN - WIDE_MIN / 50 {
            assert_eq!(coded.states, NARROW, "{narrow_len} bytes");
        }
        WIDE_SEEN.with(|w| w.set(w.get() || coded.states == WIDE));
        Some(coded.payload.len())
    }

    thread_local! {
        static WIDE_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn round_trips_every_bit_pattern() {
        let mut next = rng(5);
        for width in [2usize, 4] {
            for n in [1usize, 7, 8, 9, 31, 33, 1000, 4099, WIDE_MIN / 2 + 4099] {
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
        assert!(
            WIDE_SEEN.with(|w| w.get()),
            "no payload was coded on 32 states"
        );
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
        // Every cut and every 7th bit flip on 8 states; on 32, a few hundred
        // of each.
        corrupt_payloads(5000, 1, 7, NARROW);
        corrupt_payloads(WIDE_MIN, 401, 4001, WIDE);
    }

    fn corrupt_payloads(n: usize, cut_step: usize, bit_step: usize, want_states: usize) {
        let mut next = rng(3);
        let r: Vec<u8> = (0..n * 4).map(|_| next() as u8).collect();
        let mut c = r.clone();
        for e in c.chunks_exact_mut(4) {
            e[0] = e[0].wrapping_add((next() % 50) as u8);
            e[1] ^= (next() % 3) as u8;
        }
        let window = Window::choose(&r, 4, (23, 8));
        let coded = encode(&c, &r, 4, window, usize::MAX).unwrap();
        let z = coded.payload;
        let states = coded.states;
        assert_eq!(states, want_states);
        for cut in (0..z.len()).step_by(cut_step) {
            // Every cut with the kernel that runs, every 7th with the others.
            for kernel in Kernel::all() {
                if kernel != Kernel::best() && cut % 7 != 0 {
                    continue;
                }
                let mut out = vec![0u8; c.len()];
                let got = decode_with(kernel, &z[..cut], &r, 4, states, &mut out);
                assert!(got.is_err(), "cut {cut} {kernel:?}");
            }
        }
        let mut caught = 0;
        for bit in (0..z.len() * 8).step_by(bit_step) {
            let mut bad = z.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // Every kernel reaches the same verdict.
            let verdicts: Vec<Option<Vec<u8>>> = Kernel::all()
                .into_iter()
                .map(|kernel| {
                    let mut out = vec![0u8; c.len()];
                    decode_with(kernel, &bad, &r, 4, states, &mut out)
                        .ok()
                        .map(|_| out)
                })
                .collect();
            assert!(verdicts.windows(2).all(|w| w[0] == w[1]), "bit {bit}");
            caught += usize::from(verdicts[0].as_ref() != Some(&c));
        }
        assert!(caught > 0);
        // Decoded on the other number of states, the payload is refused
        // or decodes to other bytes.
        let other = if states == WIDE { NARROW } else { WIDE };
        let mut out = vec![0u8; c.len()];
        let got = decode_with(Kernel::best(), &z, &r, 4, other, &mut out);
        assert!(got.is_err() || out != c);
    }
}
