//! The file-level API: memory-mapped inputs, atomic outputs.

use std::path::Path;

use crate::atomic::{check_not_input, write_atomic, Replace};
use crate::error::Result;
use crate::mmap::FileBytes;
use crate::{DecodeStats, EncodeOptions, EncodeStats};

/// Maps an input and its optional reference, after checking that `out`
/// names neither (an input is never replaced).
fn open_inputs(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
) -> Result<(FileBytes, Option<FileBytes>)> {
    let mut inputs = vec![input];
    inputs.extend(reference);
    check_not_input(out, &inputs)?;
    Ok((
        FileBytes::open(input)?,
        reference.map(FileBytes::open).transpose()?,
    ))
}

/// Encodes the file `cur` against `reference` (a keyframe when `None`) into
/// `out`, atomically: on error, no output file is left behind. An input that
/// changed while it was read is [`Error::InputChanged`](crate::Error::InputChanged).
pub fn encode_file(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &EncodeOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    let (cur, reference) = open_inputs(cur, reference, out)?;
    write_atomic(out, Replace::Yes, |w| {
        let stats = crate::encode(&cur, reference.as_deref(), opts, w, progress);
        // Before the output appears: an input that changed says so first.
        cur.check_unchanged()?;
        reference
            .as_ref()
            .map_or(Ok(()), FileBytes::check_unchanged)?;
        stats
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
    let (bytes, reference) = open_inputs(input, reference, out)?;
    write_atomic(out, Replace::Yes, |w| {
        crate::decode(&bytes, reference.as_deref(), w, progress)
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
    let (bytes, reference) = open_inputs(input, reference, out)?;
    let data = crate::decode_tensor(&bytes, reference.as_deref(), name)?;
    write_atomic(out, Replace::Yes, |w| {
        w.write_all(&data)?;
        Ok(data.len() as u64)
    })
}
