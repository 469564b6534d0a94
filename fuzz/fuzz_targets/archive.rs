//! Arbitrary bytes as a torch.save archive: `archive::scan` never panics and
//! keeps its promises, and any bytes encoded as whatever they are (safetensors,
//! archive, or opaque; against a real torch archive or alone) decode back
//! exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tpde::{EncodeOptions, InputKind};

const REFERENCE: &[u8] = include_bytes!("../../crates/tpde/tests/data/v2/ref.pt");

fuzz_target!(|data: &[u8]| {
    if let Some(tensors) = tpde::source::archive::scan(data) {
        let mut end = 0;
        for t in &tensors {
            assert!(t.offset >= end, "storages overlap or are unsorted");
            assert!(t.len > 0);
            end = t.offset + t.len;
            assert!(end <= data.len() as u64, "storage outside the file");
            assert_eq!(t.len % t.dtype.coding_width() as u64, 0);
        }
    }
    let opts = EncodeOptions {
        chunk_size: 256,
        input: InputKind::Auto,
        ..EncodeOptions::default()
    };
    for reference in [None, Some(REFERENCE)] {
        let mut packed = Vec::new();
        let stats = tpde::encode(data, reference, &opts, &mut packed, None)
            .expect("InputKind::Auto encodes any bytes");
        let reference = if stats.reference_used { reference } else { None };
        let mut back = Vec::new();
        tpde::decode(&packed, reference, &mut back, None).expect("decode what was encoded");
        assert!(back == data, "round trip changed the bytes");
    }
});
