//! Where a store's bytes live: the [`Backend`] trait, the operations the
//! store's policy (chains, keyframes, prune, verify, garbage collection)
//! needs from a place that holds a manifest and content objects, and the
//! choice of a backend for a location. One implementation per place:
//! [`local`] (a folder: flock, fsync, rename) and, with the `s3` feature,
//! `s3` (object storage: conditional puts). [`faulty`] wraps any backend to
//! inject faults and test hooks at this interface.
//!
//! Both backends share one layout of names:
//!
//! ```text
//! tpde-store.json          the manifest: the commit record (published last)
//! objects/ab/ab12….tpde    content objects, named by the XXH3-128 of their bytes
//! ```
//!
//! May call: `common` (errors, mmap, safefs) and `container::format`
//! (digests); never the policy in `store/` above it.

pub(crate) mod faulty;
pub(crate) mod local;
#[cfg(feature = "s3")]
mod s3;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;

/// The manifest's name, beside `objects/`.
pub(crate) const MANIFEST: &str = "tpde-store.json";
/// The folder (or key prefix) of the content objects.
pub(crate) const OBJECTS: &str = "objects";

/// The version of the manifest a write began from: object storage's ETag;
/// `None` where there was no manifest, or where a lock stands in for
/// versions (a local store).
pub(crate) type Version = Option<String>;

/// A write in progress as its backend holds it, from
/// [`Backend::begin_write`] until it is dropped.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    /// Held until the write ends: a local store's exclusive lock.
    pub(crate) _hold: Option<File>,
    /// The manifest version the write began from (for the conditional put).
    pub(crate) version: Version,
    /// Objects this write put, each with a local copy of its bytes, kept
    /// until the write ends (object storage puts one again after its commit
    /// when a concurrent garbage collection removed it).
    #[allow(dead_code)] // only object storage keeps copies
    pub(crate) kept: Mutex<Vec<(String, File)>>,
}

/// Something garbage collection may delete, as [`Backend::collectable`]
/// listed it.
#[derive(Debug, Clone)]
pub(crate) struct Garbage {
    /// Where it is: a path, or a URL on object storage.
    pub(crate) shown: PathBuf,
    /// The content object's name (`None`: a temporary file).
    #[allow(dead_code)] // only object storage checks an object again by name
    pub(crate) object: Option<String>,
    /// Deleted only if still last modified before this (object storage's
    /// clock, milliseconds since the epoch); `None`: no age rule.
    #[allow(dead_code)] // only object storage's deletions go by age
    pub(crate) modified_before: Option<i64>,
}

/// A content object being put: the bytes written become visible under
/// their name only through [`ObjectWriter::finish`]; one dropped without
/// finishing leaves nothing visible.
pub(crate) trait ObjectWriter: Write {
    /// Where the bytes go meanwhile (for messages).
    fn path(&self) -> &Path;
    /// Makes the bytes written durable and visible as content object
    /// `name` (their digest), unless an intact copy is there already.
    /// `listed`: the manifest the write began from lists `name`.
    fn finish(self: Box<Self>, name: &str, listed: bool) -> Result<()>;
}

/// The operations the store's policy needs from where its bytes live.
pub(crate) trait Backend: Send + Sync {
    /// The store's directory, or its `s3://` URL.
    fn location(&self) -> &Path;
    /// True when a manifest is there.
    fn exists(&self) -> Result<bool>;
    /// Makes a new store whose first manifest is `manifest`, never over an
    /// existing one ("already holds a store"); `parents`: a local store's
    /// missing parent folders are made.
    fn create(&self, manifest: &[u8], parents: bool) -> Result<()>;
    /// Holds the store for reading until dropped (a local store's shared
    /// lock; `None` where readers need none).
    fn read_lock(&self) -> Result<Option<File>>;
    /// The manifest's bytes and version; `None` where it is known absent.
    fn read_manifest(&self) -> Result<Option<(Vec<u8>, Version)>>;
    /// Begins a write: takes a local store's exclusive lock (else
    /// [`Error::Locked`]), checks its layout, reads the manifest the write
    /// begins from (with its version, for the conditional put).
    fn begin_write(&self) -> Result<(Lease, Vec<u8>)>;
    /// Starts putting a content object (put-if-absent, streamed) as part of
    /// the write `lease`.
    fn put_object<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>>;
    /// Starts putting a content object outside any write: one coded by a
    /// rank of a distributed save (`store/shared.rs`), which the
    /// coordinator's write adopts later ([`Backend::adopt_pending`]). Until
    /// then other writes' garbage collection leaves it alone for the grace
    /// period (a local store keeps it under `pending/`; object storage's
    /// unlisted objects go by age anyway). `lease` is the rank's own (no
    /// lock is held).
    fn put_pending<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>>;
    /// As part of the write `lease`: the pending objects `objects` (name
    /// and length) become content objects, each checked first; the error
    /// names one that is missing or damaged.
    fn adopt_pending(&self, lease: &Lease, objects: &[(String, u64)]) -> Result<()>;
    /// Publishes `manifest` as the result of the write `lease` if the
    /// manifest is still the one it began from (compare and swap; a lost
    /// race is [`Error::Conflict`]); durable once it returns. Then every
    /// object this write put that `listed` names is there (object storage
    /// puts again one that a concurrent garbage collection removed).
    fn publish_manifest(
        &self,
        lease: &Lease,
        manifest: Vec<u8>,
        listed: &HashSet<&str>,
    ) -> Result<()>;
    /// Maps content object `name` (a local file, or a downloaded copy).
    fn get_object(&self, name: &str) -> Result<FileBytes>;
    /// The XXH3-128 (hex) of content object `name` as stored.
    fn object_digest(&self, name: &str) -> Result<String>;
    /// Where content object `name` is, for messages.
    fn object_display(&self, name: &str) -> String;
    /// What the store wrote that `listed` does not name (leftovers), and
    /// beside it what the store did not write (foreign: never read, never
    /// deleted).
    fn scan(&self, listed: &HashSet<&str>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)>;
    /// What the write `lease` may delete now: unlisted in `new`, and
    /// provably nobody else's pending write (a local store under its lock:
    /// every leftover; object storage: nothing before this write's own
    /// commit, then by the server's times, see docs/STORE.md). `old`: what
    /// the manifest the write began from lists.
    fn collectable(
        &self,
        lease: &Lease,
        old: &HashSet<&str>,
        new: &HashSet<&str>,
        committed: bool,
    ) -> Result<Vec<Garbage>>;
    /// Deletes `g`, checked again just before (a link or a renewed object
    /// in its place is left alone).
    fn delete(&self, g: &Garbage) -> Result<()>;
    /// Where decoded files too large for memory go.
    fn spill_dir(&self) -> PathBuf;
    /// How old an unlisted object must be before garbage collection deletes
    /// it, where ages count (object storage; tests shorten it).
    fn set_gc_grace(&self, _grace: Duration) {}
}

/// The backend for `location`: `s3://bucket/prefix` on object storage
/// (feature `s3`), anything else a local directory.
pub(crate) fn for_location(location: &str) -> Result<Box<dyn Backend>> {
    if location.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return s3::S3Backend::open(location).map(|b| Box::new(b) as Box<dyn Backend>);
        #[cfg(not(feature = "s3"))]
        return Err(Error::InvalidArgument(format!(
            "{location}: this build of tpde has no object storage support (cargo feature `s3`)"
        )));
    }
    Ok(Box::new(local::Local::new(Path::new(location))))
}

/// A store error about the store at `root`.
pub(crate) fn store_error(root: &Path, msg: impl Into<String>) -> Error {
    Error::Store {
        path: root.to_path_buf(),
        msg: msg.into(),
    }
}

/// The error of a location that holds no store.
pub(crate) fn not_a_store(root: &Path) -> Error {
    store_error(
        root,
        format!("not a tpde store (no {MANIFEST}); create one with `tpde store init`"),
    )
}

/// Content object `name`'s place under the store: `objects/ab/ab….tpde`.
pub(crate) fn object_rel(name: &str) -> String {
    format!("{OBJECTS}/{}/{name}.tpde", &name[..2.min(name.len())])
}

/// A content object's name: the XXH3-128 of its bytes in lower-case hex.
pub(crate) fn is_object_name(n: &str) -> bool {
    n.len() == 32 && n.bytes().all(is_lower_hex)
}

pub(crate) fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Where temporary files go that are not in a local store's own `tmp/`
/// (object storage, a store that cannot be written): `TPDE_TMPDIR`, else
/// the system's temporary folder.
pub(crate) fn local_temp_dir() -> PathBuf {
    std::env::var_os("TPDE_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// A fresh name in `dir` for a temporary file: `WHAT-PID-N-NANOS.tmp`.
pub(crate) fn temp_name(dir: &Path, what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{what}-{}-{n}-{nanos:08x}.tmp", std::process::id()))
}

/// A name [`temp_name`] gives.
pub(crate) fn is_temp_name(n: &str) -> bool {
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
