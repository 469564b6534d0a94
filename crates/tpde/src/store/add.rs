//! Adding a step: which stored step it is coded against, each file coded
//! against its partner there (up to [`FILES_IN_FLIGHT`] at once) or on its
//! own, the keyframe decision, and the commit. Content objects go to the
//! backend's `put_object`, hashed on the way.
//!
//! May call: `container` (encode, format), `codec::lossy`, and the store's
//! own [`super::manifest`], [`super::matching`], [`super::get`] (decoding
//! the reference) and the backend trait.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::get::Sink;
use super::manifest::safe_relative;
use super::{matching, Bytes, Checkpoint, Files, Store, Txn};
use super::{FileRecord, Manifest, StepRecord};
use crate::codec::lossy::Bound;
use crate::common::error::{Error, Result};
use crate::container::encode::{EncodeOptions, EncodeStats, InputKind};
use crate::container::format;

/// A delta is kept without trying a keyframe when it is smaller than this
/// share of the size a keyframe is expected to have (at the ratio of the
/// chain's keyframe); otherwise the step is also coded as a keyframe and the
/// smaller is kept. At 1.0 a keyframe is tried only when the delta does not
/// beat the expected keyframe at all: Adam moments gain only 5-10% from
/// their reference, and that still pays.
const DELTA_PAYS: f64 = 1.0;

/// Files of one step coded at once (each one is itself coded in parallel
/// over its chunks); at most this many files' working memory at a time.
const FILES_IN_FLIGHT: usize = 4;

/// Checkpoints up to this size are kept in memory by [`Store::keep_latest`];
/// a larger one is the reference of the next step through its chain.
const KEEP_LATEST_MAX: u64 = 1 << 30;

/// What a step is coded against: the reference step, its decoded files, and
/// for each file of the new step the path of its partner there (see
/// [`matching`]).
#[derive(Clone, Copy)]
struct Against<'a> {
    step: u64,
    files: &'a Files,
    partners: &'a HashMap<String, &'a str>,
}

impl Store {
    /// Writes a content object through `f` (as part of `txn`), hashing it
    /// on the way; returns its name.
    fn write_object(
        &self,
        txn: &Txn,
        f: impl FnOnce(&mut dyn Write) -> Result<EncodeStats>,
    ) -> Result<(String, EncodeStats)> {
        let mut object = self.backend.put_object(&txn.lease)?;
        let path = object.path().to_path_buf();
        let mut hw = HashWriter {
            inner: &mut *object,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        };
        let stats = f(&mut hw).map_err(|e| with_path(e, &path))?;
        let name = format::digest_hex(hw.hasher.digest128());
        object
            .finish(&name, txn.listed.contains(&name))
            .map_err(|e| with_path(e, &path))?;
        Ok((name, stats))
    }

    /// Codes one file of step `step` against the file of the same path in
    /// `reference`, if there is one.
    fn code_file(
        &self,
        txn: &Txn,
        step: u64,
        (path, bytes): &(String, Bytes),
        reference: Option<Against<'_>>,
        opts: &EncodeOptions,
    ) -> Result<FileRecord> {
        let ref_path = reference.and_then(|a| a.partners.get(path).copied());
        let ref_bytes = reference
            .zip(ref_path)
            .and_then(|(a, p)| a.files.get(p))
            .map(|b| &**b);
        let (object, stats) = self
            .write_object(txn, |w| match bytes {
                // The step's own memory, which nothing else changes meanwhile:
                // coded in place.
                Bytes::Owned(v) => {
                    crate::container::encode::encode_private(v, ref_bytes, opts, w, None)
                }
                Bytes::Mapped(m) => crate::container::encode::encode(m, ref_bytes, opts, w, None),
            })
            .map_err(|e| match e {
                // Typed, and naming the file already.
                e @ Error::InputChanged { .. } => e,
                e => self.err(format!("step {step}, file {path}: {e}")),
            })?;
        Ok(FileRecord {
            path: path.clone(),
            len: bytes.len() as u64,
            digest: format::digest_hex(stats.output_digest),
            object,
            stored_len: stats.encoded_len,
            delta: stats.reference_used,
            reference_path: ref_path
                .filter(|p| stats.reference_used && p != path)
                .map(str::to_string),
            coding: stats.source_kind.name().to_string(),
            lossy: stats.max_abs_error.and(opts.lossy),
        })
    }

    /// Codes the files of `ck` as step `step`, against `reference` or as a
    /// keyframe; a step none of whose files used its reference is recorded
    /// as a keyframe (it starts a new chain). Up to [`FILES_IN_FLIGHT`] files
    /// (the shards of a sharded checkpoint) are coded at once; the record
    /// lists them in path order whatever order they finish in.
    fn code_step(
        &self,
        txn: &Txn,
        step: u64,
        ck: &Checkpoint,
        reference: Option<Against<'_>>,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StepRecord> {
        let opts = EncodeOptions {
            input: InputKind::Auto,
            lossy,
            ..EncodeOptions::default()
        };
        let n = ck.files.len();
        let jobs = rayon::current_num_threads()
            .clamp(1, FILES_IN_FLIGHT)
            .min(n.max(1));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let mut files: Vec<Option<FileRecord>> = (0..n).map(|_| None).collect();
        let mut first_err: Option<(usize, Error)> = None;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<FileRecord>)>();
            for _ in 0..jobs {
                let tx = tx.clone();
                let (next, failed, opts) = (&next, &failed, &opts);
                scope.spawn(move || loop {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(file) = ck.files.get(i) else { break };
                    let r = self.code_file(txn, step, file, reference, opts);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut done = 0u64;
            for (i, r) in rx {
                match r {
                    Ok(rec) => {
                        done += rec.len;
                        progress(done);
                        if let Some(slot) = files.get_mut(i) {
                            *slot = Some(rec);
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        // Report the first file in path order that failed.
                        if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                            first_err = Some((i, e));
                        }
                    }
                }
            }
        });
        if let Some((_, e)) = first_err {
            return Err(e);
        }
        let files = files
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.err(format!("internal: step {step} has a file left uncoded")))?;
        let used = files.iter().any(|f| f.delta);
        Ok(StepRecord {
            step,
            name: ck.name.clone(),
            kind: ck.kind,
            reference: reference.filter(|_| used).map(|a| a.step),
            depth: 0, // set by Manifest::fix_depths
            dirs: ck.dirs.clone(),
            files,
        })
    }

    /// Codes `ck` as step `step` of `m`: against `reference` when that is
    /// given and the delta pays off against a keyframe, else as a keyframe.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn code_best(
        &self,
        txn: &Txn,
        m: &Manifest,
        step: u64,
        ck: &Checkpoint,
        reference: Option<u64>,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StepRecord> {
        let Some(r) = reference else {
            return self.code_step(txn, step, ck, None, lossy, progress);
        };
        let ref_rec = m
            .get(r)
            .ok_or_else(|| self.err(format!("internal: no reference step {r}")))?;
        let cur_paths: Vec<&str> = ck.files.iter().map(|(p, _)| p.as_str()).collect();
        let ref_paths: Vec<&str> = ref_rec.files.iter().map(|f| f.path.as_str()).collect();
        let partners = matching::match_files(&cur_paths, &ref_paths);
        if partners.is_empty() {
            return self.code_step(txn, step, ck, None, lossy, progress);
        }
        let wanted: HashSet<String> = partners.values().map(|p| p.to_string()).collect();
        let ref_files = match self.cached(m, r) {
            Some(files) => files,
            None => self.restore_files(m, r, Some(&wanted), Sink::Keep)?,
        };
        let against = Against {
            step: r,
            files: &ref_files,
            partners: &partners,
        };
        let delta = self.code_step(txn, step, ck, Some(against), lossy, progress)?;
        drop(ref_files);
        if delta.reference.is_none() {
            return Ok(delta); // nothing used the reference: a keyframe already
        }
        // The keyframe this step would be: estimated at the ratio of its
        // chain's keyframe when that was coded alike (the same lossy bound
        // on every file), else coded to compare like with like.
        let key = m.chain(r)[0];
        let alike = key.files.iter().all(|f| f.lossy == lossy);
        if alike {
            let key_ratio = stored(key) as f64 / original(key).max(1) as f64;
            let expected_key = key_ratio * ck.len() as f64;
            if (stored(&delta) as f64) < DELTA_PAYS * expected_key {
                return Ok(delta);
            }
        }
        let key = self.code_step(txn, step, ck, None, lossy, &mut |_| {})?;
        Ok(if stored(&key) <= stored(&delta) {
            key
        } else {
            delta
        })
    }

    /// The kept files of step `r`, when they are those the manifest lists.
    fn cached(&self, m: &Manifest, r: u64) -> Option<Files> {
        let mut slot = self.latest.as_ref()?.lock().ok()?;
        let (step, files) = slot.take()?;
        let rec = m.get(r)?;
        let same = step == r
            && rec.files.iter().all(|f| {
                files
                    .get(&f.path)
                    .is_some_and(|b| format::digest_hex(format::digest(b)) == f.digest)
            });
        same.then_some(files)
    }

    /// Adds the checkpoint file or folder at `path` as step `step`.
    pub fn add(&self, path: &Path, step: u64) -> Result<StepRecord> {
        self.add_checkpoint(&Checkpoint::from_path(path)?, step, None, &mut |_| {})
    }

    /// Adds a checkpoint as step `step`; `progress` is told the bytes coded
    /// so far. The step is coded against the stored step just before it,
    /// unless that would make its chain longer than the keyframe interval or
    /// the delta does not pay off. With `lossy`, its float tensors are stored
    /// within that bound of the original (against the reference's
    /// reconstruction, so errors do not add up along the chain).
    pub fn add_checkpoint(
        &self,
        ck: &Checkpoint,
        step: u64,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StepRecord> {
        let (rec, newest) = self.add_locked(ck, step, lossy, progress)?;
        if self.keeps(ck, newest) {
            let files = ck
                .files
                .iter()
                .map(|(p, b)| (p.clone(), Bytes::Owned(b.to_vec())))
                .collect();
            self.keep(step, files);
        }
        Ok(rec)
    }

    /// [`Store::add_checkpoint`] of a checkpoint handed over: kept by
    /// [`Store::keep_latest`] without a copy of its bytes.
    pub fn add_checkpoint_owned(
        &self,
        ck: Checkpoint,
        step: u64,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StepRecord> {
        let (rec, newest) = self.add_locked(&ck, step, lossy, progress)?;
        if self.keeps(&ck, newest) {
            self.keep(step, ck.files.into_iter().collect());
        }
        Ok(rec)
    }

    /// Adds `ck` as step `step` in a write transaction; returns its record
    /// and whether it is the newest step.
    fn add_locked(
        &self,
        ck: &Checkpoint,
        step: u64,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(StepRecord, bool)> {
        let txn = self.begin_write()?;
        let started = txn.started();
        self.add_in(txn, ck, step, lossy, progress)
            .map_err(|e| self.lost_race(&started, e))
    }

    /// Whether [`Store::keep_latest`] keeps `ck`, just added (as the
    /// `newest` step or not): the newest, and not too large.
    fn keeps(&self, ck: &Checkpoint, newest: bool) -> bool {
        self.latest.is_some() && newest && ck.len() <= KEEP_LATEST_MAX
    }

    /// Keeps `files` as those of step `step` (see [`Store::keeps`]).
    fn keep(&self, step: u64, files: Files) {
        if let Some(Ok(mut slot)) = self.latest.as_ref().map(|l| l.lock()) {
            *slot = Some((step, files));
        }
    }

    fn add_in(
        &self,
        txn: Txn,
        ck: &Checkpoint,
        step: u64,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(StepRecord, bool)> {
        let mut m = txn.base.clone();
        if m.get(step).is_some() {
            return Err(self.err(format!(
                "step {step} is stored already; remove it first with `tpde store rm`"
            )));
        }
        if !safe_relative(&ck.name) || ck.name.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "unusual checkpoint name {:?}",
                ck.name
            )));
        }
        self.collect_garbage(&txn, &m, false)?;
        let reference = m
            .steps
            .iter()
            .rev()
            .find(|s| s.step < step)
            .filter(|s| s.depth < m.keyframe_every)
            .map(|s| s.step);
        let rec = self.code_best(&txn, &m, step, ck, reference, lossy, progress)?;
        // Every input is as it was when it was opened: otherwise what was
        // coded may mix two versions of a file, and nothing is committed.
        for (_, bytes) in &ck.files {
            if let Bytes::Mapped(fb) = bytes {
                fb.check_unchanged()?;
            }
        }
        m.put(rec);
        m.fix_depths();
        self.commit(txn, &m)?;
        let newest = m.steps.last().is_some_and(|s| s.step == step);
        Ok((m.get(step).expect("just added").clone(), newest))
    }
}

/// An I/O error without a path (from a writer) gets the path written to.
pub(super) fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Io {
            path: None,
            err: source,
        } => Error::io(path, source),
        e => e,
    }
}

fn stored(s: &StepRecord) -> u64 {
    s.files.iter().map(|f| f.stored_len).sum()
}

fn original(s: &StepRecord) -> u64 {
    s.files.iter().map(|f| f.len).sum()
}

pub(super) struct HashWriter<'a> {
    pub(super) inner: &'a mut dyn Write,
    pub(super) hasher: xxhash_rust::xxh3::Xxh3,
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
