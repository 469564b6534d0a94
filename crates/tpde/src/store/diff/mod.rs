//! What changed between two stored steps, tensor by tensor: `tpde store
//! diff`, `Store.diff`, and the adjacent-step diffs of [`super::report`].
//!
//! Each step's files are decoded once (the later step against the earlier
//! one when it is stored as a delta of it) and compared where they lie, in
//! memory or memory-mapped: no copy of a tensor is made. The tensors of
//! every safetensors file are compared; other files (torch archives,
//! opaque bytes) only as wholes ([`FileDiff`]).
//!
//! May call: `container::format`, `source` (safetensors, dtypes), `common`,
//! the store's [`super::get`], [`super::manifest`], [`super::matching`].

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

mod values;

use super::get::Sink;
use super::matching::match_files;
use super::{Files, StepRecord, Store};
use crate::common::error::Result;
use crate::container::format::{Container, RefMode};
use crate::source::dtype::{Dtype, Family};
use crate::source::safetensors::{self, TensorInfo};
use values::{compare, fraction};

/// How a tensor of step B relates to the one of the same name in step A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffKind {
    /// In both, same dtype and shape: compared element by element.
    Compared,
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
    /// In both, with another dtype or shape.
    ChangedLayout,
}

impl DiffKind {
    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Compared => "compared",
            DiffKind::Added => "added",
            DiffKind::Removed => "removed",
            DiffKind::ChangedLayout => "changed-layout",
        }
    }
}

/// One tensor of two steps.
///
/// Values are read as f64: floats (F16, BF16, F32, F64, the F8 kinds; C64
/// by the modulus of the complex difference) and integers and bools (their
/// values, differences taken exactly). Packed sub-byte dtypes (F4, F6) and
/// unknown ones are compared byte by byte: `elements` and `changed` count
/// bytes and there are no values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDiff {
    /// The file in B (in A for a removed tensor).
    pub file: String,
    pub name: String,
    pub kind: DiffKind,
    /// B's dtype and shape (A's for a removed tensor).
    pub dtype: String,
    pub shape: Vec<u64>,
    /// A's dtype and shape, for [`DiffKind::ChangedLayout`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<(String, Vec<u64>)>,
    /// Elements compared (bytes for dtypes compared byte by byte).
    pub elements: u64,
    /// How many of them have other bits in B.
    pub changed: u64,
    /// `changed` was read from the store's record of B (the changed-element
    /// counts of its chunks coded against A), which is exact there; else it
    /// was counted from the values.
    pub changed_from_store: bool,
    /// `changed / elements` (0 for an empty tensor; `None` unless compared).
    pub changed_fraction: Option<f64>,
    /// Largest |b - a| over the elements (`None` without values).
    pub max_abs: Option<f64>,
    /// sqrt(mean((b - a)^2)) over all elements.
    pub rms: Option<f64>,
    /// ||b - a|| / ||a|| (float dtypes only; `None` when ||a|| is 0 and b
    /// differs).
    pub rel: Option<f64>,
    /// Changed elements where a or b is NaN or infinite: counted in
    /// `changed`, left out of `max_abs`, `rms` and `rel`.
    pub nonfinite: u64,
    /// sum((b - a)^2) and sum(a^2) over the finite values (float dtypes):
    /// what `Store::report` adds up per group.
    pub sum_sq_diff: f64,
    pub sum_sq_a: f64,
}

impl TensorDiff {
    /// Whether the tensor's values are floats, for which `rel` is given.
    pub fn is_float(&self) -> bool {
        Dtype::from_name(&self.dtype).family() == Family::Float
    }
}

/// One file of two steps, as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    /// Its path in A and in B (`None` where the step lacks it).
    pub a: Option<String>,
    pub b: Option<String>,
    /// Read as safetensors in both steps: its tensors are in the diff.
    pub tensors: bool,
    /// The same bytes in both.
    pub identical: bool,
}

/// What [`Store::diff`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDiff {
    pub a: u64,
    pub b: u64,
    /// B is stored as a delta of A (its changed counts can come from the
    /// store).
    pub b_coded_against_a: bool,
    pub files: Vec<FileDiff>,
    pub tensors: Vec<TensorDiff>,
}

/// The orders of [`StepDiff::sort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffSort {
    /// Relative change, largest first (then changed fraction, then name);
    /// tensors without one after those with one.
    Rel,
    /// Changed fraction, largest first (then relative change, then name).
    Changed,
    /// File, then tensor name.
    Name,
}

impl std::str::FromStr for DiffSort {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "rel" => Ok(DiffSort::Rel),
            "changed" => Ok(DiffSort::Changed),
            "name" => Ok(DiffSort::Name),
            _ => Err(format!("unknown sort {s:?} (rel, changed or name)")),
        }
    }
}

impl StepDiff {
    /// Sorts the tensors. Tensors that are not compared (added, removed,
    /// another layout) come first in the orders by size, as the largest
    /// changes.
    pub fn sort(&mut self, by: DiffSort) {
        let desc = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        let layout_first = |t: &TensorDiff| t.kind == DiffKind::Compared;
        let name = |t: &TensorDiff| (t.file.clone(), t.name.clone());
        self.tensors.sort_by(|x, y| match by {
            DiffSort::Name => name(x).cmp(&name(y)),
            DiffSort::Rel => layout_first(x)
                .cmp(&layout_first(y))
                .then(desc(x.rel, y.rel))
                .then(desc(x.changed_fraction, y.changed_fraction))
                .then(name(x).cmp(&name(y))),
            DiffSort::Changed => layout_first(x)
                .cmp(&layout_first(y))
                .then(desc(x.changed_fraction, y.changed_fraction))
                .then(desc(x.rel, y.rel))
                .then(name(x).cmp(&name(y))),
        });
    }

    /// Whether the tensors come from more than one file of B (then a
    /// tensor's file is part of its name in tables and groups).
    pub fn several_files(&self) -> bool {
        self.tensors.iter().any(|t| t.file != self.tensors[0].file)
    }
}

impl Store {
    /// Compares steps `a` and `b` tensor by tensor (see [`TensorDiff`]),
    /// sorted by relative change ([`StepDiff::sort`] to order otherwise).
    pub fn diff(&self, a: u64, b: u64) -> Result<StepDiff> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let ra = self.step_record(&m, a)?;
        let rb = self.step_record(&m, b)?;
        let fa = self.restore_files(&m, a, None, Sink::Keep)?;
        let mut d = if a == b {
            self.diff_files(ra, &fa, rb, &fa)?
        } else if rb.reference == Some(a) {
            let fb = self.decode_step(rb, &fa)?;
            self.diff_files(ra, &fa, rb, &fb)?
        } else {
            let fb = self.restore_files(&m, b, None, Sink::Keep)?;
            self.diff_files(ra, &fa, rb, &fb)?
        };
        d.sort(DiffSort::Rel);
        Ok(d)
    }

    /// Decodes every file of `rec`, a step coded against the step whose
    /// files are `reference` (or a keyframe).
    pub(crate) fn decode_step(&self, rec: &StepRecord, reference: &Files) -> Result<Files> {
        let mut files = Files::new();
        for f in &rec.files {
            let r = self.reference_of(rec, f, reference)?;
            let bytes = self.decode_file(rec.step, f, r)?;
            files.insert(f.path.clone(), bytes);
        }
        Ok(files)
    }

    fn decoded<'f>(&self, files: &'f Files, step: u64, path: &str) -> Result<&'f [u8]> {
        files
            .get(path)
            .map(|b| &**b)
            .ok_or_else(|| self.err(format!("step {step}: file {path} was not decoded")))
    }

    /// Compares the decoded files `fa` of step `ra` with `fb` of `rb`.
    pub(crate) fn diff_files(
        &self,
        ra: &StepRecord,
        fa: &Files,
        rb: &StepRecord,
        fb: &Files,
    ) -> Result<StepDiff> {
        let coded_against_a = rb.reference == Some(ra.step) && ra.step != rb.step;
        // B's file -> A's file: the store's own pairing when B is a delta of
        // A, else the store's matching rules.
        let pairs: HashMap<String, String> = if ra.step == rb.step {
            ra.files
                .iter()
                .map(|f| (f.path.clone(), f.path.clone()))
                .collect()
        } else {
            let a_paths: Vec<&str> = ra.files.iter().map(|f| f.path.as_str()).collect();
            let b_paths: Vec<&str> = rb.files.iter().map(|f| f.path.as_str()).collect();
            let mut p: HashMap<String, String> = match_files(&b_paths, &a_paths)
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            if coded_against_a {
                for f in rb.files.iter().filter(|f| f.delta) {
                    p.insert(f.path.clone(), f.ref_path().to_string());
                }
            }
            p
        };
        let mut out = StepDiff {
            a: ra.step,
            b: rb.step,
            b_coded_against_a: coded_against_a,
            files: Vec::new(),
            tensors: Vec::new(),
        };
        let mut used_a: std::collections::HashSet<&str> = Default::default();
        for f in &rb.files {
            let b_bytes = self.decoded(fb, rb.step, &f.path)?;
            let Some(a_path) = pairs.get(&f.path) else {
                out.files.push(FileDiff {
                    a: None,
                    b: Some(f.path.clone()),
                    tensors: false,
                    identical: false,
                });
                continue;
            };
            used_a.insert(a_path);
            let a_bytes = self.decoded(fa, ra.step, a_path)?;
            let (ha, hb) = (safetensors::parse(a_bytes), safetensors::parse(b_bytes));
            let (Ok(ha), Ok(hb)) = (ha, hb) else {
                out.files.push(FileDiff {
                    a: Some(a_path.clone()),
                    b: Some(f.path.clone()),
                    tensors: false,
                    identical: a_bytes == b_bytes,
                });
                continue;
            };
            out.files.push(FileDiff {
                a: Some(a_path.clone()),
                b: Some(f.path.clone()),
                tensors: true,
                identical: a_bytes == b_bytes,
            });
            // The changed counts the store recorded, where they are exact.
            let counts = if coded_against_a && f.delta && f.lossy.is_none() {
                let object = self.backend.get_object(&f.object)?;
                stored_counts(&object)
            } else {
                HashMap::new()
            };
            let mut jobs: Vec<(&TensorInfo, &TensorInfo)> = Vec::new();
            for tb in &hb.tensors {
                match ha.get(&tb.name) {
                    None => out
                        .tensors
                        .push(layout_only(&f.path, tb, DiffKind::Added, None)),
                    Some(ta)
                        if ta.dtype != tb.dtype || ta.shape != tb.shape || ta.len() != tb.len() =>
                    {
                        out.tensors.push(layout_only(
                            &f.path,
                            tb,
                            DiffKind::ChangedLayout,
                            Some((ta.dtype.name().to_string(), ta.shape.clone())),
                        ))
                    }
                    Some(ta) => jobs.push((ta, tb)),
                }
            }
            for ta in ha.tensors.iter().filter(|t| hb.get(&t.name).is_none()) {
                out.tensors
                    .push(layout_only(a_path, ta, DiffKind::Removed, None));
            }
            let compared: Vec<TensorDiff> = jobs
                .par_iter()
                .map(|(ta, tb)| {
                    let mut d = compare(
                        &f.path,
                        tb,
                        tensor_bytes(&ha, a_bytes, ta),
                        tensor_bytes(&hb, b_bytes, tb),
                    );
                    if let Some(&n) = counts.get(tb.name.as_str()) {
                        if n.0 == d.elements {
                            d.changed = n.1;
                            d.changed_fraction = Some(fraction(n.1, n.0));
                            d.changed_from_store = true;
                        }
                    }
                    d
                })
                .collect();
            out.tensors.extend(compared);
        }
        for f in ra
            .files
            .iter()
            .filter(|f| !used_a.contains(f.path.as_str()))
        {
            out.files.push(FileDiff {
                a: Some(f.path.clone()),
                b: None,
                tensors: false,
                identical: false,
            });
        }
        Ok(out)
    }
}

/// The tensors of a content file whose changed-element counts are exact:
/// name -> (elements, changed). A tensor is there when it is coded against
/// the tensor of the same name in the reference, every chunk of it as a
/// delta (whose `nnz` counts the elements whose bits differ: every
/// transform is zero exactly for equal bits), one coding unit per element,
/// and the file is not lossy.
fn stored_counts(object: &[u8]) -> HashMap<String, (u64, u64)> {
    let Ok(c) = Container::open(object) else {
        return HashMap::new();
    };
    if c.index.lossy {
        return HashMap::new();
    }
    let mut out = HashMap::new();
    for t in &c.tensors {
        let dtype = &t.info.dtype;
        let width = dtype.coding_width();
        if t.entry.ref_mode != RefMode::SameName || dtype.bits() != Some(8 * width as u64) {
            continue;
        }
        let exact = t
            .entry
            .chunks
            .iter()
            .all(|e| e.coding.codec.is_delta() && usize::from(e.coding.width) == width);
        if exact {
            let changed = t.entry.chunks.iter().map(|e| e.coding.nnz).sum();
            out.insert(t.info.name.clone(), (t.info.elements(), changed));
        }
    }
    out
}

/// The data of tensor `t` in a file whose header `h` has been checked
/// against it (empty if it did not fit, which the parse rules out).
fn tensor_bytes<'a>(h: &safetensors::Header, file: &'a [u8], t: &TensorInfo) -> &'a [u8] {
    let range = usize::try_from(h.header_len + t.begin)
        .ok()
        .zip(usize::try_from(h.header_len + t.end).ok());
    range.and_then(|(b, e)| file.get(b..e)).unwrap_or(&[])
}

fn layout_only(
    file: &str,
    t: &TensorInfo,
    kind: DiffKind,
    before: Option<(String, Vec<u64>)>,
) -> TensorDiff {
    TensorDiff {
        file: file.to_string(),
        name: t.name.clone(),
        kind,
        dtype: t.dtype.name().to_string(),
        shape: t.shape.clone(),
        before,
        elements: 0,
        changed: 0,
        changed_from_store: false,
        changed_fraction: None,
        max_abs: None,
        rms: None,
        rel: None,
        nonfinite: 0,
        sum_sq_diff: 0.0,
        sum_sq_a: 0.0,
    }
}

/// The group of a tensor in the report's heat map: its name up to and with
/// its first all-digit component (`encoder.layers.3.linear1.weight` ->
/// `encoder.layers.3`, `model/layers.0.attn.q.weight` -> `model/layers.0`),
/// else its name without its last component (`tok_emb.weight` ->
/// `tok_emb`); components are separated by `.` or `/`. A name of one
/// component is its own group.
pub fn tensor_group(name: &str) -> String {
    let mut end = 0;
    let mut last_sep = None;
    for (i, part) in name.split_inclusive(['.', '/']).enumerate() {
        let core = part.trim_end_matches(['.', '/']);
        let start = end;
        end += part.len();
        if i > 0 && !core.is_empty() && core.bytes().all(|c| c.is_ascii_digit()) {
            return name[..start + core.len()].to_string();
        }
        if part.len() != core.len() {
            last_sep = Some(start + core.len());
        }
    }
    match last_sep {
        Some(i) if i > 0 && i < name.len() => name[..i].to_string(),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        assert_eq!(
            tensor_group("encoder.layers.3.linear1.weight"),
            "encoder.layers.3"
        );
        assert_eq!(
            tensor_group("encoder.layers.0.linear1.bias.exp_avg"),
            "encoder.layers.0"
        );
        assert_eq!(
            tensor_group("model/layers.0.attn.q.weight"),
            "model/layers.0"
        );
        assert_eq!(
            tensor_group("optimizer/state/12/exp_avg"),
            "optimizer/state/12"
        );
        assert_eq!(tensor_group("tok_emb.weight"), "tok_emb");
        assert_eq!(tensor_group("head.bias"), "head");
        assert_eq!(tensor_group("step"), "step");
        assert_eq!(tensor_group("0.weight"), "0");
        assert_eq!(tensor_group("a.b.c"), "a.b");
    }
}
