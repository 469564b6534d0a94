//! `tpde store diff` and `tpde store report` on the run that ships with the
//! repo (examples/data/tiny/weights: four epochs, one file each).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tpde(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tpde"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = tpde(args);
    assert!(
        o.status.success(),
        "tpde {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A store holding epochs 0 to 3 (steps 0 to 3).
fn run_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("run");
    let s = store.to_str().unwrap();
    ok(&["store", "init", s]);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/tiny/weights");
    for e in 0..4 {
        let f = data.join(format!("epoch-0{e}.safetensors"));
        ok(&["store", "add", s, f.to_str().unwrap()]);
    }
    (dir, store)
}

#[test]
fn diff_table_and_json() {
    let (_d, store) = run_store();
    let s = store.to_str().unwrap();
    let same: serde_json::Value =
        serde_json::from_str(&ok(&["store", "diff", s, "2", "2", "--json"])).unwrap();
    let tensors = same["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 28);
    for t in tensors {
        assert_eq!(t["changed"], 0, "{t}");
        assert_eq!(t["rel"], 0.0, "{t}");
        assert_eq!(t["kind"], "compared");
    }

    let next: serde_json::Value =
        serde_json::from_str(&ok(&["store", "diff", s, "1", "2", "--json"])).unwrap();
    assert_eq!(next["b_coded_against_a"], true);
    let tensors = next["tensors"].as_array().unwrap();
    let rels: Vec<f64> = tensors.iter().map(|t| t["rel"].as_f64().unwrap()).collect();
    assert!(
        rels.windows(2).all(|w| w[0] >= w[1]),
        "sorted by rel: {rels:?}"
    );
    assert!(tensors.iter().any(|t| t["changed_from_store"] == true));
    assert!(
        rels.iter().all(|&r| r > 0.0),
        "training changes every tensor"
    );

    let text = ok(&["store", "diff", s, "1", "2", "--sort", "name", "--top", "5"]);
    assert!(text.starts_with("step 1 -> step 2\n"), "{text}");
    assert!(text.contains("(23 more tensors"), "{text}");
    assert!(
        text.contains("28 tensors: 28 compared (0 unchanged)"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[3].starts_with("encoder.layers.0.linear1.bias "),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{text}");

    let bad = tpde(&["store", "diff", s, "1", "9"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no step 9"));
    let bad = tpde(&["store", "diff", s, "1", "2", "--sort", "size"]);
    assert!(!bad.status.success());
}

#[test]
fn report_files() {
    let (d, store) = run_store();
    let s = store.to_str().unwrap();
    let html = d.path().join("report.html");
    let csv = d.path().join("report.csv");
    let json = d.path().join("report.json");
    let out = ok(&[
        "store",
        "report",
        s,
        "-o",
        html.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.contains("report of 4 steps (3 compared"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("epoch-03.safetensors"));
    assert!(page.contains("encoder.layers.1"));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["steps"].as_array().unwrap().len(), 4);
    assert_eq!(j["pairs"].as_array().unwrap().len(), 3);
    let groups: Vec<&str> = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "encoder.layers.0",
            "encoder.layers.1",
            "head",
            "pos_emb",
            "tok_emb"
        ]
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    // A header, 4 steps, 3 pairs of 5 groups.
    assert_eq!(text.lines().count(), 1 + 4 + 3 * 5, "{text}");

    // Not over an existing file without --force; nothing to write is an error.
    let again = tpde(&["store", "report", s, "-o", html.to_str().unwrap()]);
    assert!(!again.status.success());
    ok(&["store", "report", s, "-o", html.to_str().unwrap(), "-f"]);
    let none = tpde(&["store", "report", s]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("say where"));
}
