//! `tpde bench DIR`: each checkpoint of a folder coded against the previous
//! one, beside zstd -3, zstd -1 and lz4 on the same bytes held in memory,
//! in the same run, on one thread and on all.

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
    /// tpde's threads (and zstd's workers in the `_mt` fields).
    threads: usize,
    encode_mbps: f64,
    decode_mbps: f64,
    encode_mbps_1t: f64,
    decode_mbps_1t: f64,
    zstd3_compress_mbps: f64,
    zstd3_decompress_mbps: f64,
    /// zstd -3 with `threads` workers (its multithreaded compression; its
    /// frame differs a little from the one-thread frame, so its own size).
    zstd3_compress_mbps_mt: f64,
    zstd3_mt_bytes: u64,
    zstd1_bytes: u64,
    zstd1_ratio: f64,
    zstd1_compress_mbps: f64,
    zstd1_compress_mbps_mt: f64,
    zstd1_mt_bytes: u64,
    zstd1_decompress_mbps: f64,
    /// lz4_flex, frame format (4 MiB independent blocks, no checksums),
    /// one thread.
    lz4_bytes: u64,
    lz4_ratio: f64,
    lz4_compress_mbps: f64,
    lz4_decompress_mbps: f64,
    /// zstd -3's size over tpde's: how many times smaller tpde is.
    tpde_vs_zstd3: f64,
    /// Speeds as multiples of zstd -3's at the same thread count (zstd
    /// decompresses on one thread only: the decode ratios at `threads` are
    /// against that).
    encode_vs_zstd3: f64,
    encode_vs_zstd3_1t: f64,
    decode_vs_zstd3: f64,
    decode_vs_zstd3_1t: f64,
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

/// One zstd level on one file: sizes and fastest times in seconds.
struct Zstd {
    bytes: usize,
    mt_bytes: usize,
    compress_s: f64,
    compress_mt_s: f64,
    decompress_s: f64,
}

/// zstd at `level` on one thread, and with `threads` workers (zstd's own
/// threads, not rayon's), both frames checked by decompressing them.
fn baseline_zstd(data: &[u8], level: i32, threads: usize, repeat: usize) -> Result<Zstd> {
    let (compress_s, z) = time(repeat, || Ok(zstd::bulk::compress(data, level)?))?;
    let (decompress_s, back) = time(repeat, || Ok(zstd::bulk::decompress(&z, data.len())?))?;
    ensure!(back[..] == data[..], "round trip differs");
    let (compress_mt_s, mt_bytes) = if threads > 1 {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(threads as u32))?;
        let (secs, zmt) = time(repeat, || Ok(c.compress(data)?))?;
        let back = zstd::bulk::decompress(&zmt, data.len())?;
        ensure!(back[..] == data[..], "multithreaded round trip differs");
        (secs, zmt.len())
    } else {
        (compress_s, z.len())
    };
    Ok(Zstd {
        bytes: z.len(),
        mt_bytes,
        compress_s,
        compress_mt_s,
        decompress_s,
    })
}

/// lz4 frame format: 4 MiB independent blocks (as the `lz4` tool's default
/// block size), the content size, no checksums.
fn lz4_compress(data: &[u8]) -> Result<Vec<u8>> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    let info = FrameInfo::new()
        .block_size(BlockSize::Max4MB)
        .block_mode(BlockMode::Independent)
        .content_size(Some(data.len() as u64));
    let mut enc = FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2));
    std::io::Write::write_all(&mut enc, data)?;
    Ok(enc.finish()?)
}

fn lz4_decompress(packed: &[u8], len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(packed), &mut out)?;
    Ok(out)
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

        let z3 =
            baseline_zstd(&cur, 3, threads, repeat).with_context(|| format!("{name}: zstd -3"))?;
        let z1 =
            baseline_zstd(&cur, 1, threads, repeat).with_context(|| format!("{name}: zstd -1"))?;
        let (lc_s, lz) = time(repeat, || lz4_compress(&cur))?;
        let (ld_s, lback) = time(repeat, || lz4_decompress(&lz, cur.len()))?;
        ensure!(lback[..] == cur[..], "{name}: lz4 round trip differs");
        drop(lback);

        let size = |n: usize| cur.len() as f64 / n as f64;
        rows.push(Row {
            file: name,
            // A reference none of whose tensors matched is not used.
            keyframe: !stats.reference_used,
            original_bytes: cur.len() as u64,
            tpde_bytes: packed.len() as u64,
            ratio: size(packed.len()),
            zstd3_bytes: z3.bytes as u64,
            zstd3_ratio: size(z3.bytes),
            changed_fraction: stats
                .reference_used
                .then(|| stats.changed as f64 / stats.elements.max(1) as f64),
            threads,
            encode_mbps: mbps(enc_s),
            decode_mbps: mbps(dec_s),
            encode_mbps_1t: mbps(enc1_s),
            decode_mbps_1t: mbps(dec1_s),
            zstd3_compress_mbps: mbps(z3.compress_s),
            zstd3_decompress_mbps: mbps(z3.decompress_s),
            zstd3_compress_mbps_mt: mbps(z3.compress_mt_s),
            zstd3_mt_bytes: z3.mt_bytes as u64,
            zstd1_bytes: z1.bytes as u64,
            zstd1_ratio: size(z1.bytes),
            zstd1_compress_mbps: mbps(z1.compress_s),
            zstd1_compress_mbps_mt: mbps(z1.compress_mt_s),
            zstd1_mt_bytes: z1.mt_bytes as u64,
            zstd1_decompress_mbps: mbps(z1.decompress_s),
            lz4_bytes: lz.len() as u64,
            lz4_ratio: size(lz.len()),
            lz4_compress_mbps: mbps(lc_s),
            lz4_decompress_mbps: mbps(ld_s),
            tpde_vs_zstd3: z3.bytes as f64 / packed.len() as f64,
            // Times: the ratio of speeds is the inverse ratio of times.
            encode_vs_zstd3: z3.compress_mt_s / enc_s,
            encode_vs_zstd3_1t: z3.compress_s / enc1_s,
            decode_vs_zstd3: z3.decompress_s / dec_s,
            decode_vs_zstd3_1t: z3.decompress_s / dec1_s,
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

/// The cells of one row of the speeds table: zstd -3's MB/s, then the
/// others as multiples of zstd -3's speed at the same thread count.
fn speed_cells(r: &Row) -> Vec<f64> {
    let (c1, cn, d) = (
        r.zstd3_compress_mbps,
        r.zstd3_compress_mbps_mt,
        r.zstd3_decompress_mbps,
    );
    let mut v = vec![c1, cn, d];
    v.extend([r.encode_vs_zstd3_1t, r.encode_vs_zstd3]);
    v.extend([r.decode_vs_zstd3_1t, r.decode_vs_zstd3]);
    v.extend([r.zstd1_compress_mbps / c1, r.zstd1_compress_mbps_mt / cn]);
    v.push(r.zstd1_decompress_mbps / d);
    v.extend([r.lz4_compress_mbps / c1, r.lz4_decompress_mbps / d]);
    debug_assert_eq!(v.len(), SPEED_CELLS);
    v
}

const SPEED_CELLS: usize = 12;

/// The speeds table's cells as text: pairs "1t/Nt" where there are
/// several threads.
fn speed_text(v: &[f64], threads: usize) -> Vec<String> {
    let mbps = |v: f64| format!("{v:.0}");
    // Three significant digits at most, two decimals below 10.
    let times = |v: f64| match v {
        v if v >= 99.95 => format!("{v:.0}"),
        v if v >= 9.995 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    };
    let pair = |a: f64, b: f64, f: &dyn Fn(f64) -> String| {
        if threads > 1 {
            format!("{}/{}", f(a), f(b))
        } else {
            f(a)
        }
    };
    let x = |s: String| s + "x";
    vec![
        pair(v[0], v[1], &mbps),
        mbps(v[2]),
        x(pair(v[3], v[4], &times)),
        x(pair(v[5], v[6], &times)),
        x(pair(v[7], v[8], &times)),
        x(times(v[9])),
        x(times(v[10])),
        x(times(v[11])),
    ]
}

fn print_table(dir: &Path, rows: &[Row], threads: usize) {
    println!(
        "tpde bench {}: each checkpoint coded against the previous one, lossless, verified",
        dir.display()
    );
    println!(
        "sizes: ratio = original / coded; vs zstd-3 = zstd -3's size / tpde's; \
         lz4: lz4_flex frame format\n"
    );
    let mut t = Table::new(&[
        "checkpoint",
        "original",
        "tpde",
        "ratio",
        "zstd-3",
        "zstd-1",
        "lz4",
        "vs zstd-3",
        "changed",
    ]);
    let x = |v: f64| format!("{v:.3}x");
    for r in rows {
        t.row(vec![
            r.file.clone(),
            human(r.original_bytes),
            human(r.tpde_bytes),
            x(r.ratio),
            x(r.zstd3_ratio),
            x(r.zstd1_ratio),
            x(r.lz4_ratio),
            format!("{:.2}x", r.tpde_vs_zstd3),
            r.changed_fraction
                .map_or("key".into(), |c| format!("{:.2}%", 100.0 * c)),
        ]);
    }
    let deltas: Vec<&Row> = rows.iter().filter(|r| !r.keyframe).collect();
    let n = deltas.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| deltas.iter().map(|r| f(r)).sum::<f64>() / n;
    if !deltas.is_empty() {
        let sum = |f: &dyn Fn(&Row) -> u64| deltas.iter().map(|r| f(r)).sum::<u64>();
        let orig = sum(&|r| r.original_bytes);
        let packed = sum(&|r| r.tpde_bytes);
        let z3 = sum(&|r| r.zstd3_bytes);
        t.separator();
        t.row(vec![
            format!("deltas ({})", deltas.len()),
            human(orig),
            human(packed),
            ratio(orig, packed),
            ratio(orig, z3),
            ratio(orig, sum(&|r| r.zstd1_bytes)),
            ratio(orig, sum(&|r| r.lz4_bytes)),
            format!("{:.2}x", z3 as f64 / packed.max(1) as f64),
            format!(
                "{:.2}%",
                100.0 * mean(&|r| r.changed_fraction.unwrap_or(0.0))
            ),
        ]);
    }
    t.fit(WIDTH);
    print!("{t}");
    let mut shortened = t.shortened();

    let threads_note = if threads > 1 {
        format!("1 thread/{threads} threads (zstd: its own {threads} workers);\n")
    } else {
        String::new()
    };
    println!(
        "\nspeeds: {threads_note}zstd-3 c/d in MB/s of the original size;\n\
         the others as multiples of zstd -3's speed at the same thread count\n\
         (zstd decompresses on one thread; lz4 runs on one, against zstd -3's one thread)\n"
    );
    let mut t = Table::new(&[
        "checkpoint",
        "zstd-3 c",
        "zstd-3 d",
        "enc",
        "dec",
        "zstd-1 c",
        "zstd-1 d",
        "lz4 c",
        "lz4 d",
    ]);
    for r in rows {
        let mut cells = vec![r.file.clone()];
        cells.extend(speed_text(&speed_cells(r), threads));
        t.row(cells);
    }
    if !deltas.is_empty() {
        let means: Vec<f64> = (0..SPEED_CELLS)
            .map(|i| mean(&|r| speed_cells(r)[i]))
            .collect();
        let mut cells = vec![format!("deltas ({})", deltas.len())];
        cells.extend(speed_text(&means, threads));
        t.separator();
        t.row(cells);
    }
    t.fit(WIDTH);
    print!("{t}");
    shortened |= t.shortened();
    if shortened {
        println!("(long names shortened in the middle; --json gives them whole)");
    }
    if !deltas.is_empty() {
        println!(
            "\nmean ratio over the {} deltas: tpde {:.3}x, zstd -3 {:.3}x, zstd -1 {:.3}x, lz4 {:.3}x",
            deltas.len(),
            mean(&|r| r.ratio),
            mean(&|r| r.zstd3_ratio),
            mean(&|r| r.zstd1_ratio),
            mean(&|r| r.lz4_ratio)
        );
    }
}
