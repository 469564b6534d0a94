//! Frozen sample files of format version 3 (the lossy mode), decoded forever:
//! the same reconstruction, within the bound of the original.

mod common;

use common::{check_within, sha256};

const KEY_OUT: &str = "d5a8ab0bb384b34566d2f66cb45bd4901890ddad26ad14d9efe0f325e4d3e8a3";
const DELTA_OUT: &str = "e686c207579deb3c4a409a9f4be465ce7c484b9c9998d7db758a7bdf8429feb4";
const BOUND: f64 = 1e-3;

fn read(name: &str) -> Vec<u8> {
    common::frozen("v3", name)
}

fn decode(container: &[u8], reference: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    tpde::decode(container, reference, &mut out, None).unwrap();
    out
}

#[test]
fn v3_keyframe_decodes_to_the_frozen_reconstruction() {
    let out = decode(&read("key.tpde"), None);
    assert_eq!(sha256(&out), KEY_OUT);
    check_within(&out, &read("cur.safetensors"), BOUND);
    let r = tpde::container::inspect::inspect(&read("key.tpde")).unwrap();
    assert!(r.lossy && r.version == 3);
}

#[test]
fn v3_delta_decodes_to_the_frozen_reconstruction() {
    let out = decode(&read("delta.tpde"), Some(&read("ref.safetensors")));
    assert_eq!(sha256(&out), DELTA_OUT);
    check_within(&out, &read("cur.safetensors"), BOUND);
}

/// Today's encoder may choose other codings than the one that wrote the
/// frozen files (those decode above, forever), but never a larger file, and
/// what it writes still holds the bound.
#[test]
fn re_encoding_is_no_larger_and_within_the_bound() {
    let opts = tpde::EncodeOptions {
        chunk_size: 1024,
        lossy: Some(tpde::codec::lossy::Bound::MaxAbsError(BOUND)),
        ..Default::default()
    };
    let (cur, reference) = (read("cur.safetensors"), read("ref.safetensors"));
    for (r, frozen) in [(None, "key.tpde"), (Some(&reference[..]), "delta.tpde")] {
        let mut out = Vec::new();
        tpde::encode(&cur, r, &opts, &mut out, None).unwrap();
        let frozen_len = read(frozen).len();
        assert!(
            out.len() <= frozen_len,
            "{frozen}: re-encoded to {} bytes, frozen {frozen_len}",
            out.len()
        );
        check_within(&decode(&out, r), &cur, BOUND);
    }
}
