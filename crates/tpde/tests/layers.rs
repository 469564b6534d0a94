//! The library's stages call only the stages below them
//! (docs/ARCHITECTURE.md):
//!
//! ```text
//! common <- source <- codec <- container <- store
//! ```
//!
//! Every `crate::NAME` path in the library's code (comments aside) is
//! checked against that order: a file of `codec/` may name `crate::common`,
//! `crate::source` and `crate::codec`, never `crate::container` or
//! `crate::store`. Paths through the root's re-exports (`crate::Dtype`)
//! would hide where an item lives, so only `crate::Error` and
//! `crate::Result` are allowed. `super::super` must not climb out of a
//! stage either. And `unsafe` stays in its two modules.

use std::path::{Path, PathBuf};

const STAGES: [&str; 5] = ["common", "source", "codec", "container", "store"];
/// Root names any stage may use.
const ROOT_NAMES: [&str; 2] = ["Error", "Result"];

/// The modules allowed `unsafe` (each block with a `// SAFETY:` comment,
/// which clippy's `undocumented_unsafe_blocks` enforces): the memory maps
/// and the codec's SIMD kernels.
const UNSAFE_HOMES: [&str; 2] = ["common/mmap/", "codec/simd.rs"];

/// Whether the code (comments and strings aside) holds the keyword `unsafe`.
fn has_unsafe(text: &str) -> bool {
    let code = code_only(text);
    code.match_indices("unsafe").any(|(at, _)| {
        let before = code[..at].chars().last();
        let after = code[at + "unsafe".len()..].chars().next();
        let ident = |c: Option<char>| matches!(c, Some(c) if c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

fn rank(stage: &str) -> Option<usize> {
    STAGES.iter().position(|s| *s == stage)
}

/// The code of a file without its comments (line comments, doc comments and
/// block comments) and string literals, so that neither counts as a use.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// What is wrong with one file of stage `stage` (its path relative to
/// `src/` in `file`, for messages).
fn violations(file: &str, stage: &str, text: &str) -> Vec<String> {
    let own = rank(stage).expect("a known stage");
    let code = code_only(text);
    let mut bad = Vec::new();
    let mut check = |name: &str, n: usize| match rank(name) {
        Some(r) if r > own => bad.push(format!(
            "{file}:{}: stage `{stage}` uses `crate::{name}`, a stage above it",
            n + 1
        )),
        Some(_) => {}
        None if ROOT_NAMES.contains(&name) => {}
        None => bad.push(format!(
            "{file}:{}: `crate::{name}` goes through the crate root: name the stage it lives in",
            n + 1
        )),
    };
    // Paths may span lines (`use crate::{\n store,\n}`): search the whole
    // text, and count lines for the messages.
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::").map(|a| a + from) {
        let after = &code[at + "crate::".len()..];
        from = at + "crate::".len();
        // `$crate::` in a macro, or a path such as `foo_crate::x`.
        let prev = code[..at].chars().last();
        if matches!(prev, Some(c) if c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let n = code[..at].matches('\n').count();
        for name in first_segments(after) {
            check(&name, n);
        }
    }
    // The module of `stage/a/b.rs` is two levels below its stage's, and
    // that of `stage/a/mod.rs` one: that many `super`s stay in the stage.
    let levels = file.matches('/').count() - usize::from(file.ends_with("/mod.rs"));
    let supers = "super::".repeat(levels + 1);
    let mut climbs = Vec::new();
    for (n, line) in code.lines().enumerate() {
        if line.contains(&supers) {
            climbs.push(format!(
                "{file}:{}: `{supers}` climbs out of stage `{stage}`",
                n + 1
            ));
        }
    }
    bad.extend(climbs);
    bad
}

/// The first segment of each path after `crate::`: `store` in
/// `store::Store`, and `a`, `b` in `{a::x, b}`.
fn first_segments(after: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = after.strip_prefix('{') else {
        return vec![ident(after)];
    };
    let mut names = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_stage_imports_from_a_stage_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut checked = 0;
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let Some((stage, _)) = rel.split_once('/') else {
            assert_eq!(rel, "lib.rs", "a file outside every stage: {rel}");
            continue;
        };
        assert!(
            rank(stage).is_some(),
            "{rel}: folder `{stage}` is not a stage (add it to docs/ARCHITECTURE.md and here)"
        );
        let text = std::fs::read_to_string(path).unwrap();
        bad.extend(violations(&rel, stage, &text));
        if !UNSAFE_HOMES.iter().any(|h| rel.starts_with(h)) && has_unsafe(&text) {
            bad.push(format!("{rel}: `unsafe` outside {UNSAFE_HOMES:?}"));
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} files found under {src:?}");
    assert!(
        bad.is_empty(),
        "imports against the stages:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_must() {
    // An upward import, through `use` and inline.
    let v = violations("codec/x.rs", "codec", "use crate::container::format;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    let v = violations(
        "source/x.rs",
        "source",
        "fn f() { crate::store::Store::open(p) }",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    // Through the root's re-exports.
    let v = violations("codec/x.rs", "codec", "use crate::Dtype;");
    assert_eq!(v.len(), 1, "{v:?}");
    // In a group.
    let v = violations(
        "codec/x.rs",
        "codec",
        "use crate::{common::error::Error, store};",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    let v = violations(
        "codec/x.rs",
        "codec",
        "use crate::{\n    codec::bits,\n    store::Store,\n};",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("codec/x.rs:1:"), "{v:?}");
    // Climbing out with super.
    let v = violations("codec/x.rs", "codec", "use super::super::store;");
    assert_eq!(v.len(), 1, "{v:?}");
    // Downward and sideways uses, comments, strings and macros are fine.
    let ok = "use crate::common::error::Error;\nuse crate::codec::bits;\n\
              // crate::store in a comment\n/// [`x`](crate::store::Store)\n\
              /* crate::container */ let s = \"crate::store\";\n$crate::x!();\n\
              use crate::{Error, Result};\nuse super::sections;\n";
    let v = violations("codec/x.rs", "codec", ok);
    assert!(v.is_empty(), "{v:?}");
    let v = violations(
        "store/backend/s3.rs",
        "store",
        "use super::super::manifest;",
    );
    assert!(v.is_empty(), "{v:?}");
}
