//! Stage 3: the `.tpde` file, built from a parsed source and coded chunks.
//!
//! - [`format`](mod@format): the container byte by byte (`docs/FORMAT.md`): header,
//!   index, tensor and chunk entries, strict parsing.
//! - [`encode`]: a source file (safetensors, torch archive, opaque) and its
//!   reference into a container, in two steps: [`encode::plan`] (what each
//!   chunk is and what it is coded against) and [`encode::execute`].
//! - [`decode`]: a container and its reference back into the original,
//!   whole or tensor by tensor, hashing as it writes.
//! - [`range`]: a byte range of the original without decoding the rest.
//! - [`inspect`]: what a container holds, for `tpde inspect`.
//! - [`files`]: the same on paths: mapped inputs, atomic outputs, the free
//!   space of the output's filesystem.
//!
//! May call: [`common`](crate::common), [`source`](crate::source) and
//! [`codec`](crate::codec).

pub mod decode;
pub mod encode;
pub mod files;
pub mod format;
pub mod inspect;
pub mod range;
