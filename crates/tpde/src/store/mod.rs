//! The checkpoint store: a training run's checkpoints as keyframes and
//! deltas in a directory, any step back byte for byte.
//!
//! ```text
//! DIR/tpde-store.json          the manifest: the commit record (written last)
//! DIR/lock                     held (flock) by whoever writes; readers share it
//! DIR/objects/ab/ab12….tpde    content files, named by the XXH3-128 of their bytes
//! DIR/tmp/                     files being written
//! ```
//!
//! Every file of a checkpoint becomes one `.tpde` container, coded against the
//! file of the same path in the reference step (the stored step just before
//! it) or on its own in a keyframe. Content files are written under temporary
//! names, fsynced and renamed; the manifest is replaced the same way, last,
//! and only then are content files that it no longer lists removed. A crash at
//! any point leaves the previous manifest, whose every content file exists.
//!
//! With the `s3` feature a store can also live at `s3://bucket/prefix` on
//! S3-compatible object storage ([`Store::open_location`]): the same layout
//! without `lock` and `tmp/`, committed by a conditional put of the manifest
//! instead of a lock (see docs/STORE.md, "Object storage").

mod io;
mod manifest;
mod matching;
#[cfg(feature = "s3")]
mod s3;
pub mod watch;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "s3")]
use std::sync::Mutex;

pub use io::Faults;
pub use manifest::{EntryKind, FileRecord, Manifest, StepRecord};

use crate::codec::lossy::Bound;
use crate::common::atomic::Replace;
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;
use crate::common::safefs;
use crate::container::encode::{EncodeOptions, InputKind};
use crate::container::format;
use io::StoreIo;
use manifest::safe_relative;

const MANIFEST: &str = "tpde-store.json";
const LOCK: &str = "lock";
const OBJECTS: &str = "objects";
const TMP: &str = "tmp";
/// A delta is kept without trying a keyframe when it is smaller than this
/// share of the size a keyframe is expected to have (at the ratio of the
/// chain's keyframe); otherwise the step is also coded as a keyframe and the
/// smaller is kept. At 1.0 a keyframe is tried only when the delta does not
/// beat the expected keyframe at all: Adam moments gain only 5-10% from
/// their reference, and that still pays.
const DELTA_PAYS: f64 = 1.0;

/// Default keyframe interval of `tpde store init`.
pub const DEFAULT_KEYFRAME_EVERY: u32 = 10;
/// Files of one step coded at once (each one is itself coded in parallel
/// over its chunks); at most this many files' working memory at a time.
const FILES_IN_FLIGHT: usize = 4;

/// The bytes of one input file: memory-mapped, or in memory.
pub enum Bytes {
    Mapped(FileBytes),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A checkpoint to add: one file, or the files of a folder.
pub struct Checkpoint {
    /// The file or folder name.
    pub name: String,
    pub kind: EntryKind,
    /// `(relative path, bytes)`, sorted by path.
    pub files: Vec<(String, Bytes)>,
    /// Sub-folders (relative paths), sorted.
    pub dirs: Vec<String>,
}

impl Checkpoint {
    /// Reads a checkpoint file or folder (recursively). Symbolic links and
    /// special files are refused: the store could not give them back as they
    /// were.
    pub fn from_path(path: &Path) -> Result<Checkpoint> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .canonicalize()
            .map_err(|e| Error::io(path, e))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{} has no usable name", path.display()))
            })?;
        if meta.is_file() {
            let bytes = Bytes::Mapped(FileBytes::open(path)?);
            return Ok(Checkpoint {
                files: vec![(name.clone(), bytes)],
                name,
                kind: EntryKind::File,
                dirs: Vec::new(),
            });
        }
        let mut ck = Checkpoint {
            name,
            kind: EntryKind::Dir,
            files: Vec::new(),
            dirs: Vec::new(),
        };
        walk(path, "", &mut ck)?;
        ck.files.sort_by(|a, b| a.0.cmp(&b.0));
        ck.dirs.sort();
        Ok(ck)
    }

    /// A folder checkpoint held in memory.
    pub fn from_files(name: &str, files: Vec<(String, Vec<u8>)>) -> Result<Checkpoint> {
        let mut files: Vec<(String, Bytes)> = files
            .into_iter()
            .map(|(p, b)| (p, Bytes::Owned(b)))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut dirs = BTreeSet::new();
        for (p, _) in &files {
            if !safe_relative(p) {
                return Err(Error::InvalidArgument(format!("bad file path {p:?}")));
            }
            let mut at = p.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                dirs.insert(parent.to_string());
                at = parent;
            }
        }
        if files.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(Error::InvalidArgument("a file path is given twice".into()));
        }
        if let Some((p, _)) = files.iter().find(|(p, _)| dirs.contains(p)) {
            return Err(Error::InvalidArgument(format!(
                "{p:?} is given both as a file and as a folder of other files"
            )));
        }
        Ok(Checkpoint {
            name: name.to_string(),
            kind: EntryKind::Dir,
            files,
            dirs: dirs.into_iter().collect(),
        })
    }

    /// Bytes of all files together.
    pub fn len(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// True when it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn walk(dir: &Path, prefix: &str, ck: &mut Checkpoint) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: file name is not UTF-8", path.display()))
        })?;
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if !safe_relative(&rel) {
            return Err(Error::InvalidArgument(format!(
                "{}: unusual file name",
                path.display()
            )));
        }
        let ft = e.file_type().map_err(|e| Error::io(&path, e))?;
        if ft.is_dir() {
            ck.dirs.push(rel.clone());
            walk(&path, &rel, ck)?;
        } else if ft.is_file() {
            ck.files.push((rel, Bytes::Mapped(FileBytes::open(&path)?)));
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is a symbolic link or special file; the store keeps only files and folders",
                path.display()
            )));
        }
    }
    Ok(())
}

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
    io: StoreIo,
    #[cfg(feature = "s3")]
    s3: Option<s3::S3Backend>,
    /// With [`Store::keep_latest`]: the files of the last step this handle
    /// added, the reference of the next add without decoding its chain.
    latest: Option<std::sync::Mutex<Option<(u64, Files)>>>,
    /// Test hook: runs just before a write publishes its manifest.
    before_commit: Option<Box<dyn Fn() + Send + Sync>>,
    /// Test hook: runs just after a write has read the manifest it begins
    /// from.
    after_begin: Option<Box<dyn Fn() + Send + Sync>>,
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

/// What a step is coded against: the reference step, its decoded files, and
/// for each file of the new step the path of its partner there (see
/// [`matching`]).
#[derive(Clone, Copy)]
struct Against<'a> {
    step: u64,
    files: &'a Files,
    partners: &'a HashMap<String, &'a str>,
}

/// Where [`Store::restore_files`] puts the files of the step asked for.
#[derive(Clone, Copy)]
enum Sink<'a> {
    /// Returned, in memory or memory-mapped.
    Keep,
    /// Written under this folder.
    Dir(&'a Path),
    /// The one file of a single-file step, written to this file.
    File(&'a File),
    /// Only checked against their digests.
    Discard,
}

/// A decoded file larger than this is written to an unnamed temporary file
/// and memory-mapped rather than held in memory, so that restoring or
/// coding against a checkpoint of any size holds only windows of it.
const SPILL_BYTES: u64 = 64 << 20;

/// Checkpoints up to this size are kept in memory by [`Store::keep_latest`];
/// a larger one is the reference of the next step through its chain.
const KEEP_LATEST_MAX: u64 = 1 << 30;

/// A write in progress: the manifest it began from (and, in a local store,
/// the lock it holds).
struct Txn {
    _lock: Option<File>,
    base: Manifest,
    /// The content files `base` lists.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    listed: HashSet<String>,
    #[cfg(feature = "s3")]
    version: s3::Version,
    /// Content files this write uploaded (object storage).
    #[cfg(feature = "s3")]
    uploaded: Mutex<Vec<s3::Uploaded>>,
}

impl Txn {
    /// The manifest version the write began from (object storage).
    fn started(&self) -> Option<String> {
        #[cfg(feature = "s3")]
        return self.version.clone();
        #[cfg(not(feature = "s3"))]
        None
    }

    fn new(lock: Option<File>, base: Manifest) -> Txn {
        let listed = base
            .steps
            .iter()
            .flat_map(|s| s.files.iter().map(|f| f.object.clone()))
            .collect();
        Txn {
            _lock: lock,
            base,
            listed,
            #[cfg(feature = "s3")]
            version: None,
            #[cfg(feature = "s3")]
            uploaded: Mutex::new(Vec::new()),
        }
    }
}

/// The bytes of a content file being decoded.
enum ObjectBytes {
    Mapped(FileBytes),
    #[cfg(feature = "s3")]
    Fetched(s3::Fetched),
}

impl Deref for ObjectBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ObjectBytes::Mapped(m) => m,
            #[cfg(feature = "s3")]
            ObjectBytes::Fetched(f) => f,
        }
    }
}

impl Store {
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
        if keyframe_every == 0 {
            return Err(Error::InvalidArgument(
                "the keyframe interval must be at least 1".into(),
            ));
        }
        let store = Store::local(dir);
        if parents {
            let up = safefs::parent_of(dir);
            std::fs::create_dir_all(up).map_err(|e| Error::io(up, e))?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // The store's own folder may be a link the user made; what
                // is inside it is checked below.
                if !dir.is_dir() {
                    return Err(store.err("exists and is not a folder"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(store.err(format!(
                    "the folder {} does not exist; create it first, or ask for missing \
                     parent folders to be made (`tpde store init --parents`, \
                     `tpde.Store(path, create_parents=True)`)",
                    safefs::parent_of(dir).display()
                )));
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        store.check_new_folder()?;
        // Concurrent creators wait for each other here; the late ones find
        // the manifest.
        let lock = store.lock_file(true)?;
        lock.lock().map_err(|e| Error::io(dir.join(LOCK), e))?;
        if store.exists()? {
            return Err(store.err("already holds a store"));
        }
        store.check_new_folder()?;
        for d in [OBJECTS, TMP] {
            let p = dir.join(d);
            safefs::ensure_dir(&p).map_err(|e| Error::io(&p, e))?;
        }
        // The manifest appears whole, and never over another one.
        let text = store.manifest_bytes(&Manifest::new(keyframe_every))?;
        let tmp = io::temp_name(&dir.join(TMP), "write");
        let path = dir.join(MANIFEST);
        let written = (|| {
            let mut f = store.io.create(&tmp)?;
            f.write_all(&text)?;
            store.io.finish(f)?;
            store.io.tick("rename", &path.display())?;
            safefs::rename_noreplace(&tmp, &path)?;
            store.io.sync_dir(dir)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        drop(lock);
        Ok(store)
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

    /// A folder a store is being made in holds nothing but what a store
    /// being made holds: no manifest yet, maybe the lock, an empty
    /// `objects/` and a `tmp/` with the temporary files of an interrupted
    /// creation. Anything else is the user's, and a store never adopts it.
    fn check_new_folder(&self) -> Result<()> {
        let dir = &self.root;
        let mut foreign = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
            let ours = match &*name {
                MANIFEST => return Err(self.err("already holds a store")),
                LOCK => ft.is_file(),
                OBJECTS => ft.is_dir() && dir_is_empty(&e.path(), |_| false),
                TMP => ft.is_dir() && dir_is_empty(&e.path(), is_temp_name),
                _ => false,
            };
            if !ours {
                foreign.push(name.into_owned());
            }
        }
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(3).map(String::as_str).collect();
        Err(self.err(format!(
            "is not empty (it holds {}{}); a store is made in a new or empty folder, \
             since it deletes what it writes there — choose another folder, e.g. {}",
            shown.join(", "),
            if foreign.len() > 3 { ", ..." } else { "" },
            dir.join("tpde-store").display()
        )))
    }

    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let store = Store::local(dir);
        if !store.exists()? {
            return Err(store.not_a_store());
        }
        Ok(store)
    }

    fn local(dir: &Path) -> Store {
        Store {
            root: dir.to_path_buf(),
            io: StoreIo::default(),
            #[cfg(feature = "s3")]
            s3: None,
            latest: None,
            before_commit: None,
            after_begin: None,
            after_decode: None,
            spill_bytes: AtomicU64::new(SPILL_BYTES),
        }
    }

    fn not_a_store(&self) -> Error {
        self.err(format!(
            "not a tpde store (no {MANIFEST}); create one with `tpde store init`"
        ))
    }

    /// A handle on the store at `location`, without checking that one is
    /// there: `s3://bucket/prefix` is on object storage (with the `s3`
    /// feature), anything else a local directory.
    fn at(location: &str) -> Result<Store> {
        if location.starts_with("s3://") {
            #[cfg(feature = "s3")]
            if let Some(loc) = s3::S3Location::parse(location) {
                let loc = loc?;
                let mut store = Store::local(Path::new(&loc.url()));
                store.s3 = Some(s3::S3Backend::new(loc)?);
                return Ok(store);
            }
            #[cfg(not(feature = "s3"))]
            return Err(Error::InvalidArgument(format!(
                "{location}: this build of tpde has no object storage support (cargo feature `s3`)"
            )));
        }
        Ok(Store::local(Path::new(location)))
    }

    /// Opens the store at `location`: a directory, or `s3://bucket/prefix`
    /// on S3-compatible object storage (endpoint, region and credentials from
    /// the `AWS_*` environment variables; see docs/STORE.md).
    pub fn open_location(location: &str) -> Result<Store> {
        let store = Store::at(location)?;
        if !store.exists()? {
            return Err(store.not_a_store());
        }
        Ok(store)
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
        let store = Store::at(location)?;
        #[cfg(feature = "s3")]
        if let Some(s3) = &store.s3 {
            let _ = parents;
            if keyframe_every == 0 {
                return Err(Error::InvalidArgument(
                    "the keyframe interval must be at least 1".into(),
                ));
            }
            if s3.has_manifest()? {
                return Err(store.err("already holds a store"));
            }
            let text = store.manifest_bytes(&Manifest::new(keyframe_every))?;
            return match s3.publish_manifest(&store.io, text, &None) {
                Err(Error::Conflict(_)) => Err(store.err("already holds a store")),
                r => r.map(|()| store),
            };
        }
        Store::create(&store.root, keyframe_every, parents)
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
        Store::at(location)?.exists()
    }

    fn exists(&self) -> Result<bool> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return s3.has_manifest();
        }
        Ok(std::fs::symlink_metadata(self.root.join(MANIFEST)).is_ok())
    }

    /// Opens a store whose writes fail as `faults` says (crash tests).
    #[doc(hidden)]
    pub fn open_with_faults(dir: &Path, faults: Faults) -> Result<Store> {
        let mut store = Store::open(dir)?;
        store.io = StoreIo::with_faults(faults);
        Ok(store)
    }

    /// Opens the store at `location` with writes (uploads, the manifest's
    /// put, deletions on object storage) failing as `faults` says.
    #[doc(hidden)]
    pub fn open_location_with_faults(location: &str, faults: Faults) -> Result<Store> {
        let mut store = Store::open_location(location)?;
        store.io = StoreIo::with_faults(faults);
        Ok(store)
    }

    /// Runs `hook` in every write just before it publishes its manifest
    /// (tests of concurrent writers).
    #[doc(hidden)]
    pub fn before_commit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Store {
        self.before_commit = Some(Box::new(hook));
        self
    }

    /// Runs `hook` in every write just after it has read the manifest it
    /// begins from (tests of writers racing with `rm` and `prune`).
    #[doc(hidden)]
    pub fn after_begin(mut self, hook: impl Fn() + Send + Sync + 'static) -> Store {
        self.after_begin = Some(Box::new(hook));
        self
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
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            s3.set_grace(grace);
        }
        let _ = grace;
    }

    /// Sets the size above which decoded files go to memory-mapped
    /// temporary files ([`SPILL_BYTES`] unless set): tests set 0.
    #[doc(hidden)]
    pub fn set_spill_bytes(&self, bytes: u64) {
        self.spill_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Keeps the files of the last step added through this handle in memory
    /// (one checkpoint's worth), so that adding the next one does not decode
    /// the reference's chain: for a process that adds steps one after
    /// another (`tpde store watch`, a training loop).
    pub fn keep_latest(mut self) -> Store {
        self.latest = Some(std::sync::Mutex::new(None));
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
        Error::Store {
            path: self.root.clone(),
            msg: msg.into(),
        }
    }

    /// The lock file (never a link, a FIFO or a device: opening those could
    /// block or lock something else).
    fn lock_file(&self, write: bool) -> Result<File> {
        let path = self.root.join(LOCK);
        if write {
            safefs::open_or_create_regular(&path)
        } else {
            safefs::open_regular(&path)
        }
        .map_err(|e| Error::io(&path, e))
    }

    /// Holds the store for writing until dropped; another writer gets
    /// [`Error::Locked`].
    fn lock_exclusive(&self) -> Result<File> {
        let f = self.lock_file(true)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(TryLockError::WouldBlock) => Err(Error::Locked(self.root.clone())),
            Err(TryLockError::Error(e)) => Err(Error::io(self.root.join(LOCK), e)),
        }
    }

    /// Holds the store for reading until dropped (waits for a writer). On
    /// object storage there is no lock: readers read the manifest, then
    /// content files that never change.
    fn lock_shared(&self) -> Result<Option<File>> {
        #[cfg(feature = "s3")]
        if self.s3.is_some() {
            return Ok(None);
        }
        // A read-only store without a lock file can still be read; a lock
        // that is not a regular file (a FIFO, a link) is refused.
        let f = match self.lock_file(false) {
            Ok(f) => f,
            Err(Error::Io { err: source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        f.lock_shared()
            .map_err(|e| Error::io(self.root.join(LOCK), e))?;
        Ok(Some(f))
    }

    fn load_manifest(&self) -> Result<Manifest> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            let (text, _) = s3.read_manifest()?.ok_or_else(|| self.not_a_store())?;
            return self.parse_manifest(&text);
        }
        let path = self.root.join(MANIFEST);
        let mut text = Vec::new();
        safefs::open_regular(&path)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut text))
            .map_err(|e| Error::io(&path, e))?;
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

    fn save_manifest(&self, m: &Manifest) -> Result<()> {
        let text = self.manifest_bytes(m)?;
        let path = self.root.join(MANIFEST);
        self.io
            .write_file(&self.root.join(TMP), &path, &text)
            .map_err(|e| Error::io(&path, e))
    }

    /// The manifest as it is now.
    pub fn manifest(&self) -> Result<Manifest> {
        let _lock = self.lock_shared()?;
        self.load_manifest()
    }

    /// The stored steps, in increasing order.
    pub fn steps(&self) -> Result<Vec<u64>> {
        Ok(self.manifest()?.steps.iter().map(|s| s.step).collect())
    }

    fn object_path(&self, name: &str) -> PathBuf {
        self.root
            .join(OBJECTS)
            .join(&name[..2])
            .join(format!("{name}.tpde"))
    }

    /// Where content file `name` is, for messages.
    fn object_display(&self, name: &str) -> String {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return s3.object_url(name);
        }
        self.object_path(name).display().to_string()
    }

    /// The bytes of content file `name`.
    fn read_object(&self, name: &str) -> Result<ObjectBytes> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return s3.fetch(name).map(ObjectBytes::Fetched);
        }
        self.open_object(name).map(ObjectBytes::Mapped)
    }

    /// Maps local content file `name`, following no link inside the store.
    fn open_object(&self, name: &str) -> Result<FileBytes> {
        let path = self.object_path(name);
        let sub = name.get(..2).unwrap_or("");
        let file_name = format!("{name}.tpde");
        let file = safefs::open_beneath(&self.root, &[OBJECTS, sub, &file_name])
            .map_err(|e| Error::io(&path, e))?;
        FileBytes::from_file(&file, &path)
    }

    /// The XXH3-128 of content file `name`'s bytes (hex), or why it cannot
    /// be read.
    fn object_digest(&self, name: &str) -> std::result::Result<String, String> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return s3.object_digest(name).map_err(|e| match e {
                Error::Io { err: source, .. } => source.to_string(),
                e => e.to_string(),
            });
        }
        self.open_object(name)
            .map(|b| format::digest_hex(crate::common::mmap::digest_released(&b)))
            .map_err(|e| match e {
                Error::Io { err: source, .. } => source.to_string(),
                e => e.to_string(),
            })
    }

    /// Writes a content file through `f` (as part of `txn`); returns its
    /// name and length.
    fn write_object(
        &self,
        txn: &Txn,
        f: impl FnOnce(&mut dyn Write) -> Result<crate::container::encode::EncodeStats>,
    ) -> Result<(String, crate::container::encode::EncodeStats)> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return self.write_object_s3(s3, txn, f);
        }
        let _ = txn;
        let tmp = io::temp_name(&self.root.join(TMP), "object");
        let mut file = self.io.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut hw = HashWriter {
            inner: &mut file,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        };
        let written = f(&mut hw)
            .map_err(|e| with_path(e, &tmp))
            .and_then(|stats| {
                let name = format::digest_hex(hw.hasher.digest128());
                self.io.finish(file).map_err(|e| Error::io(&tmp, e))?;
                Ok((name, stats))
            });
        let (name, stats) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = self.io.remove_file(&tmp);
                return Err(e);
            }
        };
        let dest = self.object_path(&name);
        let dir = dest.parent().expect("objects have a folder");
        let io_err = |e| Error::io(&dest, e);
        // The same content may be stored already (an unchanged file); a copy
        // that no longer hashes to its name (a damaged disk) is replaced.
        let intact = self
            .open_object(&name)
            .is_ok_and(|b| format::digest_hex(crate::common::mmap::digest_released(&b)) == name);
        if intact {
            self.io.remove_file(&tmp).map_err(io_err)?;
        } else {
            self.io.tick("mkdir", &dir.display()).map_err(io_err)?;
            safefs::ensure_dir(dir).map_err(io_err)?;
            self.io.rename(&tmp, &dest).map_err(io_err)?;
            self.io.sync_dir(dir).map_err(io_err)?;
        }
        Ok((name, stats))
    }

    /// [`Store::write_object`] on object storage: coded into a local
    /// temporary file, hashed, then uploaded (kept until the write ends, see
    /// `S3Backend::after_commit`).
    #[cfg(feature = "s3")]
    fn write_object_s3(
        &self,
        s3: &s3::S3Backend,
        txn: &Txn,
        f: impl FnOnce(&mut dyn Write) -> Result<crate::container::encode::EncodeStats>,
    ) -> Result<(String, crate::container::encode::EncodeStats)> {
        let file = s3.tmp_file()?;
        let path = io::local_temp_dir();
        let mut buf = std::io::BufWriter::with_capacity(1 << 20, &file);
        let mut hw = HashWriter {
            inner: &mut buf,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        };
        let stats = f(&mut hw).map_err(|e| with_path(e, &path))?;
        let name = format::digest_hex(hw.hasher.digest128());
        buf.flush().map_err(|e| Error::io(&path, e))?;
        drop(buf);
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if s3.put_object(&self.io, &name, &file, len, txn.listed.contains(&name))? {
            if let Ok(mut up) = txn.uploaded.lock() {
                up.push(s3::Uploaded {
                    name: name.clone(),
                    file,
                });
            }
        }
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
            .write_object(txn, |w| {
                crate::container::encode::encode(bytes, ref_bytes, opts, w, None)
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
    fn code_best(
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
        let txn = self.begin_write()?;
        let started = txn.started();
        self.add_in(txn, ck, step, lossy, progress)
            .map_err(|e| self.lost_race(&started, e))
    }

    fn add_in(
        &self,
        txn: Txn,
        ck: &Checkpoint,
        step: u64,
        lossy: Option<Bound>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StepRecord> {
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
        self.collect_garbage(&m)?;
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
        if let Some(slot) = &self.latest {
            if m.steps.last().is_some_and(|s| s.step == step) && ck.len() <= KEEP_LATEST_MAX {
                let files = ck
                    .files
                    .iter()
                    .map(|(p, b)| (p.clone(), Bytes::Owned(b.to_vec())))
                    .collect();
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some((step, files));
                }
            }
        }
        Ok(m.get(step).expect("just added").clone())
    }

    /// Decodes the content file of `f` (of step `step`) against `reference`:
    /// in memory, or (larger than [`SPILL_BYTES`]) into an unnamed temporary
    /// file, memory-mapped.
    fn decode_file(&self, step: u64, f: &FileRecord, reference: Option<&[u8]>) -> Result<Bytes> {
        if f.len <= self.spill_bytes.load(Ordering::Relaxed) {
            let mut out = Vec::with_capacity(f.len as usize);
            self.decode_file_to(step, f, reference, &mut out)?;
            return Ok(Bytes::Owned(out));
        }
        let dir = self.spill_dir();
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

    /// Where decoded files too large for memory go: the store's own `tmp/`
    /// (on the store's disk) when it can be written, else `TPDE_TMPDIR` or
    /// the system's temporary folder.
    fn spill_dir(&self) -> PathBuf {
        #[cfg(feature = "s3")]
        if self.s3.is_some() {
            return io::local_temp_dir();
        }
        let own = self.root.join(TMP);
        let writable =
            std::fs::metadata(&own).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
        if writable {
            own
        } else {
            io::local_temp_dir()
        }
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
        let path = self.object_display(&f.object);
        let what = |e: &dyn std::fmt::Display| {
            self.err(format!(
                "step {step}, file {}: content file {path}: {e}",
                f.path
            ))
        };
        let bytes = self.read_object(&f.object).map_err(|e| match e {
            Error::Io { err: source, .. } => what(&source),
            e => what(&e),
        })?;
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

    /// Decodes the files of `step` (all, or those in `want`) by walking its
    /// chain from the keyframe, keeping only what the next step needs.
    /// `sink` says where the files of `step` itself go.
    fn restore_files(
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
                let reference = if f.delta {
                    Some(cur.get(f.ref_path()).ok_or_else(|| {
                        self.err(format!(
                            "step {}, file {}: its reference step {:?} lacks the file {}",
                            rec.step,
                            f.path,
                            rec.reference,
                            f.ref_path()
                        ))
                    })?)
                } else {
                    None
                };
                let reference = reference.map(|b| &**b);
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
        let _lock = self.lock_shared()?;
        let m = self.load_manifest()?;
        let rec = m
            .get(step)
            .ok_or_else(|| self.err(format!("no step {step} (stored: {})", list_steps(&m))))?;
        let mut files = self.restore_files(&m, step, None, Sink::Keep)?;
        Ok(Restored {
            name: rec.name.clone(),
            kind: rec.kind,
            files: rec
                .files
                .iter()
                .map(|f| {
                    let bytes = files.remove(&f.path).map(|b| b.to_vec());
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
        let _lock = self.lock_shared()?;
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

    /// Checks every content file against its name and restores every step,
    /// comparing each file with its recorded digest.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _lock = self.lock_shared()?;
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
                let path = self.object_display(&f.object);
                let problem = match self.object_digest(&f.object) {
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
        (report.leftovers, report.foreign) = self.scan_layout(&m)?;
        Ok(report)
    }

    /// Checks that step `step` restores to exactly the files at `original`
    /// (before deleting an original): every file of the step is decoded and
    /// checked against its recorded digest, which must be that of the
    /// original's file (or, stored lossy, of its reconstruction).
    pub fn check_against(&self, step: u64, original: &Path) -> Result<()> {
        let _lock = self.lock_shared()?;
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
        self.collect_garbage(&m)?;
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

    /// A write that failed on object storage because another writer
    /// changed the store meanwhile (a content file it needed was removed by
    /// a concurrent `rm` or `prune`, say) lost a race: that is
    /// [`Error::Conflict`], which says to try again, whatever the symptom.
    fn lost_race(&self, started: &Option<String>, e: Error) -> Error {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            if !matches!(e, Error::Conflict(_)) {
                let now = s3.read_manifest().ok().map(|m| m.and_then(|(_, v)| v));
                if now.is_some_and(|v| v != *started) {
                    return Error::Conflict(self.root.clone());
                }
            }
        }
        let _ = started;
        e
    }

    /// Begins a write: takes the lock of a local store and reads the
    /// manifest (on object storage, with its version, for the commit).
    fn begin_write(&self) -> Result<Txn> {
        let txn = self.begin_write_inner()?;
        if let Some(hook) = &self.after_begin {
            hook();
        }
        Ok(txn)
    }

    fn begin_write_inner(&self) -> Result<Txn> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            let (text, version) = s3.read_manifest()?.ok_or_else(|| self.not_a_store())?;
            let mut txn = Txn::new(None, self.parse_manifest(&text)?);
            txn.version = version;
            return Ok(txn);
        }
        let lock = self.lock_exclusive()?;
        let m = self.load_manifest()?;
        self.check_layout()?;
        Ok(Txn::new(Some(lock), m))
    }

    /// Publishes `new` as the result of `txn`, then removes what no longer
    /// belongs. On object storage the publication is a conditional put that
    /// fails with [`Error::Conflict`] when another writer committed since
    /// `txn` began.
    fn commit(&self, txn: Txn, new: &Manifest) -> Result<()> {
        if let Some(hook) = &self.before_commit {
            hook();
        }
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            let text = self.manifest_bytes(new)?;
            s3.publish_manifest(&self.io, text, &txn.version)?;
            let uploaded = txn.uploaded.into_inner().unwrap_or_default();
            return s3.after_commit(&self.io, &uploaded, &txn.base, new);
        }
        self.save_manifest(new)?;
        self.collect_garbage(new)?;
        // The lock is held until here.
        drop(txn);
        Ok(())
    }

    /// Files under `tmp/` and `objects/` that `m` does not list and that the
    /// store wrote: temporary files with the names the store gives them and
    /// content files named by their digest (on object storage, content files
    /// it does not list). Nothing else is ever counted, and no link is
    /// followed: a store deletes only what it can tell it wrote.
    fn garbage(&self, m: &Manifest) -> Result<Vec<PathBuf>> {
        Ok(self.scan_layout(m)?.0)
    }

    /// [`Store::garbage`], and beside it what is in `tmp/` or `objects/`
    /// that the store did not write (left alone, reported by `verify`).
    fn scan_layout(&self, m: &Manifest) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return Ok((s3.garbage(m)?, Vec::new()));
        }
        let listed: HashSet<&str> = m
            .steps
            .iter()
            .flat_map(|s| s.files.iter().map(|f| f.object.as_str()))
            .collect();
        let (mut garbage, mut foreign) = (Vec::new(), Vec::new());
        let entries = |dir: &Path| -> Vec<(String, PathBuf, std::fs::FileType)> {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return Vec::new();
            };
            rd.flatten()
                .filter_map(|e| {
                    let ft = e.file_type().ok()?; // does not follow links
                    Some((e.file_name().to_string_lossy().into_owned(), e.path(), ft))
                })
                .collect()
        };
        let tmp = self.root.join(TMP);
        if safefs::real_dir(&tmp).unwrap_or(false) {
            for (name, path, ft) in entries(&tmp) {
                if ft.is_file() && is_temp_name(&name) {
                    garbage.push(path);
                } else {
                    foreign.push(path);
                }
            }
        }
        let objects = self.root.join(OBJECTS);
        if safefs::real_dir(&objects).unwrap_or(false) {
            for (sub, sub_path, ft) in entries(&objects) {
                if !ft.is_dir() || sub.len() != 2 || !sub.bytes().all(is_lower_hex) {
                    foreign.push(sub_path);
                    continue;
                }
                for (name, path, ft) in entries(&sub_path) {
                    let object = name
                        .strip_suffix(".tpde")
                        .filter(|n| is_object_name(n) && n.starts_with(&sub));
                    match object {
                        Some(n) if ft.is_file() => {
                            if !listed.contains(n) {
                                garbage.push(path);
                            }
                        }
                        _ => foreign.push(path),
                    }
                }
            }
        }
        garbage.sort();
        foreign.sort();
        Ok((garbage, foreign))
    }

    /// Removes what `garbage` finds (under the write lock): regular files
    /// only, each checked again just before (a link in its place is left
    /// alone). On object storage, where there is no lock, this is done only
    /// after a commit (`S3Backend::after_commit`).
    fn collect_garbage(&self, m: &Manifest) -> Result<()> {
        #[cfg(feature = "s3")]
        if self.s3.is_some() {
            return Ok(());
        }
        for p in self.garbage(m)? {
            if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                continue;
            }
            self.io.remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    /// Before a write: `tmp/` and `objects/` are the store's own folders,
    /// not links (which would make the store write and delete elsewhere).
    fn check_layout(&self) -> Result<()> {
        #[cfg(feature = "s3")]
        if self.s3.is_some() {
            return Ok(());
        }
        for d in [OBJECTS, TMP] {
            let p = self.root.join(d);
            match safefs::real_dir(&p) {
                Ok(true) => {}
                Ok(false) => safefs::ensure_dir(&p).map_err(|e| Error::io(&p, e))?,
                Err(e) => {
                    return Err(
                        self.err(format!("{e}; nothing was written (fix the store's layout)"))
                    )
                }
            }
        }
        Ok(())
    }
}

/// An I/O error without a path (from a writer) gets the path written to.
fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Io {
            path: None,
            err: source,
        } => Error::io(path, source),
        e => e,
    }
}

/// A content file's name: the XXH3-128 of its bytes in lower-case hex.
fn is_object_name(n: &str) -> bool {
    n.len() == 32 && n.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A name [`io::temp_name`] gives: `WHAT-PID-N-NANOS.tmp`.
fn is_temp_name(n: &str) -> bool {
    let Some(stem) = n.strip_suffix(".tmp") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.as_slice(), [what, pid, n, nanos]
        if ["write", "object"].contains(what)
            && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
            && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            && nanos.len() == 8 && nanos.bytes().all(is_lower_hex))
}

/// True when folder `dir` holds nothing, or only entries `allowed` accepts.
fn dir_is_empty(dir: &Path, allowed: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().all(|e| {
            e.file_type().is_ok_and(|t| t.is_file()) && allowed(&e.file_name().to_string_lossy())
        })
    })
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

fn stored(s: &StepRecord) -> u64 {
    s.files.iter().map(|f| f.stored_len).sum()
}

fn original(s: &StepRecord) -> u64 {
    s.files.iter().map(|f| f.len).sum()
}

fn list_steps(m: &Manifest) -> String {
    if m.steps.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = m.steps.iter().map(|s| s.step.to_string()).collect();
    v.join(", ")
}

/// Writes a restored checkpoint to `out` atomically: a file through a
/// temporary file, a folder built under a temporary name and renamed.
pub fn write_restored(r: &Restored, out: &Path) -> Result<()> {
    build_beside(out, r.kind, &r.dirs, Replace::No, |sink| match sink {
        Sink::File(mut f) => {
            let bytes = r.files.first().map(|(_, b)| &b[..]).unwrap_or_default();
            f.write_all(bytes).map_err(|e| Error::io(out, e))
        }
        Sink::Dir(dir) => {
            for (rel, bytes) in &r.files {
                let p = dir.join(rel);
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
                }
                let mut f = File::create(&p).map_err(|e| Error::io(&p, e))?;
                f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
                f.sync_all().map_err(|e| Error::io(&p, e))?;
            }
            Ok(())
        }
        Sink::Keep | Sink::Discard => Ok(()),
    })
}

/// The prefix of the temporary folder a restore is built in, beside its
/// output: `.tpde-get-PID-RANDOM`.
const BUILD_PREFIX: &str = ".tpde-get-";

/// Makes `out` (which must not exist) appear whole or not at all, and never
/// over something that appeared meanwhile: `fill` writes the checkpoint to
/// the sink it is given. A single-file checkpoint goes to a file with no
/// name yet beside `out` (where the file system has them), linked as `out`
/// once complete; a folder (or a file, elsewhere) is built in a temporary
/// folder beside `out`, which is renamed without replacing. A process killed
/// meanwhile leaves at most the temporary folder, which the next restore
/// into the same folder removes once its process is gone.
fn build_beside(
    out: &Path,
    kind: EntryKind,
    dirs: &[String],
    replace: Replace,
    fill: impl FnOnce(Sink<'_>) -> Result<()>,
) -> Result<()> {
    let parent = safefs::parent_of(out);
    remove_stale_builds(parent);
    // Only a regular file is ever replaced (checked again just before).
    let replacing =
        || replace == Replace::Yes && std::fs::symlink_metadata(out).is_ok_and(|m| m.is_file());
    if kind == EntryKind::File {
        if let Some(unnamed) = safefs::Unnamed::new(parent) {
            fill(Sink::File(&unnamed.file))?;
            unnamed.file.sync_all().map_err(|e| Error::io(out, e))?;
            if replacing() {
                unnamed.link_replacing(out)
            } else {
                unnamed.link(out)
            }
            .map_err(|e| Error::io(out, e))?;
            let _ = safefs::sync_dir(parent);
            return Ok(());
        }
    }
    let tmp = parent.join(format!(
        "{BUILD_PREFIX}{}-{:016x}",
        std::process::id(),
        safefs::fastrand_u64()
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let built = (|| {
        for d in dirs {
            let p = tmp.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        if kind == EntryKind::File {
            let p = tmp.join("file");
            let file = File::create(&p).map_err(|e| Error::io(&p, e))?;
            fill(Sink::File(&file))?;
            file.sync_all().map_err(|e| Error::io(&p, e))?;
            if replacing() {
                std::fs::rename(&p, out).map_err(|e| Error::io(out, e))
            } else {
                safefs::rename_noreplace(&p, out).map_err(|e| Error::io(out, e))
            }
        } else {
            fill(Sink::Dir(&tmp))?;
            if replacing() {
                // A folder cannot be renamed over a file: the file goes
                // first, once the folder is complete.
                std::fs::remove_file(out).map_err(|e| Error::io(out, e))?;
            }
            safefs::rename_noreplace(&tmp, out).map_err(|e| Error::io(out, e))
        }
    })();
    if std::fs::symlink_metadata(&tmp).is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built?;
    let _ = safefs::sync_dir(parent);
    Ok(())
}

/// Removes the temporary folders of restores into `dir` whose process is
/// gone (killed): real folders named `.tpde-get-PID-RANDOM` (16 hex digits),
/// PID no longer running. Nothing else is touched.
fn remove_stale_builds(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(BUILD_PREFIX)) else {
            continue;
        };
        let Some((pid, random)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let ours = random.len() == 16
            && random.bytes().all(is_lower_hex)
            && e.file_type().is_ok_and(|t| t.is_dir())
            && pid != std::process::id()
            && !safefs::process_alive(pid);
        if ours {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

struct HashWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: xxhash_rust::xxh3::Xxh3,
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
