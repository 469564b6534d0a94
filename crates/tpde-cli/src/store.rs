//! `tpde store ...`: the checkpoint store on the command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tpde::store::{watch, Checkpoint, EntryKind, StepRecord, Store};

use crate::table::Table;
use crate::{human, progress_bar, ForceArg, LossyArgs, WIDTH};
use tpde::codec::lossy::Bound;

/// Where a store is: a directory, or `s3://BUCKET/PREFIX` on S3-compatible
/// object storage (endpoint, region and credentials from the AWS_*
/// environment variables; see docs/STORE.md).
const STORE_HELP: &str = "The store: a directory, or s3://BUCKET/PREFIX";

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Create an empty store.
    Init {
        #[arg(help = STORE_HELP)]
        dir: String,
        /// A keyframe at least every K checkpoints: restoring any step
        /// decodes at most K.
        #[arg(long, default_value_t = tpde::store::DEFAULT_KEYFRAME_EVERY)]
        keyframe_every: u32,
        /// Also create the missing folders above DIR.
        #[arg(long)]
        parents: bool,
    },
    /// Add a checkpoint: a safetensors file or a checkpoint folder (every
    /// file in it is kept).
    Add {
        #[arg(help = STORE_HELP)]
        dir: String,
        path: PathBuf,
        /// Its step; by default the number in its name (checkpoint-500: 500).
        #[arg(long)]
        step: Option<u64>,
        #[command(flatten)]
        lossy: LossyArgs,
    },
    /// Restore a checkpoint, byte for byte.
    Get {
        #[arg(help = STORE_HELP)]
        dir: String,
        step: u64,
        /// Where to write it; by default its original name in the current
        /// folder. An existing file is replaced only with --force; an
        /// existing folder never is.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        force: ForceArg,
        /// Write one tensor of the step instead (decoding only its chunks
        /// along its chain): -o NAME.npy or -o NAME.safetensors.
        #[arg(long, value_name = "NAME")]
        tensor: Option<String>,
        /// With --tensor: the step's file to read it from, when the step
        /// has several safetensors files.
        #[arg(long, value_name = "PATH", requires = "tensor")]
        file: Option<String>,
    },
    /// List the stored checkpoints.
    Ls {
        #[arg(help = STORE_HELP)]
        dir: String,
        /// Print the manifest as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every content file and restore every step.
    Verify {
        #[arg(help = STORE_HELP)]
        dir: String,
    },
    /// Remove a checkpoint (the ones coded against it are re-coded).
    Rm {
        #[arg(help = STORE_HELP)]
        dir: String,
        step: u64,
    },
    /// Remove all checkpoints but the last N and every M-th step.
    Prune {
        #[arg(help = STORE_HELP)]
        dir: String,
        /// Keep the last N checkpoints.
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        /// Keep the checkpoints whose step is a multiple of M.
        #[arg(long)]
        keep_every: Option<u64>,
    },
    /// What changed from step A to step B, tensor by tensor: the fraction
    /// of elements whose bits changed, the largest and RMS change, the
    /// relative change ||b-a||/||a||.
    Diff {
        #[arg(help = STORE_HELP)]
        dir: String,
        a: u64,
        b: u64,
        /// Order: by relative change, by changed fraction (largest first), or
        /// by name.
        #[arg(long, default_value = "rel", value_parser = ["rel", "changed", "name"])]
        sort: String,
        /// Show only the first N tensors of the table.
        #[arg(long)]
        top: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One self-contained HTML page on the run: each step's sizes and frame,
    /// and a heat map of what changed per group of tensors from step to
    /// step.
    Report {
        #[arg(help = STORE_HELP)]
        dir: String,
        /// The HTML page to write.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The same data as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// The same data as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        force: ForceArg,
    },
    /// Add each new checkpoint of a training run as it appears.
    Watch {
        #[arg(help = STORE_HELP)]
        dir: String,
        /// The run's output folder (checkpoint-N folders or step-numbered
        /// .safetensors files).
        run_dir: PathBuf,
        /// Seconds between looks at the run folder.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        interval: f64,
        /// A checkpoint is complete once it has not changed for this long
        /// (seconds).
        #[arg(long, default_value_t = 30.0, value_parser = seconds)]
        settle: f64,
        /// Delete each original once its stored copy is verified.
        #[arg(long)]
        delete_originals: bool,
        /// Add what is complete now and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        lossy: LossyArgs,
    },
}

/// A number of seconds: finite, not negative.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    Duration::try_from_secs_f64(v)
        .map(|_| v)
        .map_err(|_| format!("{s} is not a number of seconds (at least 0, finite)"))
}

/// Opens the store that `usage` takes first; when it is not one, says
/// whether the arguments look swapped (`other`, the second one, is a
/// store) or what the first one is instead.
fn open_store(dir: &str, other: &Path, other_is: &str, usage: &str) -> Result<Store> {
    let e = match Store::open_location(dir) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let local = Path::new(dir);
    let is_local = !dir.starts_with("s3://") && local.exists();
    let other_is_store =
        other.is_dir() && Store::exists_at(&other.to_string_lossy()).unwrap_or(false);
    if is_local && other_is_store {
        bail!(
            "arguments swapped? {dir} is not a store and {} is not {other_is} (it is a store); \
             usage: {usage}",
            other.display()
        );
    }
    if is_local && matches!(e, tpde::Error::Store { .. }) {
        bail!(
            "{dir} is not a tpde store (it is a {}; create a store with `tpde store init`); \
             usage: {usage}",
            if local.is_dir() { "folder" } else { "file" }
        );
    }
    Err(e.into())
}

/// Where `store get` may write `out`: an existing file only with --force
/// (then `true`: restore beside it and rename over it), never an existing
/// folder or anything that is not a plain file.
fn check_get_output(out: &Path, force: bool) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => std::fs::metadata(out).unwrap_or(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", out.display())),
    };
    if meta.is_dir() {
        bail!(
            "{} is a directory; tpde does not replace a folder, even with --force: remove it \
             yourself or give another -o",
            out.display()
        );
    }
    crate::check_output(out, &[], force)?;
    Ok(true)
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Init {
            dir,
            keyframe_every,
            parents,
        } => {
            Store::create_location(&dir, keyframe_every, parents)?;
            println!(
                "created store {dir} (a keyframe at least every {keyframe_every} checkpoints)"
            );
            Ok(())
        }
        StoreCommand::Add {
            dir,
            path,
            step,
            lossy,
        } => {
            let store = open_store(
                &dir,
                &path,
                "a checkpoint",
                "tpde store add STORE CHECKPOINT",
            )?;
            let step = match step {
                Some(s) => s,
                None => step_of(&path)?,
            };
            add(&store, &path, step, lossy.bound())
        }
        StoreCommand::Get {
            dir,
            step,
            output,
            force,
            tensor,
            file,
        } => {
            let store = Store::open_location(&dir)?;
            if let Some(name) = tensor {
                let out = output.as_deref();
                let file = file.as_deref();
                return crate::store_tensor::get_tensor(
                    &store,
                    step,
                    file,
                    &name,
                    out,
                    force.force,
                );
            }
            let t = Instant::now();
            let out = match output {
                Some(o) => o,
                None => {
                    let m = store.manifest()?;
                    let rec = m
                        .steps
                        .iter()
                        .find(|s| s.step == step)
                        .with_context(|| format!("no step {step} in {dir}"))?;
                    PathBuf::from(&rec.name)
                }
            };
            // Replacing only the file that check_get_output accepted.
            let replace = crate::replace(check_get_output(&out, force.force)?);
            let r = store
                .get_with(step, &out, replace)
                .with_context(|| format!("restoring step {step}"))?;
            let bytes: u64 = r.files.iter().map(|f| f.len).sum();
            println!(
                "step {step} -> {} ({} files, {}), verified, {:.2} s",
                out.display(),
                r.files.len(),
                human(bytes),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        StoreCommand::Ls { dir, json } => {
            let m = Store::open_location(&dir)?.manifest()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                let mut t = ls_table(&m.steps);
                t.fit(WIDTH);
                print!("{t}");
                if t.shortened() {
                    println!("(long names shortened in the middle; --json gives them whole)");
                }
                for line in lossy_lines(&m.steps) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        StoreCommand::Verify { dir } => {
            let t = Instant::now();
            let r = Store::open_location(&dir)?.verify()?;
            for p in &r.problems {
                eprintln!("problem: {p}");
            }
            if !r.leftovers.is_empty() {
                println!(
                    "{} leftover files of an interrupted write (the next write removes them)",
                    r.leftovers.len()
                );
            }
            if !r.foreign.is_empty() {
                let shown: Vec<String> = r
                    .foreign
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect();
                println!(
                    "{} entries in the store's folders that tpde did not write, left alone: {}{}",
                    r.foreign.len(),
                    shown.join(", "),
                    if r.foreign.len() > 3 { ", ..." } else { "" }
                );
            }
            if !r.problems.is_empty() {
                bail!("{} problems in {dir} ({} steps)", r.problems.len(), r.steps);
            }
            println!(
                "ok: {} steps, {} files, {} restored and checked in {:.2} s",
                r.steps,
                r.files,
                human(r.bytes),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        StoreCommand::Rm { dir, step } => {
            let recoded = Store::open_location(&dir)?.remove(step)?;
            println!("removed step {step}{}", recoded_note(&recoded));
            Ok(())
        }
        StoreCommand::Prune {
            dir,
            keep_last,
            keep_every,
        } => {
            if keep_last == 0 && keep_every.is_none() {
                bail!("say what to keep: --keep-last N and/or --keep-every M");
            }
            let store = Store::open_location(&dir)?;
            let removed = store.prune(keep_last, keep_every)?;
            let left = store.steps()?;
            println!("removed {} steps, {} left", removed.len(), left.len());
            Ok(())
        }
        StoreCommand::Diff {
            dir,
            a,
            b,
            sort,
            top,
            json,
        } => crate::store_diff::diff(
            &dir,
            a,
            b,
            sort.parse().map_err(anyhow::Error::msg)?,
            json,
            top,
        ),
        StoreCommand::Report {
            dir,
            output,
            csv,
            json,
            force,
        } => crate::store_diff::report(&dir, output, csv, json, force.force),
        StoreCommand::Watch {
            dir,
            run_dir,
            interval,
            settle,
            delete_originals,
            once,
            lossy,
        } => watch_run(
            &dir,
            &run_dir,
            Watch {
                interval,
                settle,
                delete_originals,
                once,
                lossy: lossy.bound(),
            },
        ),
    }
}

fn recoded_note(recoded: &[u64]) -> String {
    if recoded.is_empty() {
        return String::new();
    }
    let v: Vec<String> = recoded.iter().map(u64::to_string).collect();
    format!(" (re-coded steps {} that depended on it)", v.join(", "))
}

fn step_of(path: &Path) -> Result<u64> {
    let name = path
        .canonicalize()
        .with_context(|| format!("reading {}", path.display()))?;
    let name = name.file_name().and_then(|n| n.to_str()).unwrap_or("");
    watch::step_from_name(name)
        .with_context(|| format!("no step number in the name {name:?}; give one with --step N"))
}

fn add(store: &Store, path: &Path, step: u64, lossy: Option<Bound>) -> Result<()> {
    let t = Instant::now();
    let ck = Checkpoint::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let pb = progress_bar(ck.len(), &format!("step {step}"));
    let rec = store
        .add_checkpoint(&ck, step, lossy, &mut |d| pb.set_position(d))
        .with_context(|| format!("adding {} as step {step}", path.display()))?;
    pb.finish_and_clear();
    let (orig, stored) = totals(&rec);
    println!(
        "step {step}: {} -> {} ({:.3}x), {}{}, {:.2} s",
        human(orig),
        human(stored),
        orig as f64 / stored.max(1) as f64,
        frame(&rec),
        lossy_note(&rec).map_or(String::new(), |b| format!(", LOSSY ({b})")),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The bound of a step's lossy files, if any file is lossy.
fn lossy_note(rec: &StepRecord) -> Option<Bound> {
    rec.files.iter().find_map(|f| f.lossy)
}

fn totals(rec: &StepRecord) -> (u64, u64) {
    rec.files
        .iter()
        .fold((0, 0), |(o, s), f| (o + f.len, s + f.stored_len))
}

fn frame(rec: &StepRecord) -> String {
    let (n, d) = (rec.files.len(), rec.delta_files());
    match rec.reference {
        Some(r) if d < n => format!("delta against step {r} ({d} of {n} files)"),
        Some(r) => format!("delta against step {r}"),
        None => "keyframe".into(),
    }
}

/// The frame column of `store ls`: `keyframe`, `delta`, or `delta 2/3` when
/// only some files are coded against the reference.
fn frame_short(rec: &StepRecord) -> String {
    let (n, d) = (rec.files.len(), rec.delta_files());
    match rec.reference {
        Some(_) if d < n => format!("delta {d}/{n}"),
        Some(_) => "delta".into(),
        None => "keyframe".into(),
    }
}

fn ls_table(steps: &[StepRecord]) -> Table {
    let mut t = Table::new(&[
        "step", "name", "files", "original", "stored", "ratio", "frame", "ref", "depth", "exact",
    ]);
    let (mut to, mut ts) = (0u64, 0u64);
    for s in steps {
        let (o, st) = totals(s);
        to += o;
        ts += st;
        t.row(vec![
            s.step.to_string(),
            match s.kind {
                EntryKind::Dir => format!("{}/", s.name),
                EntryKind::File => s.name.clone(),
            },
            s.files.len().to_string(),
            human(o),
            human(st),
            format!("{:.3}x", o as f64 / st.max(1) as f64),
            frame_short(s),
            s.reference.map_or("-".into(), |r| r.to_string()),
            s.depth.to_string(),
            if lossy_note(s).is_some() { "no" } else { "yes" }.into(),
        ]);
    }
    t.separator();
    t.row(vec![
        "total".into(),
        format!("{} steps", steps.len()),
        steps
            .iter()
            .map(|s| s.files.len())
            .sum::<usize>()
            .to_string(),
        human(to),
        human(ts),
        format!("{:.3}x", to as f64 / ts.max(1) as f64),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    t
}

/// Under `store ls`: the bound of the steps that are not exact, one line
/// per bound.
fn lossy_lines(steps: &[StepRecord]) -> Vec<String> {
    let mut bounds: Vec<(String, Vec<String>)> = Vec::new();
    for s in steps {
        if let Some(b) = lossy_note(s) {
            let b = b.to_string();
            match bounds.iter_mut().find(|(x, _)| *x == b) {
                Some((_, v)) => v.push(s.step.to_string()),
                None => bounds.push((b, vec![s.step.to_string()])),
            }
        }
    }
    bounds
        .into_iter()
        .map(|(b, v)| {
            let which = if v.len() == 1 { "step" } else { "steps" };
            format!("not exact (lossy): {which} {}: {b}", v.join(", "))
        })
        .collect()
}

/// How `tpde store watch` runs.
struct Watch {
    interval: f64,
    settle: f64,
    delete_originals: bool,
    once: bool,
    lossy: Option<Bound>,
}

/// Polls `run_dir`, adding each checkpoint once it has stopped changing for
/// `settle` seconds.
fn watch_run(dir: &str, run_dir: &Path, w: Watch) -> Result<()> {
    let Watch {
        interval,
        settle,
        delete_originals,
        once,
        lossy,
    } = w;
    let store = open_store(
        dir,
        run_dir,
        "a run folder",
        "tpde store watch STORE RUN_DIR",
    )?
    .keep_latest();
    let settle = Duration::from_secs_f64(settle.max(0.0));
    let interval = Duration::from_secs_f64(interval.max(0.1));
    // Path -> (signature, when it was first seen so).
    let mut seen: std::collections::HashMap<PathBuf, (Vec<_>, Instant)> = Default::default();
    if !once {
        println!(
            "watching {} for checkpoints (every {:.0} s; Ctrl-C to stop)",
            run_dir.display(),
            interval.as_secs_f64()
        );
    }
    loop {
        let stored = store.steps()?;
        let mut pending = false;
        for c in watch::candidates(run_dir)? {
            if stored.binary_search(&c.step).is_ok() {
                continue;
            }
            let sig = watch::signature(&c.path)?;
            let stable = match seen.get(&c.path) {
                Some((s, since)) if *s == sig => since.elapsed() >= settle,
                _ => {
                    seen.insert(c.path.clone(), (sig, Instant::now()));
                    settle.is_zero()
                }
            };
            if !stable {
                pending = true;
                continue;
            }
            let before = watch::signature(&c.path)?;
            add(&store, &c.path, c.step, lossy)?;
            seen.remove(&c.path);
            if delete_originals {
                store
                    .check_against(c.step, &c.path)
                    .with_context(|| format!("verifying step {} before deleting", c.step))?;
                // Written to since it was read: what is stored is not all of
                // it, so it is not deleted.
                if watch::signature(&c.path)? != before {
                    bail!(
                        "{} changed while it was being stored; it was not deleted (add it \
                         again once it is complete: `tpde store rm` then `add`)",
                        c.path.display()
                    );
                }
                let r = if c.path.is_dir() {
                    std::fs::remove_dir_all(&c.path)
                } else {
                    std::fs::remove_file(&c.path)
                };
                r.with_context(|| format!("deleting {}", c.path.display()))?;
                println!("step {}: verified, deleted {}", c.step, c.path.display());
            }
        }
        if once && !pending {
            return Ok(());
        }
        std::thread::sleep(if once { settle.min(interval) } else { interval });
    }
}
