//! Archive detection on large inputs: the fuzz input, expanded by
//! repetition to a few MB, as a file to `archive::scan`, or as the pickle of
//! a torch-style zip. Telling a zip and walking a pickle must take time and
//! memory in proportion to the file: a quadratic search shows as a time-out,
//! an unbounded walk as running out of memory.
//!
//! Input: one byte `k`, then the bytes; the first `k` of them (at most all)
//! are written once, the rest repeated up to 4 MiB. An odd `k` makes the
//! result the `data.pkl` of a zip (with one storage `a/data/0`).

#![no_main]

use libfuzzer_sys::fuzz_target;

const LEN: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let (head, unit) = rest.split_at((k as usize).min(rest.len()));
    let mut big = head.to_vec();
    if !unit.is_empty() {
        while big.len() < LEN {
            let n = unit.len().min(LEN - big.len());
            big.extend_from_slice(&unit[..n]);
        }
    }
    let file = if k % 2 == 1 {
        tpde_fuzz::stored_zip(&[("a/data.pkl", &big), ("a/data/0", &[7; 64])])
    } else {
        big
    };
    if let Some(tensors) = tpde::source::archive::scan(&file) {
        let mut end = 0;
        for t in &tensors {
            assert!(t.offset >= end, "storages overlap or are unsorted");
            assert!(t.len > 0);
            end = t.offset + t.len;
            assert!(end <= file.len() as u64, "storage outside the file");
        }
    }
});
