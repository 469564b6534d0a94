//! Writes the seed corpora of the fuzz targets: valid `.tpde` files for
//! `decode` (keyframes and deltas against `tpde_fuzz::reference()`, single-
//! and multi-chunk, safetensors and opaque) and valid safetensors files for
//! `safetensors`; torch.save archives for `archive`.
//!
//! Usage: make_corpus [CORPUS_DIR]   (default: the `corpus` folder beside
//! this crate's Cargo.toml). Files are named by content, so reruns only
//! rewrite the same files.

use std::path::{Path, PathBuf};

use tpde::{EncodeOptions, InputKind};
use tpde_fuzz::{reference, reference_tensors, safetensors, values, Rng, Tensor};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus folder");
    std::fs::write(dir.join(name), bytes).expect("write a corpus file");
}

fn encode(cur: &[u8], reference: Option<&[u8]>, chunk_size: usize, input: InputKind) -> Vec<u8> {
    let opts = EncodeOptions {
        chunk_size,
        input,
        ..EncodeOptions::default()
    };
    let mut out = Vec::new();
    tpde::encode(cur, reference, &opts, &mut out, None).expect("encode a corpus file");
    // A seed that does not decode is useless: check it.
    let mut back = Vec::new();
    tpde::decode(&out, reference, &mut back, None).expect("decode a corpus file");
    assert!(back == cur, "corpus file does not round trip");
    out
}

/// Applies `f(element index, element bytes)` to every element of tensor `t`.
fn edit(tensors: &mut [Tensor], name: &str, width: usize, mut f: impl FnMut(usize, &mut [u8])) {
    let t = tensors
        .iter_mut()
        .find(|t| t.name == name)
        .expect("tensor exists");
    for (i, e) in t.data.chunks_mut(width).enumerate() {
        f(i, e);
    }
}

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let dec = root.join("decode");
    let st = root.join("safetensors");
    let rt = root.join("roundtrip");
    // torch.save archives written by torch (the test fixtures).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/tpde/tests/data");
    for (name, file) in [
        ("v2-ref.pt", "v2/ref.pt"),
        ("v2-cur.pt", "v2/cur.pt"),
        ("mixed.pt", "torch/mixed.pt"),
        ("optimizer.pt", "torch/step-2/optimizer.pt"),
        ("rng_state.pth", "torch/step-2/rng_state.pth"),
        ("deflated.zip", "torch/deflated.zip"),
    ] {
        let bytes = std::fs::read(data.join(file)).expect("read a fixture");
        write(&root.join("archive"), name, &bytes);
    }
    for v in ["v2", "v3"] {
        for name in ["key", "delta"] {
            let bytes =
                std::fs::read(data.join(format!("{v}/{name}.tpde"))).expect("read a sample");
            write(&root.join("decode"), &format!("{v}-{name}.tpde"), &bytes);
        }
    }
    let r = reference();
    let base = reference_tensors();

    // Sparse edits: a few elements of each tensor change.
    let mut sparse = base.clone();
    edit(&mut sparse, "w", 4, |i, e| {
        if i % 9 == 2 {
            let x = f32::from_le_bytes(e[..4].try_into().unwrap()) * 1.001;
            e.copy_from_slice(&x.to_le_bytes());
        }
    });
    edit(&mut sparse, "b", 2, |i, e| {
        if i == 5 || i == 30 {
            e[0] ^= 1;
        }
    });
    edit(&mut sparse, "i", 4, |i, e| {
        if i == 3 {
            e[0] = e[0].wrapping_add(1);
        }
    });
    edit(&mut sparse, "u", 1, |i, e| {
        if i % 13 == 0 {
            e[0] = e[0].wrapping_add(3);
        }
    });
    let sparse = safetensors(&sparse, true, 0);

    // Dense edits: nearly every element moves by a few ULPs.
    let mut dense = base.clone();
    let mut rng = Rng(99);
    for (name, width) in [("w", 4), ("b", 2), ("h", 2), ("d", 8), ("i", 4), ("g", 4)] {
        edit(&mut dense, name, width, |_, e| {
            let step = (rng.next_u64() % 7) as u8;
            e[0] = e[0].wrapping_add(step).wrapping_sub(3);
        });
    }
    let dense = safetensors(&dense, true, 0);

    // Training-like steps of a similar absolute size on the large tensor:
    // its planes are written grouped by the reference's exponent.
    let mut trained = base.clone();
    let mut rng = Rng(17);
    edit(&mut trained, "g", 4, |_, e| {
        let x = f32::from_le_bytes(e[..4].try_into().unwrap()) + rng.float(1e-3) as f32;
        e.copy_from_slice(&x.to_le_bytes());
    });
    let trained = safetensors(&trained, true, 0);

    // Shape and dtype changes against the reference, a missing and a new tensor.
    let mut changed = base.clone();
    changed.retain(|t| t.name != "d");
    changed[0].shape = vec![64];
    changed[1].dtype = "F16".into();
    changed.push(Tensor::new(
        "new",
        "F32",
        &[12],
        values("F32", 12, &mut Rng(5)),
    ));
    let changed = safetensors(&changed, false, 3);

    // Larger and smoother: several chunks of planes.
    let smooth: Vec<u8> = (0..96)
        .flat_map(|i| (1.0f32 + i as f32 / 1024.0).to_le_bytes())
        .collect();
    let smooth = safetensors(&[Tensor::new("s", "F32", &[96], smooth)], false, 0);

    // Weight-like floats, enough for byte planes to pay off in a keyframe.
    let weights = safetensors(
        &[Tensor::new(
            "big",
            "F32",
            &[32, 32],
            values("F32", 1024, &mut Rng(11)),
        )],
        false,
        0,
    );

    // Every third element changes: positions as a bitmap.
    let mut third = base.clone();
    let mut rng = Rng(3);
    for (name, width) in [("w", 4), ("b", 2), ("h", 2), ("i", 4), ("u", 1), ("d", 8)] {
        edit(&mut third, name, width, |i, e| {
            if i % 3 == 0 {
                e[0] ^= 1 | rng.next_u64() as u8;
            }
        });
    }
    let third = safetensors(&third, true, 0);

    let empty = safetensors(&[], false, 0);
    let opaque: Vec<u8> = r
        .iter()
        .enumerate()
        .map(|(i, &b)| if i % 50 == 7 { !b } else { b })
        .collect();

    let s = InputKind::Safetensors;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("key-ref-default", encode(r, None, 4 << 20, s)),
        ("key-ref-64", encode(r, None, 64, s)),
        ("key-sparse-64", encode(&sparse, None, 64, s)),
        ("key-smooth-64", encode(&smooth, None, 64, s)),
        ("key-empty", encode(&empty, None, 64, s)),
        ("key-weights-1024", encode(&weights, None, 1024, s)),
        ("key-weights-default", encode(&weights, None, 4 << 20, s)),
        ("delta-third-64", encode(&third, Some(r), 64, s)),
        ("delta-third-default", encode(&third, Some(r), 4 << 20, s)),
        ("delta-same-64", encode(r, Some(r), 64, s)),
        ("delta-sparse-default", encode(&sparse, Some(r), 4 << 20, s)),
        ("delta-sparse-64", encode(&sparse, Some(r), 64, s)),
        ("delta-dense-64", encode(&dense, Some(r), 64, s)),
        ("delta-dense-128", encode(&dense, Some(r), 128, s)),
        (
            "delta-trained-default",
            encode(&trained, Some(r), 4 << 20, s),
        ),
        ("delta-changed-64", encode(&changed, Some(r), 64, s)),
        (
            "opaque-key-64",
            encode(&opaque, None, 64, InputKind::Opaque),
        ),
        (
            "opaque-delta-64",
            encode(&opaque, Some(r), 64, InputKind::Opaque),
        ),
        (
            "opaque-delta-short",
            encode(&opaque[..100], Some(r), 64, InputKind::Opaque),
        ),
    ];
    for (name, bytes) in &files {
        write(&dec, &format!("{name}.tpde"), bytes);
    }
    for (name, bytes) in [
        ("ref", r),
        ("sparse", &sparse[..]),
        ("changed", &changed[..]),
        ("smooth", &smooth[..]),
        ("weights", &weights[..]),
        ("empty", &empty[..]),
    ] {
        write(&st, &format!("{name}.safetensors"), bytes);
    }
    // `header`: a u32 data length, then the JSON of a header (those of the
    // safetensors seeds, and a few written by hand).
    let hd = root.join("header");
    let mut headers = 0;
    for (name, file) in [
        ("ref", r),
        ("sparse", &sparse[..]),
        ("changed", &changed[..]),
        ("empty", &empty[..]),
    ] {
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let data_len = u32::try_from(file.len() - 8 - n).expect("a small seed");
        let mut seed = data_len.to_le_bytes().to_vec();
        seed.extend_from_slice(&file[8..8 + n]);
        write(&hd, &format!("{name}.json"), &seed);
        headers += 1;
    }
    for (k, (data_len, json)) in [
        (2u32, r#"{"a":{"dtype":"U8","dtype":"U8","shape":[2],"x":[{}],"data_offsets":[0,2]}}"#),
        (4, r#"{"b":["I16",[2],[0,4]],"__metadata__":{"k":[1e400,{"n":[]}]}}"#),
        (3, r#"{"sh\u0061pe":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]}}"#),
        (0, r#"{"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]}}"#),
    ]
    .into_iter()
    .enumerate()
    {
        let mut seed = data_len.to_le_bytes().to_vec();
        seed.extend_from_slice(json.as_bytes());
        write(&hd, &format!("hand-{k}.json"), &seed);
        headers += 1;
    }

    // `archive_large`: a byte k, the bytes; the first k once, the rest
    // repeated to 4 MiB; odd k: as the data.pkl of a zip.
    let al = root.join("archive_large");
    let eocd: &[u8] =
        b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00\x2e\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let mut local = vec![30u8];
    local.extend_from_slice(b"PK\x03\x04");
    local.extend_from_slice(&[0; 26]);
    let small_zip = tpde_fuzz::stored_zip(&[("a/data/0", &[1; 8])]);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("eocd", [&[0u8][..], eocd].concat()),
        ("local-eocd", [&local[..], eocd].concat()),
        ("pk", b"\x00PK\x05\x06".to_vec()),
        ("zips", [&[0u8][..], &small_zip].concat()),
        (
            "zip-then-eocd",
            [&[small_zip.len() as u8 & 0xfe][..], &small_zip, eocd].concat(),
        ),
        ("pickle-memo", b"\x03\x80\x02N\x94".to_vec()),
        ("pickle-mark", b"\x01N(".to_vec()),
        ("pickle-dup", b"\x01N2".to_vec()),
        ("pickle-binput", b"\x01Nq\x01r\x00\x00\x01\x00".to_vec()),
        ("pickle-storage", {
            let mut p = vec![1u8, b'N'];
            p.extend_from_slice(
                b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000K\x02t",
            );
            p
        }),
    ];
    for (name, bytes) in &seeds {
        write(&al, name, bytes);
    }

    // `roundtrip` reads its input through `arbitrary`, so any bytes make a
    // valid case; a few longer ones let it start from several sizable tensors
    // at once rather than growing its inputs from a few bytes.
    let mut rng = Rng(0x726f_756e);
    let sizes = [48, 96, 160, 256, 384, 512, 768, 1024, 1536, 2048];
    for (k, &len) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        write(&rt, &format!("random-{k:02}-{len}"), &bytes);
    }
    println!(
        "wrote {} .tpde seeds to {}, 6 safetensors seeds to {}, {} round-trip seeds to {}, \
         {headers} header seeds to {} and {} archive_large seeds to {}",
        files.len(),
        dec.display(),
        st.display(),
        sizes.len(),
        rt.display(),
        hd.display(),
        seeds.len(),
        al.display()
    );
}
