//! The `tpde` binary end to end: round trips, inspect, bench, and errors
//! (exit code 2, a message naming the problem, no output file left behind,
//! inputs never overwritten).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
}

/// A safetensors file of F32 tensors (name, values), header padded with
/// spaces to a multiple of 8, data in the given order.
fn safetensors(tensors: &[(&str, Vec<f32>)]) -> Vec<u8> {
    let mut entries = vec![r#""__metadata__":{"format":"pt"}"#.to_string()];
    let mut offset = 0;
    for (name, values) in tensors {
        let end = offset + 4 * values.len();
        entries.push(format!(
            r#""{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{offset},{end}]}}"#,
            values.len()
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    for (_, values) in tensors {
        for v in values {
            file.extend_from_slice(&v.to_le_bytes());
        }
    }
    file
}

/// Checkpoint `step` of a tiny "training run": weights drift a little each step.
fn checkpoint(step: u32) -> Vec<u8> {
    let mut seed = 0x1234_5678u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut w: Vec<f32> = (0..3000)
        .map(|_| (next() % 20001) as f32 / 1e6 - 0.01)
        .collect();
    let b: Vec<f32> = (0..64).map(|i| i as f32 * 0.5 + step as f32).collect();
    for s in 1..=step {
        for (i, x) in w.iter_mut().enumerate() {
            if (i as u32 + s).is_multiple_of(7) {
                *x += 1e-5 * s as f32;
            }
        }
    }
    safetensors(&[("layer.weight", w), ("layer.bias", b)])
}

fn tpde() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tpde"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    tpde()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running tpde")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "tpde {args:?} failed ({:?}):\n{out}\n{err}",
        o.status
    );
    out
}

/// Names in a folder.
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs a command that must fail: exit code 2, "tpde: error:" with `needles`
/// (any one of them, case-insensitively) on stderr, `output` not created, and
/// nothing else left in the folder.
fn fails(dir: &Path, args: &[&str], needles: &[&str], output: Option<&str>) -> String {
    let before = listing(dir);
    let o = run(dir, args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "tpde {args:?} should exit with 2:\n{out}\n{err}"
    );
    assert!(err.contains("tpde: error:"), "{err}");
    let lower = err.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "tpde {args:?}: stderr should mention one of {needles:?}:\n{err}"
    );
    if let Some(out_path) = output {
        assert!(
            !dir.join(out_path).exists(),
            "tpde {args:?} left its output {out_path} behind"
        );
    }
    assert_eq!(
        listing(dir),
        before,
        "tpde {args:?} left files behind (temporary files?)"
    );
    err
}

struct Setup {
    dir: TempDir,
}

impl Setup {
    /// A folder with three checkpoints.
    fn new() -> Setup {
        let dir = TempDir::new().unwrap();
        for step in [1, 2, 3] {
            std::fs::write(
                dir.path().join(format!("ckpt-{step}.safetensors")),
                checkpoint(step),
            )
            .unwrap();
        }
        Setup { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tpde encode ckpt-2.safetensors --ref ckpt-1.safetensors -o OUT`,
    /// which must succeed; returns what it printed.
    fn encode_delta(&self, out: &str) -> String {
        ok(
            self.path(),
            &[
                "encode",
                "ckpt-2.safetensors",
                "--ref",
                "ckpt-1.safetensors",
                "-o",
                out,
            ],
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn keyframe_round_trip() {
    let s = Setup::new();
    let out = ok(
        s.path(),
        &["encode", "ckpt-1.safetensors", "-o", "ckpt-1.tpde"],
    );
    assert!(out.contains("keyframe"), "{out}");
    assert!(out.contains("ratio"), "{out}");
    let out = ok(
        s.path(),
        &["decode", "ckpt-1.tpde", "-o", "back.safetensors"],
    );
    assert!(out.contains("verified"), "{out}");
    assert_eq!(
        sha256_file(&s.file("back.safetensors")),
        sha256_file(&s.file("ckpt-1.safetensors"))
    );
}

#[test]
fn delta_round_trip() {
    let s = Setup::new();
    let out = s.encode_delta("ckpt-2.tpde");
    assert!(out.contains("delta"), "{out}");
    assert!(out.contains("changed elements"), "{out}");
    ok(
        s.path(),
        &[
            "decode",
            "ckpt-2.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "back.safetensors",
        ],
    );
    assert_eq!(
        sha256_file(&s.file("back.safetensors")),
        sha256_file(&s.file("ckpt-2.safetensors"))
    );
    // The delta is smaller than the keyframe.
    ok(
        s.path(),
        &["encode", "ckpt-2.safetensors", "-o", "key.tpde"],
    );
    let delta = std::fs::metadata(s.file("ckpt-2.tpde")).unwrap().len();
    let key = std::fs::metadata(s.file("key.tpde")).unwrap().len();
    assert!(delta < key, "delta {delta} bytes, keyframe {key} bytes");
    // Absolute paths and coding options work too.
    let abs_out = s.file("abs.tpde");
    ok(
        s.path(),
        &[
            "encode",
            s.file("ckpt-3.safetensors").to_str().unwrap(),
            "--ref",
            s.file("ckpt-2.safetensors").to_str().unwrap(),
            "-o",
            abs_out.to_str().unwrap(),
            "--level",
            "1",
            "--chunk-kib",
            "1",
            "-j",
            "1",
        ],
    );
    ok(
        s.path(),
        &[
            "decode",
            abs_out.to_str().unwrap(),
            "--ref",
            "ckpt-2.safetensors",
            "-o",
            "back3.safetensors",
        ],
    );
    assert_eq!(
        sha256_file(&s.file("back3.safetensors")),
        sha256_file(&s.file("ckpt-3.safetensors"))
    );
}

#[test]
fn inspect_lists_tensors() {
    let s = Setup::new();
    s.encode_delta("d.tpde");
    ok(s.path(), &["encode", "ckpt-1.safetensors", "-o", "k.tpde"]);
    for f in ["d.tpde", "k.tpde"] {
        let out = ok(s.path(), &["inspect", f]);
        for needle in ["layer.weight", "layer.bias", "ratio", "F32"] {
            assert!(out.contains(needle), "inspect {f}: no {needle:?} in\n{out}");
        }
    }
    let out = ok(s.path(), &["inspect", "k.tpde"]);
    assert!(out.contains("keyframe"), "{out}");
}

/// `inspect --plan`: what encode would code against what, before coding.
#[test]
fn inspect_plans_an_encode() {
    let s = Setup::new();
    let out = ok(
        s.path(),
        &[
            "inspect",
            "--plan",
            "ckpt-2.safetensors",
            "--ref",
            "ckpt-1.safetensors",
        ],
    );
    for needle in [
        "read as safetensors",
        "layer.weight",
        "layer.bias",
        "same name",
        "12.3 kB of 12.4 kB coded against it",
        "(2 tensors)",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    let out = ok(s.path(), &["inspect", "--plan", "ckpt-2.safetensors"]);
    assert!(out.contains("reference: none (a keyframe)"), "{out}");
    assert!(out.contains("nothing"), "{out}");
    // As bytes, in chunks of 1 KiB, lossy: a bound is shown per tensor.
    let out = ok(
        s.path(),
        &[
            "inspect",
            "--plan",
            "ckpt-2.safetensors",
            "--ref",
            "ckpt-1.safetensors",
            "--as",
            "bytes",
            "--chunk-kib",
            "1",
        ],
    );
    assert!(out.contains("read as opaque bytes"), "{out}");
    assert!(out.contains("chunks:    13 of up to 1 KiB"), "{out}");
    let out = ok(
        s.path(),
        &[
            "inspect",
            "--plan",
            "ckpt-2.safetensors",
            "--max-abs-error",
            "0.001",
        ],
    );
    assert!(out.contains("bound") && out.contains("1.000e-3"), "{out}");
    // The options of a plan need --plan (a usage error of clap's).
    let o = run(
        s.path(),
        &["inspect", "ckpt-2.safetensors", "--as", "bytes"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--plan"), "{}", text(&o).1);
}

#[test]
fn a_closed_output_pipe_is_not_a_crash() {
    // `tpde inspect f | head -1`: the reader is gone before tpde writes.
    let s = Setup::new();
    ok(s.path(), &["encode", "ckpt-1.safetensors", "-o", "k.tpde"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = tpde()
        .current_dir(s.path())
        .args(["inspect", "k.tpde"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_table_and_json() {
    let s = Setup::new();
    // A file that is not a checkpoint is ignored.
    std::fs::write(s.file("notes.txt"), "hello").unwrap();
    let out = ok(s.path(), &["bench", "."]);
    assert!(out.contains("ratio"), "{out}");
    for step in [1, 2, 3] {
        assert!(out.contains(&format!("ckpt-{step}.safetensors")), "{out}");
    }
    // The keyframe's changed column (the sizes table's last).
    assert!(
        out.lines()
            .any(|l| l.starts_with("ckpt-1.safetensors") && l.trim_end().ends_with(" key")),
        "{out}"
    );
    // The sizes table's and the speeds table's columns.
    for col in [
        "zstd-3",
        "zstd-1",
        "lz4",
        "vs zstd-3",
        "enc",
        "dec",
        "lz4 c",
        "lz4 d",
    ] {
        assert!(out.contains(col), "{col}: {out}");
    }
    assert!(out.contains("speeds"), "{out}");
    assert!(!out.contains("notes.txt"), "{out}");

    let out = ok(s.path(), &["bench", ".", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench --json prints JSON");
    let rows = v.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["file"], format!("ckpt-{}.safetensors", i + 1));
        assert_eq!(row["keyframe"], i == 0);
        let ratio = row["ratio"].as_f64().expect("a numeric ratio");
        assert!(ratio > 0.0, "{row}");
        assert!(row["zstd3_ratio"].as_f64().is_some(), "{row}");
        // Every size and speed is there and positive; sizes agree with
        // their ratios. Timings themselves are not checked.
        let num = |k: &str| {
            let v = row[k].as_f64().unwrap_or_else(|| panic!("{k} in {row}"));
            assert!(v > 0.0 && v.is_finite(), "{k} = {v} in {row}");
            v
        };
        let original = num("original_bytes");
        for (bytes, ratio) in [
            ("tpde_bytes", "ratio"),
            ("zstd3_bytes", "zstd3_ratio"),
            ("zstd1_bytes", "zstd1_ratio"),
            ("lz4_bytes", "lz4_ratio"),
        ] {
            let r = original / num(bytes);
            assert!(
                (r - num(ratio)).abs() < 1e-9 * r,
                "{bytes}/{ratio} in {row}"
            );
        }
        num("zstd3_mt_bytes");
        num("zstd1_mt_bytes");
        let vs = num("zstd3_bytes") / num("tpde_bytes");
        assert!((vs - num("tpde_vs_zstd3")).abs() < 1e-9 * vs, "{row}");
        assert!(num("threads") >= 1.0, "{row}");
        for k in [
            "encode_mbps",
            "decode_mbps",
            "encode_mbps_1t",
            "decode_mbps_1t",
            "zstd3_compress_mbps",
            "zstd3_compress_mbps_mt",
            "zstd3_decompress_mbps",
            "zstd1_compress_mbps",
            "zstd1_compress_mbps_mt",
            "zstd1_decompress_mbps",
            "lz4_compress_mbps",
            "lz4_decompress_mbps",
            "encode_vs_zstd3",
            "encode_vs_zstd3_1t",
            "decode_vs_zstd3",
            "decode_vs_zstd3_1t",
        ] {
            num(k);
        }
    }
    assert!(rows[0]["changed_fraction"].is_null());
    assert!(rows[1]["changed_fraction"].as_f64().is_some());
}

#[test]
fn bench_sorts_names_naturally() {
    let dir = TempDir::new().unwrap();
    for step in [10, 2, 1] {
        std::fs::write(
            dir.path().join(format!("step-{step}.safetensors")),
            checkpoint(step),
        )
        .unwrap();
    }
    let out = ok(dir.path(), &["bench", ".", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "step-1.safetensors",
            "step-2.safetensors",
            "step-10.safetensors"
        ]
    );
}

#[test]
fn wrong_reference() {
    let s = Setup::new();
    s.encode_delta("d.tpde");
    let err = fails(
        s.path(),
        &[
            "decode",
            "d.tpde",
            "--ref",
            "ckpt-3.safetensors",
            "-o",
            "out.safetensors",
        ],
        &["wrong reference"],
        Some("out.safetensors"),
    );
    assert!(err.contains("digest"), "{err}");
    // No reference at all.
    fails(
        s.path(),
        &["decode", "d.tpde", "-o", "out.safetensors"],
        &["--ref", "reference"],
        Some("out.safetensors"),
    );
}

#[test]
fn not_safetensors() {
    let s = Setup::new();
    std::fs::write(s.file("junk.safetensors"), b"this is not a checkpoint").unwrap();
    fails(
        s.path(),
        &["encode", "junk.safetensors", "-o", "junk.tpde"],
        &["junk.safetensors is not a safetensors file"],
        Some("junk.tpde"),
    );
    fails(
        s.path(),
        &[
            "encode",
            "junk.safetensors",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "junk.tpde",
        ],
        &["junk.safetensors is not a safetensors file"],
        Some("junk.tpde"),
    );
    // A reference that is not safetensors.
    fails(
        s.path(),
        &[
            "encode",
            "ckpt-2.safetensors",
            "--ref",
            "junk.safetensors",
            "-o",
            "x.tpde",
        ],
        &["the reference junk.safetensors is not a safetensors file"],
        Some("x.tpde"),
    );
    // An input that does not exist.
    fails(
        s.path(),
        &["encode", "missing.safetensors", "-o", "m.tpde"],
        &["missing.safetensors"],
        Some("m.tpde"),
    );
}

#[test]
fn truncated_or_foreign_tpde() {
    let s = Setup::new();
    s.encode_delta("d.tpde");
    let full = std::fs::read(s.file("d.tpde")).unwrap();
    for len in [0, 5, 16, 47, full.len() / 2, full.len() - 1] {
        std::fs::write(s.file("cut.tpde"), &full[..len]).unwrap();
        fails(
            s.path(),
            &[
                "decode",
                "cut.tpde",
                "--ref",
                "ckpt-1.safetensors",
                "-o",
                "out.safetensors",
            ],
            &["truncated", "corrupt"],
            Some("out.safetensors"),
        );
        fails(
            s.path(),
            &["inspect", "cut.tpde"],
            &["truncated", "corrupt"],
            None,
        );
    }
    // One flipped bit in a payload.
    let mut flipped = full.clone();
    flipped[20] ^= 0x10;
    std::fs::write(s.file("flip.tpde"), &flipped).unwrap();
    fails(
        s.path(),
        &[
            "decode",
            "flip.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "out.safetensors",
        ],
        &["corrupt", "checksum"],
        Some("out.safetensors"),
    );
    // A safetensors file given as a .tpde file.
    fails(
        s.path(),
        &["decode", "ckpt-1.safetensors", "-o", "out.safetensors"],
        &["not a .tpde file"],
        Some("out.safetensors"),
    );
    fails(
        s.path(),
        &["inspect", "ckpt-1.safetensors"],
        &["not a .tpde file"],
        None,
    );
}

/// A failed decode leaves an existing output file as it was, even with
/// --force.
#[test]
fn failure_keeps_an_existing_output() {
    let s = Setup::new();
    s.encode_delta("d.tpde");
    std::fs::write(s.file("out.safetensors"), b"previous contents").unwrap();
    fails(
        s.path(),
        &[
            "decode",
            "d.tpde",
            "--ref",
            "ckpt-3.safetensors",
            "-o",
            "out.safetensors",
            "--force",
        ],
        &["wrong reference"],
        None,
    );
    assert_eq!(
        std::fs::read(s.file("out.safetensors")).unwrap(),
        b"previous contents"
    );
}

#[test]
fn output_equal_to_an_input_is_refused() {
    let s = Setup::new();
    s.encode_delta("d.tpde");
    let inputs = [
        "ckpt-1.safetensors",
        "ckpt-2.safetensors",
        "ckpt-3.safetensors",
        "d.tpde",
    ];
    let before: Vec<String> = inputs.iter().map(|f| sha256_file(&s.file(f))).collect();
    let cases: Vec<Vec<&str>> = vec![
        vec!["encode", "ckpt-2.safetensors", "-o", "ckpt-2.safetensors"],
        vec!["encode", "ckpt-2.safetensors", "-o", "./ckpt-2.safetensors"],
        vec![
            "encode",
            "ckpt-2.safetensors",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "ckpt-1.safetensors",
        ],
        vec![
            "decode",
            "d.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "d.tpde",
        ],
        vec![
            "decode",
            "d.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "ckpt-1.safetensors",
        ],
    ];
    for args in cases {
        fails(s.path(), &args, &["input"], None);
        let after: Vec<String> = inputs.iter().map(|f| sha256_file(&s.file(f))).collect();
        assert_eq!(after, before, "tpde {args:?} changed an input");
    }
}

#[test]
fn bench_of_an_empty_folder_fails() {
    let dir = TempDir::new().unwrap();
    fails(
        dir.path(),
        &["bench", "."],
        &["no .safetensors files"],
        None,
    );
}

#[test]
fn decode_one_tensor_and_output_permissions() {
    let s = Setup::new();
    s.encode_delta("ckpt-2.tpde");
    ok(
        s.path(),
        &[
            "decode",
            "ckpt-2.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "--tensor",
            "layer.bias",
            "-o",
            "bias.bin",
        ],
    );
    // layer.bias is 64 F32 values; compare with the original's data section.
    let cur = checkpoint(2);
    let n = u64::from_le_bytes(cur[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&cur[8..8 + n]).unwrap();
    let offsets = &header["layer.bias"]["data_offsets"];
    let (b, e) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    let bias = std::fs::read(s.path().join("bias.bin")).unwrap();
    assert_eq!(bias, &cur[8 + n + b..8 + n + e]);
    fails(
        s.path(),
        &[
            "decode",
            "ckpt-2.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "--tensor",
            "nope",
            "-o",
            "x.bin",
        ],
        &["no tensor named \"nope\""],
        Some("x.bin"),
    );
    // Outputs are ordinary files (not the 0600 of a temporary file).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path().join("bias.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let mode = std::fs::metadata(s.path().join("ckpt-2.tpde"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

/// A run folder with `checkpoint-N/` folders (a model file and a JSON file
/// each) for the steps given.
fn hf_run(dir: &Path, steps: &[u32]) {
    for &step in steps {
        let ck = dir.join(format!("run/checkpoint-{step}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("model.safetensors"), checkpoint(step)).unwrap();
        std::fs::write(
            ck.join("trainer_state.json"),
            format!("{{\"global_step\": {step}}}\n"),
        )
        .unwrap();
    }
}

fn tree_sha(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256_file(&p),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn store_add_ls_get_verify_rm_prune() {
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1, 2, 3, 4]);
    ok(d, &["store", "init", "st", "--keyframe-every", "3"]);
    fails(d, &["store", "init", "st"], &["already"], None);
    for step in [1, 2, 3, 4] {
        let out = ok(
            d,
            &["store", "add", "st", &format!("run/checkpoint-{step}")],
        );
        assert!(out.contains(&format!("step {step}:")), "{out}");
    }
    // A single file, its step given.
    ok(
        d,
        &["store", "add", "st", "ckpt-3.safetensors", "--step", "500"],
    );
    std::fs::copy(s.file("ckpt-1.safetensors"), s.file("latest.safetensors")).unwrap();
    fails(
        d,
        &["store", "add", "st", "latest.safetensors"],
        &["no step number"],
        None,
    );
    fails(
        d,
        &["store", "add", "st", "run/checkpoint-1"],
        &["stored already"],
        None,
    );
    let ls = ok(d, &["store", "ls", "st"]);
    for needle in [
        "checkpoint-3/",
        "ckpt-3.safetensors",
        "keyframe",
        "delta",
        "total",
    ] {
        assert!(ls.contains(needle), "{needle} not in\n{ls}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(d, &["store", "ls", "st", "--json"])).unwrap();
    assert_eq!(json["steps"].as_array().unwrap().len(), 5);
    // A keyframe every 3: step 4 is one.
    assert_eq!(json["steps"][2]["reference"], 2);
    assert_eq!(json["steps"][3]["reference"], serde_json::Value::Null);

    ok(d, &["store", "get", "st", "3", "-o", "back3"]);
    assert_eq!(
        tree_sha(&d.join("back3")),
        tree_sha(&d.join("run/checkpoint-3"))
    );
    ok(
        d,
        &["store", "get", "st", "500", "-o", "back500.safetensors"],
    );
    assert_eq!(
        sha256_file(&d.join("back500.safetensors")),
        sha256_file(&s.file("ckpt-3.safetensors"))
    );
    fails(
        d,
        &["store", "get", "st", "3", "-o", "back3"],
        &["back3 is a directory"],
        None,
    );
    fails(
        d,
        &["store", "get", "st", "7", "-o", "x"],
        &["no step 7"],
        Some("x"),
    );
    assert!(ok(d, &["store", "verify", "st"]).contains("ok: 5 steps"));

    let out = ok(d, &["store", "rm", "st", "2"]);
    assert!(out.contains("re-coded steps 3"), "{out}");
    ok(d, &["store", "get", "st", "3", "-o", "again3"]);
    assert_eq!(
        tree_sha(&d.join("again3")),
        tree_sha(&d.join("run/checkpoint-3"))
    );
    fails(d, &["store", "prune", "st"], &["say what to keep"], None);
    let out = ok(
        d,
        &[
            "store",
            "prune",
            "st",
            "--keep-last",
            "1",
            "--keep-every",
            "3",
        ],
    );
    assert!(out.contains("removed 2 steps, 2 left"), "{out}");
    assert!(ok(d, &["store", "verify", "st"]).contains("ok: 2 steps"));
}

#[test]
fn store_verify_names_a_damaged_file() {
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1, 2]);
    ok(d, &["store", "init", "st"]);
    ok(d, &["store", "add", "st", "run/checkpoint-1"]);
    ok(d, &["store", "add", "st", "run/checkpoint-2"]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("st/tpde-store.json")).unwrap()).unwrap();
    let obj = m["steps"][1]["files"][0]["object"]
        .as_str()
        .unwrap()
        .to_string();
    let path = d.join(format!("st/objects/{}/{obj}.tpde", &obj[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let err = fails(d, &["store", "verify", "st"], &["1 problems"], None);
    assert!(err.contains("step 2, file model.safetensors"), "{err}");
    fails(
        d,
        &["store", "get", "st", "2", "-o", "x"],
        &["step 2, file model.safetensors"],
        Some("x"),
    );
    // Step 1 does not depend on it.
    ok(d, &["store", "get", "st", "1", "-o", "x"]);
}

#[test]
fn store_watch_adds_complete_checkpoints() {
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[10, 20]);
    // The Trainer's folder being written, and a file that is not a checkpoint.
    std::fs::create_dir_all(d.join("run/tmp-checkpoint-30")).unwrap();
    std::fs::write(d.join("run/notes.txt"), "x").unwrap();
    let originals: Vec<_> = [10, 20]
        .iter()
        .map(|s| tree_sha(&d.join(format!("run/checkpoint-{s}"))))
        .collect();
    ok(d, &["store", "init", "st"]);
    let out = ok(
        d,
        &[
            "store",
            "watch",
            "st",
            "run",
            "--once",
            "--settle",
            "0",
            "--delete-originals",
        ],
    );
    assert!(out.contains("step 10: verified, deleted"), "{out}");
    assert!(out.contains("step 20:"), "{out}");
    assert!(!d.join("run/checkpoint-10").exists());
    assert!(d.join("run/tmp-checkpoint-30").exists());
    for (k, step) in ["10", "20"].iter().enumerate() {
        ok(
            d,
            &["store", "get", "st", step, "-o", &format!("back{step}")],
        );
        assert_eq!(tree_sha(&d.join(format!("back{step}"))), originals[k]);
    }
    // Without --delete-originals nothing is deleted; nothing new: no-op.
    hf_run(d, &[30]);
    ok(
        d,
        &["store", "watch", "st", "run", "--once", "--settle", "0"],
    );
    assert!(d.join("run/checkpoint-30").exists());
    let out = ok(d, &["store", "ls", "st"]);
    assert!(out.contains("3 steps"), "{out}");
}

#[test]
fn lossy_encode_says_so_everywhere() {
    let s = Setup::new();
    let d = s.path();
    let out = ok(
        d,
        &[
            "encode",
            "ckpt-2.safetensors",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "l.tpde",
            "--max-abs-error",
            "0.001",
        ],
    );
    assert!(out.contains("LOSSY (max abs error 0.001)"), "{out}");
    let info = ok(d, &["inspect", "l.tpde"]);
    assert!(
        info.contains("exact:     NO") && info.contains("format version 3"),
        "{info}"
    );
    assert!(info.contains("quantized"), "{info}");
    ok(
        d,
        &[
            "decode",
            "l.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "back.safetensors",
        ],
    );
    assert_ne!(
        sha256_file(&s.file("back.safetensors")),
        sha256_file(&s.file("ckpt-2.safetensors"))
    );
    // Lossless files say they are exact.
    s.encode_delta("x.tpde");
    assert!(ok(d, &["inspect", "x.tpde"]).contains("exact:     yes"));
    // Both bounds at once: a usage error from clap (also exit status 2).
    let o = run(
        d,
        &[
            "encode",
            "ckpt-2.safetensors",
            "-o",
            "y.tpde",
            "--max-abs-error",
            "0.1",
            "--max-rel-error",
            "0.1",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("cannot be used with"));
    assert!(!s.file("y.tpde").exists());
    fails(
        d,
        &[
            "encode",
            "ckpt-2.safetensors",
            "-o",
            "y.tpde",
            "--max-abs-error=-1",
        ],
        &["positive number"],
        Some("y.tpde"),
    );
    // In the store: ls shows which steps are not exact.
    ok(d, &["store", "init", "st"]);
    ok(d, &["store", "add", "st", "ckpt-1.safetensors"]);
    let out = ok(
        d,
        &[
            "store",
            "add",
            "st",
            "ckpt-2.safetensors",
            "--max-rel-error",
            "0.01",
        ],
    );
    assert!(out.contains("LOSSY"), "{out}");
    let ls = ok(d, &["store", "ls", "st"]);
    assert!(
        ls.contains("not exact (lossy): step 2: max error 0.01 x tensor RMS")
            && ls.contains(" no")
            && ls.contains(" yes"),
        "{ls}"
    );
    assert!(ok(d, &["store", "verify", "st"]).contains("ok: 2 steps"));
}

/// A fresh `s3://bucket/prefix` on the test server (see
/// scripts/s3-server.sh), or `None` with a note when there is none.
fn s3_location(test: &str) -> Option<String> {
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
        "s3://{bucket}/cli/{test}-{}-{nanos}",
        std::process::id()
    ))
}

/// The keys under `s3://bucket/prefix/` on the test server (a plain
/// ListObjectsV2 request; the test server does not check signatures).
fn s3_keys(location: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let (bucket, prefix) = location
        .trim_start_matches("s3://")
        .split_once('/')
        .unwrap();
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    write!(
        conn,
        "GET /{bucket}?list-type=2&prefix={prefix}/ HTTP/1.0\r\nHost: {host}\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn store_on_s3_init_add_ls_get_verify_rm_prune_watch() {
    let Some(st) = s3_location("round-trip") else {
        return;
    };
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1, 2, 3]);
    let out = ok(d, &["store", "init", &st, "--keyframe-every", "2"]);
    assert!(out.contains(&format!("created store {st}")), "{out}");
    fails(d, &["store", "init", &st], &["already holds a store"], None);
    for step in [1, 2, 3] {
        ok(d, &["store", "add", &st, &format!("run/checkpoint-{step}")]);
    }
    let ls = ok(d, &["store", "ls", &st]);
    assert!(
        ls.contains("checkpoint-3/") && ls.contains("3 steps"),
        "{ls}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&ok(d, &["store", "ls", &st, "--json"])).unwrap();
    assert_eq!(m["steps"].as_array().unwrap().len(), 3);
    assert!(s3_keys(&st).iter().any(|k| k.ends_with("/tpde-store.json")));
    for step in ["1", "2", "3"] {
        ok(
            d,
            &["store", "get", &st, step, "-o", &format!("back{step}")],
        );
        assert_eq!(
            tree_sha(&d.join(format!("back{step}"))),
            tree_sha(&d.join(format!("run/checkpoint-{step}")))
        );
    }
    // By default it is restored under its original name.
    ok(d, &["store", "get", &st, "2"]);
    assert_eq!(
        tree_sha(&d.join("checkpoint-2")),
        tree_sha(&d.join("run/checkpoint-2"))
    );
    assert!(ok(d, &["store", "verify", &st]).contains("ok: 3 steps"));
    ok(d, &["store", "rm", &st, "2"]);
    ok(d, &["store", "get", &st, "3", "-o", "again3"]);
    assert_eq!(tree_sha(&d.join("again3")), tree_sha(&d.join("back3")));
    assert!(ok(d, &["store", "verify", &st]).contains("ok: 2 steps"));
    ok(d, &["store", "prune", &st, "--keep-last", "1"]);
    assert!(ok(d, &["store", "verify", &st]).contains("ok: 1 steps"));
    // watch: the new checkpoints of a run folder, each checked against the
    // store before its original is deleted.
    for step in [1, 2, 3] {
        std::fs::remove_dir_all(d.join(format!("run/checkpoint-{step}"))).unwrap();
    }
    hf_run(d, &[4, 5]);
    let five = tree_sha(&d.join("run/checkpoint-5"));
    let out = ok(
        d,
        &[
            "store",
            "watch",
            &st,
            "run",
            "--once",
            "--settle",
            "0",
            "--delete-originals",
        ],
    );
    assert!(out.contains("step 5: verified, deleted"), "{out}");
    assert!(!d.join("run/checkpoint-5").exists());
    ok(d, &["store", "get", &st, "5", "-o", "back5"]);
    assert_eq!(tree_sha(&d.join("back5")), five);
    assert!(ok(d, &["store", "ls", &st]).contains("3 steps"));
    fails(
        d,
        &["store", "ls", &format!("{st}-none")],
        &["not a tpde store"],
        None,
    );
}

#[test]
fn a_writer_killed_midway_leaves_the_s3_store_consistent() {
    let Some(st) = s3_location("killed") else {
        return;
    };
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1]);
    // Step 2: shards of incompressible bytes, uploaded one by one.
    let big = d.join("run/checkpoint-2");
    std::fs::create_dir_all(&big).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..8 {
        let bytes: Vec<u8> = (0..6 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(big.join(format!("shard-{i}.bin")), bytes).unwrap();
    }
    ok(d, &["store", "init", &st]);
    ok(d, &["store", "add", &st, "run/checkpoint-1"]);
    let objects = |keys: &[String]| keys.iter().filter(|k| k.contains("/objects/")).count();
    let before = objects(&s3_keys(&st));
    let mut child = tpde()
        .current_dir(d)
        .args(["store", "add", &st, "run/checkpoint-2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some of its content files are uploaded.
    let t = std::time::Instant::now();
    while objects(&s3_keys(&st)) == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "tpde exited before it uploaded anything"
        );
        assert!(t.elapsed().as_secs() < 120, "no upload within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "tpde finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let uploaded = objects(&s3_keys(&st)) - before;
    assert!(uploaded > 0);
    // Only step 1 is in the store, it restores, and the store checks clean;
    // the uploads are reported as leftovers.
    let out = ok(d, &["store", "verify", &st]);
    assert!(out.contains("ok: 1 steps"), "{out}");
    assert!(out.contains("leftover"), "{out}");
    ok(d, &["store", "get", &st, "1", "-o", "back1"]);
    assert_eq!(
        tree_sha(&d.join("back1")),
        tree_sha(&d.join("run/checkpoint-1"))
    );
    // The add, done again, commits.
    ok(d, &["store", "add", &st, "run/checkpoint-2"]);
    ok(d, &["store", "get", &st, "2", "-o", "back2"]);
    assert_eq!(tree_sha(&d.join("back2")), tree_sha(&big));
    assert!(ok(d, &["store", "verify", &st]).contains("ok: 2 steps"));
}

#[test]
fn two_processes_adding_to_one_s3_store_lose_no_step() {
    let Some(st) = s3_location("two-processes") else {
        return;
    };
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1, 2, 3]);
    ok(d, &["store", "init", &st]);
    ok(d, &["store", "add", &st, "run/checkpoint-1"]);
    let children: Vec<_> = [2, 3]
        .iter()
        .map(|step| {
            tpde()
                .current_dir(d)
                .args(["store", "add", &st, &format!("run/checkpoint-{step}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut stored = vec![1u64];
    for (step, child) in [2u64, 3].into_iter().zip(children) {
        let o = child.wait_with_output().unwrap();
        let (_, err) = text(&o);
        if o.status.success() {
            stored.push(step);
        } else {
            // The one that lost the race says so, and exits with 2.
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert!(err.contains("another writer changed the store"), "{err}");
        }
    }
    assert!(stored.len() >= 2, "neither add committed");
    let m: serde_json::Value =
        serde_json::from_str(&ok(d, &["store", "ls", &st, "--json"])).unwrap();
    let steps: Vec<u64> = m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, stored);
    assert!(ok(d, &["store", "verify", &st]).contains(&format!("ok: {} steps", stored.len())));
}

/// How many times `needle` occurs in `hay`, ignoring case.
fn count(hay: &str, needle: &str) -> usize {
    hay.to_lowercase().matches(&needle.to_lowercase()).count()
}

/// The operating system's message, and the path it concerns, are said once.
#[test]
fn an_os_error_is_said_once() {
    let s = Setup::new();
    let d = s.path();
    std::fs::write(s.file("plain-file"), "x").unwrap();
    std::fs::create_dir(s.file("folder")).unwrap();
    // An output inside something that is not a folder (ENOTDIR).
    let err = fails(
        d,
        &["encode", "ckpt-1.safetensors", "-o", "plain-file/x.tpde"],
        &["not a directory"],
        None,
    );
    assert_eq!(count(&err, "not a directory"), 1, "{err}");
    // A folder where a file is read.
    for args in [
        vec!["encode", "folder", "-o", "x.tpde"],
        vec!["inspect", "folder"],
        vec!["decode", "folder", "-o", "x.safetensors"],
    ] {
        let err = fails(d, &args, &["is a directory"], Some("x.tpde"));
        assert_eq!(count(&err, "is a directory"), 1, "{args:?}: {err}");
    }
    // A file that does not exist: its name and the reason, once each.
    for args in [
        vec!["inspect", "missing.tpde"],
        vec!["decode", "missing.tpde", "-o", "x.safetensors"],
        vec!["encode", "missing.tpde", "-o", "x.tpde"],
    ] {
        let err = fails(d, &args, &["no such file"], Some("x.safetensors"));
        assert_eq!(count(&err, "no such file"), 1, "{args:?}: {err}");
        assert_eq!(count(&err, "missing.tpde"), 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// Runs tpde, killing it after `secs` seconds (`None`: it did not finish).
fn run_within(dir: &Path, args: &[&str], secs: u64) -> Option<Output> {
    let mut child = tpde()
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed().as_secs() >= secs {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn the_thread_count_is_bounded() {
    let s = Setup::new();
    ok(s.path(), &["encode", "ckpt-1.safetensors", "-o", "k.tpde"]);
    for (j, needle) in [("20000", "at most"), ("0", "at least 1")] {
        let o = run_within(s.path(), &["-j", j, "inspect", "k.tpde"], 10)
            .unwrap_or_else(|| panic!("tpde -j {j} did not finish within 10 s"));
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "-j {j}: {err}");
        assert!(err.contains(needle), "-j {j}: {err}");
    }
    ok(s.path(), &["-j", "3", "inspect", "k.tpde"]);
}

/// Options out of range, and numbers that are not, are refused with one
/// line (no panic).
#[test]
fn odd_arguments_are_refused_without_a_panic() {
    let s = Setup::new();
    let d = s.path();
    ok(d, &["store", "init", "st"]);
    std::fs::create_dir(s.file("run")).unwrap();
    for (args, needle) in [
        (
            vec![
                "encode",
                "ckpt-1.safetensors",
                "-o",
                "x.tpde",
                "--chunk-kib",
                "0",
            ],
            "--chunk-kib",
        ),
        (
            vec![
                "encode",
                "ckpt-1.safetensors",
                "-o",
                "x.tpde",
                "--chunk-kib",
                "99999999999999",
            ],
            "--chunk-kib",
        ),
        (
            vec![
                "encode",
                "ckpt-1.safetensors",
                "-o",
                "x.tpde",
                "--level",
                "1000",
            ],
            "--level",
        ),
        (vec!["bench", ".", "--level", "0"], "--level"),
        (
            vec!["store", "watch", "st", "run", "--once", "--settle", "inf"],
            "--settle",
        ),
        (
            vec!["store", "watch", "st", "run", "--once", "--settle", "nan"],
            "--settle",
        ),
        (
            vec!["store", "watch", "st", "run", "--once", "--interval", "inf"],
            "--interval",
        ),
        (
            vec!["store", "watch", "st", "run", "--once", "--interval=-1"],
            "--interval",
        ),
    ] {
        let o = run(d, &args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}:\n{out}\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!s.file("x.tpde").exists());
    }
}

/// Like zstd: an existing output is refused unless -f/--force; with it the
/// output is replaced (atomically), but an input or a folder never is.
#[test]
fn outputs_are_overwritten_only_with_force() {
    let s = Setup::new();
    let d = s.path();
    s.encode_delta("d.tpde");
    let write_old = |name: &str| std::fs::write(s.file(name), b"old").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["encode", "ckpt-1.safetensors", "-o", "out"], "out"),
        (
            vec![
                "decode",
                "d.tpde",
                "--ref",
                "ckpt-1.safetensors",
                "-o",
                "out",
            ],
            "out",
        ),
        (
            vec![
                "decode",
                "d.tpde",
                "--ref",
                "ckpt-1.safetensors",
                "--tensor",
                "layer.bias",
                "-o",
                "out",
            ],
            "out",
        ),
    ];
    for (args, out) in &cases {
        write_old(out);
        let err = fails(d, args, &["exists"], None);
        assert!(
            err.contains("out exists; use -f/--force to overwrite"),
            "{err}"
        );
        assert_eq!(std::fs::read(s.file(out)).unwrap(), b"old");
        for force in ["-f", "--force"] {
            write_old(out);
            let mut forced = args.clone();
            forced.push(force);
            let before = listing(d);
            ok(d, &forced);
            assert_ne!(std::fs::read(s.file(out)).unwrap(), b"old", "{forced:?}");
            assert_eq!(listing(d), before, "{forced:?} left files behind");
        }
    }
    // --force never replaces an input, nor a folder.
    let inputs = ["ckpt-1.safetensors", "d.tpde"];
    let sums: Vec<String> = inputs.iter().map(|f| sha256_file(&s.file(f))).collect();
    fails(
        d,
        &[
            "encode",
            "ckpt-1.safetensors",
            "-o",
            "ckpt-1.safetensors",
            "-f",
        ],
        &["input"],
        None,
    );
    fails(
        d,
        &[
            "decode",
            "d.tpde",
            "--ref",
            "ckpt-1.safetensors",
            "-o",
            "d.tpde",
            "-f",
        ],
        &["input"],
        None,
    );
    let after: Vec<String> = inputs.iter().map(|f| sha256_file(&s.file(f))).collect();
    assert_eq!(after, sums);
    std::fs::create_dir(s.file("folder")).unwrap();
    std::fs::write(s.file("folder/keep"), "mine").unwrap();
    fails(
        d,
        &["encode", "ckpt-1.safetensors", "-o", "folder", "-f"],
        &["folder is a directory"],
        None,
    );
    // Nor anything that is not a plain file (a named pipe here).
    #[cfg(unix)]
    {
        let fifo = s.file("pipe");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        fails(
            d,
            &["encode", "ckpt-1.safetensors", "-o", "pipe", "-f"],
            &["not a regular file"],
            None,
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }

    // store get: the same rule; an existing folder is refused even with -f.
    ok(d, &["store", "init", "st"]);
    ok(
        d,
        &["store", "add", "st", "ckpt-1.safetensors", "--step", "1"],
    );
    write_old("got");
    fails(
        d,
        &["store", "get", "st", "1", "-o", "got"],
        &["got exists; use -f/--force to overwrite"],
        None,
    );
    assert_eq!(std::fs::read(s.file("got")).unwrap(), b"old");
    let before = listing(d);
    ok(d, &["store", "get", "st", "1", "-o", "got", "--force"]);
    assert_eq!(
        sha256_file(&s.file("got")),
        sha256_file(&s.file("ckpt-1.safetensors"))
    );
    assert_eq!(listing(d), before, "store get --force left files behind");
    // A failed get leaves the existing file as it was.
    write_old("got");
    fails(
        d,
        &["store", "get", "st", "7", "-o", "got", "-f"],
        &["no step 7"],
        None,
    );
    assert_eq!(std::fs::read(s.file("got")).unwrap(), b"old");
    // By default it goes to its original name: refused, that file exists.
    fails(
        d,
        &["store", "get", "st", "1"],
        &["ckpt-1.safetensors exists"],
        None,
    );
    let err = fails(
        d,
        &["store", "get", "st", "1", "-o", "folder", "-f"],
        &["folder is a directory"],
        None,
    );
    assert!(err.contains("even with --force"), "{err}");
    assert_eq!(std::fs::read(s.file("folder/keep")).unwrap(), b"mine");
}

/// A reference none of whose tensors matches: said, and coded as a
/// keyframe (decoding needs no reference).
#[test]
fn an_unrelated_reference_is_named() {
    let s = Setup::new();
    let d = s.path();
    let adam = safetensors(&[
        ("state.0.exp_avg", vec![0.5; 300]),
        ("state.0.exp_avg_sq", vec![0.25; 300]),
    ]);
    std::fs::write(s.file("adam.safetensors"), adam).unwrap();
    let o = run(
        d,
        &[
            "encode",
            "ckpt-2.safetensors",
            "--ref",
            "adam.safetensors",
            "-o",
            "x.tpde",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains(
            "no tensor of ckpt-2.safetensors matched one of the reference adam.safetensors \
             (by name, dtype and shape): coded as a keyframe"
        ),
        "{all}"
    );
    assert!(!all.contains("changed elements"), "{all}");
    ok(d, &["decode", "x.tpde", "-o", "back.safetensors"]);
    assert_eq!(
        sha256_file(&s.file("back.safetensors")),
        sha256_file(&s.file("ckpt-2.safetensors"))
    );
}

/// A file named .safetensors that is not one: said so, with the way out.
#[test]
fn a_safetensors_name_on_another_file() {
    let s = Setup::new();
    let d = s.path();
    std::fs::write(
        s.file("notes.safetensors"),
        b"these are my notes, not tensors",
    )
    .unwrap();
    let err = fails(
        d,
        &["encode", "notes.safetensors", "-o", "n.tpde"],
        &["notes.safetensors is not a safetensors file"],
        Some("n.tpde"),
    );
    assert!(
        err.contains("use --as bytes to store it as opaque bytes"),
        "{err}"
    );
    assert!(!err.contains("not a valid safetensors file"), "{err}");
    ok(
        d,
        &[
            "encode",
            "notes.safetensors",
            "-o",
            "n.tpde",
            "--as",
            "bytes",
        ],
    );
    ok(d, &["decode", "n.tpde", "-o", "back"]);
    assert_eq!(
        std::fs::read(s.file("back")).unwrap(),
        b"these are my notes, not tensors"
    );
    // As the reference.
    fails(
        d,
        &[
            "encode",
            "ckpt-1.safetensors",
            "--ref",
            "notes.safetensors",
            "-o",
            "n2.tpde",
        ],
        &["the reference notes.safetensors is not a safetensors file"],
        Some("n2.tpde"),
    );
}

#[test]
fn store_add_with_its_arguments_swapped() {
    let s = Setup::new();
    let d = s.path();
    hf_run(d, &[1]);
    ok(d, &["store", "init", "st"]);
    for ck in ["ckpt-1.safetensors", "run/checkpoint-1"] {
        let err = fails(
            d,
            &["store", "add", ck, "st"],
            &["arguments swapped?"],
            None,
        );
        assert!(
            err.contains(&format!("{ck} is not a store and st is not a checkpoint"))
                && err.contains("usage: tpde store add STORE CHECKPOINT"),
            "{err}"
        );
    }
    // Not swapped, but the first is a checkpoint: no store given.
    let err = fails(
        d,
        &["store", "add", "ckpt-1.safetensors", "ckpt-2.safetensors"],
        &["ckpt-1.safetensors is not a tpde store"],
        None,
    );
    assert!(
        err.contains("usage: tpde store add STORE CHECKPOINT"),
        "{err}"
    );
    // watch too.
    fails(
        d,
        &["store", "watch", "run", "st", "--once"],
        &["arguments swapped?"],
        None,
    );
}

/// Every line of a table fits in 100 columns, and sizes are in one unit
/// convention (decimal, 3 significant digits), on the shipped real run.
#[test]
fn tables_fit_in_100_columns_with_one_size_unit() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/tiny");
    let s = Setup::new();
    let d = s.path();
    std::fs::create_dir(s.file("w")).unwrap();
    for e in ["00", "01"] {
        let name = format!("epoch-{e}.safetensors");
        std::fs::copy(data.join("weights").join(&name), s.file("w").join(&name)).unwrap();
    }
    let adam = |e: &str| data.join(format!("adam/epoch-{e}.safetensors"));
    let adam2 = adam("02");
    let adam3 = adam("03");
    let mut outputs = vec![ok(d, &["bench", "w"])];
    ok(
        d,
        &[
            "encode",
            adam3.to_str().unwrap(),
            "--ref",
            adam2.to_str().unwrap(),
            "-o",
            "a.tpde",
        ],
    );
    outputs.push(ok(d, &["inspect", "a.tpde"]));
    ok(d, &["store", "init", "st"]);
    for (step, f) in [
        ("1", "w/epoch-00.safetensors"),
        ("2", "w/epoch-01.safetensors"),
    ] {
        outputs.push(ok(d, &["store", "add", "st", f, "--step", step]));
    }
    std::fs::write(s.file("tiny.safetensors"), &checkpoint(1)[..40]).unwrap();
    outputs.push(ok(
        d,
        &["store", "add", "st", "tiny.safetensors", "--step", "3"],
    ));
    outputs.push(ok(d, &["store", "ls", "st"]));
    let all = outputs.concat();
    for line in all.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns:\n{line}\n{all}",
            line.len()
        );
    }
    assert!(!all.contains("0.00 MB"), "{all}");
    // Byte counts: 543 kB, not 543064 or 0.54 MB.
    assert!(all.contains("543 kB"), "{all}");
    assert!(!all.contains("543064") && !all.contains("0.54 MB"), "{all}");
    assert!(all.contains("40 B"), "{all}");
}

#[test]
fn inspect_explains_codings_and_counts_raw_tensors() {
    let help = ok(Path::new("."), &["inspect", "--help"]);
    for name in [
        "stored",
        "zstd",
        "planes",
        "delta",
        "ulp",
        "xor",
        "diff",
        "dense",
        "gaps",
        "bitmap",
        "classes",
        "quantized",
        "mixed",
    ] {
        assert!(
            help.contains(name),
            "inspect --help does not explain {name}:\n{help}"
        );
    }
    // The shipped run: its small biases are stored as they are (their delta
    // is no smaller); with --ref inspect counts their changed elements.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/tiny/weights");
    let (prev, cur) = (
        data.join("epoch-02.safetensors"),
        data.join("epoch-03.safetensors"),
    );
    let s = Setup::new();
    let d = s.path();
    ok(
        d,
        &[
            "encode",
            cur.to_str().unwrap(),
            "--ref",
            prev.to_str().unwrap(),
            "-o",
            "e.tpde",
        ],
    );
    let row = |out: &str| -> String {
        out.lines()
            .find(|l| l.starts_with("encoder.layers.0.linear2.bias "))
            .unwrap_or_else(|| panic!("no row of linear2.bias in\n{out}"))
            .to_string()
    };
    let out = ok(d, &["inspect", "e.tpde"]);
    let r = row(&out);
    assert!(r.contains("stored") && r.contains(" ? "), "{r}\n{out}");
    assert!(out.contains("--ref"), "{out}");
    let out = ok(d, &["inspect", "e.tpde", "--ref", prev.to_str().unwrap()]);
    let r = row(&out);
    assert!(r.contains("stored") && r.contains('%'), "{r}\n{out}");
    assert!(!r.contains(" ? ") && !r.contains(" - "), "{r}");
}

// Issue 17: single-file checkpoints with other names were coded as
// keyframes while `store add` and `store ls` called them deltas.
#[test]
fn single_file_steps_are_deltas_and_ls_says_what_is() {
    let t = TempDir::new().unwrap();
    let d = t.path();
    ok(d, &["store", "init", "s"]);
    for e in 0..3u32 {
        std::fs::write(d.join(format!("model_e{e:02}.safetensors")), checkpoint(e)).unwrap();
    }
    ok(
        d,
        &["store", "add", "s", "model_e00.safetensors", "--step", "0"],
    );
    let out = ok(
        d,
        &["store", "add", "s", "model_e01.safetensors", "--step", "1"],
    );
    assert!(out.contains("delta against step 0"), "{out}");
    // A folder with nothing to match is a keyframe, and says so.
    std::fs::create_dir(d.join("other")).unwrap();
    std::fs::write(d.join("other/a.json"), b"{\"a\": 1}").unwrap();
    std::fs::write(d.join("other/b.json"), b"{\"b\": 2}").unwrap();
    let out = ok(d, &["store", "add", "s", "other", "--step", "2"]);
    assert!(out.contains("keyframe"), "{out}");
    let ls = ok(d, &["store", "ls", "s"]);
    let line = |step: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(step))
            .unwrap_or_else(|| panic!("no step {step} in\n{ls}"))
            .to_string()
    };
    assert!(line("1").contains("delta"), "{ls}");
    assert!(line("2").contains("keyframe"), "{ls}");
    let v = ok(d, &["store", "verify", "s"]);
    assert!(v.contains("ok: 3 steps"), "{v}");
}

// Issue 12: `store init` made every missing parent folder and adopted a
// folder that held other files.
#[test]
fn store_init_needs_an_empty_folder_and_asks_for_parents() {
    let t = TempDir::new().unwrap();
    let d = t.path();
    fails(
        d,
        &["store", "init", "a/b/s"],
        &["does not exist", "--parents"],
        None,
    );
    assert!(!d.join("a").exists());
    ok(d, &["store", "init", "--parents", "a/b/s"]);
    std::fs::create_dir_all(d.join("proj/tmp")).unwrap();
    std::fs::write(d.join("proj/tmp/mine.txt"), b"mine").unwrap();
    fails(d, &["store", "init", "proj"], &["is not empty"], None);
    assert_eq!(std::fs::read(d.join("proj/tmp/mine.txt")).unwrap(), b"mine");
    // Files planted in a store are left alone and listed by verify.
    std::fs::write(d.join("a/b/s/tmp/notes.txt"), b"mine").unwrap();
    let v = ok(d, &["store", "verify", "a/b/s"]);
    assert!(v.contains("did not write, left alone"), "{v}");
}

// Issue 12: `decode -o /dev/null` as root renamed a temporary file over the
// device; `store get --force` replaces a file, never anything else.
#[test]
fn only_regular_files_are_ever_replaced() {
    let t = TempDir::new().unwrap();
    let d = t.path();
    std::fs::write(d.join("a.safetensors"), checkpoint(1)).unwrap();
    ok(d, &["encode", "a.safetensors", "-o", "a.tpde"]);
    std::fs::create_dir(d.join("folder")).unwrap();
    fails(
        d,
        &["decode", "a.tpde", "-o", "folder", "-f"],
        &["folder"],
        None,
    );
    assert!(d.join("folder").is_dir());
    ok(d, &["store", "init", "s"]);
    ok(d, &["store", "add", "s", "a.safetensors", "--step", "1"]);
    std::fs::write(d.join("out.safetensors"), b"old").unwrap();
    ok(
        d,
        &["store", "get", "s", "1", "-o", "out.safetensors", "--force"],
    );
    assert_eq!(
        sha256_file(&d.join("out.safetensors")),
        sha256(&checkpoint(1))
    );
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tpde"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
