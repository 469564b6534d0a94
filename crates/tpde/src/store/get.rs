//! Restoring a step: its chain walked from the keyframe, each file decoded
//! against the file of the step before it, only the files the step asked
//! for needs; to memory, to disk beside an output (through
//! [`super::output`]), or only checked. Decoded files larger than
//! [`SPILL_BYTES`] go to memory-mapped temporary files in the backend's
//! spill area.
//!
//! May call: `container` (decode, format), `common`, the store's
//! [`super::manifest`], [`super::output`] and the backend trait.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::output::build_beside;
pub(crate) use super::output::Sink;
use super::{Bytes, Files, Restored, Store};
use super::{FileRecord, Manifest, StepRecord};
use crate::common::atomic::Replace;
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;
use crate::container::format;

/// A decoded file larger than this is written to an unnamed temporary file
/// and memory-mapped rather than held in memory, so that restoring or
/// coding against a checkpoint of any size holds only windows of it.
pub(crate) const SPILL_BYTES: u64 = 64 << 20;

impl Store {
    /// Decodes the content file of `f` (of step `step`) against `reference`:
    /// in memory, or (larger than [`SPILL_BYTES`]) into an unnamed temporary
    /// file, memory-mapped.
    pub(crate) fn decode_file(
        &self,
        step: u64,
        f: &FileRecord,
        reference: Option<&[u8]>,
    ) -> Result<Bytes> {
        if f.len <= self.spill_bytes.load(Ordering::Relaxed) {
            return self.decode_file_in_memory(step, f, reference);
        }
        let dir = self.backend.spill_dir();
        let what = |e: std::io::Error| {
            self.err(format!(
                "step {step}, file {}: a temporary file in {}: {e}",
                f.path,
                dir.display()
            ))
        };
        let mut file = tempfile::tempfile_in(&dir).map_err(what)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        self.decode_file_to(step, f, reference, &mut w)?;
        w.flush().map_err(what)?;
        drop(w);
        FileBytes::from_file(&file, &dir).map(Bytes::Mapped)
    }

    /// An error about the content file of `f` (of step `step`), naming both.
    fn content_error<'a>(
        &'a self,
        step: u64,
        f: &'a FileRecord,
    ) -> impl Fn(&dyn std::fmt::Display) -> Error + 'a {
        let path = self.backend.object_display(&f.object);
        move |e| {
            self.err(format!(
                "step {step}, file {}: content file {path}: {e}",
                f.path
            ))
        }
    }

    /// The bytes of the content file of `f` (of step `step`).
    fn content_file(&self, step: u64, f: &FileRecord) -> Result<FileBytes> {
        let what = self.content_error(step, f);
        self.backend.get_object(&f.object).map_err(|e| match e {
            Error::Io { err: source, .. } => what(&source),
            e => what(&e),
        })
    }

    /// [`Store::decode_file`] in memory: the chunks decoded straight into
    /// the file's bytes.
    fn decode_file_in_memory(
        &self,
        step: u64,
        f: &FileRecord,
        reference: Option<&[u8]>,
    ) -> Result<Bytes> {
        let what = self.content_error(step, f);
        let bytes = self.content_file(step, f)?;
        let (out, stats) = crate::container::decode::decode_to_vec(&bytes, reference, f.len)
            .map_err(|e| what(&e))?;
        if format::digest_hex(stats.output_digest) != f.digest {
            return Err(what(&"decodes to a file other than the one stored"));
        }
        Ok(Bytes::Owned(out))
    }

    /// Decodes the content file of `f` into `out`, checking that what comes
    /// out is the file the manifest lists.
    fn decode_file_to(
        &self,
        step: u64,
        f: &FileRecord,
        reference: Option<&[u8]>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let what = self.content_error(step, f);
        let bytes = self.content_file(step, f)?;
        // `decode` checks the whole output against the container's digest.
        let stats = crate::container::decode::decode(&bytes, reference, out, None).map_err(
            |e| match e {
                Error::Io { err: source, .. } => {
                    what(&format!("writing the decoded file: {source}"))
                }
                e => what(&e),
            },
        )?;
        if format::digest_hex(stats.output_digest) != f.digest || stats.original_len != f.len {
            return Err(what(&"decodes to a file other than the one stored"));
        }
        Ok(())
    }

    /// The bytes `f` (a file of step `rec`) is coded against, among the
    /// decoded `files` of its reference step; `None` for a file coded alone.
    pub(crate) fn reference_of<'f>(
        &self,
        rec: &StepRecord,
        f: &FileRecord,
        files: &'f Files,
    ) -> Result<Option<&'f [u8]>> {
        if !f.delta {
            return Ok(None);
        }
        let bytes = files.get(f.ref_path()).ok_or_else(|| {
            self.err(format!(
                "step {}, file {}: its reference step {:?} lacks the file {}",
                rec.step,
                f.path,
                rec.reference,
                f.ref_path()
            ))
        })?;
        Ok(Some(&**bytes))
    }

    /// Decodes the files of `step` (all, or those in `want`) by walking its
    /// chain from the keyframe, keeping only what the next step needs.
    /// `sink` says where the files of `step` itself go.
    pub(crate) fn restore_files(
        &self,
        m: &Manifest,
        step: u64,
        want: Option<&HashSet<String>>,
        sink: Sink<'_>,
    ) -> Result<Files> {
        let chain = m.chain(step);
        if chain.is_empty() {
            return Err(self.err(format!("no step {step}")));
        }
        // need[i]: the paths of chain[i] to decode.
        let mut need: Vec<HashSet<&str>> = vec![HashSet::new(); chain.len()];
        let last = chain.len() - 1;
        need[last] = chain[last]
            .files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| want.is_none_or(|w| w.contains(*p)))
            .collect();
        for i in (1..chain.len()).rev() {
            let next: HashSet<&str> = chain[i]
                .files
                .iter()
                .filter(|f| f.delta && need[i].contains(f.path.as_str()))
                .map(|f| f.ref_path())
                .collect();
            need[i - 1] = next;
        }
        let mut cur = Files::new();
        for (i, rec) in chain.iter().enumerate() {
            let mut next = Files::new();
            for f in rec
                .files
                .iter()
                .filter(|f| need[i].contains(f.path.as_str()))
            {
                let reference = self.reference_of(rec, f, &cur)?;
                match sink {
                    Sink::Dir(dir) if i == last => self.decode_into(dir, rec.step, f, reference)?,
                    Sink::File(file) if i == last => {
                        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
                        self.decode_file_to(rec.step, f, reference, &mut w)?;
                        w.flush()
                            .map_err(|e| self.err(format!("writing the output: {e}")))?;
                    }
                    Sink::Discard if i == last => {
                        self.decode_file_to(rec.step, f, reference, &mut std::io::sink())?
                    }
                    Sink::Memory => {
                        let bytes = self.decode_file_in_memory(rec.step, f, reference)?;
                        next.insert(f.path.clone(), bytes);
                    }
                    _ => {
                        let bytes = self.decode_file(rec.step, f, reference)?;
                        next.insert(f.path.clone(), bytes);
                    }
                }
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Decodes file `f` of step `step` to `dir/<its path>`, fsynced.
    fn decode_into(
        &self,
        dir: &Path,
        step: u64,
        f: &FileRecord,
        reference: Option<&[u8]>,
    ) -> Result<()> {
        let p = dir.join(&f.path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let file = File::create(&p).map_err(|e| Error::io(&p, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        self.decode_file_to(step, f, reference, &mut w)?;
        let file = w.into_inner().map_err(|e| Error::io(&p, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&p, e))
    }

    /// Restores step `step` in memory.
    pub fn restore(&self, step: u64) -> Result<Restored> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let rec = m
            .get(step)
            .ok_or_else(|| self.err(format!("no step {step} (stored: {})", list_steps(&m))))?;
        let mut files = self.restore_files(&m, step, None, Sink::Memory)?;
        Ok(Restored {
            name: rec.name.clone(),
            kind: rec.kind,
            files: rec
                .files
                .iter()
                .map(|f| {
                    let bytes = files.remove(&f.path).map(Bytes::into_vec);
                    (f.path.clone(), bytes.unwrap_or_default())
                })
                .collect(),
            dirs: rec.dirs.clone(),
        })
    }

    /// Restores step `step` to `out` (a file or a folder, as it was added),
    /// atomically: `out` appears whole or not at all. `out` must not exist.
    /// The files are decoded straight to disk (a checkpoint of any size);
    /// returns the step's record.
    pub fn get(&self, step: u64, out: &Path) -> Result<StepRecord> {
        self.get_with(step, out, Replace::No)
    }

    /// [`Store::get`], and with [`Replace::Yes`] an existing regular file at
    /// `out` is replaced (atomically for a single-file step; a folder or
    /// anything but a regular file is never replaced).
    pub fn get_with(&self, step: u64, out: &Path, replace: Replace) -> Result<StepRecord> {
        match std::fs::symlink_metadata(out) {
            Err(_) => {}
            Ok(m) if replace == Replace::Yes && m.is_file() => {}
            Ok(m) if m.is_file() => {
                return Err(Error::InvalidArgument(format!(
                    "{} exists already; tpde does not overwrite it (-f/--force to replace it)",
                    out.display()
                )))
            }
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} exists already and is not a regular file; tpde does not replace it",
                    out.display()
                )))
            }
        }
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let rec = m
            .get(step)
            .ok_or_else(|| self.err(format!("no step {step} (stored: {})", list_steps(&m))))?;
        build_beside(out, rec.kind, &rec.dirs, replace, |sink| {
            self.restore_files(&m, step, None, sink)?;
            if let Some(hook) = &self.after_decode {
                hook();
            }
            Ok(())
        })?;
        Ok(rec.clone())
    }
}

pub(crate) fn list_steps(m: &Manifest) -> String {
    if m.steps.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = m.steps.iter().map(|s| s.step.to_string()).collect();
    v.join(", ")
}
