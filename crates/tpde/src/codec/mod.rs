//! Stage 2: coding one chunk of elements against its reference.
//!
//! The stages of a chunk, in the order the encoder runs them:
//! - [`transform`]: bit-pattern transforms (XOR, ULP difference) and byte
//!   planes.
//! - [`chunk`]: positions of the changed elements (Elias-delta gaps, a
//!   bitmap, or none), the byte planes' sections and the choice between
//!   them; decoding a chunk back.
//! - [`bits`]: bit I/O and the Elias-delta code.
//! - [`ans`]: tpde's rANS entropy coder (zstd is the other one).
//! - [`lossy`]: the error-bounded quantizer of the lossy mode.
//!
//! A chunk's coder knows nothing of files, tensors' names or the container:
//! it sees bytes, a dtype family and parameters. May call:
//! [`common`](crate::common) and [`source`](crate::source) (for dtypes).

pub mod ans;
pub mod bits;
pub mod chunk;
pub mod lossy;
pub mod transform;
