//! Frozen sample files of format version 2 (torch.save archives), decoded
//! forever.

mod common;

use std::path::PathBuf;

use common::{decode, sha256};

const CUR_SHA256: &str = "b5f56004489a5ce991d9d67d0e2b9f8c55e4580d3807ebdbea5a6f99ae9552cf";

fn read(name: &str) -> Vec<u8> {
    common::frozen("v2", name)
}

#[test]
fn inputs_are_the_frozen_ones() {
    assert_eq!(sha256(&read("cur.pt")), CUR_SHA256);
}

#[test]
fn v2_keyframe_decodes_byte_for_byte() {
    assert_eq!(
        sha256(&decode(&read("key.tpde"), None).unwrap()),
        CUR_SHA256
    );
    let report = tpde::container::inspect::inspect(&read("key.tpde")).unwrap();
    assert_eq!(report.version, 2);
    assert_eq!(
        report.source_kind,
        tpde::container::format::SourceKind::Archive
    );
    let dtypes: Vec<&str> = report.tensors.iter().map(|t| t.dtype.as_str()).collect();
    assert!(dtypes.contains(&"BF16") && dtypes.contains(&"I64") && dtypes.contains(&"BOOL"));
}

#[test]
fn v2_delta_decodes_byte_for_byte() {
    let reference = read("ref.pt");
    let out = decode(&read("delta.tpde"), Some(&reference)).unwrap();
    assert_eq!(sha256(&out), CUR_SHA256);
    assert!(read("delta.tpde").len() * 3 < read("key.tpde").len());
    // One storage alone.
    let cur = read("cur.pt");
    let t = tpde::source::archive::scan(&cur).unwrap().remove(2);
    let alone = tpde::decode_tensor(&read("delta.tpde"), Some(&reference), &t.name).unwrap();
    assert_eq!(alone, &cur[t.offset as usize..(t.offset + t.len) as usize]);
}

#[test]
fn v2_delta_refuses_the_wrong_reference() {
    let err = decode(&read("delta.tpde"), Some(&read("cur.pt"))).unwrap_err();
    assert!(matches!(err, tpde::Error::WrongReference { .. }), "{err}");
    let err = decode(&read("delta.tpde"), None).unwrap_err();
    assert!(matches!(err, tpde::Error::MissingReference), "{err}");
}

#[test]
fn an_archive_marked_version_1_is_refused() {
    let mut bad = read("key.tpde");
    bad[8..10].copy_from_slice(&1u16.to_le_bytes());
    let err = decode(&bad, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("source kind 2 in a version 1 file"),
        "{err}"
    );
}

/// Today's encoder may choose other codings than the one that wrote the
/// frozen files (the frozen files themselves decode above, forever), but
/// never a larger file, and what it writes decodes to the same input.
#[test]
fn re_encoding_is_no_larger_and_round_trips() {
    let opts = tpde::EncodeOptions {
        chunk_size: 1024,
        input: tpde::InputKind::Archive,
        ..Default::default()
    };
    let (cur, reference) = (read("cur.pt"), read("ref.pt"));
    for (r, frozen) in [(None, "key.tpde"), (Some(&reference[..]), "delta.tpde")] {
        let mut out = Vec::new();
        tpde::encode(&cur, r, &opts, &mut out, None).unwrap();
        assert!(
            out.len() <= read(frozen).len(),
            "{frozen}: re-encoded to {} bytes, frozen {}",
            out.len(),
            read(frozen).len()
        );
        assert_eq!(sha256(&decode(&out, r).unwrap()), sha256(&cur), "{frozen}");
    }
}

#[test]
fn an_archive_smaller_than_its_layout_round_trips() {
    // Found by the `archive` fuzz target: storages so small that the layout
    // table is longer than the whole original.
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/regress/archive-tiny-storages.bin");
    let cur = std::fs::read(p).unwrap();
    let opts = tpde::EncodeOptions {
        chunk_size: 256,
        input: tpde::InputKind::Auto,
        ..Default::default()
    };
    let mut packed = Vec::new();
    let stats = tpde::encode(&cur, None, &opts, &mut packed, None).unwrap();
    assert_eq!(
        stats.source_kind,
        tpde::container::format::SourceKind::Archive
    );
    assert_eq!(decode(&packed, None).unwrap(), cur);
}
