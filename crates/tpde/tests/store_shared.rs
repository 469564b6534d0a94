//! Steps written by several processes at once (the ranks of a distributed
//! save: `Store::plan_shared`, `code_shared` on every rank,
//! `commit_shared` on the coordinator), and byte ranges of stored files
//! (`Store::read_ranges`, what a DCP reader asks for).

mod common;

use std::time::Duration;

use common::{perturb_fraction, safetensors, sha256, Rng, Tensor};
use tpde::store::{FileRecord, SharedPlan, Store};

const DCP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dcp");

fn dcp_file(step: u32, name: &str) -> Vec<u8> {
    std::fs::read(format!("{DCP}/step-{step}/{name}")).unwrap()
}

/// The files of one DCP step of two ranks: rank 1's shards are rank 0's
/// with some elements changed (the fixtures have one rank).
fn dcp_step(step: u32, rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let r0 = dcp_file(step, "__0_0.distcp");
    let mut r1 = r0.clone();
    // Past the first archive's headers: tensor bytes.
    let at = r1.len() / 2;
    perturb_fraction(rng, &mut r1[at..at + 4096], 4, 0.1);
    vec![
        (".metadata".to_string(), dcp_file(step, ".metadata")),
        ("__0_0.distcp".to_string(), r0),
        ("__1_0.distcp".to_string(), r1),
    ]
}

/// Every rank codes its files (`kept`: the bytes each kept from its last
/// save), then the coordinator commits.
fn save_shared(
    store: &Store,
    step: u64,
    files: &[(String, Vec<u8>)],
    kept: Option<&[(String, Vec<u8>)]>,
) -> tpde::Result<tpde::store::StepRecord> {
    let plan = store.plan_shared(step)?;
    // The plan travels as JSON.
    let plan = SharedPlan::from_json(&plan.to_json())?;
    let mut records: Vec<FileRecord> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|(path, bytes)| {
                let plan = &plan;
                let k = kept.and_then(|k| k.iter().find(|(p, _)| p == path).map(|(_, b)| &b[..]));
                s.spawn(move || store.code_shared(plan, path, bytes, k, None))
            })
            .collect();
        for h in handles {
            records.push(h.join().unwrap()?);
        }
        Ok::<_, tpde::Error>(())
    })?;
    store.commit_shared(
        &plan,
        &format!("checkpoint-{step}"),
        records,
        Duration::from_secs(5),
    )
}

fn assert_restores(store: &Store, step: u64, files: &[(String, Vec<u8>)]) {
    let r = store.restore(step).unwrap();
    let mut want: Vec<(String, String)> =
        files.iter().map(|(p, b)| (p.clone(), sha256(b))).collect();
    want.sort();
    let got: Vec<(String, String)> = r
        .files
        .iter()
        .map(|(p, b)| (p.clone(), sha256(b)))
        .collect();
    assert_eq!(got, want, "step {step}");
}

fn pending_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("pending"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn shared_steps_chain_and_restore_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    let mut rng = Rng::new(1);
    let one = dcp_step(1, &mut rng);
    let two = dcp_step(2, &mut rng);
    let rec = save_shared(&store, 10, &one, None).unwrap();
    assert_eq!(rec.reference, None, "the first step is a keyframe");
    assert_eq!(rec.name, "checkpoint-10");
    // Rank 0 kept its bytes; rank 1 did not (a restart): it decodes its
    // reference from the store; the coordinator kept wrong bytes, which
    // are ignored.
    let mut kept = vec![one[1].clone()];
    kept.push((".metadata".into(), b"not what was saved".to_vec()));
    let rec = save_shared(&store, 20, &two, Some(&kept)).unwrap();
    assert_eq!(rec.reference, Some(10));
    assert_eq!(rec.depth, 2);
    for f in &rec.files {
        assert!(f.delta, "{} is not a delta", f.path);
    }
    let distcp = rec.files.iter().find(|f| f.path == "__0_0.distcp").unwrap();
    assert_eq!(distcp.coding, "torch archive");
    let key: u64 = store
        .manifest()
        .unwrap()
        .get(10)
        .unwrap()
        .files
        .iter()
        .map(|f| f.stored_len)
        .sum();
    let delta: u64 = rec.files.iter().map(|f| f.stored_len).sum();
    assert!(delta < key, "delta {delta} bytes, keyframe {key}");
    assert_restores(&store, 10, &one);
    assert_restores(&store, 20, &two);
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    assert!(pending_files(&dir.path().join("s")).is_empty());
    // A shared step stored already is refused at planning.
    let e = store.plan_shared(20).unwrap_err().to_string();
    assert!(e.contains("stored already"), "{e}");
}

#[test]
fn a_pending_object_is_left_alone_until_its_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::init(&root, 10).unwrap();
    let mut rng = Rng::new(2);
    let one = dcp_step(1, &mut rng);
    let plan = store.plan_shared(10).unwrap();
    let rec = store
        .code_shared(&plan, &one[1].0, &one[1].1, None, None)
        .unwrap();
    assert_eq!(pending_files(&root).len(), 1);
    // Another writer comes and goes meanwhile: its garbage collection
    // leaves the rank's object alone.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, rng.bytes(1000)).unwrap();
    store.add(&other, 5).unwrap();
    assert_eq!(
        pending_files(&root).len(),
        1,
        "a fresh pending object was removed"
    );
    assert!(
        !store.verify().unwrap().leftovers.is_empty(),
        "verify shows it"
    );
    store
        .commit_shared(&plan, "checkpoint-10", vec![rec], Duration::ZERO)
        .unwrap();
    assert!(pending_files(&root).is_empty());
    let r = store.restore(10).unwrap();
    assert_eq!(sha256(&r.files[0].1), sha256(&one[1].1));
    // An object of a save that never commits goes once it is old enough.
    let plan = store.plan_shared(30).unwrap();
    store
        .code_shared(&plan, &one[2].0, &one[2].1, None, None)
        .unwrap();
    assert_eq!(pending_files(&root).len(), 1);
    store.set_gc_grace(Duration::ZERO);
    store.add(&other, 40).unwrap();
    assert!(
        pending_files(&root).is_empty(),
        "a stale pending object stayed"
    );
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty() && report.leftovers.is_empty());
    assert_eq!(store.steps().unwrap(), [5, 10, 40]);
}

#[test]
fn a_commit_after_the_store_changed_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    let mut rng = Rng::new(3);
    let one = dcp_step(1, &mut rng);
    let two = dcp_step(2, &mut rng);
    save_shared(&store, 10, &one, None).unwrap();
    save_shared(&store, 20, &two, None).unwrap();
    // The reference step is removed while the ranks code.
    let plan = store.plan_shared(30).unwrap();
    assert_eq!(plan.reference, Some(20));
    let recs: Vec<FileRecord> = two
        .iter()
        .map(|(p, b)| store.code_shared(&plan, p, b, None, None).unwrap())
        .collect();
    store.remove(20).unwrap();
    let e = store
        .commit_shared(&plan, "checkpoint-30", recs, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.contains("removed or changed"), "{e}");
    assert_eq!(store.steps().unwrap(), [10]);
    // The step is stored by another writer while the ranks code.
    let plan = store.plan_shared(40).unwrap();
    let recs: Vec<FileRecord> = one
        .iter()
        .map(|(p, b)| store.code_shared(&plan, p, b, None, None).unwrap())
        .collect();
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"x").unwrap();
    store.add(&other, 40).unwrap();
    let e = store
        .commit_shared(&plan, "checkpoint-40", recs, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stored by another writer"), "{e}");
    assert_eq!(store.steps().unwrap(), [10, 40]);
    assert_restores(&store, 10, &one);
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn bad_records_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    let mut rng = Rng::new(4);
    let one = dcp_step(1, &mut rng);
    let plan = store.plan_shared(10).unwrap();
    let good = store
        .code_shared(&plan, &one[1].0, &one[1].1, None, None)
        .unwrap();
    let commit = |recs: Vec<FileRecord>| {
        store
            .commit_shared(&plan, "checkpoint-10", recs, Duration::ZERO)
            .unwrap_err()
            .to_string()
    };
    let mut escape = good.clone();
    escape.path = "../escape".into();
    assert!(commit(vec![escape]).contains("unusual path"));
    assert!(commit(vec![good.clone(), good.clone()]).contains("two records"));
    let mut missing = good.clone();
    missing.path = "other".into();
    missing.object = "0123456789abcdef0123456789abcdef".into();
    let e = commit(vec![good.clone(), missing]);
    assert!(e.contains("was the save interrupted"), "{e}");
    let mut delta = good.clone();
    delta.delta = true;
    assert!(commit(vec![delta]).contains("reference the plan does not give"));
    let mut wrong_len = good.clone();
    wrong_len.stored_len += 1;
    assert!(commit(vec![wrong_len]).contains("damaged"));
    assert!(store.steps().unwrap().is_empty());
    // The good record still commits.
    store
        .commit_shared(&plan, "checkpoint-10", vec![good], Duration::ZERO)
        .unwrap();
    assert_restores(&store, 10, &one[1..2]);
    // A path that is not relative is refused before coding.
    let plan = store.plan_shared(20).unwrap();
    assert!(store.code_shared(&plan, "/abs", b"x", None, None).is_err());
}

/// Ranges of every file of every step, checked against the restored
/// bytes: the boundaries of every part, random ranges, empty and whole.
fn check_ranges(store: &Store, step: u64, rng: &mut Rng) {
    let r = store.restore(step).unwrap();
    for (path, bytes) in &r.files {
        let n = bytes.len() as u64;
        let mut ranges = vec![(0, n), (0, 0), (n, 0), (n / 3, n / 3)];
        for _ in 0..40 {
            let a = rng.below(n + 1);
            let len = rng.below(n - a + 1);
            ranges.push((a, len));
        }
        let (got, stats) = store.read_ranges(step, path, &ranges).unwrap();
        for (&(a, len), g) in ranges.iter().zip(&got) {
            assert!(
                g[..] == bytes[a as usize..(a + len) as usize],
                "step {step}, {path}, bytes {a}+{len}"
            );
        }
        assert!(stats.objects >= 1);
        let e = store
            .read_ranges(step, path, &[(n, 1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("past its end"), "{e}");
    }
}

#[test]
fn ranges_of_deltas_are_the_restored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    let mut rng = Rng::new(5);
    // DCP files (torch archives, by offset), two levels deep.
    save_shared(&store, 10, &dcp_step(1, &mut rng), None).unwrap();
    save_shared(&store, 20, &dcp_step(2, &mut rng), None).unwrap();
    // A safetensors file and an opaque one, three levels deep.
    let mut w = rng.f32_weights(30_000, 0.05);
    let mut blob = rng.bytes(50_000);
    for step in [30, 40, 50] {
        let ck = dir.path().join(format!("ck-{step}"));
        std::fs::create_dir_all(&ck).unwrap();
        perturb_fraction(&mut rng, &mut w, 4, 0.05);
        let model = safetensors(
            &[
                Tensor::new("a", "F32", &[100, 100], w[..40_000].to_vec()),
                Tensor::new("b", "F32", &[200, 100], w[40_000..].to_vec()),
            ],
            None,
        );
        std::fs::write(ck.join("model.safetensors"), model).unwrap();
        for i in 0..200 {
            let at = rng.below(blob.len() as u64) as usize;
            blob[at] ^= i as u8 | 1;
        }
        std::fs::write(ck.join("blob.bin"), &blob).unwrap();
        store.add(&ck, step).unwrap();
    }
    let m = store.manifest().unwrap();
    assert!(m.get(50).unwrap().depth >= 3, "{:?}", m.get(50));
    assert!(m.get(50).unwrap().files.iter().all(|f| f.delta));
    for step in [10, 20, 30, 40, 50] {
        check_ranges(&store, step, &mut rng);
    }
    // One shard of a rank's file costs less than the file.
    let n = m
        .get(20)
        .unwrap()
        .files
        .iter()
        .find(|f| f.path == "__0_0.distcp")
        .unwrap()
        .len;
    let (_, whole) = store.read_ranges(20, "__0_0.distcp", &[(0, n)]).unwrap();
    let (_, part) = store
        .read_ranges(20, "__0_0.distcp", &[(n - 100, 100)])
        .unwrap();
    assert!(part.tensors < whole.tensors, "{part:?} vs {whole:?}");
    let e = store
        .read_ranges(20, "nope", &[(0, 1)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no file"), "{e}");
}
