//! Step one of encoding: the [`Plan`], what will be coded against what,
//! built from the parsed source (a safetensors header, a torch archive's
//! storages, or opaque bytes) before any chunk is coded.
//!
//! The plan names each tensor's bytes in the input and its reference data
//! (matched by name, dtype and shape or length, or the same byte range), its
//! chunk parameters and the lossy bound, and keeps the bytes of the file
//! outside every tensor (the header block). Only a lossy relative bound reads
//! tensor data (its RMS); otherwise planning reads headers alone, cheap
//! enough for `tpde inspect` and estimates.
//!
//! May call [`common`](crate::common), [`source`](crate::source),
//! [`codec`](crate::codec) (chunk parameters, lossy bounds) and
//! [`format`](crate::container::format) (reference modes, the archive
//! layout).

use std::collections::HashMap;

use super::{EncodeOptions, InputKind};
use crate::codec::chunk::{symbols_eligible, ChunkParams};
use crate::codec::lossy::FloatKind;
use crate::common::error::{Error, Result};
use crate::common::mmap;
use crate::container::format::{self, LayoutEntry, RefMode, SourceKind};
use crate::source::dtype::{Dtype, Family};
use crate::source::{archive, safetensors};

/// What encoding `cur` against its reference will code: the source kind, the
/// reference the container will name, the header block and one chunk job
/// per chunk of every tensor. [`plan`] makes it, [`execute`](super::execute)
/// codes it.
#[derive(Default)]
pub struct Plan<'a> {
    pub(super) cur: &'a [u8],
    /// The reference the container names: `None` for a keyframe, and with
    /// [`InputKind::Auto`] when no tensor matched.
    pub(super) reference: Option<&'a [u8]>,
    pub(super) kind: SourceKind,
    pub(super) chunk_size: usize,
    pub(super) header_block: Vec<u8>,
    /// Where in the header block the bytes of the file outside the jobs
    /// begin: all of it (the safetensors header), or after the layout (an
    /// archive's filler).
    pub(super) outside_from: usize,
    pub(super) tensors: Vec<PlannedTensor>,
    pub(super) jobs: Vec<Job<'a>>,
    pub(super) elements: u64,
}

/// One tensor of a [`Plan`] (of an opaque file: the whole file, named `""`,
/// dtype `bytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Bytes of the tensor's data.
    pub len: u64,
    pub elements: u64,
    /// Where its reference data comes from ([`RefMode::None`]: none).
    pub ref_mode: RefMode,
    /// Of its bytes, those with reference bytes to be coded against (an
    /// opaque file's bytes past the end of its reference have none).
    pub ref_bytes: u64,
    pub chunks: usize,
    /// The lossy mode's absolute bound on its elements; `None`: exact.
    pub bound: Option<f64>,
}

/// One chunk to code: its bytes in the input and in the reference.
pub(super) struct Job<'a> {
    pub(super) tensor: usize,
    pub(super) cur: &'a [u8],
    pub(super) reference: Option<&'a [u8]>,
    pub(super) params: ChunkParams,
    /// The lossy mode's float kind and bound for this chunk.
    pub(super) lossy: Option<(FloatKind, f64)>,
}

impl Plan<'_> {
    /// What the file will be read as.
    pub fn source_kind(&self) -> SourceKind {
        self.kind
    }

    /// Whether the container will need the reference to decode.
    pub fn reference_used(&self) -> bool {
        self.reference.is_some()
    }

    /// Whether some float chunk may be quantized (the container is then
    /// format version 3, lossy).
    pub fn lossy(&self) -> bool {
        self.jobs.iter().any(|j| j.lossy.is_some())
    }

    /// The format version the container is written with: 6 when some chunk
    /// may be coded with symbols (a float chunk with reference data, see
    /// [`symbols_eligible`]); else 3 when lossy; else the source kind's.
    /// Its chunks use fine gap classes only in version 6 (see
    /// `Plan::set_version_features`).
    pub fn version(&self) -> u16 {
        let symbols = self
            .jobs
            .iter()
            .any(|j| j.reference.is_some() && symbols_eligible(j.cur.len(), &j.params));
        if symbols {
            6
        } else if self.lossy() {
            3
        } else {
            self.kind.min_version()
        }
    }

    /// Lets every chunk use what the container's `version` has: fine gap
    /// classes from version 6 on.
    pub(super) fn set_version_features(&mut self, version: u16) {
        for j in &mut self.jobs {
            j.params.fine_classes = version >= 6;
        }
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// How many chunks will be coded (duplicates, found while coding, among them).
    pub fn chunks(&self) -> usize {
        self.jobs.len()
    }
}

/// Plans the encoding of `cur` against `reference` (a keyframe when `None`):
/// checks the options, reads the input as `opts.input` says, matches its
/// tensors with the reference's and splits them into chunks.
pub fn plan<'a>(
    cur: &'a [u8],
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
) -> Result<Plan<'a>> {
    if opts.chunk_size < 64
        || !opts.chunk_size.is_multiple_of(8)
        || opts.chunk_size > format::MAX_CHUNK as usize
    {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} must be a multiple of 8 between 64 bytes and 64 MiB",
            opts.chunk_size
        )));
    }
    if let Some(b) = opts.lossy {
        b.check().map_err(Error::InvalidArgument)?;
    }
    // The archive's storages, when auto-detection found them.
    let mut scanned = None;
    let kind = match opts.input {
        InputKind::Safetensors => SourceKind::Safetensors,
        InputKind::Opaque => SourceKind::Opaque,
        InputKind::Archive => SourceKind::Archive,
        InputKind::Auto => {
            if safetensors::parse(cur).is_ok() {
                SourceKind::Safetensors
            } else {
                scanned = archive::scan(cur).filter(|t| archive_pays(t, cur.len()));
                if scanned.is_some() {
                    SourceKind::Archive
                } else {
                    SourceKind::Opaque
                }
            }
        }
    };
    let lenient = opts.input == InputKind::Auto;
    let mut plan = Plan {
        cur,
        kind,
        chunk_size: opts.chunk_size,
        ..Plan::default()
    };
    match kind {
        SourceKind::Safetensors => plan_safetensors(&mut plan, reference, opts, lenient)?,
        SourceKind::Archive => {
            if let Err(e) = plan_archive(&mut plan, scanned, reference, opts) {
                if !lenient {
                    return Err(e);
                }
                // An archive tpde cannot lay out is still a file.
                plan = Plan {
                    cur,
                    kind: SourceKind::Opaque,
                    chunk_size: opts.chunk_size,
                    ..Plan::default()
                };
                plan_opaque(&mut plan, reference, opts);
            }
        }
        SourceKind::Opaque => plan_opaque(&mut plan, reference, opts),
    }
    let matched = plan.tensors.iter().any(|t| t.ref_mode != RefMode::None);
    plan.reference = reference.filter(|_| matched || !lenient);
    Ok(plan)
}

fn chunk_params(dtype: &Dtype, level: i32) -> ChunkParams {
    ChunkParams {
        width: dtype.coding_width(),
        family: dtype.family(),
        level,
        exponent: dtype.exponent_field(),
        fine_classes: false,
    }
}

/// A safetensors file: tensors matched by name, dtype and shape. A reference
/// that is not safetensors is an error, or (`lenient`) not used.
fn plan_safetensors<'a>(
    plan: &mut Plan<'a>,
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
    lenient: bool,
) -> Result<()> {
    let cur = plan.cur;
    // The header as stored, and the tensors as it gives them: one copy, so
    // that they agree whatever happens to the file.
    let hl = 8 + safetensors::header_size(cur, cur.len() as u64)? as usize;
    plan.header_block = cur[..hl].to_vec();
    let header = safetensors::parse_header(&plan.header_block, cur.len() as u64)?;
    let ref_header = match reference.map(safetensors::parse) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) if lenient => None,
        Some(Err(e)) => {
            return Err(Error::ReferenceMismatch(format!(
                "the reference is not a valid safetensors file: {e}"
            )))
        }
        None => None,
    };
    for t in &header.tensors {
        let data = &cur[hl + t.begin as usize..hl + t.end as usize];
        let ref_data = ref_header.as_ref().and_then(|rh| {
            let rt = rh.get(&t.name)?;
            (rt.dtype == t.dtype && rt.shape == t.shape).then(|| {
                let rhl = rh.header_len as usize;
                &reference.expect("reference header implies reference")
                    [rhl + rt.begin as usize..rhl + rt.end as usize]
            })
        });
        push_tensor(plan, &t.name, &t.dtype, t.elements(), data, ref_data, opts);
    }
    Ok(())
}

/// A torch.save archive: its storages are the tensors, matched with the
/// reference's storages by name, dtype and length; the other bytes of the
/// file go verbatim into the header block.
fn plan_archive<'a>(
    plan: &mut Plan<'a>,
    scanned: Option<Vec<archive::ArchiveTensor>>,
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
) -> Result<()> {
    let cur = plan.cur;
    let tensors = scanned
        .or_else(|| archive::scan(cur))
        .ok_or_else(|| Error::InvalidArgument("not a torch.save zip archive".into()))?;
    // torch.save names the archive's top folder after the file
    // (`optimizer/data/3`): storages match by the name below it.
    let key = |name: &str| {
        name.split_once('/')
            .map_or(name, |(_, rest)| rest)
            .to_string()
    };
    let ref_tensors: HashMap<String, archive::ArchiveTensor> = reference
        .and_then(archive::scan)
        .unwrap_or_default()
        .into_iter()
        .map(|t| (key(&t.name), t))
        .collect();
    let mut layout = Vec::with_capacity(tensors.len());
    let mut filler = Vec::new();
    let mut pos = 0usize;
    for t in &tensors {
        let (start, len) = (t.offset as usize, t.len as usize);
        filler.extend_from_slice(&cur[pos..start]);
        pos = start + len;
        let data = &cur[start..pos];
        let matched = ref_tensors
            .get(&key(&t.name))
            .filter(|r| r.dtype == t.dtype && r.len == t.len);
        let ref_data = matched.map(|r| {
            &reference.expect("reference tensors imply a reference")
                [r.offset as usize..(r.offset + r.len) as usize]
        });
        layout.push(LayoutEntry {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            offset: t.offset,
            ref_offset: matched.map_or(0, |r| r.offset),
        });
        let elements = t.len / t.dtype.coding_width() as u64;
        push_tensor(plan, &t.name, &t.dtype, elements, data, ref_data, opts);
    }
    filler.extend_from_slice(&cur[pos..]);
    plan.header_block = format::archive_layout(&layout, &filler)?;
    plan.outside_from = plan.header_block.len() - filler.len();
    if plan.header_block.len() as u64 > safetensors::MAX_HEADER_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the archive has {} bytes outside its tensor storages, more than the format allows",
            filler.len()
        )));
    }
    Ok(())
}

/// Whether coding an archive's storages as tensors pays, when choosing by
/// itself: everything else (zip records, pickles) goes into the header block,
/// coded without the reference, so when that is most of a large file (a run
/// of many small archives, as torch.distributed.checkpoint writes for a small
/// model) the whole file coded as bytes against the reference does better.
fn archive_pays(tensors: &[archive::ArchiveTensor], len: usize) -> bool {
    let data: u64 = tensors.iter().map(|t| t.len).sum();
    let rest = (len as u64).saturating_sub(data);
    rest < 64 << 10 || data >= rest
}

/// Any file as opaque bytes, against the same byte range of the reference.
fn plan_opaque<'a>(plan: &mut Plan<'a>, reference: Option<&'a [u8]>, opts: &EncodeOptions) {
    let cur = plan.cur;
    let params = ChunkParams {
        width: 1,
        family: Family::Integer,
        level: opts.level,
        exponent: None,
        fine_classes: false,
    };
    let ref_mode = if reference.is_some() {
        RefMode::SameRange
    } else {
        RefMode::None
    };
    plan.elements = cur.len() as u64;
    let step = opts.chunk_size;
    for (k, piece) in cur.chunks(step).enumerate() {
        let start = k * step;
        let r = reference.and_then(|r| r.get(start..start + piece.len()));
        plan.jobs.push(Job {
            tensor: 0,
            cur: piece,
            reference: r,
            params,
            lossy: None,
        });
    }
    plan.tensors.push(PlannedTensor {
        name: String::new(),
        dtype: Dtype::Unknown("bytes".into()),
        len: cur.len() as u64,
        elements: cur.len() as u64,
        ref_mode,
        ref_bytes: plan
            .jobs
            .iter()
            .filter(|j| j.reference.is_some())
            .map(|j| j.cur.len() as u64)
            .sum(),
        chunks: plan.jobs.len(),
        bound: None,
    });
}

/// Adds a tensor of `dtype` and splits it into chunk jobs (lossy ones for
/// float tensors in the lossy mode). With reference data, its reference mode
/// is the one of the plan's source kind: the tensor of the same name in a
/// safetensors reference, the storage at its offset in an archive.
fn push_tensor<'a>(
    plan: &mut Plan<'a>,
    name: &str,
    dtype: &Dtype,
    elements: u64,
    data: &'a [u8],
    reference: Option<&'a [u8]>,
    opts: &EncodeOptions,
) {
    let params = chunk_params(dtype, opts.level);
    let lossy = opts.lossy.and_then(|b| {
        let kind = FloatKind::of(dtype)?;
        let bound = b.for_tensor(kind, data);
        // A relative bound read the whole tensor (its RMS).
        mmap::release(data);
        Some((kind, bound?))
    });
    let ref_mode = match (reference, plan.kind) {
        (None, _) => RefMode::None,
        (Some(_), SourceKind::Safetensors) => RefMode::SameName,
        (Some(_), SourceKind::Archive) => RefMode::Offset,
        (Some(_), SourceKind::Opaque) => RefMode::SameRange,
    };
    let tensor = plan.tensors.len();
    let before = plan.jobs.len();
    // Chunks hold whole elements; chunk_size is a multiple of 8, so of every width.
    let step = opts.chunk_size - opts.chunk_size % params.width;
    for (k, piece) in data.chunks(step).enumerate() {
        let r = reference.map(|r| &r[k * step..k * step + piece.len()]);
        plan.jobs.push(Job {
            tensor,
            cur: piece,
            reference: r,
            params,
            lossy,
        });
    }
    plan.elements += elements;
    plan.tensors.push(PlannedTensor {
        name: name.to_string(),
        dtype: dtype.clone(),
        len: data.len() as u64,
        elements,
        ref_mode,
        ref_bytes: if reference.is_some() {
            data.len() as u64
        } else {
            0
        },
        chunks: plan.jobs.len() - before,
        bound: lossy.map(|(_, b)| b),
    });
}

#[cfg(test)]
mod tests {
    use super::super::{execute, test_data};
    use super::*;
    use crate::codec::lossy::Bound;
    use crate::container::format::Container;

    /// What the plan says is what the container holds: source kind,
    /// reference, tensors, their reference modes and chunks.
    #[test]
    fn the_plan_is_what_the_container_holds() {
        let cases = [
            (
                "v1/cur.safetensors",
                Some("v1/ref.safetensors"),
                InputKind::Safetensors,
            ),
            ("v1/cur.safetensors", None, InputKind::Auto),
            ("v1/cur.safetensors", Some("v2/ref.pt"), InputKind::Auto),
            ("v2/cur.pt", Some("v2/ref.pt"), InputKind::Auto),
            ("v2/cur.pt", Some("v1/ref.safetensors"), InputKind::Archive),
            (
                "torch/step-2/optimizer.pt",
                Some("torch/step-1/optimizer.pt"),
                InputKind::Opaque,
            ),
            (
                "dcp/step-2/__0_0.distcp",
                Some("dcp/step-1/__0_0.distcp"),
                InputKind::Auto,
            ),
        ];
        for (cur, reference, input) in cases {
            for lossy in [None, Some(Bound::MaxRelError(0.01))] {
                let c = test_data(cur);
                let r = reference.map(test_data);
                let opts = EncodeOptions {
                    chunk_size: 1024,
                    input,
                    lossy,
                    ..EncodeOptions::default()
                };
                let p = plan(&c, r.as_deref(), &opts).unwrap();
                let tensors = p.tensors().to_vec();
                let s = p.summary();
                let mut out = Vec::new();
                let stats = execute(p, &mut out, None).unwrap();
                let f = Container::open(&out).unwrap();
                let what = format!("{cur} against {reference:?} as {input:?}, {lossy:?}");
                assert_eq!(s.source_kind, f.index.source_kind, "{what}");
                assert_eq!(s.reference_used, f.index.reference.is_some(), "{what}");
                assert_eq!(s.lossy, f.index.lossy, "{what}");
                assert_eq!(s.original_len, f.index.original_len, "{what}");
                assert_eq!(s.elements, stats.elements, "{what}");
                assert_eq!(s.tensors, f.tensors.len(), "{what}");
                let chunks: usize = f.tensors.iter().map(|t| t.entry.chunks.len()).sum();
                assert_eq!(s.chunks, chunks, "{what}");
                for (t, v) in tensors.iter().zip(&f.tensors) {
                    assert_eq!(t.name, v.info.name, "{what}");
                    assert_eq!(t.dtype, v.info.dtype, "{what}");
                    assert_eq!(t.len, v.entry.data_len, "{what}");
                    assert_eq!(t.ref_mode, v.entry.ref_mode, "{what}");
                    assert_eq!(t.chunks, v.entry.chunks.len(), "{what}");
                }
                let data: u64 = s.by_dtype.iter().map(|d| d.bytes).sum();
                assert_eq!(s.header_bytes + data, s.original_len, "{what}");
                assert!(s.matched_bytes() <= data, "{what}");
                // Named though nothing matched only when the input kind was
                // given.
                if input == InputKind::Auto || s.matched_bytes() > 0 {
                    assert_eq!(s.matched_bytes() > 0, s.reference_used, "{what}");
                }
            }
        }
    }
}
