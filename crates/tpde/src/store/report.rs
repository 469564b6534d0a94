//! A run at a glance: `tpde store report` and `tpde.report`. Per step its
//! sizes and frame; per pair of adjacent steps, what changed in each group
//! of tensors ([`tensor_group`]): the fraction of elements whose bits
//! changed and the relative change. As one self-contained HTML file (inline
//! CSS, the heat map drawn as SVG by inline JavaScript from the data, which
//! is embedded as JSON; nothing is fetched), as CSV and as JSON.
//!
//! May call: the store's [`super::diff`] and [`super::get`], `common`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::diff::{tensor_group, DiffKind, StepDiff};
use super::get::Sink;
use super::{EntryKind, Files, StepRecord, Store};
use crate::common::atomic::{write_atomic, Replace};
use crate::common::error::{Error, Result};

/// What [`Store::report`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Where the store is.
    pub store: String,
    /// How tensors are grouped, in words.
    pub grouping: String,
    pub steps: Vec<StepRow>,
    /// Every group of some pair, in natural order (`layers.2` before
    /// `layers.10`).
    pub groups: Vec<String>,
    /// One per pair of adjacent steps, in step order.
    pub pairs: Vec<PairRow>,
}

/// One stored step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub step: u64,
    pub name: String,
    pub files: usize,
    /// Bytes of its files, and of their content files in the store.
    pub original: u64,
    pub stored: u64,
    pub ratio: f64,
    /// `keyframe` or `delta`.
    pub frame: String,
    pub reference: Option<u64>,
    pub depth: u32,
    /// Some file of it is stored lossy.
    pub lossy: bool,
}

/// What changed from step `a` to the next stored step `b`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairRow {
    pub a: u64,
    pub b: u64,
    /// B is stored as a delta of A.
    pub b_coded_against_a: bool,
    /// All the tensors together.
    pub total: GroupCell,
    /// Per group, in the order of [`RunReport::groups`] (groups this pair
    /// lacks left out).
    pub cells: Vec<GroupCell>,
}

/// A group of tensors of one pair of steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupCell {
    pub group: String,
    /// Tensors compared, and those added, removed or of another layout.
    pub tensors: usize,
    pub layout_changes: usize,
    pub elements: u64,
    pub changed: u64,
    /// `changed / elements` (`None` without elements).
    pub changed_fraction: Option<f64>,
    /// sqrt(sum ||b - a||^2 / sum ||a||^2) over its float tensors (`None`
    /// without float tensors, or when ||a|| is 0 and b differs).
    pub rel_change: Option<f64>,
    /// Every tensor's changed count came from the store's record.
    pub changed_from_store: bool,
}

/// Adds tensors up into a [`GroupCell`].
#[derive(Default)]
struct Sum {
    tensors: usize,
    layout_changes: usize,
    elements: u64,
    changed: u64,
    floats: usize,
    sum_sq_diff: f64,
    sum_sq_a: f64,
    from_store: bool,
}

impl Sum {
    fn cell(&self, group: &str) -> GroupCell {
        let rel = if self.floats == 0 {
            None
        } else if self.sum_sq_diff == 0.0 {
            Some(0.0)
        } else if self.sum_sq_a > 0.0 {
            Some((self.sum_sq_diff / self.sum_sq_a).sqrt())
        } else {
            None
        };
        GroupCell {
            group: group.to_string(),
            tensors: self.tensors,
            layout_changes: self.layout_changes,
            elements: self.elements,
            changed: self.changed,
            changed_fraction: (self.elements > 0)
                .then(|| self.changed as f64 / self.elements as f64),
            rel_change: rel,
            changed_from_store: self.from_store && self.tensors > self.layout_changes,
        }
    }
}

/// How [`RunReport::grouping`] puts it.
const GROUPING: &str = "a tensor's group is its name up to and with its first all-digit \
    component (encoder.layers.3.linear1.weight: encoder.layers.3), else its name without \
    its last component (tok_emb.weight: tok_emb); components are separated by '.' or '/'; \
    when a step holds several safetensors files, the group starts with the file's path and ':'";

fn pair_row(d: &StepDiff) -> PairRow {
    let several = d.several_files();
    let mut groups: BTreeMap<String, Sum> = BTreeMap::new();
    let mut total = Sum {
        from_store: true,
        ..Sum::default()
    };
    for t in &d.tensors {
        let g = if several {
            format!("{}:{}", t.file, tensor_group(&t.name))
        } else {
            tensor_group(&t.name)
        };
        let s = groups.entry(g).or_insert_with(|| Sum {
            from_store: true,
            ..Sum::default()
        });
        for s in [s, &mut total] {
            s.tensors += 1;
            if t.kind != DiffKind::Compared {
                s.layout_changes += 1;
                continue;
            }
            s.elements += t.elements;
            s.changed += t.changed;
            s.from_store &= t.changed_from_store;
            if t.is_float() && t.max_abs.is_some() {
                s.floats += 1;
                s.sum_sq_diff += t.sum_sq_diff;
                s.sum_sq_a += t.sum_sq_a;
            }
        }
    }
    let mut cells: Vec<GroupCell> = groups.iter().map(|(g, s)| s.cell(g)).collect();
    cells.sort_by_key(|c| natural(&c.group));
    PairRow {
        a: d.a,
        b: d.b,
        b_coded_against_a: d.b_coded_against_a,
        total: total.cell("all tensors"),
        cells,
    }
}

/// A sort key that orders runs of digits by their value.
fn natural(s: &str) -> Vec<(u8, u128, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n = if digits > 0 {
            digits
        } else {
            rest.bytes().take_while(|b| !b.is_ascii_digit()).count()
        };
        let (part, r) = rest.split_at(n);
        out.push(match part.parse::<u128>() {
            Ok(v) if digits > 0 => (1, v, part.to_string()),
            _ => (0, 0, part.to_string()),
        });
        rest = r;
    }
    out
}

fn step_row(s: &StepRecord) -> StepRow {
    let original: u64 = s.files.iter().map(|f| f.len).sum();
    let stored: u64 = s.files.iter().map(|f| f.stored_len).sum();
    StepRow {
        step: s.step,
        name: match s.kind {
            EntryKind::Dir => format!("{}/", s.name),
            EntryKind::File => s.name.clone(),
        },
        files: s.files.len(),
        original,
        stored,
        ratio: original as f64 / stored.max(1) as f64,
        frame: if s.reference.is_some() {
            "delta"
        } else {
            "keyframe"
        }
        .into(),
        reference: s.reference,
        depth: s.depth,
        lossy: s.files.iter().any(|f| f.lossy.is_some()),
    }
}

impl Store {
    /// The report of the whole run: every step decoded once, in step order
    /// (each against the one before it when it is stored so), and each
    /// compared with the step before it. Holds two steps' files at a time.
    pub fn report(&self) -> Result<RunReport> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let mut pairs = Vec::new();
        let mut prev: Option<(&StepRecord, Files)> = None;
        for rec in &m.steps {
            let files = match (&prev, rec.reference) {
                (Some((p, pf)), Some(r)) if p.step == r => self.decode_step(rec, pf)?,
                (_, None) => self.decode_step(rec, &Files::new())?,
                _ => self.restore_files(&m, rec.step, None, Sink::Keep)?,
            };
            if let Some((p, pf)) = &prev {
                pairs.push(pair_row(&self.diff_files(p, pf, rec, &files)?));
            }
            prev = Some((rec, files));
        }
        let mut groups: Vec<String> = Vec::new();
        for c in pairs.iter().flat_map(|p| &p.cells) {
            if !groups.contains(&c.group) {
                groups.push(c.group.clone());
            }
        }
        groups.sort_by_key(|g| natural(g));
        Ok(RunReport {
            store: self.location(),
            grouping: GROUPING.into(),
            steps: m.steps.iter().map(step_row).collect(),
            groups,
            pairs,
        })
    }
}

/// The page; `/*TPDE_DATA*/` becomes the report as JSON.
const TEMPLATE: &str = include_str!("report.html");

impl RunReport {
    /// The report as JSON.
    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Error::InvalidArgument(format!("the report as JSON: {e}")))
    }

    /// The report as one self-contained HTML page.
    pub fn html(&self) -> Result<String> {
        let json = serde_json::to_string(self)
            .map_err(|e| Error::InvalidArgument(format!("the report as JSON: {e}")))?;
        // Inside <script>: no '<' may end it early; \u003c is the same JSON.
        let json = json.replace('<', "\\u003c");
        Ok(TEMPLATE.replace("/*TPDE_DATA*/", &json))
    }

    /// Writes the report as HTML, CSV and JSON to those of the paths that
    /// are given, each atomically ([`write_atomic`]): an existing file is
    /// replaced only with [`Replace::Yes`].
    pub fn write(
        &self,
        html: Option<&Path>,
        csv: Option<&Path>,
        json: Option<&Path>,
        replace: Replace,
    ) -> Result<()> {
        let outs = [
            (html, self.html()?),
            (csv, self.csv()),
            (json, self.json()?),
        ];
        for (path, text) in outs {
            if let Some(path) = path {
                write_atomic(path, replace, |w| {
                    w.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
                })?;
            }
        }
        Ok(())
    }

    /// The report as CSV: one row per step (group empty: its sizes, and
    /// what changed in all its tensors since the step before), then one per
    /// step and group.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "step,name,frame,reference,original_bytes,stored_bytes,ratio,previous_step,group,\
             tensors,layout_changes,elements,changed,changed_fraction,rel_change,\
             changed_from_store\n",
        );
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:e}"));
        let cell = |c: &GroupCell| {
            format!(
                "{},{},{},{},{},{},{}",
                c.tensors,
                c.layout_changes,
                c.elements,
                c.changed,
                opt(c.changed_fraction),
                opt(c.rel_change),
                c.changed_from_store
            )
        };
        for s in &self.steps {
            let pair = self.pairs.iter().find(|p| p.b == s.step);
            let head = format!(
                "{},{},{},{},{},{},{:.4}",
                s.step,
                csv_field(&s.name),
                s.frame,
                s.reference.map_or(String::new(), |r| r.to_string()),
                s.original,
                s.stored,
                s.ratio
            );
            match pair {
                None => out.push_str(&format!("{head},,,,,,,,,\n")),
                Some(p) => {
                    out.push_str(&format!("{head},{},,{}\n", p.a, cell(&p.total)));
                    for c in &p.cells {
                        out.push_str(&format!(
                            "{head},{},{},{}\n",
                            p.a,
                            csv_field(&c.group),
                            cell(c)
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["layers.10", "layers.2", "head", "layers.1"];
        v.sort_by_key(|s| natural(s));
        assert_eq!(v, ["head", "layers.1", "layers.2", "layers.10"]);
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("ab"), "ab");
    }
}
