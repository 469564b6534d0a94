//! Read-only memory maps of input files, letting go of the pages of a map
//! that were read, and surviving files that change under their map. The
//! only `unsafe` in tpde: the SIGBUS handler's in `guard` (Linux; a stub
//! stands in elsewhere), and here the two blocks that make a map and let go
//! of its pages.
//!
//! A mapped file's pages count in the process's resident memory once read,
//! until the kernel needs them back. Encoding or decoding a 30 GB checkpoint
//! would then look (and, under a memory limit, be charged) like a 30 GB
//! process. [`release`] drops the pages of a range that was read, so that a
//! streaming pass holds only its window of each file: bounded by the batch
//! size, whatever the file's size.
//!
//! A mapped file that another process truncates makes every read past its
//! new end raise SIGBUS, which kills the process (a training run, when tpde
//! is called from Python). On Linux, tpde installs a SIGBUS handler (once,
//! with the first map) that, for a fault inside one of its own maps, puts
//! zero pages where the file is gone, marks the map and returns: the read
//! gives zeros, and [`FileBytes::check_unchanged`] (which `encode` calls on
//! its inputs) reports [`Error::InputChanged`]. Other faults go to the
//! handler that was there before (Python's faulthandler, Rust's own), or to
//! the default action: the process dies as it would have. The handler finds
//! tpde's maps in a fixed table of atomics (no lock: it runs inside a
//! signal); when the table is full, a file is read into memory instead.
//! A file rewritten in place shows in its size, times or inode, which
//! `check_unchanged` compares with what they were when it was opened.

use std::fs::{File, Metadata};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::error::{Error, Result};

/// The bytes of a file, memory-mapped read-only (or, in the rare case that
/// tpde cannot guard one more map, read into memory), with what the file was
/// when opened: [`check_unchanged`](FileBytes::check_unchanged) tells
/// whether it changed since.
#[derive(Debug)]
pub struct FileBytes {
    source: Arc<Source>,
}

#[derive(Debug)]
struct Source {
    data: Data,
    /// The file, as the caller named it (for messages).
    path: PathBuf,
    /// The file's absolute path (for looking at it again).
    absolute: PathBuf,
    /// What the file was when opened; `None` for a file tpde wrote itself
    /// and named by something else (a folder).
    identity: Option<Identity>,
}

#[derive(Debug)]
enum Data {
    Empty,
    Mapped(Mapping),
    Read(Vec<u8>),
}

/// A map, and its slot in the table of the SIGBUS handler (none where tpde
/// has no handler).
#[derive(Debug)]
struct Mapping {
    map: memmap2::Mmap,
    slot: Option<guard::Slot>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Out of the handler's table before the map field is dropped (and
        // unmapped): the handler never sees a range that is not a live map.
        if let Some(slot) = self.slot {
            guard::unregister(slot);
        }
    }
}

/// What identifies a version of a file: its inode, size and times (in ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &Metadata) -> Identity {
        let nanos = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos() as i64))
        };
        Identity {
            dev: 0,
            ino: 0,
            len: meta.len(),
            mtime: nanos(meta.modified()),
            ctime: nanos(meta.created()),
        }
    }
}

/// Every live [`FileBytes`] that holds bytes, so that [`release`] can tell a
/// slice of a file map from other memory (where dropping pages would lose
/// data), and [`check_unchanged`] the file a slice comes from. Not for the
/// signal handler, which must not lock: it has its own table.
static SOURCES: Mutex<Vec<Arc<Source>>> = Mutex::new(Vec::new());

fn sources() -> std::sync::MutexGuard<'static, Vec<Arc<Source>>> {
    SOURCES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FileBytes {
    /// Maps `path` read-only. An empty file gives an empty slice.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a directory, not a file",
                ),
            ));
        }
        Self::new(&file, Some(Identity::of(&meta)), path)
    }

    /// Maps a file already open for reading (`path` names it in errors), such
    /// as a temporary file tpde wrote and will not write again.
    pub(crate) fn from_file(file: &File, path: &Path) -> Result<Self> {
        Self::new(file, None, path)
    }

    fn new(file: &File, identity: Option<Identity>, path: &Path) -> Result<Self> {
        let len = match identity {
            Some(id) => id.len,
            None => file.metadata().map_err(|e| Error::io(path, e))?.len(),
        };
        let source = Arc::new(Source {
            data: Data::load(file, len, path)?,
            path: path.to_path_buf(),
            absolute: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            identity,
        });
        if !matches!(source.data, Data::Empty) {
            sources().push(Arc::clone(&source));
        }
        Ok(FileBytes { source })
    }

    /// Checks that the file is as it was when opened: same inode, size and
    /// modification and change times, and (where the map would have raised
    /// SIGBUS) not cut short while it was read. Call it once done reading
    /// (after encoding, before committing what was made of the bytes): on
    /// [`Error::InputChanged`] the bytes read may mix two versions of the
    /// file, and what was made of them should be thrown away.
    ///
    /// A file replaced (renamed over) or removed counts as changed. A rewrite
    /// that keeps the size and lands within the same tick of the file
    /// system's clock as the open cannot be seen.
    pub fn check_unchanged(&self) -> Result<()> {
        self.source.check()
    }
}

impl Source {
    fn check(&self) -> Result<()> {
        let changed = || Error::InputChanged {
            path: self.path.clone(),
        };
        if let Data::Mapped(Mapping {
            slot: Some(slot), ..
        }) = &self.data
        {
            if guard::truncated(*slot) {
                return Err(changed());
            }
        }
        match self.identity {
            None => Ok(()),
            Some(id) => match std::fs::metadata(&self.absolute) {
                Ok(meta) if Identity::of(&meta) == id => Ok(()),
                _ => Err(changed()),
            },
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Empty => &[],
            Data::Mapped(m) => &m.map[..],
            Data::Read(v) => v,
        }
    }

    fn contains(&self, bytes: &[u8]) -> bool {
        let (start, own) = (bytes.as_ptr() as usize, self.bytes());
        let own_start = own.as_ptr() as usize;
        start >= own_start && start + bytes.len() <= own_start + own.len()
    }
}

impl Data {
    fn load(file: &File, len: u64, path: &Path) -> Result<Data> {
        if len == 0 {
            return Ok(Data::Empty);
        }
        let slot = match guard::reserve() {
            guard::Reserve::Slot(slot) => Some(slot),
            guard::Reserve::Unguarded => None,
            guard::Reserve::Full => return read_all(file, len, path).map(Data::Read),
        };
        // SAFETY: the file is open read-only or is a temporary file tpde no
        // longer writes, and tpde never writes to a file it has mapped. The
        // map stays valid while `FileBytes` lives. Another process may still
        // truncate or rewrite the file meanwhile: on Linux a read past the
        // new end raises SIGBUS, which the handler of `guard` turns into
        // zeros and a mark (the map is in its table before anyone reads it,
        // and leaves it before it is unmapped); a rewrite only changes the
        // values of bytes, which tpde's readers accept whatever they are (u8
        // has no invalid values: the input is copied once per window, the
        // reference checked by the chunk checksums when decoding), and shows
        // in the file's times, which `check_unchanged` compares. Elsewhere,
        // such a truncation is outside what tpde can guard against (as for
        // every memory-mapped reader).
        let map = match unsafe { memmap2::Mmap::map(file) } {
            Ok(map) => map,
            Err(e) => {
                if let Some(slot) = slot {
                    guard::unregister(slot);
                }
                return Err(Error::io(path, e));
            }
        };
        if let Some(slot) = slot {
            guard::publish(slot, map.as_ptr() as usize, map.len());
        }
        Ok(Data::Mapped(Mapping { map, slot }))
    }
}

/// The first `len` bytes of `file`, read into memory (when it cannot be
/// mapped safely). A file shorter than that changed since it was measured.
fn read_all(file: &File, len: u64, path: &Path) -> Result<Vec<u8>> {
    let too_large = || {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "too large to read into memory",
            ),
        )
    };
    let len = usize::try_from(len).map_err(|_| too_large())?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| too_large())?;
    bytes.resize(len, 0);
    let mut done = 0;
    while done < len {
        match read_at(file, &mut bytes[done..], done as u64) {
            Ok(0) => {
                return Err(Error::InputChanged {
                    path: path.to_path_buf(),
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(bytes)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(not(any(unix, windows)))]
fn read_at(_: &File, _: &mut [u8], _: u64) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::Unsupported.into())
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        sources().retain(|s| !Arc::ptr_eq(s, &self.source));
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.source.bytes()
    }
}

/// Checks the file that `bytes` were read from (when they lie in a live
/// [`FileBytes`]) with [`FileBytes::check_unchanged`]. Other bytes pass.
pub(crate) fn check_unchanged(bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let source = sources().iter().find(|s| s.contains(bytes)).cloned();
    source.map_or(Ok(()), |s| s.check())
}

/// Whether `bytes` lie in a live [`FileBytes`] (a file map or a file's
/// bytes read into memory).
pub(crate) fn is_mapped(bytes: &[u8]) -> bool {
    !bytes.is_empty() && sources().iter().any(|s| s.contains(bytes))
}

/// Lets go of the memory pages holding `bytes` when they lie in a file
/// mapped by [`FileBytes`]: they stop counting as this process's memory, and
/// reading them again reads the file again (from the page cache, usually).
/// Anything else (bytes on the heap) is left alone. Best effort: an error of
/// the system call only means the pages stay.
pub(crate) fn release(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // The registry stays locked while advising, so a map cannot be
    // unregistered and unmapped meanwhile.
    let sources = sources();
    let Some(map) = sources.iter().find_map(|s| match &s.data {
        Data::Mapped(m) if s.contains(bytes) => Some(&m.map),
        _ => None,
    }) else {
        return;
    };
    let offset = bytes.as_ptr() as usize - map.as_ptr() as usize;
    // SAFETY: `map` is a read-only shared mapping of a file (`Mmap::map`),
    // alive while it is registered (it is unregistered before it is
    // unmapped, under the same lock). MADV_DONTNEED on such a mapping only
    // drops page-table entries: no page was ever written through it, so
    // nothing is lost, and a later read faults the file's bytes back in
    // unchanged. Where the SIGBUS handler put anonymous zero pages (a file
    // cut short), they read as zeros again. The range lies inside the map
    // (checked above); memmap2 aligns its start down to a page, which only
    // drops more clean pages of the same map.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len())
    };
}

/// XXH3-128 of `bytes`, letting go of each window once hashed (see
/// [`release`]): a whole-file digest without holding the whole file.
pub(crate) fn digest_released(bytes: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for window in bytes.chunks(WINDOW) {
        h.update(window);
        release(window);
    }
    h.digest128()
}

/// Bytes hashed between two releases.
const WINDOW: usize = 16 << 20;

// The SIGBUS handler and its table of tpde's maps (Linux).
#[cfg(target_os = "linux")]
mod guard;

/// No handler: maps are made as they are.
#[cfg(not(target_os = "linux"))]
mod guard {
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Slot;

    pub(super) enum Reserve {
        #[allow(dead_code)]
        Slot(Slot),
        Unguarded,
        #[allow(dead_code)]
        Full,
    }

    pub(super) fn reserve() -> Reserve {
        Reserve::Unguarded
    }
    pub(super) fn publish(_: Slot, _: usize, _: usize) {}
    pub(super) fn unregister(_: Slot) {}
    pub(super) fn truncated(_: Slot) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// The tests that fill the handler's table, or need maps, take turns.
    static TURN: Mutex<()> = Mutex::new(());

    fn turn() -> std::sync::MutexGuard<'static, ()> {
        TURN.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file of `len` bytes, last modified an hour ago (so that a rewrite
    /// shows, however coarse the file system's clock).
    pub(super) fn old_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let path = dir.join(name);
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(&path, &data).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        (path, data)
    }

    pub(super) fn cut(path: &Path, len: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    fn assert_changed(r: Result<()>, path: &Path) {
        match r {
            Err(Error::InputChanged { path: p }) => assert_eq!(p, path),
            other => panic!("expected InputChanged for {}: {other:?}", path.display()),
        }
    }

    #[test]
    fn unchanged_files_pass_and_rewritten_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = old_file(dir.path(), "f", 100_000);
        let f = FileBytes::open(&path).unwrap();
        f.check_unchanged().unwrap();
        check_unchanged(&f[10..20]).unwrap();
        // Same size, other bytes.
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        assert_changed(f.check_unchanged(), &path);
        assert_changed(check_unchanged(&f[10..20]), &path);
        // Replaced by another file, removed.
        let (other, _) = old_file(dir.path(), "g", 10);
        let g = FileBytes::open(&other).unwrap();
        std::fs::rename(dir.path().join("f"), &other).unwrap();
        assert_changed(g.check_unchanged(), &other);
        std::fs::remove_file(&other).unwrap();
        assert_changed(g.check_unchanged(), &other);
        // An empty file that grew.
        let (empty, _) = old_file(dir.path(), "e", 0);
        let e = FileBytes::open(&empty).unwrap();
        e.check_unchanged().unwrap();
        std::fs::write(&empty, b"more").unwrap();
        assert_changed(e.check_unchanged(), &empty);
        // Bytes that are no file's pass.
        check_unchanged(&[1, 2, 3]).unwrap();
    }

    #[test]
    fn a_map_cut_short_reads_zeros_and_reports_a_change() {
        let _turn = turn();
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = old_file(dir.path(), "f", 5 * 4096 + 100);
        let f = FileBytes::open(&path).unwrap();
        assert!(matches!(f.source.data, Data::Mapped(_)));
        assert_eq!(f[4096 * 3], data[4096 * 3]);
        cut(&path, 4096 + 10);
        // Without the handler, this read raises SIGBUS.
        let sum: u64 = f.iter().map(|&b| b as u64).sum();
        assert_eq!(&f[..4096 + 10], &data[..4096 + 10]);
        assert!(f[2 * 4096..].iter().all(|&b| b == 0));
        assert!(sum > 0);
        assert_changed(f.check_unchanged(), &path);
        // The zero pages behave as the map did.
        release(&f[..]);
        assert!(f[2 * 4096..].iter().all(|&b| b == 0));
        drop(f);
        // A new map of the same file is guarded afresh.
        let (path, _) = old_file(dir.path(), "g", 3 * 4096);
        let g = FileBytes::open(&path).unwrap();
        g.check_unchanged().unwrap();
        cut(&path, 0);
        assert_eq!(g[3 * 4096 - 1], 0);
        assert_changed(g.check_unchanged(), &path);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_table_reads_files_into_memory() {
        let _turn = turn();
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = old_file(dir.path(), "f", 10_000);
        let mut taken = Vec::new();
        while let guard::Reserve::Slot(slot) = guard::reserve() {
            taken.push(slot);
        }
        let f = FileBytes::open(&path);
        for slot in taken {
            guard::unregister(slot);
        }
        let f = f.unwrap();
        assert!(matches!(f.source.data, Data::Read(_)));
        assert_eq!(&f[..], &data[..]);
        f.check_unchanged().unwrap();
        cut(&path, 10);
        assert_eq!(&f[..], &data[..]);
        assert_changed(f.check_unchanged(), &path);
        // The slots are free again.
        let g = FileBytes::open(&path).unwrap();
        assert!(matches!(g.source.data, Data::Mapped(_)));
    }

    #[test]
    fn released_pages_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 5) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = FileBytes::open(&path).unwrap();
        assert_eq!(digest_released(&f), xxhash_rust::xxh3::xxh3_128(&data));
        release(&f[12_345..2_000_000]);
        assert_eq!(&f[..], &data[..]);
        // Heap bytes are not a map: left alone.
        let heap = data.clone();
        release(&heap);
        assert_eq!(heap, data);
        drop(f);
        assert!(sources().iter().all(|s| s.bytes().len() != data.len()));
    }
}
