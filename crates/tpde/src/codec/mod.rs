//! Stage 2: coding one chunk of elements against its reference.
//!
//! The stages of a chunk, in the order the encoder runs them:
//! - [`transform`]: bit-pattern transforms (XOR, ULP difference) and byte
//!   planes.
//! - [`chunk`]: the choice of a chunk's coding and decoding it back; its
//!   types (`Codec`, `Positions`, `ChunkCoding`, `ChunkParams`, from
//!   `coding`) and the lossy mode's chunk (from `quantized`) are
//!   re-exported there. It assembles, from modules private to this stage:
//!   - `sample`: order-0 entropy estimates on a sample of the chunk, which
//!     choose the transform and the positions coding;
//!   - `positions`: the changed elements' positions (Elias-delta gaps, gap
//!     classes, a bitmap, or none);
//!   - `sections`: the payload's sections (raw, constant, zstd, rANS) and
//!     reading them back;
//!   - `groups`: byte planes grouped by the reference's exponents;
//!   - `symbols`: codec 5, a float delta coded one symbol per element in
//!     one pass each way (the fast path of dense float deltas).
//! - `bits`: bit I/O and the Elias-delta code.
//! - `ans`: tpde's rANS entropy coder (zstd is the other one).
//! - `simd`: the SIMD kernels (x86-64 AVX2, chosen at run time) and the
//!   only `unsafe` of this stage; each has a scalar twin that gives the same
//!   results.
//! - [`lossy`]: the error-bounded quantizer of the lossy mode.
//!
//! A chunk's coder knows nothing of files, tensors' names or the container:
//! it sees bytes, a dtype family and parameters. May call:
//! [`common`](crate::common) and [`source`](crate::source) (for dtypes).

pub(crate) mod ans;
pub(crate) mod bits;
pub mod chunk;
mod coding;
mod groups;
pub mod lossy;
mod positions;
mod quantized;
mod sample;
mod sections;
mod simd;
mod symbols;
pub mod transform;
