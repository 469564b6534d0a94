//! Step two of encoding: [`execute`] codes a [`Plan`]'s chunk jobs and writes
//! the container: the file header, the payloads, the index and the trailer.
//!
//! The input is read window by window (a batch of jobs, [`batch_bytes`] of
//! input at most): each window is copied once, in parallel, and hashed in
//! the cache; every later pass over it (chunk checksums, duplicates, coding,
//! the output digest) reads the copy, so that the container always agrees
//! with the bytes that were coded. Identical chunks (same bytes, same
//! reference bytes, same bound) share the payload of the first. The calling
//! thread writes one window while the thread pool reads and codes the next.
//!
//! May call [`common`](crate::common), [`codec`](crate::codec) (coding one
//! chunk) and [`format`](crate::container::format) (header, index, trailer).

use std::collections::HashMap;
use std::io::Write;

use rayon::prelude::*;

use super::plan::{Job, Plan};
use super::{batch_bytes, test_hooks, EncodeStats};
use crate::codec::chunk::{encode_chunk, encode_quantized_chunk, ChunkCoding, Codec};
use crate::codec::lossy::{self, Quantized};
use crate::common::error::Result;
use crate::common::mmap;
use crate::common::overlap::overlapped;
use crate::container::format::{self, ChunkEntry, Index, RefId, TensorEntry};

/// Codes the chunks of `plan` and writes the container to `out`. `progress`
/// is told the input bytes done so far.
///
/// The reference is read in place: coded against bytes that changed
/// meanwhile, a chunk fails its checksum when decoded, never decodes
/// silently to something else. Whether a mapped input changed while it was
/// read is for the caller to check afterwards, as
/// [`encode`](super::encode) does.
pub fn execute(
    plan: Plan<'_>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    execute_as(plan, out, progress, Input::Copied)
}

/// [`execute`], its windows read as `input` says: [`Input::InPlace`] only
/// for an input that nothing else can change while it is coded (memory the
/// caller owns and holds borrowed, not a file map).
pub(super) fn execute_as(
    plan: Plan<'_>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    input: Input,
) -> Result<EncodeStats> {
    let window = test_hooks::batch_bytes().unwrap_or_else(|| batch_bytes(plan.chunk_size));
    execute_in_windows(plan, out, progress, window, input)
}

/// How the input's windows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Input {
    /// Copied once, every pass reading the copy (a file map may change).
    Copied,
    /// Read in place (the input cannot change while it is coded).
    InPlace,
}

/// [`execute`] with windows of `batch_bytes` of input.
pub(super) fn execute_in_windows(
    plan: Plan<'_>,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    batch_bytes: usize,
    input: Input,
) -> Result<EncodeStats> {
    // Lossy when some float tensor may be quantized (the chunks of a tensor
    // may still come out exact); files without float tensors stay lossless.
    let lossy = plan.lossy();
    let version = plan.version();
    let mut plan = plan;
    plan.set_version_features(version);
    let Plan {
        cur,
        reference,
        kind,
        header_block,
        outside_from,
        tensors,
        jobs,
        elements,
        ..
    } = plan;
    let mut w = CountingWriter {
        inner: out,
        written: 0,
    };
    w.write_all(&format::file_header(version))?;
    let mut s = Written {
        w,
        cur_at: cur.as_ptr() as usize,
        tensors: tensors
            .iter()
            .map(|t| TensorEntry {
                ref_mode: t.ref_mode,
                data_len: t.len,
                chunks: Vec::new(),
            })
            .collect(),
        entry_of: vec![None; jobs.len()],
        digest: OutputDigest::new(&header_block[outside_from..]),
        changed: 0,
        max_error: 0.0,
        done: header_block.len() as u64,
    };
    // The windows of jobs.
    let mut windows = Vec::new();
    let mut start = 0;
    while start < jobs.len() {
        let end = window_end(&jobs, start, batch_bytes);
        windows.push(start..end);
        start = end;
    }
    // The thread pool reads window k + 1 into a buffer (its private copy of
    // its input bytes: every pass reads the copy) and codes it while the
    // calling thread writes window k (and feeds the output digest).
    let mut seen = Seen::new();
    let prepare = |k: usize, buf: &mut Vec<u8>| -> Result<Window> {
        let w = windows[k].clone();
        let hashes = match input {
            Input::Copied => copy_window(&jobs[w.clone()], buf),
            Input::InPlace => hash_window(&jobs[w.clone()]),
        };
        let views = window_views(input, &jobs[w.clone()], buf);
        let dup_of = find_duplicates(&mut seen, &jobs, w.start, &hashes);
        let coded = code_window(&jobs[w], &views, &dup_of)?;
        // The next window is read only after this returns.
        test_hooks::after_window(k);
        Ok(Window {
            hashes,
            dup_of,
            coded,
        })
    };
    overlapped(windows.len(), prepare, |k, window, buf| {
        let w = windows[k].clone();
        let views = window_views(input, &jobs[w.clone()], buf);
        for (i, (coded, (dup, (h, c)))) in w.zip(
            window
                .coded
                .into_iter()
                .zip(window.dup_of.iter().zip(window.hashes.iter().zip(views))),
        ) {
            s.write_chunk((i, &jobs[i]), coded, *dup, h, c)?;
        }
        if let Some(p) = progress {
            p(s.done);
        }
        Ok(())
    })?;
    // What decoding gives: the original, with the quantized chunks replaced by
    // their reconstructions.
    let Written {
        mut w,
        tensors,
        digest,
        changed,
        max_error,
        ..
    } = s;
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
    w.write_all(&format::trailer(version, index_offset, &index_bytes))?;
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

/// The end of the window of jobs from `start`: as many as fit in
/// `batch_bytes` of input, at least one.
fn window_end(jobs: &[Job], start: usize, batch_bytes: usize) -> usize {
    let mut end = start;
    let mut bytes = 0;
    while end < jobs.len() && (end == start || bytes + jobs[end].cur.len() <= batch_bytes) {
        bytes += jobs[end].cur.len();
        end += 1;
    }
    end
}

/// Copies the input bytes of `batch` into `buf`, each byte read once:
/// copied (in parallel, as the pages come in), hashed in the cache, and let
/// go of in the input's map.
fn copy_window(batch: &[Job], buf: &mut Vec<u8>) -> Vec<Hashes> {
    buf.resize(batch.iter().map(|j| j.cur.len()).sum(), 0);
    batch
        .par_iter()
        .zip(split_lens_mut(buf, batch.iter().map(|j| j.cur.len())))
        .map(|(j, copy)| {
            let h = copy_hashed(j.cur, copy);
            mmap::release(j.cur);
            Hashes {
                checksum: h.digest(),
                bytes: h.digest128(),
            }
        })
        .collect()
}

/// The input bytes of the jobs of a window: their pieces of `buf` (the
/// window's copy), or read in place.
fn window_views<'b>(input: Input, batch: &'b [Job<'_>], buf: &'b [u8]) -> Vec<&'b [u8]> {
    match input {
        Input::Copied => split_lens(buf, batch.iter().map(|j| j.cur.len())),
        Input::InPlace => batch.iter().map(|j| j.cur).collect(),
    }
}

/// The hashes of the input bytes of `batch`, read in place (in parallel).
fn hash_window(batch: &[Job]) -> Vec<Hashes> {
    batch
        .par_iter()
        .map(|j| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(j.cur);
            Hashes {
                checksum: h.digest(),
                bytes: h.digest128(),
            }
        })
        .collect()
}

/// A chunk coded: its coding and payload, and in the lossy mode what
/// quantizing gave (`None` when the chunk came out exact).
type Coded = ((ChunkCoding, Vec<u8>), Option<Quantized>);

/// Codes the chunks of a window (copies of the input in `views`), in
/// parallel; duplicates are skipped (`None`).
fn code_window(
    batch: &[Job],
    views: &[&[u8]],
    dup_of: &[Option<usize>],
) -> Result<Vec<Option<Coded>>> {
    batch
        .par_iter()
        .zip(views)
        .zip(dup_of)
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
        .collect()
}

/// Identical chunks (same bytes, same reference bytes) share one payload:
/// freshly initialized layers are often exact copies of each other. Maps
/// (XXH3-128 of the bytes, length) to the first copies met so far: the
/// bytes of earlier windows are gone, and reading them again from the input
/// could give other bytes than were coded.
type Seen = HashMap<(u128, usize), Vec<usize>>;

/// A window read and coded: its chunks' hashes, the earlier job each is a
/// duplicate of (if any), and the codings of the others.
struct Window {
    hashes: Vec<Hashes>,
    dup_of: Vec<Option<usize>>,
    coded: Vec<Option<Coded>>,
}

/// For each job of the window from `start`, the earlier job with the same
/// bytes that it decodes like, if any.
fn find_duplicates(
    seen: &mut Seen,
    jobs: &[Job],
    start: usize,
    hashes: &[Hashes],
) -> Vec<Option<usize>> {
    (start..)
        .zip(hashes)
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
        .collect()
}

/// What the windows written so far leave for the next ones and the index.
struct Written<'o, 'h> {
    w: CountingWriter<'o>,
    /// Where the input starts in memory (the jobs' bytes lie in it).
    cur_at: usize,
    tensors: Vec<TensorEntry>,
    /// The index entry of every job written.
    entry_of: Vec<Option<ChunkEntry>>,
    digest: OutputDigest<'h>,
    changed: u64,
    max_error: f64,
    /// Input bytes done.
    done: u64,
}

impl Written<'_, '_> {
    /// Writes job `i`, `j` (its copy `c`): its payload, or the entry of its
    /// first copy `dup`; feeds the output digest and counts what changed.
    fn write_chunk(
        &mut self,
        (i, j): (usize, &Job),
        coded: Option<Coded>,
        dup: Option<usize>,
        h: &Hashes,
        c: &[u8],
    ) -> Result<()> {
        let r = j.reference;
        let at = j.cur.as_ptr() as usize - self.cur_at;
        let entry = match (coded, dup) {
            (Some(((coding, payload), q)), _) => {
                let checksum = match &q {
                    Some(q) => {
                        self.changed += q.nonzero + q.escapes.len() as u64;
                        self.max_error = self.max_error.max(q.max_error);
                        self.digest.feed(at, &q.recon);
                        xxhash_rust::xxh3::xxh3_64(&q.recon)
                    }
                    None => {
                        self.digest.feed(at, c);
                        h.checksum
                    }
                };
                let e = ChunkEntry {
                    payload_offset: self.w.written,
                    payload_len: payload.len() as u32,
                    raw_len: c.len() as u32,
                    checksum,
                    coding,
                };
                self.w.write_all(&payload)?;
                e
            }
            (None, Some(k)) => {
                let e = self.entry_of[k].expect("the first copy comes earlier");
                // A duplicate decodes to what its first copy decodes to.
                if let (Codec::Quantized, Some((kind, bound))) = (e.coding.codec, j.lossy) {
                    // Quantizing is deterministic: the same bytes against
                    // the same reference give the same reconstruction.
                    let q = lossy::quantize(kind, bound, c, r);
                    self.digest.feed(at, &q.recon);
                } else {
                    self.digest.feed(at, c);
                }
                e
            }
            (None, None) => unreachable!("only duplicates are skipped"),
        };
        self.changed += match (entry.coding.codec, r) {
            // Counted above, from the bins.
            (Codec::Quantized, _) => 0,
            (Codec::Delta | Codec::Symbols | Codec::Symbols32, _) => entry.coding.nnz,
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
        self.entry_of[i] = Some(entry);
        self.tensors[j.tensor].chunks.push(entry);
        self.done += c.len() as u64;
        // Done with this window of the reference.
        if let Some(r) = r {
            mmap::release(r);
        }
        Ok(())
    }
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
fn split_lens_mut(mut buf: &mut [u8], lens: impl Iterator<Item = usize>) -> Vec<&mut [u8]> {
    lens.map(|len| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        buf = tail;
        head
    })
    .collect()
}

/// Splits `buf` into consecutive pieces of `lens`.
fn split_lens(mut buf: &[u8], lens: impl Iterator<Item = usize>) -> Vec<&[u8]> {
    lens.map(|len| {
        let (head, tail) = buf.split_at(len);
        buf = tail;
        head
    })
    .collect()
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

#[cfg(test)]
mod tests {
    use super::super::{plan, test_data, test_safetensors, EncodeOptions, InputKind};
    use super::*;
    use crate::codec::lossy::Bound;

    /// However the input is cut into windows (one chunk each, a few, all at
    /// once), the container is the same: duplicates are found across
    /// windows too.
    #[test]
    fn the_container_does_not_depend_on_the_windows() {
        // Two identical tensors and a third like the first's half: duplicate
        // chunks in other windows.
        let a: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let mut b = a.clone();
        b[3] = 7.0;
        let made = test_safetensors(&[("a", a.clone()), ("b", a.clone()), ("c", a[..64].to_vec())]);
        let made_ref = test_safetensors(&[("a", b.clone()), ("b", b), ("c", a[..64].to_vec())]);
        let cases: Vec<(Vec<u8>, Option<Vec<u8>>, InputKind)> = vec![
            (made.clone(), Some(made_ref), InputKind::Safetensors),
            (made, None, InputKind::Safetensors),
            (
                test_data("v1/cur.safetensors"),
                Some(test_data("v1/ref.safetensors")),
                InputKind::Safetensors,
            ),
            (
                test_data("v2/cur.pt"),
                Some(test_data("v2/ref.pt")),
                InputKind::Archive,
            ),
            (
                test_data("torch/step-2/optimizer.pt"),
                Some(test_data("torch/step-1/optimizer.pt")),
                InputKind::Opaque,
            ),
        ];
        for (cur, reference, input) in &cases {
            for lossy in [None, Some(Bound::MaxAbsError(1e-3))] {
                let opts = EncodeOptions {
                    chunk_size: 64,
                    input: *input,
                    lossy,
                    ..EncodeOptions::default()
                };
                let run = |window: usize, how: Input| {
                    let p = plan(cur, reference.as_deref(), &opts).unwrap();
                    let mut out = Vec::new();
                    let stats = execute_in_windows(p, &mut out, None, window, how).unwrap();
                    (out, stats)
                };
                let whole = run(usize::MAX, Input::Copied);
                // Read in place or copied, in windows of any size: the same
                // container.
                for window in [1, 100, 1000, usize::MAX] {
                    for how in [Input::Copied, Input::InPlace] {
                        assert!(
                            run(window, how) == whole,
                            "{input:?} {lossy:?}, windows of {window}, {how:?}"
                        );
                    }
                }
            }
        }
    }
}
