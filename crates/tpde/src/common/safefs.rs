//! File-system operations for places an attacker or an accident may have
//! prepared: opens that never follow a symbolic link and never block on a
//! FIFO, folders checked to be real folders, renames that never replace what
//! exists, and output files that have no name until they are complete (so a
//! killed process leaves nothing behind).
//!
//! Everything here is safe Rust over `std`, `libc` constants and `rustix`.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;

fn not_regular(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {what}, not a regular file; tpde does not follow links or read special files here",
            path.display()
        ),
    )
}

/// What kind of thing `meta` (from `symlink_metadata` or `fstat`) describes.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_file() {
        "a file"
    } else {
        "a special file (FIFO, socket or device)"
    }
}

fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    opts
}

/// Opens `path` for reading when it is a regular file: a symbolic link (at
/// the last component) or a FIFO, socket or device is refused without
/// blocking.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    open_checked(path, OpenOptions::new().read(true))
}

/// Opens (creating it if missing) the regular file `path` for reading and
/// writing, refusing a link or a special file in its place.
pub(crate) fn open_or_create_regular(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    open_checked(path, &mut opts)
}

fn open_checked(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let f = no_follow(opts)
        .open(path)
        .map_err(|e| link_error(path, e))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(path, kind_of(&meta)));
    }
    Ok(f)
}

/// `O_NOFOLLOW` on a link fails with `ELOOP`: say what it is.
fn link_error(path: &Path, e: io::Error) -> io::Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return not_regular(path, "a symbolic link");
    }
    let _ = path;
    e
}

/// `Ok(true)` when `path` is a real folder (not a link to one), `Ok(false)`
/// when nothing is there, an error naming what is there otherwise.
pub(crate) fn real_dir(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(m) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a folder; tpde does not follow links inside a store",
                path.display(),
                kind_of(&m)
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes `path` a folder: creates it when missing (its parent must exist),
/// accepts a real folder, refuses anything else (a link to a folder too).
pub(crate) fn ensure_dir(path: &Path) -> io::Result<()> {
    if real_dir(path)? {
        return Ok(());
    }
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        // Created meanwhile by another process: fine if it is a folder.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => real_dir(path).map(|_| ()),
        Err(e) => Err(e),
    }
}

fn exists_error(to: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} appeared while tpde was writing it; tpde does not replace it",
            to.display()
        ),
    )
}

/// Renames `from` to `to` only if nothing is at `to` (no replacement, even
/// of something created a moment ago): `renameat2(RENAME_NOREPLACE)`, or
/// where the file system lacks it, a hard link (files) or a rename onto a
/// freshly created empty folder (folders).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST) => return Err(exists_error(to)),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        // A rename onto an empty folder replaces it; the folder claims the
        // name first, and the rename fails if anything was put in it.
        std::fs::create_dir(to).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => exists_error(to),
            _ => e,
        })?;
        if let Err(e) = std::fs::rename(from, to) {
            let _ = std::fs::remove_dir(to); // only if still empty
            return Err(e);
        }
        Ok(())
    } else {
        std::fs::hard_link(from, to).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => exists_error(to),
            _ => e,
        })?;
        std::fs::remove_file(from)
    }
}

/// A file being written that has no name yet: `O_TMPFILE` where the file
/// system has it, so that a process killed while writing leaves nothing
/// behind. [`Unnamed::link`] gives it its name once complete.
pub(crate) struct Unnamed {
    pub(crate) file: File,
}

impl Unnamed {
    /// An unnamed file in folder `dir` (mode 0644 less the umask), or `None`
    /// where unnamed files cannot be made or linked there.
    pub(crate) fn new(dir: &Path) -> Option<Unnamed> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{openat, Mode, OFlags, CWD};
            if !Path::new("/proc/self/fd").is_dir() {
                return None;
            }
            let fd = openat(
                CWD,
                dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .ok()?;
            Some(Unnamed {
                file: File::from(fd),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dir;
            None
        }
    }

    /// Gives the file the name `to`, which must not exist (a link never
    /// replaces anything).
    pub(crate) fn link(&self, to: &Path) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
            rustix::fs::linkat(
                rustix::fs::CWD,
                &proc_path,
                rustix::fs::CWD,
                to,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(|e| match e {
                rustix::io::Errno::EXIST => exists_error(to),
                e => e.into(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = to;
            Err(io::Error::other("unnamed files are not supported here"))
        }
    }

    /// Gives the file the name `to`, replacing what is there: linked under
    /// a fresh name in the same folder, then renamed over `to`.
    pub(crate) fn link_replacing(&self, to: &Path) -> io::Result<()> {
        let dir = parent_of(to);
        let name = to
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.tpde-{}-{:x}",
            std::process::id(),
            fastrand_u64()
        ));
        self.link(&tmp)?;
        std::fs::rename(&tmp, to).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The folder a path is in (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A random-enough number for temporary names (not for security: names are
/// created exclusively).
pub(crate) fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Fsyncs folder `dir` (making a rename or link into it durable).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True while process `pid` exists (Linux: `/proc/PID`); `true` when that
/// cannot be told, so that nothing of a live process is ever removed.
pub(crate) fn process_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Opens the regular file `root/rel[0]/rel[1]/…` for reading, following no
/// link below `root` (each folder is opened with `O_NOFOLLOW`, so a link
/// swapped in for a folder is refused too, not only one checked a moment
/// before) and refusing FIFOs and other special files without blocking.
pub(crate) fn open_beneath(root: &Path, rel: &[&str]) -> io::Result<File> {
    let display = rel.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    let Some((last, dirs)) = rel.split_last() else {
        return open_regular(root);
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{openat, Mode, OFlags, CWD};
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let errno = |e: rustix::io::Errno, at: &Path| -> io::Error {
            match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link or not a folder; tpde does not follow links inside a store",
                        at.display()
                    ),
                ),
                e => e.into(),
            }
        };
        let mut fd = openat(
            CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(e, root))?;
        let mut at = root.to_path_buf();
        for d in dirs {
            at.push(d);
            fd = openat(&fd, *d, dir_flags, Mode::empty()).map_err(|e| errno(e, &at))?;
        }
        let file_flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let f = openat(&fd, *last, file_flags, Mode::empty())
            .map_err(|e| match e {
                rustix::io::Errno::LOOP => not_regular(&display, "a symbolic link"),
                e => e.into(),
            })
            .map(File::from)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(not_regular(&display, kind_of(&meta)));
        }
        Ok(f)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut at = root.to_path_buf();
        for d in dirs {
            at.push(d);
            real_dir(&at)?;
        }
        let _ = last;
        open_regular(&display)
    }
}
