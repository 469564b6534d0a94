//! Stage 1: where a checkpoint's bytes come from, and what they mean.
//!
//! - [`dtype`]: element types and how each is coded.
//! - [`safetensors`]: a strict reader (and a small writer) of safetensors.
//! - [`archive`]: the storages inside `torch.save` zips and runs of them
//!   (DCP `.distcp` files), found with a bounded pickle walk.
//!
//! Anything else (raw bytes) is an opaque file: the container codes it as
//! one byte stream. May call: [`common`](crate::common) only.

pub mod archive;
pub mod dtype;
pub mod safetensors;
