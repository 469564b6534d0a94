//! The index of a container, byte by byte: [`Index::to_bytes`] writes it,
//! [`parse_index`] reads it back and refuses anything the format does not
//! allow (every length, offset, coding field and reserved byte is checked),
//! allocating no more than the bytes given justify.
//!
//! May call the types of [`super`], [`common`](crate::common),
//! [`source`](crate::source) (the header limit) and [`codec`](crate::codec)
//! (the chunk coding fields).

use super::{
    ChunkEntry, Index, RefId, RefMode, SourceKind, TensorEntry, CHUNK_ENTRY_LEN, FILE_HEADER_LEN,
    FLAG_HAS_REF, FLAG_LOSSY, MAX_CHUNK, TENSOR_ENTRY_HEAD,
};
use crate::codec::chunk::{ChunkCoding, Codec, Positions};
use crate::codec::transform::Transform;
use crate::common::error::{Error, Result};
use crate::source::safetensors::MAX_HEADER_SIZE;

impl Index {
    /// Serializes the index.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(128 + self.header_block.len() / 4 + self.tensors.len() * 64);
        let mut flags = 0;
        if self.reference.is_some() {
            flags |= FLAG_HAS_REF;
        }
        if self.lossy {
            flags |= FLAG_LOSSY;
        }
        b.extend_from_slice(&flags.to_le_bytes());
        let r = self.reference.unwrap_or(RefId { digest: 0, len: 0 });
        b.extend_from_slice(&r.digest.to_le_bytes());
        b.extend_from_slice(&r.len.to_le_bytes());
        b.extend_from_slice(&self.original_len.to_le_bytes());
        b.extend_from_slice(&self.original_digest.to_le_bytes());
        b.push(self.source_kind as u8);
        let header = zstd::bulk::compress(&self.header_block, 9)?;
        b.extend_from_slice(&(self.header_block.len() as u32).to_le_bytes());
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(&header);
        b.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            b.push(t.ref_mode as u8);
            b.extend_from_slice(&t.data_len.to_le_bytes());
            b.extend_from_slice(&(t.chunks.len() as u32).to_le_bytes());
            for c in &t.chunks {
                b.extend_from_slice(&c.payload_offset.to_le_bytes());
                b.extend_from_slice(&c.payload_len.to_le_bytes());
                b.extend_from_slice(&c.raw_len.to_le_bytes());
                b.extend_from_slice(&c.coding.nnz.to_le_bytes());
                b.extend_from_slice(&c.checksum.to_le_bytes());
                b.push(c.coding.codec as u8);
                b.push(c.coding.transform as u8);
                b.push(c.coding.positions as u8);
                b.push(c.coding.width);
                b.extend_from_slice(&[0u8; 12]);
            }
        }
        Ok(b)
    }
}

/// A little-endian reader over the index that never reads out of bounds.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::corrupt(format!("index ends inside {what}")));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub(super) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    pub(super) fn u128(&mut self, what: &str) -> Result<u128> {
        Ok(u128::from_le_bytes(
            self.take(16, what)?.try_into().expect("16"),
        ))
    }
}

pub(super) fn parse_index(b: &[u8], index_offset: u64) -> Result<Index> {
    let mut r = Reader { b };
    let flags = r.u16("flags")?;
    if flags & !(FLAG_HAS_REF | FLAG_LOSSY) != 0 {
        return Err(Error::corrupt(format!("unknown flags {flags:#06x}")));
    }
    let ref_digest = r.u128("reference digest")?;
    let ref_len = r.u64("reference length")?;
    let reference = if flags & FLAG_HAS_REF != 0 {
        Some(RefId {
            digest: ref_digest,
            len: ref_len,
        })
    } else {
        if ref_digest != 0 || ref_len != 0 {
            return Err(Error::corrupt("keyframe with a reference digest"));
        }
        None
    };
    let original_len = r.u64("original length")?;
    let original_digest = r.u128("original digest")?;
    let source_kind = match r.u8("source kind")? {
        0 => SourceKind::Safetensors,
        1 => SourceKind::Opaque,
        2 => SourceKind::Archive,
        k => return Err(Error::corrupt(format!("unknown source kind {k}"))),
    };
    let header_len = r.u32("header length")? as usize;
    let header_stored = r.u32("header stored length")? as usize;
    // An archive's layout block also holds the tensor table, so it may be
    // longer than a small original; both stay under the header limit.
    let fits = source_kind == SourceKind::Archive || header_len as u64 <= original_len;
    if header_len as u64 > MAX_HEADER_SIZE + 8 || !fits {
        return Err(Error::corrupt(format!(
            "header block of {header_len} bytes is out of range"
        )));
    }
    let z = r.take(header_stored, "the header block")?;
    let header_block = inflate_header(z, header_len)?;
    let n_tensors = r.u32("tensor count")? as usize;
    if n_tensors > r.b.len() / TENSOR_ENTRY_HEAD {
        return Err(Error::corrupt(format!(
            "{n_tensors} tensors cannot fit in the index"
        )));
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let ref_mode = match r.u8("ref mode")? {
            0 => RefMode::None,
            1 => RefMode::SameName,
            2 => RefMode::SameRange,
            3 => RefMode::Offset,
            m => return Err(Error::corrupt(format!("unknown ref mode {m}"))),
        };
        if ref_mode != RefMode::None && reference.is_none() {
            return Err(Error::corrupt(
                "tensor coded against a reference in a keyframe",
            ));
        }
        let data_len = r.u64("tensor length")?;
        let n_chunks = r.u32("chunk count")? as usize;
        if n_chunks > r.b.len() / CHUNK_ENTRY_LEN {
            return Err(Error::corrupt(format!(
                "{n_chunks} chunks cannot fit in the index"
            )));
        }
        let mut chunks = Vec::with_capacity(n_chunks);
        let mut total = 0u64;
        for _ in 0..n_chunks {
            let e = r.take(CHUNK_ENTRY_LEN, "a chunk entry")?;
            let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8"));
            let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().expect("4"));
            let c = ChunkEntry {
                payload_offset: u64_at(0),
                payload_len: u32_at(8),
                raw_len: u32_at(12),
                checksum: u64_at(24),
                coding: ChunkCoding {
                    nnz: u64_at(16),
                    codec: Codec::from_u8(e[32])?,
                    transform: Transform::from_u8(e[33])?,
                    positions: Positions::from_u8(e[34])?,
                    width: e[35],
                },
            };
            if e[36..].iter().any(|&b| b != 0) {
                return Err(Error::corrupt(
                    "reserved bytes of a chunk entry are not zero",
                ));
            }
            let end = c.payload_offset.checked_add(u64::from(c.payload_len));
            if c.payload_offset < FILE_HEADER_LEN || end.is_none_or(|e| e > index_offset) {
                return Err(Error::corrupt(
                    "chunk payload lies outside the payload area",
                ));
            }
            if c.coding.codec.is_delta() && ref_mode == RefMode::None {
                return Err(Error::corrupt(
                    "delta chunk in a tensor without reference data",
                ));
            }
            check_coding(&c)?;
            total = total
                .checked_add(u64::from(c.raw_len))
                .ok_or_else(|| Error::corrupt("chunk lengths overflow"))?;
            chunks.push(c);
        }
        if total != data_len {
            return Err(Error::corrupt(format!(
                "chunks cover {total} bytes of a tensor of {data_len}"
            )));
        }
        tensors.push(TensorEntry {
            ref_mode,
            data_len,
            chunks,
        });
    }
    if !r.b.is_empty() {
        return Err(Error::corrupt("index has trailing bytes"));
    }
    let lossy = flags & FLAG_LOSSY != 0;
    let quantized = tensors
        .iter()
        .flat_map(|t: &TensorEntry| &t.chunks)
        .any(|c| c.coding.codec == Codec::Quantized);
    if quantized && !lossy {
        return Err(Error::corrupt(
            "a quantized chunk in a file that does not say it is lossy",
        ));
    }
    Ok(Index {
        reference,
        lossy,
        original_len,
        original_digest,
        source_kind,
        header_block,
        tensors,
    })
}

/// Decompresses the header block, which must be exactly `len` bytes (at
/// most the format's limit, checked by the caller). Nothing is allocated
/// beyond what the frame says it holds and what it actually produces: a
/// frame that says it holds another length is refused before any
/// allocation; one that does not say is decoded as a stream, its buffer
/// growing with the bytes it gives, up to `len`.
fn inflate_header(z: &[u8], len: usize) -> Result<Vec<u8>> {
    let bad = |m: String| Error::corrupt(format!("header block: {m}"));
    let content =
        zstd::zstd_safe::get_frame_content_size(z).map_err(|_| bad("not a zstd frame".into()))?;
    match content {
        Some(n) if n == len as u64 => {
            let mut out = vec![0u8; len];
            match zstd::bulk::decompress_to_buffer(z, &mut out) {
                Ok(got) if got == len => Ok(out),
                Ok(_) => Err(bad("decodes to the wrong length".into())),
                Err(e) => Err(bad(format!("zstd: {e}"))),
            }
        }
        Some(n) if n > len as u64 => Err(bad(format!(
            "its zstd frame holds {n} bytes, the index says {len}"
        ))),
        _ => {
            use std::io::Read;
            let decoder = zstd::stream::read::Decoder::with_buffer(z)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            let mut out = Vec::with_capacity(len.min(1 << 20));
            decoder
                .take(len as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            if out.len() != len {
                return Err(bad("decodes to the wrong length".into()));
            }
            Ok(out)
        }
    }
}

/// Checks that a chunk's coding fields agree with each other and its length.
fn check_coding(c: &ChunkEntry) -> Result<()> {
    let k = &c.coding;
    let width = u32::from(k.width);
    if c.raw_len > MAX_CHUNK {
        return Err(Error::corrupt(format!(
            "chunk of {} bytes exceeds the 64 MiB limit",
            c.raw_len
        )));
    }
    if !matches!(width, 1 | 2 | 4 | 8) || !c.raw_len.is_multiple_of(width) {
        return Err(Error::corrupt(format!(
            "chunk of {} bytes with element width {width}",
            c.raw_len
        )));
    }
    let elements = u64::from(c.raw_len / width);
    let ok = match k.codec {
        Codec::Stored | Codec::Zstd => {
            width == 1
                && k.transform == Transform::None
                && k.positions == Positions::Dense
                && k.nnz == elements
        }
        Codec::Planes => k.transform == Transform::None && k.nnz <= elements,
        Codec::Delta => k.transform != Transform::None && k.nnz <= elements,
        Codec::Symbols | Codec::Symbols32 => {
            matches!(width, 2 | 4)
                && k.transform == Transform::Ulp
                && k.positions == Positions::Dense
                && k.nnz <= elements
        }
        // nnz counts the bins' coding (bytes when they are stored or zstd).
        Codec::Quantized => {
            matches!(width, 2 | 4 | 8)
                && k.transform == Transform::None
                && k.nnz <= u64::from(c.raw_len)
        }
    };
    if !ok {
        return Err(Error::corrupt(format!(
            "chunk fields disagree: {} codec, {} transform, {} positions, width {width}, {} of {elements} elements changed",
            k.codec.name(),
            k.transform.name(),
            k.positions.name(),
            k.nnz
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_block_inflates_within_what_its_frame_says() {
        let data: Vec<u8> = (0..5000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let n = data.len();
        let z = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(inflate_header(&z, n).unwrap(), data);
        // A frame that holds more than the index says: refused at once.
        let e = inflate_header(&z, n - 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("holds {n} bytes, the index says {}", n - 1)),
            "{e}"
        );
        // One that holds less (or several frames): decoded, then refused.
        let e = inflate_header(&z, 100_000_000).unwrap_err().to_string();
        assert!(e.contains("wrong length"), "{e}");
        // A frame that does not say its size (a streaming encoder's).
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let streamed = enc.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        assert_eq!(inflate_header(&streamed, n).unwrap(), data);
        for len in [n - 1, n + 1, 100_000_000] {
            let e = inflate_header(&streamed, len).unwrap_err().to_string();
            assert!(e.contains("wrong length"), "{e}");
        }
        // Not zstd, truncated, empty.
        for bad in [&b"not zstd"[..], &z[..z.len() - 3], b""] {
            assert!(inflate_header(bad, n).is_err());
        }
    }
}
