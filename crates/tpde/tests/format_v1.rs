//! Frozen sample files of format version 1, decoded forever.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

const CUR_SHA256: &str = "a9e748739b2e1903196d53b3b60e0c44f015c0df000f560d4745e3a67128b982";

fn read(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/v1")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn inputs_are_the_frozen_ones() {
    assert_eq!(sha256_hex(&read("cur.safetensors")), CUR_SHA256);
}

#[test]
fn v1_keyframe_decodes_byte_for_byte() {
    let mut out = Vec::new();
    tpde::decode(&read("key.tpde"), None, &mut out, None).unwrap();
    assert_eq!(sha256_hex(&out), CUR_SHA256);
}

#[test]
fn v1_delta_decodes_byte_for_byte() {
    let reference = read("ref.safetensors");
    let mut out = Vec::new();
    tpde::decode(&read("delta.tpde"), Some(&reference), &mut out, None).unwrap();
    assert_eq!(sha256_hex(&out), CUR_SHA256);
    // The delta is smaller than the keyframe, and one tensor decodes alone.
    assert!(read("delta.tpde").len() < read("key.tpde").len());
    let emb = tpde::decode_tensor(&read("delta.tpde"), Some(&reference), "emb").unwrap();
    let cur = read("cur.safetensors");
    let header = tpde::source::safetensors::parse(&cur).unwrap();
    let t = header.get("emb").unwrap();
    let start = (header.header_len + t.begin) as usize;
    assert_eq!(emb, &cur[start..start + t.len() as usize]);
}

#[test]
fn v1_delta_refuses_the_wrong_reference() {
    let err = tpde::decode(
        &read("delta.tpde"),
        Some(&read("cur.safetensors")),
        &mut Vec::new(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, tpde::Error::WrongReference { .. }), "{err}");
}

/// The second sample exercises rANS sections and gap-class positions.
#[test]
fn v1_sample_b_decodes_byte_for_byte() {
    let reference = read("ref-b.safetensors");
    let mut out = Vec::new();
    tpde::decode(&read("delta-b.tpde"), Some(&reference), &mut out, None).unwrap();
    assert_eq!(
        sha256_hex(&out),
        "bf29a250e4e542d986f398c6b6bd03ad37ec48c6c627c7b0d436cb15d9480fd6"
    );
    assert_eq!(out, read("cur-b.safetensors"));
    let report = tpde::container::inspect::inspect(&read("delta-b.tpde")).unwrap();
    assert_eq!(report.tensors[1].coding, "delta xor/classes");
}

/// The third sample holds a grouped section (coding 4).
#[test]
fn v1_sample_c_decodes_byte_for_byte() {
    let reference = read("ref-b.safetensors");
    let mut out = Vec::new();
    tpde::decode(&read("delta-c.tpde"), Some(&reference), &mut out, None).unwrap();
    assert_eq!(
        sha256_hex(&out),
        "bf29a250e4e542d986f398c6b6bd03ad37ec48c6c627c7b0d436cb15d9480fd6"
    );
}
