//! One tensor of a stored step (`Store::open_step`): the same bytes as the
//! step restored whole, at every depth of a chain, lossy steps included, for
//! a fraction of the stored bytes; clear errors for what is not there.

mod common;

use common::{perturb_fraction, safetensors, Rng, Tensor};
use tpde::codec::lossy::Bound;
use tpde::source::safetensors as st;
use tpde::store::{Checkpoint, Store};

/// Dtypes and shapes of the model: every width, an empty and a 0-d tensor.
const SPECS: &[(&str, &str, &[u64])] = &[
    ("emb.weight", "F32", &[64, 96]),
    ("big", "F32", &[128, 512]),
    ("fc.weight", "F16", &[40, 50]),
    ("fc.bias", "BF16", &[333]),
    ("norm.scale", "F64", &[77]),
    ("steps", "I64", &[5]),
    ("ids", "I32", &[9, 3]),
    ("small", "I16", &[10]),
    ("bytes", "U8", &[31]),
    ("signed", "I8", &[12]),
    ("wide", "U64", &[3]),
    ("mask", "BOOL", &[17]),
    ("fp8", "F8_E4M3", &[64]),
    ("empty", "F32", &[0, 4]),
    ("scalar", "F32", &[]),
];

fn width(dtype: &str) -> usize {
    common::coding_width(dtype)
}

/// `n` steps of a folder checkpoint `model.safetensors` + `notes.json`,
/// each a little different from the last.
fn run(n: usize, seed: u64) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let mut data: Vec<Vec<u8>> = SPECS
        .iter()
        .map(|(_, d, s)| {
            let len = common::byte_len(d, s).unwrap();
            match *d {
                "F32" => rng.f32_weights(len / 4, 0.05),
                "BOOL" => (0..len).map(|_| rng.below(2) as u8).collect(),
                _ => rng.bytes(len),
            }
        })
        .collect();
    let mut paths = Vec::new();
    for k in 0..n {
        for (v, (_, d, _)) in data.iter_mut().zip(SPECS) {
            if *d != "BOOL" {
                perturb_fraction(&mut rng, v, width(d), 0.2);
            }
        }
        let tensors: Vec<Tensor> = SPECS
            .iter()
            .zip(&data)
            .map(|((name, d, s), v)| Tensor::new(name, d, s, v.clone()))
            .collect();
        let ck = dir.path().join(format!("checkpoint-{}", k + 1));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(
            ck.join("model.safetensors"),
            safetensors(&tensors, Some(&[("step", &(k + 1).to_string())])),
        )
        .unwrap();
        std::fs::write(ck.join("notes.json"), format!("{{\"step\": {}}}\n", k + 1)).unwrap();
        paths.push(ck);
    }
    (dir, paths)
}

/// The tensors of file `path` of `step` restored whole: name -> bytes.
fn restored_tensors(store: &Store, step: u64, path: &str) -> Vec<(String, Vec<u8>)> {
    let r = store.restore(step).unwrap();
    let (_, bytes) = r.files.iter().find(|(p, _)| p == path).unwrap();
    let h = st::parse(bytes).unwrap();
    h.tensors
        .iter()
        .map(|t| {
            let s = (h.header_len + t.begin) as usize;
            (t.name.clone(), bytes[s..s + t.len() as usize].to_vec())
        })
        .collect()
}

fn stored_bytes(store: &Store, step: u64) -> u64 {
    let m = store.manifest().unwrap();
    m.get(step)
        .unwrap()
        .files
        .iter()
        .map(|f| f.stored_len)
        .sum()
}

#[test]
fn every_tensor_at_every_depth_equals_the_restored_step() {
    let (_run, paths) = run(6, 1);
    let sdir = tempfile::tempdir().unwrap();
    let store = Store::init(&sdir.path().join("s"), 4).unwrap();
    for (k, p) in paths.iter().enumerate() {
        store.add(p, k as u64 + 1).unwrap();
    }
    let m = store.manifest().unwrap();
    let depths: Vec<u32> = m.steps.iter().map(|s| s.depth).collect();
    assert_eq!(depths, [1, 2, 3, 4, 1, 2]);
    for step in 1..=6u64 {
        let depth = m.get(step).unwrap().depth as u64;
        let want = restored_tensors(&store, step, "model.safetensors");
        // The only safetensors file of the step is the default.
        let view = store.open_step(step, None).unwrap();
        assert_eq!(view.file(), "model.safetensors");
        let names: Vec<&str> = view.names();
        assert_eq!(names.len(), SPECS.len());
        assert!(view.metadata().unwrap().contains(&format!("\"{step}\"")));
        for (name, bytes) in &want {
            let info = view.tensor_info(name).unwrap();
            let spec = SPECS.iter().find(|s| s.0 == name).unwrap();
            assert_eq!(info.dtype.name(), spec.1);
            assert_eq!(info.shape, spec.2);
            let got = view.tensor(name).unwrap();
            assert!(got == *bytes, "step {step}, tensor {name}");
        }
        // One changing tensor alone: one decode per step of the chain, far
        // fewer bytes than the step's own files (and than its chain's).
        let one = store.open_step(step, Some("model.safetensors")).unwrap();
        let opened = one.stats();
        assert_eq!(opened.objects, 1);
        one.tensor("fc.weight").unwrap();
        let s = one.stats();
        assert_eq!(s.tensors, depth, "step {step}");
        assert_eq!(s.objects, 1 + depth, "step {step}");
        assert!(s.payload_bytes > 0);
        assert!(
            s.bytes() * 2 < stored_bytes(&store, step),
            "step {step}: {s:?} against {} stored bytes",
            stored_bytes(&store, step)
        );
        let whole = store.read_file(step, "model.safetensors").unwrap().1;
        assert_eq!(whole.objects, depth);
        assert!(s.bytes() * 4 < whole.bytes(), "{s:?} {whole:?}");
    }
}

#[test]
fn lossy_steps_give_the_restored_reconstruction() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(7);
    let mut w = rng.f32_weights(20_000, 0.05);
    let mut h = rng.f32_weights(3_000, 0.05);
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    for step in 1..=5u64 {
        perturb_fraction(&mut rng, &mut w, 4, 0.3);
        perturb_fraction(&mut rng, &mut h, 4, 0.3);
        let file = safetensors(
            &[
                Tensor::new("w", "F32", &[200, 100], w.clone()),
                Tensor::new("h", "F32", &[3000], h.clone()),
            ],
            None,
        );
        // Single-file steps under changing names: coded against the
        // previous step's file of another name.
        let name = format!("epoch-{step:02}.safetensors");
        let ck = Checkpoint::from_files(&name, vec![(name.clone(), file)]).unwrap();
        let ck = Checkpoint {
            kind: tpde::store::EntryKind::File,
            ..ck
        };
        let bound = (step % 2 == 0).then_some(Bound::MaxAbsError(1e-3));
        store.add_checkpoint(&ck, step, bound, &mut |_| {}).unwrap();
    }
    let m = store.manifest().unwrap();
    assert!(m.steps.iter().any(|s| s.files[0].lossy.is_some()));
    assert!(m.steps[1..].iter().all(|s| s.files[0].delta));
    for step in 1..=5u64 {
        let path = format!("epoch-{step:02}.safetensors");
        let want = restored_tensors(&store, step, &path);
        let view = store.open_step(step, None).unwrap();
        assert_eq!(view.file(), path);
        for (name, bytes) in &want {
            assert!(view.tensor(name).unwrap() == *bytes, "step {step}, {name}");
        }
        assert_eq!(view.stats().tensors, 2 * step);
    }
}

#[test]
fn missing_steps_files_and_tensors_name_the_close_ones() {
    let (_run, paths) = run(3, 2);
    let sdir = tempfile::tempdir().unwrap();
    let store = Store::init(&sdir.path().join("s"), 10).unwrap();
    for (k, p) in paths.iter().enumerate() {
        store.add(p, (k as u64 + 1) * 10).unwrap();
    }
    let e = store.open_step(25, None).unwrap_err().to_string();
    assert!(e.contains("no step 25") && e.contains("10, 20, 30"), "{e}");
    let e = store
        .open_step(20, Some("model.safetensor"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no file \"model.safetensor\"") && e.contains("\"model.safetensors\""),
        "{e}"
    );
    let e = store
        .open_step(20, Some("notes.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("opaque bytes") && e.contains("no tensors"),
        "{e}"
    );
    let view = store.open_step(20, None).unwrap();
    for e in [
        view.tensor("fc.weigth").unwrap_err(),
        view.tensor_info("fc.weigth").unwrap_err(),
    ] {
        assert!(matches!(e, tpde::Error::Store { .. }));
        let e = e.to_string();
        assert!(
            e.contains("no tensor \"fc.weigth\"") && e.contains("close names: \"fc.weight\""),
            "{e}"
        );
    }
    // Re-coded since it was opened: an error, never other bytes.
    store.remove(10).unwrap();
    let e = view.tensor("fc.weight").unwrap_err().to_string();
    assert!(e.contains("changed or removed since it was opened"), "{e}");
    let again = store.open_step(20, None).unwrap();
    assert_eq!(
        again.tensor("fc.weight").unwrap(),
        restored_tensors(&store, 20, "model.safetensors")
            .into_iter()
            .find(|t| t.0 == "fc.weight")
            .unwrap()
            .1
    );
    // A file read alone.
    let (notes, stats) = store.read_file(30, "notes.json").unwrap();
    assert_eq!(notes, b"{\"step\": 3}\n");
    assert!(stats.objects >= 1);
}

#[test]
fn several_safetensors_files_must_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = safetensors(&[Tensor::new("x", "F32", &[2], vec![0; 8])], None);
    let files = vec![
        ("a.safetensors".into(), a.clone()),
        ("b.safetensors".into(), a),
    ];
    let ck = Checkpoint::from_files("ck", files).unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    store.add_checkpoint(&ck, 1, None, &mut |_| {}).unwrap();
    let e = store.open_step(1, None).unwrap_err().to_string();
    assert!(
        e.contains("2 safetensors files: name one (a.safetensors, b.safetensors)"),
        "{e}"
    );
    let v = store.open_step(1, Some("b.safetensors")).unwrap();
    assert_eq!(v.tensor("x").unwrap(), vec![0; 8]);
}
