//! `tpde bench DIR`: each checkpoint of a folder coded against the previous
//! one, beside zstd -3 on the same file, in the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::table::Table;
use crate::{human, progress_bar, ratio, WIDTH};

#[derive(Serialize)]
struct Row {
    file: String,
    keyframe: bool,
    original_bytes: u64,
    tpde_bytes: u64,
    ratio: f64,
    zstd3_bytes: u64,
    zstd3_ratio: f64,
    /// Fraction of elements whose bits changed (null for the keyframe).
    changed_fraction: Option<f64>,
    threads: usize,
    encode_mbps: f64,
    decode_mbps: f64,
    encode_mbps_1t: f64,
    decode_mbps_1t: f64,
    zstd3_compress_mbps: f64,
    zstd3_decompress_mbps: f64,
}

/// Sort key that orders "epoch-2" before "epoch-10".
fn natural_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            let n = rest[..digits].parse::<u128>().unwrap_or(u128::MAX);
            key.push((0, n, String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            key.push((1, 0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort_by_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    if files.is_empty() {
        bail!("no .safetensors files in {}", dir.display());
    }
    Ok(files)
}

/// Fastest of `repeat` runs of `f`, in seconds, and its last result.
fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat {
        let t = Instant::now();
        let v = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(v);
    }
    Ok((best.max(1e-9), last.expect("repeat >= 1")))
}

pub fn run(dir: &Path, json: bool, repeat: usize, opts: &tpde::EncodeOptions) -> Result<()> {
    let files = checkpoints(dir)?;
    let threads = rayon::current_num_threads();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let pb = progress_bar(total, "benchmarking");
    let mut rows = Vec::new();
    let mut prev: Option<tpde::FileBytes> = None;
    for path in &files {
        let cur =
            tpde::FileBytes::open(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let reference = prev.as_deref();
        let mbps = |secs: f64| cur.len() as f64 / 1e6 / secs;

        let encode = || -> Result<(Vec<u8>, tpde::EncodeStats)> {
            let mut out = Vec::with_capacity(cur.len() / 2);
            let s = tpde::encode(&cur, reference, opts, &mut out, None)
                .with_context(|| format!("encoding {name}"))?;
            Ok((out, s))
        };
        let (enc_s, (packed, stats)) = time(repeat, encode)?;
        let decode = || -> Result<Vec<u8>> {
            let mut out = Vec::with_capacity(cur.len());
            tpde::decode(&packed, reference, &mut out, None)
                .with_context(|| format!("decoding {name}"))?;
            Ok(out)
        };
        let (dec_s, restored) = time(repeat, decode)?;
        ensure!(
            restored[..] == cur[..],
            "{name}: decoded bytes differ from the original"
        );
        drop(restored);
        let (enc1_s, dec1_s) = if threads > 1 {
            let (e, _) = one.install(|| time(repeat, encode))?;
            let (d, _) = one.install(|| time(repeat, decode))?;
            (e, d)
        } else {
            (enc_s, dec_s)
        };

        let (zc_s, z) = time(repeat, || Ok(zstd::bulk::compress(&cur, 3)?))?;
        let (zd_s, zback) = time(repeat, || Ok(zstd::bulk::decompress(&z, cur.len())?))?;
        ensure!(zback[..] == cur[..], "{name}: zstd round trip differs");

        rows.push(Row {
            file: name,
            // A reference none of whose tensors matched is not used.
            keyframe: !stats.reference_used,
            original_bytes: cur.len() as u64,
            tpde_bytes: packed.len() as u64,
            ratio: cur.len() as f64 / packed.len() as f64,
            zstd3_bytes: z.len() as u64,
            zstd3_ratio: cur.len() as f64 / z.len() as f64,
            changed_fraction: stats
                .reference_used
                .then(|| stats.changed as f64 / stats.elements.max(1) as f64),
            threads,
            encode_mbps: mbps(enc_s),
            decode_mbps: mbps(dec_s),
            encode_mbps_1t: mbps(enc1_s),
            decode_mbps_1t: mbps(dec1_s),
            zstd3_compress_mbps: mbps(zc_s),
            zstd3_decompress_mbps: mbps(zd_s),
        });
        pb.inc(cur.len() as u64);
        prev = Some(cur);
    }
    pb.finish_and_clear();

    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_table(dir, &rows, threads);
    Ok(())
}

fn print_table(dir: &Path, rows: &[Row], threads: usize) {
    println!(
        "tpde bench {}: each checkpoint coded against the previous one, lossless, verified",
        dir.display()
    );
    println!(
        "speeds in MB/s of the original size: tpde with 1/{threads} threads, zstd -3 (1 thread) \
         compress/decompress\n"
    );
    let enc = format!("enc 1t/{threads}t");
    let dec = format!("dec 1t/{threads}t");
    let mut t = Table::new(&[
        "checkpoint",
        "original",
        "tpde",
        "ratio",
        "zstd-3",
        "changed",
        &enc,
        &dec,
        "zstd-3 c/d",
    ]);
    let pair = |a: f64, b: f64| format!("{a:.0}/{b:.0}");
    for r in rows {
        t.row(vec![
            r.file.clone(),
            human(r.original_bytes),
            human(r.tpde_bytes),
            format!("{:.3}x", r.ratio),
            format!("{:.3}x", r.zstd3_ratio),
            r.changed_fraction
                .map_or("key".into(), |c| format!("{:.2}%", 100.0 * c)),
            pair(r.encode_mbps_1t, r.encode_mbps),
            pair(r.decode_mbps_1t, r.decode_mbps),
            pair(r.zstd3_compress_mbps, r.zstd3_decompress_mbps),
        ]);
    }
    let deltas: Vec<&Row> = rows.iter().filter(|r| !r.keyframe).collect();
    if deltas.is_empty() {
        t.fit(WIDTH);
        print!("{t}");
        return;
    }
    let n = deltas.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| deltas.iter().map(|r| f(r)).sum::<f64>() / n;
    let orig: u64 = deltas.iter().map(|r| r.original_bytes).sum();
    let packed: u64 = deltas.iter().map(|r| r.tpde_bytes).sum();
    let z: u64 = deltas.iter().map(|r| r.zstd3_bytes).sum();
    t.separator();
    t.row(vec![
        format!("deltas ({})", deltas.len()),
        human(orig),
        human(packed),
        ratio(orig, packed),
        ratio(orig, z),
        format!(
            "{:.2}%",
            100.0 * mean(&|r| r.changed_fraction.unwrap_or(0.0))
        ),
        pair(mean(&|r| r.encode_mbps_1t), mean(&|r| r.encode_mbps)),
        pair(mean(&|r| r.decode_mbps_1t), mean(&|r| r.decode_mbps)),
        pair(
            mean(&|r| r.zstd3_compress_mbps),
            mean(&|r| r.zstd3_decompress_mbps),
        ),
    ]);
    t.fit(WIDTH);
    print!("{t}");
    if t.shortened() {
        println!("(long names shortened in the middle; --json gives them whole)");
    }
    println!(
        "\nmean ratio over the {} deltas: tpde {:.3}x, zstd -3 {:.3}x",
        deltas.len(),
        mean(&|r| r.ratio),
        mean(&|r| r.zstd3_ratio)
    );
}
