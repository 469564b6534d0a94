//! What a container holds, tensor by tensor, for `tpde inspect`.

use crate::codec::chunk::Codec;
use crate::common::error::Result;
use crate::container::format::{Container, RefId, SourceKind};

/// One tensor of a container.
#[derive(Debug, Clone)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Elements coded against the reference, and how many of them changed.
    pub delta_elements: u64,
    pub changed: u64,
    /// The coding of the chunks, e.g. `delta ulp/gaps`; `mixed: ...` when chunks differ.
    pub coding: String,
    /// Whether the tensor had reference data.
    pub has_reference: bool,
    /// The lossy mode's bound on the tensor's chunks (the largest, when they
    /// differ); `None` when every chunk is exact.
    pub max_abs_error: Option<f64>,
}

impl TensorReport {
    /// Fraction of the delta-coded elements that changed, when any were delta-coded.
    pub fn changed_fraction(&self) -> Option<f64> {
        (self.delta_elements > 0).then(|| self.changed as f64 / self.delta_elements as f64)
    }

    /// Stored bits per element.
    pub fn bits_per_element(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.stored_bytes as f64 * 8.0 / self.elements as f64
        }
    }
}

/// A whole container.
#[derive(Debug, Clone)]
pub struct Report {
    /// The format version of the file.
    pub version: u16,
    /// The lossy mode: the output is within each tensor's bound of the
    /// original, not the original.
    pub lossy: bool,
    pub reference: Option<RefId>,
    pub original_len: u64,
    pub encoded_len: u64,
    pub source_kind: SourceKind,
    pub header_len: u64,
    pub tensors: Vec<TensorReport>,
}

/// Reads the index of a container (no payload is decoded).
pub fn inspect(bytes: &[u8]) -> Result<Report> {
    let c = Container::open(bytes)?;
    let tensors = c
        .tensors
        .iter()
        .map(|t| {
            let mut codings: Vec<String> = Vec::new();
            let (mut stored, mut delta_elements, mut changed) = (0u64, 0u64, 0u64);
            let mut bound: Option<f64> = None;
            for e in &t.entry.chunks {
                stored += u64::from(e.payload_len);
                let k = &e.coding;
                let name = match k.codec {
                    Codec::Stored | Codec::Zstd => k.codec.name().to_string(),
                    Codec::Planes => format!("planes/{}", k.positions.name()),
                    Codec::Delta => {
                        delta_elements += u64::from(e.raw_len) / u64::from(k.width);
                        changed += k.nnz;
                        format!("delta {}/{}", k.transform.name(), k.positions.name())
                    }
                    Codec::Symbols | Codec::Symbols32 => {
                        delta_elements += u64::from(e.raw_len) / u64::from(k.width);
                        changed += k.nnz;
                        format!("symbols {}", k.transform.name())
                    }
                    Codec::Quantized => {
                        // The bound is the payload's bytes 1..9 (checked by the decoder).
                        let b = c
                            .payload(e)
                            .get(1..9)
                            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")));
                        bound = match (bound, b) {
                            (Some(x), Some(y)) => Some(x.max(y)),
                            (x, y) => x.or(y),
                        };
                        format!("quantized/{}", k.positions.name())
                    }
                };
                if !codings.contains(&name) {
                    codings.push(name);
                }
            }
            let coding = match codings.len() {
                0 => "empty".to_string(),
                1 => codings.remove(0),
                _ => format!("mixed: {}", codings.join(", ")),
            };
            TensorReport {
                name: t.info.name.clone(),
                dtype: t.info.dtype.name().to_string(),
                shape: t.info.shape.clone(),
                elements: if c.index.source_kind == SourceKind::Opaque {
                    t.info.len()
                } else {
                    t.info.elements()
                },
                raw_bytes: t.info.len(),
                stored_bytes: stored,
                delta_elements,
                changed,
                coding,
                has_reference: t.entry.ref_mode != crate::container::format::RefMode::None,
                max_abs_error: bound,
            }
        })
        .collect();
    Ok(Report {
        version: c.version,
        lossy: c.index.lossy,
        reference: c.index.reference,
        original_len: c.index.original_len,
        encoded_len: c.len(),
        source_kind: c.index.source_kind,
        header_len: c.index.header_block.len() as u64,
        tensors,
    })
}
