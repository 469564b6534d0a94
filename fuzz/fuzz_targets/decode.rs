//! Arbitrary bytes decoded as a `.tpde` file, without a reference and against
//! a fixed small safetensors reference. Decoding must never panic; when it
//! succeeds, `inspect` and `decode_tensor` must agree with what it produced.
//! Both decode within a limit of 16 MiB of output, so that no input can make
//! the fuzzer run out of memory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data, None);
    check(data, Some(tpde_fuzz::reference()));
    // A mutated index almost never matches the index hash of the trailer, so
    // the index parser would only ever see intact indexes: decode a copy
    // whose trailer is made to fit the index too.
    if let Some(fixed) = fix_trailer(data) {
        check(&fixed, None);
        check(&fixed, Some(tpde_fuzz::reference()));
    }
});

/// `data` with the trailer's index length and hash set to fit the bytes
/// between its index offset and the trailer; `None` when that is what they
/// are already, or when there is no plausible trailer.
fn fix_trailer(data: &[u8]) -> Option<Vec<u8>> {
    let len = data.len();
    let t = len.checked_sub(32).filter(|&t| t >= 16)?;
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
    let index_offset = usize::try_from(u64_at(t))
        .ok()
        .filter(|&o| (16..=t).contains(&o))?;
    let index_len = (t - index_offset) as u64;
    let hash = xxhash_rust::xxh3::xxh3_64(&data[index_offset..t]);
    if u64_at(t + 8) == index_len && u64_at(t + 16) == hash {
        return None;
    }
    let mut fixed = data.to_vec();
    fixed[t + 8..t + 16].copy_from_slice(&index_len.to_le_bytes());
    fixed[t + 16..t + 24].copy_from_slice(&hash.to_le_bytes());
    Some(fixed)
}

/// What a decode may produce: a file of a few hundred bytes may decode to
/// gigabytes (chunks sharing a payload), so the limit keeps the fuzzer's
/// memory bounded, as it would a service's.
const LIMIT: tpde::DecodeOptions = tpde::DecodeOptions {
    max_output: Some(16 << 20),
};

fn check(container: &[u8], reference: Option<&[u8]>) {
    let mut out = Vec::new();
    let decoded = tpde::decode_with(container, reference, &mut out, None, &LIMIT);
    let report = tpde::container::inspect::inspect(container);
    if let (Ok(r), Err(e)) = (&report, &decoded) {
        // Refused by the limit exactly when the file claims more.
        let over = r.original_len > LIMIT.max_output.unwrap();
        assert_eq!(
            over,
            e.to_string().contains("more than the limit"),
            "limit check: {e}"
        );
    }

    // Names to try decode_tensor on: two fixed ones (one in the reference,
    // one that no safetensors container can hold) and those the index lists.
    let mut names = vec!["w".to_string(), String::new()];
    if let Ok(r) = &report {
        names.extend(r.tensors.iter().take(16).map(|t| t.name.clone()));
    }
    let tensors: Vec<_> = names
        .iter()
        .map(|n| (n, tpde::decode_tensor_with(container, reference, n, &LIMIT)))
        .collect();

    let Ok(stats) = decoded else { return };
    // decode opened the same container inspect and decode_tensor read.
    let report = match report {
        Ok(r) => r,
        Err(e) => panic!("decode succeeded but inspect failed: {e}"),
    };
    assert_eq!(stats.original_len, out.len() as u64, "decode stats length");
    assert_eq!(
        report.original_len,
        out.len() as u64,
        "inspect original length"
    );
    assert_eq!(
        stats.encoded_len,
        container.len() as u64,
        "decode stats encoded length"
    );
    if report.source_kind != tpde::container::format::SourceKind::Safetensors {
        return;
    }
    let header = match tpde::source::safetensors::parse(&out) {
        Ok(h) => h,
        Err(e) => panic!("decoded a safetensors container into an invalid file: {e}"),
    };
    let hl = header.header_len as usize;
    for (name, got) in tensors {
        match header.get(name) {
            Some(t) => {
                let want = &out[hl + t.begin as usize..hl + t.end as usize];
                match got {
                    Ok(bytes) => {
                        assert!(bytes == want, "decode_tensor({name:?}) differs from decode")
                    }
                    Err(e) => panic!("decode succeeded but decode_tensor({name:?}) failed: {e}"),
                }
            }
            None => assert!(
                got.is_err(),
                "decode_tensor({name:?}) found a tensor the file lacks"
            ),
        }
    }
}
