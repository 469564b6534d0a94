//! Read-only memory maps of input files, letting go of the pages of a map
//! that were read, and surviving files that change under their map. The
//! only `unsafe` in tpde.
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

/// The SIGBUS handler and its table of tpde's maps (Linux).
#[cfg(target_os = "linux")]
mod guard {
    use std::ptr;
    use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Once, OnceLock};

    /// Maps the handler can tell apart at once; more are read into memory.
    pub(super) const SLOTS: usize = 4096;

    /// A reserved entry of the table.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Slot(usize);

    pub(super) enum Reserve {
        /// Map, then [`publish`] the map in this slot.
        Slot(Slot),
        /// No handler here: map without one.
        #[allow(dead_code)]
        Unguarded,
        /// The table is full (or the handler could not be installed): read
        /// the file instead of mapping it.
        Full,
    }

    /// One map: `seq` is a generation count (bits 2 and up) and a state
    /// (bits 0-1), changed by the slot's owner only; the handler reads the
    /// range between two equal loads of `seq` in the `LIVE` state, so that
    /// it never mixes the range of two maps.
    struct Entry {
        seq: AtomicU64,
        start: AtomicUsize,
        len: AtomicUsize,
        truncated: AtomicBool,
    }

    const FREE: u64 = 0;
    const WRITING: u64 = 1;
    const LIVE: u64 = 2;
    const STATE: u64 = 3;

    static TABLE: [Entry; SLOTS] = [const {
        Entry {
            seq: AtomicU64::new(FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            truncated: AtomicBool::new(false),
        }
    }; SLOTS];
    /// Where to start looking for a free slot.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    /// The action tpde's handler replaced, for the faults that are not
    /// tpde's.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    fn install() -> bool {
        INSTALL.call_once(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if page <= 0 || !(page as usize).is_power_of_two() {
                return;
            }
            PAGE.store(page as usize, Ordering::Relaxed);
            // SAFETY: a zeroed sigaction is a valid value (no handler, empty
            // mask, no flags) that is filled in before use; `on_sigbus` has
            // the signature SA_SIGINFO asks for and only touches
            // async-signal-safe state (atomics, mmap, sigaction, raise).
            // sigaction swaps the handlers atomically and writes the
            // previous one into `previous`.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    on_sigbus;
                action.sa_sigaction = handler as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                    let _ = PREVIOUS.set(previous);
                    INSTALLED.store(true, Ordering::Release);
                }
            }
        });
        INSTALLED.load(Ordering::Acquire)
    }

    /// A free slot for a map about to be made.
    pub(super) fn reserve() -> Reserve {
        if !install() {
            return Reserve::Full;
        }
        let hint = NEXT.load(Ordering::Relaxed);
        for k in 0..SLOTS {
            let i = (hint + k) % SLOTS;
            let seq = TABLE[i].seq.load(Ordering::Relaxed);
            if seq & STATE == FREE
                && TABLE[i]
                    .seq
                    .compare_exchange(seq, seq | WRITING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                NEXT.store(i + 1, Ordering::Relaxed);
                return Reserve::Slot(Slot(i));
            }
        }
        Reserve::Full
    }

    /// Puts the map `[start, start + len)` in its reserved slot, before it
    /// is read.
    pub(super) fn publish(slot: Slot, start: usize, len: usize) {
        let e = &TABLE[slot.0];
        e.start.store(start, Ordering::Relaxed);
        e.len.store(len, Ordering::Relaxed);
        e.truncated.store(false, Ordering::Relaxed);
        let seq = e.seq.load(Ordering::Relaxed);
        e.seq.store(next(seq, LIVE), Ordering::Release);
    }

    /// Frees a slot, before its map is unmapped.
    pub(super) fn unregister(slot: Slot) {
        let e = &TABLE[slot.0];
        let seq = e.seq.load(Ordering::Relaxed);
        e.seq.store(next(seq, FREE), Ordering::Release);
    }

    /// Whether the handler found the slot's file cut short.
    pub(super) fn truncated(slot: Slot) -> bool {
        TABLE[slot.0].truncated.load(Ordering::Acquire)
    }

    fn next(seq: u64, state: u64) -> u64 {
        ((seq >> 2).wrapping_add(1) << 2) | state
    }

    /// The live map holding `addr`: (slot, start, len).
    fn find(addr: usize) -> Option<(usize, usize, usize)> {
        for (i, e) in TABLE.iter().enumerate() {
            let seq = e.seq.load(Ordering::Acquire);
            if seq & STATE != LIVE {
                continue;
            }
            let start = e.start.load(Ordering::Relaxed);
            let len = e.len.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) != seq {
                continue;
            }
            if addr >= start && addr - start < len {
                return Some((i, start, len));
            }
        }
        None
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO) or null;
        // si_code > 0 marks a fault raised by the kernel, for which si_addr
        // is the faulting address. errno is the calling thread's, saved and
        // restored around the system calls made here.
        let errno = unsafe { *libc::__errno_location() };
        let fault = !info.is_null() && unsafe { (*info).si_code } > 0;
        if fault {
            let addr = unsafe { (*info).si_addr() } as usize;
            if let Some((i, start, len)) = find(addr) {
                let page = PAGE.load(Ordering::Relaxed);
                let from = addr & !(page - 1);
                let to = (start + len).next_multiple_of(page);
                // SAFETY: `[from, to)` lies within the pages of a live
                // read-only map of tpde (in the table: registered after it
                // was made, removed before it is unmapped; read by this
                // thread right now, so not being dropped). Replacing those
                // pages with private anonymous zero pages, read-only like
                // the map, leaves a valid mapping that reads as zeros where
                // the file is gone; munmap of the whole map removes them
                // with the rest. mmap is a plain system call.
                let p = unsafe {
                    libc::mmap(
                        from as *mut libc::c_void,
                        to - from,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    TABLE[i].truncated.store(true, Ordering::Release);
                    // SAFETY: as above.
                    unsafe { *libc::__errno_location() = errno };
                    return;
                }
            }
        }
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        not_ours(sig, info, ctx, fault);
    }

    /// Hands a SIGBUS that is not tpde's to the action it replaced.
    fn not_ours(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, fault: bool) {
        let previous = PREVIOUS.get();
        let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
        if handler == libc::SIG_IGN && !fault {
            return;
        }
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // The default action (a fault cannot be ignored): reset it and
            // let the signal come again, a fault by running the faulting
            // instruction again on return, a sent signal by raising it (it
            // is blocked until this handler returns).
            // SAFETY: sigaction and raise are async-signal-safe; a zeroed
            // sigaction is SIG_DFL with an empty mask.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &action, ptr::null_mut());
                if !fault {
                    libc::raise(sig);
                }
            }
            return;
        }
        let Some(previous) = previous else { return };
        // SAFETY: `handler` is the function that was installed for SIGBUS
        // before tpde's, with the signature its flags say; it is called as
        // the kernel would have called it.
        unsafe {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(sig);
            }
        }
    }
}

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
    fn old_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
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

    fn cut(path: &Path, len: u64) {
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

    /// A SIGBUS that is not in one of tpde's maps still kills the process
    /// (through the handler that was there before: Rust's, in a test).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_fault_elsewhere_still_kills() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "TPDE_TEST_FOREIGN_SIGBUS_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            let (ours, _) = old_file(dir, "ours", 2 * 4096);
            let ours = FileBytes::open(&ours).unwrap();
            let (theirs, _) = old_file(dir, "theirs", 2 * 4096);
            let file = File::open(&theirs).unwrap();
            // SAFETY: a test of the handler: the file is cut short below on
            // purpose, and the read that follows must kill this process.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            cut(&theirs, 0);
            let byte = std::hint::black_box(&map[..])[4096 + 1];
            eprintln!("survived a foreign SIGBUS (read {byte}, {})", ours.len());
            std::process::exit(0);
        }
        let dir = tempfile::tempdir().unwrap();
        // The test's own name, wherever the module sits in the crate.
        let name = module_path!().split_once("::").unwrap().1.to_owned()
            + "::a_fault_elsewhere_still_kills";
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        assert_eq!(
            run.status.signal(),
            Some(libc::SIGBUS),
            "{:?}: {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
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
