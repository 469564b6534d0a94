//! The one error type of the library.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in tpde. Each variant names the problem so
/// that a person can act on the message.
///
/// The message of every variant is whole: it includes its cause (the
/// operating system's message of an [`Error::Io`]), and
/// [`std::error::Error::source`] is `None`, so that a report that prints the
/// chain of causes (`anyhow`'s `{:#}`) says the cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with the path it concerns when there is one. Shown as
    /// `PATH: MESSAGE` (the `source`'s message, once).
    Io {
        path: Option<PathBuf>,
        source: std::io::Error,
    },

    /// The input is not a valid safetensors file.
    Safetensors(String),

    /// The input does not start with the `.tpde` magic number.
    WrongMagic,

    /// A `.tpde` file of a format version this build does not know.
    UnsupportedVersion(u16),

    /// The `.tpde` file is shorter than its own structure says.
    Truncated(String),

    /// The `.tpde` file breaks a rule of the format (a bit flipped, a field out of range).
    Corrupt(String),

    /// A chunk decoded to bytes whose checksum differs from the one recorded.
    ChecksumMismatch { tensor: String, chunk: usize },

    /// The file is a delta, and no reference was given.
    MissingReference,

    /// The given reference is not the one the file was encoded against.
    WrongReference {
        expected: String,
        actual: String,
        expected_len: u64,
        actual_len: u64,
    },

    /// The reference lacks data that the file needs (a tensor, a byte range).
    ReferenceMismatch(String),

    /// A checkpoint store problem: not a store, an unknown step, a step
    /// already stored, a damaged manifest or content file.
    Store { path: PathBuf, msg: String },

    /// Another process is writing to the store.
    Locked(PathBuf),

    /// A store without locks (on object storage) was changed by another
    /// writer between the start of this write and its commit. The commit did
    /// not happen; the store is as the other writer left it.
    Conflict(PathBuf),

    /// A caller asked for something that does not exist or cannot be done.
    InvalidArgument(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => match path {
                Some(p) => write!(f, "{}: {source}", p.display()),
                None => write!(f, "I/O: {source}"),
            },
            Error::Safetensors(m) => write!(f, "not a valid safetensors file: {m}"),
            Error::WrongMagic => f.write_str("not a .tpde file (wrong magic number)"),
            Error::UnsupportedVersion(v) => write!(
                f,
                "unsupported .tpde format version {v} (this build reads versions 1 to 3)"
            ),
            Error::Truncated(m) => write!(f, "truncated .tpde file: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt .tpde file: {m}"),
            Error::ChecksumMismatch { tensor, chunk } => write!(
                f,
                "checksum mismatch in tensor {tensor:?}, chunk {chunk}: the file is corrupt or \
                 the reference is wrong"
            ),
            Error::MissingReference => f.write_str(
                "this .tpde file is a delta and needs its reference (the checkpoint it was \
                 encoded against): pass --ref",
            ),
            Error::WrongReference {
                expected,
                actual,
                expected_len,
                actual_len,
            } => write!(
                f,
                "wrong reference: the file was encoded against a reference of {expected_len} \
                 bytes with digest {expected}, but the given reference has {actual_len} bytes \
                 and digest {actual}"
            ),
            Error::ReferenceMismatch(m) => write!(f, "the reference does not fit this file: {m}"),
            Error::Store { path, msg } => write!(f, "store {}: {msg}", path.display()),
            Error::Locked(p) => write!(
                f,
                "store {} is locked: another tpde process is writing to it; try again when it \
                 is done",
                p.display()
            ),
            Error::Conflict(p) => write!(
                f,
                "store {}: another writer changed the store since this operation began; nothing \
                 of yours was committed, try again",
                p.display()
            ),
            Error::InvalidArgument(m) => f.write_str(m),
        }
    }
}

/// No variant has a `source`: each message already says its cause.
impl std::error::Error for Error {}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: Some(path.into()),
            source,
        }
    }

    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: None, source }
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
