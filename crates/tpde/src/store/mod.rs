//! The checkpoint store: a training run's checkpoints as keyframes and
//! deltas, any step back byte for byte.
//!
//! Every file of a checkpoint becomes one `.tpde` content object, coded
//! against the file of the same path in the reference step (the stored step
//! just before it) or on its own in a keyframe. Content objects are made
//! durable first; the manifest is published last, and only then are objects
//! that it no longer lists removed. A crash at any point leaves the previous
//! manifest, whose every object exists.
//!
//! This module and its siblings are the policy (chains, keyframes, which
//! reference, prune, verify, spill, garbage collection), written once over
//! the backend trait (`backend/mod.rs`); where the bytes live is the backend's
//! business: a local folder (flock, fsync, rename), or with the `s3` feature
//! `s3://bucket/prefix` on S3-compatible object storage (conditional puts;
//! see docs/STORE.md, "Object storage").
//!
//! - `mod.rs`: the public types, opening and creating, the manifest.
//! - `checkpoint`: a checkpoint as it is added.
//! - `add`: coding a step; `get`: restoring one; `output`: the atomic
//!   output of `get`; `maintain`: verify, rm, prune, commit, garbage.
//! - `manifest`, `matching`, [`watch`]: the commit record, which file is
//!   coded against which, finding a run's checkpoints.
//! - `shared`: a step coded by the ranks of a distributed save and
//!   committed by one of them; `ranges`: byte ranges of a stored file.
//! - `diff`, `report`: what changed between two steps, tensor by tensor,
//!   and over the whole run (the HTML, CSV and JSON report).
//!
//! May call: `container`, `codec::lossy`, `common`; nothing above.

mod add;
mod backend;
mod checkpoint;
mod diff;
mod get;
mod maintain;
mod manifest;
mod matching;
mod output;
mod ranges;
mod report;
mod shared;
mod tensor;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use backend::faulty::Faults;
pub use checkpoint::{Bytes, Checkpoint};
pub use diff::{tensor_group, DiffKind, DiffSort, FileDiff, StepDiff, TensorDiff};
pub use manifest::{EntryKind, FileRecord, Manifest, StepRecord};
pub use output::write_restored;
pub use report::{GroupCell, PairRow, RunReport, StepRow};
pub use shared::SharedPlan;
pub use tensor::{ReadStats, StepView, SAVED_TENSORS};

use crate::common::error::{Error, Result};
use backend::faulty::Faulty;
use backend::{Backend, Lease, MANIFEST};
use get::SPILL_BYTES;

/// Default keyframe interval of `tpde store init`.
pub const DEFAULT_KEYFRAME_EVERY: u32 = 10;

/// A checkpoint restored in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub name: String,
    pub kind: EntryKind,
    /// `(relative path, bytes)` in the manifest's order.
    pub files: Vec<(String, Vec<u8>)>,
    pub dirs: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub steps: usize,
    pub files: usize,
    /// Bytes restored and checked.
    pub bytes: u64,
    /// Each problem, naming the step and file.
    pub problems: Vec<String>,
    /// Files no manifest lists (left by an interrupted write; the next write
    /// removes them).
    pub leftovers: Vec<PathBuf>,
    /// Things in the store's folders that the store did not write (files
    /// with other names, links, FIFOs): never read, never deleted.
    pub foreign: Vec<PathBuf>,
}

/// A checkpoint store in a directory, or (feature `s3`) under an
/// `s3://bucket/prefix`.
pub struct Store {
    /// The directory, or the `s3://` URL.
    root: PathBuf,
    /// Where the bytes live.
    backend: Box<dyn Backend>,
    /// With [`Store::keep_latest`]: the files of the last step this handle
    /// added, the reference of the next add without decoding its chain.
    latest: Option<Mutex<Option<(u64, Files)>>>,
    /// Test hook: runs in `get` once the step is decoded, before its output
    /// gets its name.
    after_decode: Option<Box<dyn Fn() + Send + Sync>>,
    /// Decoded files larger than this go to temporary files.
    spill_bytes: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Decoded files of one step, by path.
type Files = HashMap<String, Bytes>;

/// A write in progress: the backend's lease (a local store's lock, the
/// manifest version on object storage) and the manifest it began from.
pub(crate) struct Txn {
    lease: Lease,
    base: Manifest,
    /// The content objects `base` lists.
    listed: HashSet<String>,
}

impl Txn {
    /// The manifest version the write began from.
    fn started(&self) -> backend::Version {
        self.lease.version.clone()
    }
}

/// The content objects `m` lists.
fn listed(m: &Manifest) -> HashSet<&str> {
    m.steps
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.object.as_str()))
        .collect()
}

impl Store {
    fn with_backend(backend: Box<dyn Backend>) -> Store {
        Store {
            root: backend.location().to_path_buf(),
            backend,
            latest: None,
            after_decode: None,
            spill_bytes: AtomicU64::new(SPILL_BYTES),
        }
    }

    /// A handle on the store at `location`, without checking that one is
    /// there: `s3://bucket/prefix` is on object storage (with the `s3`
    /// feature), anything else a local directory.
    fn at(location: &str) -> Result<Store> {
        backend::for_location(location).map(Store::with_backend)
    }

    fn local(dir: &Path) -> Store {
        Store::with_backend(Box::new(backend::local::Local::new(dir)))
    }

    /// Creates an empty store in `dir`: a new folder (its parent must
    /// exist), or an existing empty one. See [`Store::create`].
    pub fn init(dir: &Path, keyframe_every: u32) -> Result<Store> {
        Store::create(dir, keyframe_every, false)
    }

    /// Creates an empty store in `dir`, and with `parents` the folders above
    /// it that are missing. `dir` must be new or empty: a store deletes what
    /// it wrote in its folder, so it is never made where other files are.
    /// Several processes creating the same store at once are serialized by
    /// the store's lock: one creates it, the others get "already holds a
    /// store" (see [`Store::open_or_create`]).
    pub fn create(dir: &Path, keyframe_every: u32, parents: bool) -> Result<Store> {
        Store::local(dir).make(keyframe_every, parents)
    }

    /// Makes the store this handle is on, with no step yet.
    fn make(self, keyframe_every: u32, parents: bool) -> Result<Store> {
        if keyframe_every == 0 {
            return Err(Error::InvalidArgument(
                "the keyframe interval must be at least 1".into(),
            ));
        }
        let text = self.manifest_bytes(&Manifest::new(keyframe_every))?;
        self.backend.create(&text, parents)?;
        Ok(self)
    }

    /// Opens the store in `dir`, creating it (as [`Store::create`] does)
    /// when there is none: what each process of a distributed run calls at
    /// once, all of them ending up with the same store.
    pub fn open_or_create(dir: &Path, keyframe_every: u32, parents: bool) -> Result<Store> {
        open_or_make(
            || Store::open(dir),
            || Store::create(dir, keyframe_every, parents),
        )
    }

    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::local(dir).opened()
    }

    fn opened(self) -> Result<Store> {
        if !self.backend.exists()? {
            return Err(backend::not_a_store(&self.root));
        }
        Ok(self)
    }

    /// Opens the store at `location`: a directory, or `s3://bucket/prefix`
    /// on S3-compatible object storage (endpoint, region and credentials from
    /// the `AWS_*` environment variables; see docs/STORE.md).
    pub fn open_location(location: &str) -> Result<Store> {
        Store::at(location)?.opened()
    }

    /// Creates an empty store at `location` (a directory or
    /// `s3://bucket/prefix`; it must hold no store yet). A local folder
    /// must be new or empty, and its parent must exist.
    pub fn init_location(location: &str, keyframe_every: u32) -> Result<Store> {
        Store::create_location(location, keyframe_every, false)
    }

    /// [`Store::init_location`], making missing parent folders of a local
    /// store when `parents` is set.
    pub fn create_location(location: &str, keyframe_every: u32, parents: bool) -> Result<Store> {
        Store::at(location)?.make(keyframe_every, parents)
    }

    /// Opens the store at `location`, creating it when there is none (see
    /// [`Store::open_or_create`]); on object storage a creation race is
    /// settled by the conditional put of the manifest.
    pub fn open_or_create_location(
        location: &str,
        keyframe_every: u32,
        parents: bool,
    ) -> Result<Store> {
        open_or_make(
            || Store::open_location(location),
            || Store::create_location(location, keyframe_every, parents),
        )
    }

    /// True when `location` holds a store.
    pub fn exists_at(location: &str) -> Result<bool> {
        Store::at(location)?.backend.exists()
    }

    /// The same store with its backend wrapped for faults and hooks.
    fn inject(mut self, f: impl FnOnce(Faulty) -> Faulty) -> Store {
        // A stand-in while the real backend is being wrapped (never used).
        let inner = std::mem::replace(
            &mut self.backend,
            Box::new(backend::local::Local::new(&self.root)),
        );
        self.backend = Box::new(f(Faulty::wrap(inner)));
        self
    }

    /// Opens a store whose writes fail as `faults` says (crash tests).
    #[doc(hidden)]
    pub fn open_with_faults(dir: &Path, faults: Faults) -> Result<Store> {
        Ok(Store::open(dir)?.with_faults(faults))
    }

    /// Opens the store at `location` with writes (object puts, the
    /// manifest's publication, deletions) failing as `faults` says.
    #[doc(hidden)]
    pub fn open_location_with_faults(location: &str, faults: Faults) -> Result<Store> {
        Ok(Store::open_location(location)?.with_faults(faults))
    }

    /// This handle with its writes failing as `faults` says, whatever its
    /// backend (the faults are injected at the backend's interface).
    #[doc(hidden)]
    pub fn with_faults(self, faults: Faults) -> Store {
        self.inject(|b| b.faults(faults))
    }

    /// Runs `hook` in every write just before it publishes its manifest
    /// (tests of concurrent writers).
    #[doc(hidden)]
    pub fn before_commit(self, hook: impl Fn() + Send + Sync + 'static) -> Store {
        self.inject(|b| b.before_publish(Box::new(hook)))
    }

    /// Runs `hook` in every write just after it has read the manifest it
    /// begins from (tests of writers racing with `rm` and `prune`).
    #[doc(hidden)]
    pub fn after_begin(self, hook: impl Fn() + Send + Sync + 'static) -> Store {
        self.inject(|b| b.after_begin(Box::new(hook)))
    }

    /// Runs `hook` in `get` once the step is decoded, just before its output
    /// gets its name (tests of outputs that appear meanwhile, of kills).
    #[doc(hidden)]
    pub fn after_decode(mut self, hook: impl Fn() + Send + Sync + 'static) -> Store {
        self.after_decode = Some(Box::new(hook));
        self
    }

    /// On object storage: how old an unlisted content file must be before
    /// garbage collection deletes it (1 hour unless set).
    #[doc(hidden)]
    pub fn set_gc_grace(&self, grace: std::time::Duration) {
        self.backend.set_gc_grace(grace);
    }

    /// Sets the size above which decoded files go to memory-mapped
    /// temporary files (64 MiB unless set): tests set 0.
    #[doc(hidden)]
    pub fn set_spill_bytes(&self, bytes: u64) {
        self.spill_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Keeps the files of the last step added through this handle in memory
    /// (one checkpoint's worth), so that adding the next one does not decode
    /// the reference's chain: for a process that adds steps one after
    /// another (`tpde store watch`, a training loop).
    pub fn keep_latest(mut self) -> Store {
        self.latest = Some(Mutex::new(None));
        self
    }

    /// The store's directory (for a store on object storage, its URL as a
    /// path; see [`Store::location`]).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the store is, as [`Store::open_location`] takes it: its
    /// directory or its `s3://` URL.
    pub fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        backend::store_error(&self.root, msg)
    }

    fn load_manifest(&self) -> Result<Manifest> {
        let (text, _) = self
            .backend
            .read_manifest()?
            .ok_or_else(|| backend::not_a_store(&self.root))?;
        self.parse_manifest(&text)
    }

    fn parse_manifest(&self, text: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(text)
            .map_err(|e| self.err(format!("damaged manifest {MANIFEST}: {e}")))?;
        m.check()
            .map_err(|e| self.err(format!("damaged manifest {MANIFEST}: {e}")))?;
        Ok(m)
    }

    fn manifest_bytes(&self, m: &Manifest) -> Result<Vec<u8>> {
        let mut m = m.clone();
        m.version = m.min_version();
        let mut text = serde_json::to_vec_pretty(&m).map_err(|e| self.err(e.to_string()))?;
        text.push(b'\n');
        Ok(text)
    }

    /// The manifest as it is now.
    pub fn manifest(&self) -> Result<Manifest> {
        let _lock = self.backend.read_lock()?;
        self.load_manifest()
    }

    /// The stored steps, in increasing order.
    pub fn steps(&self) -> Result<Vec<u64>> {
        Ok(self.manifest()?.steps.iter().map(|s| s.step).collect())
    }
}

/// Opens a store, or makes it when there is none; when making it fails
/// because another process made it meanwhile, opens that one (else the
/// making's error stands).
fn open_or_make(
    open: impl Fn() -> Result<Store>,
    make: impl FnOnce() -> Result<Store>,
) -> Result<Store> {
    if let Ok(store) = open() {
        return Ok(store);
    }
    make().or_else(|e| open().map_err(|_| e))
}
