//! Frozen sample files of format version 4 (codec 5, the symbols), decoded
//! forever: byte for byte, and the lossy one to its frozen reconstruction.

mod common;

use common::{check_within, decode, sha256};

const CUR: &str = "0cb981c1e8c0aeca9db7e6f40546269604438a3e0450509f1484a1c190e885cd";
const REF: &str = "e9d74e6825315b676812623ac9fa5320d7a771996d3a191ad414702fa87d9563";
const LOSSY_OUT: &str = "dd98c4a917000785ab74453e2eb9c962049269fde75597753cf1f8dee1162f7e";
const LOSSY_BOUND: f64 = 1e-6;

fn read(name: &str) -> Vec<u8> {
    common::frozen("v4", name)
}

#[test]
fn inputs_are_the_frozen_ones() {
    assert_eq!(sha256(&read("cur.safetensors")), CUR);
    assert_eq!(sha256(&read("ref.safetensors")), REF);
}

#[test]
fn v4_deltas_decode_byte_for_byte() {
    let reference = read("ref.safetensors");
    for name in ["delta.tpde", "delta-chunks.tpde"] {
        let out = decode(&read(name), Some(&reference)).unwrap();
        assert_eq!(sha256(&out), CUR, "{name}");
        let r = tpde::container::inspect::inspect(&read(name)).unwrap();
        assert!(r.version == 4 && !r.lossy, "{name}");
    }
    // The dense float deltas of every width are symbols; the sparse and the
    // unchanged tensor are not.
    let r = tpde::container::inspect::inspect(&read("delta.tpde")).unwrap();
    let codings: Vec<(&str, &str)> = r
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.coding.as_str()))
        .collect();
    assert_eq!(
        codings,
        [
            ("w", "symbols ulp"),
            ("b", "symbols ulp"),
            ("f", "symbols ulp"),
            ("s", "delta xor/gaps"),
            ("k", "delta xor/gaps"),
        ]
    );
    let r = tpde::container::inspect::inspect(&read("delta-chunks.tpde")).unwrap();
    assert!(r.tensors[0].coding.starts_with("mixed: symbols ulp"));
}

#[test]
fn v4_tensors_decode_alone() {
    let (cur, reference) = (read("cur.safetensors"), read("ref.safetensors"));
    let header = tpde::source::safetensors::parse(&cur).unwrap();
    for file in ["delta.tpde", "delta-chunks.tpde"] {
        for t in &header.tensors {
            let got = tpde::decode_tensor(&read(file), Some(&reference), &t.name).unwrap();
            let start = (header.header_len + t.begin) as usize;
            assert!(
                got == cur[start..start + t.len() as usize],
                "{file} {}",
                t.name
            );
        }
    }
}

#[test]
fn v4_lossy_decodes_to_the_frozen_reconstruction() {
    let out = decode(&read("lossy.tpde"), Some(&read("ref.safetensors"))).unwrap();
    assert_eq!(sha256(&out), LOSSY_OUT);
    check_within(&out, &read("cur.safetensors"), LOSSY_BOUND);
    let r = tpde::container::inspect::inspect(&read("lossy.tpde")).unwrap();
    assert!(r.lossy && r.version == 4);
}

#[test]
fn v4_refuses_a_missing_or_wrong_reference() {
    let err = decode(&read("delta.tpde"), None).unwrap_err();
    assert!(matches!(err, tpde::Error::MissingReference), "{err}");
    let err = decode(&read("delta.tpde"), Some(&read("cur.safetensors"))).unwrap_err();
    assert!(matches!(err, tpde::Error::WrongReference { .. }), "{err}");
}

/// The version rules: codec 5 only in version 4, and version 4 only with
/// reference data (the file header's version is outside the index hash, so
/// these files are otherwise intact).
#[test]
fn version_4_is_checked_both_ways() {
    let mut v3 = read("delta.tpde");
    v3[8..10].copy_from_slice(&3u16.to_le_bytes());
    let err = decode(&v3, Some(&read("ref.safetensors"))).unwrap_err();
    assert!(err.to_string().contains("codec 5"), "{err}");

    let key = {
        let mut out = Vec::new();
        let opts = tpde::EncodeOptions::default();
        tpde::encode(&read("cur.safetensors"), None, &opts, &mut out, None).unwrap();
        out
    };
    assert_eq!(u16::from_le_bytes([key[8], key[9]]), 1);
    let mut v4 = key.clone();
    v4[8..10].copy_from_slice(&4u16.to_le_bytes());
    let err = decode(&v4, None).unwrap_err();
    assert!(err.to_string().contains("without reference data"), "{err}");
    // From version 5 on, the trailer's checksum covers the file header.
    let mut v5 = key.clone();
    v5[8..10].copy_from_slice(&5u16.to_le_bytes());
    let err = decode(&v5, None).unwrap_err();
    assert!(err.to_string().contains("index checksum"), "{err}");
    let mut v7 = key;
    v7[8..10].copy_from_slice(&7u16.to_le_bytes());
    assert!(matches!(
        decode(&v7, None).unwrap_err(),
        tpde::Error::UnsupportedVersion { version: 7, .. }
    ));
}

/// Today's encoder may choose other codings than the one that wrote the
/// frozen files (those decode above, forever), but never a larger file.
#[test]
fn re_encoding_is_no_larger() {
    let (cur, reference) = (read("cur.safetensors"), read("ref.safetensors"));
    for (chunk_size, frozen) in [(None, "delta.tpde"), (Some(16 << 10), "delta-chunks.tpde")] {
        let mut opts = tpde::EncodeOptions::default();
        if let Some(c) = chunk_size {
            opts.chunk_size = c;
        }
        let mut out = Vec::new();
        tpde::encode(&cur, Some(&reference), &opts, &mut out, None).unwrap();
        let frozen_len = read(frozen).len();
        assert!(
            out.len() <= frozen_len,
            "{frozen}: re-encoded to {} bytes, frozen {frozen_len}",
            out.len()
        );
        assert_eq!(sha256(&decode(&out, Some(&reference)).unwrap()), CUR);
    }
}
