//! `tpde inspect --plan`: what encoding a checkpoint (against `--ref`) would
//! code against what, read from the encoder's plan, before anything is
//! coded.

use std::path::Path;

use anyhow::{Context, Result};
use tpde::container::encode::{plan, Plan};
use tpde::container::format::{RefMode, SourceKind};

use crate::{human, Table, WIDTH};

/// What a tensor is coded against, in words.
fn against(mode: RefMode) -> &'static str {
    match mode {
        RefMode::None => "nothing",
        RefMode::SameName => "same name",
        RefMode::SameRange => "same bytes",
        RefMode::Offset => "same storage",
    }
}

/// Prints the plan of encoding `input` against `reference` with `opts`.
pub fn inspect(
    input: &Path,
    reference: Option<&Path>,
    opts: &tpde::EncodeOptions,
    wide: bool,
) -> Result<()> {
    let bytes =
        tpde::FileBytes::open(input).with_context(|| format!("reading {}", input.display()))?;
    let ref_bytes = reference
        .map(|r| tpde::FileBytes::open(r).with_context(|| format!("reading {}", r.display())))
        .transpose()?;
    let p = plan(&bytes, ref_bytes.as_deref(), opts)
        .with_context(|| format!("planning {}", input.display()))?;
    print_plan(input, reference, &p, opts, wide);
    Ok(())
}

fn print_plan(
    input: &Path,
    reference: Option<&Path>,
    p: &Plan,
    opts: &tpde::EncodeOptions,
    wide: bool,
) {
    let s = p.summary();
    let kind = s.source_kind;
    println!(
        "file:      {} ({}), read as {}; not encoded (the plan of `tpde encode`)",
        input.display(),
        human(s.original_len),
        kind.name()
    );
    let matched = s.matched_bytes();
    let any_matched = p.tensors().iter().any(|t| t.ref_mode != RefMode::None);
    match reference {
        None => println!("reference: none (a keyframe)"),
        // Read by itself, the file does not name the reference; named, it is
        // encoded again as a keyframe (see `encode`).
        Some(r) if !any_matched => println!(
            "reference: {}: nothing matched, so encode writes a keyframe",
            r.display()
        ),
        Some(r) => println!(
            "reference: {}: {} of {} coded against it ({:.1}%)",
            r.display(),
            human(matched),
            human(s.original_len),
            100.0 * matched as f64 / s.original_len.max(1) as f64
        ),
    }
    let tensors = match kind {
        SourceKind::Opaque => String::new(),
        _ => format!(" ({} tensors)", s.tensors),
    };
    println!(
        "chunks:    {} of up to {} KiB{tensors}{}\n",
        s.chunks,
        opts.chunk_size / 1024,
        if s.lossy {
            "; lossy: float tensors within their bound"
        } else {
            "; lossless"
        }
    );
    if kind != SourceKind::Opaque {
        let mut head = vec!["tensor", "dtype", "elements", "bytes", "against", "chunks"];
        if s.lossy {
            head.push("bound");
        }
        let mut t = Table::new(&head);
        for x in p.tensors() {
            let mut row = vec![
                x.name.clone(),
                x.dtype.to_string(),
                x.elements.to_string(),
                human(x.len),
                against(x.ref_mode).to_string(),
                x.chunks.to_string(),
            ];
            if s.lossy {
                row.push(x.bound.map_or("exact".into(), |b| format!("{b:.3e}")));
            }
            t.row(row);
        }
        if !wide {
            t.fit(WIDTH);
        }
        print!("{t}");
        if t.shortened() {
            println!("(long names shortened in the middle; --wide prints them whole)");
        }
        println!();
    }
    let mut t = Table::new(&[
        "dtype",
        "against",
        "tensors",
        "chunks",
        "bytes",
        "of them matched",
    ]);
    for d in &s.by_dtype {
        t.row(vec![
            d.dtype.to_string(),
            against(d.ref_mode).to_string(),
            d.tensors.to_string(),
            d.chunks.to_string(),
            human(d.bytes),
            human(d.ref_bytes),
        ]);
    }
    print!("{t}");
    if s.header_bytes > 0 {
        println!(
            "\noutside the tensors: {} ({}), kept whole and compressed without the reference",
            human(s.header_bytes),
            match kind {
                SourceKind::Archive => "zip records and pickles",
                _ => "the header",
            }
        );
    }
    if s.opaque_bytes() > 0 {
        println!(
            "as bytes: {}, each chunk against the same byte range of the reference",
            human(s.opaque_bytes())
        );
    }
}
