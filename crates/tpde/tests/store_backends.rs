//! One suite of store tests run over every backend through the same public
//! API: each case is a function of a [`Place`] (where fresh stores are
//! made), and [`on_both!`] makes two tests of it, `CASE::local` on a
//! temporary folder and `CASE::s3` on the S3 test server.
//!
//! The S3 half needs the `s3` feature and the server of
//! `scripts/s3-server.sh` (`eval "$(scripts/s3-server.sh)"`, then
//! `cargo test -p tpde --features s3 --test store_backends`); without them
//! it prints a note and passes without doing anything. Faults are injected
//! at the backend interface ([`Store::with_faults`]), so the same plans
//! apply to both.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::{check_restores, perturb_fraction, safetensors, Rng, Tensor};
use tpde::store::{Faults, Store};
use tpde::Error;

/// Where a test makes its stores.
enum Place {
    Local(tempfile::TempDir),
    S3 { bucket: String, test: String },
}

impl Place {
    fn local() -> Place {
        Place::Local(tempfile::tempdir().unwrap())
    }

    /// The S3 test server, or `None` (with a note) when there is none.
    fn s3(test: &str) -> Option<Place> {
        if !cfg!(feature = "s3") || std::env::var("TPDE_TEST_S3").ok().as_deref() != Some("1") {
            eprintln!(
                "skipping {test} on S3: needs the `s3` feature and TPDE_TEST_S3=1 \
                 (eval \"$(scripts/s3-server.sh)\")"
            );
            return None;
        }
        Some(Place::S3 {
            bucket: std::env::var("TPDE_TEST_S3_BUCKET").unwrap_or_else(|_| "tpde-test".into()),
            test: test.to_string(),
        })
    }

    /// A location no store is at yet.
    fn fresh(&self, name: &str) -> String {
        match self {
            Place::Local(dir) => dir.path().join(name).display().to_string(),
            Place::S3 { bucket, test } => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                format!(
                    "s3://{bucket}/tests/backends-{test}-{name}-{}-{nanos}",
                    std::process::id()
                )
            }
        }
    }

    /// On object storage, garbage collection goes by the server's clock,
    /// which counts seconds: content written before this is older than a
    /// manifest committed after it.
    fn settle(&self) {
        if matches!(self, Place::S3 { .. }) {
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
}

/// Two tests of `case`: on a local folder and on the S3 test server.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn local() {
                super::$case(&super::Place::local());
            }

            #[test]
            fn s3() {
                if let Some(place) = super::Place::s3(stringify!($case)) {
                    super::$case(&place);
                }
            }
        }
    )*};
}

on_both!(
    keyframes_and_deltas_restore_byte_identical,
    remove_and_prune_collect_their_garbage,
    a_writer_overtaken_by_another_gets_a_retryable_error,
    a_failed_put_leaves_the_store_as_it_was,
    a_crash_anywhere_in_add_keeps_the_earlier_steps,
    shared_steps_commit_and_read_by_range,
);

/// Checkpoint folders `checkpoint-STEP/`: a model that changes a little
/// each step, a growing log, an unchanged file in a sub-folder and an empty
/// folder.
struct Run {
    dir: tempfile::TempDir,
    steps: Vec<u64>,
}

impl Run {
    fn new(n: usize, seed: u64) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let mut w = rng.f32_weights(4000, 0.05);
        let mut steps = Vec::new();
        let mut log = String::new();
        for k in 0..n {
            let step = (k as u64 + 1) * 10;
            let ck = dir.path().join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(ck.join("extra")).unwrap();
            std::fs::create_dir_all(ck.join("empty")).unwrap();
            perturb_fraction(&mut rng, &mut w, 4, 0.2);
            let model = safetensors(&[Tensor::new("w", "F32", &[40, 100], w.clone())], None);
            std::fs::write(ck.join("model.safetensors"), model).unwrap();
            log.push_str(&format!("{{\"step\": {step}}},\n"));
            std::fs::write(ck.join("trainer_state.json"), &log).unwrap();
            std::fs::write(ck.join("extra/notes.txt"), b"same in every step\n").unwrap();
            steps.push(step);
        }
        Run { dir, steps }
    }

    fn path(&self, step: u64) -> PathBuf {
        self.dir.path().join(format!("checkpoint-{step}"))
    }

    /// A store at `loc` holding `steps` of this run.
    fn store(&self, loc: &str, keyframe_every: u32, steps: &[u64]) -> Store {
        let store = Store::init_location(loc, keyframe_every).unwrap();
        for &s in steps {
            store.add(&self.path(s), s).unwrap();
        }
        store
    }
}

/// Exactly `steps` are stored, each restoring (through `get`, to disk) to
/// its original folder: every file's sha256 the same.
fn check_steps(store: &Store, run: &Run, steps: &[u64]) {
    assert_eq!(store.steps().unwrap(), steps);
    check_restores(store, |s| run.path(s), steps);
}

fn assert_clean(store: &Store) -> tpde::store::VerifyReport {
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.foreign.is_empty(), "{:?}", report.foreign);
    report
}

fn keyframes_and_deltas_restore_byte_identical(place: &Place) {
    let run = Run::new(7, 1);
    let loc = place.fresh("store");
    let store = run.store(&loc, 3, &run.steps);
    let m = Store::open_location(&loc).unwrap().manifest().unwrap();
    let keyframes: Vec<u64> = m
        .steps
        .iter()
        .filter(|s| s.reference.is_none())
        .map(|s| s.step)
        .collect();
    assert_eq!(keyframes, [10, 40, 70], "a keyframe every 3 steps");
    assert!(m.steps.iter().all(|s| s.depth <= 3));
    assert!(m.steps.iter().any(|s| s.delta_files() > 0), "no deltas");
    check_steps(&store, &run, &run.steps);
    let report = assert_clean(&store);
    assert_eq!(report.steps, 7);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    // In memory too.
    let r = store.restore(50).unwrap();
    let notes = r.files.iter().find(|(p, _)| p == "extra/notes.txt");
    assert_eq!(notes.unwrap().1, b"same in every step\n");
    store.check_against(50, &run.path(50)).unwrap();
    assert!(store.check_against(50, &run.path(60)).is_err());
}

fn remove_and_prune_collect_their_garbage(place: &Place) {
    let run = Run::new(6, 2);
    let loc = place.fresh("store");
    let store = run.store(&loc, 10, &run.steps);
    let objects = |s: &Store| -> usize {
        let m = s.manifest().unwrap();
        let mut all: Vec<&str> = m
            .steps
            .iter()
            .flat_map(|s| s.files.iter().map(|f| f.object.as_str()))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    };
    let before = objects(&store);
    place.settle();
    // Step 30 depends on 20: it is re-coded against 10.
    assert_eq!(store.remove(20).unwrap(), [30]);
    check_steps(&store, &run, &[10, 30, 40, 50, 60]);
    let report = assert_clean(&store);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    place.settle();
    assert_eq!(store.prune(2, None).unwrap(), [10, 30, 40]);
    check_steps(&store, &run, &[50, 60]);
    let report = assert_clean(&store);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    assert!(objects(&store) < before);
    assert!(store
        .remove(15)
        .unwrap_err()
        .to_string()
        .contains("no step 15"));
}

// A write that another writer overtakes (it adds a step just before the
// first publishes) fails with an error that says to try again: the lock on
// a local store (the second writer is refused), the conditional put on
// object storage (the first one is). Exactly one commits, the store
// verifies clean, and the loser's retry commits.
fn a_writer_overtaken_by_another_gets_a_retryable_error(place: &Place) {
    let run = Run::new(3, 3);
    let loc = place.fresh("store");
    run.store(&loc, 10, &[10]);
    let other = Store::open_location(&loc).unwrap();
    let second = std::sync::Arc::new(Mutex::new(None));
    let seen = second.clone();
    let path = run.path(30);
    let fired = Mutex::new(false);
    let a = Store::open_location(&loc).unwrap().before_commit(move || {
        let mut f = fired.lock().unwrap();
        if !*f {
            *f = true;
            *seen.lock().unwrap() = Some(other.add(&path, 30).map(|_| ()));
        }
    });
    let first_result = a.add(&run.path(20), 20).map(|_| ());
    let second_result = second.lock().unwrap().take().expect("the hook ran");
    let retryable = |r: &tpde::Result<()>| matches!(r, Err(Error::Locked(_) | Error::Conflict(_)));
    let won = match (&first_result, &second_result) {
        (Ok(()), r) => {
            assert!(retryable(r), "{r:?}");
            20
        }
        (r, Ok(())) => {
            assert!(retryable(r), "{r:?}");
            30
        }
        (r1, r2) => panic!("neither committed: {r1:?}, {r2:?}"),
    };
    let reader = Store::open_location(&loc).unwrap();
    check_steps(&reader, &run, &[10, won]);
    assert_clean(&reader);
    let (lost, path) = if won == 20 {
        (30, run.path(30))
    } else {
        (20, run.path(20))
    };
    a.add(&path, lost).unwrap();
    check_steps(&reader, &run, &[10, 20, 30]);
    assert_clean(&reader);
}

// The first object put fails: the add reports it, and the store is as it
// was (its steps restore, verify is clean); the next try commits.
fn a_failed_put_leaves_the_store_as_it_was(place: &Place) {
    let run = Run::new(3, 4);
    let loc = place.fresh("store");
    run.store(&loc, 10, &[10, 20]);
    let faults = Faults::after(0);
    let faulty = Store::open_location(&loc)
        .unwrap()
        .with_faults(faults.clone());
    let err = faulty.add(&run.path(30), 30).unwrap_err();
    assert!(err.to_string().contains("injected fault #0"), "{err}");
    assert!(faults.tripped());
    let store = Store::open_location(&loc).unwrap();
    check_steps(&store, &run, &[10, 20]);
    assert_clean(&store);
    // Reads go through a faulty handle untouched.
    check_steps(&faulty, &run, &[10, 20]);
    store.add(&run.path(30), 30).unwrap();
    check_steps(&store, &run, &[10, 20, 30]);
    assert_clean(&store);
}

// An add crashed at every write operation in turn (that one and every
// later one failing, as in a crash): the store then holds the earlier steps
// (or, crashed after its commit, the new one too), all restoring byte for
// byte and verifying clean, and trying again commits.
fn a_crash_anywhere_in_add_keeps_the_earlier_steps(place: &Place) {
    let run = Run::new(3, 5);
    let (before, after) = (&run.steps[..2], &run.steps[..]);
    let mut committed = 0;
    for n in 0.. {
        let loc = place.fresh(&format!("crash-{n}"));
        run.store(&loc, 10, before);
        let faults = Faults::after(n);
        let crashed = Store::open_location(&loc)
            .unwrap()
            .with_faults(faults.clone());
        let result = crashed.add(&run.path(30), 30);
        if !faults.tripped() {
            result.unwrap();
            check_steps(&Store::open_location(&loc).unwrap(), &run, after);
            assert!(n >= 5, "only {n} write operations");
            assert!(committed > 0, "no crash came after the commit");
            return;
        }
        assert!(result.is_err(), "fault {n} went unnoticed");
        let store = Store::open_location(&loc).unwrap();
        let steps = store.steps().unwrap();
        if steps == after {
            committed += 1;
        } else {
            assert_eq!(steps, before, "fault {n}");
        }
        check_steps(&store, &run, &steps);
        assert_clean(&store);
        if steps == before {
            store
                .add(&run.path(30), 30)
                .unwrap_or_else(|e| panic!("retry after fault {n}: {e}"));
        }
        check_steps(&store, &run, after);
        assert_clean(&store);
    }
}

/// A step coded by two "ranks" (`code_shared`, no lock held) and committed
/// by a coordinator, then a delta step; both restore byte-identical, and
/// byte ranges of the delta are its restored bytes.
fn shared_steps_commit_and_read_by_range(place: &Place) {
    let run = Run::new(2, 6);
    let loc = place.fresh("store");
    let store = Store::init_location(&loc, 10).unwrap();
    for &step in &run.steps {
        let files: Vec<(String, Vec<u8>)> = ["model.safetensors", "trainer_state.json"]
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    std::fs::read(run.path(step).join(p)).unwrap(),
                )
            })
            .collect();
        let plan = store.plan_shared(step).unwrap();
        let recs = files
            .iter()
            .map(|(p, b)| store.code_shared(&plan, p, b, None, None).unwrap())
            .collect();
        let rec = store
            .commit_shared(
                &plan,
                &format!("checkpoint-{step}"),
                recs,
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(rec.reference.is_some(), step != run.steps[0]);
        let restored = store.restore(step).unwrap();
        for ((p, want), (q, got)) in files.iter().zip(&restored.files) {
            assert_eq!(p, q);
            assert_eq!(common::sha256(want), common::sha256(got), "{p}");
        }
        let model = &files[0].1;
        let n = model.len() as u64;
        let ranges = [(0, n), (7, n / 2), (n - 3, 3)];
        let (got, _) = store
            .read_ranges(step, "model.safetensors", &ranges)
            .unwrap();
        for (&(a, len), g) in ranges.iter().zip(&got) {
            assert!(g[..] == model[a as usize..(a + len) as usize]);
        }
    }
    let report = assert_clean(&store);
    assert_eq!(report.steps, 2);
}
