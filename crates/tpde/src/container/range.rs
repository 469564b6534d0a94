//! A byte range of the original file, decoded from its container without
//! the rest: the header-block bytes the range covers are copied, and only
//! the tensors it overlaps are decoded, each against just its own
//! reference data. This is what lets a reader of a distributed checkpoint
//! (a DCP `.distcp` file is one torch.save archive per shard, one after
//! another) fetch one shard of a rank's file, and, along a chain of deltas,
//! only that shard's reference data at every level.
//!
//! The original file is, in order: for each tensor, the header-block bytes
//! written before it ([`super::format::TensorView::gap`]) then its data; then the tail.
//! [`layout`] turns that into file offsets; [`reference_need`] says which
//! bytes of the reference file a tensor is decoded against;
//! [`decode_tensor_from`] decodes one tensor given them; [`assemble`] puts
//! a range together.
//!
//! May call: [`super::format`], [`super::decode`]'s job lists, `common`.

use std::collections::HashMap;
use std::ops::Range;

use super::decode::{jobs_for, DecodeOptions};
use super::format::{Container, RefMode};
use crate::common::error::{Error, Result};

/// Where the parts of the original file lie, in file order.
#[derive(Debug, Clone)]
pub struct Layout {
    parts: Vec<Part>,
    /// The original file's length.
    pub len: u64,
}

#[derive(Debug, Clone)]
enum Part {
    /// Header-block bytes `block`, at `file` in the original.
    Block { file: u64, block: Range<usize> },
    /// Tensor `ti`'s data at `file` in the original.
    Tensor { file: Range<u64>, ti: usize },
}

/// What a tensor is decoded against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefNeed {
    /// Nothing: it decodes on its own.
    None,
    /// These bytes of the reference file (for a byte-range reference near
    /// the end of a shorter reference, fewer than the tensor's length).
    Range(Range<u64>),
    /// The reference's tensor of this name (a safetensors reference).
    Tensor(String),
}

/// The file offsets of every part of `c`'s original file.
pub fn layout(c: &Container<'_>) -> Layout {
    let mut parts = Vec::with_capacity(2 * c.tensors.len() + 1);
    let mut pos = 0u64;
    let block = |parts: &mut Vec<Part>, pos: &mut u64, r: &Range<usize>| {
        if !r.is_empty() {
            parts.push(Part::Block {
                file: *pos,
                block: r.clone(),
            });
            *pos += r.len() as u64;
        }
    };
    for (ti, t) in c.tensors.iter().enumerate() {
        block(&mut parts, &mut pos, &t.gap);
        let end = pos + t.entry.data_len;
        parts.push(Part::Tensor { file: pos..end, ti });
        pos = end;
    }
    block(&mut parts, &mut pos, &c.tail);
    Layout { parts, len: pos }
}

impl Layout {
    /// The tensors whose data overlaps `range`, in file order.
    pub fn tensors_in(&self, range: &Range<u64>) -> Vec<usize> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Tensor { file, ti } if overlaps(file, range) => Some(*ti),
                _ => None,
            })
            .collect()
    }

    /// Where tensor `ti`'s data lies in the original file.
    pub fn tensor_range(&self, ti: usize) -> Option<Range<u64>> {
        self.parts.iter().find_map(|p| match p {
            Part::Tensor { file, ti: t } if *t == ti => Some(file.clone()),
            _ => None,
        })
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The reference data tensor `ti` of `c` is decoded against; `ref_len` is
/// the reference file's length (from the container's reference record).
pub fn reference_need(c: &Container<'_>, ti: usize) -> Result<RefNeed> {
    if !super::decode::tensor_needs_reference(c, ti) {
        return Ok(RefNeed::None);
    }
    let t = &c.tensors[ti];
    let ref_len = c
        .index
        .reference
        .map(|r| r.len)
        .ok_or(Error::MissingReference)?;
    let n = t.entry.data_len;
    match t.entry.ref_mode {
        RefMode::None => Ok(RefNeed::None),
        RefMode::SameName => Ok(RefNeed::Tensor(t.info.name.clone())),
        RefMode::SameRange => {
            let start = (c.index.header_block.len() as u64).saturating_add(t.info.begin);
            let start = start.min(ref_len);
            Ok(RefNeed::Range(start..start.saturating_add(n).min(ref_len)))
        }
        RefMode::Offset => {
            let end = t.ref_offset.checked_add(n).filter(|e| *e <= ref_len);
            let end = end.ok_or_else(|| {
                Error::ReferenceMismatch(format!(
                    "the reference has no {n} bytes at offset {} for tensor {:?}",
                    t.ref_offset, t.info.name
                ))
            })?;
            Ok(RefNeed::Range(t.ref_offset..end))
        }
    }
}

/// Decodes tensor `ti` of `c` against `reference`, the bytes
/// [`reference_need`] names (`None` when it needs none). Each chunk's
/// checksum is checked; the caller checks that the reference is the file
/// the container was coded against.
pub fn decode_tensor_from(
    c: &Container<'_>,
    ti: usize,
    reference: Option<&[u8]>,
    opts: &DecodeOptions,
) -> Result<Vec<u8>> {
    let t = &c.tensors[ti];
    opts.check(&format!("tensor {:?}", t.info.name), t.entry.data_len)?;
    let need = reference_need(c, ti)?;
    let tref = match (&need, reference) {
        (RefNeed::None, _) => None,
        (_, None) => return Err(Error::MissingReference),
        (RefNeed::Range(r), Some(b)) if b.len() as u64 != r.end - r.start => {
            return Err(Error::ReferenceMismatch(format!(
                "the reference data of tensor {:?} has {} bytes, not {}",
                t.info.name,
                b.len(),
                r.end - r.start
            )))
        }
        (RefNeed::Tensor(_), Some(b)) if b.len() as u64 != t.entry.data_len => {
            return Err(Error::ReferenceMismatch(format!(
                "the reference tensor {:?} has {} bytes, not {}",
                t.info.name,
                b.len(),
                t.entry.data_len
            )))
        }
        (_, Some(b)) => Some(b),
    };
    jobs_for(c, ti, tref, &t.info.name)
}

/// Range `range` of the original file: header-block bytes copied from the
/// container, tensor bytes from `decoded` (by tensor index; every tensor
/// [`Layout::tensors_in`] lists for the range must be there).
pub fn assemble(
    c: &Container<'_>,
    layout: &Layout,
    range: &Range<u64>,
    decoded: &HashMap<usize, Vec<u8>>,
) -> Result<Vec<u8>> {
    if range.start > range.end || range.end > layout.len {
        return Err(Error::InvalidArgument(format!(
            "bytes {}..{} are not inside the file of {} bytes",
            range.start, range.end, layout.len
        )));
    }
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for p in &layout.parts {
        let (file, bytes): (Range<u64>, &[u8]) = match p {
            Part::Block { file, block } => (
                *file..*file + block.len() as u64,
                &c.index.header_block[block.clone()],
            ),
            Part::Tensor { file, ti } => {
                if !overlaps(file, range) {
                    continue;
                }
                let d = decoded.get(ti).ok_or_else(|| {
                    Error::InvalidArgument(format!("internal: tensor {ti} was not decoded"))
                })?;
                (file.clone(), d.as_slice())
            }
        };
        if !overlaps(&file, range) {
            continue;
        }
        let from = (range.start.max(file.start) - file.start) as usize;
        let to = (range.end.min(file.end) - file.start) as usize;
        let piece = bytes.get(from..to).ok_or_else(|| {
            Error::corrupt(format!(
                "a part of {} bytes at offset {} decoded to {} bytes",
                file.end - file.start,
                file.start,
                bytes.len()
            ))
        })?;
        out.extend_from_slice(piece);
    }
    Ok(out)
}
