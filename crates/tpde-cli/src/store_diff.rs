//! `tpde store diff` and `tpde store report`: what changed between two
//! steps, tensor by tensor, and over a whole run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use tpde::store::{DiffKind, DiffSort, StepDiff, Store, TensorDiff};

use crate::table::Table;
use crate::WIDTH;

/// `tpde store diff STORE A B`.
pub fn diff(
    dir: &str,
    a: u64,
    b: u64,
    sort: DiffSort,
    json: bool,
    top: Option<usize>,
) -> Result<()> {
    let store = Store::open_location(dir)?;
    let mut d = store.diff(a, b)?;
    d.sort(sort);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    print!("{}", diff_text(&d, top));
    Ok(())
}

/// The table (one per file when the tensors come from several files) and
/// the notes under it.
fn diff_text(d: &StepDiff, top: Option<usize>) -> String {
    let mut files: Vec<&str> = Vec::new();
    for x in &d.tensors {
        if !files.contains(&x.file.as_str()) {
            files.push(&x.file);
        }
    }
    let several = files.len() > 1;
    let shown = top.unwrap_or(usize::MAX);
    let mut out = format!("step {} -> step {}\n", d.a, d.b);
    let mut shortened = false;
    for file in files {
        let mut t = Table::new(&[
            "tensor",
            "dtype",
            "elements",
            "changed",
            "max |b-a|",
            "rms b-a",
            "rel",
            "counted",
        ]);
        let of_file: Vec<&TensorDiff> = d.tensors.iter().filter(|x| x.file == file).collect();
        for x in of_file.iter().take(shown) {
            t.row(row(x));
        }
        t.fit(WIDTH);
        shortened |= t.shortened();
        if several {
            out.push_str(&format!("\n{file}:\n"));
        }
        out.push_str(&t.to_string());
        if of_file.len() > shown {
            out.push_str(&format!(
                "({} more tensors; --top to show more, --json for all)\n",
                of_file.len() - shown
            ));
        }
    }
    if shortened {
        out.push_str("(long names shortened in the middle; --json gives them whole)\n");
    }
    if several {
        out.push('\n');
    }
    let compared: Vec<&TensorDiff> = d
        .tensors
        .iter()
        .filter(|x| x.kind == DiffKind::Compared)
        .collect();
    let unchanged = compared.iter().filter(|x| x.changed == 0).count();
    let count = |k: DiffKind| d.tensors.iter().filter(|x| x.kind == k).count();
    out.push_str(&format!(
        "{} tensors: {} compared ({} unchanged), {} added, {} removed, {} with another \
         dtype or shape\n",
        d.tensors.len(),
        compared.len(),
        unchanged,
        count(DiffKind::Added),
        count(DiffKind::Removed),
        count(DiffKind::ChangedLayout),
    ));
    let from_store = compared.iter().filter(|x| x.changed_from_store).count();
    if d.b_coded_against_a {
        out.push_str(&format!(
            "changed counted by the store: {from_store} tensors (step {} is a delta of step {}); \
             the others from values\n",
            d.b, d.a
        ));
    }
    for f in &d.files {
        let line = match (&f.a, &f.b) {
            (Some(a), Some(b)) if f.tensors => f
                .identical
                .then(|| format!("file {}: same bytes", same_or(a, b))),
            (Some(a), Some(b)) => Some(format!(
                "file {}: {} (not safetensors: compared as a whole)",
                same_or(a, b),
                if f.identical { "same bytes" } else { "differs" }
            )),
            (None, Some(b)) => Some(format!("file {b}: only in step {}", d.b)),
            (Some(a), None) => Some(format!("file {a}: only in step {}", d.a)),
            (None, None) => None,
        };
        if let Some(line) = line {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn same_or(a: &str, b: &str) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a} -> {b}")
    }
}

fn row(x: &TensorDiff) -> Vec<String> {
    let name = x.name.clone();
    let num = |v: Option<f64>| v.map_or("-".to_string(), sci);
    match x.kind {
        DiffKind::Compared => vec![
            name,
            x.dtype.clone(),
            x.elements.to_string(),
            x.changed_fraction.map_or("-".into(), percent),
            num(x.max_abs),
            num(x.rms),
            num(x.rel),
            if x.changed_from_store {
                "store"
            } else {
                "values"
            }
            .into(),
        ],
        kind => {
            let what = match (&x.before, kind) {
                (Some((dt, sh)), _) => {
                    format!("{dt} {sh:?} -> {} {:?}", x.dtype, x.shape)
                }
                _ => format!("{} {:?}", x.dtype, x.shape),
            };
            vec![name, kind.name().into(), what]
                .into_iter()
                .chain(std::iter::repeat_n(String::new(), 5))
                .collect()
        }
    }
}

fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.3e}")
    }
}

fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p == 0.0 || p >= 0.01 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1e}%")
    }
}

/// `tpde store report STORE -o report.html [--csv F] [--json F]`.
pub fn report(
    dir: &str,
    html: Option<PathBuf>,
    csv: Option<PathBuf>,
    json: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    if html.is_none() && csv.is_none() && json.is_none() {
        bail!("say where to write the report: -o report.html, --csv FILE and/or --json FILE");
    }
    for p in [&html, &csv, &json].into_iter().flatten() {
        crate::check_output(p, &[], force)?;
    }
    let t = Instant::now();
    let store = Store::open_location(dir)?;
    let r = store.report()?;
    r.write(
        html.as_deref(),
        csv.as_deref(),
        json.as_deref(),
        crate::replace(force),
    )?;
    let outs: Vec<String> = [&html, &csv, &json]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    println!(
        "report of {} steps ({} compared with the step before, {} groups of tensors) -> {} \
         in {:.2} s",
        r.steps.len(),
        r.pairs.len(),
        r.groups.len(),
        outs.join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(percent(1.0), "100.00%");
        assert_eq!(percent(0.0), "0.00%");
        assert_eq!(percent(1e-6), "1.0e-4%");
        assert_eq!(sci(0.0), "0");
        assert_eq!(sci(0.25), "2.500e-1");
    }
}
