//! Where `get` puts a step on local disk: the output appears whole or not
//! at all, beside where it is asked for (an unnamed file linked into
//! place, or a folder built under a temporary name and renamed), and never
//! over something that appeared meanwhile. Whatever the store's backend.
//!
//! May call: `common` (safefs, atomic, errors) and [`super::manifest`].

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::backend::is_lower_hex;
use super::manifest::EntryKind;
use super::Restored;
use crate::common::atomic::Replace;
use crate::common::error::{Error, Result};
use crate::common::safefs;

/// Where [`Store::restore_files`] puts the files of the step asked for.
#[derive(Clone, Copy)]
pub(crate) enum Sink<'a> {
    /// Returned, in memory or memory-mapped.
    Keep,
    /// Returned in memory, as every link of the chain before it is decoded
    /// (the caller holds the whole step: the links take at most as much
    /// again), never spilled to temporary files.
    Memory,
    /// Written under this folder.
    Dir(&'a Path),
    /// The one file of a single-file step, written to this file.
    File(&'a File),
    /// Only checked against their digests.
    Discard,
}

/// Writes a restored checkpoint to `out` atomically: a file through a
/// temporary file, a folder built under a temporary name and renamed.
pub fn write_restored(r: &Restored, out: &Path) -> Result<()> {
    build_beside(out, r.kind, &r.dirs, Replace::No, |sink| match sink {
        Sink::File(mut f) => {
            let bytes = r.files.first().map(|(_, b)| &b[..]).unwrap_or_default();
            f.write_all(bytes).map_err(|e| Error::io(out, e))
        }
        Sink::Dir(dir) => {
            for (rel, bytes) in &r.files {
                let p = dir.join(rel);
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
                }
                let mut f = File::create(&p).map_err(|e| Error::io(&p, e))?;
                f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
                f.sync_all().map_err(|e| Error::io(&p, e))?;
            }
            Ok(())
        }
        Sink::Keep | Sink::Memory | Sink::Discard => Ok(()),
    })
}

/// The prefix of the temporary folder a restore is built in, beside its
/// output: `.tpde-get-PID-RANDOM`.
const BUILD_PREFIX: &str = ".tpde-get-";

/// Makes `out` (which must not exist) appear whole or not at all, and never
/// over something that appeared meanwhile: `fill` writes the checkpoint to
/// the sink it is given. A single-file checkpoint goes to a file with no
/// name yet beside `out` (where the file system has them), linked as `out`
/// once complete; a folder (or a file, elsewhere) is built in a temporary
/// folder beside `out`, which is renamed without replacing. A process killed
/// meanwhile leaves at most the temporary folder, which the next restore
/// into the same folder removes once its process is gone.
pub(crate) fn build_beside(
    out: &Path,
    kind: EntryKind,
    dirs: &[String],
    replace: Replace,
    fill: impl FnOnce(Sink<'_>) -> Result<()>,
) -> Result<()> {
    let parent = safefs::parent_of(out);
    remove_stale_builds(parent);
    // Only a regular file is ever replaced (checked again just before).
    let replacing =
        || replace == Replace::Yes && std::fs::symlink_metadata(out).is_ok_and(|m| m.is_file());
    if kind == EntryKind::File {
        if let Some(unnamed) = safefs::Unnamed::new(parent) {
            fill(Sink::File(&unnamed.file))?;
            unnamed.file.sync_all().map_err(|e| Error::io(out, e))?;
            if replacing() {
                unnamed.link_replacing(out)
            } else {
                unnamed.link(out)
            }
            .map_err(|e| Error::io(out, e))?;
            let _ = safefs::sync_dir(parent);
            return Ok(());
        }
    }
    let tmp = parent.join(format!(
        "{BUILD_PREFIX}{}-{:016x}",
        std::process::id(),
        safefs::fastrand_u64()
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let built = (|| {
        for d in dirs {
            let p = tmp.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        if kind == EntryKind::File {
            let p = tmp.join("file");
            let file = File::create(&p).map_err(|e| Error::io(&p, e))?;
            fill(Sink::File(&file))?;
            file.sync_all().map_err(|e| Error::io(&p, e))?;
            if replacing() {
                std::fs::rename(&p, out).map_err(|e| Error::io(out, e))
            } else {
                safefs::rename_noreplace(&p, out).map_err(|e| Error::io(out, e))
            }
        } else {
            fill(Sink::Dir(&tmp))?;
            if replacing() {
                // A folder cannot be renamed over a file: the file goes
                // first, once the folder is complete.
                std::fs::remove_file(out).map_err(|e| Error::io(out, e))?;
            }
            safefs::rename_noreplace(&tmp, out).map_err(|e| Error::io(out, e))
        }
    })();
    if std::fs::symlink_metadata(&tmp).is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built?;
    let _ = safefs::sync_dir(parent);
    Ok(())
}

/// Removes the temporary folders of restores into `dir` whose process is
/// gone (killed): real folders named `.tpde-get-PID-RANDOM` (16 hex digits),
/// PID no longer running. Nothing else is touched.
fn remove_stale_builds(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(BUILD_PREFIX)) else {
            continue;
        };
        let Some((pid, random)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let ours = random.len() == 16
            && random.bytes().all(is_lower_hex)
            && e.file_type().is_ok_and(|t| t.is_dir())
            && pid != std::process::id()
            && !safefs::process_alive(pid);
        if ours {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
