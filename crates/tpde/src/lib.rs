//! tpde: lossless delta compression of neural-network checkpoints.
//!
//! A checkpoint (a safetensors file) is coded against the previous one of the
//! same run: each element's bit pattern is transformed against its reference
//! (XOR or ULP difference), the positions of the changed elements are coded as
//! Elias-delta gaps (or a bitmap, or not at all when nearly all change), the
//! changed values are split into byte planes and entropy coded with zstd.
//! Decoding gives the original back byte for byte.
//!
//! Beyond single files: [`store`] keeps a training run's checkpoints (files
//! or whole checkpoint folders, `torch.save` archives included, see
//! [`source::archive`]) as keyframes and deltas with crash-safe writes, and
//! [`codec::lossy`] is the opt-in error-bounded mode.
//!
//! The library follows the data, one folder per stage, each calling only the
//! stages below it (`docs/ARCHITECTURE.md`):
//!
//! ```text
//! common <- source <- codec <- container <- store <- (CLI, Python)
//! ```
//!
//! - [`common`]: errors, memory maps, symlink-safe file operations, atomic
//!   output.
//! - [`source`]: the formats a checkpoint comes in (safetensors, `torch.save`
//!   archives, dtypes).
//! - [`codec`]: one chunk against its reference: transforms, positions,
//!   byte planes, entropy coders, the lossy quantizer.
//! - [`container`]: the `.tpde` file: format, encode, decode, inspect.
//! - [`store`]: a run's checkpoints as keyframes and deltas.
//!
//! ```
//! # fn main() -> tpde::Result<()> {
//! # let st = |v: f32| { let h = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
//! #   let mut f = (h.len() as u64).to_le_bytes().to_vec(); f.extend_from_slice(h);
//! #   f.extend_from_slice(&v.to_le_bytes()); f.extend_from_slice(&1.5f32.to_le_bytes()); f };
//! let (prev, cur) = (st(0.25), st(0.5)); // two safetensors files
//! let mut packed = Vec::new();
//! tpde::encode(&cur, Some(&prev), &tpde::EncodeOptions::default(), &mut packed, None)?;
//! let mut restored = Vec::new();
//! tpde::decode(&packed, Some(&prev), &mut restored, None)?;
//! assert_eq!(restored, cur);
//! # Ok(()) }
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod codec;
pub mod common;
pub mod container;
pub mod source;
pub mod store;

pub use codec::lossy::Bound;
pub use common::atomic::Replace;
pub use common::error::{Error, Result};
pub use common::mmap::FileBytes;
pub use container::decode::{
    decode, decode_tensor, decode_tensor_to, decode_tensor_with, decode_with, DecodeOptions,
    DecodeStats,
};
#[doc(hidden)]
pub use container::encode::test_hooks;
pub use container::encode::{encode, EncodeOptions, EncodeStats, InputKind};
pub use source::dtype::Dtype;
