//! The `.tpde` container, versions 1 to 6, byte by byte as in `docs/FORMAT.md`.
//!
//! ```text
//! +-----------------------+ 0
//! | file header, 16 bytes |  magic "\x89TPDE\r\n\x1a", u16 version, 6 reserved
//! +-----------------------+ 16
//! | chunk payloads        |
//! +-----------------------+ index_offset
//! | index                 |  flags, digests, header block, tensor entries
//! +-----------------------+ len - 32
//! | trailer, 32 bytes     |  index_offset, index_len, xxh3_64([header,] index), "TPDEEND\0"
//! +-----------------------+ len
//! ```
//!
//! This file owns the constants, the file header and trailer, the index's
//! types and [`Container::open`], which checks the frame around the index.
//! `index.rs` writes and strictly parses the index bytes; `views.rs` lays the
//! index over the original's header block (tensor views, the archive
//! layout). May call [`common`](crate::common), [`source`](crate::source)
//! (the safetensors header, dtypes) and [`codec`](crate::codec) (the chunk
//! coding fields).

use crate::codec::chunk::{ChunkCoding, Codec, Positions};
use crate::common::error::{Error, Result};
use std::ops::Range;

mod index;
mod views;

pub(crate) use views::archive_layout;
pub use views::{LayoutEntry, TensorView};

/// First eight bytes of every `.tpde` file.
pub const MAGIC: [u8; 8] = *b"\x89TPDE\r\n\x1a";
/// Last eight bytes of every `.tpde` file.
pub const END_MAGIC: [u8; 8] = *b"TPDEEND\0";
/// The newest format version this build reads. A file is written with the
/// lowest version that has the features it uses: 1; 2 for a torch.save
/// archive (source kind 2); 3 for the lossy mode (flag bit 1, codec 4); 6
/// when some chunk may be coded with symbols (codec 5 or 6: a float chunk
/// coded against reference data), whose chunks may also have fine gap
/// classes (positions 4); so that older readers still read the rest.
/// Versions 4 (symbols on 8 states only) and 5 (no fine gap classes) are
/// read, no longer written.
pub const VERSION: u16 = 6;
pub(crate) const FILE_HEADER_LEN: u64 = 16;
pub(crate) const TRAILER_LEN: u64 = 32;
const CHUNK_ENTRY_LEN: usize = 48;
const TENSOR_ENTRY_HEAD: usize = 13;
const FLAG_HAS_REF: u16 = 1;
const FLAG_LOSSY: u16 = 2;
/// Largest chunk (decoded bytes) a file may hold: bounds what a decoder
/// allocates for one chunk, whatever a crafted file claims.
pub const MAX_CHUNK: u32 = 64 << 20;

/// What kind of file the container holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// A safetensors file.
    #[default]
    Safetensors = 0,
    /// Any file, as opaque bytes.
    Opaque = 1,
    /// A zip archive written by `torch.save` (format version 2): its tensor
    /// storages are coded as tensors, every other byte is kept verbatim.
    Archive = 2,
}

impl SourceKind {
    /// The lowest format version that has this source kind.
    pub fn min_version(self) -> u16 {
        match self {
            SourceKind::Safetensors | SourceKind::Opaque => 1,
            SourceKind::Archive => 2,
        }
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Safetensors => "safetensors",
            SourceKind::Opaque => "opaque bytes",
            SourceKind::Archive => "torch archive",
        }
    }
}

/// Where a tensor's reference data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefMode {
    /// No reference data.
    None = 0,
    /// The tensor of the same name in the reference (a safetensors file).
    SameName = 1,
    /// The same byte range of the reference file.
    SameRange = 2,
    /// The bytes of the reference file at the offset the archive layout
    /// gives for the tensor (source kind 2 only).
    Offset = 3,
}

/// One chunk's index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    pub payload_offset: u64,
    pub payload_len: u32,
    pub raw_len: u32,
    pub checksum: u64,
    pub coding: ChunkCoding,
}

/// One tensor's index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub ref_mode: RefMode,
    pub data_len: u64,
    pub chunks: Vec<ChunkEntry>,
}

/// Identity of a reference file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefId {
    pub digest: u128,
    pub len: u64,
}

/// The index of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub reference: Option<RefId>,
    /// The lossy mode: float tensors may be quantized (codec 4); the output is
    /// within each chunk's bound of the original, not the original.
    pub lossy: bool,
    pub original_len: u64,
    pub original_digest: u128,
    pub source_kind: SourceKind,
    /// The original's header block, decompressed (empty for opaque files).
    pub header_block: Vec<u8>,
    pub tensors: Vec<TensorEntry>,
}

/// Digest used for whole files: XXH3-128.
pub fn digest(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Writes a digest as 32 hex digits.
pub fn digest_hex(d: u128) -> String {
    format!("{d:032x}")
}

pub(crate) fn file_header(version: u16) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h
}

pub(crate) fn trailer(version: u16, index_offset: u64, index: &[u8]) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..8].copy_from_slice(&index_offset.to_le_bytes());
    t[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    t[16..24].copy_from_slice(&index_hash(&file_header(version), index).to_le_bytes());
    t[24..].copy_from_slice(&END_MAGIC);
    t
}

/// The trailer's checksum: XXH3-64 of the index, and from version 5 on of
/// the file header before it (so that a changed version is caught too).
fn index_hash(header: &[u8; 16], index: &[u8]) -> u64 {
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version < 5 {
        return xxhash_rust::xxh3::xxh3_64(index);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(header);
    h.update(index);
    h.digest()
}

/// A parsed and validated `.tpde` file held in memory.
#[derive(Debug)]
pub struct Container<'a> {
    bytes: &'a [u8],
    /// The format version in the file header.
    pub version: u16,
    pub index: Index,
    pub tensors: Vec<TensorView>,
    /// The bytes of the header block written after the last tensor.
    pub tail: Range<usize>,
}

impl<'a> Container<'a> {
    /// Parses and checks a whole `.tpde` file: magic, version, trailer,
    /// index checksum, and every size and offset of the index.
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        let len = bytes.len() as u64;
        match bytes.get(..8) {
            Some(m) if m == MAGIC => {}
            Some(_) => return Err(Error::WrongMagic),
            None if MAGIC.starts_with(bytes) => {
                return Err(Error::Truncated(format!(
                    "{len} bytes, shorter than the file header"
                )))
            }
            None => return Err(Error::WrongMagic),
        }
        if len < FILE_HEADER_LEN + TRAILER_LEN {
            return Err(Error::Truncated(format!(
                "{len} bytes, too short for header and trailer"
            )));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(1..=VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                version,
                newest: VERSION,
            });
        }
        if bytes[10..16].iter().any(|&b| b != 0) {
            return Err(Error::corrupt(
                "reserved bytes of the file header are not zero",
            ));
        }
        let t = &bytes[(len - TRAILER_LEN) as usize..];
        if t[24..] != END_MAGIC {
            return Err(Error::Truncated(
                "the trailer is missing (end magic not found)".into(),
            ));
        }
        let index_offset = u64::from_le_bytes(t[..8].try_into().expect("8"));
        let index_len = u64::from_le_bytes(t[8..16].try_into().expect("8"));
        let index_hash = u64::from_le_bytes(t[16..24].try_into().expect("8"));
        if index_offset < FILE_HEADER_LEN
            || index_offset.checked_add(index_len) != Some(len - TRAILER_LEN)
        {
            return Err(Error::corrupt(
                "index offset and length do not fit the file",
            ));
        }
        let index_bytes = &bytes[index_offset as usize..(len - TRAILER_LEN) as usize];
        let header: &[u8; 16] = bytes[..16].try_into().expect("16 bytes");
        if self::index_hash(header, index_bytes) != index_hash {
            return Err(Error::corrupt("index checksum mismatch"));
        }
        let index = index::parse_index(index_bytes, index_offset)?;
        // Versions 1 to 3 are exactly the lowest one with the features used.
        // Versions 4 to 6 are written before the chunks are coded, when
        // some chunk may come out as symbols: any file with reference data
        // may be version 4, 5 or 6; codec 5 needs version 4 or later, codec
        // 6 version 5 or later, fine gap classes (positions 4) version 6.
        if index.lossy && version < 3 {
            return Err(Error::corrupt(format!(
                "the lossy flag in a version {version} file"
            )));
        }
        if index.source_kind.min_version() > version {
            return Err(Error::corrupt(format!(
                "source kind {} in a version {version} file",
                index.source_kind as u8
            )));
        }
        let has = |codec: Codec| {
            index
                .tensors
                .iter()
                .flat_map(|t| &t.chunks)
                .any(|c| c.coding.codec == codec)
        };
        let fine = index
            .tensors
            .iter()
            .flat_map(|t| &t.chunks)
            .any(|c| c.coding.positions == Positions::FineClasses);
        if version < 6 && fine {
            return Err(Error::corrupt(format!(
                "fine gap classes (positions 4) in a version {version} file"
            )));
        }
        if version == 4 && has(Codec::Symbols32) {
            return Err(Error::corrupt(
                "a symbols chunk on 32 states (codec 6) in a version 4 file",
            ));
        }
        if version >= 4 {
            if index.reference.is_none() {
                return Err(Error::corrupt(format!(
                    "a version {version} file without reference data"
                )));
            }
        } else {
            for (codec, number) in [(Codec::Symbols, 5), (Codec::Symbols32, 6)] {
                if has(codec) {
                    return Err(Error::corrupt(format!(
                        "a symbols chunk (codec {number}) in a version {version} file"
                    )));
                }
            }
            let expected = if index.lossy {
                3
            } else {
                index.source_kind.min_version()
            };
            if version != expected {
                return Err(Error::corrupt(format!(
                    "a version {version} file without the features of version {version} \
                     (it would be version {expected})"
                )));
            }
        }
        let (tensors, tail) = views::tensor_views(&index)?;
        Ok(Container {
            bytes,
            version,
            index,
            tensors,
            tail,
        })
    }

    /// The payload of a chunk (its range was checked by [`Container::open`]).
    pub fn payload(&self, c: &ChunkEntry) -> &'a [u8] {
        &self.bytes[c.payload_offset as usize..c.payload_offset as usize + c.payload_len as usize]
    }

    /// Total size of the container in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// True for an empty container (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
