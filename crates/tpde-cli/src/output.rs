//! How every command writes: sizes and ratios as it prints them, tables'
//! width, progress bars on a terminal (hidden when piped), and the rules for
//! output paths (`-f/--force`).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The width tables are fitted to.
pub const WIDTH: usize = 100;

/// A progress bar on a terminal; hidden when stderr is piped.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} \
             {decimal_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

/// A byte count in decimal units with three significant digits: `40 B`,
/// `543 kB`, `1.63 MB`, `32.1 GB` (1 kB = 1000 bytes), as every command
/// prints sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && v >= 999.5 {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if v < 9.995 {
        2
    } else if v < 99.95 {
        1
    } else {
        0
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

pub fn ratio(raw: u64, stored: u64) -> String {
    if stored == 0 {
        "-".into()
    } else {
        format!("{:.3}x", raw as f64 / stored as f64)
    }
}

/// How an output may be written: with `--force` over an existing file,
/// else never over anything, even something that appears meanwhile.
pub fn replace(force: bool) -> tpde::common::atomic::Replace {
    if force {
        tpde::common::atomic::Replace::Yes
    } else {
        tpde::common::atomic::Replace::No
    }
}

/// Refuses an output path that tpde must not write: an input, a folder,
/// something that is not a plain file (a device, a pipe), or an existing
/// file without `--force` (then it is replaced atomically).
pub fn check_output(out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    tpde::common::atomic::check_not_input(out, inputs)?;
    let link = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", out.display())),
    };
    // What a link leads to (a dangling one is refused as not a plain file).
    let meta = std::fs::metadata(out).unwrap_or(link);
    if meta.is_dir() {
        bail!(
            "{} is a directory: give the path of the file to write (-o {}/NAME)",
            out.display(),
            out.display()
        );
    }
    if !meta.is_file() {
        bail!(
            "{} is not a regular file: tpde writes a new file and renames it into place, \
             which would replace it",
            out.display()
        );
    }
    if !force {
        bail!("{} exists; use -f/--force to overwrite", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_three_significant_digits() {
        for (n, s) in [
            (0, "0 B"),
            (40, "40 B"),
            (999, "999 B"),
            (1000, "1.00 kB"),
            (1234, "1.23 kB"),
            (9995, "10.0 kB"),
            (543_064, "543 kB"),
            (999_499, "999 kB"),
            (999_500, "1.00 MB"),
            (1_629_192, "1.63 MB"),
            (32_120_000_000, "32.1 GB"),
            (u64::MAX, "18447 PB"),
        ] {
            assert_eq!(human(n), s, "{n}");
        }
    }
}
