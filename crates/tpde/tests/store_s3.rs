//! The store on S3-compatible object storage, against a real server on
//! 127.0.0.1 (moto, started by `scripts/s3-server.sh`; `./test.sh` does it).
//! Without `TPDE_TEST_S3=1` in the environment every test prints a note and
//! passes without doing anything.
//!
//! Each test works under its own prefix of the bucket `TPDE_TEST_S3_BUCKET`.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::{perturb_fraction, safetensors, sha256, Rng, Tensor};
use tpde::store::{Checkpoint, Faults, Store};
use tpde::Error;

/// A fresh `s3://bucket/prefix` for one test, or `None` (with a note) when
/// no test server is configured.
fn location(test: &str) -> Option<String> {
    if std::env::var("TPDE_TEST_S3").ok().as_deref() != Some("1") {
        eprintln!("skipping {test}: TPDE_TEST_S3 is not set (run ./test.sh, or eval \"$(scripts/s3-server.sh)\")");
        return None;
    }
    let bucket = std::env::var("TPDE_TEST_S3_BUCKET").unwrap_or_else(|_| "tpde-test".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "s3://{bucket}/tests/{test}-{}-{nanos}",
        std::process::id()
    ))
}

/// Checkpoint folders `checkpoint-STEP/`: a model that changes a little each
/// step, sharded in three files, a growing log, an unchanged file in a
/// sub-folder and an empty folder.
struct Run {
    dir: tempfile::TempDir,
    steps: Vec<u64>,
}

impl Run {
    fn new(n: usize, seed: u64) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let mut shards: Vec<Vec<u8>> = (0..3).map(|_| rng.f32_weights(4000, 0.05)).collect();
        let mut steps = Vec::new();
        let mut log = String::new();
        for k in 0..n {
            let step = (k as u64 + 1) * 10;
            let ck = dir.path().join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(ck.join("extra")).unwrap();
            std::fs::create_dir_all(ck.join("empty")).unwrap();
            for (i, w) in shards.iter_mut().enumerate() {
                perturb_fraction(&mut rng, w, 4, 0.2);
                let file = safetensors(
                    &[Tensor::new("w", "F32", &[40, 100], w.clone())],
                    Some(&[("format", "pt")]),
                );
                std::fs::write(ck.join(format!("model-{i:05}-of-00003.safetensors")), file)
                    .unwrap();
            }
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
}

/// Every step in `steps` restores (through `get`, to disk) to exactly the
/// original folder.
fn check_steps(store: &Store, run: &Run, steps: &[u64]) {
    common::check_restores(store, |s| run.path(s), steps);
}

fn assert_clean(store: &Store) -> tpde::store::VerifyReport {
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    report
}

#[test]
fn add_get_ls_verify_rm_prune_round_trip() {
    let Some(loc) = location("round-trip") else {
        return;
    };
    let run = Run::new(6, 1);
    assert!(Store::open_location(&loc)
        .unwrap_err()
        .to_string()
        .contains("not a tpde store"));
    assert!(!Store::exists_at(&loc).unwrap());
    let store = Store::init_location(&loc, 3).unwrap();
    assert!(Store::exists_at(&loc).unwrap());
    assert_eq!(store.location(), loc);
    let again = Store::init_location(&loc, 3).unwrap_err().to_string();
    assert!(again.contains("already holds a store"), "{again}");
    for &s in &run.steps {
        store.add(&run.path(s), s).unwrap();
    }
    // A second handle sees the same manifest (ls).
    let m = Store::open_location(&loc).unwrap().manifest().unwrap();
    assert_eq!(
        m.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        run.steps
    );
    assert!(m.steps.iter().all(|s| s.depth <= 3));
    assert!(m.steps.iter().any(|s| s.reference.is_some()), "no deltas");
    for s in &m.steps {
        let paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted, "step {}: files not in path order", s.step);
    }
    check_steps(&store, &run, &run.steps);
    let report = assert_clean(&store);
    assert_eq!(report.steps, 6);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    // In memory too.
    let r = store.restore(30).unwrap();
    let notes = r
        .files
        .iter()
        .find(|(p, _)| p == "extra/notes.txt")
        .unwrap();
    assert_eq!(notes.1, b"same in every step\n");

    let recoded = store.remove(20).unwrap();
    assert_eq!(recoded, vec![30]);
    check_steps(&store, &run, &[10, 30, 40, 50, 60]);
    let removed = store.prune(2, None).unwrap();
    assert_eq!(removed, vec![10, 30, 40]);
    check_steps(&store, &run, &[50, 60]);
    assert_clean(&store);

    let missing = store.get(15, &run.dir.path().join("x")).unwrap_err();
    assert!(missing.to_string().contains("no step 15"), "{missing}");
}

#[test]
fn content_files_larger_than_a_part_are_uploaded_in_parts() {
    let Some(loc) = location("multipart") else {
        return;
    };
    // Incompressible: stored at about its own size, over two 8 MiB parts.
    let mut rng = Rng::new(2);
    let big = rng.bytes(19 << 20);
    let small = b"{\"x\": 1}\n".to_vec();
    let ck = Checkpoint::from_files(
        "checkpoint-1",
        vec![("blob.bin".into(), big.clone()), ("c.json".into(), small)],
    )
    .unwrap();
    let store = Store::init_location(&loc, 10).unwrap();
    let rec = store.add_checkpoint(&ck, 1, None, &mut |_| {}).unwrap();
    let blob = rec.files.iter().find(|f| f.path == "blob.bin").unwrap();
    assert!(blob.stored_len > 16 << 20, "{}", blob.stored_len);
    let back = store.restore(1).unwrap();
    assert_eq!(sha256(&back.files[0].1), sha256(&big));
    assert_clean(&store);
}

/// Runs `op` on a store made by `setup`, with every write operation from
/// the n-th on failing, for every n until it runs through; after each crash
/// the store must open with the steps of `before` or `after`, all
/// restorable and clean, and the operation must then succeed. Stores are
/// made in batches; with `settle`, a batch waits a second before it is used
/// (so that its content files are older than the manifest `op` commits).
fn crash_everywhere(
    test: &str,
    run: &Run,
    setup: &dyn Fn(&Store),
    settle: bool,
    op: &dyn Fn(&Store) -> tpde::Result<()>,
    before: &[u64],
    after: &[u64],
) -> (u64, u64) {
    let mut committed = 0;
    let mut ready = std::collections::VecDeque::new();
    for n in 0.. {
        if ready.is_empty() {
            for k in 0..6 {
                let loc = location(&format!("{test}-{n}-{k}")).unwrap();
                setup(&Store::init_location(&loc, 3).unwrap());
                ready.push_back(loc);
            }
            if settle {
                std::thread::sleep(Duration::from_millis(1100));
            }
        }
        let loc = ready.pop_front().unwrap();
        let store = Store::open_location(&loc).unwrap();
        let faults = Faults::after(n);
        let result = op(&Store::open_location_with_faults(&loc, faults.clone()).unwrap());
        if !faults.tripped() {
            result.unwrap();
            assert_eq!(store.steps().unwrap(), after);
            eprintln!("{test}: {n} write operations, {committed} crashes after the commit");
            return (n, committed);
        }
        assert!(result.is_err(), "fault {n} went unnoticed");
        let steps = store.steps().unwrap_or_else(|e| panic!("fault {n}: {e}"));
        assert!(
            steps == before || steps == after,
            "fault {n}: steps {steps:?} are neither {before:?} nor {after:?}"
        );
        check_steps(&store, run, &steps);
        assert_clean(&store);
        if steps == after {
            committed += 1;
        } else {
            op(&store).unwrap_or_else(|e| panic!("retry after fault {n}: {e}"));
        }
        assert_eq!(store.steps().unwrap(), after);
        check_steps(&store, run, after);
        assert_clean(&store);
    }
    unreachable!()
}

#[test]
fn crash_at_every_write_of_add() {
    if location("crash-add").is_none() {
        return;
    }
    let run = Run::new(3, 3);
    let (points, committed) = crash_everywhere(
        "crash-add",
        &run,
        &|s| {
            s.add(&run.path(10), 10).unwrap();
            s.add(&run.path(20), 20).unwrap();
        },
        false,
        &|s| s.add(&run.path(30), 30).map(|_| ()),
        &[10, 20],
        &[10, 20, 30],
    );
    // Uploads of the changed files, the manifest, the checks after it.
    assert!(points >= 5, "only {points} write operations");
    assert!(committed > 0, "no crash came after the commit");
}

#[test]
fn crash_at_every_write_of_rm() {
    if location("crash-rm").is_none() {
        return;
    }
    let run = Run::new(3, 4);
    let (points, committed) = crash_everywhere(
        "crash-rm",
        &run,
        &|s| {
            for &k in &run.steps {
                s.add(&run.path(k), k).unwrap();
            }
        },
        // Content files only step 20 lists become older than the manifest
        // that drops them, so the remove deletes them.
        true,
        &|s| s.remove(20).map(|_| ()),
        &[10, 20, 30],
        &[10, 30],
    );
    assert!(points >= 4, "only {points} write operations");
    assert!(committed > 0, "no crash came after the commit");
}

/// A handle whose first write, just before it publishes, lets another
/// handle add `step` from `path` first: the first write then fails with a
/// conflict, leaving its uploads behind unlisted.
fn overtaken(loc: &str, path: PathBuf, step: u64) -> Store {
    let other = Store::open_location(loc).unwrap();
    let fired = Mutex::new(false);
    Store::open_location(loc).unwrap().before_commit(move || {
        let mut f = fired.lock().unwrap();
        if !*f {
            *f = true;
            other.add(&path, step).unwrap();
        }
    })
}

#[test]
fn removed_content_is_deleted_and_leftovers_wait_for_the_grace_period() {
    let Some(loc) = location("gc") else {
        return;
    };
    let run = Run::new(5, 5);
    let store = Store::init_location(&loc, 10).unwrap();
    store.add(&run.path(10), 10).unwrap();
    store.add(&run.path(20), 20).unwrap();
    // The loser of a race leaves its content files, unlisted.
    let loser = overtaken(&loc, run.path(30), 30);
    let err = loser.add(&run.path(40), 40).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    let left = store.verify().unwrap().leftovers;
    assert!(!left.is_empty(), "the conflict left no files behind");
    assert!(left.iter().all(|l| l.to_str().unwrap().starts_with(&loc)));
    // Younger than the grace period: the next commit leaves them alone (a
    // writer may be about to commit them).
    store.add(&run.path(50), 50).unwrap();
    let still = store.verify().unwrap().leftovers;
    assert_eq!(still, left);
    // Past it (shortened here): the next commit deletes them, and the
    // content files that only the removed step listed.
    std::thread::sleep(Duration::from_millis(1100));
    store.set_gc_grace(Duration::ZERO);
    store.remove(50).unwrap();
    let report = assert_clean(&store);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    check_steps(&store, &run, &[10, 20, 30]);
}

#[test]
fn of_two_writers_that_began_together_the_first_to_publish_wins() {
    let Some(loc) = location("conflict") else {
        return;
    };
    let run = Run::new(3, 6);
    Store::init_location(&loc, 10)
        .unwrap()
        .add(&run.path(10), 10)
        .unwrap();
    // A begins and codes step 20; just before it publishes, B adds step 30
    // from start to end. A's commit must fail, and nothing of A's must show.
    let a = overtaken(&loc, run.path(30), 30);
    let b = Store::open_location(&loc).unwrap();
    let err = a.add(&run.path(20), 20).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&loc) && msg.contains("another writer") && msg.contains("nothing of yours"),
        "{msg}"
    );
    assert_eq!(b.steps().unwrap(), vec![10, 30]);
    check_steps(&b, &run, &[10, 30]);
    assert_clean(&b);
    // The retry begins from B's manifest and commits.
    a.add(&run.path(20), 20).unwrap();
    assert_eq!(a.steps().unwrap(), vec![10, 20, 30]);
    check_steps(&a, &run, &[10, 20, 30]);
    assert_clean(&a);
}

#[test]
fn two_writers_publishing_at_once_exactly_one_commits() {
    let Some(loc) = location("publish-race") else {
        return;
    };
    let run = Run::new(3, 7);
    Store::init_location(&loc, 10)
        .unwrap()
        .add(&run.path(10), 10)
        .unwrap();
    // Both read the manifest and code their step; both wait for the other
    // to get there; both publish at once.
    let barrier = Arc::new(Barrier::new(2));
    let results: Vec<(u64, tpde::Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [20u64, 30]
            .into_iter()
            .map(|step| {
                let barrier = Arc::clone(&barrier);
                let store = Store::open_location(&loc).unwrap().before_commit(move || {
                    barrier.wait();
                });
                let path = run.path(step);
                scope.spawn(move || (step, store.add(&path, step).map(|_| ())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<u64> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| *s)
        .collect();
    let lost = results
        .iter()
        .filter(|(_, r)| matches!(r, Err(Error::Conflict(_))))
        .count();
    assert_eq!(won.len(), 1, "{results:?}");
    assert_eq!(lost, 1, "{results:?}");
    let store = Store::open_location(&loc).unwrap();
    assert_eq!(store.steps().unwrap(), vec![10, won[0]]);
    check_steps(&store, &run, &[10, won[0]]);
    assert_clean(&store);
}

#[test]
fn racing_writers_lose_no_update() {
    let Some(loc) = location("race") else {
        return;
    };
    let run = Run::new(9, 8);
    let store = Store::init_location(&loc, 4).unwrap();
    store.add(&run.path(10), 10).unwrap();
    // Rounds of two threads adding at once, with no hook: each round both
    // read the manifest at about the same time, so mostly one commits and the
    // other gets a conflict. Whatever the timing, every reported commit is in
    // the store, no conflict is, and the store verifies clean.
    let mut conflicts = 0;
    let mut stored = vec![10u64];
    for round in 0..4u64 {
        let steps = [20 + 20 * round, 30 + 20 * round];
        let start = Arc::new(Barrier::new(2));
        let results: Vec<(u64, tpde::Result<()>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = steps
                .into_iter()
                .map(|step| {
                    let start = Arc::clone(&start);
                    let store = Store::open_location(&loc).unwrap();
                    let path = run.path(step);
                    scope.spawn(move || {
                        start.wait();
                        (step, store.add(&path, step).map(|_| ()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (step, r) in results {
            match r {
                Ok(()) => stored.push(step),
                Err(Error::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("step {step}: {e}"),
            }
        }
        stored.sort_unstable();
        assert_eq!(store.steps().unwrap(), stored, "round {round}");
    }
    eprintln!("{conflicts} conflicts in 4 rounds");
    // Both writers of a round read the manifest before either has coded its
    // step, so races do happen.
    assert!(conflicts > 0, "no round raced");
    check_steps(&store, &run, &stored);
    let report = assert_clean(&store);
    assert_eq!(report.steps, stored.len());
}

// Issue 12, item 17: a writer that lost a race against `rm` (its reference
// step's content deleted meanwhile) failed with "not found" instead of the
// retryable conflict error.
#[test]
fn a_writer_overtaken_by_rm_gets_a_conflict() {
    let Some(loc) = location("rm-race") else {
        return;
    };
    let run = Run::new(3, 9);
    let store = Store::init_location(&loc, 10).unwrap();
    store.add(&run.path(10), 10).unwrap();
    store.add(&run.path(20), 20).unwrap();
    // Just after the writer read the manifest (step 20 is its reference),
    // another handle removes step 20; its content files go at once (being
    // older than the new manifest: the server's clock counts seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let other = Store::open_location(&loc).unwrap();
    other.set_gc_grace(Duration::ZERO);
    let fired = Mutex::new(false);
    let writer = Store::open_location(&loc).unwrap().after_begin(move || {
        let mut f = fired.lock().unwrap();
        if !*f {
            *f = true;
            other.remove(20).unwrap();
        }
    });
    let err = writer.add(&run.path(30), 30).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("try again"), "{err}");
    // Trying again works.
    writer.add(&run.path(30), 30).unwrap();
    check_steps(&writer, &run, &[10, 30]);
}

// Issue 12, item 15: S3 writers and readers kept their local copies in named
// temporary files (`.tpde-s3-*`), which a killed process left behind. They
// have no name now: none is ever visible, even in the middle of a write.
#[test]
fn local_temporary_files_have_no_name() {
    let Some(loc) = location("unnamed-tmp") else {
        return;
    };
    let run = Run::new(2, 10);
    let tmp = std::env::temp_dir();
    let named = move || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tpde-s3-"))
            .count()
    };
    let before = named();
    let seen = std::sync::Arc::new(Mutex::new(0usize));
    let seen2 = seen.clone();
    let named2 = named.clone();
    let store = Store::init_location(&loc, 10).unwrap();
    store.add(&run.path(10), 10).unwrap();
    let store = Store::open_location(&loc)
        .unwrap()
        .before_commit(move || *seen2.lock().unwrap() = named2());
    store.add(&run.path(20), 20).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        before,
        "named temporary files mid-write"
    );
    check_steps(&store, &run, &[10, 20]);
    assert_eq!(named(), before);
}
