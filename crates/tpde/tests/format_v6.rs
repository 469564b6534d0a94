//! Frozen sample files of format version 6 (fine gap classes, positions 4,
//! beside the gap classes and symbols of earlier versions), decoded
//! forever, byte for byte.

mod common;

use common::{decode, sha256};
use tpde::codec::chunk::Positions;

const CUR: &str = "5ae22612c8b13f7f3247d63ff4561f0fcb6ee73c950f46c2b07051a93f01ea8f";
const REF: &str = "431a034da40cba6c9e147d8f212aacec5a9b081a6e4733f18ea9c796229176e1";

fn read(name: &str) -> Vec<u8> {
    common::frozen("v6", name)
}

/// The positions coding of each tensor's chunks, in file order.
fn positions(file: &[u8]) -> Vec<Vec<Positions>> {
    let of = |t: Vec<tpde::codec::chunk::ChunkCoding>| t.iter().map(|k| k.positions).collect();
    common::codings(file).into_iter().map(of).collect()
}

#[test]
fn inputs_are_the_frozen_ones() {
    assert_eq!(sha256(&read("cur.safetensors")), CUR);
    assert_eq!(sha256(&read("ref.safetensors")), REF);
}

#[test]
fn v6_delta_decodes_byte_for_byte() {
    let reference = read("ref.safetensors");
    let out = decode(&read("delta.tpde"), Some(&reference)).unwrap();
    assert_eq!(sha256(&out), CUR);
    let r = tpde::container::inspect::inspect(&read("delta.tpde")).unwrap();
    assert!(r.version == 6 && !r.lossy);
    use Positions::{Classes, Dense, FineClasses, Gaps};
    assert_eq!(
        positions(&read("delta.tpde")),
        [
            vec![FineClasses],
            vec![Classes],
            vec![Classes],
            vec![Dense],
            vec![Gaps]
        ]
    );
}

#[test]
fn v6_tensors_decode_alone() {
    let (cur, reference) = (read("cur.safetensors"), read("ref.safetensors"));
    let header = tpde::source::safetensors::parse(&cur).unwrap();
    for t in &header.tensors {
        let got = tpde::decode_tensor(&read("delta.tpde"), Some(&reference), &t.name).unwrap();
        let start = (header.header_len + t.begin) as usize;
        assert!(got == cur[start..start + t.len() as usize], "{}", t.name);
    }
}

/// Fine gap classes are refused in a file marked version 5 (its index
/// checksum made to match).
#[test]
fn version_6_is_checked() {
    let reference = read("ref.safetensors");
    let file = read("delta.tpde");
    let n = file.len();
    let index_offset = u64::from_le_bytes(file[n - 32..n - 24].try_into().unwrap()) as usize;
    let mut v = file.clone();
    v[8..10].copy_from_slice(&5u16.to_le_bytes());
    let err = decode(&v, Some(&reference)).unwrap_err();
    assert!(err.to_string().contains("index checksum"), "{err}");
    // From version 5 on the checksum covers the file header and the index.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&v[..16]);
    h.update(&v[index_offset..n - 32]);
    let hash = h.digest();
    v[n - 16..n - 8].copy_from_slice(&hash.to_le_bytes());
    let err = decode(&v, Some(&reference)).unwrap_err();
    assert!(err.to_string().contains("fine gap classes"), "{err}");
}

/// Today's encoder may choose other codings than the one that wrote the
/// frozen file (that decodes above, forever), but no larger a file.
#[test]
fn re_encoding_is_no_larger() {
    let (cur, reference) = (read("cur.safetensors"), read("ref.safetensors"));
    let mut out = Vec::new();
    tpde::encode(
        &cur,
        Some(&reference),
        &tpde::EncodeOptions::default(),
        &mut out,
        None,
    )
    .unwrap();
    assert!(out.len() <= read("delta.tpde").len());
    assert_eq!(sha256(&decode(&out, Some(&reference)).unwrap()), CUR);
}

/// Fine gap classes only go into version 6 files: a keyframe (no
/// reference, version 1) of a mostly-zero tensor, whose positions would be
/// fine gap classes in a version 6 file, codes them as gap classes.
#[test]
fn fine_gap_classes_only_in_version_6() {
    let mut rng = common::Rng::new(6);
    let n = 600_000;
    let mut data = vec![0u8; 2 * n];
    for i in 0..n {
        if rng.chance(0.08) {
            data[2 * i..2 * i + 2].copy_from_slice(&(rng.next_u64() as u16 | 1).to_le_bytes());
        }
    }
    let cur = common::safetensors(&[common::Tensor::new("z", "BF16", &[n as u64], data)], None);
    let key = common::roundtrip(&cur, None, &tpde::EncodeOptions::default());
    let r = tpde::container::inspect::inspect(&key).unwrap();
    assert_eq!(r.version, 1);
    assert_eq!(positions(&key), [vec![Positions::Classes]]);
    // Against a reference (version 6), the same positions are fine classes.
    let zero = common::safetensors(
        &[common::Tensor::new(
            "z",
            "BF16",
            &[n as u64],
            vec![0u8; 2 * n],
        )],
        None,
    );
    let delta = common::roundtrip(&cur, Some(&zero), &tpde::EncodeOptions::default());
    assert_eq!(
        tpde::container::inspect::inspect(&delta).unwrap().version,
        6
    );
    assert_eq!(positions(&delta), [vec![Positions::FineClasses]]);
}
