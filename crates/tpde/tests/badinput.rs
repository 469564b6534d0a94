//! Crafted inputs that claim far more than they hold (see `tests/data/bad/`):
//! decoding them is refused against the caller's limit, or bounded, before
//! anything large is allocated or written; never an abort.

mod badgen;

use std::path::Path;

use tpde::{DecodeOptions, Error};

fn xxh3_64(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn bad_file(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bad")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn limit(n: u64) -> DecodeOptions {
    DecodeOptions {
        max_output: Some(n),
    }
}

/// A writer that counts what it is given.
#[derive(Default)]
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_limit_error(e: Error, size: u64, max: u64) {
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let want = format!("decodes to {size} bytes, more than the limit of {max} bytes");
    assert!(msg.contains(&want), "{msg:?} should say {want:?}");
}

#[test]
fn decode_refuses_a_file_over_the_limit_before_writing() {
    // 911 bytes that decode to 1 GiB (a valid file).
    let bomb = bad_file("14-bomb-1gib.tpde");
    assert_eq!(bomb.len(), 911);
    let mut out = Counter::default();
    let e = tpde::decode_with(&bomb, None, &mut out, None, &limit(100 << 20)).unwrap_err();
    assert_limit_error(e, 1 << 30, 100 << 20);
    assert_eq!(out.0, 0, "nothing is written");
    // 786 KB claiming 1 TiB.
    let claim = badgen::zero_bomb(16384, 0, xxh3_64);
    assert!(claim.len() < 800_000);
    let e = tpde::decode_with(&claim, None, &mut out, None, &limit(1 << 40 >> 1)).unwrap_err();
    assert_limit_error(e, 1 << 40, 1 << 39);
    assert_eq!(out.0, 0);
}

#[test]
fn a_file_at_the_limit_decodes() {
    let json = br#"{"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#;
    let mut file = badgen::header_block(json);
    file.extend_from_slice(&[1, 2, 3]);
    let mut packed = Vec::new();
    tpde::encode(&file, None, &Default::default(), &mut packed, None).unwrap();
    let n = file.len() as u64;
    let mut out = Vec::new();
    tpde::decode_with(&packed, None, &mut out, None, &limit(n)).unwrap();
    assert_eq!(out, file);
    let e = tpde::decode_with(&packed, None, &mut Vec::new(), None, &limit(n - 1)).unwrap_err();
    assert_limit_error(e, n, n - 1);
    assert_eq!(
        tpde::decode_tensor_with(&packed, None, "w", &limit(3)).unwrap(),
        [1, 2, 3]
    );
    let e = tpde::decode_tensor_with(&packed, None, "w", &limit(2)).unwrap_err();
    assert_limit_error(e, 3, 2);
}

#[test]
fn decode_tensor_refuses_a_tensor_over_the_limit() {
    // 49 KB claiming one tensor of 64 GiB (valid chunks).
    let file = bad_file("9-tensor-64gib.tpde");
    assert!(file.len() < 50_000);
    let e = tpde::decode_tensor_with(&file, None, "w", &limit(1 << 30)).unwrap_err();
    assert_limit_error(e, 1 << 36, 1 << 30);
    let mut out = Counter::default();
    let e = tpde::decode_tensor_to(&file, None, "w", &mut out, &limit(1 << 30)).unwrap_err();
    assert_limit_error(e, 1 << 36, 1 << 30);
    assert_eq!(out.0, 0);
}

#[test]
fn decode_tensor_without_a_limit_does_not_allocate_what_the_file_claims() {
    // The same claim with a wrong checksum in every chunk: without a limit,
    // the tensor is decoded a batch at a time and the first bad chunk ends
    // it, instead of 64 GiB being allocated up front.
    let mut file = badgen::big_tensor(1024, xxh3_64);
    let index = tpde::container::format::Container::open(&file).unwrap();
    assert_eq!(index.tensors[0].entry.data_len, 1 << 36);
    drop(index);
    flip_checksums(&mut file);
    match tpde::decode_tensor(&file, None, "w") {
        Err(Error::ChecksumMismatch { chunk: 0, .. }) => {}
        // Where 64 GiB cannot even be reserved.
        Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::OutOfMemory => {}
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}

/// Breaks every chunk checksum of a container made by `badgen` (whose
/// chunks all hold [`badgen::ZEROS_64MIB_XXH3`]), fixing the trailer's hash.
fn flip_checksums(file: &mut [u8]) {
    let want = badgen::ZEROS_64MIB_XXH3.to_le_bytes();
    let n = file.len();
    let index_offset = u64::from_le_bytes(file[n - 32..n - 24].try_into().unwrap()) as usize;
    let mut i = index_offset;
    while i + 8 <= n - 32 {
        if file[i..i + 8] == want {
            file[i] ^= 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    let hash = xxh3_64(&file[index_offset..n - 32]);
    file[n - 16..n - 8].copy_from_slice(&hash.to_le_bytes());
}

#[test]
fn decode_file_checks_free_space_and_the_limit_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("claim.tpde");
    std::fs::write(&input, badgen::zero_bomb(16384, 0, xxh3_64)).unwrap();
    let out = dir.path().join("out.bin");
    let e = tpde::container::files::decode_file_with(
        &input,
        None,
        &out,
        None,
        &limit(1 << 30),
        tpde::common::atomic::Replace::No,
    )
    .unwrap_err();
    assert_limit_error(e, 1 << 40, 1 << 30);
    assert!(!out.exists());
    // No limit of the caller's: the free space of the output's filesystem.
    let free = tpde::container::files::free_space(dir.path());
    if free.is_some_and(|f| f >= 1 << 40) {
        eprintln!("skipped: {free:?} bytes free, more than the claim");
    } else {
        let e = tpde::container::files::decode_file(&input, None, &out, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("decodes to 1099511627776 bytes, more than the") && msg.contains("free"),
            "{msg}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "only the input is left: {names:?}");
    // The same for one tensor.
    let input = dir.path().join("tensor.tpde");
    std::fs::write(&input, bad_file("9-tensor-64gib.tpde")).unwrap();
    let e = tpde::container::files::decode_tensor_file_with(
        &input,
        None,
        "w",
        &out,
        &limit(1 << 20),
        tpde::common::atomic::Replace::No,
    )
    .unwrap_err();
    assert_limit_error(e, 1 << 36, 1 << 20);
    assert!(!out.exists());
}

#[test]
fn a_huge_header_is_read_in_proportion() {
    // 1.1 KB holding a 10 MB header (metadata of zeros, which a JSON tree
    // holds at 17 times its size): the header is legal (the format allows
    // 100 MB); it is parsed without a tree.
    let file = bad_file("12-huge-header.tpde");
    assert!(file.len() < 2_000, "{}", file.len());
    let r = tpde::container::inspect::inspect(&file).unwrap();
    assert!(r.header_len > 9_900_000);
    assert_eq!(r.tensors.len(), 1);
    let out = tpde::decode_tensor(&file, None, "w").unwrap();
    assert_eq!(out, [0; 8]);
}

/// Writes the committed files of `tests/data/bad/` again.
#[test]
#[ignore]
fn regenerate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad");
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let zeros = vec![0u8; badgen::MAX_CHUNK as usize];
    assert_eq!(xxh3_64(&zeros), badgen::ZEROS_64MIB_XXH3);
    for _ in 0..16 {
        h.update(&zeros);
    }
    let files = [
        ("9-tensor-64gib.tpde", badgen::big_tensor(1024, xxh3_64)),
        (
            "14-bomb-1gib.tpde",
            badgen::zero_bomb(16, h.digest128(), xxh3_64),
        ),
        (
            "12-huge-header.tpde",
            badgen::huge_header(
                10_000_000,
                xxh3_64,
                tpde::container::format::digest,
                xxh3_64(&[0; 8]),
            ),
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
