//! `Store::diff` and `Store::report` on synthetic steps with known changes.

use tpde::source::safetensors::{write, TensorData};
use tpde::store::{Checkpoint, DiffKind, DiffSort, StepDiff, Store, TensorDiff};

/// `n` pseudo-random finite f32 values.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

struct Step {
    w: Vec<f32>,
    count: Vec<i64>,
    mask: Vec<u8>,
    half: Vec<u16>,
}

const N: usize = 100_000;

fn step_a() -> Step {
    Step {
        w: values(N, 1),
        count: vec![1, 2, 3],
        mask: vec![0, 1, 0, 1],
        // bf16 1.0, 2.0, -1.0, 0.5
        half: vec![0x3f80, 0x4000, 0xbf80, 0x3f00],
    }
}

/// Step B: 1000 elements of `w` (every 100th) moved by +0.25, one of
/// `count` by +5, one of `mask` flipped, one bf16 from 2.0 to 3.0.
fn step_b() -> Step {
    let mut s = step_a();
    for i in (0..N).step_by(100) {
        s.w[i] += 0.25;
    }
    s.count[1] = 7;
    s.mask[0] = 1;
    s.half[1] = 0x4040;
    s
}

fn files(s: &Step, a: bool) -> Vec<(String, Vec<u8>)> {
    let w = le(&s.w, f32::to_le_bytes);
    let bias = le(&[0.5f32; 10], f32::to_le_bytes);
    let count = le(&s.count, i64::to_le_bytes);
    let half = le(&s.half, u16::to_le_bytes);
    let odd = le(&[1.0f32, 2.0], f32::to_le_bytes);
    let mut t = vec![
        TensorData {
            name: "layers.0.w",
            dtype: "F32",
            shape: &[N as u64],
            data: &w,
        },
        TensorData {
            name: "layers.0.bias",
            dtype: "F32",
            shape: &[10],
            data: &bias,
        },
        TensorData {
            name: "count",
            dtype: "I64",
            shape: &[3],
            data: &count,
        },
        TensorData {
            name: "mask",
            dtype: "BOOL",
            shape: &[4],
            data: &s.mask,
        },
        TensorData {
            name: "head.half",
            dtype: "BF16",
            shape: &[4],
            data: &half,
        },
        TensorData {
            name: "odd</script>.w",
            dtype: "F32",
            shape: &[2],
            data: &odd,
        },
    ];
    let four = le(&[1.0f32, 2.0, 3.0, 4.0], f32::to_le_bytes);
    if a {
        t.push(TensorData {
            name: "gone",
            dtype: "F32",
            shape: &[1],
            data: &four[..4],
        });
        t.push(TensorData {
            name: "reshaped",
            dtype: "F32",
            shape: &[2, 2],
            data: &four,
        });
    } else {
        t.push(TensorData {
            name: "new",
            dtype: "F32",
            shape: &[1],
            data: &four[..4],
        });
        t.push(TensorData {
            name: "reshaped",
            dtype: "F32",
            shape: &[4],
            data: &four,
        });
    }
    vec![
        ("model.safetensors".into(), write(&t, None).unwrap()),
        ("config.json".into(), b"{}".to_vec()),
        (
            "notes.txt".into(),
            if a { b"one".to_vec() } else { b"two".to_vec() },
        ),
    ]
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("s"), 10).unwrap();
    for (step, s, a) in [(1, step_a(), true), (2, step_b(), false)] {
        let ck = Checkpoint::from_files(&format!("checkpoint-{step}"), files(&s, a)).unwrap();
        store.add_checkpoint(&ck, step, None, &mut |_| {}).unwrap();
    }
    (dir, store)
}

fn get<'a>(d: &'a StepDiff, name: &str) -> &'a TensorDiff {
    d.tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", d.tensors))
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-12 * y.abs().max(1e-300)
}

#[test]
fn a_step_against_itself_changes_nothing() {
    let (_d, store) = store();
    let d = store.diff(2, 2).unwrap();
    assert!(!d.tensors.is_empty());
    for t in &d.tensors {
        assert_eq!(t.kind, DiffKind::Compared, "{t:?}");
        assert_eq!(t.changed, 0, "{t:?}");
        assert_eq!(t.changed_fraction, Some(0.0));
        assert_eq!(t.max_abs, Some(0.0));
        assert_eq!(t.rms, Some(0.0));
        assert!(t.rel == Some(0.0) || !t.is_float(), "{t:?}");
    }
    assert!(d.files.iter().all(|f| f.identical));
}

#[test]
fn known_changes_are_counted_exactly() {
    let (_d, store) = store();
    let d = store.diff(1, 2).unwrap();
    assert!(d.b_coded_against_a);

    let (a, b) = (step_a(), step_b());
    let w = get(&d, "layers.0.w");
    assert_eq!(w.kind, DiffKind::Compared);
    assert_eq!((w.elements, w.changed), (N as u64, 1000));
    assert!(
        w.changed_from_store,
        "the store's counts are exact here: {w:?}"
    );
    let (mut max, mut ssd, mut ssa) = (0f64, 0f64, 0f64);
    for (x, y) in a.w.iter().zip(&b.w) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        max = max.max((y - x).abs());
        ssd += (y - x) * (y - x);
        ssa += x * x;
    }
    assert!(close(w.max_abs.unwrap(), max), "{w:?}");
    assert!(close(w.rms.unwrap(), (ssd / N as f64).sqrt()), "{w:?}");
    assert!(close(w.rel.unwrap(), (ssd / ssa).sqrt()), "{w:?}");
    // +0.25 in f32 moves each value by about 0.25.
    assert!((max - 0.25).abs() < 1e-6);

    let bias = get(&d, "layers.0.bias");
    assert_eq!(
        (bias.changed, bias.max_abs, bias.rel),
        (0, Some(0.0), Some(0.0))
    );

    let count = get(&d, "count");
    assert_eq!((count.elements, count.changed), (3, 1));
    assert_eq!(count.max_abs, Some(5.0));
    assert!(close(count.rms.unwrap(), (25.0f64 / 3.0).sqrt()));
    assert_eq!(count.rel, None, "no relative change for integers");

    let mask = get(&d, "mask");
    assert_eq!((mask.changed, mask.max_abs), (1, Some(1.0)));
    assert_eq!(mask.rms, Some(0.5));

    let half = get(&d, "head.half");
    assert_eq!((half.changed, half.max_abs), (1, Some(1.0)));
    // ||a||^2 = 1 + 4 + 1 + 0.25
    assert!(close(half.rel.unwrap(), (1.0f64 / 6.25).sqrt()));

    assert_eq!(get(&d, "gone").kind, DiffKind::Removed);
    assert_eq!(get(&d, "new").kind, DiffKind::Added);
    let r = get(&d, "reshaped");
    assert_eq!(r.kind, DiffKind::ChangedLayout);
    assert_eq!(r.before, Some(("F32".into(), vec![2, 2])));
    assert_eq!(r.shape, vec![4]);

    let file = |p: &str| d.files.iter().find(|f| f.b.as_deref() == Some(p)).unwrap();
    assert!(file("config.json").identical && !file("config.json").tensors);
    assert!(!file("notes.txt").identical);
    assert!(file("model.safetensors").tensors);

    // The other way round: the same numbers, counted from the values.
    let back = store.diff(2, 1).unwrap();
    let wb = get(&back, "layers.0.w");
    assert_eq!(wb.changed, 1000);
    assert!(!wb.changed_from_store);
    assert!(close(wb.max_abs.unwrap(), max));
    assert_eq!(get(&back, "gone").kind, DiffKind::Added);
}

#[test]
fn sorting() {
    let (_d, store) = store();
    let mut d = store.diff(1, 2).unwrap();
    // By relative change: layout changes first, then the largest change.
    let first_compared = d
        .tensors
        .iter()
        .position(|t| t.kind == DiffKind::Compared)
        .unwrap();
    assert_eq!(first_compared, 3);
    assert_eq!(d.tensors[first_compared].name, "head.half");
    d.sort(DiffSort::Name);
    let names: Vec<&str> = d.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    d.sort(DiffSort::Changed);
    assert_eq!(d.tensors[3].name, "count"); // 1 of 3
    assert!("bogus".parse::<DiffSort>().is_err());
    assert!(store
        .diff(1, 3)
        .unwrap_err()
        .to_string()
        .contains("no step 3"));
}

#[test]
fn report_adds_groups_up() {
    let (_d, store) = store();
    let r = store.report().unwrap();
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.steps[0].frame, "keyframe");
    assert_eq!(r.steps[1].frame, "delta");
    assert_eq!(r.pairs.len(), 1);
    let p = &r.pairs[0];
    assert_eq!((p.a, p.b), (1, 2));
    let layer = p.cells.iter().find(|c| c.group == "layers.0").unwrap();
    assert_eq!((layer.elements, layer.changed), (N as u64 + 10, 1000));
    // layers.0.w's counts come from the store, but the small bias is stored
    // whole (its chunk is not a delta): counted from its values.
    assert!(!layer.changed_from_store);
    let d = store.diff(1, 2).unwrap();
    let w = get(&d, "layers.0.w");
    let bias = get(&d, "layers.0.bias");
    let rel = ((w.sum_sq_diff + bias.sum_sq_diff) / (w.sum_sq_a + bias.sum_sq_a)).sqrt();
    assert!(close(layer.rel_change.unwrap(), rel));
    assert_eq!(p.total.layout_changes, 3); // gone, new, reshaped
    assert!(r.groups.contains(&"count".to_string()));

    let html = r.html().unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(!html.contains("/*TPDE_DATA*/"));
    // A tensor's name cannot end the script that holds the data.
    assert_eq!(html.matches("</script>").count(), 2, "{html}");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "nothing fetched"
    );
    let csv = r.csv();
    assert_eq!(csv.lines().count(), 1 + 1 + 1 + p.cells.len());
    assert!(csv.contains(",odd</script>,"), "{csv}");
    let json: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
    assert_eq!(json["pairs"][0]["b"], 2);
}
