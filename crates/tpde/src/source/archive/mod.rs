//! The tensor storages inside a file written by `torch.save`.
//!
//! Since PyTorch 1.6, `torch.save` writes a zip archive: `<prefix>/data.pkl`
//! (the pickled object, in which every tensor refers to its storage by a
//! persistent id), `<prefix>/data/<key>` (the raw little-endian bytes of each
//! storage), and small entries such as `<prefix>/byteorder`,
//! `<prefix>/version` and `<prefix>/.data/serialization_id`. Every entry is
//! stored uncompressed, its data aligned to 64 bytes. [`scan`] finds where
//! the storages lie in the file and reads their element types from the pickle,
//! so that a `.pt` file can be coded like a safetensors file whose header is
//! everything between the storages.
//!
//! Two readers make a scan: the zip's records (end records, zip64, the
//! central directory; in `zip`) place the entries, and a bounded walk of
//! each `data.pkl` (in `pickle`) names the storages' element types. This
//! file joins them, for one archive or a run of them (DCP `.distcp` files).

use std::collections::HashMap;

use crate::source::dtype::Dtype;

mod pickle;
mod zip;

use pickle::storage_dtypes;
use zip::{
    central_entries, data_start, directory, u32_at, zip_end, END, END_LEN, LOCAL, MAX_COMMENT,
};

/// One tensor storage of a torch.save archive: its raw bytes lie at
/// `offset..offset + len` of the archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveTensor {
    /// The zip entry's full name, e.g. `optimizer/data/3`.
    pub name: String,
    /// The element type named by the pickle's storage type (`torch.FloatStorage`
    /// is F32, ...); [`Dtype::U8`] when the pickle does not tell, names a type
    /// without a [`Dtype`], or disagrees with the storage's length.
    pub dtype: Dtype,
    /// Where the storage's bytes begin in the archive file.
    pub offset: u64,
    /// The storage's length in bytes (never 0).
    pub len: u64,
}

/// The storages of a torch.save zip archive, sorted by offset, non-overlapping,
/// each inside `bytes` and non-empty. `None` when `bytes` is not such an archive
/// (not a zip, unreadable, or no stored `data/` entries). Never panics, whatever the input.
///
/// Only entries stored uncompressed (and unencrypted) whose name ends in
/// `data/<key>` count; an entry that overlaps one at a lower offset is left
/// out. Element types come from `<prefix>/data.pkl` when that is a stored
/// entry too.
pub fn scan(bytes: &[u8]) -> Option<Vec<ArchiveTensor>> {
    scan_one(bytes).or_else(|| scan_concatenated(bytes))
}

/// The storages of a file that is several torch.save archives one after
/// another, as torch.distributed.checkpoint writes its `__R_N.distcp` files
/// (one archive per tensor shard or pickled value). The archives are found by
/// walking their zip records from the start of the file, reading only the
/// records' headers; each must hold all that lies between its start and the
/// next one's, and the last must end the file. A storage named
/// `<top>/data/<key>` in the `k`-th archive is called `<top>/<k>/data/<key>`, so
/// that names are unique and the same shard of the next checkpoint has the
/// same name. `None` unless there are at least two archives and some storage.
fn scan_concatenated(bytes: &[u8]) -> Option<Vec<ArchiveTensor>> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut k = 0usize;
    while start < bytes.len() {
        let end = zip_end(bytes, start)?;
        if let Some(tensors) = scan_one(&bytes[start..end]) {
            for mut t in tensors {
                t.offset += start as u64;
                t.name = match t.name.split_once('/') {
                    Some((top, rest)) => format!("{top}/{k}/{rest}"),
                    None => format!("{k}/{}", t.name),
                };
                out.push(t);
            }
        }
        start = end;
        k += 1;
    }
    (k >= 2 && !out.is_empty()).then_some(out)
}

/// The storages of one torch.save archive that is the whole of `bytes`:
/// it begins with a local file header, and its end record, found in the
/// last 64 KiB (the longest comment), closes it (see [`directory`]). Only
/// the last end record that does is read; the work is linear in the size of
/// the archive's central directory and 64 KiB.
fn scan_one(bytes: &[u8]) -> Option<Vec<ArchiveTensor>> {
    let file_len = u64::try_from(bytes.len()).ok()?;
    if u32_at(bytes, 0)? != LOCAL {
        return None;
    }
    let from = bytes.len().saturating_sub(END_LEN + MAX_COMMENT);
    let (cd_start, cd_end) = memchr::memmem::rfind_iter(&bytes[from..], &END)
        .find_map(|i| directory(bytes, 0, from + i))?;
    let entries = central_entries(bytes, cd_start, cd_end)?;

    // (prefix including its trailing '/', key, tensor) of each storage entry,
    // and the byte range of each stored `<prefix>data.pkl`.
    let mut storages: Vec<(String, String, ArchiveTensor)> = Vec::new();
    let mut pickles: HashMap<String, (usize, usize)> = HashMap::new();
    for entry in &entries {
        if !entry.stored {
            continue;
        }
        let len = entry.size;
        if len == 0 || entry.compressed_size != len {
            continue;
        }
        let Some(offset) = data_start(bytes, entry.header) else {
            continue;
        };
        match offset.checked_add(len) {
            Some(end) if end <= file_len => {}
            _ => continue,
        }
        let name = entry.name;
        if let Some(prefix) = name.strip_suffix("data.pkl") {
            if prefix.is_empty() || prefix.ends_with('/') {
                if let (Ok(start), Ok(end)) =
                    (usize::try_from(offset), usize::try_from(offset + len))
                {
                    pickles.insert(prefix.to_string(), (start, end));
                }
            }
        } else if let Some((prefix, key)) = split_storage_name(name) {
            storages.push((
                prefix.to_string(),
                key.to_string(),
                ArchiveTensor {
                    name: name.to_string(),
                    dtype: Dtype::U8,
                    offset,
                    len,
                },
            ));
        }
    }

    // Sort by offset (stable: at equal offsets the central directory's order
    // decides) and keep each entry that begins at or after the end of the last
    // one kept.
    storages.sort_by_key(|(_, _, t)| (t.offset, t.len));
    let mut kept: Vec<(String, String, ArchiveTensor)> = Vec::with_capacity(storages.len());
    let mut end_kept = 0u64;
    for storage in storages {
        if storage.2.offset >= end_kept {
            end_kept = storage.2.offset + storage.2.len;
            kept.push(storage);
        }
    }
    if kept.is_empty() {
        return None;
    }

    // Pickles are walked once per prefix; entries of the central directory
    // may point many prefixes at one pickle, so the bytes walked in all are
    // bounded by the file's length (beyond it, storages are opaque bytes).
    let mut budget = bytes.len();
    let mut dtypes: HashMap<String, HashMap<String, Dtype>> = HashMap::new();
    let mut out = Vec::with_capacity(kept.len());
    for (prefix, key, mut tensor) in kept {
        let map = dtypes.entry(prefix).or_insert_with_key(|prefix| {
            let Some(&(start, end)) = pickles.get(prefix) else {
                return HashMap::new();
            };
            let end = end.min(start.saturating_add(budget));
            let pickle = bytes.get(start..end).unwrap_or_default();
            budget -= pickle.len();
            storage_dtypes(pickle)
        });
        if let Some(dtype) = map.get(&key) {
            let width = dtype.bits().map_or(0, |bits| bits / 8);
            if width > 0 && tensor.len % width == 0 {
                tensor.dtype = dtype.clone();
            }
        }
        out.push(tensor);
    }
    Some(out)
}

/// Splits `<prefix>data/<key>` into (prefix, key), where the prefix is empty
/// or ends with '/', and the key is non-empty and holds no '/'.
fn split_storage_name(name: &str) -> Option<(&str, &str)> {
    let (head, key) = name.rsplit_once('/')?;
    if key.is_empty() {
        return None;
    }
    let prefix = head.strip_suffix("data")?;
    (prefix.is_empty() || prefix.ends_with('/')).then_some((prefix, key))
}

#[cfg(test)]
mod tests {
    use super::pickle::tests::protocol_4_pickle;
    use super::pickle::WALKED;
    use super::zip::tests::build_zip;
    use super::*;
    use crate::source::safetensors;

    const OPTIMIZER_1: &[u8] = include_bytes!("../../../tests/data/torch/step-1/optimizer.pt");
    pub(super) const OPTIMIZER_2: &[u8] =
        include_bytes!("../../../tests/data/torch/step-2/optimizer.pt");
    const RNG_1: &[u8] = include_bytes!("../../../tests/data/torch/step-1/rng_state.pth");
    const RNG_2: &[u8] = include_bytes!("../../../tests/data/torch/step-2/rng_state.pth");
    const SCHEDULER_1: &[u8] = include_bytes!("../../../tests/data/torch/step-1/scheduler.pt");
    const MODEL_1: &[u8] = include_bytes!("../../../tests/data/torch/step-1/model.safetensors");
    const MIXED: &[u8] = include_bytes!("../../../tests/data/torch/mixed.pt");
    const DEFLATED: &[u8] = include_bytes!("../../../tests/data/torch/deflated.zip");
    const EXPECTED: &[u8] = include_bytes!("../../../tests/data/torch/expected.safetensors");

    /// The bytes of a found storage.
    fn data<'a>(file: &'a [u8], t: &ArchiveTensor) -> &'a [u8] {
        &file[t.offset as usize..(t.offset + t.len) as usize]
    }

    /// The documented guarantees of `scan`'s answer.
    fn check_invariants(file: &[u8], found: &[ArchiveTensor]) {
        assert!(!found.is_empty());
        let mut end = 0;
        for t in found {
            assert!(t.len > 0, "{t:?}");
            assert!(t.offset >= end, "{t:?} overlaps or is out of order");
            end = t.offset + t.len;
            assert!(end <= file.len() as u64, "{t:?} past the end");
        }
    }

    /// Every storage found in `file` equals the tensor `<label>:<key>` of
    /// expected.safetensors (written by the safetensors library from the
    /// same tensors), in bytes and dtype; returns how many were compared.
    fn compare_with_expected(label: &str, file: &[u8]) -> usize {
        let header = safetensors::parse(EXPECTED).unwrap();
        let found = scan(file).unwrap();
        check_invariants(file, &found);
        for t in &found {
            let key = t.name.rsplit('/').next().unwrap();
            let want = header
                .get(&format!("{label}:{key}"))
                .unwrap_or_else(|| panic!("{label}:{key} not in expected.safetensors"));
            assert_eq!(t.dtype, want.dtype, "{}", t.name);
            let off = header.header_len as usize;
            assert_eq!(
                data(file, t),
                &EXPECTED[off + want.begin as usize..off + want.end as usize],
                "{}",
                t.name
            );
        }
        found.len()
    }

    const DCP_1: &[u8] = include_bytes!("../../../tests/data/dcp/step-1/__0_0.distcp");
    const DCP_2: &[u8] = include_bytes!("../../../tests/data/dcp/step-2/__0_0.distcp");
    const DCP_EXPECTED: &[u8] = include_bytes!("../../../tests/data/dcp/expected.safetensors");

    #[test]
    fn dcp_shards_are_archives_one_after_another() {
        let header = safetensors::parse(DCP_EXPECTED).unwrap();
        let hl = header.header_len as usize;
        for (label, file) in [("step-1/", DCP_1), ("step-2/", DCP_2)] {
            let found = scan(file).unwrap();
            check_invariants(file, &found);
            // Every tensor DCP saved (4 of the model, 3 per parameter of
            // Adam) is a storage, with its dtype and bytes.
            let want: Vec<_> = header
                .tensors
                .iter()
                .filter(|t| t.name.starts_with(label))
                .collect();
            assert_eq!(found.len(), want.len());
            for w in want {
                let bytes = &DCP_EXPECTED[hl + w.begin as usize..hl + w.end as usize];
                assert!(
                    found
                        .iter()
                        .any(|t| data(file, t) == bytes && t.dtype == w.dtype),
                    "{} not found",
                    w.name
                );
            }
            // Names are unique and number the archives.
            let mut names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), found.len());
            assert!(
                found.iter().all(|t| t.name.ends_with("/data/0")),
                "{names:?}"
            );
        }
        // The same shard has the same name at both steps.
        let names = |f| {
            scan(f)
                .unwrap()
                .into_iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(DCP_1), names(DCP_2));
    }

    #[test]
    fn a_zip_after_other_bytes_is_not_an_archive() {
        // The last archive of a run, with bytes before it that are not a zip:
        // not what torch.save writes.
        let mut file = b"not a zip at all".to_vec();
        file.extend_from_slice(OPTIMIZER_1);
        assert_eq!(scan(&file), None);
        // A run of archives that stops short of the end of the file.
        let mut file = DCP_1.to_vec();
        file.extend_from_slice(b"trailing");
        assert_eq!(scan(&file), None);
        // Cut inside its last archive.
        assert_eq!(scan(&DCP_1[..DCP_1.len() - 10]), None);
    }

    #[test]
    fn storages_match_what_torch_saved() {
        assert_eq!(
            compare_with_expected("step-1/optimizer.pt", OPTIMIZER_1),
            12
        );
        assert_eq!(
            compare_with_expected("step-2/optimizer.pt", OPTIMIZER_2),
            12
        );
        assert_eq!(compare_with_expected("step-1/rng_state.pth", RNG_1), 1);
        assert_eq!(compare_with_expected("step-2/rng_state.pth", RNG_2), 1);
        assert_eq!(compare_with_expected("mixed.pt", MIXED), 8);
        // Python's zipfile, no alignment, data/0 deflated.
        assert_eq!(compare_with_expected("mixed.pt", DEFLATED), 7);
    }

    #[test]
    fn adam_state() {
        for (file, step) in [(OPTIMIZER_1, 1.0f32), (OPTIMIZER_2, 2.0)] {
            let found = scan(file).unwrap();
            let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
            let want: Vec<String> = (0..12).map(|k| format!("optimizer/data/{k}")).collect();
            assert_eq!(names, want);
            // Per parameter (weight 8x16, bias 8, LayerNorm weight 8 and bias 8):
            // step (a 0-d F32 tensor), exp_avg, exp_avg_sq.
            for (p, numel) in [16 * 8u64, 8, 8, 8].into_iter().enumerate() {
                let step_storage = &found[3 * p];
                assert_eq!(step_storage.dtype, Dtype::F32);
                assert_eq!(step_storage.len, 4);
                assert_eq!(data(file, step_storage), step.to_le_bytes());
                for t in &found[3 * p + 1..3 * p + 3] {
                    assert_eq!(t.dtype, Dtype::F32, "{}", t.name);
                    assert_eq!(t.len, 4 * numel, "{}", t.name);
                }
            }
            // torch aligns every entry's data to 64 bytes.
            assert!(found.iter().all(|t| t.offset % 64 == 0));
        }
    }

    /// Name, dtype and length of each storage found.
    fn summary(found: &[ArchiveTensor]) -> Vec<(&str, Dtype, u64)> {
        found
            .iter()
            .map(|t| (t.name.as_str(), t.dtype.clone(), t.len))
            .collect()
    }

    #[test]
    fn dtype_mapping() {
        let found = scan(MIXED).unwrap();
        let got = summary(&found);
        assert_eq!(
            got,
            [
                ("mixed/data/0", Dtype::F32, 40),
                ("mixed/data/1", Dtype::F16, 12),
                ("mixed/data/2", Dtype::BF16, 10),
                ("mixed/data/3", Dtype::I64, 56),
                ("mixed/data/4", Dtype::I32, 36),
                ("mixed/data/5", Dtype::U8, 10),
                ("mixed/data/6", Dtype::Bool, 5),
                ("mixed/data/7", Dtype::F64, 32),
            ]
        );
        // Known values: arange(-3, 4) * 1_000_000_007 and [1/3, -0.0, 1e300, -2.5].
        let i64s: Vec<i64> = data(MIXED, &found[3])
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(i64s, (-3..4).map(|i| i * 1_000_000_007).collect::<Vec<_>>());
        let f64s: Vec<u64> = data(MIXED, &found[7])
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<u64> = [1.0f64 / 3.0, -0.0, 1e300, -2.5]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(f64s, want);
        assert_eq!(data(MIXED, &found[6]), [1, 0, 0, 1, 1]);
    }

    #[test]
    fn pickles_are_walked_in_proportion_to_the_file() {
        // One long pickle (DUP, POP pairs: walked to its end), and many
        // prefixes whose data.pkl is that same entry.
        let mut pickle = b"\x80\x02N".to_vec();
        pickle.extend_from_slice(&b"20".repeat(50_000));
        pickle.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nHalfStorage\n");
        pickle.extend_from_slice(b"X\x01\x00\x00\x000K\x01t.");
        let names: Vec<String> = (0..300).map(|i| format!("p{i}/data/0")).collect();
        let aliases: Vec<String> = (0..300).map(|i| format!("p{i}/data.pkl")).collect();
        let mut entries = vec![("p/data.pkl", 0, &pickle[..])];
        entries.extend(names.iter().map(|n| (n.as_str(), 0, &b"\x01\x02"[..])));
        let aliases: Vec<(&str, usize)> = aliases.iter().map(|a| (a.as_str(), 0)).collect();
        let zip = build_zip(&entries, &aliases);
        WALKED.with(|n| n.set(0));
        let found = scan(&zip).unwrap();
        let walked = WALKED.with(|n| n.get());
        assert_eq!(found.len(), 300);
        assert!(
            walked <= zip.len() as u64,
            "{walked} bytes walked for {}",
            zip.len()
        );
        // The first prefixes got their dtype before the budget ran out.
        assert_eq!(found[0].dtype, Dtype::F16);
    }

    #[test]
    fn not_archives() {
        assert_eq!(scan(b""), None);
        assert_eq!(scan(b"PK\x05\x06"), None);
        assert_eq!(scan(MODEL_1), None);
        assert_eq!(scan(&[0u8; 1000]), None);
        // A zip without storages: the scheduler's state has no tensors.
        assert_eq!(scan(SCHEDULER_1), None);
    }

    #[test]
    fn every_truncation_and_corruption_is_safe() {
        for file in [OPTIMIZER_1, MIXED, DEFLATED] {
            for n in 0..file.len() {
                if let Some(found) = scan(&file[..n]) {
                    check_invariants(&file[..n], &found);
                }
            }
            let mut copy = file.to_vec();
            for i in 0..copy.len() {
                for flip in [0xffu8, 0x80, 0x01] {
                    copy[i] ^= flip;
                    if let Some(found) = scan(&copy) {
                        check_invariants(&copy, &found);
                    }
                    copy[i] ^= flip;
                }
            }
        }
    }

    #[test]
    fn entries_that_do_not_count() {
        let pickle = protocol_4_pickle();
        let zip = build_zip(
            &[
                ("a/data.pkl", 0, &pickle),
                ("a/data/0", 0, b"\x01\x02\x03\x04"),
                ("a/data/1", 0, b"\x01\x02\x03"), // F16 by the pickle, odd length
                ("a/data/2", 8, b"\x03\x00"),     // deflated
                ("a/data/3", 0, b""),             // empty
                ("a/.data/serialization_id", 0, b"12345"),
                ("a/mydata/4", 0, b"xx"),
                ("a/data/5/6", 0, b"xx"),
                ("data/7", 0, b"\x07\x07"), // no prefix: still a storage
            ],
            &[("a/data/8", 1)], // the same bytes as a/data/1: overlaps it
        );
        let found = scan(&zip).unwrap();
        check_invariants(&zip, &found);
        let got = summary(&found);
        assert_eq!(
            got,
            [
                ("a/data/0", Dtype::F16, 4),
                ("a/data/1", Dtype::U8, 3),
                ("data/7", Dtype::U8, 2),
            ]
        );
        assert_eq!(data(&zip, &found[0]), [1, 2, 3, 4]);

        // A deflated pickle is not read: every storage is opaque.
        let zip = build_zip(
            &[("a/data.pkl", 8, &pickle), ("a/data/0", 0, b"\x01\x02")],
            &[],
        );
        assert_eq!(scan(&zip).unwrap()[0].dtype, Dtype::U8);

        // Only deflated storages: not an archive of storages.
        let zip = build_zip(
            &[("a/data.pkl", 0, &pickle), ("a/data/0", 8, b"\x01\x02")],
            &[],
        );
        assert_eq!(scan(&zip), None);
    }

    #[test]
    fn storage_names() {
        assert_eq!(
            split_storage_name("archive/data/0"),
            Some(("archive/", "0"))
        );
        assert_eq!(split_storage_name("a/b/data/12"), Some(("a/b/", "12")));
        assert_eq!(split_storage_name("data/x"), Some(("", "x")));
        assert_eq!(split_storage_name("a/data/"), None);
        assert_eq!(split_storage_name("a/.data/x"), None);
        assert_eq!(split_storage_name("a/metadata/x"), None);
        assert_eq!(split_storage_name("a/data.pkl"), None);
    }
}
