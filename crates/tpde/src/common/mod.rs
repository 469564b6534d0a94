//! Stage 0, below every other: what all stages share and none owns.
//!
//! - [`error`]: the one error type of the library.
//! - `mmap`: memory-mapped inputs that let go of their pages and survive
//!   files truncated under them (the crate's only `unsafe`, most of it in
//!   `mmap::guard`, the SIGBUS handler).
//! - `safefs`: opens, folders and renames that never follow a symlink.
//! - [`atomic`]: output files that appear whole or not at all.
//! - `overlap`: a stream's making and using of items, side by side.
//!
//! May call: the standard library and crates only, never another stage.

pub mod atomic;
pub mod error;
pub(crate) mod mmap;
pub(crate) mod overlap;
pub(crate) mod safefs;
