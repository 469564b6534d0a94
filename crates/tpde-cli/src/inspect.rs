//! `tpde inspect`: what a `.tpde` file holds, tensor by tensor, and (given
//! its reference) how many elements changed.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{human, ratio, Table, WIDTH};

/// A shape as `256x64` (`scalar` for none).
fn shape(dims: &[u64]) -> String {
    if dims.is_empty() {
        return "scalar".into();
    }
    let v: Vec<String> = dims.iter().map(u64::to_string).collect();
    v.join("x")
}

/// For the tensors that were not (all) delta-coded against the reference,
/// the elements that differ from it, counted by decoding each such tensor
/// and comparing it with the reference's (`None` where it cannot be found).
/// The file records the count only for delta-coded chunks.
fn count_changed(
    bytes: &[u8],
    r: &tpde::container::inspect::Report,
    reference: &Path,
) -> Result<Vec<Option<u64>>> {
    use tpde::container::format::SourceKind;
    let ref_bytes = tpde::FileBytes::open(reference)
        .with_context(|| format!("reading {}", reference.display()))?;
    let Some(id) = r.reference else {
        bail!("the file is a keyframe: it has no reference to count changes against");
    };
    if ref_bytes.len() as u64 != id.len || xxhash_rust::xxh3::xxh3_128(&ref_bytes) != id.digest {
        bail!(
            "{} is not the reference of this file (it was encoded against {} bytes with \
             xxh3-128 {})",
            reference.display(),
            id.len,
            tpde::container::format::digest_hex(id.digest)
        );
    }
    // The reference's bytes of a tensor, found as the encoder matched them.
    let st = match r.source_kind {
        SourceKind::Safetensors => tpde::source::safetensors::parse(&ref_bytes).ok(),
        _ => None,
    };
    let storages = match r.source_kind {
        SourceKind::Archive => tpde::source::archive::scan(&ref_bytes),
        _ => None,
    };
    // torch.save names the archive's top folder after the file.
    let key = |name: &str| {
        name.split_once('/')
            .map_or(name, |(_, rest)| rest)
            .to_string()
    };
    let ref_of = |name: &str, len: u64| -> Option<&[u8]> {
        let (start, end) = if let Some(h) = &st {
            let t = h.get(name)?;
            (h.header_len + t.begin, h.header_len + t.end)
        } else {
            let t = storages
                .as_ref()?
                .iter()
                .find(|t| key(&t.name) == key(name))?;
            (t.offset, t.offset + t.len)
        };
        (end - start == len).then(|| ref_bytes.get(start as usize..end as usize))?
    };
    r.tensors
        .iter()
        .map(|t| {
            let counted = t.has_reference
                && t.delta_elements < t.elements
                && t.elements > 0
                && r.source_kind != SourceKind::Opaque;
            if !counted {
                return Ok(None);
            }
            let Some(old) = ref_of(&t.name, t.raw_bytes) else {
                return Ok(None);
            };
            let new = tpde::decode_tensor(bytes, Some(&ref_bytes), &t.name)
                .with_context(|| format!("decoding tensor {:?}", t.name))?;
            let w = (t.raw_bytes / t.elements).max(1) as usize;
            let n = new
                .chunks_exact(w)
                .zip(old.chunks_exact(w))
                .filter(|(a, b)| a != b)
                .count();
            Ok(Some(n as u64))
        })
        .collect()
}

pub fn inspect(input: &Path, reference: Option<&Path>, wide: bool) -> Result<()> {
    let bytes =
        tpde::FileBytes::open(input).with_context(|| format!("reading {}", input.display()))?;
    let r = tpde::container::inspect::inspect(&bytes)
        .with_context(|| format!("reading {}", input.display()))?;
    let counted = match reference {
        Some(p) => count_changed(&bytes, &r, p)?,
        None => vec![None; r.tensors.len()],
    };
    println!(
        "file:      {} ({}), format version {}",
        input.display(),
        human(r.encoded_len),
        r.version
    );
    println!(
        "original:  {}, {} ({})",
        human(r.original_len),
        r.source_kind.name(),
        if r.header_len > 0 {
            format!("header {}", human(r.header_len))
        } else {
            "no header".into()
        }
    );
    match r.reference {
        Some(id) => println!(
            "reference: {} ({} bytes), xxh3-128 {}",
            human(id.len),
            id.len,
            tpde::container::format::digest_hex(id.digest)
        ),
        None => println!("reference: none (keyframe)"),
    }
    if r.lossy {
        let max = r
            .tensors
            .iter()
            .filter_map(|t| t.max_abs_error)
            .fold(0f64, f64::max);
        println!(
            "exact:     NO: lossy; decoding gives every quantized element within its tensor's\n           \
             bound of the original (largest bound {max:.3e}; see the bound column)\n"
        );
    } else {
        println!("exact:     yes (lossless)\n");
    }
    let mut head = vec!["tensor", "dtype", "shape", "changed", "coding"];
    if r.lossy {
        head.push("bound");
    }
    head.extend(["bits", "ratio"]);
    let mut t = Table::new(&head);
    let (mut raw, mut stored, mut elements) = (0u64, 0u64, 0u64);
    // Changed elements over the elements whose change is known.
    let (mut known, mut changed) = (0u64, 0u64);
    let mut unknown = false;
    for (x, c) in r.tensors.iter().zip(&counted) {
        raw += x.raw_bytes;
        stored += x.stored_bytes;
        elements += x.elements;
        let cell = match (c, x.changed_fraction()) {
            (Some(n), _) => {
                known += x.elements;
                changed += n;
                format!("{:.2}%", 100.0 * *n as f64 / x.elements as f64)
            }
            (None, Some(f)) => {
                known += x.delta_elements;
                changed += x.changed;
                format!("{:.2}%", 100.0 * f)
            }
            (None, None) if x.has_reference => {
                unknown = true;
                "?".into()
            }
            (None, None) => "new".into(),
        };
        let mut row = vec![
            x.name.clone(),
            x.dtype.clone(),
            shape(&x.shape),
            cell,
            x.coding.clone(),
        ];
        if r.lossy {
            row.push(
                x.max_abs_error
                    .map_or("exact".into(), |e| format!("{e:.3e}")),
            );
        }
        row.extend([
            format!("{:.2}", x.bits_per_element()),
            ratio(x.raw_bytes, x.stored_bytes),
        ]);
        t.row(row);
    }
    t.separator();
    let mut total = vec![
        format!("total ({} tensors)", r.tensors.len()),
        String::new(),
        String::new(),
        if known > 0 {
            format!("{:.2}%", 100.0 * changed as f64 / known as f64)
        } else {
            "-".into()
        },
        String::new(),
    ];
    if r.lossy {
        total.push(String::new());
    }
    total.extend([
        format!(
            "{:.2}",
            if elements > 0 {
                stored as f64 * 8.0 / elements as f64
            } else {
                0.0
            }
        ),
        ratio(raw, stored),
    ]);
    t.row(total);
    if !wide {
        t.fit(WIDTH);
    }
    print!("{t}");
    if t.shortened() {
        println!("(long names shortened in the middle; --wide prints them whole)");
    }
    if unknown {
        println!(
            "?: not delta-coded, so the file does not say how many elements changed; --ref REF \
             counts them"
        );
    }
    println!(
        "\nwhole file: {} -> {}, ratio {}, {elements} elements",
        human(r.original_len),
        human(r.encoded_len),
        ratio(r.original_len, r.encoded_len)
    );
    Ok(())
}
