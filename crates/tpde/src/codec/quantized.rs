//! A chunk in the lossy mode: the quantizer's bins coded as an inner
//! planes chunk, after the escapes (positions and exact values) and a head
//! with the float kind and the bound.

use crate::codec::chunk::{decode_chunk, encode_chunk, ChunkCoding, ChunkParams, Codec};
use crate::codec::lossy::{self, FloatKind, Quantized};
use crate::codec::positions::{elias_gaps, read_gaps};
use crate::codec::sections::{put_section, Sections};
use crate::codec::transform::Transform;
use crate::common::error::{Error, Result};
use crate::source::dtype::Family;

/// Bytes before the sections of a quantized chunk: float kind, bound, inner
/// codec, escape count.
pub(super) const QUANTIZED_HEAD: usize = 14;

/// Encodes one chunk of floats in the lossy mode: each element within
/// `bound` of `cur`, against `reference` (the decoder's reconstruction of the
/// reference; zeros when `None`). Returns the coding, the payload and what
/// the decoder will rebuild.
pub fn encode_quantized_chunk(
    cur: &[u8],
    reference: Option<&[u8]>,
    kind: FloatKind,
    bound: f64,
    level: i32,
) -> Result<(ChunkCoding, Vec<u8>, Quantized)> {
    let w = kind.width();
    let q = lossy::quantize(kind, bound, cur, reference);
    let params = ChunkParams {
        width: w,
        family: Family::Integer,
        level,
        exponent: None,
        fine_classes: false,
    };
    let (inner, inner_payload) = encode_chunk(&q.bins, None, params)?;
    let mut payload = Vec::with_capacity(inner_payload.len() + 64);
    payload.push(kind as u8);
    payload.extend_from_slice(&bound.to_le_bytes());
    payload.push(inner.codec as u8);
    payload.extend_from_slice(&(q.escapes.len() as u32).to_le_bytes());
    put_section(&mut payload, &elias_gaps(&q.escapes), Some(level))?;
    let mut exact = Vec::with_capacity(q.escapes.len() * w);
    for &i in &q.escapes {
        exact.extend_from_slice(&cur[i as usize * w..(i as usize + 1) * w]);
    }
    put_section(&mut payload, &exact, Some(level))?;
    payload.extend_from_slice(&inner_payload);
    let coding = ChunkCoding {
        codec: Codec::Quantized,
        transform: Transform::None,
        positions: inner.positions,
        width: w as u8,
        nnz: inner.nnz,
    };
    Ok((coding, payload, q))
}

/// Decodes a quantized chunk (see [`encode_quantized_chunk`]).
pub(super) fn decode_quantized(
    c: &ChunkCoding,
    payload: &[u8],
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let bad = |m: &str| Error::corrupt(format!("quantized chunk: {m}"));
    let head = payload
        .get(..QUANTIZED_HEAD)
        .ok_or_else(|| bad("header missing"))?;
    let w = usize::from(c.width);
    let kind = FloatKind::from_u8(head[0])
        .filter(|k| k.width() == w)
        .ok_or_else(|| bad("unknown float kind or wrong width"))?;
    let bound = f64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    if !(bound.is_finite() && bound > 0.0) {
        return Err(bad("the bound is not a positive number"));
    }
    let inner_codec = Codec::from_u8(head[9])?;
    if !matches!(inner_codec, Codec::Stored | Codec::Zstd | Codec::Planes) {
        return Err(bad("bins coded with a reference codec"));
    }
    let n = out.len() / w;
    let n_esc = u32::from_le_bytes(head[10..14].try_into().expect("4 bytes")) as usize;
    if n_esc > n {
        return Err(bad("more escapes than elements"));
    }
    if reference.is_some_and(|r| r.len() != out.len()) {
        return Err(bad("reference data of the wrong length"));
    }
    let mut sections = Sections {
        rest: &payload[QUANTIZED_HEAD..],
    };
    // An Elias-delta gap below 2^32 takes at most 64 bits.
    let len = sections.peek_len("escape positions")?;
    if len > n_esc.saturating_mul(8) + 8 {
        return Err(bad("escape positions longer than they can be"));
    }
    let bytes = sections.next(len, "escape positions")?;
    let escapes = read_gaps(&bytes, n_esc, n, "escape")?;
    let exact = sections.next(n_esc * w, "escape values")?;
    let inner = ChunkCoding {
        codec: inner_codec,
        transform: Transform::None,
        positions: c.positions,
        width: if inner_codec == Codec::Planes {
            c.width
        } else {
            1
        },
        nnz: c.nnz,
    };
    let mut bins = vec![0u8; out.len()];
    decode_chunk(&inner, sections.rest, None, &mut bins)?;
    lossy::dequantize(kind, bound, &bins, reference, out);
    for (k, &p) in escapes.iter().enumerate() {
        let p = p as usize;
        out[p * w..(p + 1) * w].copy_from_slice(&exact[k * w..(k + 1) * w]);
    }
    Ok(())
}
