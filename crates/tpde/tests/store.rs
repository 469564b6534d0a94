//! The checkpoint store: every step back byte for byte, through keyframes,
//! deltas, removals, prunes, damaged content files and crashes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{perturb_fraction, safetensors, sha256, tree, Rng, Tensor};
use tpde::store::{Faults, Store};
use tpde::Error;

/// A run of checkpoint folders `checkpoint-STEP/` written by the test: a
/// small model that changes a little each step, a growing trainer state, a
/// file in a sub-folder and an empty folder.
struct Run {
    dir: tempfile::TempDir,
    steps: Vec<u64>,
}

impl Run {
    fn new(n: usize, seed: u64) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let mut w = rng.f32_weights(6000, 0.05);
        let mut b = rng.f32_weights(300, 0.01);
        let mut emb = rng.f32_weights(2000, 0.1);
        let mut steps = Vec::new();
        let mut log = String::new();
        for k in 0..n {
            let step = (k as u64 + 1) * 10;
            perturb_fraction(&mut rng, &mut w, 4, 0.3);
            perturb_fraction(&mut rng, &mut b, 4, 0.5);
            perturb_fraction(&mut rng, &mut emb, 4, 0.02);
            let model = safetensors(
                &[
                    Tensor::new("emb.weight", "F32", &[20, 100], emb.clone()),
                    Tensor::new("fc.bias", "F32", &[300], b.clone()),
                    Tensor::new("fc.weight", "F32", &[300, 20], w.clone()),
                ],
                Some(&[("format", "pt")]),
            );
            log.push_str(&format!(
                "{{\"step\": {step}, \"loss\": {:.4}}},\n",
                3.0 / (k as f64 + 1.0)
            ));
            let ck = dir.path().join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(ck.join("extra")).unwrap();
            std::fs::create_dir_all(ck.join("empty")).unwrap();
            std::fs::write(ck.join("model.safetensors"), model).unwrap();
            std::fs::write(
                ck.join("trainer_state.json"),
                format!("{{\"global_step\": {step}, \"log_history\": [\n{log}]}}\n"),
            )
            .unwrap();
            std::fs::write(ck.join("extra/notes.txt"), b"same in every step\n").unwrap();
            steps.push(step);
        }
        Run { dir, steps }
    }

    fn path(&self, step: u64) -> PathBuf {
        self.dir.path().join(format!("checkpoint-{step}"))
    }
}

/// Every step in `steps` restores to exactly the original folder.
fn check_steps(store: &Store, run: &Run, steps: &[u64]) {
    common::check_restores(store, |s| run.path(s), steps);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn new_store(run: &Run, steps: &[u64], keyframe_every: u32) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), keyframe_every).unwrap();
    for &s in steps {
        store.add(&run.path(s), s).unwrap();
    }
    (dir, store)
}

#[test]
fn twenty_steps_with_keyframes_every_five() {
    let run = Run::new(20, 1);
    let (_d, store) = new_store(&run, &run.steps, 5);
    let m = store.manifest().unwrap();
    assert_eq!(m.steps.len(), 20);
    for s in &m.steps {
        assert!(
            s.depth >= 1 && s.depth <= 5,
            "step {} depth {}",
            s.step,
            s.depth
        );
        assert_eq!(m.chain(s.step).len() as u32, s.depth);
    }
    let keyframes: Vec<u64> = m
        .steps
        .iter()
        .filter(|s| s.reference.is_none())
        .map(|s| s.step)
        .collect();
    assert_eq!(keyframes, [10, 60, 110, 160], "a keyframe every 5 steps");
    let (orig, stored) = m
        .steps
        .iter()
        .flat_map(|s| &s.files)
        .fold((0, 0), |(o, s), f| (o + f.len, s + f.stored_len));
    assert!(stored * 2 < orig, "deltas pay: {orig} -> {stored}");
    check_steps(&store, &run, &run.steps);
    assert!(store.verify().unwrap().problems.is_empty());

    // Removing a step others depend on re-codes them.
    let recoded = store.remove(80).unwrap();
    assert_eq!(recoded, [90]);
    let left: Vec<u64> = run.steps.iter().copied().filter(|&s| s != 80).collect();
    assert_eq!(store.steps().unwrap(), left);
    check_steps(&store, &run, &left);

    // Removing a keyframe turns its dependant into one.
    assert_eq!(store.remove(110).unwrap(), [120]);
    let m = store.manifest().unwrap();
    assert_eq!(m.get(120).unwrap().reference, None);

    // Prune: the last 3, and every multiple of 50.
    let removed = store.prune(3, Some(50)).unwrap();
    let kept = store.steps().unwrap();
    assert_eq!(kept, [50, 100, 150, 180, 190, 200]);
    assert!(removed.contains(&10) && !removed.contains(&50));
    check_steps(&store, &run, &kept);
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    assert_eq!(report.steps, 6);
}

#[test]
fn verify_names_the_step_and_file_of_a_flipped_bit() {
    let run = Run::new(6, 2);
    let (_d, store) = new_store(&run, &run.steps, 3);
    let m = store.manifest().unwrap();
    let mut objects = BTreeSet::new();
    for s in &m.steps {
        for f in &s.files {
            objects.insert(f.object.clone());
        }
    }
    assert!(objects.len() > 10);
    for (k, obj) in objects.iter().enumerate() {
        let path = store
            .root()
            .join("objects")
            .join(&obj[..2])
            .join(format!("{obj}.tpde"));
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let i = (k * 7919) % bad.len();
        bad[i] ^= 1 << (k % 8);
        std::fs::write(&path, &bad).unwrap();
        let report = store.verify().unwrap();
        for s in &m.steps {
            for f in s.files.iter().filter(|f| &f.object == obj) {
                let needle = format!("step {}, file {}", s.step, f.path);
                assert!(
                    report.problems.iter().any(|p| p.contains(&needle)),
                    "byte {i} of {obj}: {needle} not in {:?}",
                    report.problems
                );
                let out = tempfile::tempdir().unwrap();
                // Restoring fails naming the file and the damaged content
                // file (shared objects: maybe at an earlier step of the chain).
                let err = store.get(s.step, &out.path().join("x")).unwrap_err();
                let text = err.to_string();
                assert!(
                    text.contains(&format!("file {}", f.path)) && text.contains(obj.as_str()),
                    "{err}"
                );
                assert!(!out.path().join("x").exists(), "no half-written output");
            }
        }
        std::fs::write(&path, &good).unwrap();
    }
    assert!(store.verify().unwrap().problems.is_empty());
}

/// Runs `op` on a copy of `pristine` failing at the n-th write operation,
/// for every n until it runs through; after each crash the store must open
/// with every step of `before` restorable (and of `after` when the crash came
/// after the commit), and a second attempt must succeed.
fn crash_everywhere(
    run: &Run,
    pristine: &Path,
    op: &dyn Fn(&Store) -> tpde::Result<()>,
    after: &[u64],
) -> (u64, u64) {
    let before = Store::open(pristine).unwrap().steps().unwrap();
    let mut committed = 0;
    for n in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        copy_dir(pristine, &dir);
        let faults = Faults::after(n);
        let result = op(&Store::open_with_faults(&dir, faults.clone()).unwrap());
        if !faults.tripped() {
            result.unwrap();
            assert_eq!(Store::open(&dir).unwrap().steps().unwrap(), after);
            return (n, committed);
        }
        assert!(result.is_err(), "fault {n} went unnoticed");
        let store = Store::open(&dir).unwrap();
        let steps = store.steps().unwrap_or_else(|e| panic!("fault {n}: {e}"));
        assert!(
            steps == before || steps == after,
            "fault {n}: steps {steps:?} are neither before {before:?} nor after {after:?}"
        );
        check_steps(&store, run, &steps);
        let report = store.verify().unwrap();
        assert!(
            report.problems.is_empty(),
            "fault {n}: {:?}",
            report.problems
        );
        if steps == after {
            committed += 1;
        } else {
            op(&store).unwrap_or_else(|e| panic!("retry after fault {n}: {e}"));
        }
        assert_eq!(store.steps().unwrap(), after);
        check_steps(&store, run, after);
        // The retry (or the next write) cleared what the crash left.
        store.remove(*after.last().unwrap()).unwrap();
        assert!(store.verify().unwrap().leftovers.is_empty());
    }
    unreachable!()
}

#[test]
fn crash_at_every_write_of_add() {
    let run = Run::new(5, 3);
    let (d, _store) = new_store(&run, &run.steps[..4], 3);
    let pristine = d.path().join("store");
    let new = run.steps[4];
    let (points, committed) = crash_everywhere(
        &run,
        &pristine,
        &|s| s.add(&run.path(new), new).map(|_| ()),
        &run.steps,
    );
    assert!(points > 10, "only {points} write operations");
    assert!(committed > 0, "no crash came after the commit");
}

#[test]
fn crash_at_every_write_of_prune() {
    let run = Run::new(7, 4);
    let (d, _store) = new_store(&run, &run.steps, 4);
    let pristine = d.path().join("store");
    // Keeps 20, 40, 60, 70: re-codes 20 (its reference 10 goes) and others.
    let (points, committed) = crash_everywhere(
        &run,
        &pristine,
        &|s| s.prune(1, Some(20)).map(|_| ()),
        &[20, 40, 60, 70],
    );
    assert!(points > 10, "only {points} write operations");
    assert!(committed > 0, "no crash came after the commit");
}

#[test]
fn hugging_face_folder_round_trips() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torch");
    let run = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let mut w1 = rng.f32_weights(3000, 0.05);
    let mut w2 = rng.f32_weights(2000, 0.05);
    for (k, fixture) in ["step-1", "step-2"].iter().enumerate() {
        let ck = run.path().join(format!("checkpoint-{}", k + 1));
        copy_dir(&fixtures.join(fixture), &ck);
        // A sharded model with its index, as save_pretrained writes it.
        perturb_fraction(&mut rng, &mut w1, 4, 0.4);
        perturb_fraction(&mut rng, &mut w2, 4, 0.4);
        let shard1 = safetensors(&[Tensor::new("a.weight", "F32", &[3000], w1.clone())], None);
        let shard2 = safetensors(&[Tensor::new("b.weight", "F32", &[2000], w2.clone())], None);
        std::fs::write(ck.join("model-00001-of-00002.safetensors"), shard1).unwrap();
        std::fs::write(ck.join("model-00002-of-00002.safetensors"), shard2).unwrap();
        std::fs::write(
            ck.join("model.safetensors.index.json"),
            "{\"metadata\": {\"total_size\": 20000}, \"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\", \"b.weight\": \"model-00002-of-00002.safetensors\"}}\n",
        )
        .unwrap();
        std::fs::create_dir_all(ck.join("global_step/empty")).unwrap();
        std::fs::write(ck.join("global_step/zero.bin"), b"").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path(), 10).unwrap();
    for k in 1..=2u64 {
        store
            .add(&run.path().join(format!("checkpoint-{k}")), k)
            .unwrap();
    }
    let m = store.manifest().unwrap();
    let second = m.get(2).unwrap();
    assert_eq!(second.reference, Some(1));
    let coding = |p: &str| second.files.iter().find(|f| f.path == p).unwrap();
    assert_eq!(coding("optimizer.pt").coding, "torch archive");
    assert!(coding("optimizer.pt").delta);
    assert_eq!(
        coding("model-00002-of-00002.safetensors").coding,
        "safetensors"
    );
    assert_eq!(coding("rng_state.pth").coding, "torch archive");
    let out = tempfile::tempdir().unwrap();
    for k in 1..=2u64 {
        let dest = out.path().join(format!("back-{k}"));
        store.get(k, &dest).unwrap();
        let original = run.path().join(format!("checkpoint-{k}"));
        assert_eq!(tree(&dest), tree(&original), "checkpoint-{k}");
        assert!(dest.join("global_step/empty").is_dir());
    }
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn a_second_writer_gets_a_lock_error() {
    let run = Run::new(2, 6);
    let (_d, store) = new_store(&run, &run.steps[..1], 5);
    let lock = std::fs::File::options()
        .write(true)
        .open(store.root().join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let err = store.add(&run.path(20), 20).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err:?}");
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(store.remove(10).is_err());
    drop(lock);
    store.add(&run.path(20), 20).unwrap();
    check_steps(&store, &run, &[10, 20]);
}

#[test]
fn bad_requests_get_clear_errors() {
    let run = Run::new(2, 7);
    let (d, store) = new_store(&run, &run.steps, 5);
    let msg = |r: tpde::Result<_>| -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    };
    let out = d.path().join("out");
    assert!(msg(store.get(15, &out).map(|_| ())).contains("no step 15"));
    assert!(!out.exists());
    assert!(msg(store.add(&run.path(10), 10).map(|_| ())).contains("stored already"));
    assert!(msg(Store::open(d.path()).map(|_| ())).contains("not a tpde store"));
    assert!(msg(Store::init(store.root(), 5).map(|_| ())).contains("already"));
    assert!(msg(store.add(&d.path().join("missing"), 30).map(|_| ())).contains("missing"));
    std::fs::create_dir_all(&out).unwrap();
    assert!(msg(store.get(10, &out).map(|_| ())).contains("exists"));
    assert!(msg(store.remove(15).map(|_| ())).contains("no step 15"));
    // A damaged manifest is named as such, and nothing is written.
    let manifest = store.root().join("tpde-store.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    assert!(msg(store.steps().map(|_| ())).contains("damaged manifest"));
    assert!(msg(store.add(&run.path(20), 30).map(|_| ())).contains("damaged manifest"));
    std::fs::write(&manifest, &good).unwrap();
    check_steps(&store, &run, &run.steps);
}

/// Moves the files of the tree `from` into the tree `to`.
fn merge_into(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            merge_into(&e.path(), &target);
        } else {
            std::fs::rename(e.path(), &target).unwrap();
        }
    }
}

/// Checkpoints handed over (`add_checkpoint_owned`, what the Python
/// package's save does) give the store that borrowed ones give, and the
/// next step is coded against the kept files.
#[test]
fn checkpoints_handed_over_code_the_same_bytes() {
    let run = Run::new(6, 9);
    let files_of = |s: u64| -> Vec<(String, Vec<u8>)> {
        ["extra/notes.txt", "model.safetensors", "trainer_state.json"]
            .iter()
            .map(|p| (p.to_string(), std::fs::read(run.path(s).join(p)).unwrap()))
            .collect()
    };
    let ck = |s: u64| tpde::store::Checkpoint::from_files(&format!("checkpoint-{s}"), files_of(s));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let borrowed = Store::init(da.path(), 4).unwrap();
    let owned = Store::init(db.path(), 4).unwrap().keep_latest();
    for &s in &run.steps {
        borrowed
            .add_checkpoint(&ck(s).unwrap(), s, None, &mut |_| {})
            .unwrap();
        let objects = owned.root().join("objects");
        let moved = db.path().join("moved");
        if s > run.steps[0] {
            // The reference comes from memory: the content files are away.
            std::fs::rename(&objects, &moved).unwrap();
            std::fs::create_dir(&objects).unwrap();
        }
        owned
            .add_checkpoint_owned(ck(s).unwrap(), s, None, &mut |_| {})
            .unwrap();
        if s > run.steps[0] {
            merge_into(&objects, &moved);
            std::fs::remove_dir_all(&objects).unwrap();
            std::fs::rename(&moved, &objects).unwrap();
        }
    }
    assert_eq!(owned.manifest().unwrap(), borrowed.manifest().unwrap());
    for &s in &run.steps {
        let r = owned.restore(s).unwrap();
        assert!(r.files == files_of(s), "step {s}");
    }
}

#[test]
fn keeping_the_latest_in_memory_codes_the_same_bytes() {
    let run = Run::new(8, 8);
    let (_a, plain) = new_store(&run, &run.steps, 10);
    let dir = tempfile::tempdir().unwrap();
    let kept = Store::init(dir.path(), 10).unwrap().keep_latest();
    for &s in &run.steps {
        kept.add(&run.path(s), s).unwrap();
    }
    assert_eq!(kept.manifest().unwrap(), plain.manifest().unwrap());
    // The next add codes against the kept files, not the stored chain: it
    // works even with the content files moved away.
    let objects = kept.root().join("objects");
    let moved = dir.path().join("moved");
    std::fs::rename(&objects, &moved).unwrap();
    std::fs::create_dir(&objects).unwrap();
    let extra = Run::new(9, 8);
    kept.add(&extra.path(90), 90).unwrap();
    assert_eq!(
        kept.manifest().unwrap().get(90).unwrap().reference,
        Some(80)
    );
    assert!(plain.add(&extra.path(90), 90).is_ok());
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::rename(&moved, &objects).unwrap();
    // In-memory checkpoints (what the Python package saves) round-trip too.
    let files = vec![
        ("a/b.bin".to_string(), vec![1u8, 2, 3]),
        ("top.json".to_string(), b"{}".to_vec()),
    ];
    let ck = tpde::store::Checkpoint::from_files("mem", files.clone()).unwrap();
    kept.add_checkpoint(&ck, 1000, None, &mut |_| {}).unwrap();
    let r = kept.restore(1000).unwrap();
    assert_eq!(r.files, files);
    assert_eq!(r.dirs, ["a"]);
    assert!(tpde::store::Checkpoint::from_files("x", vec![("../up".into(), vec![])]).is_err());
}

#[test]
fn lossy_steps_stay_within_the_bound_and_say_so() {
    use tpde::codec::lossy::Bound;
    let run = Run::new(8, 9);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), 4).unwrap();
    let e = 1e-3;
    for &s in &run.steps {
        let ck = tpde::store::Checkpoint::from_path(&run.path(s)).unwrap();
        store
            .add_checkpoint(&ck, s, Some(Bound::MaxAbsError(e)), &mut |_| {})
            .unwrap();
    }
    let check = |store: &Store, steps: &[u64]| {
        for &s in steps {
            let r = store.restore(s).unwrap();
            for (path, bytes) in &r.files {
                let orig = std::fs::read(run.path(s).join(path)).unwrap();
                if path != "model.safetensors" {
                    assert_eq!(bytes, &orig, "step {s}: {path} is exact");
                    continue;
                }
                let (a, b) = (
                    tpde::source::safetensors::parse(bytes).unwrap(),
                    tpde::source::safetensors::parse(&orig).unwrap(),
                );
                assert_eq!(
                    bytes[..a.header_len as usize],
                    orig[..b.header_len as usize]
                );
                let data = |f: &[u8], h: &tpde::source::safetensors::Header| {
                    f[h.header_len as usize..]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<f32>>()
                };
                for (x, y) in data(bytes, &a).iter().zip(data(&orig, &b)) {
                    if y.is_finite() {
                        assert!(
                            (f64::from(*x) - f64::from(y)).abs() <= e,
                            "step {s}: {x} vs {y}"
                        );
                    } else {
                        assert_eq!(x.to_bits(), y.to_bits(), "step {s}: NaN and inf exact");
                    }
                }
            }
        }
    };
    check(&store, &run.steps);
    let m = store.manifest().unwrap();
    let f = &m.get(80).unwrap().files;
    let model = f.iter().find(|f| f.path == "model.safetensors").unwrap();
    assert_eq!(model.lossy, Some(Bound::MaxAbsError(e)));
    assert!(f
        .iter()
        .filter(|f| f.path != "model.safetensors")
        .all(|f| f.lossy.is_none()));
    assert!(store.verify().unwrap().problems.is_empty());
    // Removing steps re-codes dependants exactly: still within the bound,
    // still marked lossy.
    store.prune(2, Some(30)).unwrap();
    let kept = store.steps().unwrap();
    assert_eq!(kept, [30, 60, 70, 80]);
    check(&store, &kept);
    let m = store.manifest().unwrap();
    assert!(m.steps.iter().all(|s| s
        .files
        .iter()
        .any(|f| f.lossy == Some(Bound::MaxAbsError(e)))));
}

#[test]
fn writing_the_same_content_again_heals_a_damaged_copy() {
    // Every step a keyframe: extra/notes.txt (the same in every step) is one
    // shared content file. Damage it, then add a step that writes it again.
    let run = Run::new(4, 10);
    let (_d, store) = new_store(&run, &run.steps[..3], 1);
    let m = store.manifest().unwrap();
    let object = |step: u64| {
        m.get(step)
            .unwrap()
            .files
            .iter()
            .find(|f| f.path == "extra/notes.txt")
            .unwrap()
            .object
            .clone()
    };
    let obj = object(30);
    assert_eq!(obj, object(10));
    let path = store
        .root()
        .join("objects")
        .join(&obj[..2])
        .join(format!("{obj}.tpde"));
    let mut bad = std::fs::read(&path).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(store.verify().unwrap().problems.len(), 3);
    store.add(&run.path(40), 40).unwrap();
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    check_steps(&store, &run, &run.steps);
}

#[test]
fn shards_coded_in_parallel_give_the_same_store_every_time() {
    // Eight shards, each changing a little from step to step: coded several
    // at a time, each against the shard of the same path.
    let run = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let mut shards: Vec<Vec<u8>> = (0..8).map(|_| rng.f32_weights(3000, 0.05)).collect();
    for step in [1u64, 2, 3] {
        let ck = run.path().join(format!("checkpoint-{step}"));
        std::fs::create_dir_all(&ck).unwrap();
        for (i, w) in shards.iter_mut().enumerate() {
            perturb_fraction(&mut rng, w, 4, 0.1);
            let file = safetensors(&[Tensor::new("w", "F32", &[3000], w.clone())], None);
            std::fs::write(ck.join(format!("model-{i:05}-of-00008.safetensors")), file).unwrap();
        }
    }
    let manifests: Vec<String> = (0..3)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::init(&dir.path().join("store"), 10).unwrap();
            for step in [1u64, 2, 3] {
                store
                    .add(&run.path().join(format!("checkpoint-{step}")), step)
                    .unwrap();
            }
            let m = store.manifest().unwrap();
            let last = m.get(3).unwrap();
            let paths: Vec<&str> = last.files.iter().map(|f| f.path.as_str()).collect();
            let mut sorted = paths.clone();
            sorted.sort_unstable();
            assert_eq!(paths, sorted);
            assert_eq!(paths.len(), 8);
            assert!(last.files.iter().all(|f| f.delta), "{:?}", last.files);
            for step in [1u64, 2, 3] {
                let r = store.restore(step).unwrap();
                for (p, bytes) in &r.files {
                    let orig = std::fs::read(run.path().join(format!("checkpoint-{step}/{p}")));
                    assert_eq!(sha256(bytes), sha256(&orig.unwrap()), "step {step} {p}");
                }
            }
            serde_json::to_string(&m).unwrap()
        })
        .collect();
    assert_eq!(manifests[0], manifests[1]);
    assert_eq!(manifests[0], manifests[2]);
}

/// Decoded files too large for memory go to memory-mapped temporary files
/// (every file here, with the threshold at 0): adding against them, getting,
/// verifying, removing and checking an original all give the same answers,
/// and no temporary file is left behind.
#[test]
fn files_decoded_to_temporary_files() {
    let run = Run::new(8, 1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), 4).unwrap();
    store.set_spill_bytes(0);
    for &s in &run.steps {
        store.add(&run.path(s), s).unwrap();
    }
    check_steps(&store, &run, &run.steps);
    // Restored into memory, every link of the chain is decoded in memory
    // whatever the threshold.
    for s in [10, 40, 80] {
        let r = store.restore(s).unwrap();
        for (path, bytes) in &r.files {
            assert!(
                *bytes == std::fs::read(run.path(s).join(path)).unwrap(),
                "{s} {path}"
            );
        }
    }
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store.check_against(30, &run.path(30)).unwrap();
    assert!(store.check_against(30, &run.path(40)).is_err());
    assert_eq!(store.remove(20).unwrap(), [30]);
    let left: Vec<u64> = run.steps.iter().copied().filter(|&s| s != 20).collect();
    check_steps(&store, &run, &left);
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}
