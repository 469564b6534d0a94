//! `tpde store get STORE STEP --tensor NAME -o OUT.npy|OUT.safetensors`.

use std::path::Path;
use std::process::{Command, Output};

use tpde::source::safetensors::{self as st, TensorData};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tpde"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running tpde")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "tpde {args:?} failed:\n{out}\n{err}");
    out.into_owned()
}

fn fails(dir: &Path, args: &[&str], needle: &str) -> String {
    let o = run(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "tpde {args:?}: {err}");
    assert!(
        err.contains(needle),
        "tpde {args:?}: {err} should say {needle:?}"
    );
    err
}

/// Step `k` of a run: an F32 matrix that drifts, a BF16 vector, a 0-d I64.
fn step_file(k: u32) -> (Vec<u8>, Vec<u8>) {
    let w: Vec<u8> = (0..600u32)
        .flat_map(|i| (i as f32 * 0.01 + k as f32 * (i % 7) as f32 * 1e-4).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..10u16)
        .flat_map(|i| (0x3f80 + i + k as u16).to_le_bytes())
        .collect();
    let n = (k as i64 * 100).to_le_bytes();
    let file = st::write(
        &[
            TensorData {
                name: "layer.weight",
                dtype: "F32",
                shape: &[20, 30],
                data: &w,
            },
            TensorData {
                name: "layer.bias",
                dtype: "BF16",
                shape: &[10],
                data: &b,
            },
            TensorData {
                name: "count",
                dtype: "I64",
                shape: &[],
                data: &n,
            },
        ],
        None,
    )
    .unwrap();
    (file, w)
}

/// The header text and data of a .npy file.
fn npy(bytes: &[u8]) -> (&str, &[u8]) {
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let n = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + n) % 64, 0);
    (
        std::str::from_utf8(&bytes[10..10 + n]).unwrap(),
        &bytes[10 + n..],
    )
}

#[test]
fn one_tensor_to_npy_and_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(dir, &["store", "init", "s", "--keyframe-every", "4"]);
    let mut last = Vec::new();
    for k in 1..=3 {
        let (file, w) = step_file(k);
        let ck = dir.join(format!("ck-{k}"));
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join("model.safetensors"), &file).unwrap();
        std::fs::write(ck.join("other.safetensors"), &file).unwrap();
        std::fs::write(ck.join("notes.txt"), b"hello").unwrap();
        ok(
            dir,
            &[
                "store",
                "add",
                "s",
                ck.to_str().unwrap(),
                "--step",
                &k.to_string(),
            ],
        );
        last = w;
    }
    // Two safetensors files: --file picks one.
    fails(
        dir,
        &[
            "store",
            "get",
            "s",
            "3",
            "--tensor",
            "layer.weight",
            "-o",
            "w.npy",
        ],
        "name one (model.safetensors, other.safetensors)",
    );
    let get = |extra: &[&str]| {
        let mut a = vec!["store", "get", "s", "3", "--file", "model.safetensors"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = get(&["--tensor", "layer.weight", "-o", "w.npy"]);
    let out = ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("layer.weight F32 [20, 30] -> w.npy"), "{out}");
    assert!(out.contains("read "), "{out}");
    let bytes = std::fs::read(dir.join("w.npy")).unwrap();
    let (header, data) = npy(&bytes);
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (20, 30)"));
    assert_eq!(data, &last[..]);
    // 0-d, to npy; then to safetensors.
    let args = get(&["--tensor", "count", "-o", "n.npy"]);
    ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let bytes = std::fs::read(dir.join("n.npy")).unwrap();
    let (header, data) = npy(&bytes);
    assert!(header.contains("'descr': '<i8'") && header.contains("'shape': ()"));
    assert_eq!(data, 300i64.to_le_bytes());
    let args = get(&["--tensor", "layer.bias", "-o", "b.safetensors"]);
    ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let bytes = std::fs::read(dir.join("b.safetensors")).unwrap();
    let h = st::parse(&bytes).unwrap();
    assert_eq!(h.tensors.len(), 1);
    assert_eq!(h.tensors[0].name, "layer.bias");
    assert_eq!(h.tensors[0].dtype.name(), "BF16");
    assert_eq!(h.tensors[0].shape, [10]);
    let (file, _) = step_file(3);
    let want = st::parse(&file).unwrap();
    let wt = want.get("layer.bias").unwrap();
    let s = (want.header_len + wt.begin) as usize;
    let got = (h.header_len + h.tensors[0].begin) as usize;
    assert_eq!(bytes[got..got + 20], file[s..s + 20]);
    // BF16 has no numpy dtype: refused, with the way out, and nothing written.
    let args = get(&["--tensor", "layer.bias", "-o", "b.npy"]);
    fails(
        dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "-o b.safetensors instead",
    );
    assert!(!dir.join("b.npy").exists());
    // An existing output needs --force; a wrong name names the close ones.
    let args = get(&["--tensor", "layer.weight", "-o", "w.npy"]);
    fails(
        dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "--force",
    );
    let args = get(&["--tensor", "layer.weight", "-o", "w.npy", "-f"]);
    ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = get(&["--tensor", "layer.wieght", "-o", "x.npy"]);
    fails(
        dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "close names: \"layer.weight\"",
    );
    // Other outputs, files and steps.
    let args = get(&["--tensor", "layer.weight", "-o", "w.bin"]);
    fails(
        dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ".npy or a .safetensors",
    );
    fails(
        dir,
        &[
            "store",
            "get",
            "s",
            "3",
            "--file",
            "notes.txt",
            "--tensor",
            "x",
            "-o",
            "x.npy",
        ],
        "opaque bytes",
    );
    fails(
        dir,
        &["store", "get", "s", "7", "--tensor", "x", "-o", "x.npy"],
        "no step 7",
    );
    fails(
        dir,
        &["store", "get", "s", "3", "--file", "model.safetensors"],
        "--tensor",
    );
}
