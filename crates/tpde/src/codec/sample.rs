//! Order-0 estimates on a sample of a chunk: the entropy of each byte
//! plane, dense and sparse, under each candidate transform; the encoder
//! chooses its transform and its positions coding by them.

use crate::codec::ans;
use crate::codec::transform::{self, Transform};

/// Elements sampled to choose a transform and estimate costs.
pub(super) const SAMPLE: usize = 8192;
/// Order-0 entropy (bits per byte) above which a plane is stored raw.
pub(super) const RAW_ENTROPY: f64 = 7.9;

/// Order-0 entropy of a histogram, in bits per symbol.
pub(super) fn entropy(hist: &[u64; 256]) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let t = total as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / t;
            -p * p.log2()
        })
        .sum()
}

/// Order-0 statistics of the byte planes of a sample of transformed elements.
pub(super) struct Sample {
    /// Per plane, the entropy in bits per element with every sampled element
    /// (dense) and with the all-zero elements left out (sparse).
    dense: Vec<f64>,
    sparse: Vec<f64>,
    /// Fraction of the sampled elements that changed.
    pub(super) changed: f64,
}

/// The elements a sample looks at, gathered into contiguous buffers once and
/// shared by every candidate transform.
pub(super) struct Sampled {
    pub(super) cur: Vec<u8>,
    pub(super) reference: Vec<u8>,
}

impl Sampled {
    pub(super) fn gather(width: usize, cur: &[u8], reference: &[u8]) -> Sampled {
        let n = cur.len() / width;
        if n <= SAMPLE {
            return Sampled {
                cur: cur.to_vec(),
                reference: reference.to_vec(),
            };
        }
        let stride = n.div_ceil(SAMPLE);
        let pick = |src: &[u8]| -> Vec<u8> {
            if src.is_empty() {
                return Vec::new();
            }
            let mut v = Vec::with_capacity(SAMPLE * width);
            for e in src.chunks_exact(width).step_by(stride) {
                v.extend_from_slice(e);
            }
            v
        };
        Sampled {
            cur: pick(cur),
            reference: pick(reference),
        }
    }
}

impl Sample {
    pub(super) fn take(t: Transform, width: usize, s: &Sampled) -> Sample {
        let mut planes = vec![0u8; s.cur.len()];
        let nnz = transform::forward_planes(t, width, &s.cur, &s.reference, &mut planes);
        let m = s.cur.len() / width;
        let zeros = (m as u64).saturating_sub(nnz);
        let (mut dense, mut sparse) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for plane in planes.chunks_exact(m.max(1)) {
            let mut h = ans::histogram(plane);
            dense.push(entropy(&h));
            h[0] -= zeros;
            sparse.push(entropy(&h));
        }
        Sample {
            dense,
            sparse,
            changed: nnz as f64 / m.max(1) as f64,
        }
    }

    /// Estimated bits per element of the planes with all elements (dense).
    pub(super) fn dense_bits(&self) -> f64 {
        self.dense.iter().sum()
    }

    /// Estimated bits per coded element of the planes with the zeros left out.
    pub(super) fn sparse_bits(&self) -> f64 {
        self.sparse.iter().sum()
    }
}
