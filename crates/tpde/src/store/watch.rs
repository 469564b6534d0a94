//! Finding the checkpoints a training run writes, and telling when one is
//! complete.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::common::error::{Error, Result};

/// The step number in a checkpoint's name: the last run of digits
/// (`checkpoint-500` is 500, `epoch-03.safetensors` is 3).
pub fn step_from_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    stem[start..end].parse().ok()
}

/// A checkpoint in a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub step: u64,
    pub path: PathBuf,
}

/// The checkpoints in `run_dir`: folders named `checkpoint-N` (as the Hugging
/// Face Trainer writes them; `tmp-checkpoint-N`, which it renames when done,
/// is skipped) and `.safetensors` files with a step number in their name.
/// Sorted by step.
pub fn candidates(run_dir: &Path) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(run_dir).map_err(|e| Error::io(run_dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(run_dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(ft) = e.file_type() else { continue };
        let wanted = if ft.is_dir() {
            name.starts_with("checkpoint-")
        } else {
            ft.is_file() && name.ends_with(".safetensors") && !name.starts_with('.')
        };
        if let Some(step) = step_from_name(name).filter(|_| wanted) {
            out.push(Candidate {
                step,
                path: e.path(),
            });
        }
    }
    out.sort_by(|a, b| a.step.cmp(&b.step).then(a.path.cmp(&b.path)));
    Ok(out)
}

/// What a checkpoint looks like on disk: every file's path, length and
/// modification time. A checkpoint is complete when this stops changing.
pub fn signature(path: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    let mut out = Vec::new();
    sig(path, &mut out)?;
    out.sort();
    Ok(out)
}

fn sig(path: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let e = e.map_err(|e| Error::io(path, e))?;
            sig(&e.path(), out)?;
        }
    }
    out.push((path.to_path_buf(), meta.len(), meta.modified().ok()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_from_names() {
        assert_eq!(step_from_name("checkpoint-500"), Some(500));
        assert_eq!(step_from_name("epoch-03.safetensors"), Some(3));
        assert_eq!(step_from_name("model-2-step120"), Some(120));
        assert_eq!(step_from_name("model.safetensors"), None);
        assert_eq!(step_from_name("99999999999999999999999"), None);
    }
}
