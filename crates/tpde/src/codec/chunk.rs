//! Coding one chunk: transform against the reference, positions of the
//! changed elements, byte planes of the values, entropy coding.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::codec::ans;
use crate::codec::bits::{elias_delta_len, BitReader, BitWriter};
use crate::codec::lossy::{self, FloatKind, Quantized};
use crate::codec::transform::{self, Transform};
use crate::common::error::{Error, Result};
use crate::source::dtype::Family;

/// How a chunk's payload is coded (the format's `codec` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The raw bytes.
    Stored = 0,
    /// One zstd frame of the raw bytes.
    Zstd = 1,
    /// Byte planes of the raw elements, no reference.
    Planes = 2,
    /// Byte planes of the elements transformed against the reference.
    Delta = 3,
    /// The lossy mode: floats as quantization bins against the reference
    /// (or zero), plus exact escapes (see [`crate::codec::lossy`]).
    Quantized = 4,
}

impl Codec {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            2 => Codec::Planes,
            3 => Codec::Delta,
            4 => Codec::Quantized,
            other => return Err(Error::corrupt(format!("unknown codec {other}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Stored => "stored",
            Codec::Zstd => "zstd",
            Codec::Planes => "planes",
            Codec::Delta => "delta",
            Codec::Quantized => "quantized",
        }
    }
}

/// How the changed positions are coded (the format's `positions` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Positions {
    /// Every element's value is coded; no positions.
    Dense = 0,
    /// Elias-delta coded gaps between changed positions.
    Gaps = 1,
    /// One bit per element.
    Bitmap = 2,
    /// Gaps as entropy-coded bit lengths plus their low bits.
    Classes = 3,
}

impl Positions {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Positions::Dense,
            1 => Positions::Gaps,
            2 => Positions::Bitmap,
            3 => Positions::Classes,
            other => return Err(Error::corrupt(format!("unknown positions coding {other}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Positions::Dense => "dense",
            Positions::Gaps => "gaps",
            Positions::Bitmap => "bitmap",
            Positions::Classes => "classes",
        }
    }
}

/// What describes a coded chunk besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCoding {
    pub codec: Codec,
    pub transform: Transform,
    pub positions: Positions,
    /// Element width in bytes.
    pub width: u8,
    /// Changed (non-zero transformed) elements.
    pub nnz: u64,
}

/// Encoder settings for one chunk.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Element width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// Which difference transform suits the elements.
    pub family: Family,
    /// zstd level for the sections.
    pub level: i32,
    /// The exponent field of a float element, (shift, bits): plane bytes may
    /// then be grouped by the exponent of their reference element.
    pub exponent: Option<(u8, u8)>,
}

const SECTION_RAW: u8 = 0;
const SECTION_ZSTD: u8 = 1;
const SECTION_CONST: u8 = 2;
const SECTION_RANS: u8 = 3;
const SECTION_GROUPED: u8 = 4;
/// Groups of a grouped section, at most.
const MAX_GROUPS: usize = 16;
/// Coded elements a chunk needs before grouping is tried.
const GROUP_MIN: usize = 4096;
/// Sections shorter than this are not worth a rANS frequency table.
const RANS_MIN: usize = 256;
/// Bytes of a long section that zstd is tried on to predict its full size.
const PROBE: usize = 64 << 10;
/// Bytes of a section head.
const SECTION_HEAD: usize = 9;
/// Elements sampled to choose a transform and estimate costs.
const SAMPLE: usize = 8192;
/// Order-0 entropy (bits per byte) above which a plane is stored raw.
const RAW_ENTROPY: f64 = 7.9;

/// Order-0 entropy of a histogram, in bits per symbol.
fn entropy(hist: &[u64; 256]) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let t = total as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / t;
            -p * p.log2()
        })
        .sum()
}

/// Order-0 statistics of the byte planes of a sample of transformed elements.
struct Sample {
    /// Per plane, the entropy in bits per element with every sampled element
    /// (dense) and with the all-zero elements left out (sparse).
    dense: Vec<f64>,
    sparse: Vec<f64>,
}

/// The elements a sample looks at, gathered into contiguous buffers once and
/// shared by every candidate transform.
struct Sampled {
    cur: Vec<u8>,
    reference: Vec<u8>,
}

impl Sampled {
    fn gather(width: usize, cur: &[u8], reference: &[u8]) -> Sampled {
        let n = cur.len() / width;
        if n <= SAMPLE {
            return Sampled {
                cur: cur.to_vec(),
                reference: reference.to_vec(),
            };
        }
        let stride = n.div_ceil(SAMPLE);
        let pick = |src: &[u8]| -> Vec<u8> {
            if src.is_empty() {
                return Vec::new();
            }
            let mut v = Vec::with_capacity(SAMPLE * width);
            for e in src.chunks_exact(width).step_by(stride) {
                v.extend_from_slice(e);
            }
            v
        };
        Sampled {
            cur: pick(cur),
            reference: pick(reference),
        }
    }
}

impl Sample {
    fn take(t: Transform, width: usize, s: &Sampled) -> Sample {
        let mut planes = vec![0u8; s.cur.len()];
        let nnz = transform::forward_planes(t, width, &s.cur, &s.reference, &mut planes);
        let m = s.cur.len() / width;
        let zeros = (m as u64).saturating_sub(nnz);
        let (mut dense, mut sparse) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for plane in planes.chunks_exact(m.max(1)) {
            let mut h = ans::histogram(plane);
            dense.push(entropy(&h));
            h[0] -= zeros;
            sparse.push(entropy(&h));
        }
        Sample { dense, sparse }
    }

    /// Estimated bits per element of the planes with all elements (dense).
    fn dense_bits(&self) -> f64 {
        self.dense.iter().sum()
    }

    /// Estimated bits per coded element of the planes with the zeros left out.
    fn sparse_bits(&self) -> f64 {
        self.sparse.iter().sum()
    }

    /// Entropy of plane `k` when zeros are (`sparse`) or are not left out.
    fn plane_entropy(&self, k: usize, sparse: bool) -> f64 {
        if sparse {
            self.sparse[k]
        } else {
            self.dense[k]
        }
    }
}

thread_local! {
    /// One zstd compression context per thread and level, reused across chunks.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` with this thread's zstd context at `level`.
fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, z) = c.as_mut().expect("set above");
        Ok(z.compress(data)?)
    })
}

/// Decompresses one zstd frame into exactly `out.len()` bytes.
fn zstd_decompress_exact(src: &[u8], out: &mut [u8], what: &str) -> Result<()> {
    let got = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("set above")
            .decompress_to_buffer(src, out)
    });
    match got {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(Error::corrupt(format!(
            "{what}: zstd gave {n} bytes, expected {}",
            out.len()
        ))),
        Err(e) => Err(Error::corrupt(format!("{what}: zstd: {e}"))),
    }
}

/// Appends a section holding `data`: constant, zstd (when `level` is given
/// and it is smaller) or raw.
fn put_section(out: &mut Vec<u8>, data: &[u8], level: Option<i32>) -> Result<()> {
    let raw_len = u32::try_from(data.len())
        .map_err(|_| Error::InvalidArgument("section over 4 GiB".into()))?;
    let mut head = |coding: u8, stored: usize| {
        out.push(coding);
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(&(stored as u32).to_le_bytes());
    };
    if let Some(&first) = data.first() {
        if data.iter().all(|&b| b == first) {
            head(SECTION_CONST, 1);
            out.push(first);
            return Ok(());
        }
    }
    if let Some(level) = level.filter(|_| data.len() > 32) {
        // rANS codes a plane at its order-0 entropy; zstd wins only where the
        // plane repeats itself. A long plane is probed with zstd on its first
        // PROBE bytes, and coded in full only by the one the probe favours.
        let hist = (data.len() >= RANS_MIN).then(|| ans::histogram(data));
        let rans_est = hist.as_ref().map(ans::estimate);
        let probe_says_rans = match rans_est {
            Some(est) if data.len() >= 4 * PROBE => {
                let z = zstd_compress(&data[..PROBE], level)?;
                (est as f64) < 0.97 * z.len() as f64 * (data.len() / PROBE) as f64
            }
            _ => false,
        };
        let z = if probe_says_rans {
            None
        } else {
            Some(zstd_compress(data, level)?)
        };
        let zlen = z.as_ref().map_or(usize::MAX, Vec::len);
        if let Some(hist) =
            hist.filter(|h| probe_says_rans || (ans::estimate(h) as f64) < zlen as f64 * 0.97)
        {
            let a = ans::encode_with(data, &hist);
            if a.len() < zlen && a.len() < data.len() {
                head(SECTION_RANS, a.len());
                out.extend_from_slice(&a);
                return Ok(());
            }
        }
        let z = match z {
            Some(z) => z,
            None => zstd_compress(data, level)?,
        };
        if z.len() < data.len() {
            head(SECTION_ZSTD, z.len());
            out.extend_from_slice(&z);
            return Ok(());
        }
    }
    head(SECTION_RAW, data.len());
    out.extend_from_slice(data);
    Ok(())
}

/// The reference's exponents sort the coded elements into groups: the size of
/// a float's change in units in the last place depends on the magnitude of
/// the float, so each group's bytes have their own, narrower, distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Groups {
    shift: u8,
    bits: u8,
    base: u16,
    count: u8,
    /// The group of each coded element.
    of: Vec<u8>,
    /// Elements in each group.
    counts: Vec<usize>,
    /// Where each coded element's byte sits when the groups are laid end to
    /// end (computed once per chunk, shared by its planes).
    index: Vec<u32>,
}

impl Groups {
    /// Applies `f` to the exponent of each coded element's reference
    /// element: every element (`pos` is `None`) or those at `pos`.
    fn map_exponents<T>(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        (shift, bits): (u8, u8),
        f: impl Fn(u16) -> T,
    ) -> Vec<T> {
        fn go<const W: usize, T>(
            reference: &[u8],
            pos: Option<&[u32]>,
            shift: u8,
            mask: u64,
            f: impl Fn(u16) -> T,
        ) -> Vec<T> {
            let exp = |e: &[u8]| {
                let mut b = [0u8; 8];
                b[..W].copy_from_slice(e);
                f(((u64::from_le_bytes(b) >> shift) & mask) as u16)
            };
            match pos {
                None => reference.chunks_exact(W).map(exp).collect(),
                Some(pos) => pos
                    .iter()
                    .map(|&q| exp(&reference[q as usize * W..(q as usize + 1) * W]))
                    .collect(),
            }
        }
        let mask = (1u64 << bits) - 1;
        match width {
            1 => go::<1, T>(reference, pos, shift, mask, f),
            2 => go::<2, T>(reference, pos, shift, mask, f),
            4 => go::<4, T>(reference, pos, shift, mask, f),
            _ => go::<8, T>(reference, pos, shift, mask, f),
        }
    }

    /// The groups with the given parameters, read off the reference in one pass.
    fn new(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        shift: u8,
        bits: u8,
        base: u16,
        count: u8,
    ) -> Groups {
        let top = u16::from(count) - 1;
        let of = Self::map_exponents(reference, width, pos, (shift, bits), |e| {
            e.saturating_sub(base).min(top) as u8
        });
        let hist = ans::histogram(&of);
        let counts: Vec<usize> = hist[..usize::from(count)]
            .iter()
            .map(|&c| c as usize)
            .collect();
        let mut next = [0u32; MAX_GROUPS];
        let mut start = 0u32;
        for (n, &c) in next.iter_mut().zip(&counts) {
            *n = start;
            start += c as u32;
        }
        let index = of
            .iter()
            .map(|&k| {
                let i = next[k as usize];
                next[k as usize] += 1;
                i
            })
            .collect();
        Groups {
            shift,
            bits,
            base,
            count,
            of,
            counts,
            index,
        }
    }

    /// Groups for the encoder: the window of `MAX_GROUPS` consecutive
    /// exponents that holds the most coded elements.
    fn choose(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        (shift, bits): (u8, u8),
    ) -> Option<Groups> {
        if u32::from(shift) + u32::from(bits) > 8 * width as u32 || bits == 0 || bits > 11 {
            return None;
        }
        let mut hist = vec![0usize; 1 << bits];
        // A sample of the exponents is enough to place the window.
        let n = pos.map_or(reference.len() / width, <[u32]>::len);
        let stride = n.div_ceil(SAMPLE).max(1);
        let sample: Vec<u32> = match pos {
            None => (0..n).step_by(stride).map(|i| i as u32).collect(),
            Some(pos) => pos.iter().step_by(stride).copied().collect(),
        };
        for e in Self::map_exponents(reference, width, Some(&sample), (shift, bits), usize::from) {
            hist[e] += 1;
        }
        let k = MAX_GROUPS.min(hist.len());
        let mut best = (0usize, 0usize);
        let mut sum: usize = hist[..k].iter().sum();
        for start in 0..=hist.len() - k {
            if start > 0 {
                sum = sum + hist[start + k - 1] - hist[start - 1];
            }
            if sum > best.1 {
                best = (start, sum);
            }
        }
        Some(Self::new(
            reference,
            width,
            pos,
            shift,
            bits,
            best.0 as u16,
            k as u8,
        ))
    }

    /// The bytes of `plane` (one per coded element) split by group, in order.
    fn split(&self, plane: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plane.len()];
        for (&i, &b) in self.index.iter().zip(plane) {
            out[i as usize] = b;
        }
        out
    }

    /// Estimated bytes of `plane` coded whole and coded by groups.
    fn estimates(&self, plane: &[u8]) -> (f64, f64) {
        let mut hist = vec![[0u64; 256]; usize::from(self.count)];
        for (&g, &b) in self.of.iter().zip(plane) {
            hist[g as usize][b as usize] += 1;
        }
        let mut total = [0u64; 256];
        let mut grouped = 0.0;
        for h in &hist {
            for (t, c) in total.iter_mut().zip(h) {
                *t += c;
            }
            if h.iter().any(|&c| c > 0) {
                grouped += ans::estimate(h) as f64 + SECTION_HEAD as f64;
            }
        }
        (ans::estimate(&total) as f64, grouped)
    }
}

/// Appends a plane: grouped by reference exponent where the estimates say
/// that pays, else as one section.
fn put_plane(
    out: &mut Vec<u8>,
    plane: &[u8],
    level: Option<i32>,
    groups: Option<&Groups>,
) -> Result<()> {
    if let (Some(g), Some(level)) = (groups, level) {
        let (whole, grouped) = g.estimates(plane);
        if grouped < whole * 0.98 {
            let mut body = vec![g.shift, g.bits];
            body.extend_from_slice(&g.base.to_le_bytes());
            body.push(g.count);
            let parts = g.split(plane);
            let mut rest = &parts[..];
            for &c in &g.counts {
                let (part, tail) = rest.split_at(c);
                put_section(&mut body, part, Some(level))?;
                rest = tail;
            }
            if body.len() < plane.len() {
                out.push(SECTION_GROUPED);
                out.extend_from_slice(&(plane.len() as u32).to_le_bytes());
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(&body);
                return Ok(());
            }
        }
    }
    put_section(out, plane, level)
}

/// What a decoder needs to read grouped sections: the reference and which
/// elements are coded.
struct GroupContext<'r> {
    reference: &'r [u8],
    width: usize,
    pos: Option<&'r [u32]>,
    /// The groups of the last grouped section: the planes of a chunk share
    /// their parameters, so the exponents are read once.
    cache: RefCell<Option<Groups>>,
}

/// Reads sections off a payload.
struct Sections<'a> {
    rest: &'a [u8],
}

impl<'a> Sections<'a> {
    /// The next section, of `len` decoded bytes: borrowed when stored raw,
    /// decoded into a new buffer otherwise.
    fn next(&mut self, len: usize, what: &str) -> Result<Cow<'a, [u8]>> {
        self.next_in(len, what, None)
    }

    /// [`Sections::next`], where a grouped section may appear (byte planes of
    /// a delta chunk).
    fn next_in(
        &mut self,
        len: usize,
        what: &str,
        ctx: Option<&GroupContext<'_>>,
    ) -> Result<Cow<'a, [u8]>> {
        let head = self
            .rest
            .get(..SECTION_HEAD)
            .ok_or_else(|| Error::corrupt(format!("{what} section head missing")))?;
        let coding = head[0];
        let raw_len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let stored_len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
        if raw_len != len {
            return Err(Error::corrupt(format!(
                "{what} section holds {raw_len} bytes, expected {len}"
            )));
        }
        let body = SECTION_HEAD
            .checked_add(stored_len)
            .and_then(|end| self.rest.get(SECTION_HEAD..end))
            .ok_or_else(|| Error::corrupt(format!("{what} section runs past its chunk")))?;
        let data = match coding {
            SECTION_RAW if stored_len == raw_len => Cow::Borrowed(body),
            _ if raw_len == 0 => {
                return Err(Error::corrupt(format!(
                    "{what} section: an empty section must be raw"
                )))
            }
            SECTION_CONST if stored_len == 1 => Cow::Owned(vec![body[0]; len]),
            SECTION_ZSTD => {
                let mut out = vec![0u8; len];
                zstd_decompress_exact(body, &mut out, what)?;
                Cow::Owned(out)
            }
            SECTION_RANS => {
                let mut out = vec![0u8; len];
                ans::decode(body, &mut out)
                    .map_err(|e| Error::corrupt(format!("{what} section: {e}")))?;
                Cow::Owned(out)
            }
            SECTION_GROUPED => {
                let ctx = ctx.ok_or_else(|| {
                    Error::corrupt(format!("{what} section: grouped where no reference is"))
                })?;
                Cow::Owned(read_grouped(body, len, ctx, what)?)
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "{what} section: bad coding {coding} or length"
                )))
            }
        };
        self.rest = &self.rest[SECTION_HEAD + stored_len..];
        Ok(data)
    }

    /// The decoded length of the next section, read from its head.
    fn peek_len(&self, what: &str) -> Result<usize> {
        let head = self
            .rest
            .get(1..5)
            .ok_or_else(|| Error::corrupt(format!("{what} section head missing")))?;
        Ok(u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize)
    }
}

/// Decodes the body of a grouped section holding `len` bytes.
fn read_grouped(body: &[u8], len: usize, ctx: &GroupContext<'_>, what: &str) -> Result<Vec<u8>> {
    let bad = |m: &str| Error::corrupt(format!("{what} section, grouped: {m}"));
    let head = body.get(..5).ok_or_else(|| bad("parameters missing"))?;
    let (shift, bits, base, count) = (
        head[0],
        head[1],
        u16::from_le_bytes([head[2], head[3]]),
        head[4],
    );
    if bits == 0 || bits > 11 || u32::from(shift) + u32::from(bits) > 8 * ctx.width as u32 {
        return Err(bad("exponent field outside the element"));
    }
    if !(1..=MAX_GROUPS as u8).contains(&count) {
        return Err(bad("group count out of range"));
    }
    let mut cache = ctx.cache.borrow_mut();
    let fresh =
        |g: &Groups| g.shift == shift && g.bits == bits && g.base == base && g.count == count;
    if !cache.as_ref().is_some_and(fresh) {
        *cache = Some(Groups::new(
            ctx.reference,
            ctx.width,
            ctx.pos,
            shift,
            bits,
            base,
            count,
        ));
    }
    let g = cache.as_ref().expect("set above");
    if g.of.len() != len {
        return Err(bad("length differs from the coded elements"));
    }
    let mut inner = Sections { rest: &body[5..] };
    let mut parts = Vec::with_capacity(len);
    for &c in &g.counts {
        parts.extend_from_slice(&inner.next(c, what)?);
    }
    if !inner.rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let out = g.index.iter().map(|&i| parts[i as usize]).collect();
    Ok(out)
}

/// Positions of the non-zero elements, from their byte planes.
fn changed_positions(planes: &[u8], n: usize, nnz: u64) -> Vec<u32> {
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

fn elias_gaps(pos: &[u32]) -> Vec<u8> {
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
fn gap_classes(pos: &[u32]) -> (Vec<u8>, Vec<u8>) {
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
fn classes_estimate(pos: &[u32]) -> u64 {
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

fn gaps_bits(pos: &[u32]) -> u64 {
    let mut prev = -1i64;
    pos.iter()
        .map(|&p| {
            let g = (i64::from(p) - prev) as u64;
            prev = i64::from(p);
            u64::from(elias_delta_len(g))
        })
        .sum()
}

fn bitmap(n: usize, pos: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; n.div_ceil(8)];
    for &p in pos {
        b[p as usize / 8] |= 0x80 >> (p % 8);
    }
    b
}

/// Gathers the values at `pos` from dense byte planes of `n` elements.
fn gather_planes(width: usize, planes: &[u8], n: usize, pos: &[u32]) -> Vec<u8> {
    let m = pos.len();
    let mut out = vec![0u8; m * width];
    for (src, dst) in planes.chunks_exact(n).zip(out.chunks_exact_mut(m.max(1))) {
        for (d, &p) in dst.iter_mut().zip(pos) {
            *d = src[p as usize];
        }
    }
    out
}

/// Builds the payload of a planes/delta chunk: optional positions section,
/// then one section per byte plane. Planes that look random on the sample
/// are stored raw without trying zstd.
fn build_sections(
    width: usize,
    pos_sections: &[&[u8]],
    planes: &[u8],
    sample: &Sample,
    level: i32,
    groups: Option<&Groups>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(planes.len() / 2 + 64);
    for p in pos_sections {
        put_section(&mut out, p, Some(level))?;
    }
    let m = planes.len() / width;
    let sparse = !pos_sections.is_empty();
    for k in 0..width {
        let plane = &planes[k * m..(k + 1) * m];
        let random = sample.plane_entropy(k, sparse) > RAW_ENTROPY;
        put_plane(&mut out, plane, (!random).then_some(level), groups)?;
    }
    Ok(out)
}

/// Encodes one chunk of `cur`, against `reference` (same length) when given.
/// Returns its coding and payload; the payload is never longer than the raw
/// chunk.
pub fn encode_chunk(
    cur: &[u8],
    reference: Option<&[u8]>,
    p: ChunkParams,
) -> Result<(ChunkCoding, Vec<u8>)> {
    encode_chunk_with(cur, reference, p, None)
}

/// Bytes before the sections of a quantized chunk: float kind, bound, inner
/// codec, escape count.
const QUANTIZED_HEAD: usize = 14;

/// Encodes one chunk of floats in the lossy mode: each element within
/// `bound` of `cur`, against `reference` (the decoder's reconstruction of the
/// reference; zeros when `None`). Returns the coding, the payload and what
/// the decoder will rebuild.
pub fn encode_quantized_chunk(
    cur: &[u8],
    reference: Option<&[u8]>,
    kind: FloatKind,
    bound: f64,
    level: i32,
) -> Result<(ChunkCoding, Vec<u8>, Quantized)> {
    let w = kind.width();
    let q = lossy::quantize(kind, bound, cur, reference);
    let params = ChunkParams {
        width: w,
        family: Family::Integer,
        level,
        exponent: None,
    };
    let (inner, inner_payload) = encode_chunk(&q.bins, None, params)?;
    let mut payload = Vec::with_capacity(inner_payload.len() + 64);
    payload.push(kind as u8);
    payload.extend_from_slice(&bound.to_le_bytes());
    payload.push(inner.codec as u8);
    payload.extend_from_slice(&(q.escapes.len() as u32).to_le_bytes());
    put_section(&mut payload, &elias_gaps(&q.escapes), Some(level))?;
    let mut exact = Vec::with_capacity(q.escapes.len() * w);
    for &i in &q.escapes {
        exact.extend_from_slice(&cur[i as usize * w..(i as usize + 1) * w]);
    }
    put_section(&mut payload, &exact, Some(level))?;
    payload.extend_from_slice(&inner_payload);
    let coding = ChunkCoding {
        codec: Codec::Quantized,
        transform: Transform::None,
        positions: inner.positions,
        width: w as u8,
        nnz: inner.nnz,
    };
    Ok((coding, payload, q))
}

/// Reads `count` Elias-delta gaps (the first from position -1) into
/// positions, each below `n`; the stream must end after them.
fn read_gaps(bytes: &[u8], count: usize, n: usize, what: &str) -> Result<Vec<u32>> {
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

/// Decodes a quantized chunk (see [`encode_quantized_chunk`]).
fn decode_quantized(
    c: &ChunkCoding,
    payload: &[u8],
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let bad = |m: &str| Error::corrupt(format!("quantized chunk: {m}"));
    let head = payload
        .get(..QUANTIZED_HEAD)
        .ok_or_else(|| bad("header missing"))?;
    let w = usize::from(c.width);
    let kind = FloatKind::from_u8(head[0])
        .filter(|k| k.width() == w)
        .ok_or_else(|| bad("unknown float kind or wrong width"))?;
    let bound = f64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    if !(bound.is_finite() && bound > 0.0) {
        return Err(bad("the bound is not a positive number"));
    }
    let inner_codec = Codec::from_u8(head[9])?;
    if !matches!(inner_codec, Codec::Stored | Codec::Zstd | Codec::Planes) {
        return Err(bad("bins coded with a reference codec"));
    }
    let n = out.len() / w;
    let n_esc = u32::from_le_bytes(head[10..14].try_into().expect("4 bytes")) as usize;
    if n_esc > n {
        return Err(bad("more escapes than elements"));
    }
    if reference.is_some_and(|r| r.len() != out.len()) {
        return Err(bad("reference data of the wrong length"));
    }
    let mut sections = Sections {
        rest: &payload[QUANTIZED_HEAD..],
    };
    // An Elias-delta gap below 2^32 takes at most 64 bits.
    let len = sections.peek_len("escape positions")?;
    if len > n_esc.saturating_mul(8) + 8 {
        return Err(bad("escape positions longer than they can be"));
    }
    let bytes = sections.next(len, "escape positions")?;
    let escapes = read_gaps(&bytes, n_esc, n, "escape")?;
    let exact = sections.next(n_esc * w, "escape values")?;
    let inner = ChunkCoding {
        codec: inner_codec,
        transform: Transform::None,
        positions: c.positions,
        width: if inner_codec == Codec::Planes {
            c.width
        } else {
            1
        },
        nnz: c.nnz,
    };
    let mut bins = vec![0u8; out.len()];
    decode_chunk(&inner, sections.rest, None, &mut bins)?;
    lossy::dequantize(kind, bound, &bins, reference, out);
    for (k, &p) in escapes.iter().enumerate() {
        let p = p as usize;
        out[p * w..(p + 1) * w].copy_from_slice(&exact[k * w..(k + 1) * w]);
    }
    Ok(())
}

/// [`encode_chunk`], or with `force`, exactly that positions coding and no
/// fallback (for tests of every decoding path).
fn encode_chunk_with(
    cur: &[u8],
    reference: Option<&[u8]>,
    p: ChunkParams,
    force: Option<Positions>,
) -> Result<(ChunkCoding, Vec<u8>)> {
    let width = p.width;
    debug_assert!(cur.len().is_multiple_of(width) && !cur.is_empty());
    debug_assert!(reference.is_none_or(|r| r.len() == cur.len()));
    let n = cur.len() / width;

    // 1. Choose the transform on a sample, by the estimated entropy of its planes.
    let mut candidates = vec![Transform::None];
    if reference.is_some() {
        candidates.push(Transform::Xor);
        candidates.push(match p.family {
            Family::Float => Transform::Ulp,
            Family::Integer => Transform::IntDiff,
        });
    }
    let r = reference.unwrap_or(&[]);
    let sampled = Sampled::gather(width, cur, r);
    let cost = |s: &Sample| s.dense_bits().min(s.sparse_bits() + 2.0);
    let (transform, sample) = candidates
        .into_iter()
        .map(|t| {
            let s = Sample::take(t, width, &sampled);
            (cost(&s), t, s)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, t, s)| (t, s))
        .expect("at least one candidate");

    // 2. Transform the whole chunk straight into byte planes.
    let mut planes = vec![0u8; cur.len()];
    let nnz = transform::forward_planes(transform, width, cur, r, &mut planes);
    let codec = if transform == Transform::None {
        Codec::Planes
    } else {
        Codec::Delta
    };
    let coding = |positions| ChunkCoding {
        codec,
        transform,
        positions,
        width: width as u8,
        nnz,
    };

    // 3. Positions: none (dense), Elias-delta gaps, gap classes or a bitmap,
    // whichever the estimates favour; sparse and dense are both built when
    // their estimates are close.
    let dense_est = n as f64 * sample.dense_bits() / 8.0;
    let mut best: Option<(ChunkCoding, Vec<u8>)> = None;
    let mut try_dense = force.is_none_or(|f| f == Positions::Dense);
    // When nearly everything changed, positions pay off only if the
    // unchanged elements cluster; with independent positions nothing beats
    // the entropy of the changed/unchanged pattern, so when even that floor
    // loses to dense planes the sparse codings are skipped.
    let p_changed = nnz as f64 / n as f64;
    let pattern_bits = if nnz == 0 || nnz as usize == n {
        0.0
    } else {
        -(p_changed * p_changed.log2() + (1.0 - p_changed) * (1.0 - p_changed).log2())
    };
    let sparse_floor = (n as f64 * pattern_bits + nnz as f64 * sample.sparse_bits()) / 8.0;
    let worth_sparse = (nnz as usize) < n && (p_changed < 0.9 || sparse_floor < dense_est * 1.03);
    if force.is_some_and(|f| f != Positions::Dense) || (force.is_none() && worth_sparse) {
        let pos = changed_positions(&planes, n, nnz);
        // Bytes of each way to code the positions: Elias-delta gaps (exact),
        // a bitmap (before zstd), gap classes (estimated).
        let elias = gaps_bits(&pos).div_ceil(8);
        let bits = (n as u64).div_ceil(8);
        let classes = classes_estimate(&pos);
        let pos_est = elias.min(bits).min(classes);
        let sparse_est = pos_est as f64 + nnz as f64 * sample.sparse_bits() / 8.0;
        if force.is_some() || sparse_est < dense_est * 1.03 || nnz == 0 {
            let choice = force.unwrap_or(if pos_est == elias {
                Positions::Gaps
            } else if pos_est == bits {
                Positions::Bitmap
            } else {
                Positions::Classes
            });
            let (positions, pos_sections) = match choice {
                Positions::Gaps => (Positions::Gaps, vec![elias_gaps(&pos)]),
                Positions::Bitmap => (Positions::Bitmap, vec![bitmap(n, &pos)]),
                _ => {
                    let (c, low) = gap_classes(&pos);
                    (Positions::Classes, vec![c, low])
                }
            };
            let values = gather_planes(width, &planes, n, &pos);
            let views: Vec<&[u8]> = pos_sections.iter().map(|v| &v[..]).collect();
            let groups = groups_for(&p, transform, r, Some(&pos));
            let payload =
                build_sections(width, &views, &values, &sample, p.level, groups.as_ref())?;
            best = Some((coding(positions), payload));
            try_dense = force.is_none() && sparse_est > dense_est * 0.97 && nnz > 0;
        }
    }
    if try_dense {
        let groups = groups_for(&p, transform, r, None);
        let payload = build_sections(width, &[], &planes, &sample, p.level, groups.as_ref())?;
        if best.as_ref().is_none_or(|b| payload.len() < b.1.len()) {
            best = Some((coding(Positions::Dense), payload));
        }
    }
    let mut best = best.expect("a coding was built");
    if force.is_some() {
        return Ok(best);
    }

    // 4. Fallbacks: plain zstd when the planes barely helped, stored when nothing did.
    if best.1.len() * 10 > cur.len() * 9 {
        let z = zstd_compress(cur, p.level)?;
        if z.len() < best.1.len() {
            best = (plain(Codec::Zstd, cur.len() as u64), z);
        }
    }
    if best.1.len() >= cur.len() {
        best = (plain(Codec::Stored, cur.len() as u64), cur.to_vec());
    }
    Ok(best)
}

/// Groups by reference exponent, for a float delta with enough coded elements.
fn groups_for(
    p: &ChunkParams,
    t: Transform,
    reference: &[u8],
    pos: Option<&[u32]>,
) -> Option<Groups> {
    let coded = pos.map_or(reference.len() / p.width, <[u32]>::len);
    if t == Transform::None || coded < GROUP_MIN {
        return None;
    }
    Groups::choose(reference, p.width, pos, p.exponent?)
}

fn plain(codec: Codec, len: u64) -> ChunkCoding {
    ChunkCoding {
        codec,
        transform: Transform::None,
        positions: Positions::Dense,
        width: 1,
        nnz: len,
    }
}

/// Decodes one chunk into `out` (exactly the chunk's raw length).
/// `reference` must be given, of the same length, for [`Codec::Delta`].
pub fn decode_chunk(
    c: &ChunkCoding,
    payload: &[u8],
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let width = usize::from(c.width);
    if !matches!(width, 1 | 2 | 4 | 8) || !out.len().is_multiple_of(width) {
        return Err(Error::corrupt(format!(
            "bad element width {width} for a chunk of {} bytes",
            out.len()
        )));
    }
    let n = out.len() / width;
    match c.codec {
        Codec::Quantized => return decode_quantized(c, payload, reference, out),
        Codec::Stored | Codec::Zstd => {
            if c.transform != Transform::None || c.positions != Positions::Dense || width != 1 {
                return Err(Error::corrupt("plain chunk with a transform or positions"));
            }
            if c.codec == Codec::Stored {
                if payload.len() != out.len() {
                    return Err(Error::corrupt(
                        "stored chunk length differs from its raw length",
                    ));
                }
                out.copy_from_slice(payload);
                return Ok(());
            }
            return zstd_decompress_exact(payload, out, "zstd chunk");
        }
        Codec::Planes if c.transform != Transform::None => {
            return Err(Error::corrupt("planes chunk with a transform"));
        }
        Codec::Delta if c.transform == Transform::None => {
            return Err(Error::corrupt("delta chunk without a transform"));
        }
        _ => {}
    }
    let reference = match (c.codec, reference) {
        (Codec::Delta, Some(r)) if r.len() == out.len() => r,
        (Codec::Delta, _) => return Err(Error::corrupt("delta chunk without reference data")),
        _ => &[][..],
    };
    let nnz = usize::try_from(c.nnz)
        .ok()
        .filter(|&k| k <= n)
        .ok_or_else(|| Error::corrupt(format!("{} changed elements in a chunk of {n}", c.nnz)))?;

    let mut sections = Sections { rest: payload };
    let pos: Option<Vec<u32>> = match c.positions {
        Positions::Dense => None,
        Positions::Gaps => {
            let len = sections.peek_len("positions")?;
            // A gap takes at least one bit: bound the length before allocating.
            if len > payload.len().saturating_mul(64) || len > nnz.saturating_mul(10) + 8 {
                return Err(Error::corrupt(
                    "positions section longer than its chunk allows",
                ));
            }
            let bytes = sections.next(len, "positions")?;
            Some(read_gaps(&bytes, nnz, n, "changed position")?)
        }
        Positions::Classes => {
            let classes = sections.next(nnz, "gap classes")?;
            let len = sections.peek_len("gap bits")?;
            // At most 31 low bits per gap: bound the length before allocating.
            if len > nnz.saturating_mul(4) + 8 {
                return Err(Error::corrupt(
                    "gap bits section longer than its chunk allows",
                ));
            }
            let bytes = sections.next(len, "gap bits")?;
            let mut r = BitReader::new(&bytes);
            let mut pos = Vec::with_capacity(nnz);
            let mut prev = -1i64;
            for &l in classes.iter() {
                if !(1..=32).contains(&l) {
                    return Err(Error::corrupt("gap class out of range"));
                }
                let g = (1u64 << (l - 1)) | r.read(u32::from(l) - 1)?;
                let p = prev + g as i64;
                if p >= n as i64 {
                    return Err(Error::corrupt("changed position past the end of the chunk"));
                }
                pos.push(p as u32);
                prev = p;
            }
            r.expect_end()?;
            Some(pos)
        }
        Positions::Bitmap => {
            let bytes = sections.next(n.div_ceil(8), "bitmap")?;
            let mut pos = Vec::with_capacity(nnz);
            for (i, &b) in bytes.iter().enumerate() {
                let mut bits = b;
                while bits != 0 {
                    let lz = bits.leading_zeros() as usize;
                    pos.push((i * 8 + lz) as u32);
                    bits &= !(0x80 >> lz);
                }
            }
            if pos.len() != nnz || pos.last().is_some_and(|&p| p as usize >= n) {
                return Err(Error::corrupt("bitmap does not match the changed count"));
            }
            Some(pos)
        }
    };

    let m = if pos.is_some() { nnz } else { n };
    let ctx = (c.codec == Codec::Delta).then(|| GroupContext {
        reference,
        width,
        pos: pos.as_deref(),
        cache: RefCell::new(None),
    });
    let planes: Vec<Cow<'_, [u8]>> = (0..width)
        .map(|_| sections.next_in(m, "byte plane", ctx.as_ref()))
        .collect::<Result<_>>()?;
    if !sections.rest.is_empty() {
        return Err(Error::corrupt("chunk payload has trailing bytes"));
    }
    let views: Vec<&[u8]> = planes.iter().map(|p| &p[..]).collect();
    match &pos {
        None => {
            if transform::inverse_planes(c.transform, width, &views, reference, out) != c.nnz {
                return Err(Error::corrupt(
                    "changed count differs from the chunk's values",
                ));
            }
        }
        Some(pos) => transform::inverse_sparse(c.transform, width, pos, &views, reference, out),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn round_trip(
        cur: &[u8],
        reference: Option<&[u8]>,
        width: usize,
        family: Family,
    ) -> ChunkCoding {
        let (coding, payload) = encode_chunk(
            cur,
            reference,
            ChunkParams {
                width,
                family,
                level: 3,
                exponent: None,
            },
        )
        .unwrap();
        assert!(
            payload.len() <= cur.len(),
            "payload longer than the raw chunk"
        );
        let mut out = vec![0u8; cur.len()];
        decode_chunk(&coding, &payload, reference, &mut out).unwrap();
        assert!(out == cur, "{coding:?} does not round-trip");
        coding
    }

    /// Patterns of changes: long gaps, random gaps, runs, all changed, none.
    fn patterns() -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut next = rng(7);
        let n = 50_000;
        let reference: Vec<u8> = (0..n * 4).map(|_| next() as u8).collect();
        let mut out = Vec::new();
        for (period, run) in [
            (20_000u64, 1usize),
            (50, 1),
            (40, 16),
            (1, 1),
            (u64::MAX, 1),
        ] {
            let mut cur = reference.clone();
            let mut i = 0;
            while i < n {
                if next().is_multiple_of(period) {
                    for k in i..(i + run).min(n) {
                        cur[k * 4 + (next() % 4) as usize] ^= (next() as u8) | 1;
                    }
                    i += run;
                } else {
                    i += 1;
                }
            }
            out.push((reference.clone(), cur));
        }
        out
    }

    #[test]
    fn every_positions_coding_round_trips_on_every_pattern() {
        for (reference, cur) in patterns() {
            for force in [
                Positions::Dense,
                Positions::Gaps,
                Positions::Bitmap,
                Positions::Classes,
            ] {
                let params = ChunkParams {
                    width: 4,
                    family: Family::Float,
                    level: 3,
                    exponent: Some((23, 8)),
                };
                let (coding, payload) =
                    encode_chunk_with(&cur, Some(&reference), params, Some(force)).unwrap();
                assert_eq!(coding.positions, force);
                let mut out = vec![0u8; cur.len()];
                decode_chunk(&coding, &payload, Some(&reference), &mut out).unwrap();
                assert!(out == cur, "{coding:?} does not round-trip");
            }
        }
    }

    /// The encoder's own choice. Random changes cost least as entropy-coded
    /// dense planes (the zeros of a plane code the positions at their
    /// entropy); clustered ones as gap classes; no change at all as an empty
    /// Elias-delta stream.
    #[test]
    fn chosen_codings_round_trip() {
        let mut seen = Vec::new();
        for (reference, cur) in patterns() {
            seen.push(round_trip(&cur, Some(&reference), 4, Family::Float).positions);
        }
        assert_eq!(seen[4], Positions::Gaps, "{seen:?}");
        assert_eq!(seen[2], Positions::Classes, "{seen:?}");
        assert!(seen.contains(&Positions::Classes), "{seen:?}");
        assert!(seen.contains(&Positions::Dense), "{seen:?}");
    }

    #[test]
    fn identical_and_unrelated_chunks() {
        let mut next = rng(3);
        let a: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let b: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let same = round_trip(&a, Some(&a), 4, Family::Float);
        assert_eq!(same.nnz, 0);
        let other = round_trip(&b, Some(&a), 4, Family::Float);
        assert_eq!(
            other.codec,
            Codec::Stored,
            "random data is stored, not expanded"
        );
        round_trip(&b, None, 8, Family::Float);
    }

    /// Weight-like floats with changes of a similar absolute size: the ULP
    /// difference's top bytes depend on each weight's exponent, so grouping
    /// them by the reference's exponent pays, and round-trips.
    #[test]
    fn grouping_by_reference_exponent_pays_and_round_trips() {
        let mut next = rng(11);
        let mut gauss = move || {
            // Sum of uniforms: roughly normal, enough for the test.
            (0..6)
                .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64)
                .sum::<f64>()
                - 3.0
        };
        let n = 100_000;
        let w: Vec<f32> = (0..n).map(|_| (gauss() * 0.05) as f32).collect();
        let w2: Vec<f32> = w.iter().map(|&x| x + (gauss() * 1e-4) as f32).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (r, c) = (bytes(&w), bytes(&w2));
        let code = |exponent| {
            let p = ChunkParams {
                width: 4,
                family: Family::Float,
                level: 3,
                exponent,
            };
            let (coding, payload) = encode_chunk(&c, Some(&r), p).unwrap();
            let mut out = vec![0u8; c.len()];
            decode_chunk(&coding, &payload, Some(&r), &mut out).unwrap();
            assert!(out == c);
            payload
        };
        let plain = code(None);
        let grouped = code(Some((23, 8)));
        // The top-level section codings of a dense payload.
        let mut codings = Vec::new();
        let mut rest = &grouped[..];
        while !rest.is_empty() {
            codings.push(rest[0]);
            let stored = u32::from_le_bytes(rest[5..9].try_into().unwrap()) as usize;
            rest = &rest[SECTION_HEAD + stored..];
        }
        assert_eq!(codings.len(), 4, "{codings:?}");
        assert!(
            codings.contains(&SECTION_GROUPED),
            "no grouped section: {codings:?}"
        );
        assert!(
            (grouped.len() as f64) < plain.len() as f64 * 0.99,
            "grouped {} vs plain {}",
            grouped.len(),
            plain.len()
        );
        // Without the reference's context a grouped section is an error.
        let p = ChunkParams {
            width: 4,
            family: Family::Float,
            level: 3,
            exponent: Some((23, 8)),
        };
        let (coding, payload) = encode_chunk(&c, Some(&r), p).unwrap();
        let mut other = r.clone();
        other[0] ^= 0x80; // a different exponent for element 0 shifts the groups
        let mut out = vec![0u8; c.len()];
        let res = decode_chunk(&coding, &payload, Some(&other), &mut out);
        assert!(
            res.is_err() || out != c,
            "a different reference must not decode to the original"
        );
    }
}
