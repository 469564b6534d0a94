//! Read-only memory maps of input files. The only `unsafe` in tpde.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of a file, memory-mapped read-only.
#[derive(Debug)]
pub struct FileBytes {
    map: Option<memmap2::Mmap>,
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
        if meta.len() == 0 {
            return Ok(FileBytes { map: None });
        }
        // SAFETY: the file is opened read-only and tpde never writes to a file
        // it has mapped. The map stays valid while `FileBytes` lives; another
        // process truncating or rewriting the file meanwhile is outside what
        // tpde can guard against (as with every memory-mapped reader), and the
        // checksums of the format catch data that changed under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes { map: Some(map) })
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
