//! Decoding a `.tpde` container back into the original file.

use std::io::Write;

use rayon::prelude::*;

use crate::codec::chunk::{decode_chunk, Codec};
use crate::common::error::{Error, Result};
use crate::common::mmap;
use crate::common::overlap::overlapped;
use crate::container::format::{self, Container, RefMode, SourceKind, TensorView};
use crate::source::safetensors::{self, Header};

/// Limits of a decode.
///
/// A `.tpde` file may decode to far more than its own size: chunk entries
/// (48 bytes each) may share one payload, and a constant section of 10
/// bytes stands for a whole chunk of up to 64 MiB, so no ratio of payload
/// bytes to output bytes bounds what a valid file produces (911 bytes can
/// decode to 1 GiB, 786 KB to 1 TiB). What a file claims is exact, though:
/// [`Container::open`] checks that the chunks add up to every tensor and the
/// tensors to the file. A caller that decodes files it does not trust sets
/// `max_output`, which is checked against that claim before anything is
/// decoded, allocated or written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The most bytes the decode may produce: the whole file for
    /// [`decode_with`] and [`crate::container::files::decode_file_with`], the tensor
    /// for [`decode_tensor_with`], [`decode_tensor_to`] and
    /// [`crate::container::files::decode_tensor_file_with`]. A file that decodes to
    /// more is refused with [`Error::InvalidArgument`] ("... decodes to N
    /// bytes, more than the limit of M bytes"). `None` (the default): no
    /// limit but the caller's memory, or for the functions of
    /// [`crate::container::files`], the free space of the output's filesystem.
    pub max_output: Option<u64>,
}

impl DecodeOptions {
    /// Refuses `size` bytes of output for `what` ("the file", a tensor)
    /// when it is over the limit.
    pub(crate) fn check(&self, what: &str, size: u64) -> Result<()> {
        match self.max_output {
            Some(max) if size > max => Err(Error::InvalidArgument(format!(
                "{what} decodes to {size} bytes, more than the limit of {max} bytes (--max-output)"
            ))),
            _ => Ok(()),
        }
    }
}

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

/// When a decode of the whole file checks the reference's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefCheck {
    /// Before anything is decoded or written (a stream cannot take back
    /// what it was given).
    First,
    /// Only when the decode fails, to name the cause: the output is checked
    /// whole by the file's digest anyway, and goes where nothing of a
    /// failed decode is kept (memory, a temporary file). A read of the
    /// whole reference less when all is well.
    OnFailure,
}

/// Runs `decode` with the reference checked as `check` says: its length
/// first always, its digest first or, with [`RefCheck::OnFailure`], when
/// `decode` failed on the data (a wrong reference is then reported as
/// [`Error::WrongReference`], not as the bad chunk it made).
fn with_reference<'r, T>(
    c: &Container<'_>,
    reference: Option<&'r [u8]>,
    check: RefCheck,
    decode: impl FnOnce(Option<Reference<'r>>) -> Result<T>,
) -> Result<T> {
    let r = check_reference(c, reference, check == RefCheck::First)?;
    match decode(r) {
        Err(e) if check == RefCheck::OnFailure && !matches!(e, Error::Io { .. }) => {
            check_reference(c, reference, true)?;
            Err(e)
        }
        other => other,
    }
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
            let start = (c.index.header_block.len() as u64)
                .checked_add(t.info.begin)
                .and_then(|s| usize::try_from(s).ok());
            Ok(Some(start.and_then(|s| r.bytes.get(s..)).unwrap_or(&[])))
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
    jobs.iter().map(|j| job_len(c, j)).sum()
}

/// Decoded bytes of one job's chunk (at most [`format::MAX_CHUNK`]).
fn job_len(c: &Container<'_>, j: &Job<'_, '_>) -> usize {
    c.tensors[j.tensor].entry.chunks[j.chunk].raw_len as usize
}

/// Bytes of output decoded per parallel batch: the encoder's window (with
/// chunks of the default size); two batches are held at once, one written
/// while the next decodes.
fn batch_bytes() -> usize {
    crate::container::encode::batch_bytes(
        crate::container::encode::EncodeOptions::default().chunk_size,
    )
}

/// `jobs` in batches of at most [`batch_bytes`] decoded bytes (or one chunk).
fn batches<'j, 'a, 'r>(c: &Container<'_>, jobs: &'j [Job<'a, 'r>]) -> Vec<&'j [Job<'a, 'r>]> {
    let limit = batch_bytes();
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (k, j) in jobs.iter().enumerate() {
        let len = job_len(c, j);
        if bytes > 0 && bytes + len > limit {
            out.push(&jobs[start..k]);
            (start, bytes) = (k, 0);
        }
        bytes += len;
    }
    if start < jobs.len() {
        out.push(&jobs[start..]);
    }
    out
}

/// Lets go of the windows of the container and reference that `jobs` read.
fn release(jobs: &[Job<'_, '_>]) {
    for j in jobs {
        mmap::release(j.payload);
        if let Some(r) = j.reference {
            mmap::release(r);
        }
    }
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
    jobs.par_iter()
        .zip(slices)
        .try_for_each(|(j, out)| decode_job(c, j, out))
}

/// Decodes the chunk of `j` into `out` (its decoded length), checking its
/// checksum.
fn decode_job(c: &Container<'_>, j: &Job<'_, '_>, out: &mut [u8]) -> Result<()> {
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
}

/// Lists the decode jobs of tensor `ti`.
fn tensor_jobs<'a, 'r>(
    c: &Container<'a>,
    ti: usize,
    r: Option<&Reference<'r>>,
    jobs: &mut Vec<Job<'a, 'r>>,
) -> Result<()> {
    let tref = tensor_reference(c, &c.tensors[ti], r)?;
    jobs_against(c, ti, tref, jobs)
}

/// Lists the decode jobs of tensor `ti` against `tref`, the reference bytes
/// of that tensor.
fn jobs_against<'a, 'r>(
    c: &Container<'a>,
    ti: usize,
    tref: Option<&'r [u8]>,
    jobs: &mut Vec<Job<'a, 'r>>,
) -> Result<()> {
    let t = &c.tensors[ti];
    let mut start = 0usize;
    for (k, e) in t.entry.chunks.iter().enumerate() {
        let len = e.raw_len as usize;
        let slice = |r: &'r [u8]| {
            start
                .checked_add(len)
                .and_then(|end| r.get(start..end))
                .ok_or_else(|| {
                    Error::ReferenceMismatch(format!(
                        "the reference is too short for tensor {:?}",
                        t.info.name
                    ))
                })
        };
        let reference = match e.coding.codec {
            Codec::Delta | Codec::Symbols | Codec::Symbols32 => {
                Some(slice(tref.ok_or(Error::MissingReference)?)?)
            }
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
        // The chunks add up to the tensor's length (checked by Container::open).
        start = start.saturating_add(len);
    }
    Ok(())
}

/// Decodes a whole container (the bytes of a `.tpde` file) and writes the
/// original file to `out`. A delta needs the exact reference it was encoded
/// against. Every chunk checksum, the length and the whole-file digest are
/// checked; on error, what was written to `out` must be discarded.
///
/// No limit is set on the output's size: a file of a few hundred bytes may
/// decode to gigabytes. Use [`decode_with`] for files from elsewhere.
pub fn decode(
    container: &[u8],
    reference: Option<&[u8]>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<DecodeStats> {
    decode_with(
        container,
        reference,
        out,
        progress,
        &DecodeOptions::default(),
    )
}

/// [`decode`] within the limits of `opts`: a file that decodes to more than
/// `opts.max_output` bytes is refused before anything is decoded or written.
pub fn decode_with(
    container: &[u8],
    reference: Option<&[u8]>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    opts: &DecodeOptions,
) -> Result<DecodeStats> {
    let c = Container::open(container)?;
    opts.check("the file", c.index.original_len)?;
    decode_opened(&c, reference, out, progress, RefCheck::First)
}

/// [`decode`] of an opened container.
pub(crate) fn decode_opened(
    c: &Container<'_>,
    reference: Option<&[u8]>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    check: RefCheck,
) -> Result<DecodeStats> {
    with_reference(c, reference, check, |r| {
        decode_in_batches(c, r, out, progress, batch_bytes())
    })
}

/// [`decode_opened`] in batches of `batch_bytes` of decoded chunks (or one
/// chunk).
fn decode_in_batches(
    c: &Container<'_>,
    r: Option<Reference<'_>>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    batch_bytes: usize,
) -> Result<DecodeStats> {
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
        tensor_jobs(c, ti, r.as_ref(), &mut jobs)?;
        items.extend((first..jobs.len()).map(Item::Job));
    }
    items.push(Item::Block(c.tail.clone()));
    // The batches: the items up to `batch_bytes` of decoded chunks each,
    // with their jobs and decoded bytes.
    let mut plan: Vec<Batch> = Vec::new();
    let mut at = 0;
    while at < items.len() {
        let mut end = at;
        let mut bytes = 0usize;
        let mut first_job = None;
        let mut jobs_end = 0;
        while end < items.len() {
            if let Item::Job(k) = items[end] {
                let len = job_len(c, &jobs[k]);
                if bytes > 0 && bytes + len > batch_bytes {
                    break;
                }
                bytes += len;
                first_job.get_or_insert(k);
                jobs_end = k + 1;
            }
            end += 1;
        }
        plan.push(Batch {
            items: at..end,
            jobs: first_job.map_or(0..0, |f| f..jobs_end),
            bytes,
        });
        at = end;
    }
    // The thread pool decodes batch k + 1 while the calling thread writes
    // (and hashes) batch k, so that the decoding threads do not wait on
    // the writes.
    let decode_into = |k: usize, buf: &mut Vec<u8>| -> Result<()> {
        buf.resize(plan[k].bytes, 0);
        decode_jobs(c, &jobs[plan[k].jobs.clone()], buf)
    };
    overlapped(plan.len(), decode_into, |k, (), buf| {
        let mut pos = 0;
        for item in &items[plan[k].items.clone()] {
            match item {
                Item::Block(range) => w.emit(&c.index.header_block[range.clone()])?,
                Item::Job(j) => {
                    let len = job_len(c, &jobs[*j]);
                    w.emit(&buf[pos..pos + len])?;
                    pos += len;
                    // Done with this window of the container and reference.
                    release(std::slice::from_ref(&jobs[*j]));
                }
            }
        }
        if let Some(p) = progress {
            p(w.written);
        }
        Ok(())
    })?;
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

/// [`decode`] into memory, of a container that decodes to exactly `len`
/// bytes (refused otherwise, before anything is allocated): every chunk is
/// decoded in parallel straight into its place in the output (no batch
/// buffer copied out), then the whole output is checked against the
/// container's digest. The reference's digest is checked only when that
/// fails ([`RefCheck::OnFailure`]).
pub(crate) fn decode_to_vec(
    container: &[u8],
    reference: Option<&[u8]>,
    len: u64,
) -> Result<(Vec<u8>, DecodeStats)> {
    let c = Container::open(container)?;
    if c.index.original_len != len {
        return Err(Error::corrupt(format!(
            "decodes to {} bytes, not the {len} expected",
            c.index.original_len
        )));
    }
    with_reference(&c, reference, RefCheck::OnFailure, |r| {
        decode_all_to_vec(&c, r, len)
    })
}

/// [`decode_to_vec`] once the reference's length is checked.
fn decode_all_to_vec(
    c: &Container<'_>,
    r: Option<Reference<'_>>,
    len: u64,
) -> Result<(Vec<u8>, DecodeStats)> {
    let mut jobs = Vec::new();
    let mut pieces = Vec::new();
    for (ti, t) in c.tensors.iter().enumerate() {
        pieces.push(Item::Block(t.gap.clone()));
        let first = jobs.len();
        tensor_jobs(c, ti, r.as_ref(), &mut jobs)?;
        pieces.extend((first..jobs.len()).map(Item::Job));
    }
    pieces.push(Item::Block(c.tail.clone()));
    let piece_len = |item: &Item| match item {
        Item::Block(range) => range.len(),
        Item::Job(j) => job_len(c, &jobs[*j]),
    };
    let total: u64 = pieces.iter().map(|i| piece_len(i) as u64).sum();
    if total != len {
        return Err(Error::corrupt(
            "decoded file differs from the original (length or digest)",
        ));
    }
    let mut out = vec![0u8; len as usize];
    let mut slices = Vec::with_capacity(jobs.len());
    let mut rest = &mut out[..];
    for item in &pieces {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(piece_len(item));
        match item {
            Item::Block(range) => head.copy_from_slice(&c.index.header_block[range.clone()]),
            Item::Job(_) => slices.push(head),
        }
        rest = tail;
    }
    jobs.par_iter()
        .zip(slices)
        .try_for_each(|(j, out)| decode_job(c, j, out))?;
    release(&jobs);
    if xxhash_rust::xxh3::xxh3_128(&out) != c.index.original_digest {
        return Err(Error::corrupt(
            "decoded file differs from the original (length or digest)",
        ));
    }
    let stats = DecodeStats {
        original_len: len,
        encoded_len: c.len(),
        output_digest: c.index.original_digest,
    };
    Ok((out, stats))
}

/// Decodes one tensor of a safetensors container, without the rest. The
/// reference's length is checked, and each chunk's checksum; the whole-file
/// digests are not (that would read every byte).
///
/// No limit is set on the tensor's size but memory: when what the file
/// claims cannot be allocated, the answer is an error (an I/O error of kind
/// `OutOfMemory`), not an abort; the output's pages are touched only as
/// chunks fill them, so a file that claims more than it holds fails at its
/// first bad chunk. Use [`decode_tensor_with`] for files from elsewhere.
pub fn decode_tensor(container: &[u8], reference: Option<&[u8]>, name: &str) -> Result<Vec<u8>> {
    decode_tensor_with(container, reference, name, &DecodeOptions::default())
}

/// [`decode_tensor`] within the limits of `opts`: a tensor of more than
/// `opts.max_output` bytes is refused before anything is allocated.
pub fn decode_tensor_with(
    container: &[u8],
    reference: Option<&[u8]>,
    name: &str,
    opts: &DecodeOptions,
) -> Result<Vec<u8>> {
    let (c, ti) = open_tensor(container, name, opts)?;
    let len = c.tensors[ti].entry.data_len;
    let r = check_reference(&c, reference, false)?;
    let mut jobs = Vec::new();
    tensor_jobs(&c, ti, r.as_ref(), &mut jobs)?;
    decode_jobs_vec(&c, &jobs, name, len)
}

/// Decodes `jobs` (the chunks of one tensor, `len` bytes, named `name`) into
/// a new buffer, allocated fallibly.
fn decode_jobs_vec(
    c: &Container<'_>,
    jobs: &[Job<'_, '_>],
    name: &str,
    len: u64,
) -> Result<Vec<u8>> {
    let too_big = |e: String| Error::Io {
        path: None,
        err: std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("tensor {name:?} decodes to {len} bytes, which do not fit in memory: {e}"),
        ),
    };
    let n = usize::try_from(len).map_err(|e| too_big(e.to_string()))?;
    // The allocation is probed fallibly first (there is no fallible zeroed
    // allocation in std), then made zeroed: fresh zero pages, which the
    // decoder touches only as it fills them, with no pass of zeroing.
    let mut probe = Vec::<u8>::new();
    probe
        .try_reserve_exact(n)
        .map_err(|e| too_big(e.to_string()))?;
    drop(probe);
    let mut out = vec![0u8; n];
    decode_jobs(c, jobs, &mut out)?;
    Ok(out)
}

/// Whether decoding tensor `ti` of an opened container reads reference
/// data: the tensor has a reference mode and some chunk is a delta, or
/// quantized against the reference (lossy).
pub fn tensor_needs_reference(c: &Container<'_>, ti: usize) -> bool {
    let e = &c.tensors[ti].entry;
    e.ref_mode != RefMode::None
        && e.chunks
            .iter()
            .any(|k| k.coding.codec.is_delta() || k.coding.codec == Codec::Quantized)
}

/// Decodes tensor `ti` of an opened safetensors container against the bytes
/// of the reference's tensor of the same name (`reference`: that tensor's
/// data, not the whole reference file), as a chain of tensors is decoded
/// without decoding whole files. Each chunk's checksum is checked; the
/// caller checks that `reference` is the right tensor (what
/// [`Container::open`] of the reference's container and its index say).
/// A tensor that does not read its reference ([`tensor_needs_reference`])
/// takes `None`. Tensors whose reference data is a byte range of the
/// reference file (torch archives, opaque files) are refused.
pub fn decode_tensor_against(
    c: &Container<'_>,
    ti: usize,
    reference: Option<&[u8]>,
    opts: &DecodeOptions,
) -> Result<Vec<u8>> {
    let t = &c.tensors[ti];
    opts.check(&format!("tensor {:?}", t.info.name), t.entry.data_len)?;
    let tref = if tensor_needs_reference(c, ti) {
        if t.entry.ref_mode != RefMode::SameName {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?} is coded against a byte range of its reference file ({} container), \
                 not against a tensor: decode the whole file",
                t.info.name,
                c.index.source_kind.name()
            )));
        }
        let r = reference.ok_or(Error::MissingReference)?;
        if r.len() as u64 != t.info.len() {
            return Err(Error::ReferenceMismatch(format!(
                "the reference tensor {:?} has {} bytes, not {}",
                t.info.name,
                r.len(),
                t.info.len()
            )));
        }
        Some(r)
    } else {
        None
    };
    jobs_for(c, ti, tref, &t.info.name)
}

/// Decodes tensor `ti` (named `name`) against `tref`, its reference data
/// from the tensor's start, into a new buffer.
pub(crate) fn jobs_for(
    c: &Container<'_>,
    ti: usize,
    tref: Option<&[u8]>,
    name: &str,
) -> Result<Vec<u8>> {
    let mut jobs = Vec::new();
    jobs_against(c, ti, tref, &mut jobs)?;
    decode_jobs_vec(c, &jobs, name, c.tensors[ti].entry.data_len)
}

/// Decodes one tensor like [`decode_tensor_with`], writing its bytes to
/// `out` a batch at a time (memory stays bounded whatever the tensor's
/// size); returns the number of bytes written. On error, what was written
/// must be discarded.
pub fn decode_tensor_to(
    container: &[u8],
    reference: Option<&[u8]>,
    name: &str,
    out: &mut dyn Write,
    opts: &DecodeOptions,
) -> Result<u64> {
    let (c, ti) = open_tensor(container, name, opts)?;
    decode_tensor_opened(&c, ti, reference, out)
}

/// Opens a container and finds the tensor `name`, whose size must be within
/// the limit.
pub(crate) fn open_tensor<'a>(
    container: &'a [u8],
    name: &str,
    opts: &DecodeOptions,
) -> Result<(Container<'a>, usize)> {
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
    opts.check(&format!("tensor {name:?}"), c.tensors[ti].entry.data_len)?;
    Ok((c, ti))
}

/// Writes tensor `ti` of an opened container to `out`, a batch at a time.
pub(crate) fn decode_tensor_opened(
    c: &Container<'_>,
    ti: usize,
    reference: Option<&[u8]>,
    out: &mut dyn Write,
) -> Result<u64> {
    let r = check_reference(c, reference, false)?;
    let mut jobs = Vec::new();
    tensor_jobs(c, ti, r.as_ref(), &mut jobs)?;
    let mut buf = Vec::new();
    let mut written = 0u64;
    for batch in batches(c, &jobs) {
        buf.resize(jobs_len(c, batch), 0);
        decode_jobs(c, batch, &mut buf)?;
        out.write_all(&buf)?;
        written += buf.len() as u64;
        release(batch);
    }
    out.flush()?;
    Ok(written)
}

/// A piece of the output: header-block bytes, or a chunk (by job number).
enum Item {
    Block(std::ops::Range<usize>),
    Job(usize),
}

/// A batch of the decoder's output: its items, the jobs among them and
/// their decoded bytes.
struct Batch {
    items: std::ops::Range<usize>,
    jobs: std::ops::Range<usize>,
    bytes: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::encode::{encode, EncodeOptions, InputKind};

    /// A delta of many small chunks (two F32 tensors) and its reference.
    fn many_chunks() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let a: Vec<f32> = (0..40_000u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 * 1e-3)
            .collect();
        let b: Vec<f32> = a.iter().map(|v| v + 1e-4).collect();
        let reference = crate::container::encode::test_safetensors(&[("w", a.clone()), ("v", a)]);
        let cur = crate::container::encode::test_safetensors(&[("w", b.clone()), ("v", b)]);
        let opts = EncodeOptions {
            chunk_size: 16 << 10,
            ..EncodeOptions::default()
        };
        let mut packed = Vec::new();
        encode(&cur, Some(&reference), &opts, &mut packed, None).unwrap();
        (cur, reference, packed)
    }

    /// Decoding in batches of any size (many batches, each written while
    /// the next decodes) gives the file, and a damaged chunk in a later
    /// batch is an error, whichever batch it is in.
    #[test]
    fn batches_of_any_size_decode_the_same() {
        let (cur, reference, packed) = many_chunks();
        let c = Container::open(&packed).unwrap();
        assert!(
            c.tensors
                .iter()
                .map(|t| t.entry.chunks.len())
                .sum::<usize>()
                >= 10
        );
        for batch in [1, 20_000, 50_000, 1 << 30] {
            let mut out = Vec::new();
            let r = check_reference(&c, Some(&reference), true).unwrap();
            decode_in_batches(&c, r, &mut out, None, batch).unwrap();
            assert!(out == cur, "batch {batch}");
        }
        // Damage the payload of the last chunk of the last tensor.
        let t = c.tensors.last().unwrap();
        let e = t.entry.chunks.last().unwrap();
        let mut bad = packed.clone();
        let at = e.payload_offset as usize + e.payload_len as usize / 2;
        bad[at] ^= 0x10;
        // The index is intact (it is after the payloads): open works.
        let c = Container::open(&bad).unwrap();
        for batch in [1, 50_000, 1 << 30] {
            let mut out = Vec::new();
            let r = check_reference(&c, Some(&reference), true).unwrap();
            let err = decode_in_batches(&c, r, &mut out, None, batch).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt(_) | Error::ChecksumMismatch { .. }),
                "batch {batch}: {err}"
            );
        }
    }

    /// Decoding into memory gives the file: the header block's pieces and
    /// every chunk in place; another length, a damaged chunk, a wrong or
    /// missing reference are errors.
    #[test]
    fn decoding_into_memory_gives_the_file() {
        let (cur, reference, packed) = many_chunks();
        let n = cur.len() as u64;
        let (out, stats) = decode_to_vec(&packed, Some(&reference), n).unwrap();
        assert!(out == cur);
        assert_eq!(stats.original_len, n);
        // A keyframe, and a file of opaque bytes.
        for (file, r) in [(&cur, None), (&reference, Some(&cur))] {
            for input in [InputKind::Safetensors, InputKind::Opaque] {
                let opts = EncodeOptions {
                    input,
                    chunk_size: 4096,
                    ..EncodeOptions::default()
                };
                let mut p = Vec::new();
                encode(file, r.map(|r| &r[..]), &opts, &mut p, None).unwrap();
                let (out, _) = decode_to_vec(&p, r.map(|r| &r[..]), file.len() as u64).unwrap();
                assert!(out == *file, "{input:?}");
            }
        }
        for len in [0, n - 1, n + 1, u64::MAX] {
            let err = decode_to_vec(&packed, Some(&reference), len).unwrap_err();
            assert!(err.to_string().contains("expected"), "{len}: {err}");
        }
        let c = Container::open(&packed).unwrap();
        let e = c.tensors.last().unwrap().entry.chunks.last().unwrap();
        let mut bad = packed.clone();
        bad[e.payload_offset as usize + e.payload_len as usize / 2] ^= 0x10;
        let err = decode_to_vec(&bad, Some(&reference), n).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(_) | Error::ChecksumMismatch { .. }),
            "{err}"
        );
        let err = decode_to_vec(&packed, Some(&cur), n).unwrap_err();
        assert!(matches!(err, Error::WrongReference { .. }), "{err}");
        // A reference of the right length whose digest is checked only
        // when the decode fails: a changed byte fails a chunk, reported as
        // the wrong reference it is.
        let mut other = reference.clone();
        let at = other.len() - 1000;
        other[at] ^= 0x40;
        let err = decode_to_vec(&packed, Some(&other), n).unwrap_err();
        assert!(matches!(err, Error::WrongReference { .. }), "{err}");
        let err = decode_to_vec(&packed, None, n).unwrap_err();
        assert!(matches!(err, Error::MissingReference), "{err}");
    }
}
