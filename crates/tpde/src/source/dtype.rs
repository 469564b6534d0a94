//! Element types of the safetensors format, and how tpde codes each.

use std::fmt;

/// How the elements of a dtype are compared with their reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Sign-magnitude floating point: the ULP difference applies.
    Float,
    /// Two's complement or unsigned integers, bools, packed sub-byte types and
    /// opaque bytes: the wrapping integer difference applies.
    Integer,
}

/// A safetensors dtype. Unknown names are kept (as opaque bytes), never refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F4,
    F6E2M3,
    F6E3M2,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    F16,
    BF16,
    F32,
    F64,
    C64,
    /// A dtype this build does not know, by its name in the header.
    Unknown(String),
}

impl Dtype {
    /// Parses a dtype name of the safetensors header.
    pub fn from_name(name: &str) -> Dtype {
        match name {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "U16" => Dtype::U16,
            "I16" => Dtype::I16,
            "U32" => Dtype::U32,
            "I32" => Dtype::I32,
            "U64" => Dtype::U64,
            "I64" => Dtype::I64,
            "F4" => Dtype::F4,
            "F6_E2M3" => Dtype::F6E2M3,
            "F6_E3M2" => Dtype::F6E3M2,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E8M0" => Dtype::F8E8M0,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "C64" => Dtype::C64,
            other => Dtype::Unknown(other.to_string()),
        }
    }

    /// The name as written in a safetensors header.
    pub fn name(&self) -> &str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::C64 => "C64",
            Dtype::Unknown(name) => name,
        }
    }

    /// Bits per element, or `None` for an unknown dtype.
    pub fn bits(&self) -> Option<u64> {
        Some(match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 8,
            Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 => 8,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 32,
            Dtype::U64 | Dtype::I64 | Dtype::F64 | Dtype::C64 => 64,
            Dtype::Unknown(_) => return None,
        })
    }

    /// The element width tpde's transforms work on, in bytes (1, 2, 4 or 8).
    /// Packed sub-byte types and unknown dtypes are coded byte by byte; a
    /// complex number is two F32 values.
    pub fn coding_width(&self) -> usize {
        match self {
            Dtype::C64 => 4,
            other => match other.bits() {
                Some(bits) if bits >= 8 => (bits / 8) as usize,
                _ => 1,
            },
        }
    }

    /// Where the exponent field sits in an element of `coding_width()`
    /// bytes, as (shift, bits), for floating-point dtypes.
    pub fn exponent_field(&self) -> Option<(u8, u8)> {
        Some(match self {
            Dtype::F8E4M3 => (3, 4),
            Dtype::F8E5M2 => (2, 5),
            Dtype::F8E8M0 => (0, 8),
            Dtype::F16 => (10, 5),
            Dtype::BF16 => (7, 8),
            Dtype::F32 | Dtype::C64 => (23, 8),
            Dtype::F64 => (52, 11),
            _ => return None,
        })
    }

    /// Which difference transform suits the elements.
    pub fn family(&self) -> Family {
        match self {
            Dtype::F8E5M2
            | Dtype::F8E4M3
            | Dtype::F8E8M0
            | Dtype::F16
            | Dtype::BF16
            | Dtype::F32
            | Dtype::F64
            | Dtype::C64 => Family::Float,
            _ => Family::Integer,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
