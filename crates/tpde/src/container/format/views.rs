//! The index laid over the original's header block: one [`TensorView`] per
//! tensor (name, dtype, shape and the header bytes written before it), read
//! from the safetensors header or the archive layout that
//! [`archive_layout`] writes.
//!
//! May call the types of [`super`], [`common`](crate::common) and
//! [`source`](crate::source) (the safetensors header, dtypes).

use super::index::Reader;
use super::{Index, RefMode, SourceKind, TensorEntry};
use crate::common::error::{Error, Result};
use crate::source::dtype::Dtype;
use crate::source::safetensors::{self, TensorInfo};
use std::ops::Range;

/// A tensor of an opened container: what the header says and how it is coded.
#[derive(Debug, Clone)]
pub struct TensorView {
    /// Name, dtype, shape and data range, from the original's header (for an
    /// opaque file: one pseudo-tensor named after nothing, dtype unknown; for
    /// an archive, the range is the absolute one in the original file).
    pub info: TensorInfo,
    pub entry: TensorEntry,
    /// The bytes of the header block written just before this tensor's data.
    pub gap: Range<usize>,
    /// Where the tensor's reference data starts in the reference file
    /// ([`RefMode::Offset`] only; 0 otherwise).
    pub ref_offset: u64,
}

/// One tensor of an archive layout (source kind 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Where the tensor's data starts in the original file.
    pub offset: u64,
    /// Where its reference data starts in the reference file (0 without).
    pub ref_offset: u64,
}

/// The header block of an archive container: the tensor table, then the
/// original's bytes outside every tensor (`filler`), in file order.
pub(crate) fn archive_layout(entries: &[LayoutEntry], filler: &[u8]) -> Result<Vec<u8>> {
    let mut b = Vec::with_capacity(4 + entries.len() * 40 + filler.len());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        let dtype = e.dtype.to_string();
        let (Ok(name_len), Ok(dtype_len)) =
            (u16::try_from(e.name.len()), u8::try_from(dtype.len()))
        else {
            return Err(Error::InvalidArgument(format!(
                "archive entry name {:?} is too long",
                e.name
            )));
        };
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.ref_offset.to_le_bytes());
        b.extend_from_slice(&name_len.to_le_bytes());
        b.extend_from_slice(e.name.as_bytes());
        b.push(dtype_len);
        b.extend_from_slice(dtype.as_bytes());
    }
    b.extend_from_slice(filler);
    Ok(b)
}

/// The tensors of a container with the header-block bytes around each, and
/// the tail written after the last one.
pub(super) fn tensor_views(index: &Index) -> Result<(Vec<TensorView>, Range<usize>)> {
    let hb = index.header_block.len();
    let refuse_mode = |entry: &TensorEntry, allowed: &[RefMode]| {
        if entry.ref_mode == RefMode::None || allowed.contains(&entry.ref_mode) {
            Ok(())
        } else {
            Err(Error::corrupt(format!(
                "reference mode {} in a {} container",
                entry.ref_mode as u8,
                index.source_kind.name()
            )))
        }
    };
    match index.source_kind {
        SourceKind::Safetensors => {
            let header =
                safetensors::parse_header_with(&index.header_block, index.original_len, false)
                    .map_err(|e| Error::corrupt(format!("stored header: {e}")))?;
            if header.tensors.len() != index.tensors.len() {
                return Err(Error::corrupt(format!(
                    "header has {} tensors, index has {}",
                    header.tensors.len(),
                    index.tensors.len()
                )));
            }
            let views = header
                .tensors
                .into_iter()
                .zip(index.tensors.iter().cloned())
                .enumerate()
                .map(|(i, (info, entry))| {
                    if info.len() != entry.data_len {
                        return Err(Error::corrupt(format!(
                            "tensor {:?}: length differs from the header",
                            info.name
                        )));
                    }
                    refuse_mode(&entry, &[RefMode::SameName])?;
                    Ok(TensorView {
                        info,
                        entry,
                        gap: if i == 0 { 0..hb } else { hb..hb },
                        ref_offset: 0,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let tail = if views.is_empty() { 0..hb } else { hb..hb };
            Ok((views, tail))
        }
        SourceKind::Opaque => {
            let [entry] = &index.tensors[..] else {
                return Err(Error::corrupt(
                    "an opaque container holds exactly one entry",
                ));
            };
            refuse_mode(entry, &[RefMode::SameRange])?;
            if hb != 0 || entry.data_len != index.original_len {
                return Err(Error::corrupt(
                    "opaque container entry does not cover the file",
                ));
            }
            Ok((
                vec![TensorView {
                    info: TensorInfo {
                        name: String::new(),
                        dtype: Dtype::Unknown("bytes".into()),
                        shape: vec![entry.data_len],
                        begin: 0,
                        end: entry.data_len,
                    },
                    entry: entry.clone(),
                    gap: 0..0,
                    ref_offset: 0,
                }],
                0..0,
            ))
        }
        SourceKind::Archive => archive_views(index),
    }
}

/// Reads the layout block of an archive container (see [`archive_layout`]).
fn archive_views(index: &Index) -> Result<(Vec<TensorView>, Range<usize>)> {
    let block = &index.header_block[..];
    let mut r = Reader { b: block };
    let n = r.u32("the archive layout")? as usize;
    if n != index.tensors.len() {
        return Err(Error::corrupt(format!(
            "archive layout has {n} tensors, index has {}",
            index.tensors.len()
        )));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = r.u64("the archive layout")?;
        let ref_offset = r.u64("the archive layout")?;
        let name_len = r.u16("the archive layout")? as usize;
        let name = std::str::from_utf8(r.take(name_len, "the archive layout")?)
            .map_err(|_| Error::corrupt("archive tensor name is not UTF-8"))?
            .to_string();
        let dtype_len = r.u8("the archive layout")? as usize;
        let dtype = std::str::from_utf8(r.take(dtype_len, "the archive layout")?)
            .map_err(|_| Error::corrupt("archive tensor dtype is not UTF-8"))?;
        entries.push(LayoutEntry {
            name,
            dtype: Dtype::from_name(dtype),
            offset,
            ref_offset,
        });
    }
    let mut filler = block.len() - r.b.len();
    let mut pos = 0u64;
    let mut views = Vec::with_capacity(n);
    for (e, entry) in entries.into_iter().zip(index.tensors.iter().cloned()) {
        let gap = e
            .offset
            .checked_sub(pos)
            .and_then(|g| usize::try_from(g).ok())
            .filter(|&g| g <= block.len() - filler)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "archive tensor {:?} overlaps its neighbours or the layout is short",
                    e.name
                ))
            })?;
        let end = e
            .offset
            .checked_add(entry.data_len)
            .filter(|&end| end <= index.original_len)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "archive tensor {:?} ends past the original",
                    e.name
                ))
            })?;
        if entry.ref_mode == RefMode::Offset {
            if e.ref_offset.checked_add(entry.data_len).is_none() {
                return Err(Error::corrupt("archive reference offset overflows"));
            }
        } else if entry.ref_mode != RefMode::None {
            return Err(Error::corrupt(format!(
                "reference mode {} in a torch archive container",
                entry.ref_mode as u8
            )));
        } else if e.ref_offset != 0 {
            return Err(Error::corrupt(
                "archive tensor without reference has a reference offset",
            ));
        }
        let width = e.dtype.coding_width() as u64;
        views.push(TensorView {
            info: TensorInfo {
                name: e.name,
                shape: vec![entry.data_len / width],
                dtype: e.dtype,
                begin: e.offset,
                end,
            },
            entry,
            gap: filler..filler + gap,
            ref_offset: e.ref_offset,
        });
        filler += gap;
        pos = end;
    }
    if pos + (block.len() - filler) as u64 != index.original_len {
        return Err(Error::corrupt(
            "archive layout does not add up to the original's length",
        ));
    }
    Ok((views, filler..block.len()))
}
