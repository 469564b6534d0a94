//! Byte ranges of one stored file, without restoring it: what a reader of a
//! distributed checkpoint asks for (one shard's bytes of a rank's `.distcp`
//! file). Each range's tensors are decoded against only their own
//! reference data, fetched the same way one level down the chain; header
//! bytes come from the container's index.
//!
//! May call: `container` (open, range), the store's tensor-reading
//! helpers.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::tensor::ReadStats;
use super::{Manifest, Store};
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;
use crate::container::decode::DecodeOptions;
use crate::container::format::{self, Container};
use crate::container::range::{self, RefNeed};

impl Store {
    /// The bytes of file `path` of step `step` in each of `ranges`
    /// (`(offset, length)`), decoding only the tensors they overlap along
    /// the chain; and what the reads cost.
    pub fn read_ranges(
        &self,
        step: u64,
        path: &str,
        ranges: &[(u64, u64)],
    ) -> Result<(Vec<Vec<u8>>, ReadStats)> {
        let _lock = self.backend.read_lock()?;
        let m = self.load_manifest()?;
        let wants = ranges
            .iter()
            .map(|&(off, len)| {
                off.checked_add(len)
                    .map(|end| off..end)
                    .ok_or_else(|| Error::InvalidArgument(format!("bytes {off}+{len} overflow")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut stats = ReadStats::default();
        let out = self.ranges_at(&m, step, path, &wants, &mut stats, 0)?;
        Ok((out, stats))
    }

    /// `wants` of file `path` of step `step`; `depth` levels down the chain
    /// from the step first asked for.
    fn ranges_at(
        &self,
        m: &Manifest,
        step: u64,
        path: &str,
        wants: &[Range<u64>],
        stats: &mut ReadStats,
        depth: usize,
    ) -> Result<Vec<Vec<u8>>> {
        if depth > m.steps.len() {
            return Err(self.err(format!(
                "step {step}, file {path}: the chain of references loops"
            )));
        }
        let rec = self.step_record(m, step)?;
        let f = self.find_file(rec, path)?;
        for w in wants {
            if w.end > f.len {
                return Err(Error::InvalidArgument(format!(
                    "step {step}, file {path}: bytes {}..{} are past its end ({} bytes)",
                    w.start, w.end, f.len
                )));
            }
        }
        let bytes = self.object(step, f)?;
        let c = self.open_container(step, f, &bytes, stats)?;
        let layout = range::layout(&c);
        let mut needed: Vec<usize> = wants.iter().flat_map(|w| layout.tensors_in(w)).collect();
        needed.sort_unstable();
        needed.dedup();
        // What each needed tensor reads of the reference file.
        let mut ref_wants: BTreeMap<usize, Range<u64>> = BTreeMap::new();
        let mut ref_container: Option<(FileBytes, u64, String)> = None;
        for &ti in &needed {
            let want =
                match range::reference_need(&c, ti).map_err(|e| self.in_file(step, path, e))? {
                    RefNeed::None => continue,
                    RefNeed::Range(r) => r,
                    RefNeed::Tensor(name) => {
                        let (rs, rp) = self.reference_file(m, step, path, &c)?;
                        if ref_container.is_none() {
                            let rf = self.find_file(self.step_record(m, rs)?, &rp)?;
                            ref_container = Some((self.object(rs, rf)?, rs, rp.clone()));
                        }
                        let (rb, rs, rp) = ref_container.as_ref().expect("just opened");
                        let rf = self.find_file(self.step_record(m, *rs)?, rp)?;
                        let rc = self.open_container(*rs, rf, rb, stats)?;
                        let rti = rc.tensors.iter().position(|t| t.info.name == name);
                        rti.and_then(|i| range::layout(&rc).tensor_range(i))
                            .ok_or_else(|| {
                                self.err(format!(
                                    "step {rs}, file {rp}: no tensor {name:?}, which step {step}, \
                                 file {path} is coded against"
                                ))
                            })?
                    }
                };
            ref_wants.insert(ti, want);
        }
        let ref_data: HashMap<usize, Vec<u8>> = if ref_wants.is_empty() {
            HashMap::new()
        } else {
            let (rs, rp) = self.reference_file(m, step, path, &c)?;
            let list: Vec<Range<u64>> = ref_wants.values().cloned().collect();
            let got = self.ranges_at(m, rs, &rp, &list, stats, depth + 1)?;
            ref_wants.keys().copied().zip(got).collect()
        };
        let mut decoded = HashMap::new();
        for &ti in &needed {
            let t = &c.tensors[ti];
            let d = range::decode_tensor_from(
                &c,
                ti,
                ref_data.get(&ti).map(Vec::as_slice),
                &DecodeOptions::default(),
            )
            .map_err(|e| self.in_file(step, path, e))?;
            stats.count_tensor(t);
            decoded.insert(ti, d);
        }
        wants
            .iter()
            .map(|w| {
                range::assemble(&c, &layout, w, &decoded).map_err(|e| self.in_file(step, path, e))
            })
            .collect()
    }

    /// The step and path of the file `c` (file `path` of step `step`) is
    /// coded against, checked to be that file.
    pub(super) fn reference_file(
        &self,
        m: &Manifest,
        step: u64,
        path: &str,
        c: &Container<'_>,
    ) -> Result<(u64, String)> {
        let rec = self.step_record(m, step)?;
        let f = self.find_file(rec, path)?;
        let rs = rec.reference.filter(|_| f.delta).ok_or_else(|| {
            self.err(format!(
                "step {step}, file {path}: coded against a reference, but the manifest gives \
                 it none"
            ))
        })?;
        let rf = self
            .step_record(m, rs)?
            .files
            .iter()
            .find(|r| r.path == f.ref_path());
        let same = rf.is_some_and(|r| {
            c.index
                .reference
                .is_some_and(|id| id.len == r.len && format::digest_hex(id.digest) == r.digest)
        });
        if !same {
            return Err(self.err(format!(
                "step {step}, file {path}: its reference, step {rs} file {}, is not the file it \
                 was coded against",
                f.ref_path()
            )));
        }
        Ok((rs, f.ref_path().to_string()))
    }

    fn in_file(&self, step: u64, path: &str, e: Error) -> Error {
        self.err(format!("step {step}, file {path}: {e}"))
    }
}
