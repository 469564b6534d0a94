//! Files larger than one batch (the window of the input coded at once) are
//! coded in several passes: duplicates across batches, the output digest fed
//! batch by batch, the lossy reconstructions of duplicates and memory-mapped
//! inputs whose pages are let go of must all give back the exact file.

mod common;

use common::{safetensors, sha256, Rng, Tensor};
use tpde::codec::lossy::Bound;
use tpde::EncodeOptions;

/// 40 MB of F32 in four tensors, the third a copy of the first (a duplicate
/// two batches later), and its reference with 30% of the elements moved.
fn pair() -> (Vec<u8>, Vec<u8>, Vec<Tensor>) {
    let mut rng = Rng::new(7);
    let n = 2_500_000; // 10 MB per tensor: more than the 16 MiB batch in all
    let a = rng.f32_weights(n, 0.02);
    let b = rng.f32_weights(n, 0.02);
    let d = rng.f32_weights(n, 1.0);
    let reference = vec![
        Tensor::new("a", "F32", &[n as u64], a.clone()),
        Tensor::new("b", "F32", &[n as u64], b.clone()),
        Tensor::new("c", "F32", &[n as u64], a.clone()),
        Tensor::new("d", "F32", &[n as u64], d),
    ];
    let mut cur = reference.clone();
    let mut moved = a;
    common::perturb_fraction(&mut rng, &mut moved, 4, 0.3);
    cur[0].data = moved.clone();
    cur[2].data = moved;
    common::perturb_fraction(&mut rng, &mut cur[1].data, 4, 0.3);
    (safetensors(&cur, None), safetensors(&reference, None), cur)
}

fn opts(lossy: Option<Bound>) -> EncodeOptions {
    EncodeOptions {
        chunk_size: 1 << 20,
        lossy,
        ..EncodeOptions::default()
    }
}

#[test]
fn several_batches_with_duplicates_round_trip() {
    let (cur, reference, _) = pair();
    let packed = common::roundtrip(&cur, Some(&reference), &opts(None));
    // The copy's chunks share the first copy's payloads.
    let c = tpde::container::format::Container::open(&packed).unwrap();
    let offsets = |name: &str| -> Vec<u64> {
        let t = c.tensors.iter().find(|t| t.info.name == name).unwrap();
        t.entry.chunks.iter().map(|e| e.payload_offset).collect()
    };
    assert_eq!(offsets("a"), offsets("c"));
    assert_ne!(offsets("a"), offsets("b"));
}

#[test]
fn several_batches_lossy_with_duplicates() {
    let (cur, reference, tensors) = pair();
    let mut packed = Vec::new();
    let stats = tpde::encode(
        &cur,
        Some(&reference),
        &opts(Some(Bound::MaxAbsError(1e-4))),
        &mut packed,
        None,
    )
    .unwrap();
    let out = common::decode(&packed, Some(&reference)).unwrap();
    assert_eq!(tpde::container::format::digest(&out), stats.output_digest);
    assert_ne!(out, cur, "the lossy output is not the original");
    // Both copies decode to the same reconstruction, within the bound.
    let hl = cur.len() - tensors.iter().map(|t| t.data.len()).sum::<usize>();
    let n = tensors[0].data.len();
    let (a, c) = (&out[hl..hl + n], &out[hl + 2 * n..hl + 3 * n]);
    assert_eq!(a, c);
    for (x, y) in a.chunks_exact(4).zip(tensors[0].data.chunks_exact(4)) {
        let (x, y) = (
            f32::from_le_bytes(x.try_into().unwrap()),
            f32::from_le_bytes(y.try_into().unwrap()),
        );
        if y.is_finite() {
            assert!((f64::from(x) - f64::from(y)).abs() <= 1e-4, "{x} vs {y}");
        } else {
            assert_eq!(x.to_bits(), y.to_bits(), "NaN and infinities stay exact");
        }
    }
}

#[test]
fn mapped_files_round_trip() {
    let (cur, reference, _) = pair();
    let dir = tempfile::tempdir().unwrap();
    let (c, r, p, o) = (
        dir.path().join("cur.safetensors"),
        dir.path().join("ref.safetensors"),
        dir.path().join("cur.tpde"),
        dir.path().join("out.safetensors"),
    );
    std::fs::write(&c, &cur).unwrap();
    std::fs::write(&r, &reference).unwrap();
    let stats = tpde::container::files::encode_file(&c, Some(&r), &p, &opts(None), None).unwrap();
    assert!(stats.reference_used);
    tpde::container::files::decode_file(&p, Some(&r), &o, None).unwrap();
    assert_eq!(sha256(&std::fs::read(&o).unwrap()), sha256(&cur));
    // The inputs are untouched by letting go of their pages.
    assert_eq!(sha256(&std::fs::read(&c).unwrap()), sha256(&cur));
    assert_eq!(sha256(&std::fs::read(&r).unwrap()), sha256(&reference));
}
