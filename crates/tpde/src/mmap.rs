//! Read-only memory maps of input files, and letting go of the pages of a map
//! that were read. The only `unsafe` in tpde.
//!
//! A mapped file's pages count in the process's resident memory once read,
//! until the kernel needs them back. Encoding or decoding a 30 GB checkpoint
//! would then look (and, under a memory limit, be charged) like a 30 GB
//! process. [`release`] drops the pages of a range that was read, so that a
//! streaming pass holds only its window of each file: bounded by the batch
//! size, whatever the file's size.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The bytes of a file, memory-mapped read-only.
#[derive(Debug)]
pub struct FileBytes {
    map: Option<Arc<memmap2::Mmap>>,
}

/// Every live map, so that [`release`] can tell a slice of a file map from
/// other memory (where dropping pages would lose data).
static MAPS: Mutex<Vec<Arc<memmap2::Mmap>>> = Mutex::new(Vec::new());

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
        Self::map(&file, meta.len(), path)
    }

    /// Maps a file already open for reading (`path` names it in errors), such
    /// as a temporary file tpde wrote and will not write again.
    pub(crate) fn from_file(file: &File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::map(file, len, path)
    }

    fn map(file: &File, len: u64, path: &Path) -> Result<Self> {
        if len == 0 {
            return Ok(FileBytes { map: None });
        }
        // SAFETY: the file is open read-only or is a temporary file tpde no
        // longer writes, and tpde never writes to a file it has mapped. The
        // map stays valid while `FileBytes` lives; another process truncating
        // or rewriting the file meanwhile is outside what tpde can guard
        // against (as with every memory-mapped reader), and the checksums of
        // the format catch data that changed under us.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        let map = Arc::new(map);
        maps().push(Arc::clone(&map));
        Ok(FileBytes { map: Some(map) })
    }
}

fn maps() -> std::sync::MutexGuard<'static, Vec<Arc<memmap2::Mmap>>> {
    MAPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let Some(map) = &self.map {
            maps().retain(|m| !Arc::ptr_eq(m, map));
        }
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().map_or(&[], |m| &m[..])
    }
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
    let start = bytes.as_ptr() as usize;
    // The registry stays locked while advising, so a map cannot be
    // unregistered and unmapped meanwhile.
    let maps = maps();
    let Some(map) = maps.iter().find(|m| {
        let m_start = m.as_ptr() as usize;
        start >= m_start && start + bytes.len() <= m_start + m.len()
    }) else {
        return;
    };
    let offset = start - map.as_ptr() as usize;
    // SAFETY: `map` is a read-only shared mapping of a file (`Mmap::map`),
    // alive while it is registered (it is unregistered before it is
    // unmapped, under the same lock). MADV_DONTNEED on such a mapping only
    // drops page-table entries: no page was ever written through it, so
    // nothing is lost, and a later read faults the file's bytes back in
    // unchanged. The range lies inside the map (checked above); memmap2
    // aligns its start down to a page, which only drops more clean pages of
    // the same map.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 5) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = FileBytes::open(&path).unwrap();
        assert_eq!(digest_released(&f), crate::format::digest(&data));
        release(&f[12_345..2_000_000]);
        assert_eq!(&f[..], &data[..]);
        // Heap bytes are not a map: left alone.
        let heap = data.clone();
        release(&heap);
        assert_eq!(heap, data);
        drop(f);
        assert!(maps().is_empty() || maps().iter().all(|m| m.len() != data.len()));
    }
}
