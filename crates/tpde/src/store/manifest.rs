//! The store's manifest (`tpde-store.json`): the commit record. A step is in
//! the store exactly when the manifest lists it; content files that no
//! manifest lists are leftovers of an interrupted write.

use serde::{Deserialize, Serialize};

/// Written in the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "tpde-store";
/// The newest manifest version this build reads and writes. Version 2 adds
/// [`FileRecord::reference_path`]; a manifest is written with the lowest
/// version that has what it uses, so stores that do not need version 2
/// stay readable by older builds.
pub const MANIFEST_VERSION: u32 = 2;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// A keyframe at least every this many steps: restoring any step decodes
    /// at most this many.
    pub keyframe_every: u32,
    /// Steps in increasing order.
    pub steps: Vec<StepRecord>,
}

/// Whether a checkpoint was one file or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
}

/// One stored checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// The file or folder name it was added from (the default name to
    /// restore it as).
    pub name: String,
    pub kind: EntryKind,
    /// The step its files are coded against; `None` for a keyframe.
    pub reference: Option<u64>,
    /// Steps decoded to restore it: 1 for a keyframe, the reference's + 1
    /// for a delta.
    pub depth: u32,
    /// Sub-folders of a folder checkpoint (relative, `/`-separated), so that
    /// empty ones come back too.
    #[serde(default)]
    pub dirs: Vec<String>,
    pub files: Vec<FileRecord>,
}

/// One file of a stored checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path inside the checkpoint folder (`/`-separated); the file name for
    /// a single-file checkpoint.
    pub path: String,
    /// Length of the original file.
    pub len: u64,
    /// XXH3-128 of the original file, 32 hex digits.
    pub digest: String,
    /// The content file under `objects/` (the XXH3-128 of its bytes, in hex).
    pub object: String,
    /// Bytes of the content file.
    pub stored_len: u64,
    /// Coded against a file of the reference step: the one at
    /// [`FileRecord::reference_path`], or at the same path.
    pub delta: bool,
    /// The path of the reference step's file this one is coded against,
    /// when it is not the same path (the reference step's file had another
    /// name: `step-100.safetensors` before `step-200.safetensors`). Manifest
    /// version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_path: Option<String>,
    /// How tpde read it: "safetensors", "torch archive" or "opaque bytes".
    pub coding: String,
    /// The lossy mode's bound when the file was stored lossy: restoring gives
    /// a reconstruction within it (and `digest` is the reconstruction's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lossy: Option<crate::codec::lossy::Bound>,
}

impl FileRecord {
    /// The path of the reference step's file this one is coded against (for
    /// a delta).
    pub fn ref_path(&self) -> &str {
        self.reference_path.as_deref().unwrap_or(&self.path)
    }
}

impl StepRecord {
    /// How many of its files are coded against the reference step.
    pub fn delta_files(&self) -> usize {
        self.files.iter().filter(|f| f.delta).count()
    }
}

impl Manifest {
    /// The lowest manifest version that holds what this manifest uses.
    pub fn min_version(&self) -> u32 {
        let renamed = self
            .steps
            .iter()
            .any(|s| s.files.iter().any(|f| f.reference_path.is_some()));
        if renamed {
            2
        } else {
            1
        }
    }

    pub fn new(keyframe_every: u32) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            keyframe_every,
            steps: Vec::new(),
        }
    }

    pub fn get(&self, step: u64) -> Option<&StepRecord> {
        self.steps
            .binary_search_by_key(&step, |s| s.step)
            .ok()
            .map(|i| &self.steps[i])
    }

    /// Inserts a record, keeping the steps sorted (replacing one of the same
    /// step).
    pub fn put(&mut self, rec: StepRecord) {
        match self.steps.binary_search_by_key(&rec.step, |s| s.step) {
            Ok(i) => self.steps[i] = rec,
            Err(i) => self.steps.insert(i, rec),
        }
    }

    /// Recomputes every depth from the references (references always point
    /// to earlier steps).
    pub fn fix_depths(&mut self) {
        let mut depth = std::collections::HashMap::new();
        for s in &mut self.steps {
            s.depth = match s.reference {
                Some(r) => depth.get(&r).copied().unwrap_or(0) + 1,
                None => 1,
            };
            depth.insert(s.step, s.depth);
        }
    }

    /// The chain of steps decoded to restore `step`: its keyframe first,
    /// `step` last.
    pub fn chain(&self, step: u64) -> Vec<&StepRecord> {
        let mut chain = Vec::new();
        let mut at = self.get(step);
        while let Some(s) = at {
            chain.push(s);
            at = s.reference.and_then(|r| self.get(r));
        }
        chain.reverse();
        chain
    }

    /// Checks what the code relies on: sorted unique steps, references to
    /// earlier stored steps, depths within the keyframe interval, unique file
    /// paths. Returns the first problem.
    pub fn check(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format is {:?}, not {MANIFEST_FORMAT:?}",
                self.format
            ));
        }
        if !(1..=MANIFEST_VERSION).contains(&self.version) {
            return Err(format!(
                "manifest version {} (this build reads versions 1 to {MANIFEST_VERSION}: \
                 a newer tpde wrote it?)",
                self.version
            ));
        }
        if self.min_version() > self.version {
            return Err(format!(
                "manifest version {} uses features of version {}",
                self.version,
                self.min_version()
            ));
        }
        if self.keyframe_every == 0 {
            return Err("keyframe_every is 0".into());
        }
        let mut check = self.clone();
        check.fix_depths();
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 && self.steps[i - 1].step >= s.step {
                return Err(format!("steps out of order at step {}", s.step));
            }
            if let Some(r) = s.reference {
                if r >= s.step || self.get(r).is_none() {
                    return Err(format!(
                        "step {} refers to step {r}, which is not an earlier stored step",
                        s.step
                    ));
                }
            } else if s.files.iter().any(|f| f.delta) {
                return Err(format!("keyframe step {} has delta files", s.step));
            }
            if check.steps[i].depth != s.depth || s.depth > self.keyframe_every {
                return Err(format!("step {} has a wrong depth", s.step));
            }
            let mut paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
            paths.sort_unstable();
            if paths.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("step {} lists a file twice", s.step));
            }
            for f in &s.files {
                let bad_name = |n: &str| n.len() != 32 || !n.bytes().all(|b| b.is_ascii_hexdigit());
                if bad_name(&f.object) || bad_name(&f.digest) {
                    return Err(format!(
                        "step {}, file {}: bad object name or digest",
                        s.step, f.path
                    ));
                }
                if !safe_relative(&f.path) || !safe_relative(f.ref_path()) {
                    return Err(format!("step {}: unsafe file path {:?}", s.step, f.path));
                }
                if f.reference_path.is_some() && !f.delta {
                    return Err(format!(
                        "step {}, file {}: a reference path without a reference",
                        s.step, f.path
                    ));
                }
                // A delta's reference file is a file of the reference step.
                let reference = s.reference.and_then(|r| self.get(r));
                if f.delta
                    && !reference.is_some_and(|r| r.files.iter().any(|g| g.path == f.ref_path()))
                {
                    return Err(format!(
                        "step {}, file {}: its reference step lacks {:?}",
                        s.step,
                        f.path,
                        f.ref_path()
                    ));
                }
            }
            if s.dirs.iter().any(|d| !safe_relative(d)) {
                return Err(format!("step {}: unsafe folder path", s.step));
            }
            // A path is a file or a folder, not both: `get` could not write
            // such a step back.
            let files: std::collections::HashSet<&str> = paths.iter().copied().collect();
            let folders = s.files.iter().flat_map(|f| ancestors(&f.path));
            let listed = s.dirs.iter().flat_map(|d| ancestors(d).chain([d.as_str()]));
            if let Some(p) = folders.chain(listed).find(|p| files.contains(p)) {
                return Err(format!(
                    "step {}: {p:?} is listed both as a file and as a folder",
                    s.step
                ));
            }
            if s.kind == EntryKind::File && s.files.len() != 1 {
                return Err(format!("file step {} does not hold one file", s.step));
            }
            if !safe_relative(&s.name) || s.name.contains('/') {
                return Err(format!("step {}: unsafe name {:?}", s.step, s.name));
            }
        }
        Ok(())
    }
}

/// A relative path that stays inside the folder it is joined to.
pub(crate) fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The folders a relative path lies in: `a/b/c` gives `a` and `a/b`.
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}
