//! A checkpoint as the store takes it: one file or the files of a folder,
//! memory-mapped from disk or held in memory, with its sub-folders.
//!
//! May call: `common` (errors, mmap) and [`super::manifest`] (path rules).

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::Path;

use super::manifest::{safe_relative, EntryKind};
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;

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

impl Bytes {
    /// The bytes as a vector: the one it holds (no copy), or a copy of the
    /// mapped file.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Mapped(m) => m.to_vec(),
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
