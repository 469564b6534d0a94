//! Arbitrary bytes as the JSON of a safetensors header: `parse_header` never
//! panics, what it accepts tiles the data section, and it accepts everything
//! that a reading through a generic JSON tree (`serde_json::Value`, the
//! reader tpde had before) accepts, with the same tensors and metadata.
//!
//! Input: a `u32` (little-endian), the length of the data section, then the
//! JSON text.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

fuzz_target!(|data: &[u8]| {
    let Some((len, json)) = data.split_first_chunk::<4>() else {
        return;
    };
    let data_len = u64::from(u32::from_le_bytes(*len));
    let mut block = (json.len() as u64).to_le_bytes().to_vec();
    block.extend_from_slice(json);
    let file_len = block.len() as u64 + data_len;
    let got = tpde::source::safetensors::parse_header(&block, file_len);
    if let Ok(h) = &got {
        assert_eq!(h.header_len, block.len() as u64);
        assert_eq!(h.file_len(), file_len);
        let mut cursor = 0;
        for t in &h.tensors {
            assert_eq!(t.begin, cursor, "tensors must tile the data section");
            assert!(h.get(&t.name).is_some());
            cursor = t.end;
        }
        assert_eq!(cursor, data_len);
        if let Some(m) = &h.metadata {
            // Kept as written: a piece of the header's text.
            let text = std::str::from_utf8(json).expect("parsed, so UTF-8");
            assert!(text.contains(m.get()));
        }
    }
    let Some(want) = tree_reading(json, data_len) else {
        return;
    };
    let h = match got {
        Ok(h) => h,
        Err(e) => panic!("a JSON tree reads this header, parse_header does not: {e}"),
    };
    let tensors: Vec<_> = h
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.name().to_string(),
                t.shape.clone(),
                t.begin,
                t.end,
            )
        })
        .collect();
    assert_eq!(tensors, want.0, "tensors differ from a JSON tree's reading");
    let metadata = h
        .metadata
        .as_ref()
        .map(|m| serde_json::from_str::<serde_json::Value>(m.get()).expect("metadata is JSON"));
    assert_eq!(
        metadata, want.1,
        "metadata differs from a JSON tree's reading"
    );
});

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

type Reading = (
    Vec<(String, String, Vec<u64>, u64, u64)>,
    Option<serde_json::Value>,
);

/// The header read through a `serde_json::Value` tree with the rules of
/// FORMAT.md: the tensors (sorted as parse_header sorts them) and the
/// metadata; `None` when that reading refuses it.
fn tree_reading(json: &[u8], data_len: u64) -> Option<Reading> {
    let text = std::str::from_utf8(json).ok()?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let mut metadata = None;
    let mut tensors = Vec::new();
    for (name, value) in map {
        if name == "__metadata__" {
            metadata = Some(value);
            continue;
        }
        let raw: RawTensor = serde_json::from_value(value).ok()?;
        let (begin, end) = raw.data_offsets;
        if begin > end {
            return None;
        }
        let dtype = tpde::Dtype::from_name(&raw.dtype);
        let elements = raw.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        if let Some(bits) = dtype.bits() {
            let total = elements.checked_mul(bits)?;
            if total % 8 != 0 || total / 8 != end - begin {
                return None;
            }
        }
        tensors.push((name, dtype.name().to_string(), raw.shape, begin, end));
    }
    tensors.sort_by(|a, b| (a.3, a.4, &a.0).cmp(&(b.3, b.4, &b.0)));
    let mut cursor = 0;
    for t in &tensors {
        if t.3 != cursor {
            return None;
        }
        cursor = t.4;
    }
    (cursor == data_len).then_some((tensors, metadata))
}
