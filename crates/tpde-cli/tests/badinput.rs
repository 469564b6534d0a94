//! The bad-input corpus (`crates/tpde/tests/data/bad/`, see its README): the
//! `tpde` binary run on each crafted file under a memory limit (`ulimit -v`)
//! and a time limit (`timeout`). A row that expects an error wants exit
//! status 2 (not a signal, not the time limit), the error text on stderr and
//! no output file left behind; a row that expects success wants status 0.
//!
//! One row per case: add rows for new files here.

#[path = "../../tpde/tests/badgen/mod.rs"]
mod badgen;

use std::path::{Path, PathBuf};
use std::process::Command;

fn xxh3_64(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

/// Where a row's input comes from.
enum Input {
    /// A file of the corpus folder.
    File(&'static str),
    /// Made at run time (too large to commit), under this name.
    Made(&'static str, fn() -> Vec<u8>),
}

enum Expect {
    /// Exit status 2 and this text on stderr; no output file.
    Error(&'static str),
    /// Exit status 0.
    Success,
}

struct Row {
    input: Input,
    /// The arguments; `{in}` is the input's path, `{out}` an output path in
    /// a fresh folder (which must stay empty on error).
    args: &'static [&'static str],
    expect: Expect,
    /// `ulimit -v` in KiB.
    memory_kib: u64,
    timeout_s: u32,
    /// Skipped when the output's filesystem has at least this many bytes
    /// free (a row that relies on the free-space check).
    needs_free_below: Option<u64>,
}

/// The memory limit of every row: what the fixed code needs (under 100 MB
/// of address space for any of these, with two threads), with room to spare,
/// and less than what the defects took (a JSON tree of the header, a pickle
/// memo or stack of 4 M entries, a 64 GiB buffer).
const MEMORY_KIB: u64 = 150_000;

fn claim_1tib() -> Vec<u8> {
    badgen::zero_bomb(16384, 0, xxh3_64)
}

fn eocd_flood() -> Vec<u8> {
    badgen::eocd_flood(2 << 20)
}

fn memo_flood() -> Vec<u8> {
    badgen::pickle_archive(&badgen::flood_pickle(0x94, 4 << 20))
}

fn mark_flood() -> Vec<u8> {
    badgen::pickle_archive(&badgen::flood_pickle(b'(', 4 << 20))
}

fn dup_flood() -> Vec<u8> {
    badgen::pickle_archive(&badgen::flood_pickle(b'2', 4 << 20))
}

const ROWS: &[Row] = &[
    // 9: a 49 KB file claiming a 64 GiB tensor.
    Row {
        input: Input::File("9-tensor-64gib.tpde"),
        args: &[
            "decode",
            "{in}",
            "--tensor",
            "w",
            "-o",
            "{out}",
            "--max-output",
            "1G",
        ],
        expect: Expect::Error(
            "decodes to 68719476736 bytes, more than the limit of 1073741824 bytes",
        ),
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    Row {
        input: Input::File("9-tensor-64gib.tpde"),
        args: &["decode", "{in}", "--tensor", "w", "-o", "{out}"],
        expect: Expect::Error("decodes to 68719476736 bytes, more than the"),
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: Some(1 << 36),
    },
    // 9, 14: 786 KB claiming 1 TiB.
    Row {
        input: Input::Made("9-claim-1tib.tpde", claim_1tib),
        args: &["decode", "{in}", "-o", "{out}", "--max-output", "10G"],
        expect: Expect::Error(
            "decodes to 1099511627776 bytes, more than the limit of 10737418240 bytes",
        ),
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    Row {
        input: Input::Made("9-claim-1tib.tpde", claim_1tib),
        args: &["decode", "{in}", "-o", "{out}"],
        expect: Expect::Error("bytes free on the output's filesystem"),
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: Some(1 << 40),
    },
    // 14: 911 bytes that decode to 1 GiB.
    Row {
        input: Input::File("14-bomb-1gib.tpde"),
        args: &["decode", "{in}", "-o", "{out}", "--max-output", "100MB"],
        expect: Expect::Error(
            "decodes to 1073741824 bytes, more than the limit of 100000000 bytes (--max-output)",
        ),
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    // 10: 2 MB of zip end records after a local header: classified (as
    // opaque bytes) in linear time.
    Row {
        input: Input::Made("10-eocd-flood.bin", eocd_flood),
        args: &["encode", "{in}", "-o", "{out}"],
        expect: Expect::Success,
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    // 11: a torch archive whose data.pkl is 4 M MEMOIZE, MARK or DUP opcodes.
    Row {
        input: Input::Made("11-pickle-memo.pt", memo_flood),
        args: &["encode", "{in}", "-o", "{out}"],
        expect: Expect::Success,
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    Row {
        input: Input::Made("11-pickle-mark.pt", mark_flood),
        args: &["encode", "{in}", "-o", "{out}"],
        expect: Expect::Success,
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    Row {
        input: Input::Made("11-pickle-dup.pt", dup_flood),
        args: &["encode", "{in}", "-o", "{out}"],
        expect: Expect::Success,
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
    // 12: 1.1 KB carrying a 10 MB header of metadata.
    Row {
        input: Input::File("12-huge-header.tpde"),
        args: &["inspect", "{in}"],
        expect: Expect::Success,
        memory_kib: MEMORY_KIB,
        timeout_s: 20,
        needs_free_below: None,
    },
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpde/tests/data/bad")
}

/// Bytes free on the filesystem of `dir` (from `df -Pk`).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn bad_inputs_are_refused_or_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        let input = match row.input {
            Input::File(name) => corpus().join(name),
            Input::Made(name, make) => {
                let p = tmp.path().join(name);
                if !p.exists() {
                    std::fs::write(&p, make()).unwrap();
                }
                p
            }
        };
        let out_dir = tmp.path().join(format!("out-{i}"));
        std::fs::create_dir(&out_dir).unwrap();
        if let Some(below) = row.needs_free_below {
            if free_bytes(&out_dir).is_none_or(|f| f >= below) {
                eprintln!("row {i}: skipped, the disk has room for what the file claims");
                continue;
            }
        }
        let out = out_dir.join("out");
        let args: Vec<String> = row
            .args
            .iter()
            .map(|a| {
                a.replace("{in}", input.to_str().unwrap())
                    .replace("{out}", out.to_str().unwrap())
            })
            .collect();
        // Two threads: the memory limit counts address space, and each
        // thread reserves some.
        let script = format!(
            "ulimit -v {}; exec timeout {} \"$0\" -j 2 \"$@\"",
            row.memory_kib, row.timeout_s
        );
        let started = std::time::Instant::now();
        let result = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_tpde"))
            .args(&args)
            .output()
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&result.stderr);
        let what = format!("row {i} (tpde {}) after {secs:.1}s", row.args.join(" "));
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        match row.expect {
            Expect::Error(text) => {
                if result.status.code() != Some(2) {
                    failures.push(format!(
                        "{what}: status {:?}, stderr {stderr}",
                        result.status
                    ));
                } else if !stderr.contains(text) {
                    failures.push(format!("{what}: stderr {stderr:?} lacks {text:?}"));
                } else if !left.is_empty() {
                    failures.push(format!("{what}: left {left:?} behind"));
                }
            }
            Expect::Success => {
                if !result.status.success() {
                    failures.push(format!(
                        "{what}: status {:?}, stderr {stderr}",
                        result.status
                    ));
                }
            }
        }
        eprintln!("{what}: {:?}", result.status);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
