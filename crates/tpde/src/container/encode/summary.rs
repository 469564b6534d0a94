//! The totals of a [`Plan`]: tensors, chunks, and the bytes coded against
//! the reference by dtype and reference mode, for `tpde inspect --plan`
//! and estimates before encoding.
//!
//! May call [`plan`](super::plan) (the plan's fields),
//! [`source`](crate::source) (dtypes) and [`format`](crate::container::format)
//! (source kinds, reference modes).

use super::plan::Plan;
use crate::container::format::{RefMode, SourceKind};
use crate::source::dtype::Dtype;

/// The totals of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanSummary {
    pub source_kind: SourceKind,
    /// Whether the container will need the reference to decode.
    pub reference_used: bool,
    /// Whether the container will be lossy (some float chunk may be
    /// quantized).
    pub lossy: bool,
    pub original_len: u64,
    pub tensors: usize,
    pub chunks: usize,
    pub elements: u64,
    /// Bytes of the file outside every tensor (a safetensors header, an
    /// archive's zip records and pickles), kept in the header block and
    /// coded without the reference.
    pub header_bytes: u64,
    /// The tensors' bytes by dtype and reference mode, in order of first
    /// appearance.
    pub by_dtype: Vec<DtypeBytes>,
}

/// The tensors of one dtype and reference mode in a [`PlanSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct DtypeBytes {
    pub dtype: Dtype,
    pub ref_mode: RefMode,
    pub tensors: usize,
    pub chunks: usize,
    pub bytes: u64,
    /// Of them, those coded against reference bytes.
    pub ref_bytes: u64,
}

impl PlanSummary {
    /// Bytes coded against the reference.
    pub fn matched_bytes(&self) -> u64 {
        self.by_dtype.iter().map(|d| d.ref_bytes).sum()
    }

    /// Bytes coded as opaque bytes (all of an opaque file's but the header's).
    pub fn opaque_bytes(&self) -> u64 {
        match self.source_kind {
            SourceKind::Opaque => self.by_dtype.iter().map(|d| d.bytes).sum(),
            _ => 0,
        }
    }
}

impl Plan<'_> {
    /// The totals.
    pub fn summary(&self) -> PlanSummary {
        let mut by_dtype: Vec<DtypeBytes> = Vec::new();
        for t in &self.tensors {
            let i = match by_dtype
                .iter()
                .position(|d| d.dtype == t.dtype && d.ref_mode == t.ref_mode)
            {
                Some(i) => i,
                None => {
                    by_dtype.push(DtypeBytes {
                        dtype: t.dtype.clone(),
                        ref_mode: t.ref_mode,
                        tensors: 0,
                        chunks: 0,
                        bytes: 0,
                        ref_bytes: 0,
                    });
                    by_dtype.len() - 1
                }
            };
            let d = &mut by_dtype[i];
            d.tensors += 1;
            d.chunks += t.chunks;
            d.bytes += t.len;
            d.ref_bytes += t.ref_bytes;
        }
        PlanSummary {
            source_kind: self.kind,
            reference_used: self.reference_used(),
            lossy: self.lossy(),
            original_len: self.cur.len() as u64,
            tensors: self.tensors.len(),
            chunks: self.jobs.len(),
            elements: self.elements,
            header_bytes: (self.header_block.len() - self.outside_from) as u64,
            by_dtype,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{plan, test_safetensors, EncodeOptions, InputKind};
    use super::*;

    #[test]
    fn the_summary_counts_bytes_by_dtype_and_reference() {
        // Opaque bytes: the chunks that the reference covers whole.
        let cur = vec![7u8; 1000];
        let reference = vec![7u8; 700];
        let opts = EncodeOptions {
            chunk_size: 256,
            input: InputKind::Opaque,
            ..EncodeOptions::default()
        };
        let s = plan(&cur, Some(&reference), &opts).unwrap().summary();
        assert_eq!(
            (s.chunks, s.matched_bytes(), s.opaque_bytes()),
            (4, 512, 1000)
        );
        assert_eq!(s.by_dtype[0].ref_mode, RefMode::SameRange);
        // Tensors: a new one, one matched, one whose shape changed.
        let cur = test_safetensors(&[
            ("a", vec![1.0; 64]),
            ("b", vec![2.0; 8]),
            ("n", vec![0.0; 4]),
        ]);
        let reference = test_safetensors(&[("a", vec![1.5; 64]), ("b", vec![2.0; 9])]);
        let opts = EncodeOptions {
            chunk_size: 64,
            ..EncodeOptions::default()
        };
        let p = plan(&cur, Some(&reference), &opts).unwrap();
        let s = p.summary();
        assert_eq!(s.tensors, 3);
        assert_eq!(s.chunks, 4 + 1 + 1);
        assert_eq!(s.matched_bytes(), 256);
        assert_eq!(s.opaque_bytes(), 0);
        assert_eq!(s.header_bytes, cur.len() as u64 - 304);
        let f32 = Dtype::from_name("F32");
        assert_eq!(
            s.by_dtype,
            vec![
                DtypeBytes {
                    dtype: f32.clone(),
                    ref_mode: RefMode::SameName,
                    tensors: 1,
                    chunks: 4,
                    bytes: 256,
                    ref_bytes: 256,
                },
                DtypeBytes {
                    dtype: f32,
                    ref_mode: RefMode::None,
                    tensors: 2,
                    chunks: 2,
                    bytes: 48,
                    ref_bytes: 0,
                },
            ]
        );
        // Read by itself, a file that no tensor of the reference matches is
        // a keyframe.
        let opts = EncodeOptions {
            input: InputKind::Auto,
            ..opts
        };
        let other = test_safetensors(&[("z", vec![1.0; 64])]);
        let p = plan(&cur, Some(&other), &opts).unwrap();
        assert!(!p.reference_used());
        assert_eq!(p.summary().matched_bytes(), 0);
    }
}
