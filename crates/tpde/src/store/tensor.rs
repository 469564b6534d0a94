//! One tensor of a stored step, without restoring the step: [`StepView`].
//!
//! A tensor of a safetensors file is decoded from its own chunks, against
//! the same tensor of the file its file is coded against (the reference
//! step's file at [`FileRecord::ref_path`]), and so on down the chain until
//! a tensor that reads no reference (a keyframe's, or one coded on its own).
//! Only the index and the chunks of that one tensor are read from each
//! content file on the way; whole files are never decoded, except, as a
//! fallback, a reference file that is not stored as safetensors.
//!
//! Each chunk is checked against its checksum, each content file against
//! what the manifest says it decodes to (length and digest, from its
//! index), and each reference against the identity the delta records; the
//! whole-file digest of the step is not (that would read every byte).
//!
//! May call: `container` (decode, format), `source` (safetensors headers),
//! `common`, the store's manifest and backend.

use std::collections::HashSet;
use std::sync::Mutex;

use super::get::list_steps;
use super::output::Sink;
use super::{FileRecord, Manifest, StepRecord, Store};
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;
use crate::container::decode::{decode_tensor_against, tensor_needs_reference, DecodeOptions};
use crate::container::format::{self, Container, SourceKind, FILE_HEADER_LEN, TRAILER_LEN};
use crate::source::safetensors::{self, TensorInfo};

/// The file `Store.save` (Python) writes the tensors of a step into: the
/// file a [`StepView`] opens when none is named and the step has it.
pub const SAVED_TENSORS: &str = "tensors.safetensors";

/// What reading tensors through a [`StepView`] has cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Content files opened (one per step of each chain walked).
    pub objects: u64,
    /// Bytes of their file headers, indexes and trailers.
    pub index_bytes: u64,
    /// Bytes of the chunk payloads decoded (and of whole content files
    /// decoded as a fallback).
    pub payload_bytes: u64,
    /// Chunks decoded.
    pub chunks: u64,
    /// Tensors decoded, those of reference steps included.
    pub tensors: u64,
}

impl ReadStats {
    /// Counts one decoded tensor: its chunks and their payload bytes.
    pub(crate) fn count_tensor(&mut self, t: &crate::container::format::TensorView) {
        self.tensors += 1;
        self.chunks += t.entry.chunks.len() as u64;
        self.payload_bytes += t
            .entry
            .chunks
            .iter()
            .map(|k| k.payload_len as u64)
            .sum::<u64>();
    }

    /// Stored bytes read: index and payload bytes.
    pub fn bytes(&self) -> u64 {
        self.index_bytes + self.payload_bytes
    }

    fn add(&mut self, o: &ReadStats) {
        self.objects += o.objects;
        self.index_bytes += o.index_bytes;
        self.payload_bytes += o.payload_bytes;
        self.chunks += o.chunks;
        self.tensors += o.tensors;
    }
}

/// One safetensors file of a stored step, opened for reading tensor by
/// tensor ([`Store::open_step`]). The store's read lock is held only while
/// a call reads; a tensor read after the step was re-coded or removed (by
/// `rm`, `prune` or a new `add` of the step) is an error.
#[derive(Debug)]
pub struct StepView<'s> {
    store: &'s Store,
    step: u64,
    file: String,
    /// The content file of `file` when the view was opened.
    object: String,
    tensors: Vec<TensorInfo>,
    metadata: Option<String>,
    stats: Mutex<ReadStats>,
}

impl Store {
    /// Opens file `file` of step `step` for reading tensor by tensor; with
    /// `file` `None`, the step's only safetensors file, or `Store.save`'s
    /// `tensors.safetensors`. A missing step, file or tensor is an error
    /// naming the close ones; a torch archive or another kind of file is
    /// refused (restore it with [`Store::get`]).
    pub fn open_step(&self, step: u64, file: Option<&str>) -> Result<StepView<'_>> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let rec = self.step_record(&m, step)?;
        let f = self.pick_file(rec, file)?;
        let mut stats = ReadStats::default();
        let bytes = self.object(step, f)?;
        let c = self.open_container(step, f, &bytes, &mut stats)?;
        let metadata = safetensors::parse_header(&c.index.header_block, c.index.original_len)
            .ok()
            .and_then(|h| h.metadata)
            .map(|m| m.get().to_string());
        Ok(StepView {
            store: self,
            step,
            file: f.path.clone(),
            object: f.object.clone(),
            tensors: c.tensors.iter().map(|t| t.info.clone()).collect(),
            metadata,
            stats: Mutex::new(stats),
        })
    }

    /// The bytes of file `path` of step `step` alone (the other files of
    /// the step are not decoded, nor those of its chain that it does not
    /// need), and what they cost: whole content files along its chain.
    pub fn read_file(&self, step: u64, path: &str) -> Result<(Vec<u8>, ReadStats)> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let rec = self.step_record(&m, step)?;
        let f = self.find_file(rec, path)?;
        let want = HashSet::from([f.path.clone()]);
        let mut files = self.restore_files(&m, step, Some(&want), Sink::Keep)?;
        let bytes = files
            .remove(&f.path)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Ok((bytes, chain_stats(&m, step, &f.path)))
    }

    /// Step `step`'s record, or an error naming the closest stored steps.
    pub(crate) fn step_record<'m>(&self, m: &'m Manifest, step: u64) -> Result<&'m StepRecord> {
        m.get(step).ok_or_else(|| {
            let mut near: Vec<u64> = m.steps.iter().map(|s| s.step).collect();
            near.sort_by_key(|s| s.abs_diff(step));
            near.truncate(5);
            near.sort_unstable();
            let near: Vec<String> = near.iter().map(u64::to_string).collect();
            self.err(if near.is_empty() {
                format!("no step {step}: the store holds no step")
            } else {
                format!(
                    "no step {step} (the closest stored: {}; all: {})",
                    near.join(", "),
                    shorten(&list_steps(m), 200)
                )
            })
        })
    }

    /// The file of `rec` to read tensors from.
    fn pick_file<'m>(&self, rec: &'m StepRecord, file: Option<&str>) -> Result<&'m FileRecord> {
        let step = rec.step;
        let f = match file {
            Some(path) => self.find_file(rec, path)?,
            None => self.default_file(rec)?,
        };
        if f.coding != SourceKind::Safetensors.name() {
            let hint = if f.coding == SourceKind::Archive.name() {
                "tensors are read one by one from safetensors files only; restore the \
                 step (tpde store get) and torch.load the file"
            } else {
                "it holds no tensors; restore it with tpde store get"
            };
            return Err(self.err(format!(
                "step {step}, file {}: stored as {}; {hint}",
                f.path, f.coding
            )));
        }
        Ok(f)
    }

    pub(super) fn find_file<'m>(&self, rec: &'m StepRecord, path: &str) -> Result<&'m FileRecord> {
        rec.files.iter().find(|f| f.path == path).ok_or_else(|| {
            self.err(format!(
                "step {} has no file {path:?}{}",
                rec.step,
                close_list(path, paths(rec).into_iter())
            ))
        })
    }

    /// The file of `rec` read when none is named: `Store.save`'s, or the
    /// only safetensors file.
    fn default_file<'m>(&self, rec: &'m StepRecord) -> Result<&'m FileRecord> {
        let step = rec.step;
        if let Some(f) = rec.files.iter().find(|f| f.path == SAVED_TENSORS) {
            return Ok(f);
        }
        let st: Vec<&FileRecord> = rec
            .files
            .iter()
            .filter(|f| f.coding == SourceKind::Safetensors.name())
            .collect();
        match st[..] {
            [f] => Ok(f),
            [] => Err(self.err(format!(
                "step {step} has no safetensors file (its files: {})",
                shorten(&paths(rec).join(", "), 300)
            ))),
            _ => Err(self.err(format!(
                "step {step} has {} safetensors files: name one ({})",
                st.len(),
                shorten(
                    &st.iter()
                        .map(|f| f.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    300
                )
            ))),
        }
    }

    pub(super) fn object(&self, step: u64, f: &FileRecord) -> Result<FileBytes> {
        self.backend.get_object(&f.object).map_err(|e| {
            let e = match e {
                Error::Io { err, .. } => err.to_string(),
                e => e.to_string(),
            };
            self.err(format!(
                "step {step}, file {}: content file {}: {e}",
                f.path,
                self.backend.object_display(&f.object)
            ))
        })
    }

    /// Opens the content file of `f` and checks that it is the file the
    /// manifest lists; counts its index.
    pub(super) fn open_container<'b>(
        &self,
        step: u64,
        f: &FileRecord,
        bytes: &'b [u8],
        stats: &mut ReadStats,
    ) -> Result<Container<'b>> {
        let what = |e: &dyn std::fmt::Display| {
            self.err(format!(
                "step {step}, file {}: content file {}: {e}",
                f.path,
                self.backend.object_display(&f.object)
            ))
        };
        let c = Container::open(bytes).map_err(|e| what(&e))?;
        if c.index.original_len != f.len || format::digest_hex(c.index.original_digest) != f.digest
        {
            return Err(what(&"decodes to a file other than the one stored"));
        }
        stats.objects += 1;
        stats.index_bytes += frame_len(bytes);
        Ok(c)
    }

    /// Decodes tensor `name` of file `path` of step `step` along its chain.
    fn chain_tensor(
        &self,
        m: &Manifest,
        step: u64,
        path: &str,
        name: &str,
        stats: &mut ReadStats,
    ) -> Result<Vec<u8>> {
        // Down the chain: the content file of each level, until a tensor
        // that reads no reference (or a reference not stored as safetensors).
        let mut levels: Vec<(u64, &FileRecord, FileBytes)> = Vec::new();
        let (mut s, mut p) = (step, path.to_string());
        let mut bottom: Option<Vec<u8>> = None;
        loop {
            let rec = self.step_record(m, s)?;
            let f = rec.files.iter().find(|f| f.path == p).ok_or_else(|| {
                self.err(format!(
                    "step {s} lacks the file {p}, the reference of step {}",
                    levels.last().map_or(step, |l| l.0)
                ))
            })?;
            if f.coding != SourceKind::Safetensors.name() {
                // A reference not stored as safetensors: the whole file.
                bottom = Some(self.whole_file_tensor(m, s, f, name, stats)?);
                break;
            }
            let bytes = self.object(s, f)?;
            let c = self.open_container(s, f, &bytes, stats)?;
            let ti = tensor_index(&c, name).ok_or_else(|| match levels.last() {
                None => self.missing_tensor(s, &f.path, name, &c),
                Some(l) => self.err(format!(
                    "step {s}, file {}: no tensor {name:?}, which step {}, file {} is coded \
                     against",
                    f.path, l.0, l.1.path
                )),
            })?;
            let needs = tensor_needs_reference(&c, ti);
            let next = if needs {
                Some(self.reference_file(m, s, &f.path, &c)?)
            } else {
                None
            };
            drop(c);
            levels.push((s, f, bytes));
            match next {
                Some((rs, rp)) => (s, p) = (rs, rp),
                None => break,
            }
        }
        // Up the chain: each level's tensor against the one below it.
        let mut below = bottom;
        for (s, f, bytes) in levels.iter().rev() {
            let c = Container::open(bytes).map_err(|e| self.err(e.to_string()))?;
            let ti = tensor_index(&c, name).expect("found on the way down");
            let reference = below.as_deref().filter(|_| tensor_needs_reference(&c, ti));
            let out = decode_tensor_against(&c, ti, reference, &DecodeOptions::default()).map_err(
                |e| {
                    self.err(format!(
                        "step {s}, file {}, tensor {name:?}: content file {}: {e}",
                        f.path,
                        self.backend.object_display(&f.object)
                    ))
                },
            )?;
            let t = &c.tensors[ti];
            stats.count_tensor(t);
            below = Some(out);
        }
        Ok(below.unwrap_or_default())
    }

    /// Tensor `name` of a reference file not stored as safetensors: the
    /// whole file restored, the tensor cut out of it.
    fn whole_file_tensor(
        &self,
        m: &Manifest,
        step: u64,
        f: &FileRecord,
        name: &str,
        stats: &mut ReadStats,
    ) -> Result<Vec<u8>> {
        let want = HashSet::from([f.path.clone()]);
        let files = self.restore_files(m, step, Some(&want), Sink::Keep)?;
        stats.add(&chain_stats(m, step, &f.path));
        let bytes = files.get(&f.path).map(|b| &b[..]).unwrap_or_default();
        let h = safetensors::parse(bytes).map_err(|e| {
            self.err(format!(
                "step {step}, file {}: a reference that is not a safetensors file: {e}",
                f.path
            ))
        })?;
        let t = h
            .get(name)
            .ok_or_else(|| self.err(format!("step {step}, file {}: no tensor {name:?}", f.path)))?;
        let start = (h.header_len + t.begin) as usize;
        Ok(bytes[start..start + t.len() as usize].to_vec())
    }

    fn missing_tensor(&self, step: u64, path: &str, name: &str, c: &Container<'_>) -> Error {
        let names = c.tensors.iter().map(|t| t.info.name.as_str());
        self.err(format!(
            "step {step}, file {path} has no tensor {name:?}{}",
            close_list(name, names)
        ))
    }
}

impl StepView<'_> {
    /// The step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The file's path in the step.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The content file the view reads (the XXH3-128 of its bytes, in
    /// hex): a view opened again reads the same file when this is the same.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The names of the file's tensors, in the file's order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// Every tensor's name, dtype and shape (its `begin` and `end` are
    /// offsets in the file's data).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The safetensors `__metadata__` of the file, as JSON text.
    pub fn metadata(&self) -> Option<&str> {
        self.metadata.as_deref()
    }

    /// The name, dtype and shape of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| self.no_tensor(name))
    }

    fn no_tensor(&self, name: &str) -> Error {
        self.store.err(format!(
            "step {}, file {} has no tensor {name:?}{}",
            self.step,
            self.file,
            close_list(name, self.tensors.iter().map(|t| t.name.as_str()))
        ))
    }

    /// The bytes of tensor `name` (little-endian, as stored; for a lossy
    /// step, the same reconstruction as a restore gives), decoding only its
    /// chunks and those of the same tensor along its chain.
    pub fn tensor(&self, name: &str) -> Result<Vec<u8>> {
        self.tensor_info(name)?;
        let s = self.store;
        let _lock = s.backend.read_lock()?;
        let m = s.load_manifest()?;
        let current = m
            .get(self.step)
            .and_then(|r| r.files.iter().find(|f| f.path == self.file));
        if current.is_none_or(|f| f.object != self.object) {
            return Err(s.err(format!(
                "step {}, file {}: changed or removed since it was opened (open it again)",
                self.step, self.file
            )));
        }
        let mut stats = ReadStats::default();
        let out = s.chain_tensor(&m, self.step, &self.file, name, &mut stats);
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&stats);
        out
    }

    /// What reading through this view has cost so far (opening it included).
    pub fn stats(&self) -> ReadStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The index of tensor `name` in `c`.
fn tensor_index(c: &Container<'_>, name: &str) -> Option<usize> {
    c.tensors.iter().position(|t| t.info.name == name)
}

/// Bytes of a container's file header, index and trailer (the container
/// has been opened, so its trailer is valid).
fn frame_len(bytes: &[u8]) -> u64 {
    let t = bytes.len() - TRAILER_LEN as usize;
    let index_len = u64::from_le_bytes(bytes[t + 8..t + 16].try_into().expect("8 bytes"));
    FILE_HEADER_LEN + index_len + TRAILER_LEN
}

/// What restoring file `path` of `step` alone reads: the whole content
/// files of its chain.
fn chain_stats(m: &Manifest, step: u64, path: &str) -> ReadStats {
    let mut st = ReadStats::default();
    let (mut s, mut p) = (Some(step), path.to_string());
    while let Some(f) = s
        .and_then(|s| m.get(s))
        .and_then(|r| Some((r, r.files.iter().find(|f| f.path == p)?)))
    {
        let (rec, f) = f;
        st.objects += 1;
        st.payload_bytes += f.stored_len;
        s = rec.reference.filter(|_| f.delta);
        p = f.ref_path().to_string();
    }
    st
}

fn paths(rec: &StepRecord) -> Vec<&str> {
    rec.files.iter().map(|f| f.path.as_str()).collect()
}

fn shorten(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// "; close names: a, b" (up to 5 of `names`), or "; it has none" / "; it
/// has N, first: ..." when none is close to `want`.
fn close_list<'a>(want: &str, names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return "; it has none".into();
    }
    let close = close_names(want, &names, 5);
    if close.is_empty() {
        let first: Vec<String> = names.iter().take(5).map(|n| format!("{n:?}")).collect();
        return format!(
            "; none is close ({} in all, first: {})",
            names.len(),
            first.join(", ")
        );
    }
    let close: Vec<String> = close.iter().map(|n| format!("{n:?}")).collect();
    format!("; close names: {}", close.join(", "))
}

/// Up to `n` of `names` close to `want`: by edit distance (of the first
/// 128 characters), then by the longest common prefix; only names within an
/// edit distance of half of `want`'s length, or sharing the first half of
/// it, or holding it whole.
pub(crate) fn close_names<'a>(want: &str, names: &[&'a str], n: usize) -> Vec<&'a str> {
    let w: Vec<char> = want.chars().take(128).collect();
    let mut scored: Vec<(usize, usize, &str)> = names
        .iter()
        .filter_map(|&name| {
            let c: Vec<char> = name.chars().take(128).collect();
            let d = edit_distance(&w, &c);
            let prefix = w.iter().zip(&c).take_while(|(a, b)| a == b).count();
            let near = d <= (w.len() / 2).max(2)
                || prefix * 2 >= w.len().max(2)
                || (!want.is_empty() && name.contains(want));
            near.then_some((d, usize::MAX - prefix, name))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, _, s)| s).collect()
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_rank_by_distance_then_prefix() {
        let names = [
            "model/layer.weight",
            "model/layer.bias",
            "optimizer/state/0/exp_avg",
            "model/layer2.weight",
            "other",
        ];
        let got = close_names("model/layer.weigth", &names, 5);
        assert_eq!(got[0], "model/layer.weight");
        assert!(got.contains(&"model/layer2.weight"));
        assert!(!got.contains(&"other"));
        assert_eq!(
            close_names("exp_avg", &names, 5),
            ["optimizer/state/0/exp_avg"]
        );
        assert!(close_names("zzzzzzzzzz", &names, 5).is_empty());
        assert!(close_list("zzzzzzzzzz", names.into_iter()).contains("none is close"));
        assert_eq!(close_list("x", std::iter::empty()), "; it has none");
    }

    #[test]
    fn edit_distances() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abc", "abc"), 0);
    }
}
