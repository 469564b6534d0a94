//! `tpde encode` and `tpde decode`: one file against its reference, written
//! atomically, with a progress bar and a one-line summary.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{check_output, file_len, human, progress_bar, replace};

/// Checks that a file named `.safetensors` (or given `--as safetensors`)
/// is one, so that a file that only bears the name is told how to store it.
fn check_safetensors(path: &Path, what: &str, hint: &str) -> Result<()> {
    let bytes =
        tpde::FileBytes::open(path).with_context(|| format!("reading {}", path.display()))?;
    match tpde::source::safetensors::parse(&bytes) {
        Err(tpde::Error::Safetensors(detail)) => {
            bail!(
                "{what}{} is not a safetensors file ({detail}){hint}",
                path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(_) => Ok(()),
    }
}

pub fn encode(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    force: bool,
    opts: &tpde::EncodeOptions,
) -> Result<()> {
    let mut inputs = vec![cur];
    inputs.extend(reference);
    check_output(out, &inputs, force)?;
    if opts.input == tpde::InputKind::Safetensors {
        check_safetensors(cur, "", "; use --as bytes to store it as opaque bytes")?;
        if let Some(r) = reference {
            check_safetensors(r, "the reference ", "")?;
        }
    }
    let pb = progress_bar(file_len(cur)?, "encoding");
    let t = Instant::now();
    let encode = |reference, replace| {
        let progress: Option<&(dyn Fn(u64) + Sync)> = Some(&|d| pb.set_position(d));
        tpde::container::files::encode_file_with(cur, reference, out, opts, progress, replace)
            .with_context(|| format!("encoding {}", cur.display()))
    };
    let mut s = encode(reference, replace(force))?;
    // A named file (`--as safetensors`, `--as torch`) keeps its reference
    // even when no tensor matched one of it; then it is coded again as the
    // keyframe it is, which decodes without the reference.
    let unmatched = reference.is_some() && s.reference_used && !any_tensor_matched(out)?;
    if unmatched {
        s = encode(None, tpde::common::atomic::Replace::Yes)?; // over its own first output
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let kind = match reference {
        Some(r) if s.reference_used => format!("delta against {}", r.display()),
        _ => "keyframe".to_string(),
    };
    let kind = format!("{}, {kind}", s.source_kind.name());
    println!(
        "{} ({}) -> {} ({}), {kind}: ratio {:.3}x, {} MB/s",
        cur.display(),
        human(s.original_len),
        out.display(),
        human(s.encoded_len),
        s.original_len as f64 / s.encoded_len as f64,
        (s.original_len as f64 / 1e6 / secs).round()
    );
    if let (Some(r), false) = (reference, s.reference_used) {
        // No tensor matched (or, read as bytes, the reference did not fit).
        let matched = match s.source_kind {
            tpde::container::format::SourceKind::Safetensors => "tensor",
            tpde::container::format::SourceKind::Archive => "storage",
            _ => "part",
        };
        let by = match s.source_kind {
            tpde::container::format::SourceKind::Archive => " (by name, dtype and length)",
            tpde::container::format::SourceKind::Safetensors => " (by name, dtype and shape)",
            _ => "",
        };
        eprintln!(
            "tpde: note: no {matched} of {} matched one of the reference {}{by}: coded as a \
             keyframe",
            cur.display(),
            r.display()
        );
    }
    if s.reference_used && s.elements > 0 {
        println!(
            "changed elements: {:.2}%",
            100.0 * s.changed as f64 / s.elements as f64
        );
    }
    if let (Some(b), Some(e)) = (opts.lossy, s.max_abs_error) {
        println!("LOSSY ({b}): largest error of a restored element {e:.3e}; the output is not the original");
    }
    Ok(())
}

/// Whether some tensor of the `.tpde` file `path` is coded against its
/// reference.
fn any_tensor_matched(path: &Path) -> Result<bool> {
    let bytes =
        tpde::FileBytes::open(path).with_context(|| format!("reading {}", path.display()))?;
    let r = tpde::container::inspect::inspect(&bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(r.tensors.iter().any(|t| t.has_reference))
}

pub fn decode(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
    force: bool,
    opts: &tpde::DecodeOptions,
) -> Result<()> {
    let mut inputs = vec![input];
    inputs.extend(reference);
    check_output(out, &inputs, force)?;
    let bytes =
        tpde::FileBytes::open(input).with_context(|| format!("reading {}", input.display()))?;
    let report = tpde::container::inspect::inspect(&bytes)
        .with_context(|| format!("reading {}", input.display()))?;
    if reference.is_some() && report.reference.is_none() {
        eprintln!(
            "tpde: note: {} is a keyframe; --ref is not needed and was ignored",
            input.display()
        );
    }
    let pb = progress_bar(report.original_len, "decoding");
    let t = Instant::now();
    let s = tpde::container::files::decode_file_with(
        input,
        reference,
        out,
        Some(&|d| pb.set_position(d)),
        opts,
        replace(force),
    )
    .with_context(|| format!("decoding {}", input.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} -> {} ({}), verified, {} MB/s",
        input.display(),
        out.display(),
        human(s.original_len),
        (s.original_len as f64 / 1e6 / secs).round()
    );
    Ok(())
}
