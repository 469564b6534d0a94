//! Decoding a `.tpde` container back into the original file.

use std::io::Write;

use rayon::prelude::*;

use crate::codec::{decode_chunk, Codec};
use crate::error::{Error, Result};
use crate::format::{self, Container, RefMode, SourceKind, TensorView};
use crate::mmap;
use crate::safetensors::{self, Header};

/// Totals of one decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub original_len: u64,
    pub encoded_len: u64,
    /// XXH3-128 of the bytes written (checked against the container's).
    pub output_digest: u128,
}

/// The reference, checked against what the container expects.
struct Reference<'r> {
    bytes: &'r [u8],
    /// Parsed when some tensor refers to the reference by name.
    header: Option<Header>,
}

/// Checks `reference` against the container: required when the container is a
/// delta; its length and (when `full` is set) its digest must match.
fn check_reference<'r>(
    c: &Container<'_>,
    reference: Option<&'r [u8]>,
    full: bool,
) -> Result<Option<Reference<'r>>> {
    let Some(id) = c.index.reference else {
        return Ok(None);
    };
    let bytes = reference.ok_or(Error::MissingReference)?;
    let actual_len = bytes.len() as u64;
    let actual = if full || actual_len != id.len {
        Some(mmap::digest_released(bytes))
    } else {
        None
    };
    if actual_len != id.len || actual.is_some_and(|d| d != id.digest) {
        return Err(Error::WrongReference {
            expected: format::digest_hex(id.digest),
            actual: format::digest_hex(actual.unwrap_or_default()),
            expected_len: id.len,
            actual_len,
        });
    }
    let needs_header = c
        .tensors
        .iter()
        .any(|t| t.entry.ref_mode == RefMode::SameName);
    let header = if needs_header {
        Some(safetensors::parse(bytes).map_err(|e| {
            Error::ReferenceMismatch(format!(
                "the reference is not a valid safetensors file: {e}"
            ))
        })?)
    } else {
        None
    };
    Ok(Some(Reference { bytes, header }))
}

/// The reference bytes of tensor `t` (the whole tensor for by-name
/// references; for byte-range references, the file from the tensor's start).
fn tensor_reference<'r>(
    c: &Container<'_>,
    t: &TensorView,
    r: Option<&Reference<'r>>,
) -> Result<Option<&'r [u8]>> {
    let Some(r) = r else { return Ok(None) };
    match t.entry.ref_mode {
        RefMode::None => Ok(None),
        RefMode::SameName => {
            let h = r
                .header
                .as_ref()
                .expect("parsed when a tensor refers by name");
            let rt = h
                .get(&t.info.name)
                .filter(|rt| rt.len() == t.info.len())
                .ok_or_else(|| {
                    Error::ReferenceMismatch(format!(
                        "the reference has no tensor {:?} of {} bytes",
                        t.info.name,
                        t.info.len()
                    ))
                })?;
            let start = (h.header_len + rt.begin) as usize;
            Ok(Some(&r.bytes[start..start + rt.len() as usize]))
        }
        RefMode::SameRange => {
            let start = c.index.header_block.len() as u64 + t.info.begin;
            Ok(Some(r.bytes.get(start as usize..).unwrap_or(&[])))
        }
        RefMode::Offset => {
            let range = usize::try_from(t.ref_offset)
                .ok()
                .zip(usize::try_from(t.entry.data_len).ok())
                .and_then(|(s, n)| r.bytes.get(s..s.checked_add(n)?))
                .ok_or_else(|| {
                    Error::ReferenceMismatch(format!(
                        "the reference has no {} bytes at offset {} for tensor {:?}",
                        t.entry.data_len, t.ref_offset, t.info.name
                    ))
                })?;
            Ok(Some(range))
        }
    }
}

struct Job<'a, 'r> {
    tensor: usize,
    chunk: usize,
    payload: &'a [u8],
    reference: Option<&'r [u8]>,
}

/// Decoded bytes of the chunks of `jobs`, one after another.
fn jobs_len(c: &Container<'_>, jobs: &[Job<'_, '_>]) -> usize {
    jobs.iter()
        .map(|j| c.tensors[j.tensor].entry.chunks[j.chunk].raw_len as usize)
        .sum()
}

/// Decodes the chunks of `jobs` in parallel into `out` (their bytes one
/// after another, `jobs_len` in all), checking each checksum.
fn decode_jobs(c: &Container<'_>, jobs: &[Job<'_, '_>], out: &mut [u8]) -> Result<()> {
    let mut slices = Vec::with_capacity(jobs.len());
    let mut rest = out;
    for j in jobs {
        let len = c.tensors[j.tensor].entry.chunks[j.chunk].raw_len as usize;
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        slices.push(head);
        rest = tail;
    }
    jobs.par_iter().zip(slices).try_for_each(|(j, out)| {
        let t = &c.tensors[j.tensor];
        let e = &t.entry.chunks[j.chunk];
        decode_chunk(&e.coding, j.payload, j.reference, out).map_err(|err| match err {
            Error::Corrupt(m) => {
                Error::Corrupt(format!("tensor {:?}, chunk {}: {m}", t.info.name, j.chunk))
            }
            other => other,
        })?;
        if xxhash_rust::xxh3::xxh3_64(out) != e.checksum {
            return Err(Error::ChecksumMismatch {
                tensor: t.info.name.clone(),
                chunk: j.chunk,
            });
        }
        Ok(())
    })
}

/// Lists the decode jobs of tensor `ti`.
fn tensor_jobs<'a, 'r>(
    c: &Container<'a>,
    ti: usize,
    r: Option<&Reference<'r>>,
    jobs: &mut Vec<Job<'a, 'r>>,
) -> Result<()> {
    let t = &c.tensors[ti];
    let tref = tensor_reference(c, t, r)?;
    let mut start = 0usize;
    for (k, e) in t.entry.chunks.iter().enumerate() {
        let len = e.raw_len as usize;
        let slice = |r: &'r [u8]| {
            r.get(start..start + len).ok_or_else(|| {
                Error::ReferenceMismatch(format!(
                    "the reference is too short for tensor {:?}",
                    t.info.name
                ))
            })
        };
        let reference = match e.coding.codec {
            Codec::Delta => Some(slice(tref.ok_or(Error::MissingReference)?)?),
            // Quantized against the reference data when the tensor has some.
            Codec::Quantized => tref.map(slice).transpose()?,
            _ => None,
        };
        jobs.push(Job {
            tensor: ti,
            chunk: k,
            payload: c.payload(e),
            reference,
        });
        start += len;
    }
    Ok(())
}

/// Decodes a whole container (the bytes of a `.tpde` file) and writes the
/// original file to `out`. A delta needs the exact reference it was encoded
/// against. Every chunk checksum, the length and the whole-file digest are
/// checked; on error, what was written to `out` must be discarded.
pub fn decode(
    container: &[u8],
    reference: Option<&[u8]>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<DecodeStats> {
    let c = Container::open(container)?;
    let r = check_reference(&c, reference, true)?;
    let mut w = HashingWriter {
        inner: out,
        hasher: xxhash_rust::xxh3::Xxh3::new(),
        written: 0,
    };
    // The output in order: header-block bytes around the tensors' chunks.
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    for (ti, t) in c.tensors.iter().enumerate() {
        items.push(Item::Block(t.gap.clone()));
        let first = jobs.len();
        tensor_jobs(&c, ti, r.as_ref(), &mut jobs)?;
        items.extend((first..jobs.len()).map(Item::Job));
    }
    items.push(Item::Block(c.tail.clone()));
    // One buffer, reused by every batch of jobs.
    let mut buf: Vec<u8> = Vec::new();
    // Bytes of output decoded per parallel batch: bounds the memory held at
    // once, as when encoding (with chunks of the default size).
    let batch_bytes = crate::encode::batch_bytes(crate::EncodeOptions::default().chunk_size);
    let mut at = 0;
    while at < items.len() {
        // A batch: the items up to `batch_bytes` of decoded chunks.
        let mut end = at;
        let mut bytes = 0usize;
        let mut first_job = None;
        let mut jobs_end = 0;
        while end < items.len() {
            if let Item::Job(k) = items[end] {
                let len = c.tensors[jobs[k].tensor].entry.chunks[jobs[k].chunk].raw_len as usize;
                if bytes > 0 && bytes + len > batch_bytes {
                    break;
                }
                bytes += len;
                first_job.get_or_insert(k);
                jobs_end = k + 1;
            }
            end += 1;
        }
        buf.resize(bytes, 0);
        if let Some(first) = first_job {
            decode_jobs(&c, &jobs[first..jobs_end], &mut buf)?;
        }
        let mut pos = 0;
        for item in &items[at..end] {
            match item {
                Item::Block(range) => w.emit(&c.index.header_block[range.clone()])?,
                Item::Job(k) => {
                    let len =
                        c.tensors[jobs[*k].tensor].entry.chunks[jobs[*k].chunk].raw_len as usize;
                    w.emit(&buf[pos..pos + len])?;
                    pos += len;
                    // Done with this window of the container and reference.
                    mmap::release(jobs[*k].payload);
                    if let Some(r) = jobs[*k].reference {
                        mmap::release(r);
                    }
                }
            }
        }
        if let Some(p) = progress {
            p(w.written);
        }
        at = end;
    }
    if w.written != c.index.original_len || w.hasher.digest128() != c.index.original_digest {
        return Err(Error::corrupt(
            "decoded file differs from the original (length or digest)",
        ));
    }
    w.inner.flush()?;
    Ok(DecodeStats {
        original_len: w.written,
        encoded_len: c.len(),
        output_digest: c.index.original_digest,
    })
}

/// Decodes one tensor of a safetensors container, without the rest. The
/// reference's length is checked, and each chunk's checksum; the whole-file
/// digests are not (that would read every byte).
pub fn decode_tensor(container: &[u8], reference: Option<&[u8]>, name: &str) -> Result<Vec<u8>> {
    let c = Container::open(container)?;
    if c.index.source_kind == SourceKind::Opaque {
        return Err(Error::InvalidArgument(
            "this container holds an opaque file, not tensors".into(),
        ));
    }
    let ti = c
        .tensors
        .iter()
        .position(|t| t.info.name == name)
        .ok_or_else(|| Error::InvalidArgument(format!("no tensor named {name:?}")))?;
    let r = check_reference(&c, reference, false)?;
    let mut jobs = Vec::new();
    tensor_jobs(&c, ti, r.as_ref(), &mut jobs)?;
    let mut out = vec![0u8; jobs_len(&c, &jobs)];
    decode_jobs(&c, &jobs, &mut out)?;
    Ok(out)
}

/// A piece of the output: header-block bytes, or a chunk (by job number).
enum Item {
    Block(std::ops::Range<usize>),
    Job(usize),
}

struct HashingWriter<'w> {
    inner: &'w mut dyn Write,
    hasher: xxhash_rust::xxh3::Xxh3,
    written: u64,
}

impl HashingWriter<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)?;
        Ok(())
    }
}
