//! Which file of the reference step each file is coded against (issue 17):
//! a run saved as one file per step (`epoch-01.safetensors` after
//! `epoch-00.safetensors`) was stored as keyframes that the manifest called
//! deltas. Uses the real run shipped in examples/data/tiny.

mod common;

use std::path::{Path, PathBuf};

use common::sha256;
use tpde::codec::lossy::Bound;
use tpde::store::{Checkpoint, Store};

fn tiny(part: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/data/tiny")
        .join(part);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the shipped run in {}", dir.display());
    files
}

fn stored(store: &Store) -> u64 {
    let m = store.manifest().unwrap();
    m.steps
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.stored_len))
        .sum()
}

/// Every step restores byte for byte to `originals[i]` (one file each).
fn check_restores(store: &Store, originals: &[Vec<u8>]) {
    for (i, orig) in originals.iter().enumerate() {
        let r = store.restore(i as u64).unwrap();
        assert_eq!(sha256(&r.files[0].1), sha256(orig), "step {i}");
    }
}

#[test]
fn single_file_steps_with_other_names_are_deltas() {
    let files = tiny("weights");
    let root = tempfile::tempdir().unwrap();
    let one_by_one = Store::init(&root.path().join("files"), 10).unwrap();
    let folders = Store::init(&root.path().join("folders"), 10).unwrap();
    let mut originals = Vec::new();
    for (step, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let rec = one_by_one.add(f, step as u64).unwrap();
        let ck = Checkpoint::from_files(
            &format!("checkpoint-{step}"),
            vec![("model.safetensors".into(), bytes.clone())],
        )
        .unwrap();
        folders
            .add_checkpoint(&ck, step as u64, None, &mut |_| {})
            .unwrap();
        if step > 0 {
            assert_eq!(rec.reference, Some(step as u64 - 1), "step {step}");
            assert_eq!(rec.delta_files(), 1, "step {step}");
            let prev = files[step - 1].file_name().unwrap().to_str().unwrap();
            assert_eq!(rec.files[0].reference_path.as_deref(), Some(prev));
        }
        originals.push(bytes);
    }
    let (a, b) = (stored(&one_by_one), stored(&folders));
    let diff = (a as f64 - b as f64).abs() / b as f64;
    assert!(diff < 0.01, "one by one {a} B, as folders {b} B");
    check_restores(&one_by_one, &originals);
    assert!(one_by_one.verify().unwrap().problems.is_empty());
    // Removing a step re-codes the next against its reference, renamed.
    one_by_one.remove(1).unwrap();
    let m = one_by_one.manifest().unwrap();
    assert_eq!(m.get(2).unwrap().reference, Some(0));
    assert!(one_by_one.verify().unwrap().problems.is_empty());
    assert_eq!(m.version, 2, "a renamed reference needs manifest version 2");
}

#[test]
fn renamed_shards_and_step_numbered_files_in_folders_are_matched() {
    let files = tiny("weights");
    let adam = tiny("adam");
    let root = tempfile::tempdir().unwrap();
    let store = Store::init(&root.path().join("s"), 10).unwrap();
    let mut folders = Vec::new();
    for step in 0..3u64 {
        let g = (step + 1) * 100;
        let ck = root.path().join(format!("in/global_step{g}"));
        let add = |rel: String, from: &Path| {
            let p = ck.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::copy(from, &p).unwrap();
        };
        add(
            format!("model-step{g}-00001-of-00002.safetensors"),
            &files[step as usize],
        );
        add(
            format!("model-step{g}-00002-of-00002.safetensors"),
            &files[step as usize + 1],
        );
        add(
            format!("global_step{g}/optim_states.safetensors"),
            &adam[step.min(adam.len() as u64 - 1) as usize],
        );
        std::fs::write(ck.join("latest"), format!("global_step{g}\n")).unwrap();
        let rec = store.add(&ck, step).unwrap();
        if step > 0 {
            assert_eq!(rec.reference, Some(step - 1));
            for f in &rec.files {
                if f.path.ends_with(".safetensors") {
                    assert!(f.delta, "step {step}: {} is a delta", f.path);
                    let r = f.reference_path.as_deref().unwrap();
                    let want = f.path.replace(&g.to_string(), &(g - 100).to_string());
                    assert_eq!(r, want, "step {step}: {}", f.path);
                }
            }
        }
        folders.push(ck);
    }
    for (step, ck) in folders.iter().enumerate() {
        let out = root.path().join(format!("out-{step}"));
        store.get(step as u64, &out).unwrap();
        assert_eq!(common::tree(&out), common::tree(ck), "step {step}");
    }
}

#[test]
fn a_step_with_nothing_to_match_is_a_keyframe() {
    let files = tiny("weights");
    let root = tempfile::tempdir().unwrap();
    let store = Store::init(&root.path().join("s"), 10).unwrap();
    let bytes = |i: usize| std::fs::read(&files[i]).unwrap();
    let ck = |name: &str, files: Vec<(&str, Vec<u8>)>| {
        let files = files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
        Checkpoint::from_files(name, files).unwrap()
    };
    store
        .add_checkpoint(
            &ck("a", vec![("model.safetensors", bytes(0))]),
            1,
            None,
            &mut |_| {},
        )
        .unwrap();
    // No file of step 2 has a partner in step 1.
    let rec = store
        .add_checkpoint(
            &ck(
                "b",
                vec![("w.safetensors", bytes(1)), ("x.json", b"{}".to_vec())],
            ),
            2,
            None,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(rec.reference, None);
    assert_eq!(rec.depth, 1);
    // A partner with nothing in common (no tensor of the same name, dtype
    // and shape) is not used either: still a keyframe, honestly recorded.
    let other = common::safetensors(
        &[common::Tensor::new("other", "F32", &[3], vec![0u8; 12])],
        None,
    );
    let rec = store
        .add_checkpoint(
            &ck(
                "c",
                vec![("w.safetensors", other), ("x.json", b"{}".to_vec())],
            ),
            3,
            None,
            &mut |_| {},
        )
        .unwrap();
    let w = rec
        .files
        .iter()
        .find(|f| f.path == "w.safetensors")
        .unwrap();
    assert!(!w.delta, "nothing in common with its partner");
    assert_eq!(rec.reference.is_some(), rec.delta_files() > 0);
    let m = store.manifest().unwrap();
    assert!(m.get(2).unwrap().reference.is_none());
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn lossy_single_file_chains_keep_the_bound() {
    let files = tiny("weights");
    let root = tempfile::tempdir().unwrap();
    let store = Store::init(&root.path().join("s"), 10).unwrap();
    let e = 1e-3;
    for (step, f) in files.iter().enumerate() {
        let ck = Checkpoint::from_path(f).unwrap();
        let rec = store
            .add_checkpoint(&ck, step as u64, Some(Bound::MaxAbsError(e)), &mut |_| {})
            .unwrap();
        if step > 0 {
            assert_eq!(rec.delta_files(), 1, "step {step} is a delta");
        }
    }
    for (step, f) in files.iter().enumerate() {
        let orig = std::fs::read(f).unwrap();
        let got = &store.restore(step as u64).unwrap().files[0].1;
        let h = tpde::source::safetensors::parse(&orig).unwrap();
        assert_eq!(got[..h.header_len as usize], orig[..h.header_len as usize]);
        let floats = |b: &[u8]| -> Vec<f32> {
            b[h.header_len as usize..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        for (x, y) in floats(got).iter().zip(floats(&orig)) {
            assert!(
                (f64::from(*x) - f64::from(y)).abs() <= e,
                "step {step}: {x} vs {y}"
            );
        }
    }
}
