//! The `tpde` command: a thin layer of argument parsing and printing over the
//! `tpde` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
    /// and compare with zstd -3, zstd -1 and lz4 on the same files: sizes,
    /// and speeds on one thread and on all (--threads).
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
        } => code::encode(
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
        } => code::decode(
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
        } => inspect::inspect(&input, reference.as_deref(), wide),
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
mod code;
mod inspect;
mod output;
mod plan;
mod store;
mod store_diff;
mod store_tensor;

pub use output::{check_output, file_len, human, progress_bar, ratio, replace, WIDTH};

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

#[cfg(test)]
mod tests {
    use super::*;

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
