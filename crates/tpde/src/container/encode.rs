//! Encoding a checkpoint file into a `.tpde` container.

use std::io::Write;

use rayon::prelude::*;

use std::collections::HashMap;

use crate::codec::chunk::{encode_chunk, encode_quantized_chunk, ChunkParams, Codec};
use crate::codec::lossy::{Bound, FloatKind};
use crate::common::error::{Error, Result};
use crate::common::mmap;
use crate::container::format::{
    self, ChunkEntry, Index, LayoutEntry, RefId, RefMode, SourceKind, TensorEntry,
};
use crate::source::dtype::Dtype;
use crate::source::dtype::Family;
use crate::source::{archive, safetensors};

/// What kind of file is being encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputKind {
    /// A safetensors file; anything else is refused.
    #[default]
    Safetensors,
    /// Any file, coded as opaque bytes against the same bytes of the reference.
    Opaque,
    /// A zip archive written by `torch.save` (a `.pt`/`.pth` file): its tensor
    /// storages are coded as tensors against the storages of the same name (below the archive's top folder) in
    /// the reference archive; anything else is refused.
    Archive,
    /// Whichever of the three the file is: safetensors, else a torch archive,
    /// else opaque bytes. A reference of another kind is not used (the
    /// container is then a keyframe), nor one that no tensor matches.
    Auto,
}

/// Encoder settings.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Largest chunk in bytes (a multiple of 8, at least 64). Chunks are
    /// coded independently and in parallel.
    pub chunk_size: usize,
    /// zstd level of the entropy-coded sections.
    pub level: i32,
    /// How to read the input.
    pub input: InputKind,
    /// The lossy mode: float tensors (F16, BF16, F32, F64) restored within
    /// this bound of the original, coded against the reference as given (pass
    /// the *reconstruction* of the reference, what decoding it gave, so that
    /// errors do not add up). `None`: lossless.
    pub lossy: Option<Bound>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            chunk_size: 4 << 20,
            level: 3,
            input: InputKind::Safetensors,
            lossy: None,
        }
    }
}

/// Totals of one encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodeStats {
    pub original_len: u64,
    pub encoded_len: u64,
    /// Elements whose bits differ from their reference element (over the
    /// tensors that have one).
    pub changed: u64,
    /// Elements in all tensors.
    pub elements: u64,
    /// What the file was read as.
    pub source_kind: SourceKind,
    /// Whether the container needs the reference to decode (false for a
    /// keyframe, and with [`InputKind::Auto`] when the reference did not fit).
    pub reference_used: bool,
    /// XXH3-128 of what decoding gives: the original, or in the lossy mode
    /// its reconstruction.
    pub output_digest: u128,
    /// In the lossy mode, the largest error of any restored element (0 when
    /// every element came out exact); `None` when the container is lossless
    /// (no bound asked, or no float tensor to apply it to).
    pub max_abs_error: Option<f64>,
}

struct Job<'a> {
    tensor: usize,
    cur: &'a [u8],
    reference: Option<&'a [u8]>,
    params: ChunkParams,
    /// The lossy mode's float kind and bound for this chunk.
    lossy: Option<(FloatKind, f64)>,
}

/// Bytes of input coded per parallel batch, which bounds the memory held at
/// once (the input's and the reference's window, the coded payloads, the
/// workers' buffers): four chunks per worker thread, at least 16 MiB.
pub(crate) fn batch_bytes(chunk_size: usize) -> usize {
    (chunk_size * 4 * rayon::current_num_threads()).max(16 << 20)
}

/// XXH3-128 of the output fed in file order: the jobs' bytes (or their lossy
/// reconstructions) with, between them, the bytes of the file outside every
/// job (the header, an archive's filler) taken from the copy of them that the
/// container stores, never from the input again.
struct OutputDigest<'a> {
    /// The bytes outside the jobs, one after another.
    outside: &'a [u8],
    /// How many of them were fed.
    used: usize,
    /// Where the next byte lies in the file.
    pos: usize,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<'a> OutputDigest<'a> {
    fn new(outside: &'a [u8]) -> Self {
        OutputDigest {
            outside,
            used: 0,
            pos: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    /// The bytes of the output at `at` (where the job's bytes lie in the
    /// file); the bytes before them, from `pos`, are outside bytes.
    fn feed(&mut self, at: usize, bytes: &[u8]) {
        debug_assert!(at >= self.pos, "chunk jobs are in file order");
        let gap = at.saturating_sub(self.pos);
        let end = (self.used + gap).min(self.outside.len());
        self.hasher.update(&self.outside[self.used..end]);
        self.used = end;
        self.hasher.update(bytes);
        self.pos = at + bytes.len();
    }

    fn finish(mut self) -> u128 {
        self.hasher.update(&self.outside[self.used..]);
        self.hasher.digest128()
    }
}

/// The hashes of a job's private copy, in one pass: XXH3-64 (the chunk
/// checksum of the index) and XXH3-128 (to find duplicates).
struct Hashes {
    checksum: u64,
    bytes: u128,
}

/// Bytes copied and hashed at a time: hashed while still in the cache.
const COPY_BLOCK: usize = 64 << 10;

/// Copies `src` into `dst` (of the same length) and hashes the copy.
fn copy_hashed(src: &[u8], dst: &mut [u8]) -> xxhash_rust::xxh3::Xxh3 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (s, d) in src.chunks(COPY_BLOCK).zip(dst.chunks_mut(COPY_BLOCK)) {
        d.copy_from_slice(s);
        h.update(d);
    }
    h
}

/// Splits `buf` into consecutive pieces of `lens`.
fn split_lens(mut buf: &mut [u8], lens: impl Iterator<Item = usize>) -> Vec<&mut [u8]> {
    lens.map(|len| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        buf = tail;
        head
    })
    .collect()
}

/// Encodes `cur` against `reference` (a keyframe when `None`) and writes the
/// container to `out`. `progress` is told the input bytes done so far.
///
/// Each window of the input is copied once and every pass over it (chunk
/// checksums, duplicates, coding, the output digest) reads the copy, so that
/// the container always agrees with the bytes that were coded, even when the
/// file changes while it is read. The reference is read in place: coded
/// against bytes that changed meanwhile, a chunk fails its checksum when
/// decoded, never decodes silently to something else. When `cur` or
/// `reference` lies in a [`FileBytes`](crate::common::mmap::FileBytes) whose file changed
/// meanwhile (see [`FileBytes::check_unchanged`](crate::common::mmap::FileBytes::check_unchanged)),
/// the encode ends in [`Error::InputChanged`], after writing the container:
/// throw it away.
pub fn encode(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    let result = encode_bytes(cur, reference, opts, out, progress);
    // A file that changed while it was read: say so, whatever else went wrong
    // meanwhile (bytes cut short may not even parse any more).
    mmap::check_unchanged(cur)?;
    if let Some(r) = reference {
        mmap::check_unchanged(r)?;
    }
    result
}

fn encode_bytes(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    if opts.chunk_size < 64
        || !opts.chunk_size.is_multiple_of(8)
        || opts.chunk_size > format::MAX_CHUNK as usize
    {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} must be a multiple of 8 between 64 bytes and 64 MiB",
            opts.chunk_size
        )));
    }
    if let Some(b) = opts.lossy {
        b.check().map_err(Error::InvalidArgument)?;
    }
    // The archive's storages, when auto-detection found them.
    let mut scanned = None;
    let kind = match opts.input {
        InputKind::Safetensors => SourceKind::Safetensors,
        InputKind::Opaque => SourceKind::Opaque,
        InputKind::Archive => SourceKind::Archive,
        InputKind::Auto => {
            if safetensors::parse(cur).is_ok() {
                SourceKind::Safetensors
            } else {
                scanned = archive::scan(cur).filter(|t| archive_pays(t, cur.len()));
                if scanned.is_some() {
                    SourceKind::Archive
                } else {
                    SourceKind::Opaque
                }
            }
        }
    };
    let lenient = opts.input == InputKind::Auto;
    let (kind, mut plan) = match kind {
        SourceKind::Safetensors => (kind, plan_safetensors(cur, reference, opts, lenient)?),
        SourceKind::Archive => match plan_archive(cur, scanned, reference, opts) {
            Ok(plan) => (kind, plan),
            // An archive tpde cannot lay out is still a file.
            Err(_) if lenient => (SourceKind::Opaque, plan_opaque(cur, reference, opts)),
            Err(e) => return Err(e),
        },
        SourceKind::Opaque => (kind, plan_opaque(cur, reference, opts)),
    };
    let reference_used = plan.entries.iter().any(|e| e.0 != RefMode::None);
    let reference = if lenient && !reference_used {
        None
    } else {
        reference
    };
    let Plan {
        header_block,
        outside_from,
        entries,
        jobs,
        elements,
    } = std::mem::take(&mut plan);

    let mut w = CountingWriter {
        inner: out,
        written: 0,
    };
    // Lossy when some float tensor may be quantized (the chunks of a tensor
    // may still come out exact); files without float tensors stay lossless.
    let lossy = jobs.iter().any(|j| j.lossy.is_some());
    let version = if lossy { 3 } else { kind.min_version() };
    w.write_all(&format::file_header(version))?;
    let mut tensors: Vec<TensorEntry> = entries
        .iter()
        .map(|&(ref_mode, data_len)| TensorEntry {
            ref_mode,
            data_len,
            chunks: Vec::new(),
        })
        .collect();
    // Identical chunks (same bytes, same reference bytes) share one payload:
    // freshly initialized layers are often exact copies of each other.
    // `seen` maps (XXH3-128 of the bytes, length) to the first copies met so
    // far: the bytes of earlier windows are gone, and reading them again from
    // the input could give other bytes than were coded.
    let mut seen: HashMap<(u128, usize), Vec<usize>> = HashMap::new();
    let mut changed = 0u64;
    let mut max_error = 0f64;
    let mut digest = OutputDigest::new(&header_block[outside_from..]);
    let mut done = header_block.len() as u64;
    let mut entry_of: Vec<Option<ChunkEntry>> = vec![None; jobs.len()];
    let batch_bytes = test_hooks::batch_bytes().unwrap_or_else(|| batch_bytes(opts.chunk_size));
    // The window's private copy of its input bytes.
    let mut cur_buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut window = 0;
    while start < jobs.len() {
        // A batch of jobs: the window of the input held at once.
        let mut end = start;
        let mut bytes = 0;
        while end < jobs.len() && (end == start || bytes + jobs[end].cur.len() <= batch_bytes) {
            bytes += jobs[end].cur.len();
            end += 1;
        }
        let batch = &jobs[start..end];
        cur_buf.resize(bytes, 0);
        // Each byte read once: copied (in parallel, as the pages come in),
        // hashed in the cache, and let go of in the input's map.
        let hashes: Vec<Hashes> = batch
            .par_iter()
            .zip(split_lens(&mut cur_buf, batch.iter().map(|j| j.cur.len())))
            .map(|(j, copy)| {
                let h = copy_hashed(j.cur, copy);
                mmap::release(j.cur);
                Hashes {
                    checksum: h.digest(),
                    bytes: h.digest128(),
                }
            })
            .collect();
        // Every pass below reads the copies of the input.
        let mut views: Vec<&[u8]> = Vec::with_capacity(batch.len());
        let mut c_at = 0;
        for j in batch {
            views.push(&cur_buf[c_at..c_at + j.cur.len()]);
            c_at += j.cur.len();
        }
        let dup_of: Vec<Option<usize>> = (start..end)
            .zip(&hashes)
            .map(|(i, h)| {
                let j = &jobs[i];
                let same = seen.entry((h.bytes, j.cur.len())).or_default();
                // The same bytes quantized with another bound (or not at
                // all: an integer tensor) decode to something else.
                let first = same
                    .iter()
                    .copied()
                    .find(|&k| jobs[k].reference == j.reference && jobs[k].lossy == j.lossy);
                if first.is_none() {
                    same.push(i);
                }
                first
            })
            .collect();
        let coded: Vec<Option<_>> = batch
            .par_iter()
            .zip(&views)
            .zip(&dup_of)
            .map(|((j, &c), dup)| {
                if dup.is_some() {
                    return Ok(None);
                }
                let r = j.reference;
                if let Some((kind, bound)) = j.lossy {
                    let (coding, payload, q) =
                        encode_quantized_chunk(c, r, kind, bound, j.params.level)?;
                    // Exact when that is no larger (tried only when
                    // quantizing did poorly: many escapes).
                    if payload.len() * 2 > c.len() {
                        let exact = encode_chunk(c, r, j.params)?;
                        if exact.1.len() <= payload.len() {
                            return Ok(Some((exact, None)));
                        }
                    }
                    return Ok(Some(((coding, payload), Some(q))));
                }
                encode_chunk(c, r, j.params).map(|c| Some((c, None)))
            })
            .collect::<Result<_>>()?;
        test_hooks::after_window(window);
        window += 1;
        for ((((i, coded), dup), h), &c) in (start..end)
            .zip(coded)
            .zip(&dup_of)
            .zip(&hashes)
            .zip(&views)
        {
            let j = &jobs[i];
            let r = j.reference;
            let at = j.cur.as_ptr() as usize - cur.as_ptr() as usize;
            let entry = match (coded, *dup) {
                (Some(((coding, payload), q)), _) => {
                    let checksum = match &q {
                        Some(q) => {
                            changed += q.nonzero + q.escapes.len() as u64;
                            max_error = max_error.max(q.max_error);
                            digest.feed(at, &q.recon);
                            xxhash_rust::xxh3::xxh3_64(&q.recon)
                        }
                        None => {
                            digest.feed(at, c);
                            h.checksum
                        }
                    };
                    let e = ChunkEntry {
                        payload_offset: w.written,
                        payload_len: payload.len() as u32,
                        raw_len: c.len() as u32,
                        checksum,
                        coding,
                    };
                    w.write_all(&payload)?;
                    e
                }
                (None, Some(k)) => {
                    let e = entry_of[k].expect("the first copy comes earlier");
                    // A duplicate decodes to what its first copy decodes to.
                    if let (Codec::Quantized, Some((kind, bound))) = (e.coding.codec, j.lossy) {
                        // Quantizing is deterministic: the same bytes against
                        // the same reference give the same reconstruction.
                        let q = crate::codec::lossy::quantize(kind, bound, c, r);
                        digest.feed(at, &q.recon);
                    } else {
                        digest.feed(at, c);
                    }
                    e
                }
                (None, None) => unreachable!("only duplicates are skipped"),
            };
            changed += match (entry.coding.codec, r) {
                // Counted above, from the bins.
                (Codec::Quantized, _) => 0,
                (Codec::Delta, _) => entry.coding.nnz,
                // Coded without its reference (it did not help): count the
                // elements that differ from it all the same.
                (_, Some(r)) => {
                    let w = j.params.width;
                    c.chunks_exact(w)
                        .zip(r.chunks_exact(w))
                        .filter(|(a, b)| a != b)
                        .count() as u64
                }
                (_, None) => 0,
            };
            entry_of[i] = Some(entry);
            tensors[j.tensor].chunks.push(entry);
            done += c.len() as u64;
            // Done with this window of the reference.
            if let Some(r) = r {
                mmap::release(r);
            }
        }
        if let Some(p) = progress {
            p(done);
        }
        start = end;
    }

    // What decoding gives: the original, with the quantized chunks replaced by
    // their reconstructions.
    let output_digest = digest.finish();
    let index = Index {
        reference: reference.map(|r| RefId {
            digest: mmap::digest_released(r),
            len: r.len() as u64,
        }),
        lossy,
        original_len: cur.len() as u64,
        original_digest: output_digest,
        source_kind: kind,
        header_block,
        tensors,
    };
    let index_bytes = index.to_bytes()?;
    let index_offset = w.written;
    w.write_all(&index_bytes)?;
    w.write_all(&format::trailer(index_offset, &index_bytes))?;
    w.flush()?;
    Ok(EncodeStats {
        original_len: cur.len() as u64,
        encoded_len: w.written,
        changed,
        elements,
        source_kind: kind,
        reference_used: reference.is_some(),
        output_digest,
        max_abs_error: lossy.then_some(max_error),
    })
}

/// What to code: the header block, one `(ref mode, length)` per tensor, and
/// the chunk jobs.
#[derive(Default)]
struct Plan<'a> {
    header_block: Vec<u8>,
    /// Where in the header block the bytes of the file outside the jobs
    /// begin: all of it (the safetensors header), or after the layout (an
    /// archive's filler).
    outside_from: usize,
    entries: Vec<(RefMode, u64)>,
    jobs: Vec<Job<'a>>,
    elements: u64,
}

fn chunk_params(dtype: &Dtype, level: i32) -> ChunkParams {
    ChunkParams {
        width: dtype.coding_width(),
        family: dtype.family(),
        level,
        exponent: dtype.exponent_field(),
    }
}

/// A safetensors file: tensors matched by name, dtype and shape. A reference
/// that is not safetensors is an error, or (`lenient`) not used.
fn plan_safetensors<'a>(
    cur: &'a [u8],
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
    lenient: bool,
) -> Result<Plan<'a>> {
    // The header as stored, and the tensors as it gives them: one copy, so
    // that they agree whatever happens to the file.
    let hl = 8 + safetensors::header_size(cur, cur.len() as u64)? as usize;
    let header_block = cur[..hl].to_vec();
    let header = safetensors::parse_header(&header_block, cur.len() as u64)?;
    let ref_header = match reference.map(safetensors::parse) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) if lenient => None,
        Some(Err(e)) => {
            return Err(Error::ReferenceMismatch(format!(
                "the reference is not a valid safetensors file: {e}"
            )))
        }
        None => None,
    };
    let mut plan = Plan {
        header_block,
        ..Plan::default()
    };
    for (i, t) in header.tensors.iter().enumerate() {
        let data = &cur[hl + t.begin as usize..hl + t.end as usize];
        let ref_data = ref_header.as_ref().and_then(|rh| {
            let rt = rh.get(&t.name)?;
            (rt.dtype == t.dtype && rt.shape == t.shape).then(|| {
                let rhl = rh.header_len as usize;
                &reference.expect("reference header implies reference")
                    [rhl + rt.begin as usize..rhl + rt.end as usize]
            })
        });
        plan.elements += t.elements();
        let mode = if ref_data.is_some() {
            RefMode::SameName
        } else {
            RefMode::None
        };
        plan.entries.push((mode, data.len() as u64));
        push_jobs(&mut plan.jobs, i, data, ref_data, &t.dtype, opts);
    }
    Ok(plan)
}

/// A torch.save archive: its storages are the tensors, matched with the
/// reference's storages by name, dtype and length; the other bytes of the
/// file go verbatim into the header block.
fn plan_archive<'a>(
    cur: &'a [u8],
    scanned: Option<Vec<archive::ArchiveTensor>>,
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
) -> Result<Plan<'a>> {
    let tensors = scanned
        .or_else(|| archive::scan(cur))
        .ok_or_else(|| Error::InvalidArgument("not a torch.save zip archive".into()))?;
    // torch.save names the archive's top folder after the file
    // (`optimizer/data/3`): storages match by the name below it.
    let key = |name: &str| {
        name.split_once('/')
            .map_or(name, |(_, rest)| rest)
            .to_string()
    };
    let ref_tensors: HashMap<String, archive::ArchiveTensor> = reference
        .and_then(archive::scan)
        .unwrap_or_default()
        .into_iter()
        .map(|t| (key(&t.name), t))
        .collect();
    let mut plan = Plan::default();
    let mut layout = Vec::with_capacity(tensors.len());
    let mut filler = Vec::new();
    let mut pos = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        let (start, len) = (t.offset as usize, t.len as usize);
        filler.extend_from_slice(&cur[pos..start]);
        pos = start + len;
        let data = &cur[start..pos];
        let matched = ref_tensors
            .get(&key(&t.name))
            .filter(|r| r.dtype == t.dtype && r.len == t.len);
        let ref_data = matched.map(|r| {
            &reference.expect("reference tensors imply a reference")
                [r.offset as usize..(r.offset + r.len) as usize]
        });
        layout.push(LayoutEntry {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            offset: t.offset,
            ref_offset: matched.map_or(0, |r| r.offset),
        });
        let width = t.dtype.coding_width();
        plan.elements += t.len / width as u64;
        let mode = if ref_data.is_some() {
            RefMode::Offset
        } else {
            RefMode::None
        };
        plan.entries.push((mode, t.len));
        push_jobs(&mut plan.jobs, i, data, ref_data, &t.dtype, opts);
    }
    filler.extend_from_slice(&cur[pos..]);
    plan.header_block = format::archive_layout(&layout, &filler)?;
    plan.outside_from = plan.header_block.len() - filler.len();
    if plan.header_block.len() as u64 > safetensors::MAX_HEADER_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the archive has {} bytes outside its tensor storages, more than the format allows",
            filler.len()
        )));
    }
    Ok(plan)
}

/// Whether coding an archive's storages as tensors pays, when choosing by
/// itself: everything else (zip records, pickles) goes into the header block,
/// coded without the reference, so when that is most of a large file (a run
/// of many small archives, as torch.distributed.checkpoint writes for a small
/// model) the whole file coded as bytes against the reference does better.
fn archive_pays(tensors: &[archive::ArchiveTensor], len: usize) -> bool {
    let data: u64 = tensors.iter().map(|t| t.len).sum();
    let rest = (len as u64).saturating_sub(data);
    rest < 64 << 10 || data >= rest
}

/// Any file as opaque bytes, against the same byte range of the reference.
fn plan_opaque<'a>(cur: &'a [u8], reference: Option<&'a [u8]>, opts: &EncodeOptions) -> Plan<'a> {
    let params = ChunkParams {
        width: 1,
        family: Family::Integer,
        level: opts.level,
        exponent: None,
    };
    let mode = if reference.is_some() {
        RefMode::SameRange
    } else {
        RefMode::None
    };
    let mut plan = Plan {
        elements: cur.len() as u64,
        entries: vec![(mode, cur.len() as u64)],
        ..Plan::default()
    };
    let step = opts.chunk_size;
    for (k, piece) in cur.chunks(step).enumerate() {
        let start = k * step;
        let r = reference.and_then(|r| r.get(start..start + piece.len()));
        plan.jobs.push(Job {
            tensor: 0,
            cur: piece,
            reference: r,
            params,
            lossy: None,
        });
    }
    plan
}

/// Splits a tensor of `dtype` into chunk jobs (lossy ones for float tensors
/// in the lossy mode).
fn push_jobs<'a>(
    jobs: &mut Vec<Job<'a>>,
    tensor: usize,
    data: &'a [u8],
    reference: Option<&'a [u8]>,
    dtype: &Dtype,
    opts: &EncodeOptions,
) {
    let params = chunk_params(dtype, opts.level);
    let lossy = opts.lossy.and_then(|b| {
        let kind = FloatKind::of(dtype)?;
        let bound = b.for_tensor(kind, data);
        // A relative bound read the whole tensor (its RMS).
        mmap::release(data);
        Some((kind, bound?))
    });
    // Chunks hold whole elements; chunk_size is a multiple of 8, so of every width.
    let step = opts.chunk_size - opts.chunk_size % params.width;
    for (k, piece) in data.chunks(step).enumerate() {
        let r = reference.map(|r| &r[k * step..k * step + piece.len()]);
        jobs.push(Job {
            tensor,
            cur: piece,
            reference: r,
            params,
            lossy,
        });
    }
}

/// Hooks for the tests of inputs that change while they are read: not part
/// of the API.
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};

    /// Called with each batch window's number (from 0).
    pub type Hook = Arc<dyn Fn(usize) + Send + Sync>;

    static AFTER_WINDOW: RwLock<Option<Hook>> = RwLock::new(None);
    static BATCH_BYTES: AtomicUsize = AtomicUsize::new(0);

    /// Calls `hook` once each batch window of the input has been read and
    /// coded, before the next window is read.
    pub fn set_after_window(hook: Option<Hook>) {
        *AFTER_WINDOW.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Sets the bytes of input coded per batch window (0: the default).
    pub fn set_batch_bytes(n: usize) {
        BATCH_BYTES.store(n, Ordering::Relaxed);
    }

    pub(crate) fn after_window(window: usize) {
        let hook = AFTER_WINDOW
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(window);
        }
    }

    pub(crate) fn batch_bytes() -> Option<usize> {
        Some(BATCH_BYTES.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The containers of the shipped test inputs, digested: the refactorings of
/// the encoder must keep them byte for byte.
#[cfg(test)]
mod identity_tests {
    use super::*;

    fn data(path: &str) -> Vec<u8> {
        let p = format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// XXH3-128 over every container (and its stats, or the error) of `cur`
    /// against `reference` as `input`, at several chunk sizes, lossless and
    /// lossy.
    fn digest_of(cur: &str, reference: Option<&str>, input: InputKind) -> String {
        let c = data(cur);
        let r = reference.map(data);
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for chunk_size in [64, 1024, 4 << 20] {
            for lossy in [
                None,
                Some(Bound::MaxAbsError(1e-3)),
                Some(Bound::MaxRelError(0.01)),
            ] {
                let opts = EncodeOptions {
                    chunk_size,
                    level: if chunk_size == 1024 { 1 } else { 3 },
                    input,
                    lossy,
                };
                let mut out = Vec::new();
                match encode(&c, r.as_deref(), &opts, &mut out, None) {
                    Ok(stats) => {
                        h.update(&out);
                        h.update(format!("{stats:?}").as_bytes());
                    }
                    Err(e) => h.update(format!("error: {e}").as_bytes()),
                }
            }
        }
        format::digest_hex(h.digest128())
    }

    #[test]
    fn the_shipped_inputs_encode_as_they_always_did() {
        use InputKind::*;
        let cases: &[(&str, Option<&str>, InputKind, &str)] = &[
            (
                "v1/cur.safetensors",
                Some("v1/ref.safetensors"),
                Safetensors,
                "49317941d26a86e6d945aa51e9ee0eb1",
            ),
            (
                "v1/cur.safetensors",
                None,
                Safetensors,
                "2ae108c5a05fa9f4459b368f66920108",
            ),
            (
                "v1/cur-b.safetensors",
                Some("v1/ref-b.safetensors"),
                Auto,
                "427b39413e7631081214d3d5b16a84ed",
            ),
            (
                "v1/cur.safetensors",
                Some("v1/ref.safetensors"),
                Opaque,
                "5ed07e21f203c54b95830324ba152381",
            ),
            (
                "v1/cur.safetensors",
                Some("v2/ref.pt"),
                Auto,
                "2ae108c5a05fa9f4459b368f66920108",
            ),
            (
                "v1/cur.safetensors",
                Some("v2/ref.pt"),
                Safetensors,
                "273b2033cbe23b3a368662078e201cf6",
            ),
            (
                "v3/cur.safetensors",
                Some("v3/ref.safetensors"),
                Safetensors,
                "49317941d26a86e6d945aa51e9ee0eb1",
            ),
            (
                "v2/cur.pt",
                Some("v2/ref.pt"),
                Archive,
                "70e1a43b8bcc5a2d8520e590cb1dee92",
            ),
            (
                "v2/cur.pt",
                None,
                Archive,
                "93e4fb423f8b7d2e1fbd75fc8cb3b334",
            ),
            (
                "v2/cur.pt",
                Some("v2/ref.pt"),
                Auto,
                "70e1a43b8bcc5a2d8520e590cb1dee92",
            ),
            (
                "v2/cur.pt",
                Some("v1/ref.safetensors"),
                Auto,
                "93e4fb423f8b7d2e1fbd75fc8cb3b334",
            ),
            (
                "torch/mixed.pt",
                None,
                Auto,
                "f11bfc7d5894a45b7d85d399afd11f14",
            ),
            (
                "torch/deflated.zip",
                None,
                Auto,
                "2cb13161f83afe7b6f373008b1945697",
            ),
            (
                "torch/deflated.zip",
                None,
                Archive,
                "2cb13161f83afe7b6f373008b1945697",
            ),
            (
                "torch/step-2/model.safetensors",
                Some("torch/step-1/model.safetensors"),
                Safetensors,
                "cc11ed9a29311476aa039637ec3c560f",
            ),
            (
                "torch/step-2/optimizer.pt",
                Some("torch/step-1/optimizer.pt"),
                Auto,
                "2066fcae1f1ce351c5e2772b88d65dc3",
            ),
            (
                "torch/step-2/optimizer.pt",
                Some("torch/step-1/optimizer.pt"),
                Opaque,
                "448bce92b685380db8507a0811a825b3",
            ),
            (
                "torch/step-2/scheduler.pt",
                Some("torch/step-1/scheduler.pt"),
                Auto,
                "4969e15bbec03a0ee847947a826fdee7",
            ),
            (
                "torch/step-2/rng_state.pth",
                Some("torch/step-1/rng_state.pth"),
                Auto,
                "13ffc2cd5f80a590e42a5dc11d4e4e02",
            ),
            (
                "torch/step-2/trainer_state.json",
                Some("torch/step-1/trainer_state.json"),
                Auto,
                "e4a6f6ffbc8b1966affe2d1f1bb1831d",
            ),
            (
                "torch/step-2/config.json",
                None,
                Opaque,
                "2ce8b58d08b091a5f3395d3db3385f22",
            ),
            (
                "dcp/step-2/__0_0.distcp",
                Some("dcp/step-1/__0_0.distcp"),
                Auto,
                "2dfff43d5352f64ed5f1933fda96d8e1",
            ),
            (
                "dcp/step-2/.metadata",
                Some("dcp/step-1/.metadata"),
                Auto,
                "1ba9d256f7acbcb34df55ab900867edb",
            ),
        ];
        let mut wrong = Vec::new();
        for &(cur, reference, input, want) in cases {
            let got = digest_of(cur, reference, input);
            if got != want {
                wrong.push(format!("{cur} against {reference:?} as {input:?}: {got}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "containers changed:\n{}",
            wrong.join("\n")
        );
    }
}
