//! The one error type of the library.

use std::path::PathBuf;

/// Everything that can go wrong in tpde. Each variant names the problem so
/// that a person can act on the message.
///
/// The message of every variant is whole: it includes its cause (the
/// operating system's message of an [`Error::Io`]), and no variant has a
/// [`std::error::Error::source`], so that a report that prints the chain of
/// causes (`anyhow`'s `{:#}`) says the cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with the path it concerns when there is one. Shown as
    /// `PATH: MESSAGE` (the operating system's message, once: `err` is not
    /// a `source`).
    #[error("{}: {err}", path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "I/O".into()))]
    Io {
        path: Option<PathBuf>,
        err: std::io::Error,
    },

    /// The input is not a valid safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),

    /// The input does not start with the `.tpde` magic number.
    #[error("not a .tpde file (wrong magic number)")]
    WrongMagic,

    /// A `.tpde` file of a format version this build does not know.
    #[error(
        "unsupported .tpde format version {version} (this build reads versions 1 to {newest})"
    )]
    UnsupportedVersion {
        /// The version in the file header.
        version: u16,
        /// The newest version this build reads.
        newest: u16,
    },

    /// The `.tpde` file is shorter than its own structure says.
    #[error("truncated .tpde file: {0}")]
    Truncated(String),

    /// The `.tpde` file breaks a rule of the format (a bit flipped, a field out of range).
    #[error("corrupt .tpde file: {0}")]
    Corrupt(String),

    /// A chunk decoded to bytes whose checksum differs from the one recorded.
    #[error("checksum mismatch in tensor {tensor:?}, chunk {chunk}: the file is corrupt or the reference is wrong")]
    ChecksumMismatch { tensor: String, chunk: usize },

    /// The file is a delta, and no reference was given.
    #[error("this .tpde file is a delta and needs its reference (the checkpoint it was encoded against): pass --ref")]
    MissingReference,

    /// The given reference is not the one the file was encoded against.
    #[error("wrong reference: the file was encoded against a reference of {expected_len} bytes with digest {expected}, but the given reference has {actual_len} bytes and digest {actual}")]
    WrongReference {
        expected: String,
        actual: String,
        expected_len: u64,
        actual_len: u64,
    },

    /// The reference lacks data that the file needs (a tensor, a byte range).
    #[error("the reference does not fit this file: {0}")]
    ReferenceMismatch(String),

    /// A checkpoint store problem: not a store, an unknown step, a step
    /// already stored, a damaged manifest or content file.
    #[error("store {}: {msg}", path.display())]
    Store { path: PathBuf, msg: String },

    /// Another process is writing to the store.
    #[error("store {} is locked: another tpde process is writing to it; try again when it is done", .0.display())]
    Locked(PathBuf),

    /// A store without locks (on object storage) was changed by another
    /// writer between the start of this write and its commit. The commit did
    /// not happen; the store is as the other writer left it.
    #[error("store {}: another writer changed the store since this operation began; nothing of yours was committed, try again", .0.display())]
    Conflict(PathBuf),

    /// A caller asked for something that does not exist or cannot be done.
    #[error("{0}")]
    InvalidArgument(String),

    /// An input file changed (was rewritten, cut short, replaced) while tpde
    /// read it: what was made of it mixes two versions and was thrown away.
    #[error("{} changed while being read; nothing was written for it — try again once it is complete", path.display())]
    InputChanged { path: PathBuf },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: Some(path.into()),
            err: source,
        }
    }

    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io {
            path: None,
            err: source,
        }
    }
}

/// Result with tpde's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An I/O error says its path and the system's message once, and has no
    /// `source` that a chain of causes would print again.
    #[test]
    fn io_error_says_its_cause_once() {
        let e = Error::io(
            "out.safetensors",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let msg = e.to_string();
        assert!(msg.starts_with("out.safetensors: "), "{msg}");
        assert!(std::error::Error::source(&e).is_none());
    }
}
