//! Builds the crafted bad inputs of `tests/data/bad/` (see its README): the
//! small ones are committed, the large ones are made at run time by the tests
//! that use them. Shared by `tests/badinput.rs` of this crate and by
//! `crates/tpde-cli/tests/badinput.rs` (through `#[path]`).
//!
//! `cargo test -p tpde --test badinput -- --ignored regenerate` writes the
//! committed files again.
#![allow(dead_code)]

use tpde::codec::chunk::{ChunkCoding, Codec, Positions};
use tpde::codec::transform::Transform;
use tpde::container::format::{
    ChunkEntry, Index, RefMode, SourceKind, TensorEntry, END_MAGIC, MAGIC,
};

/// The largest chunk the format allows (64 MiB).
pub const MAX_CHUNK: u32 = 64 << 20;

/// `xxh3_64` of 64 MiB of zero bytes: the checksum of a chunk of the largest
/// size whose bytes are all zero (checked by `tests/badinput.rs`).
pub const ZEROS_64MIB_XXH3: u64 = 0x0939_aaa2_7d43_1ff2;

/// The payload of a chunk of `raw_len` zero bytes: one byte plane (codec
/// planes, width 1, dense) coded as a constant section: 10 bytes.
pub fn zero_payload(raw_len: u32) -> Vec<u8> {
    let mut p = vec![2u8]; // section coding 2: constant
    p.extend_from_slice(&raw_len.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(0);
    p
}

/// `n` chunk entries of `raw_len` zero bytes each, all pointing at the one
/// payload of [`zero_payload`] at offset 16.
pub fn zero_chunks(n: usize, raw_len: u32, checksum: u64) -> Vec<ChunkEntry> {
    let entry = ChunkEntry {
        payload_offset: 16,
        payload_len: 10,
        raw_len,
        checksum,
        coding: ChunkCoding {
            codec: Codec::Planes,
            transform: Transform::None,
            positions: Positions::Dense,
            width: 1,
            nnz: 0,
        },
    };
    vec![entry; n]
}

/// A whole `.tpde` file: header, `payloads` (from offset 16), the index,
/// the trailer. `index_hash` computes the trailer's `xxh3_64` of the index.
pub fn container(index: &Index, payloads: &[u8], index_hash: impl Fn(&[u8]) -> u64) -> Vec<u8> {
    let version = if index.lossy {
        3
    } else if index.source_kind == SourceKind::Archive {
        2
    } else {
        1
    };
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&(version as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(payloads);
    let index_offset = f.len() as u64;
    let ib = index.to_bytes().expect("index bytes");
    f.extend_from_slice(&ib);
    f.extend_from_slice(&index_offset.to_le_bytes());
    f.extend_from_slice(&(ib.len() as u64).to_le_bytes());
    f.extend_from_slice(&index_hash(&ib).to_le_bytes());
    f.extend_from_slice(&END_MAGIC);
    f
}

/// An opaque container of `chunks` chunks of 64 MiB of zeros, one shared
/// 10-byte payload: a file of a few hundred bytes (16 chunks: 911 bytes,
/// 1 GiB) to some hundreds of KB (16384 chunks: 786 KB, 1 TiB) that decodes
/// to `chunks` x 64 MiB. `digest` is the whole output's `xxh3_128` (0 when
/// it is not worth computing: the file is then refused at its end).
pub fn zero_bomb(chunks: usize, digest: u128, index_hash: impl Fn(&[u8]) -> u64) -> Vec<u8> {
    let len = chunks as u64 * u64::from(MAX_CHUNK);
    let index = Index {
        reference: None,
        lossy: false,
        original_len: len,
        original_digest: digest,
        source_kind: SourceKind::Opaque,
        header_block: Vec::new(),
        tensors: vec![TensorEntry {
            ref_mode: RefMode::None,
            data_len: len,
            chunks: zero_chunks(chunks, MAX_CHUNK, ZEROS_64MIB_XXH3),
        }],
    };
    container(&index, &zero_payload(MAX_CHUNK), index_hash)
}

/// The header block (`u64` size, JSON) of a safetensors file.
pub fn header_block(json: &[u8]) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(json);
    b
}

/// A safetensors container whose one tensor `w` (U8) is `chunks` x 64 MiB
/// of zeros: 1024 chunks make a 49 KB file claiming a 64 GiB tensor. The
/// chunks are valid; the whole-file digest is not (decoding the tensor alone
/// does not check it).
pub fn big_tensor(chunks: usize, index_hash: impl Fn(&[u8]) -> u64) -> Vec<u8> {
    let len = chunks as u64 * u64::from(MAX_CHUNK);
    let json = format!(r#"{{"w":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#);
    let block = header_block(json.as_bytes());
    let index = Index {
        reference: None,
        lossy: false,
        original_len: block.len() as u64 + len,
        original_digest: 0,
        source_kind: SourceKind::Safetensors,
        header_block: block,
        tensors: vec![TensorEntry {
            ref_mode: RefMode::None,
            data_len: len,
            chunks: zero_chunks(chunks, MAX_CHUNK, ZEROS_64MIB_XXH3),
        }],
    };
    container(&index, &zero_payload(MAX_CHUNK), index_hash)
}

/// A safetensors container with one 8-byte tensor and a header of about
/// `header_len` bytes, nearly all of it a `__metadata__` array of zeros
/// (`[0,0,...]`, which a generic JSON tree holds at ~17 times its size);
/// zstd codes it in a few KB. `checksum` is `xxh3_64` of 8 zero bytes;
/// `digest` computes `xxh3_128` of the whole original.
pub fn huge_header(
    header_len: usize,
    index_hash: impl Fn(&[u8]) -> u64,
    digest: impl Fn(&[u8]) -> u128,
    checksum: u64,
) -> Vec<u8> {
    let head = r#"{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"__metadata__":{"k":[0"#;
    let mut json = head.as_bytes().to_vec();
    let tail = b"]}}";
    while json.len() + tail.len() + 2 <= header_len {
        json.extend_from_slice(b",0");
    }
    json.extend_from_slice(tail);
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let block = header_block(&json);
    let mut original = block.clone();
    original.extend_from_slice(&[0; 8]);
    let index = Index {
        reference: None,
        lossy: false,
        original_len: original.len() as u64,
        original_digest: digest(&original),
        source_kind: SourceKind::Safetensors,
        header_block: block,
        tensors: vec![TensorEntry {
            ref_mode: RefMode::None,
            data_len: 8,
            chunks: vec![ChunkEntry {
                payload_offset: 16,
                payload_len: 10,
                raw_len: 8,
                checksum,
                coding: ChunkCoding {
                    codec: Codec::Planes,
                    transform: Transform::None,
                    positions: Positions::Dense,
                    width: 1,
                    nnz: 0,
                },
            }],
        }],
    };
    container(&index, &zero_payload(8), index_hash)
}

/// `len` bytes of zip end-of-central-directory records (22 bytes each, one
/// entry of 46 bytes at offset 0: plausible, never closing an archive),
/// after a local file header signature so that the file starts like a zip.
pub fn eocd_flood(len: usize) -> Vec<u8> {
    let mut f = b"PK\x03\x04".to_vec();
    f.extend_from_slice(&[0; 26]);
    let mut record = b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00".to_vec();
    record.extend_from_slice(&46u32.to_le_bytes());
    record.extend_from_slice(&0u32.to_le_bytes());
    record.extend_from_slice(&[0, 0]);
    while f.len() + record.len() <= len {
        f.extend_from_slice(&record);
    }
    f
}

/// A zip archive of stored entries (name, bytes) as torch.save writes them
/// (without alignment or data descriptors).
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for &(name, data) in entries {
        let at = out.len() as u32;
        let (len, name_len) = (data.len() as u32, name.len() as u16);
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00");
        out.extend_from_slice(&[0; 8]); // time, date, crc32
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00");
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        central.extend_from_slice(&at.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let start = out.len() as u32;
    let count = entries.len() as u16;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A torch-style archive `archive/` whose `data.pkl` is `pickle` and whose
/// one storage `archive/data/0` holds 64 bytes.
pub fn pickle_archive(pickle: &[u8]) -> Vec<u8> {
    let storage = [7u8; 64];
    stored_zip(&[
        ("archive/data.pkl", pickle),
        ("archive/data/0", &storage),
        ("archive/version", b"3\n"),
    ])
}

/// A pickle that pushes one value, then runs `op` `n` times, then stores the
/// persistent id of storage "0" as a FloatStorage and stops.
pub fn flood_pickle(op: u8, n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'N'];
    p.resize(3 + n, op);
    p.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000K\x10t.",
    );
    p
}
