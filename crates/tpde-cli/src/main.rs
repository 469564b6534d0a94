//! The `tpde` command: a thin layer of argument parsing and printing over the
//! `tpde` library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// `print!` and `println!` that end the program quietly (status 0) when the
/// reader of its output went away (`tpde store ls | head`) instead of
/// panicking as the standard ones do.
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::output_written(write!(std::io::stdout(), $($arg)*));
    }};
}

macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::output_written(writeln!(std::io::stdout(), $($arg)*));
    }};
}

/// Ends the program when writing to the standard output failed.
fn output_written(r: std::io::Result<()>) {
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tpde: error: writing the output: {e}");
        std::process::exit(2);
    }
}

mod table;
use table::Table;

#[derive(Parser)]
#[command(
    name = "tpde",
    version,
    about = "Lossless delta compression of neural-network checkpoints"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j', global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CodingArgs {
    /// zstd level of the entropy-coded sections.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Chunk size in KiB: chunks are coded independently, in parallel.
    #[arg(long, default_value_t = 4096)]
    chunk_kib: usize,
}

/// The lossy mode (opt-in): float tensors restored within a bound.
#[derive(clap::Args, Clone, Copy)]
pub struct LossyArgs {
    /// Lossy: every restored float element (F16, BF16, F32, F64) within E of
    /// the original; NaN, infinities, integers and bools stay exact.
    #[arg(long, value_name = "E", conflicts_with = "max_rel_error")]
    max_abs_error: Option<f64>,
    /// Lossy: every restored float element within R times its tensor's RMS.
    #[arg(long, value_name = "R")]
    max_rel_error: Option<f64>,
}

impl LossyArgs {
    pub fn bound(&self) -> Option<tpde::lossy::Bound> {
        match (self.max_abs_error, self.max_rel_error) {
            (Some(e), _) => Some(tpde::lossy::Bound::MaxAbsError(e)),
            (_, Some(r)) => Some(tpde::lossy::Bound::MaxRelError(r)),
            _ => None,
        }
    }
}

impl CodingArgs {
    fn options(&self) -> tpde::EncodeOptions {
        tpde::EncodeOptions {
            chunk_size: self.chunk_kib.saturating_mul(1024),
            level: self.level,
            ..Default::default()
        }
    }
}

/// How `tpde encode` reads its input.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// safetensors, else a torch.save archive, else bytes.
    Auto,
    /// A safetensors file (anything else is refused).
    Safetensors,
    /// A torch.save zip archive (.pt, .pth, .bin).
    Torch,
    /// Any file, as opaque bytes.
    Bytes,
}

impl Kind {
    fn input(self, path: &Path) -> tpde::InputKind {
        match self {
            Kind::Auto if path.extension().is_some_and(|e| e == "safetensors") => {
                tpde::InputKind::Safetensors
            }
            Kind::Auto => tpde::InputKind::Auto,
            Kind::Safetensors => tpde::InputKind::Safetensors,
            Kind::Torch => tpde::InputKind::Archive,
            Kind::Bytes => tpde::InputKind::Opaque,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Encode a checkpoint file (safetensors, a torch.save .pt, or any file),
    /// against the previous one with --ref (a keyframe without).
    Encode {
        /// The checkpoint file to encode.
        cur: PathBuf,
        /// The checkpoint to code it against (usually the previous one).
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// The .tpde file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// What the file is. By default a .safetensors file must be one;
        /// any other file is read as safetensors, else a torch.save archive
        /// (optimizer.pt), else bytes.
        #[arg(long = "as", value_enum, default_value_t = Kind::Auto)]
        kind: Kind,
        #[command(flatten)]
        coding: CodingArgs,
        #[command(flatten)]
        lossy: LossyArgs,
    },
    /// Decode a .tpde file back into the original checkpoint, byte for byte.
    Decode {
        /// The .tpde file.
        input: PathBuf,
        /// The reference it was encoded against (required for a delta).
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Decode only this tensor and write its raw bytes (the rest of the
        /// file is not decoded).
        #[arg(long)]
        tensor: Option<String>,
        /// Refuse a file (or with --tensor, a tensor) that decodes to more
        /// than this, before writing anything: bytes, or with a suffix K, M,
        /// G, T (powers of 1024) or KB, MB, GB, TB (of 1000). Without it,
        /// the limit is the free space of the output's filesystem.
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        max_output: Option<u64>,
    },
    /// Show what a .tpde file holds, tensor by tensor.
    Inspect {
        /// The .tpde file.
        input: PathBuf,
    },
    /// A store of a run's checkpoints: add, get back, list, verify, prune.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Code a folder of consecutive checkpoints, each against the previous,
    /// and compare with zstd -3 on the same files.
    Bench {
        /// Folder of .safetensors files; their names sort in step order.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Time each operation this many times and keep the fastest.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[command(flatten)]
        coding: CodingArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpde: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("starting the thread pool")?;
    }
    match cli.command {
        Command::Encode {
            cur,
            reference,
            output,
            kind,
            coding,
            lossy,
        } => encode(
            &cur,
            reference.as_deref(),
            &output,
            &tpde::EncodeOptions {
                input: kind.input(&cur),
                lossy: lossy.bound(),
                ..coding.options()
            },
        ),
        Command::Decode {
            input,
            reference,
            output,
            tensor: Some(name),
            max_output,
        } => {
            let opts = tpde::DecodeOptions { max_output };
            let n = tpde::files::decode_tensor_file_with(
                &input,
                reference.as_deref(),
                &name,
                &output,
                &opts,
            )
            .with_context(|| format!("decoding tensor {name:?} of {}", input.display()))?;
            println!(
                "{} [{name}] -> {} ({n} bytes), verified",
                input.display(),
                output.display()
            );
            Ok(())
        }
        Command::Decode {
            input,
            reference,
            output,
            tensor: None,
            max_output,
        } => decode(
            &input,
            reference.as_deref(),
            &output,
            &tpde::DecodeOptions { max_output },
        ),
        Command::Inspect { input } => inspect(&input),
        Command::Bench {
            dir,
            json,
            repeat,
            coding,
        } => bench::run(&dir, json, repeat.max(1), &coding.options()),
        Command::Store(cmd) => store::run(cmd),
    }
}

mod bench;
mod store;

/// A progress bar on a terminal; hidden when stderr is piped.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn encode(
    cur: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &tpde::EncodeOptions,
) -> Result<()> {
    let pb = progress_bar(file_len(cur)?, "encoding");
    let t = Instant::now();
    let s = tpde::files::encode_file(cur, reference, out, opts, Some(&|d| pb.set_position(d)))
        .with_context(|| format!("encoding {}", cur.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let kind = match reference {
        Some(r) if s.reference_used => format!("delta against {}", r.display()),
        Some(_) => "keyframe (the reference does not match)".to_string(),
        None => "keyframe".to_string(),
    };
    let kind = format!("{}, {kind}", s.source_kind.name());
    println!(
        "{} ({}) -> {} ({}), {kind}: ratio {:.3}x, {} MB/s",
        cur.display(),
        mb(s.original_len),
        out.display(),
        mb(s.encoded_len),
        s.original_len as f64 / s.encoded_len as f64,
        (s.original_len as f64 / 1e6 / secs).round()
    );
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

/// A byte count: digits, then optionally K, M, G, T (1024-based; also KiB
/// and so on) or KB, MB, GB, TB (1000-based), in any case.
fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 1000000, 512M, 10G)"))?;
    let power = |base: u64, k: u32| base.pow(k);
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => power(1024, 1),
        "M" | "MIB" => power(1024, 2),
        "G" | "GIB" => power(1024, 3),
        "T" | "TIB" => power(1024, 4),
        "KB" => power(1000, 1),
        "MB" => power(1000, 2),
        "GB" => power(1000, 3),
        "TB" => power(1000, 4),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (K, M, G, T, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn decode(
    input: &Path,
    reference: Option<&Path>,
    out: &Path,
    opts: &tpde::DecodeOptions,
) -> Result<()> {
    let bytes =
        tpde::FileBytes::open(input).with_context(|| format!("reading {}", input.display()))?;
    let report =
        tpde::inspect::inspect(&bytes).with_context(|| format!("reading {}", input.display()))?;
    if reference.is_some() && report.reference.is_none() {
        eprintln!(
            "tpde: note: {} is a keyframe; --ref is not needed and was ignored",
            input.display()
        );
    }
    let pb = progress_bar(report.original_len, "decoding");
    let t = Instant::now();
    let s =
        tpde::files::decode_file_with(input, reference, out, Some(&|d| pb.set_position(d)), opts)
            .with_context(|| format!("decoding {}", input.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} -> {} ({}), verified, {} MB/s",
        input.display(),
        out.display(),
        mb(s.original_len),
        (s.original_len as f64 / 1e6 / secs).round()
    );
    Ok(())
}

fn inspect(input: &Path) -> Result<()> {
    let bytes =
        tpde::FileBytes::open(input).with_context(|| format!("reading {}", input.display()))?;
    let r =
        tpde::inspect::inspect(&bytes).with_context(|| format!("reading {}", input.display()))?;
    println!(
        "file:      {} ({} bytes), format version {}",
        input.display(),
        r.encoded_len,
        r.version
    );
    println!(
        "original:  {} bytes, {} ({})",
        r.original_len,
        r.source_kind.name(),
        if r.header_len > 0 {
            format!("header {} bytes", r.header_len)
        } else {
            "no header".into()
        }
    );
    match r.reference {
        Some(id) => println!(
            "reference: {} bytes, xxh3-128 {}",
            id.len,
            tpde::format::digest_hex(id.digest)
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
            "exact:     NO: lossy; decoding gives every quantized element within its tensor's \
             bound of the original (largest bound {max:e}); see the bound column\n"
        );
    } else {
        println!("exact:     yes (lossless)\n");
    }
    let mut t = Table::new(&[
        "tensor",
        "dtype",
        "shape",
        "elements",
        "changed",
        "coding",
        "bound",
        "bits/elem",
        "ratio",
    ]);
    let (mut raw, mut stored, mut elements, mut delta, mut changed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for x in &r.tensors {
        raw += x.raw_bytes;
        stored += x.stored_bytes;
        elements += x.elements;
        delta += x.delta_elements;
        changed += x.changed;
        t.row(vec![
            x.name.clone(),
            x.dtype.clone(),
            format!("{:?}", x.shape),
            x.elements.to_string(),
            match x.changed_fraction() {
                Some(f) => format!("{:.2}%", 100.0 * f),
                None if x.has_reference => "-".into(),
                None => "new".into(),
            },
            x.coding.clone(),
            x.max_abs_error
                .map_or("exact".into(), |e| format!("{e:.3e}")),
            format!("{:.2}", x.bits_per_element()),
            ratio(x.raw_bytes, x.stored_bytes),
        ]);
    }
    t.separator();
    t.row(vec![
        format!("total ({} tensors)", r.tensors.len()),
        String::new(),
        String::new(),
        elements.to_string(),
        if delta > 0 {
            format!("{:.2}%", 100.0 * changed as f64 / delta as f64)
        } else {
            "-".into()
        },
        String::new(),
        String::new(),
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
    print!("{t}");
    println!(
        "\nwhole file: {} -> {} bytes, ratio {}",
        r.original_len,
        r.encoded_len,
        ratio(r.original_len, r.encoded_len)
    );
    Ok(())
}

fn ratio(raw: u64, stored: u64) -> String {
    if stored == 0 {
        "-".into()
    } else {
        format!("{:.3}x", raw as f64 / stored as f64)
    }
}
