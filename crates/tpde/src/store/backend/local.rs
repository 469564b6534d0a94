//! The store in a local folder: everything that touches the store's own
//! files. Writers hold `lock` (flock) exclusively, readers share it; every
//! object and manifest is written to `tmp/`, fsynced and renamed into
//! place, the folder fsynced after. Garbage collection removes only
//! regular files with the names the store gives them, following no link.
//!
//! ```text
//! DIR/tpde-store.json          the manifest (renamed over the old one: the commit)
//! DIR/lock                     held by whoever writes; readers share it
//! DIR/objects/ab/ab12….tpde    content objects
//! DIR/tmp/                     files being written
//! DIR/pending/                 objects coded by the ranks of a distributed
//!                              save, until its coordinator's write adopts
//!                              them (renamed into objects/)
//! ```
//!
//! May call: `common` (safefs, mmap, errors), `container::format` (digests)
//! and the shared names of [`super`].

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{
    is_lower_hex, is_object_name, is_temp_name, local_temp_dir, store_error, temp_name, Backend,
    Garbage, Lease, ObjectWriter, Version, MANIFEST, OBJECTS,
};
use crate::common::error::{Error, Result};
use crate::common::mmap::{digest_released, FileBytes};
use crate::common::safefs;
use crate::container::format;

const LOCK: &str = "lock";
const TMP: &str = "tmp";
const PENDING: &str = "pending";
/// How old a pending object must be before another write's garbage
/// collection removes it (a distributed save commits well within it).
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// A store in the folder `root`.
#[derive(Debug)]
pub(crate) struct Local {
    root: PathBuf,
    /// Age past which an unadopted pending object is garbage.
    grace: Mutex<Duration>,
}

impl Local {
    /// A writer of a new object, through a temporary file created in
    /// `dir` (`objects/`'s temporary folder, or `pending/` for `pending`).
    fn writer_in(&self, dir: &Path, pending: bool) -> Result<Box<dyn ObjectWriter + '_>> {
        let tmp = temp_name(dir, "object");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(Box::new(LocalWriter {
            store: self,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            pending,
        }))
    }

    pub(crate) fn new(root: &Path) -> Local {
        Local {
            root: root.to_path_buf(),
            grace: Mutex::new(DEFAULT_GRACE),
        }
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        store_error(&self.root, msg)
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

    fn pending_path(&self, name: &str) -> PathBuf {
        self.root.join(PENDING).join(format!("{name}.tpde"))
    }

    /// Maps pending object `name`, following no link.
    fn open_pending(&self, name: &str) -> Result<FileBytes> {
        let path = self.pending_path(name);
        let file = safefs::open_beneath(&self.root, &[PENDING, &format!("{name}.tpde")])
            .map_err(|e| Error::io(&path, e))?;
        FileBytes::from_file(&file, &path)
    }

    /// The files under `pending/` that the store wrote (temporary files and
    /// objects with the store's names), with their modification times;
    /// anything else there is foreign.
    fn scan_pending(&self) -> (Vec<(PathBuf, Option<SystemTime>)>, Vec<PathBuf>) {
        let (mut ours, mut foreign) = (Vec::new(), Vec::new());
        let dir = self.root.join(PENDING);
        if !safefs::real_dir(&dir).unwrap_or(false) {
            return (ours, foreign);
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return (ours, foreign);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(md) = e.metadata() else { continue }; // does not follow links
            let object = name.strip_suffix(".tpde").is_some_and(is_object_name);
            if md.is_file() && (object || is_temp_name(&name)) {
                ours.push((e.path(), md.modified().ok()));
            } else {
                foreign.push(e.path());
            }
        }
        (ours, foreign)
    }

    fn object_path(&self, name: &str) -> PathBuf {
        self.root.join(super::object_rel(name))
    }

    /// Maps content object `name`, following no link inside the store.
    fn open_object(&self, name: &str) -> Result<FileBytes> {
        let path = self.object_path(name);
        let sub = name.get(..2).unwrap_or("");
        let file_name = format!("{name}.tpde");
        let file = safefs::open_beneath(&self.root, &[OBJECTS, sub, &file_name])
            .map_err(|e| Error::io(&path, e))?;
        FileBytes::from_file(&file, &path)
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

    /// Before a write: `tmp/` and `objects/` are the store's own folders,
    /// not links (which would make the store write and delete elsewhere).
    fn check_layout(&self) -> Result<()> {
        if let Err(e) = safefs::real_dir(&self.root.join(PENDING)) {
            return Err(self.err(format!("{e}; nothing was written (fix the store's layout)")));
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

/// Writes `bytes` to a new temporary file in `tmp_dir`, fsynced; returns
/// its path (removed again when anything fails).
fn write_temp(tmp_dir: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = temp_name(tmp_dir, "write");
    let written = (|| {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl Backend for Local {
    fn location(&self) -> &Path {
        &self.root
    }

    fn exists(&self) -> Result<bool> {
        Ok(std::fs::symlink_metadata(self.root.join(MANIFEST)).is_ok())
    }

    fn create(&self, manifest: &[u8], parents: bool) -> Result<()> {
        let dir = &self.root;
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
                    return Err(self.err("exists and is not a folder"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.err(format!(
                    "the folder {} does not exist; create it first, or ask for missing \
                     parent folders to be made (`tpde store init --parents`, \
                     `tpde.Store(path, create_parents=True)`)",
                    safefs::parent_of(dir).display()
                )));
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        self.check_new_folder()?;
        // Concurrent creators wait for each other here; the late ones find
        // the manifest.
        let lock = self.lock_file(true)?;
        lock.lock().map_err(|e| Error::io(dir.join(LOCK), e))?;
        if self.exists()? {
            return Err(self.err("already holds a store"));
        }
        self.check_new_folder()?;
        for d in [OBJECTS, TMP] {
            let p = dir.join(d);
            safefs::ensure_dir(&p).map_err(|e| Error::io(&p, e))?;
        }
        // The manifest appears whole, and never over another one.
        let path = dir.join(MANIFEST);
        let tmp_dir = dir.join(TMP);
        let written = write_temp(&tmp_dir, manifest).and_then(|tmp| {
            safefs::rename_noreplace(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            safefs::sync_dir(dir)
        });
        written.map_err(|e| Error::io(&path, e))?;
        drop(lock);
        Ok(())
    }

    /// Waits for a writer. A read-only store without a lock file can still
    /// be read; a lock that is not a regular file (a FIFO, a link) is
    /// refused.
    fn read_lock(&self) -> Result<Option<File>> {
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

    /// A missing manifest is an I/O error naming it (the lock keeps
    /// versions: there are none).
    fn read_manifest(&self) -> Result<Option<(Vec<u8>, Version)>> {
        let path = self.root.join(MANIFEST);
        let mut text = Vec::new();
        safefs::open_regular(&path)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut text))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Some((text, None)))
    }

    fn begin_write(&self) -> Result<(Lease, Vec<u8>)> {
        let lock = self.lock_exclusive()?;
        let (text, _) = self.read_manifest()?.unwrap_or_default();
        self.check_layout()?;
        let lease = Lease {
            _hold: Some(lock),
            ..Lease::default()
        };
        Ok((lease, text))
    }

    fn put_object<'a>(&'a self, _lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        self.writer_in(&self.root.join(TMP), false)
    }

    /// Written to `pending/`, out of reach of other writes' garbage
    /// collection until it is older than the grace period.
    fn put_pending<'a>(&'a self, _lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        let dir = self.root.join(PENDING);
        match safefs::real_dir(&dir) {
            Ok(true) => {}
            Ok(false) => safefs::ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?,
            Err(e) => return Err(self.err(format!("{e}; nothing was written"))),
        }
        self.writer_in(&dir, true)
    }

    /// Every pending object is checked first (its length and digest), then
    /// each is renamed into `objects/`; one whose intact copy is there
    /// already is dropped. A failed check moves nothing.
    fn adopt_pending(&self, _: &Lease, objects: &[(String, u64)]) -> Result<()> {
        let intact = |b: &FileBytes, name: &str, len: u64| {
            b.len() as u64 == len && format::digest_hex(digest_released(b)) == name
        };
        let mut moves = Vec::new();
        for (name, len) in objects {
            if self.open_object(name).is_ok_and(|b| intact(&b, name, *len)) {
                moves.push((name, false));
                continue;
            }
            let bytes = self.open_pending(name).map_err(|e| {
                self.err(format!(
                    "content object {name} of a rank's save: {e} (was the save interrupted?)"
                ))
            })?;
            if !intact(&bytes, name, *len) {
                return Err(self.err(format!(
                    "content object {} of a rank's save is damaged (not {len} bytes with \
                     that digest)",
                    self.pending_path(name).display()
                )));
            }
            moves.push((name, true));
        }
        for (name, pending) in moves {
            let src = self.pending_path(name);
            if !pending {
                let _ = std::fs::remove_file(&src);
                continue;
            }
            let dest = self.object_path(name);
            let dir = dest.parent().expect("objects have a folder");
            safefs::ensure_dir(dir)
                .and_then(|()| std::fs::rename(&src, &dest))
                .and_then(|()| safefs::sync_dir(dir))
                .map_err(|e| Error::io(&dest, e))?;
        }
        let pending = self.root.join(PENDING);
        if safefs::real_dir(&pending).unwrap_or(false) {
            safefs::sync_dir(&pending).map_err(|e| Error::io(&pending, e))?;
        }
        Ok(())
    }

    /// The manifest is written to `tmp/`, fsynced and renamed over the old
    /// one (the lock makes that the compare and swap); every object is
    /// durable already.
    fn publish_manifest(&self, _: &Lease, manifest: Vec<u8>, _: &HashSet<&str>) -> Result<()> {
        let path = self.root.join(MANIFEST);
        let published = write_temp(&self.root.join(TMP), &manifest).and_then(|tmp| {
            std::fs::rename(&tmp, &path)?;
            safefs::sync_dir(&self.root)
        });
        published.map_err(|e| Error::io(&path, e))
    }

    fn get_object(&self, name: &str) -> Result<FileBytes> {
        self.open_object(name)
    }

    fn object_digest(&self, name: &str) -> Result<String> {
        self.open_object(name)
            .map(|b| format::digest_hex(digest_released(&b)))
    }

    fn object_display(&self, name: &str) -> String {
        self.object_path(name).display().to_string()
    }

    /// Files under `tmp/` and `objects/` that `listed` does not name and
    /// that the store wrote: temporary files with the names the store gives
    /// them, content objects named by their digest. Nothing else is ever
    /// counted, and no link is followed.
    fn scan(&self, listed: &HashSet<&str>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
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
        let (pending, pending_foreign) = self.scan_pending();
        garbage.extend(pending.into_iter().map(|(p, _)| p));
        foreign.extend(pending_foreign);
        garbage.sort();
        foreign.sort();
        Ok((garbage, foreign))
    }

    /// Under the lock no other write is pending: every leftover in `tmp/`
    /// and `objects/` goes. What is in `pending/` may belong to a
    /// distributed save whose ranks are still coding: it goes once it is
    /// older than the grace period.
    fn collectable(
        &self,
        _: &Lease,
        _old: &HashSet<&str>,
        new: &HashSet<&str>,
        _committed: bool,
    ) -> Result<Vec<Garbage>> {
        let pending_dir = self.root.join(PENDING);
        let grace = self.grace.lock().map(|g| *g).unwrap_or(DEFAULT_GRACE);
        let now = SystemTime::now();
        let old_enough = |t: Option<SystemTime>| {
            t.is_some_and(|t| now.duration_since(t).is_ok_and(|age| age >= grace))
        };
        let settled = self
            .scan(new)?
            .0
            .into_iter()
            .filter(|p| !p.starts_with(&pending_dir));
        let stale = self
            .scan_pending()
            .0
            .into_iter()
            .filter(|(_, t)| old_enough(*t))
            .map(|(p, _)| p);
        Ok(settled
            .chain(stale)
            .map(|shown| Garbage {
                shown,
                object: None,
                modified_before: None,
            })
            .collect())
    }

    /// Regular files only (a link in its place is left alone).
    fn delete(&self, g: &Garbage) -> Result<()> {
        let p = &g.shown;
        if !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
            return Ok(());
        }
        std::fs::remove_file(p).map_err(|e| Error::io(p, e))
    }

    /// The store's own `tmp/` (on the store's disk) when it can be written,
    /// else `TPDE_TMPDIR` or the system's temporary folder.
    fn set_gc_grace(&self, grace: Duration) {
        if let Ok(mut g) = self.grace.lock() {
            *g = grace;
        }
    }

    fn spill_dir(&self) -> PathBuf {
        let own = self.root.join(TMP);
        let writable =
            std::fs::metadata(&own).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
        if writable {
            own
        } else {
            local_temp_dir()
        }
    }
}

/// A content object being written to `tmp/` (or `pending/`); renamed into
/// `objects/` (or `pending/NAME.tpde`) by `finish`, removed when dropped
/// unfinished.
struct LocalWriter<'a> {
    store: &'a Local,
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    /// A rank's object of a distributed save, kept under `pending/`.
    pending: bool,
}

impl Write for LocalWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the object is finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for LocalWriter<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl ObjectWriter for LocalWriter<'_> {
    fn path(&self) -> &Path {
        &self.tmp
    }

    /// The same content may be stored already (an unchanged file); a copy
    /// that no longer hashes to its name (a damaged disk) is replaced.
    fn finish(mut self: Box<Self>, name: &str, _listed: bool) -> Result<()> {
        let tmp = self.tmp.clone();
        let file = self.file.take().expect("an unfinished object has its file");
        let synced = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        let dest = if self.pending {
            self.store.pending_path(name)
        } else {
            self.store.object_path(name)
        };
        let dir = dest.parent().expect("objects have a folder");
        let io_err = |e| Error::io(&dest, e);
        let opened = if self.pending {
            self.store.open_pending(name)
        } else {
            self.store.open_object(name)
        };
        let intact = opened.is_ok_and(|b| format::digest_hex(digest_released(&b)) == name);
        if intact {
            return std::fs::remove_file(&tmp).map_err(io_err);
        }
        let placed = safefs::ensure_dir(dir).and_then(|()| std::fs::rename(&tmp, &dest));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        safefs::sync_dir(dir).map_err(io_err)
    }
}

/// True when folder `dir` holds nothing, or only entries `allowed` accepts.
fn dir_is_empty(dir: &Path, allowed: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().all(|e| {
            e.file_type().is_ok_and(|t| t.is_file()) && allowed(&e.file_name().to_string_lossy())
        })
    })
}
