//! Frozen sample files of format version 3 (the lossy mode), decoded forever:
//! the same reconstruction, within the bound of the original.

mod common;

use std::path::PathBuf;

use common::sha256;

const KEY_OUT: &str = "d5a8ab0bb384b34566d2f66cb45bd4901890ddad26ad14d9efe0f325e4d3e8a3";
const DELTA_OUT: &str = "e686c207579deb3c4a409a9f4be465ce7c484b9c9998d7db758a7bdf8429feb4";
const BOUND: f64 = 1e-3;

fn read(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/v3")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn decode(container: &[u8], reference: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    tpde::decode(container, reference, &mut out, None).unwrap();
    out
}

/// Every float element of `got` within the bound of `cur` (NaN and
/// infinities exact); everything else byte for byte.
fn check_within(got: &[u8], cur: &[u8]) {
    let (hg, hc) = (
        tpde::source::safetensors::parse(got).unwrap(),
        tpde::source::safetensors::parse(cur).unwrap(),
    );
    assert_eq!(got[..hg.header_len as usize], cur[..hc.header_len as usize]);
    for t in &hc.tensors {
        let s = (hc.header_len + t.begin) as usize..(hc.header_len + t.end) as usize;
        let (a, b) = (&got[s.clone()], &cur[s]);
        let vals: Option<Vec<(f64, f64)>> = match t.dtype.name() {
            "F32" => Some(
                a.chunks_exact(4)
                    .zip(b.chunks_exact(4))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| f64::from(f32::from_le_bytes(c.try_into().unwrap()));
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            "F64" => Some(
                a.chunks_exact(8)
                    .zip(b.chunks_exact(8))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap());
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            "BF16" => Some(
                a.chunks_exact(2)
                    .zip(b.chunks_exact(2))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            _ => None,
        };
        match vals {
            None => assert_eq!(a, b, "{} is exact", t.name),
            Some(v) => {
                for (i, (x, y)) in v.into_iter().enumerate() {
                    if y.is_finite() {
                        assert!(
                            (x - y).abs() * (1.0 + f64::EPSILON) <= BOUND,
                            "{}[{i}]",
                            t.name
                        );
                    } else {
                        assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                    }
                }
            }
        }
    }
}

#[test]
fn v3_keyframe_decodes_to_the_frozen_reconstruction() {
    let out = decode(&read("key.tpde"), None);
    assert_eq!(sha256(&out), KEY_OUT);
    check_within(&out, &read("cur.safetensors"));
    let r = tpde::container::inspect::inspect(&read("key.tpde")).unwrap();
    assert!(r.lossy && r.version == 3);
}

#[test]
fn v3_delta_decodes_to_the_frozen_reconstruction() {
    let out = decode(&read("delta.tpde"), Some(&read("ref.safetensors")));
    assert_eq!(sha256(&out), DELTA_OUT);
    check_within(&out, &read("cur.safetensors"));
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
        check_within(&decode(&out, r), &cur);
    }
}
