//! A step written by several processes at once: the ranks of a distributed
//! save (`torch.distributed.checkpoint` through the Python package's
//! `tpde.dcp`). Each rank codes its own files; one coordinator commits the
//! step.
//!
//! 1. The coordinator calls [`Store::plan_shared`]: the step must be new,
//!    and the reference every file is coded against is chosen as
//!    [`Store::add_checkpoint`] chooses it (the stored step before it,
//!    unless its chain is full). The [`SharedPlan`] (JSON) goes to every
//!    rank.
//! 2. Every rank calls [`Store::code_shared`] for each of its files: coded
//!    against the file of the same path in the reference step (the bytes
//!    the rank kept from its last save, when their digest is the one the
//!    plan names, else decoded from the store), and put as a *pending*
//!    object: durable, unlisted, out of reach of other writers' garbage
//!    collection for the grace period. No lock is held meanwhile, so the
//!    ranks code in parallel and readers are not held up.
//! 3. The coordinator gathers every rank's [`FileRecord`] and calls
//!    [`Store::commit_shared`]: under the write lock it checks that the
//!    step is still new and the reference step still holds the files the
//!    ranks coded against (else [`Error::Conflict`]), adopts the pending
//!    objects (each checked against its name), and publishes the manifest.
//!
//! A rank or coordinator that dies anywhere leaves no step: at most pending
//! objects, which a later write removes once they are older than the grace
//! period.
//!
//! May call: `container` (encode), the store's own add and get paths, the
//! backend trait.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::add::{with_path, HashWriter};
use super::backend::Lease;
use super::manifest::safe_relative;
use super::{EntryKind, FileRecord, StepRecord, Store, Txn};
use crate::codec::lossy::Bound;
use crate::common::error::{Error, Result};
use crate::container::encode::{EncodeOptions, InputKind};
use crate::container::format;

/// What every rank of a shared step codes against, as the coordinator
/// planned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedPlan {
    pub step: u64,
    /// The step coded against; `None`: a keyframe.
    pub reference: Option<u64>,
    /// The reference step's files: path to (length, XXH3-128 hex digest).
    pub reference_files: BTreeMap<String, (u64, String)>,
}

impl SharedPlan {
    /// The plan as JSON (what goes to the ranks).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan serializes")
    }

    /// A plan from [`SharedPlan::to_json`].
    pub fn from_json(text: &str) -> Result<SharedPlan> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("not a shared-step plan: {e}")))
    }
}

impl Store {
    /// Plans shared step `step` (the coordinator, before any rank codes):
    /// the step must not be stored yet; the reference is the stored step
    /// before it, unless that one's chain is full.
    pub fn plan_shared(&self, step: u64) -> Result<SharedPlan> {
        let m = self.manifest()?;
        if m.get(step).is_some() {
            return Err(self.err(format!(
                "step {step} is stored already; remove it first with `tpde store rm`"
            )));
        }
        let reference = m
            .steps
            .iter()
            .rev()
            .find(|s| s.step < step)
            .filter(|s| s.depth < m.keyframe_every);
        Ok(SharedPlan {
            step,
            reference: reference.map(|s| s.step),
            reference_files: reference
                .map(|s| {
                    s.files
                        .iter()
                        .map(|f| (f.path.clone(), (f.len, f.digest.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Codes `bytes` as file `path` of the shared step of `plan` (any rank,
    /// no lock held): against the file of the same path in the plan's
    /// reference step, if it has one — `kept` when those are its bytes
    /// (checked by digest), else decoded from the store — or on its own.
    /// The content object is put pending; the record goes to the
    /// coordinator's [`Store::commit_shared`].
    pub fn code_shared(
        &self,
        plan: &SharedPlan,
        path: &str,
        bytes: &[u8],
        kept: Option<&[u8]>,
        lossy: Option<Bound>,
    ) -> Result<FileRecord> {
        if !safe_relative(path) {
            return Err(Error::InvalidArgument(format!(
                "unusual file path {path:?}"
            )));
        }
        let step = plan.step;
        let reference = match (plan.reference, plan.reference_files.get(path)) {
            (Some(r), Some((len, digest))) => {
                let matches = |b: &[u8]| {
                    b.len() as u64 == *len && format::digest_hex(format::digest(b)) == *digest
                };
                match kept.filter(|b| matches(b)) {
                    Some(b) => Some(std::borrow::Cow::Borrowed(b)),
                    None => {
                        let (b, _) = self.read_file(r, path)?;
                        if !matches(&b) {
                            return Err(Error::Conflict(self.root.clone()));
                        }
                        Some(std::borrow::Cow::Owned(b))
                    }
                }
            }
            _ => None,
        };
        let opts = EncodeOptions {
            input: InputKind::Auto,
            lossy,
            ..EncodeOptions::default()
        };
        let lease = Lease::default();
        let mut object = self.backend.put_pending(&lease)?;
        let shown = object.path().to_path_buf();
        let mut hw = HashWriter {
            inner: &mut *object,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        };
        let stats =
            crate::container::encode::encode(bytes, reference.as_deref(), &opts, &mut hw, None)
                .map_err(|e| with_path(e, &shown))
                .map_err(|e| self.err(format!("step {step}, file {path}: {e}")))?;
        let name = format::digest_hex(hw.hasher.digest128());
        object
            .finish(&name, false)
            .map_err(|e| with_path(e, &shown))?;
        Ok(FileRecord {
            path: path.to_string(),
            len: bytes.len() as u64,
            digest: format::digest_hex(stats.output_digest),
            object: name,
            stored_len: stats.encoded_len,
            delta: stats.reference_used,
            reference_path: None,
            coding: stats.source_kind.name().to_string(),
            lossy: stats.max_abs_error.and(lossy),
        })
    }

    /// Commits the shared step of `plan` from the records of every rank's
    /// files (the coordinator, once every rank has coded): a folder step
    /// named `name`. Waits up to `wait` for another writer's lock. Fails
    /// with [`Error::Conflict`] when the store changed in a way the ranks'
    /// coding did not see (the step was stored meanwhile, the reference
    /// step was removed); nothing is committed then.
    pub fn commit_shared(
        &self,
        plan: &SharedPlan,
        name: &str,
        mut files: Vec<FileRecord>,
        wait: Duration,
    ) -> Result<StepRecord> {
        let step = plan.step;
        if !safe_relative(name) || name.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "unusual checkpoint name {name:?}"
            )));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut seen = HashSet::new();
        for f in &files {
            let bad = if !safe_relative(&f.path) {
                Some("an unusual path")
            } else if !seen.insert(f.path.as_str()) {
                Some("two records")
            } else if !super::backend::is_object_name(&f.object) {
                Some("a malformed object name")
            } else if f.reference_path.is_some()
                || (f.delta && !plan.reference_files.contains_key(&f.path))
            {
                Some("a reference the plan does not give")
            } else {
                None
            };
            if let Some(what) = bad {
                return Err(Error::InvalidArgument(format!(
                    "step {step}: file {:?} has {what}",
                    f.path
                )));
            }
        }
        let txn = self.begin_write_waiting(wait)?;
        let started = txn.started();
        self.commit_shared_in(txn, plan, name, files)
            .map_err(|e| self.lost_race(&started, e))
    }

    fn commit_shared_in(
        &self,
        txn: Txn,
        plan: &SharedPlan,
        name: &str,
        files: Vec<FileRecord>,
    ) -> Result<StepRecord> {
        let step = plan.step;
        let mut m = txn.base.clone();
        if m.get(step).is_some() {
            return Err(self.err(format!(
                "step {step} was stored by another writer during this save"
            )));
        }
        if let Some(r) = plan.reference {
            let now: Option<BTreeMap<String, (u64, String)>> = m.get(r).map(|s| {
                s.files
                    .iter()
                    .map(|f| (f.path.clone(), (f.len, f.digest.clone())))
                    .collect()
            });
            if now.as_ref() != Some(&plan.reference_files) {
                return Err(self.err(format!(
                    "step {r}, which step {step} was coded against, was removed or changed \
                     during the save (another writer: try again)"
                )));
            }
        }
        let objects: Vec<(String, u64)> = files
            .iter()
            .map(|f| (f.object.clone(), f.stored_len))
            .collect();
        self.backend.adopt_pending(&txn.lease, &objects)?;
        let used = files.iter().any(|f| f.delta);
        m.put(StepRecord {
            step,
            name: name.to_string(),
            kind: EntryKind::Dir,
            reference: plan.reference.filter(|_| used),
            depth: 0, // set by fix_depths
            dirs: Vec::new(),
            files,
        });
        m.fix_depths();
        m.check()
            .map_err(|e| self.err(format!("step {step} would make the manifest invalid: {e}")))?;
        self.commit(txn, &m)?;
        Ok(m.get(step).expect("just added").clone())
    }

    /// [`Store::begin_write`], waiting up to `wait` while another writer
    /// holds the store.
    fn begin_write_waiting(&self, wait: Duration) -> Result<Txn> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.begin_write() {
                Err(Error::Locked(_)) if start.elapsed() < wait => {
                    std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }
}
