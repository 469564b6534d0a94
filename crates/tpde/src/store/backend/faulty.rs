//! Faults and test hooks injected at the [`Backend`] interface, so that the
//! same crash plans apply to every backend. [`Faulty`] wraps a backend and
//! counts its write operations: the start of each object put, each write
//! reaching it (through a 1 MiB buffer, as a disk sees them), the finish
//! of each put, the manifest's publication, a point just after it (the
//! commit is durable but its caller never hears so) and each deletion. With
//! [`Faults::after`]`(n)` the operation numbered `n` and every later one
//! fail, which is what a crash looks like from the store's side: nothing
//! after it happens, not even cleanup of the store's own.
//!
//! May call: [`super`] (the trait) and `common::error`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Garbage, Lease, ObjectWriter, Version};
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;

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

/// A test hook run at a point of a write.
pub(crate) type Hook = Box<dyn Fn() + Send + Sync>;

/// A backend whose operations fail as a [`Faults`] plan says, and which
/// runs hooks just after a write began and just before it publishes.
pub(crate) struct Faulty {
    inner: Box<dyn Backend>,
    faults: Option<Faults>,
    after_begin: Option<Hook>,
    before_publish: Option<Hook>,
}

impl Faulty {
    pub(crate) fn wrap(inner: Box<dyn Backend>) -> Faulty {
        Faulty {
            inner,
            faults: None,
            after_begin: None,
            before_publish: None,
        }
    }

    pub(crate) fn faults(mut self, faults: Faults) -> Faulty {
        self.faults = Some(faults);
        self
    }

    pub(crate) fn after_begin(mut self, hook: Hook) -> Faulty {
        self.after_begin = Some(hook);
        self
    }

    pub(crate) fn before_publish(mut self, hook: Hook) -> Faulty {
        self.before_publish = Some(hook);
        self
    }

    /// Counts one operation; fails when the plan says so.
    /// `inner` with every 1 MiB written counted as an operation.
    fn torn<'a>(&self, inner: Box<dyn ObjectWriter + 'a>) -> Box<dyn ObjectWriter + 'a> {
        let path = inner.path().to_path_buf();
        Box::new(FaultyWriter {
            buf: BufWriter::with_capacity(
                1 << 20,
                Torn {
                    inner,
                    faults: self.faults.clone(),
                    path,
                },
            ),
        })
    }

    fn tick(&self, what: &str, target: &dyn std::fmt::Display) -> Result<()> {
        tick(&self.faults, what, target).map_err(|e| Error::io(self.inner.location(), e))
    }
}

fn tick(faults: &Option<Faults>, what: &str, target: &dyn std::fmt::Display) -> io::Result<()> {
    if let Some(f) = faults {
        let n = f.count.fetch_add(1, Ordering::SeqCst);
        if n >= f.after {
            return Err(io::Error::other(format!(
                "injected fault #{n} at {what} of {target}"
            )));
        }
    }
    Ok(())
}

impl Backend for Faulty {
    fn location(&self) -> &Path {
        self.inner.location()
    }

    fn exists(&self) -> Result<bool> {
        self.inner.exists()
    }

    fn create(&self, manifest: &[u8], parents: bool) -> Result<()> {
        self.tick("create", &self.location().display())?;
        self.inner.create(manifest, parents)
    }

    fn read_lock(&self) -> Result<Option<File>> {
        self.inner.read_lock()
    }

    fn read_manifest(&self) -> Result<Option<(Vec<u8>, Version)>> {
        self.inner.read_manifest()
    }

    fn begin_write(&self) -> Result<(Lease, Vec<u8>)> {
        let begun = self.inner.begin_write()?;
        if let Some(hook) = &self.after_begin {
            hook();
        }
        Ok(begun)
    }

    fn put_object<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        self.tick("put of an object", &self.location().display())?;
        let inner = self.inner.put_object(lease)?;
        Ok(self.torn(inner))
    }

    fn put_pending<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        self.tick("put of a pending object", &self.location().display())?;
        let inner = self.inner.put_pending(lease)?;
        Ok(self.torn(inner))
    }

    fn adopt_pending(&self, lease: &Lease, objects: &[(String, u64)]) -> Result<()> {
        self.tick("adoption of pending objects", &self.location().display())?;
        self.inner.adopt_pending(lease, objects)
    }

    fn publish_manifest(
        &self,
        lease: &Lease,
        manifest: Vec<u8>,
        listed: &HashSet<&str>,
    ) -> Result<()> {
        if let Some(hook) = &self.before_publish {
            hook();
        }
        self.tick("publication of the manifest", &self.location().display())?;
        self.inner.publish_manifest(lease, manifest, listed)?;
        self.tick("reply to the publication", &self.location().display())
    }

    fn get_object(&self, name: &str) -> Result<FileBytes> {
        self.inner.get_object(name)
    }

    fn object_digest(&self, name: &str) -> Result<String> {
        self.inner.object_digest(name)
    }

    fn object_display(&self, name: &str) -> String {
        self.inner.object_display(name)
    }

    fn scan(&self, listed: &HashSet<&str>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        self.inner.scan(listed)
    }

    fn collectable(
        &self,
        lease: &Lease,
        old: &HashSet<&str>,
        new: &HashSet<&str>,
        committed: bool,
    ) -> Result<Vec<Garbage>> {
        self.inner.collectable(lease, old, new, committed)
    }

    fn delete(&self, g: &Garbage) -> Result<()> {
        self.tick("delete", &g.shown.display())?;
        self.inner.delete(g)
    }

    fn spill_dir(&self) -> PathBuf {
        self.inner.spill_dir()
    }

    fn set_gc_grace(&self, grace: Duration) {
        self.inner.set_gc_grace(grace)
    }
}

/// An object put through [`Faulty`]: buffered as a file would be, each
/// write that reaches the backend counted.
struct FaultyWriter<'a> {
    buf: BufWriter<Torn<'a>>,
}

struct Torn<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    faults: Option<Faults>,
    path: PathBuf,
}

impl Write for Torn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = tick(&self.faults, "write", &self.path.display()) {
            // A torn write: part of the data gets through.
            let _ = self.inner.write_all(&buf[..buf.len() / 2]);
            return Err(e);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Write for FaultyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.buf.flush()
    }
}

impl ObjectWriter for FaultyWriter<'_> {
    fn path(&self) -> &Path {
        &self.buf.get_ref().path
    }

    fn finish(self: Box<Self>, name: &str, listed: bool) -> Result<()> {
        let torn = self.buf.into_inner().map_err(|e| e.into_error())?;
        tick(&torn.faults, "finish of a put", &torn.path.display())
            .map_err(|e| Error::io(&torn.path, e))?;
        torn.inner.finish(name, listed)
    }
}
