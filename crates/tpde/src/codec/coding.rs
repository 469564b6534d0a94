//! What describes a coded chunk: the format's `codec` and `positions`
//! bytes, the coding a chunk's entry records, and the encoder's settings.
//! Re-exported from [`chunk`](crate::codec::chunk), their public path.

use crate::codec::transform::Transform;
use crate::common::error::{Error, Result};
use crate::source::dtype::Family;

/// How a chunk's payload is coded (the format's `codec` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The raw bytes.
    Stored = 0,
    /// One zstd frame of the raw bytes.
    Zstd = 1,
    /// Byte planes of the raw elements, no reference.
    Planes = 2,
    /// Byte planes of the elements transformed against the reference.
    Delta = 3,
    /// The lossy mode: floats as quantization bins against the reference
    /// (or zero), plus exact escapes (see [`crate::codec::lossy`]).
    Quantized = 4,
    /// One symbol per element (sign, bit length and top bits of the ULP
    /// difference) rANS coded by the reference's exponent, and the low bits
    /// raw, on 8 interleaved rANS states (format version 4 on, see
    /// `codec::symbols`).
    Symbols = 5,
    /// As [`Codec::Symbols`], on 32 interleaved rANS states (format version 5).
    Symbols32 = 6,
}

impl Codec {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            2 => Codec::Planes,
            3 => Codec::Delta,
            4 => Codec::Quantized,
            5 => Codec::Symbols,
            6 => Codec::Symbols32,
            other => return Err(Error::corrupt(format!("unknown codec {other}"))),
        })
    }

    /// Whether the chunk is coded against its reference data (which it
    /// then must have): the delta codecs.
    pub fn is_delta(self) -> bool {
        matches!(self, Codec::Delta | Codec::Symbols | Codec::Symbols32)
    }

    /// Whether the chunk is coded with symbols (codec 5 or 6).
    pub fn is_symbols(self) -> bool {
        matches!(self, Codec::Symbols | Codec::Symbols32)
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Stored => "stored",
            Codec::Zstd => "zstd",
            Codec::Planes => "planes",
            Codec::Delta => "delta",
            Codec::Quantized => "quantized",
            Codec::Symbols | Codec::Symbols32 => "symbols",
        }
    }
}

/// How the changed positions are coded (the format's `positions` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Positions {
    /// Every element's value is coded; no positions.
    Dense = 0,
    /// Elias-delta coded gaps between changed positions.
    Gaps = 1,
    /// One bit per element.
    Bitmap = 2,
    /// Gaps as entropy-coded bit lengths plus their low bits.
    Classes = 3,
    /// Gaps as entropy-coded bit lengths and the two bits below the
    /// leading one, plus the low bits below those (format version 6).
    FineClasses = 4,
}

impl Positions {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Positions::Dense,
            1 => Positions::Gaps,
            2 => Positions::Bitmap,
            3 => Positions::Classes,
            4 => Positions::FineClasses,
            other => return Err(Error::corrupt(format!("unknown positions coding {other}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Positions::Dense => "dense",
            Positions::Gaps => "gaps",
            Positions::Bitmap => "bitmap",
            Positions::Classes => "classes",
            Positions::FineClasses => "fine-classes",
        }
    }
}

/// What describes a coded chunk besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCoding {
    pub codec: Codec,
    pub transform: Transform,
    pub positions: Positions,
    /// Element width in bytes.
    pub width: u8,
    /// Changed (non-zero transformed) elements.
    pub nnz: u64,
}

/// Encoder settings for one chunk.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Element width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// Which difference transform suits the elements.
    pub family: Family,
    /// zstd level for the sections.
    pub level: i32,
    /// The exponent field of a float element, (shift, bits): plane bytes may
    /// then be grouped by the exponent of their reference element.
    pub exponent: Option<(u8, u8)>,
    /// Whether positions may be coded as fine gap classes (positions 4, in
    /// a format version 6 file).
    pub fine_classes: bool,
}
