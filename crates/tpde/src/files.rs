//! The file-level API: memory-mapped inputs, atomic outputs.

use std::path::Path;

use crate::atomic::{check_not_input, write_atomic};
use crate::error::Result;
use crate::mmap::FileBytes;
use crate::{DecodeStats, EncodeOptions, EncodeStats};

/// Encodes the file `cur` against `reference` (a keyframe when `None`) into
/// `out`, atomically: on error, no output file is left behind.
pub fn encode_file(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &EncodeOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    let mut inputs = vec![cur];
    inputs.extend(reference);
    check_not_input(out, &inputs)?;
    let cur_bytes = FileBytes::open(cur)?;
    let ref_bytes = reference.map(FileBytes::open).transpose()?;
    write_atomic(out, |w| {
        crate::encode(&cur_bytes, ref_bytes.as_deref(), opts, w, progress)
    })
}

/// Decodes the `.tpde` file `input` (with the `reference` it was encoded
/// against, for a delta) into `out`, atomically: the output appears only once
/// every checksum and the whole-file digest have matched.
pub fn decode_file(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<DecodeStats> {
    let mut inputs = vec![input];
    inputs.extend(reference);
    check_not_input(out, &inputs)?;
    let bytes = FileBytes::open(input)?;
    let ref_bytes = reference.map(FileBytes::open).transpose()?;
    write_atomic(out, |w| {
        crate::decode(&bytes, ref_bytes.as_deref(), w, progress)
    })
}

/// Decodes one tensor of the `.tpde` file `input` and writes its raw bytes
/// (little-endian elements, as in the safetensors data section) to `out`,
/// atomically. Only that tensor's chunks are decoded.
pub fn decode_tensor_file(
    input: &Path,
    reference: Option<&Path>,
    name: &str,
    out: &Path,
) -> Result<u64> {
    let mut inputs = vec![input];
    inputs.extend(reference);
    check_not_input(out, &inputs)?;
    let bytes = FileBytes::open(input)?;
    let ref_bytes = reference.map(FileBytes::open).transpose()?;
    let data = crate::decode_tensor(&bytes, ref_bytes.as_deref(), name)?;
    write_atomic(out, |w| {
        w.write_all(&data)?;
        Ok(data.len() as u64)
    })
}
