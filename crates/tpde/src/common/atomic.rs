//! Atomic file output: the bytes go to a file with no name yet (or a
//! temporary one) beside the target, which is fsynced and only then given
//! the target's name.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::common::error::{Error, Result};
use crate::common::safefs::{self, Unnamed};

/// Whether an output may replace a file already at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse when something is at the path, even if it appears while the
    /// output is being written (the final step never replaces anything).
    No,
    /// Replace a file at the path (atomically: readers see the old file or
    /// the new one).
    Yes,
}

/// Writes `path` through `f`: the bytes go to a file beside `path` that has
/// no name (`O_TMPFILE`) or a temporary one, which is flushed, fsynced and
/// given the name `path` only when `f` succeeds. On any error nothing is
/// left behind and `path` is as it was; a process killed meanwhile leaves
/// nothing behind where the file system has unnamed files.
pub fn write_atomic<T>(
    path: &Path,
    replace: Replace,
    f: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let dir = safefs::parent_of(path);
    match std::fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(_) if replace == Replace::No => return Err(exists(path)),
        // Never rename over a device (`-o /dev/null`), a folder or a link.
        Ok(m) if !m.is_file() => {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a regular file; tpde does not replace it",
                path.display()
            )))
        }
        Ok(_) => {}
    }
    if let Some(unnamed) = Unnamed::new(dir) {
        let mut w = BufWriter::with_capacity(1 << 20, &unnamed.file);
        let value = f(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))?;
        drop(w);
        unnamed.file.sync_all().map_err(|e| Error::io(path, e))?;
        match replace {
            Replace::No => unnamed.link(path),
            Replace::Yes => unnamed.link_replacing(path),
        }
        .map_err(|e| Error::io(path, e))?;
        let _ = safefs::sync_dir(dir);
        return Ok(value);
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tpde-tmp-");
    // A temporary file is private (0600); the output is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    let value = f(&mut w)?;
    let tmp = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    match replace {
        Replace::Yes => tmp.persist(path).map(|_| ()),
        Replace::No => tmp.persist_noclobber(path).map(|_| ()),
    }
    .map_err(|e| Error::io(path, e.error))?;
    // Make the rename itself durable.
    let _ = safefs::sync_dir(dir);
    Ok(value)
}

fn exists(path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{} exists already; tpde does not overwrite it (-f/--force to replace it)",
        path.display()
    ))
}

/// Refuses an output path that names one of the inputs, so that an input is
/// never replaced.
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(out_c) = out.canonicalize() else {
        return Ok(()); // The output does not exist yet.
    };
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == out_c) {
            return Err(Error::InvalidArgument(format!(
                "output {} is also an input; tpde never overwrites its inputs",
                out.display()
            )));
        }
    }
    Ok(())
}
