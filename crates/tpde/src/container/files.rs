//! The file-level API: memory-mapped inputs, atomic outputs.
//!
//! Decoding to a file is bounded by the free space of the output's
//! filesystem: a file that decodes to more bytes than are free there is
//! refused before anything is written (with an I/O error of kind
//! [`std::io::ErrorKind::StorageFull`]), whatever the caller's limit
//! ([`DecodeOptions::max_output`], also checked before anything is written).

use std::path::Path;

use crate::common::atomic::{check_not_input, write_atomic, Replace};
use crate::common::error::{Error, Result};
use crate::common::mmap::FileBytes;
use crate::container::decode::{decode_opened, decode_tensor_opened, open_tensor, RefCheck};
use crate::container::decode::{DecodeOptions, DecodeStats};
use crate::container::encode::{EncodeOptions, EncodeStats};
use crate::container::format::Container;

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

/// Bytes free for an unprivileged user on the filesystem that holds `dir`;
/// `None` where that cannot be told (not a Unix system, or a filesystem
/// that does not say).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let s = rustix::fs::statvfs(dir).ok()?;
        let unit = if s.f_frsize > 0 {
            s.f_frsize
        } else {
            s.f_bsize
        };
        if s.f_blocks == 0 || unit == 0 {
            return None;
        }
        Some(s.f_bavail.saturating_mul(unit))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses to write `need` bytes to `out` when its filesystem has less free.
fn check_room(out: &Path, what: &str, need: u64) -> Result<()> {
    match free_space(crate::common::safefs::parent_of(out)) {
        Some(free) if need > free => Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{what} decodes to {need} bytes, more than the {free} bytes free on the \
                     output's filesystem"
                ),
            ),
        )),
        _ => Ok(()),
    }
}

/// Encodes the file `cur` against `reference` (a keyframe when `None`) into
/// `out`, atomically: on error, no output file is left behind. An input that
/// changed while it was read is [`Error::InputChanged`].
pub fn encode_file(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &EncodeOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    encode_file_with(cur, reference, out, opts, progress, Replace::Yes)
}

/// [`encode_file`], replacing a file at `out` only with [`Replace::Yes`]:
/// with [`Replace::No`] an `out` that exists, or appears while encoding, is
/// never replaced.
pub fn encode_file_with(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &EncodeOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    replace: Replace,
) -> Result<EncodeStats> {
    let (cur, reference) = open_inputs(cur, reference, out)?;
    write_atomic(out, replace, |w| {
        let stats = crate::container::encode::encode(&cur, reference.as_deref(), opts, w, progress);
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
/// every checksum and the whole-file digest have matched. A file that
/// decodes to more than the free space of `out`'s filesystem is refused
/// before anything is written.
pub fn decode_file(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<DecodeStats> {
    decode_file_with(
        input,
        reference,
        out,
        progress,
        &DecodeOptions::default(),
        Replace::Yes,
    )
}

/// [`decode_file`] within the limits of `opts` too: a file that decodes to
/// more than `opts.max_output` bytes is refused before anything is written.
/// A file at `out` is replaced only with [`Replace::Yes`].
pub fn decode_file_with(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    opts: &DecodeOptions,
    replace: Replace,
) -> Result<DecodeStats> {
    let (bytes, reference) = open_inputs(input, reference, out)?;
    let c = Container::open(&bytes)?;
    opts.check("the file", c.index.original_len)?;
    check_room(out, "the file", c.index.original_len)?;
    write_atomic(out, replace, |w| {
        // Into a temporary file, dropped on error: the reference's digest
        // is checked only when the decode fails.
        decode_opened(&c, reference.as_deref(), w, progress, RefCheck::OnFailure)
    })
}

/// Decodes one tensor of the `.tpde` file `input` and writes its raw bytes
/// (little-endian elements, as in the safetensors data section) to `out`,
/// atomically. Only that tensor's chunks are decoded, a batch at a time. A
/// tensor larger than the free space of `out`'s filesystem is refused before
/// anything is written.
pub fn decode_tensor_file(
    input: &Path,
    reference: Option<&Path>,
    name: &str,
    out: &Path,
) -> Result<u64> {
    decode_tensor_file_with(
        input,
        reference,
        name,
        out,
        &DecodeOptions::default(),
        Replace::Yes,
    )
}

/// [`decode_tensor_file`] within the limits of `opts` too: a tensor of more
/// than `opts.max_output` bytes is refused before anything is written. A
/// file at `out` is replaced only with [`Replace::Yes`].
pub fn decode_tensor_file_with(
    input: &Path,
    reference: Option<&Path>,
    name: &str,
    out: &Path,
    opts: &DecodeOptions,
    replace: Replace,
) -> Result<u64> {
    let (bytes, reference) = open_inputs(input, reference, out)?;
    let (c, ti) = open_tensor(&bytes, name, opts)?;
    let what = format!("tensor {name:?}");
    check_room(out, &what, c.tensors[ti].entry.data_len)?;
    write_atomic(out, replace, |w| {
        decode_tensor_opened(&c, ti, reference.as_deref(), w)
    })
}
