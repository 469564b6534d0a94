//! Atomic file output: a temporary file beside the target, fsync, rename.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `path` through `f`: the bytes go to a temporary file in the same
/// directory, which is flushed, fsynced and renamed over `path` only when `f`
/// succeeds. On any error the temporary file is removed and `path` is left
/// as it was.
pub fn write_atomic<T>(path: &Path, f: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
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
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(value)
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
