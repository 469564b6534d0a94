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
    /// Worker threads (default: all cores; at most 256, or the number of
    /// cores when that is more).
    #[arg(long, short = 'j', global = true, value_parser = parse_threads)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CodingArgs {
    /// zstd level of the entropy-coded sections (1 to 22).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Chunk size in KiB (1 to 65536): chunks are coded independently, in
    /// parallel.
    #[arg(
        long,
        default_value_t = 4096,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536)
    )]
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
    pub fn bound(&self) -> Option<tpde::codec::lossy::Bound> {
        match (self.max_abs_error, self.max_rel_error) {
            (Some(e), _) => Some(tpde::codec::lossy::Bound::MaxAbsError(e)),
            (_, Some(r)) => Some(tpde::codec::lossy::Bound::MaxRelError(r)),
            _ => None,
        }
    }
}

/// `-f/--force`, for the commands that write an output file.
#[derive(clap::Args, Clone, Copy)]
pub struct ForceArg {
    /// Overwrite an existing output file (atomically: the new file is
    /// written beside it and renamed over it). An input, a folder or a
    /// device is never replaced.
    #[arg(short, long)]
    force: bool,
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
        /// The .tpde file to write (an existing one only with --force).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        force: ForceArg,
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
        /// The file to write (an existing one only with --force).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        force: ForceArg,
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
    #[command(after_help = CODINGS_HELP)]
    Inspect {
        /// The .tpde file (with --plan, the checkpoint to encode).
        input: PathBuf,
        /// The reference it was encoded against: with it, the changed
        /// elements of the tensors that were not delta-coded are counted too.
        /// With --plan, the reference it would be encoded against.
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// Print tensor names whole, however long (the table may then be
        /// wider than 100 columns).
        #[arg(long)]
        wide: bool,
        /// INPUT is a checkpoint, not a .tpde file: print what `tpde encode
        /// INPUT [--ref REF]` would code against what (each tensor's
        /// reference, its chunks, the bytes outside the tensors), without
        /// coding anything.
        #[arg(long)]
        plan: bool,
        /// With --plan: what the file is, as `tpde encode --as`.
        #[arg(long = "as", value_enum, requires = "plan")]
        kind: Option<Kind>,
        /// With --plan: the chunk size in KiB, as `tpde encode --chunk-kib`.
        #[arg(
            long,
            requires = "plan",
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536)
        )]
        chunk_kib: Option<usize>,
        /// With --plan: the lossy bound, as `tpde encode --max-abs-error`.
        #[arg(
            long,
            value_name = "E",
            requires = "plan",
            conflicts_with = "max_rel_error"
        )]
        max_abs_error: Option<f64>,
        /// With --plan: the lossy bound, as `tpde encode --max-rel-error`.
        #[arg(long, value_name = "R", requires = "plan")]
        max_rel_error: Option<f64>,
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
            eprintln!("tpde: error: {}", error_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose
/// words the line already holds is left out, and a cause that starts with
/// the path its context ends with ("reading x.tpde" then "x.tpde: No such
/// file") does not say that path again.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        let msg = msg.trim();
        if msg.is_empty() || line.contains(msg) {
            continue;
        }
        let mut rest = msg;
        if let Some((head, tail)) = msg.split_once(": ") {
            let named = last.strip_suffix(head);
            if named.is_some_and(|b| b.is_empty() || b.ends_with(' ')) {
                rest = tail;
            }
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(rest);
        last = msg.to_string();
    }
    line
}

/// What `tpde inspect --help` says of the coding column.
const CODINGS_HELP: &str = "\
The coding column (one name per tensor; `mixed: A, B` when its chunks differ):
  stored          the bytes as they are (nothing was smaller)
  zstd            the bytes compressed with zstd
  planes/dense    the elements split into byte planes, each compressed on its
                  own, without the reference (there is none, or it did not help)
  delta T/P       against the reference's tensor: each element transformed (T),
                  the changed ones found as P, their values as byte planes
  quantized/P     the lossy mode: floats as bins within the bound, against the
                  reference (or zero), plus exact escapes
Transforms T (each maps an unchanged element to 0):
  ulp             the distance in representable floats (units in the last
                  place): small for a small change of a float
  xor             the bits XOR the reference's bits
  diff            the integer difference, for integer tensors
Positions P of the changed elements:
  dense           none: every element's value is coded (most changed)
  gaps            the gaps between changed positions (few changed)
  bitmap          one bit per element
  classes         the gaps as entropy-coded bit lengths plus their low bits
Columns: changed, the fraction of elements whose bits differ from the
reference's (`new`: the reference has no such tensor; `?`: not delta-coded,
so the file does not say: --ref counts them); bits, stored bits per element;
ratio, original / stored size. Sizes are decimal (1 kB = 1000 bytes).";

/// `--threads`: 1 to the larger of 256 and the number of cores (more
/// threads than that do not make tpde faster, and thousands take seconds
/// to start).
fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("not a whole number of threads: {s:?}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = cores.max(256);
    match n {
        0 => Err("there must be at least 1 thread".into()),
        n if n > max => Err(format!(
            "at most {max} threads (the larger of 256 and this machine's {cores} cores)"
        )),
        n => Ok(n),
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
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
            force,
            kind,
            coding,
            lossy,
        } => encode(
            &cur,
            reference.as_deref(),
            &output,
            force.force,
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
            force,
            tensor: Some(name),
            max_output,
        } => {
            let mut inputs = vec![input.as_path()];
            inputs.extend(reference.as_deref());
            check_output(&output, &inputs, force.force)?;
            let opts = tpde::DecodeOptions { max_output };
            let n = tpde::container::files::decode_tensor_file_with(
                &input,
                reference.as_deref(),
                &name,
                &output,
                &opts,
                replace(force.force),
            )
            .with_context(|| format!("decoding tensor {name:?} of {}", input.display()))?;
            println!(
                "{} [{name}] -> {} ({}), verified",
                input.display(),
                output.display(),
                human(n)
            );
            Ok(())
        }
        Command::Decode {
            input,
            reference,
            output,
            force,
            tensor: None,
            max_output,
        } => decode(
            &input,
            reference.as_deref(),
            &output,
            force.force,
            &tpde::DecodeOptions { max_output },
        ),
        Command::Inspect {
            input,
            reference,
            wide,
            plan: true,
            kind,
            chunk_kib,
            max_abs_error,
            max_rel_error,
        } => {
            let defaults = tpde::EncodeOptions::default();
            let opts = tpde::EncodeOptions {
                input: kind.unwrap_or(Kind::Auto).input(&input),
                lossy: LossyArgs {
                    max_abs_error,
                    max_rel_error,
                }
                .bound(),
                chunk_size: chunk_kib.map_or(defaults.chunk_size, |k| k * 1024),
                ..defaults
            };
            plan::inspect(&input, reference.as_deref(), &opts, wide)
        }
        Command::Inspect {
            input,
            reference,
            wide,
            ..
        } => inspect(&input, reference.as_deref(), wide),
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
mod plan;
mod store;
mod store_tensor;

/// A progress bar on a terminal; hidden when stderr is piped.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
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

fn file_len(p: &Path) -> Result<u64> {
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

/// Refuses an output path that tpde must not write: an input, a folder,
/// something that is not a plain file (a device, a pipe), or an existing
/// file without `--force` (then it is replaced atomically).
/// How an output may be written: with `--force` over an existing file,
/// else never over anything, even something that appears meanwhile.
pub fn replace(force: bool) -> tpde::common::atomic::Replace {
    if force {
        tpde::common::atomic::Replace::Yes
    } else {
        tpde::common::atomic::Replace::No
    }
}

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

fn encode(
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

fn inspect(input: &Path, reference: Option<&Path>, wide: bool) -> Result<()> {
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

/// The width tables are fitted to.
pub const WIDTH: usize = 100;

fn ratio(raw: u64, stored: u64) -> String {
    if stored == 0 {
        "-".into()
    } else {
        format!("{:.3}x", raw as f64 / stored as f64)
    }
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

    /// A full disk (ENOSPC, which the tests cannot cause) is said once, with
    /// the path, under its context.
    #[test]
    fn an_os_error_is_said_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let sys = io.to_string();
        let e = anyhow::Error::new(tpde::Error::Io {
            path: Some("out.safetensors".into()),
            err: io,
        })
        .context("decoding x.tpde");
        let line = error_line(&e);
        assert_eq!(line, format!("decoding x.tpde: out.safetensors: {sys}"));
        assert_eq!(format!("{e:#}").matches(&sys).count(), 1, "{e:#}");
        // A context that names the path the cause starts with.
        let e = anyhow::Error::new(tpde::Error::Io {
            path: Some("x.tpde".into()),
            err: std::io::Error::from_raw_os_error(2),
        })
        .context("reading x.tpde");
        assert_eq!(
            error_line(&e).matches("x.tpde").count(),
            1,
            "{}",
            error_line(&e)
        );
        // An anyhow error over an io::Error: said once too.
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(28)).context("writing");
        assert_eq!(error_line(&e).matches(&sys).count(), 1);
    }
}
