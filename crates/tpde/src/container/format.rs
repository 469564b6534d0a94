//! The `.tpde` container, versions 1 to 3, byte by byte as in `docs/FORMAT.md`.
//!
//! ```text
//! +-----------------------+ 0
//! | file header, 16 bytes |  magic "\x89TPDE\r\n\x1a", u16 version, 6 reserved
//! +-----------------------+ 16
//! | chunk payloads        |
//! +-----------------------+ index_offset
//! | index                 |  flags, digests, header block, tensor entries
//! +-----------------------+ len - 32
//! | trailer, 32 bytes     |  index_offset, index_len, xxh3_64(index), "TPDEEND\0"
//! +-----------------------+ len
//! ```

use crate::codec::chunk::{ChunkCoding, Codec, Positions};
use crate::codec::transform::Transform;
use crate::common::error::{Error, Result};
use crate::source::dtype::Dtype;
use crate::source::safetensors::{self, TensorInfo, MAX_HEADER_SIZE};
use std::ops::Range;

/// First eight bytes of every `.tpde` file.
pub const MAGIC: [u8; 8] = *b"\x89TPDE\r\n\x1a";
/// Last eight bytes of every `.tpde` file.
pub const END_MAGIC: [u8; 8] = *b"TPDEEND\0";
/// The newest format version this build reads. A file is written with the
/// lowest version that has the features it uses: 1; 2 for a torch.save
/// archive (source kind 2); 3 for the lossy mode (flag bit 1, codec 4); so
/// that older readers still read the rest.
pub const VERSION: u16 = 3;
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

pub(crate) fn trailer(index_offset: u64, index: &[u8]) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..8].copy_from_slice(&index_offset.to_le_bytes());
    t[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    t[16..24].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(index).to_le_bytes());
    t[24..].copy_from_slice(&END_MAGIC);
    t
}

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
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::corrupt(format!("index ends inside {what}")));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn u128(&mut self, what: &str) -> Result<u128> {
        Ok(u128::from_le_bytes(
            self.take(16, what)?.try_into().expect("16"),
        ))
    }
}

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
            return Err(Error::UnsupportedVersion(version));
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
        if xxhash_rust::xxh3::xxh3_64(index_bytes) != index_hash {
            return Err(Error::corrupt("index checksum mismatch"));
        }
        let index = parse_index(index_bytes, index_offset)?;
        // The version is exactly the lowest one with the features used.
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
        let (tensors, tail) = tensor_views(&index)?;
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

fn parse_index(b: &[u8], index_offset: u64) -> Result<Index> {
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
            if c.coding.codec == Codec::Delta && ref_mode == RefMode::None {
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

/// The tensors of a container with the header-block bytes around each, and
/// the tail written after the last one.
fn tensor_views(index: &Index) -> Result<(Vec<TensorView>, Range<usize>)> {
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
