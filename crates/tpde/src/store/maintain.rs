//! Keeping a store right: verify (every object against its name, every
//! step restored), check_against, remove and prune (re-coding the steps
//! that lose their reference), and what every write shares: its beginning,
//! its commit (the backend's compare and swap of the manifest), garbage
//! collection and the mapping of lost races to [`Error::Conflict`].
//!
//! May call: `container::format`, `common`, the store's [`super::manifest`],
//! [`super::add`] / [`super::get`] (re-coding) and the backend trait.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::backend::Version;
use super::get::{list_steps, Sink};
use super::{listed, Bytes, Checkpoint, Files, Store, Txn, VerifyReport};
use super::{Manifest, StepRecord};
use crate::common::error::{Error, Result};
use crate::container::format;

impl Store {
    /// Checks every content file against its name and restores every step,
    /// comparing each file with its recorded digest.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let mut report = VerifyReport {
            steps: m.steps.len(),
            ..VerifyReport::default()
        };
        // Content files: their bytes must hash to their names.
        let mut damaged: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for s in &m.steps {
            for f in &s.files {
                report.files += 1;
                if !seen.insert(&f.object) {
                    continue;
                }
                let path = self.backend.object_display(&f.object);
                let digest = self.backend.object_digest(&f.object).map_err(|e| match e {
                    Error::Io { err: source, .. } => source.to_string(),
                    e => e.to_string(),
                });
                let problem = match digest {
                    Ok(d) if d == f.object => continue,
                    Ok(_) => "is damaged (its bytes do not hash to its name)".to_string(),
                    Err(e) => format!("cannot be read: {e}"),
                };
                damaged.insert(&f.object);
                for s2 in &m.steps {
                    for f2 in s2.files.iter().filter(|f2| f2.object == f.object) {
                        report.problems.push(format!(
                            "step {}, file {}: content file {path} {problem}",
                            s2.step, f2.path,
                        ));
                    }
                }
            }
        }
        // Every step, in order, each decoded once.
        let mut dependants: HashMap<u64, usize> = HashMap::new();
        for s in &m.steps {
            if let Some(r) = s.reference {
                *dependants.entry(r).or_default() += 1;
            }
        }
        let mut cache: HashMap<u64, Files> = HashMap::new();
        let mut broken: HashSet<u64> = HashSet::new();
        for s in &m.steps {
            let reference = match s.reference {
                Some(r) if broken.contains(&r) => {
                    report.problems.push(format!(
                        "step {}: cannot be restored, its reference step {r} is damaged",
                        s.step
                    ));
                    broken.insert(s.step);
                    None
                }
                Some(r) => cache.get(&r),
                None => None,
            };
            if !broken.contains(&s.step) {
                let mut files = Files::new();
                for f in &s.files {
                    if damaged.contains(f.object.as_str()) {
                        broken.insert(s.step);
                        continue;
                    }
                    let r = if f.delta {
                        reference.and_then(|rf| rf.get(f.ref_path())).map(|b| &**b)
                    } else {
                        None
                    };
                    match self.decode_file(s.step, f, r) {
                        Ok(b) => {
                            report.bytes += b.len() as u64;
                            files.insert(f.path.clone(), b);
                        }
                        Err(e) => {
                            report.problems.push(e.to_string());
                            broken.insert(s.step);
                        }
                    }
                }
                if !broken.contains(&s.step) && dependants.get(&s.step).is_some_and(|&n| n > 0) {
                    cache.insert(s.step, files);
                }
            }
            if let Some(r) = s.reference {
                if let Some(n) = dependants.get_mut(&r) {
                    *n -= 1;
                    if *n == 0 {
                        cache.remove(&r);
                    }
                }
            }
        }
        (report.leftovers, report.foreign) = self.backend.scan(&listed(&m))?;
        Ok(report)
    }

    /// Checks that step `step` restores to exactly the files at `original`
    /// (before deleting an original): every file of the step is decoded and
    /// checked against its recorded digest, which must be that of the
    /// original's file (or, stored lossy, of its reconstruction).
    pub fn check_against(&self, step: u64, original: &Path) -> Result<()> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let rec = m
            .get(step)
            .ok_or_else(|| self.err(format!("no step {step} (stored: {})", list_steps(&m))))?;
        let ck = Checkpoint::from_path(original)?;
        let same = rec.files.len() == ck.files.len()
            && rec.files.iter().zip(&ck.files).all(|(f, (p, b))| {
                f.path == *p
                    && f.len == b.len() as u64
                    && (f.lossy.is_some()
                        || format::digest_hex(crate::common::mmap::digest_released(b)) == f.digest)
            })
            && rec.dirs == ck.dirs;
        if !same {
            return Err(self.err(format!(
                "step {step} does not restore to {}",
                original.display()
            )));
        }
        // Every file decodes to its digest (checked as it is decoded).
        self.restore_files(&m, step, None, Sink::Discard)
            .map(|_| ())
    }

    /// Removes one step. Steps coded against it are re-coded first (against
    /// its own reference, or as keyframes), so every other step stays
    /// restorable. Returns the re-coded steps.
    pub fn remove(&self, step: u64) -> Result<Vec<u64>> {
        self.remove_steps(&BTreeSet::from([step]))
    }

    /// Removes every step except the last `keep_last` and those whose step
    /// number is a multiple of `keep_every`. Returns the removed steps.
    pub fn prune(&self, keep_last: usize, keep_every: Option<u64>) -> Result<Vec<u64>> {
        if keep_every == Some(0) {
            return Err(Error::InvalidArgument(
                "--keep-every must be at least 1".into(),
            ));
        }
        let m = self.manifest()?;
        let n = m.steps.len();
        let remove: BTreeSet<u64> = m
            .steps
            .iter()
            .enumerate()
            .filter(|&(i, s)| i + keep_last < n && keep_every.is_none_or(|k| s.step % k != 0))
            .map(|(_, s)| s.step)
            .collect();
        if remove.is_empty() {
            return Ok(Vec::new());
        }
        self.remove_steps(&remove)?;
        Ok(remove.into_iter().collect())
    }

    /// Removes `remove` in one commit, re-coding the kept steps whose
    /// reference goes against their nearest kept ancestor.
    pub fn remove_steps(&self, remove: &BTreeSet<u64>) -> Result<Vec<u64>> {
        let txn = self.begin_write()?;
        let started = txn.started();
        self.remove_in(txn, remove)
            .map_err(|e| self.lost_race(&started, e))
    }

    fn remove_in(&self, txn: Txn, remove: &BTreeSet<u64>) -> Result<Vec<u64>> {
        let m = txn.base.clone();
        if let Some(s) = remove.iter().find(|s| m.get(**s).is_none()) {
            return Err(self.err(format!("no step {s} (stored: {})", list_steps(&m))));
        }
        self.collect_garbage(&txn, &m, false)?;
        let mut new = m.clone();
        new.steps.retain(|s| !remove.contains(&s.step));
        let mut recoded = Vec::new();
        for rec in &m.steps {
            if remove.contains(&rec.step) || !rec.reference.is_some_and(|r| remove.contains(&r)) {
                continue;
            }
            let mut anchor = rec.reference;
            while let Some(a) = anchor.filter(|a| remove.contains(a)) {
                anchor = m.get(a).and_then(|s| s.reference);
            }
            let mut files = self.restore_files(&m, rec.step, None, Sink::Keep)?;
            let ck = Checkpoint {
                name: rec.name.clone(),
                kind: rec.kind,
                files: rec
                    .files
                    .iter()
                    .map(|f| {
                        (
                            f.path.clone(),
                            files.remove(&f.path).unwrap_or(Bytes::Owned(Vec::new())),
                        )
                    })
                    .collect(),
                dirs: rec.dirs.clone(),
            };
            drop(files);
            // Coded exactly: what is stored is the (possibly lossy)
            // reconstruction, and a second quantization could add to its error.
            let coded = self.code_best(&txn, &m, rec.step, &ck, anchor, None, &mut |_| {})?;
            let coded = keep_lossy_note(rec, coded);
            new.put(coded);
            recoded.push(rec.step);
        }
        new.fix_depths();
        new.check()
            .map_err(|e| self.err(format!("internal: {e}")))?;
        self.commit(txn, &new)?;
        Ok(recoded)
    }

    /// A write that failed because another writer changed the store
    /// meanwhile (on object storage a content object it needed was removed
    /// by a concurrent `rm` or `prune`, say) lost a race: that is
    /// [`Error::Conflict`], which says to try again, whatever the symptom.
    /// A locked store's manifest has no version, and never changes under a
    /// write.
    pub(crate) fn lost_race(&self, started: &Version, e: Error) -> Error {
        if !matches!(e, Error::Conflict(_)) {
            let now = self
                .backend
                .read_manifest()
                .ok()
                .map(|m| m.and_then(|(_, v)| v));
            if now.is_some_and(|v| v != *started) {
                return Error::Conflict(self.root.clone());
            }
        }
        e
    }

    /// Begins a write: the backend's lease on the store (a local store's
    /// lock) and the manifest it begins from.
    pub(crate) fn begin_write(&self) -> Result<Txn> {
        let (lease, text) = self.backend.begin_write()?;
        let base = self.parse_manifest(&text)?;
        let listed = listed(&base).into_iter().map(str::to_string).collect();
        Ok(Txn {
            lease,
            base,
            listed,
        })
    }

    /// Publishes `new` as the result of `txn` (the backend's compare and
    /// swap: [`Error::Conflict`] when another writer committed since `txn`
    /// began), then removes what no longer belongs.
    pub(crate) fn commit(&self, txn: Txn, new: &Manifest) -> Result<()> {
        let text = self.manifest_bytes(new)?;
        self.backend
            .publish_manifest(&txn.lease, text, &listed(new))?;
        self.collect_garbage(&txn, new, true)?;
        // The lease (a local store's lock) is held until here.
        drop(txn);
        Ok(())
    }

    /// Deletes what the backend says this write may: content objects and
    /// temporary files the store wrote that `new` does not list, each
    /// checked again just before. `committed`: `new` is published (before
    /// that, only a locked store deletes anything).
    pub(crate) fn collect_garbage(&self, txn: &Txn, new: &Manifest, committed: bool) -> Result<()> {
        let old = listed(&txn.base);
        let doomed = self
            .backend
            .collectable(&txn.lease, &old, &listed(new), committed)?;
        for g in &doomed {
            self.backend.delete(g)?;
        }
        Ok(())
    }
}

/// A re-coded step keeps saying that its files are a lossy reconstruction.
fn keep_lossy_note(old: &StepRecord, mut new: StepRecord) -> StepRecord {
    for f in &mut new.files {
        f.lossy = old
            .files
            .iter()
            .find(|o| o.path == f.path)
            .and_then(|o| o.lossy);
    }
    new
}
