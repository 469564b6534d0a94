//! Every write the store makes goes through [`StoreIo`]: temporary files,
//! fsync, rename, remove. Tests can make it fail at the n-th operation and at
//! every one after it, which is what a crash looks like from the disk's side
//! (nothing after the crash happens, not even the cleanup).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A plan of injected faults: the operation numbered `after` (from 0) and
/// every later one fail; a write that fails first writes half of its buffer.
#[derive(Debug, Clone)]
pub struct Faults {
    after: u64,
    count: Arc<AtomicU64>,
}

impl Faults {
    /// Fail from the `after`-th write operation on.
    pub fn after(after: u64) -> Faults {
        Faults {
            after,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many operations were attempted so far (failed ones included).
    pub fn operations(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// True once the faults have started.
    pub fn tripped(&self) -> bool {
        self.operations() > self.after
    }
}

/// The store's writes, optionally failing on a [`Faults`] plan.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreIo {
    faults: Option<Faults>,
}

impl StoreIo {
    pub(crate) fn with_faults(faults: Faults) -> StoreIo {
        StoreIo {
            faults: Some(faults),
        }
    }

    /// Counts one operation; fails when the plan says so.
    pub(crate) fn tick(&self, what: &str, target: &dyn std::fmt::Display) -> io::Result<()> {
        if let Some(f) = &self.faults {
            let n = f.count.fetch_add(1, Ordering::SeqCst);
            if n >= f.after {
                return Err(io::Error::other(format!(
                    "injected fault #{n} at {what} of {target}"
                )));
            }
        }
        Ok(())
    }

    /// Creates a new file (which must not exist) for writing.
    pub(crate) fn create(&self, path: &Path) -> io::Result<FaultyFile> {
        self.tick("create", &path.display())?;
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(FaultyFile {
            inner: BufWriter::with_capacity(
                1 << 20,
                Inner {
                    file,
                    io: self.clone(),
                    path: path.to_path_buf(),
                },
            ),
        })
    }

    /// Flushes and fsyncs a file written with [`StoreIo::create`].
    pub(crate) fn finish(&self, f: FaultyFile) -> io::Result<()> {
        let inner = f.inner.into_inner().map_err(|e| e.into_error())?;
        self.tick("fsync", &inner.path.display())?;
        inner.file.sync_all()
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick("rename", &to.display())?;
        std::fs::rename(from, to)
    }

    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick("remove", &path.display())?;
        std::fs::remove_file(path)
    }

    /// Makes the entries of a directory (a rename into it) durable.
    pub(crate) fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.tick("fsync", &path.display())?;
        File::open(path)?.sync_all()
    }

    /// Writes `path` whole: a temporary file in `tmp_dir`, fsynced, renamed
    /// over `path`, and the directory of `path` fsynced.
    pub(crate) fn write_file(&self, tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = temp_name(tmp_dir, "write");
        let mut f = self.create(&tmp)?;
        f.write_all(bytes)?;
        self.finish(f)?;
        self.rename(&tmp, path)?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// Where temporary files go that are not in a local store's own `tmp/`
/// (object storage, a store that cannot be written): `TPDE_TMPDIR`, else
/// the system's temporary folder.
pub(crate) fn local_temp_dir() -> PathBuf {
    std::env::var_os("TPDE_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// A fresh name in `dir` for a temporary file.
pub(crate) fn temp_name(dir: &Path, what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{what}-{}-{n}-{nanos:08x}.tmp", std::process::id()))
}

/// A file being written through [`StoreIo`] (buffered).
pub(crate) struct FaultyFile {
    inner: BufWriter<Inner>,
}

impl Write for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Inner {
    file: File,
    io: StoreIo,
    path: PathBuf,
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.io.tick("write", &self.path.display()) {
            // A torn write: part of the data reaches the disk.
            let _ = self.file.write_all(&buf[..buf.len() / 2]);
            return Err(e);
        }
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
