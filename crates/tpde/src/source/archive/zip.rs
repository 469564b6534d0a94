//! Just enough of a zip to find torch.save's storages: the end record that
//! closes an archive (through the zip64 records when there are some), the
//! end of an archive followed by others, the central directory's entries and
//! where an entry's data begins. Every reader takes bounds-checked offsets
//! and answers `None` on anything malformed, in time linear in what it reads.

use std::collections::HashMap;

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?) as usize)
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

pub(super) const LOCAL: u32 = 0x0403_4b50;
pub(super) const CENTRAL: u32 = 0x0201_4b50;
pub(super) const END64: u32 = 0x0606_4b50;
pub(super) const LOCATOR64: u32 = 0x0706_4b50;
pub(super) const END: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
/// An end-of-central-directory record without its comment.
pub(super) const END_LEN: usize = 22;
/// The longest zip comment.
pub(super) const MAX_COMMENT: usize = 0xffff;

#[cfg(test)]
thread_local! {
    /// End records and central directory records looked at (by this thread):
    /// the work of a scan, which the tests require to be linear.
    static EXAMINED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one record looked at (in tests).
pub(super) fn examined() {
    #[cfg(test)]
    EXAMINED.with(|n| n.set(n.get() + 1));
}

/// The central directory (`start..end`, absolute offsets) of the archive
/// that begins at `start` if the end record at `e` closes it: its directory
/// (through the zip64 end record when there is one), at offsets counted from
/// `start`, ends right before the end record (or the zip64 records), and the
/// end record and its comment fit in `b`. O(1).
pub(super) fn directory(b: &[u8], start: usize, e: usize) -> Option<(usize, usize)> {
    examined();
    let end = e.checked_add(END_LEN)?.checked_add(u16_at(b, e + 20)?)?;
    if end > b.len() || b.get(e..e + 4)? != END {
        return None;
    }
    if e >= start + 20 && u32_at(b, e - 20)? == LOCATOR64 {
        let end64 = start.checked_add(usize::try_from(u64_at(b, e - 12)?).ok()?)?;
        let len64 = usize::try_from(u64_at(b, end64 + 4)?).ok()?;
        if u32_at(b, end64)? != END64 || end64.checked_add(12)?.checked_add(len64)? != e - 20 {
            return None;
        }
        let size = usize::try_from(u64_at(b, end64 + 40)?).ok()?;
        let offset = usize::try_from(u64_at(b, end64 + 48)?).ok()?;
        let cd = start.checked_add(offset)?;
        return (cd.checked_add(size)? == end64).then_some((cd, end64));
    }
    let cd = start.checked_add(u32_at(b, e + 16)? as usize)?;
    let cd_end = cd.checked_add(u32_at(b, e + 12)? as usize)?;
    (cd_end == e).then_some((cd, cd_end))
}

/// Where the zip archive that starts at `start` ends. torch.save writes its
/// entries' sizes after their data (data descriptors), so the archive's end
/// is found by searching for its end-of-central-directory record: the first
/// one that closes the archive (see [`directory`]). Each candidate costs
/// O(1), so the search is linear in the bytes it passes. The bytes searched
/// are let go of as the search moves on (see [`crate::common::mmap`]).
pub(super) fn zip_end(b: &[u8], start: usize) -> Option<usize> {
    const WINDOW: usize = 16 << 20;
    if u32_at(b, start)? != LOCAL {
        return None;
    }
    let closes = |e: usize| {
        directory(b, start, e)?;
        Some(e + END_LEN + u16_at(b, e + 20)?)
    };
    let mut from = start;
    while from < b.len() {
        let to = (from + WINDOW).min(b.len());
        // The window overlaps the next by 3 bytes, for a record across them.
        let hay = &b[from..(to + 3).min(b.len())];
        let found = memchr::memmem::find_iter(hay, &END).find_map(|i| closes(from + i));
        crate::common::mmap::release(&b[from..to]);
        if found.is_some() {
            return found;
        }
        from = to;
    }
    None
}

/// One entry of a central directory, as far as [`scan_one`](super::scan_one) needs it.
pub(super) struct Entry<'a> {
    pub(super) name: &'a str,
    /// Stored (method 0) and not encrypted.
    pub(super) stored: bool,
    pub(super) compressed_size: u64,
    pub(super) size: u64,
    /// Where its local header starts.
    pub(super) header: u64,
}

/// Reads the central directory records in `b[start..end]`; `None` unless
/// they fill it exactly, each well-formed. Entries with a name that is not
/// UTF-8 are left out; of two entries with the same name, the later one
/// counts, at the place of the first (as the zip crate has it). O(end - start).
pub(super) fn central_entries(b: &[u8], start: usize, end: usize) -> Option<Vec<Entry<'_>>> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut p = start;
    while p < end {
        examined();
        if u32_at(b, p)? != CENTRAL {
            return None;
        }
        let flags = u16_at(b, p + 8)?;
        let method = u16_at(b, p + 10)?;
        let mut compressed_size = u64::from(u32_at(b, p + 20)?);
        let mut size = u64::from(u32_at(b, p + 24)?);
        let (name_len, extra_len, comment_len) =
            (u16_at(b, p + 28)?, u16_at(b, p + 30)?, u16_at(b, p + 32)?);
        let mut header = u64::from(u32_at(b, p + 42)?);
        let name_at = p + 46;
        let extra_at = name_at.checked_add(name_len)?;
        let next = extra_at.checked_add(extra_len)?.checked_add(comment_len)?;
        if next > end {
            return None;
        }
        // The zip64 extra field holds, in this order, each of the sizes and
        // the header offset whose 32-bit field is all ones.
        let mut extra = &b[extra_at..extra_at + extra_len];
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0)?, u16_at(extra, 2)?);
            let body = extra.get(4..4 + len)?;
            if id == 1 {
                let mut fields = body
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
                for v in [&mut size, &mut compressed_size, &mut header] {
                    if *v == 0xffff_ffff {
                        *v = fields.next()?;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        if let Ok(name) = std::str::from_utf8(&b[name_at..extra_at]) {
            let entry = Entry {
                name,
                stored: method == 0 && flags & 1 == 0,
                compressed_size,
                size,
                header,
            };
            match by_name.get(name) {
                Some(&i) => entries[i] = entry,
                None => {
                    by_name.insert(name, entries.len());
                    entries.push(entry);
                }
            }
        }
        p = next;
    }
    Some(entries)
}

/// Where the data of the entry whose local header starts at `header`
/// begins; `None` when no local header is there.
pub(super) fn data_start(b: &[u8], header: u64) -> Option<u64> {
    let h = usize::try_from(header).ok()?;
    if u32_at(b, h)? != LOCAL {
        return None;
    }
    let (name_len, extra_len) = (u16_at(b, h + 26)?, u16_at(b, h + 28)?);
    header.checked_add(30 + name_len as u64 + extra_len as u64)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::source::archive::{scan, ArchiveTensor};

    /// What `scan(file)` found, and the records it looked at.
    fn counted_scan(file: &[u8]) -> (Option<Vec<ArchiveTensor>>, u64) {
        EXAMINED.with(|n| n.set(0));
        let found = scan(file);
        (found, EXAMINED.with(|n| n.get()))
    }

    #[test]
    fn telling_a_zip_is_linear() {
        // End records one after another (each plausible: one entry, a
        // directory at offset 0), after a local header or not: each record
        // is looked at a bounded number of times, where the zip crate looked
        // at every one for every one (24 s for 3.5 MB).
        let record: Vec<u8> = [
            &b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00"[..],
            &46u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &[0, 0],
        ]
        .concat();
        let n = 100_000;
        for head in [&b"PK\x03\x04"[..], b""] {
            let mut file = head.to_vec();
            file.resize(file.len() + 26, 0);
            for _ in 0..n {
                file.extend_from_slice(&record);
            }
            let (found, work) = counted_scan(&file);
            assert_eq!(found, None);
            assert!(work <= n as u64 + 4000, "{work} records looked at for {n}");
        }
        // Records 4 bytes apart ("PK\x05\x06" repeated).
        let mut file = b"PK\x03\x04".to_vec();
        file.extend_from_slice(&b"PK\x05\x06".repeat(n));
        let (found, work) = counted_scan(&file);
        assert_eq!(found, None);
        assert!(
            work <= n as u64 + 20_000,
            "{work} records looked at for {n}"
        );
        // A run of many small archives, each with a fake end record in its
        // storage: linear in the number of archives too.
        let one = build_zip(&[("a/data/0", 0, &record[..])], &[]);
        let k = 2000;
        let run = one.repeat(k);
        let (found, work) = counted_scan(&run);
        assert_eq!(found.unwrap().len(), k);
        assert!(
            work <= 8 * k as u64,
            "{work} records looked at for {k} archives"
        );
    }

    /// A minimal zip writer (no zip64, no data descriptors): entries are
    /// (name, compression method, bytes), and `aliases` adds central
    /// directory records (name, index of the entry whose local header it
    /// points at).
    pub(crate) fn build_zip(entries: &[(&str, u16, &[u8])], aliases: &[(&str, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        let mut offsets = Vec::new();
        let record = |central: &mut Vec<u8>, name: &str, method: u16, len: usize, at: usize| {
            central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00");
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]); // time, date, crc32
            central.extend_from_slice(&(len as u32).to_le_bytes());
            central.extend_from_slice(&(len as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
            central.extend_from_slice(&(at as u32).to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        };
        for &(name, method, data) in entries {
            offsets.push(out.len());
            out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00");
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        }
        let mut count = 0u16;
        for (&(name, method, data), &at) in entries.iter().zip(&offsets) {
            record(&mut central, name, method, data.len(), at);
            count += 1;
        }
        for &(name, index) in aliases {
            let (_, method, data) = entries[index];
            record(&mut central, name, method, data.len(), offsets[index]);
            count += 1;
        }
        let start = out.len();
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&(start as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }
}
