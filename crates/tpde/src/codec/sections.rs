//! Sections, the unit of a chunk's payload: a 9-byte head (coding, decoded
//! length, stored length) and a body stored raw, as one repeated byte, as a
//! zstd frame, as rANS, or grouped by the reference's exponents (see
//! `groups`). Writing one ([`put_section`]) chooses the coding; [`Sections`]
//! reads them back. Also this thread's zstd contexts.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::codec::ans;
use crate::codec::groups::{read_grouped, GroupContext};
use crate::common::error::{Error, Result};

pub(super) const SECTION_RAW: u8 = 0;
pub(super) const SECTION_ZSTD: u8 = 1;
pub(super) const SECTION_CONST: u8 = 2;
pub(super) const SECTION_RANS: u8 = 3;
pub(super) const SECTION_GROUPED: u8 = 4;
/// Sections shorter than this are not worth a rANS frequency table.
pub(super) const RANS_MIN: usize = 256;
/// Bytes of a long section that zstd is tried on to predict its full size.
pub(super) const PROBE: usize = 32 << 10;
/// Bytes of a section head.
pub(super) const SECTION_HEAD: usize = 9;

thread_local! {
    /// One zstd compression context per thread and level, reused across chunks.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` with this thread's zstd context at `level`.
pub(super) fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
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
pub(super) fn zstd_decompress_exact(src: &[u8], out: &mut [u8], what: &str) -> Result<()> {
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

/// How a section's body may be coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coder {
    /// Raw (or constant): the data looks random.
    Raw,
    /// rANS or zstd at this level, whichever is smaller. zstd runs on the
    /// whole section only where a probe of it says zstd may win.
    Auto(i32),
    /// rANS (or raw, or constant): the plane the section belongs to was
    /// probed already and rANS won.
    Rans,
}

impl Coder {
    /// `Auto(level)` with a level, `Raw` without.
    pub(super) fn from_level(level: Option<i32>) -> Coder {
        level.map_or(Coder::Raw, Coder::Auto)
    }
}

/// Sections shorter than this are coded by zstd in full when zstd is tried;
/// longer ones are probed first.
pub(super) const PROBE_MIN: usize = 64 << 10;

/// Whether rANS (estimated at `rans_est` bytes) beats zstd on `data`, by a
/// zstd probe of its first bytes scaled to the whole: `None` where `data` is
/// too short for a probe to say.
pub(super) fn probe_says_rans(data: &[u8], rans_est: usize, level: i32) -> Result<Option<bool>> {
    if data.len() < PROBE_MIN {
        return Ok(None);
    }
    let probe = PROBE.min(data.len() / 4);
    let z = zstd_compress(&data[..probe], level)?;
    let predicted = z.len() as f64 * data.len() as f64 / probe as f64;
    Ok(Some((rans_est as f64) < 0.97 * predicted))
}

/// Appends a section holding `data`: constant, zstd (when `level` is given
/// and it is smaller) or raw.
pub(super) fn put_section(out: &mut Vec<u8>, data: &[u8], level: Option<i32>) -> Result<()> {
    put_coded(out, data, Coder::from_level(level), None)
}

/// Appends a section holding `data`, coded as `coder` allows; `hist`, when
/// given, is `data`'s histogram (computed here otherwise).
pub(super) fn put_coded(
    out: &mut Vec<u8>,
    data: &[u8],
    coder: Coder,
    hist: Option<&[u64; 256]>,
) -> Result<()> {
    put_coded_est(out, data, coder, hist.map(|h| (h, None)))
}

/// [`put_coded`], with `hist`'s rANS estimate ([`ans::estimate`]) when the
/// caller has it.
pub(super) fn put_coded_est(
    out: &mut Vec<u8>,
    data: &[u8],
    coder: Coder,
    hist: Option<(&[u64; 256], Option<usize>)>,
) -> Result<()> {
    let known_est = hist.and_then(|h| h.1);
    let hist = hist.map(|h| h.0);
    let raw_len = u32::try_from(data.len())
        .map_err(|_| Error::InvalidArgument("section over 4 GiB".into()))?;
    fn put_head(out: &mut Vec<u8>, coding: u8, raw_len: u32, stored: usize) {
        out.push(coding);
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(&(stored as u32).to_le_bytes());
    }
    let head =
        |out: &mut Vec<u8>, coding: u8, stored: usize| put_head(out, coding, raw_len, stored);
    if let Some(&first) = data.first() {
        let constant = match hist {
            Some(h) => h[usize::from(first)] == data.len() as u64,
            None => data.iter().all(|&b| b == first),
        };
        if constant {
            head(out, SECTION_CONST, 1);
            out.push(first);
            return Ok(());
        }
    }
    if coder != Coder::Raw && data.len() > 32 {
        // rANS codes a plane at its order-0 entropy; zstd wins only where the
        // plane repeats itself. A long plane is probed with zstd on its first
        // bytes, and coded in full only by the one the probe favours.
        let own;
        let hist = match hist {
            Some(h) if data.len() >= RANS_MIN => Some(h),
            None if data.len() >= RANS_MIN => {
                own = ans::histogram(data);
                Some(&own)
            }
            _ => None,
        };
        let rans_est = hist.map(|h| known_est.unwrap_or_else(|| ans::estimate(h)));
        let (level, rans_first) = match (coder, rans_est) {
            (Coder::Auto(level), Some(est)) => (
                Some(level),
                probe_says_rans(data, est, level)?.unwrap_or(false),
            ),
            (Coder::Auto(level), None) => (Some(level), false),
            _ => (None, true),
        };
        let z = match level {
            Some(level) if !rans_first => Some(zstd_compress(data, level)?),
            _ => None,
        };
        let zlen = z.as_ref().map_or(usize::MAX, Vec::len);
        let rans_pays = rans_est.is_some_and(|e| rans_first || (e as f64) < zlen as f64 * 0.97);
        if let Some(hist) = hist.filter(|_| rans_pays) {
            // Coded in place after its head; taken back if it did not pay.
            let at = out.len();
            head(out, SECTION_RANS, 0);
            let a = ans::encode_into(data, hist, out);
            if a < zlen && a < data.len() {
                out[at + 5..at + SECTION_HEAD].copy_from_slice(&(a as u32).to_le_bytes());
                return Ok(());
            }
            out.truncate(at);
        }
        let z = match (z, level) {
            (Some(z), _) => Some(z),
            (None, Some(level)) => Some(zstd_compress(data, level)?),
            (None, None) => None,
        };
        if let Some(z) = z.filter(|z| z.len() < data.len()) {
            head(out, SECTION_ZSTD, z.len());
            out.extend_from_slice(&z);
            return Ok(());
        }
    }
    head(out, SECTION_RAW, data.len());
    out.extend_from_slice(data);
    Ok(())
}

/// Reads sections off a payload.
pub(super) struct Sections<'a> {
    pub(super) rest: &'a [u8],
}

/// Decodes a section's body (coding `coding`, `stored_len` bytes) into
/// `out`, exactly its length: every coding but a grouped one, which needs
/// the reference ([`Sections::next_in`] reads those).
fn decode_body(
    coding: u8,
    stored_len: usize,
    body: &[u8],
    out: &mut [u8],
    what: &str,
) -> Result<()> {
    let len = out.len();
    match coding {
        SECTION_RAW if stored_len == len => out.copy_from_slice(body),
        _ if len == 0 => {
            return Err(Error::corrupt(format!(
                "{what} section: an empty section must be raw"
            )))
        }
        SECTION_CONST if stored_len == 1 => out.fill(body[0]),
        SECTION_ZSTD => zstd_decompress_exact(body, out, what)?,
        SECTION_RANS => {
            ans::decode(body, out).map_err(|e| Error::corrupt(format!("{what} section: {e}")))?
        }
        SECTION_GROUPED => {
            return Err(Error::corrupt(format!(
                "{what} section: grouped where no reference is"
            )))
        }
        _ => {
            return Err(Error::corrupt(format!(
                "{what} section: bad coding {coding} or length"
            )))
        }
    }
    Ok(())
}

impl<'a> Sections<'a> {
    /// The next section, of `len` decoded bytes: borrowed when stored raw,
    /// decoded into a new buffer otherwise.
    pub(super) fn next(&mut self, len: usize, what: &str) -> Result<Cow<'a, [u8]>> {
        self.next_in(len, what, None)
    }

    /// [`Sections::next`], where a grouped section may appear (byte planes of
    /// a delta chunk).
    pub(super) fn next_in(
        &mut self,
        len: usize,
        what: &str,
        ctx: Option<&GroupContext<'_>>,
    ) -> Result<Cow<'a, [u8]>> {
        let (coding, stored_len, body) = self.head(len, what)?;
        let data = match (coding, ctx) {
            (SECTION_RAW, _) if stored_len == len => Cow::Borrowed(body),
            (SECTION_GROUPED, Some(ctx)) if len > 0 => {
                Cow::Owned(read_grouped(body, len, ctx, what)?)
            }
            _ => {
                let mut out = vec![0u8; len];
                decode_body(coding, stored_len, body, &mut out, what)?;
                Cow::Owned(out)
            }
        };
        self.rest = &self.rest[SECTION_HEAD + stored_len..];
        Ok(data)
    }

    /// The next section's coding, stored length and body, checked to hold
    /// `len` bytes and to lie within the payload.
    fn head(&self, len: usize, what: &str) -> Result<(u8, usize, &'a [u8])> {
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
        Ok((coding, stored_len, body))
    }

    /// [`Sections::next`] decoded into `out` (exactly the section's length),
    /// without a buffer of its own; never a grouped section.
    pub(super) fn next_into(&mut self, out: &mut [u8], what: &str) -> Result<()> {
        let (coding, stored_len, body) = self.head(out.len(), what)?;
        decode_body(coding, stored_len, body, out, what)?;
        self.rest = &self.rest[SECTION_HEAD + stored_len..];
        Ok(())
    }

    /// The decoded length of the next section, read from its head.
    pub(super) fn peek_len(&self, what: &str) -> Result<usize> {
        let head = self
            .rest
            .get(1..5)
            .ok_or_else(|| Error::corrupt(format!("{what} section head missing")))?;
        Ok(u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize)
    }
}
