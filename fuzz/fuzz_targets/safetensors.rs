//! Arbitrary bytes parsed as a safetensors file: never a panic. A file that
//! parses must describe a data section that it actually holds.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = tpde::source::safetensors::parse(data) else {
        return;
    };
    assert!(h.header_len <= data.len() as u64);
    assert_eq!(h.file_len(), data.len() as u64, "file_len of a parsed file");
    let data_len = data.len() as u64 - h.header_len;
    let mut cursor = 0;
    for t in &h.tensors {
        assert_eq!(t.begin, cursor, "tensors must tile the data section");
        assert!(t.begin <= t.end && t.end <= data_len);
        assert!(h.get(&t.name).is_some());
        let _ = (
            t.elements(),
            t.dtype.coding_width(),
            t.dtype.family(),
            t.dtype.name(),
        );
        cursor = t.end;
    }
    assert_eq!(cursor, data_len, "tensors must cover the data section");
});
