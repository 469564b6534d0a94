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

use std::collections::HashMap;
use std::rc::Rc;

use crate::source::dtype::Dtype;

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

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const END: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
/// An end-of-central-directory record without its comment.
const END_LEN: usize = 22;
/// The longest zip comment.
const MAX_COMMENT: usize = 0xffff;

#[cfg(test)]
thread_local! {
    /// End records and central directory records looked at (by this thread):
    /// the work of a scan, which the tests require to be linear.
    static EXAMINED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one record looked at (in tests).
fn examined() {
    #[cfg(test)]
    EXAMINED.with(|n| n.set(n.get() + 1));
}

#[cfg(test)]
thread_local! {
    /// Pickle bytes walked (by this thread).
    static WALKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The central directory (`start..end`, absolute offsets) of the archive
/// that begins at `start` if the end record at `e` closes it: its directory
/// (through the zip64 end record when there is one), at offsets counted from
/// `start`, ends right before the end record (or the zip64 records), and the
/// end record and its comment fit in `b`. O(1).
fn directory(b: &[u8], start: usize, e: usize) -> Option<(usize, usize)> {
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
fn zip_end(b: &[u8], start: usize) -> Option<usize> {
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

/// One entry of a central directory, as far as [`scan_one`] needs it.
struct Entry<'a> {
    name: &'a str,
    /// Stored (method 0) and not encrypted.
    stored: bool,
    compressed_size: u64,
    size: u64,
    /// Where its local header starts.
    header: u64,
}

/// Reads the central directory records in `b[start..end]`; `None` unless
/// they fill it exactly, each well-formed. Entries with a name that is not
/// UTF-8 are left out; of two entries with the same name, the later one
/// counts, at the place of the first (as the zip crate has it). O(end - start).
fn central_entries(b: &[u8], start: usize, end: usize) -> Option<Vec<Entry<'_>>> {
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
fn data_start(b: &[u8], header: u64) -> Option<u64> {
    let h = usize::try_from(header).ok()?;
    if u32_at(b, h)? != LOCAL {
        return None;
    }
    let (name_len, extra_len) = (u16_at(b, h + 26)?, u16_at(b, h + 28)?);
    header.checked_add(30 + name_len as u64 + extra_len as u64)
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

/// The element type of a torch storage class, by its name.
fn storage_dtype(class: &str) -> Dtype {
    match class {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        "ComplexFloatStorage" => Dtype::C64,
        _ => Dtype::U8,
    }
}

/// What the pickle walker knows of a value on its stack or in its memo.
#[derive(Debug, Clone)]
enum Value {
    /// A MARK (Python keeps marks apart from the stack; here they are inline).
    Mark,
    /// A text string.
    Str(Rc<str>),
    /// A global: (module, name), behind one pointer so that a value is 24
    /// bytes.
    Global(Rc<(Rc<str>, Rc<str>)>),
    /// Anything else.
    Other,
}

/// Storage key -> element type, from the persistent ids of a torch pickle.
///
/// Walks the opcodes of pickle protocols 0 to 5 with a stack of [`Value`]s and
/// a memo, without building any object, and records each tuple
/// `("storage", <global torch.XxxStorage>, <key>, ...)`. Stops at the first
/// unknown opcode or malformed bytes, keeping what was found before.
///
/// Memory and time stay in proportion to the pickle, with a small constant:
/// each opcode does O(1) work but for those that pop to a mark (which remove
/// what they scan), and the walk gives up (keeping what it found; the other
/// storages are opaque bytes, which is always safe) when its stack would
/// pass [`MAX_STACK`] values or its memo [`MAX_MEMO`] entries, far beyond
/// what torch writes.
fn storage_dtypes(pickle: &[u8]) -> HashMap<String, Dtype> {
    #[cfg(test)]
    WALKED.with(|n| n.set(n.get() + pickle.len() as u64));
    let mut found = HashMap::new();
    let mut walker = Walker::new(pickle);
    // `None` means STOP, the end of the input or malformed bytes: all end the walk.
    while walker.step(&mut found).is_some() {}
    found
}

/// The most values the pickle walker keeps on its stack. torch's pickles
/// stay far below: Python's pickler adds items to lists and dicts 1000 at
/// a time, and objects nest only as deep as Python's recursion limit.
const MAX_STACK: usize = 1 << 16;

/// The most memo entries the pickle walker keeps (24 bytes each): a few per
/// storage in torch's pickles.
const MAX_MEMO: usize = 1 << 20;

/// The most memo entries at indices past the dense run (Python's pickler
/// numbers them 0, 1, 2, ...; other writers may not).
const MAX_SPARSE_MEMO: usize = 1 << 12;

/// The state of [`storage_dtypes`]' walk.
struct Walker<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Set when a push was refused: the stack is full, the walk ends.
    full: bool,
    memo: Memo,
}

/// The pickle memo: entries 0, 1, 2, ... in a vector, any others in a small
/// map. Its length is the number of entries, as Python's.
#[derive(Default)]
struct Memo {
    dense: Vec<Value>,
    /// Entries at indices above `dense.len()`.
    sparse: HashMap<u64, Value>,
}

impl Memo {
    fn len(&self) -> usize {
        self.dense.len() + self.sparse.len()
    }

    fn get(&self, index: u64) -> Option<&Value> {
        match usize::try_from(index).ok().and_then(|i| self.dense.get(i)) {
            Some(v) => Some(v),
            None => self.sparse.get(&index),
        }
    }

    /// Sets entry `index`; `None` when that would pass the limits.
    fn put(&mut self, index: u64, value: Value) -> Option<()> {
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.dense.get_mut(i))
        {
            *slot = value;
            return Some(());
        }
        let is_new = !self.sparse.contains_key(&index);
        if is_new && self.len() >= MAX_MEMO {
            return None;
        }
        if index == self.dense.len() as u64 {
            self.sparse.remove(&index);
            self.dense.push(value);
            // Entries that were past the dense run may now continue it.
            while let Some(v) = self.sparse.remove(&(self.dense.len() as u64)) {
                self.dense.push(v);
            }
        } else {
            if is_new && self.sparse.len() >= MAX_SPARSE_MEMO {
                return None;
            }
            self.sparse.insert(index, value);
        }
        Some(())
    }
}

impl<'a> Walker<'a> {
    fn new(input: &'a [u8]) -> Self {
        Walker {
            input,
            pos: 0,
            stack: Vec::new(),
            full: false,
            memo: Memo::default(),
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.input.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        let bytes = self.take(n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    /// A length of `n` bytes, little-endian; signed when `signed` (negative
    /// is malformed).
    fn length(&mut self, n: usize, signed: bool) -> Option<usize> {
        let raw = self.uint(n)?;
        if signed && n == 4 && raw & 0x8000_0000 != 0 {
            return None;
        }
        usize::try_from(raw).ok()
    }

    /// The bytes up to the next '\n', which is consumed too.
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.input.get(self.pos..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        self.pos += n + 1;
        rest.get(..n)
    }

    /// Pushes `value`, unless the stack is full: then the walk ends at the
    /// next step.
    fn push(&mut self, value: Value) {
        if self.stack.len() >= MAX_STACK {
            self.full = true;
        } else {
            self.stack.push(value);
        }
    }

    /// Pops `n` values, none of them a mark.
    fn pop(&mut self, n: usize) -> Option<Vec<Value>> {
        let at = self.stack.len().checked_sub(n)?;
        if self.stack[at..].iter().any(|v| matches!(v, Value::Mark)) {
            return None;
        }
        Some(self.stack.split_off(at))
    }

    /// Pops the values above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Option<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Some(items)
    }

    /// The topmost value, which must not be a mark.
    fn top(&self) -> Option<&Value> {
        self.stack.last().filter(|v| !matches!(v, Value::Mark))
    }

    fn memo_put(&mut self, index: u64) -> Option<()> {
        let value = self.top()?.clone();
        self.memo.put(index, value)
    }

    fn memo_get(&mut self, index: u64) -> Option<()> {
        let value = self.memo.get(index)?.clone();
        self.push(value);
        Some(())
    }

    /// Pops `pops` values and pushes one opaque value in their place.
    fn replace(&mut self, pops: usize) -> Option<()> {
        self.pop(pops)?;
        self.push(Value::Other);
        Some(())
    }

    /// Pops to the mark (then requires a value below it, as APPENDS,
    /// SETITEMS and ADDITEMS add to the object under the mark).
    fn add_items(&mut self) -> Option<()> {
        self.pop_mark()?;
        self.top().map(|_| ())
    }

    /// Runs one opcode; `None` ends the walk.
    fn step(&mut self, found: &mut HashMap<String, Dtype>) -> Option<()> {
        if self.full {
            return None;
        }
        let op = self.byte()?;
        match op {
            // MARK, STOP, POP, POP_MARK, DUP
            b'(' => self.push(Value::Mark),
            b'.' => return None,
            b'0' => {
                self.stack.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let value = self.top()?.clone();
                self.push(value);
            }
            // FLOAT, INT, LONG, PERSID (text arguments)
            b'F' | b'I' | b'L' | b'P' => {
                self.line()?;
                self.push(Value::Other);
            }
            // BININT, BININT1, BININT2, BINFLOAT
            b'J' => self.skip_push(4)?,
            b'K' => self.skip_push(1)?,
            b'M' => self.skip_push(2)?,
            b'G' => self.skip_push(8)?,
            // NONE, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, NEWTRUE, NEWFALSE,
            // EMPTY_SET, NEXT_BUFFER
            b'N' | b'}' | b']' | b')' | 0x88 | 0x89 | 0x8f | 0x97 => self.push(Value::Other),
            // BINPERSID, TUPLE1
            b'Q' | 0x85 => self.replace(1)?,
            // REDUCE, BUILD, APPEND, NEWOBJ, TUPLE2
            b'R' | b'b' | b'a' | 0x81 | 0x86 => self.replace(2)?,
            // SETITEM, NEWOBJ_EX, TUPLE3
            b's' | 0x92 | 0x87 => self.replace(3)?,
            // STRING: a quoted repr
            b'S' => {
                let line = self.line()?;
                let value = match line {
                    [q, inner @ .., e] if (*q == b'\'' || *q == b'"') && q == e => {
                        text_value(inner, !inner.contains(&b'\\'))
                    }
                    _ => Value::Other,
                };
                self.push(value);
            }
            // BINSTRING, SHORT_BINSTRING, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'T' => self.push_text(4, true)?,
            b'U' => self.push_text(1, false)?,
            b'X' => self.push_text(4, false)?,
            0x8c => self.push_text(1, false)?,
            0x8d => self.push_text(8, false)?,
            // UNICODE: raw-unicode-escape text
            b'V' => {
                let line = self.line()?;
                let value = text_value(line, !line.contains(&b'\\'));
                self.push(value);
            }
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, LONG1, LONG4
            b'B' => self.skip_counted(4, false)?,
            b'C' => self.skip_counted(1, false)?,
            0x8e | 0x96 => self.skip_counted(8, false)?,
            0x8a => self.skip_counted(1, false)?,
            0x8b => self.skip_counted(4, true)?,
            // GLOBAL
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let value = match (std::str::from_utf8(module), std::str::from_utf8(name)) {
                    (Ok(module), Ok(name)) => Value::Global(Rc::new((module.into(), name.into()))),
                    _ => Value::Other,
                };
                self.push(value);
            }
            // STACK_GLOBAL
            0x93 => {
                let items = self.pop(2)?;
                let value = match (&items[0], &items[1]) {
                    (Value::Str(module), Value::Str(name)) => {
                        Value::Global(Rc::new((module.clone(), name.clone())))
                    }
                    _ => Value::Other,
                };
                self.push(value);
            }
            // INST: a global by two lines, arguments above a mark
            b'i' => {
                self.line()?;
                self.line()?;
                self.pop_mark()?;
                self.push(Value::Other);
            }
            // OBJ: class and arguments above a mark
            b'o' => {
                if self.pop_mark()?.is_empty() {
                    return None;
                }
                self.push(Value::Other);
            }
            // DICT, LIST, FROZENSET
            b'd' | b'l' | 0x91 => {
                self.pop_mark()?;
                self.push(Value::Other);
            }
            // TUPLE: where the persistent ids of storages are built
            b't' => {
                let items = self.pop_mark()?;
                if let [Value::Str(tag), Value::Global(global), Value::Str(key), ..] =
                    items.as_slice()
                {
                    let (module, class) = &**global;
                    if &**tag == "storage" && module.starts_with("torch") {
                        found.insert(key.to_string(), storage_dtype(class));
                    }
                }
                self.push(Value::Other);
            }
            // APPENDS, SETITEMS, ADDITEMS
            b'e' | b'u' | 0x90 => self.add_items()?,
            // GET, BINGET, LONG_BINGET
            b'g' => {
                let index = decimal(self.line()?)?;
                self.memo_get(index)?;
            }
            b'h' => {
                let index = self.uint(1)?;
                self.memo_get(index)?;
            }
            b'j' => {
                let index = self.uint(4)?;
                self.memo_get(index)?;
            }
            // PUT, BINPUT, LONG_BINPUT, MEMOIZE
            b'p' => {
                let index = decimal(self.line()?)?;
                self.memo_put(index)?;
            }
            b'q' => {
                let index = self.uint(1)?;
                self.memo_put(index)?;
            }
            b'r' => {
                let index = self.uint(4)?;
                self.memo_put(index)?;
            }
            0x94 => {
                let index = u64::try_from(self.memo.len()).ok()?;
                self.memo_put(index)?;
            }
            // PROTO, FRAME: no effect on the stack
            0x80 => {
                self.take(1)?;
            }
            0x95 => {
                self.take(8)?;
            }
            // EXT1, EXT2, EXT4
            0x82 => self.skip_push(1)?,
            0x83 => self.skip_push(2)?,
            0x84 => self.skip_push(4)?,
            // READONLY_BUFFER
            0x98 => {
                self.top()?;
            }
            _ => return None,
        }
        Some(())
    }

    /// Steps over `n` argument bytes and pushes an opaque value.
    fn skip_push(&mut self, n: usize) -> Option<()> {
        self.take(n)?;
        self.push(Value::Other);
        Some(())
    }

    /// Steps over a length of `n` bytes and that many bytes, and pushes an
    /// opaque value.
    fn skip_counted(&mut self, n: usize, signed: bool) -> Option<()> {
        let len = self.length(n, signed)?;
        self.skip_push(len)
    }

    /// Reads a length of `n` bytes and that many bytes of text, and pushes it.
    fn push_text(&mut self, n: usize, signed: bool) -> Option<()> {
        let len = self.length(n, signed)?;
        let bytes = self.take(len)?;
        self.push(text_value(bytes, true));
        Some(())
    }
}

/// A string value when `plain` and `bytes` are UTF-8, else an opaque one.
fn text_value(bytes: &[u8], plain: bool) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) if plain => Value::Str(text.into()),
        _ => Value::Other,
    }
}

/// A memo index written in decimal (GET and PUT of protocol 0).
fn decimal(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::safetensors;
    use std::io::Cursor;
    use zip::ZipArchive;

    const OPTIMIZER_1: &[u8] = include_bytes!("../../tests/data/torch/step-1/optimizer.pt");
    const OPTIMIZER_2: &[u8] = include_bytes!("../../tests/data/torch/step-2/optimizer.pt");
    const RNG_1: &[u8] = include_bytes!("../../tests/data/torch/step-1/rng_state.pth");
    const RNG_2: &[u8] = include_bytes!("../../tests/data/torch/step-2/rng_state.pth");
    const SCHEDULER_1: &[u8] = include_bytes!("../../tests/data/torch/step-1/scheduler.pt");
    const MODEL_1: &[u8] = include_bytes!("../../tests/data/torch/step-1/model.safetensors");
    const MIXED: &[u8] = include_bytes!("../../tests/data/torch/mixed.pt");
    const DEFLATED: &[u8] = include_bytes!("../../tests/data/torch/deflated.zip");
    const EXPECTED: &[u8] = include_bytes!("../../tests/data/torch/expected.safetensors");

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

    const DCP_1: &[u8] = include_bytes!("../../tests/data/dcp/step-1/__0_0.distcp");
    const DCP_2: &[u8] = include_bytes!("../../tests/data/dcp/step-2/__0_0.distcp");
    const DCP_EXPECTED: &[u8] = include_bytes!("../../tests/data/dcp/expected.safetensors");

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

    /// The stored pickle of a fixture, read through the zip crate.
    fn pickle_of(file: &[u8], name: &str) -> Vec<u8> {
        use std::io::Read;
        let mut archive = ZipArchive::new(Cursor::new(file)).unwrap();
        let mut out = Vec::new();
        archive
            .by_name(name)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn memoized_globals() {
        // After the first storage, torch writes "storage", the storage class
        // and "cpu" as BINGETs of memoized values.
        let pickle = pickle_of(OPTIMIZER_2, "optimizer/data.pkl");
        let found = storage_dtypes(&pickle);
        assert_eq!(found.len(), 12);
        assert!(found.values().all(|d| *d == Dtype::F32));
        // Every truncation keeps what came before the cut, and never more.
        let mut last = 0;
        for n in 0..=pickle.len() {
            let partial = storage_dtypes(&pickle[..n]);
            assert!(partial.len() >= last && partial.len() <= 12);
            assert!(partial.values().all(|d| *d == Dtype::F32));
            last = partial.len();
        }
        assert_eq!(last, 12);
    }

    /// A protocol-4 pickle of two storages as torch would write them with
    /// `pickle_protocol=4`: SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, FRAME and
    /// LONG_BINGET.
    fn protocol_4_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&0u64.to_le_bytes());
        let text = |p: &mut Vec<u8>, s: &str| {
            p.push(0x8c);
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        };
        p.extend_from_slice(b"}\x94("); // EMPTY_DICT, MEMOIZE (0), MARK
        text(&mut p, "a");
        p.push(0x94); // 1
        p.push(b'('); // persistent id of the first storage
        text(&mut p, "storage");
        p.push(0x94); // 2
        text(&mut p, "torch");
        p.push(0x94); // 3
        text(&mut p, "HalfStorage");
        p.push(0x94); // 4
        p.extend_from_slice(&[0x93, 0x94]); // STACK_GLOBAL, MEMOIZE (5)
        text(&mut p, "0");
        p.push(0x94); // 6
        text(&mut p, "cpu");
        p.push(0x94); // 7
        p.extend_from_slice(b"K\x03t\x94Q"); // numel, TUPLE, MEMOIZE (8), BINPERSID
        text(&mut p, "b");
        p.push(0x94); // 9
        p.push(b'('); // the second: all but the key memoized
        p.extend_from_slice(b"j\x02\x00\x00\x00j\x05\x00\x00\x00");
        text(&mut p, "1");
        p.push(0x94);
        p.extend_from_slice(b"j\x07\x00\x00\x00");
        p.extend_from_slice(b"M\x00\x01t\x94Q");
        p.extend_from_slice(b"u."); // SETITEMS, STOP
        p
    }

    #[test]
    fn protocol_4_opcodes() {
        let found = storage_dtypes(&protocol_4_pickle());
        assert_eq!(found.len(), 2);
        assert_eq!(found["0"], Dtype::F16);
        assert_eq!(found["1"], Dtype::F16);
    }

    /// The pickle of `flood_pickle` in `tests/badgen`: one value, `op` `n`
    /// times, then a FloatStorage persistent id for key "0".
    fn flood(op: u8, n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'N'];
        p.resize(3 + n, op);
        p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
        p.extend_from_slice(b"X\x01\x00\x00\x000K\x10t.");
        p
    }

    /// Walks `pickle` to its end; returns what the walker held at most.
    fn walk(pickle: &[u8]) -> (HashMap<String, Dtype>, usize, usize) {
        let mut found = HashMap::new();
        let mut w = Walker::new(pickle);
        let (mut stack, mut memo) = (0, 0);
        while w.step(&mut found).is_some() {
            stack = stack.max(w.stack.len());
            memo = memo.max(w.memo.len());
        }
        (found, stack.max(w.stack.len()), memo.max(w.memo.len()))
    }

    #[test]
    fn walker_memory_is_capped() {
        // A short flood is walked through, and the storage after it found.
        for op in [0x94, b'(', b'2'] {
            let (found, _, _) = walk(&flood(op, 1000));
            assert_eq!(found.len(), 1, "{op:#x}");
        }
        // A long one stops at the limits (and the storage is left opaque).
        let (found, stack, memo) = walk(&flood(0x94, MAX_MEMO + 10));
        assert!(found.is_empty());
        assert_eq!(memo, MAX_MEMO);
        assert!(stack <= 2);
        for op in [b'(', b'2'] {
            let (found, stack, memo) = walk(&flood(op, MAX_STACK + 10));
            assert!(found.is_empty());
            assert_eq!((stack, memo), (MAX_STACK, 0), "{op:#x}");
        }
        // Sparse memo indices (BINPUT 255 down to 0, LONG_BINPUT far out).
        let mut p = vec![b'N'];
        for i in (0..=255u8).rev() {
            p.extend_from_slice(&[b'q', i]);
        }
        for i in 0..(MAX_SPARSE_MEMO as u32 + 10) {
            p.push(b'r');
            p.extend_from_slice(&(1_000_000 + i).to_le_bytes());
        }
        let (_, _, memo) = walk(&p);
        assert_eq!(memo, 256 + MAX_SPARSE_MEMO);
        // Once the run catches up with them, sparse entries join it.
        let mut m = Memo::default();
        for i in [2u64, 1, 0, 3] {
            m.put(i, Value::Other).unwrap();
        }
        assert_eq!((m.dense.len(), m.sparse.len()), (4, 0));
        assert!(m.get(3).is_some() && m.get(4).is_none());
    }

    #[test]
    fn walker_stops_at_unknown_or_malformed_opcodes() {
        let p = protocol_4_pickle();
        // An unknown opcode before the second storage's tuple ends the walk.
        let cut = p.iter().rposition(|&b| b == b'(').unwrap();
        let mut bad = p[..cut].to_vec();
        bad.push(0xff);
        bad.extend_from_slice(&p[cut..]);
        let found = storage_dtypes(&bad);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["0"]);
        // Stack underflow, a GET of nothing, a negative length, a PUT of a mark.
        for p in [
            &b"t"[..],
            b"h\x09",
            b"T\xff\xff\xff\xff",
            b"(q\x00",
            b"\x8b\x00\x00\x00\x80",
        ] {
            assert!(storage_dtypes(p).is_empty());
        }
        // Untyped storages (dtypes without a legacy storage class) are opaque.
        let mut untyped = b"(X\x07\x00\x00\x00storage".to_vec();
        untyped.extend_from_slice(b"ctorch.storage\nUntypedStorage\n");
        untyped.extend_from_slice(b"X\x01\x00\x00\x000K\x01t.");
        assert_eq!(storage_dtypes(&untyped)["0"], Dtype::U8);
    }

    /// A minimal zip writer (no zip64, no data descriptors): entries are
    /// (name, compression method, bytes), and `aliases` adds central
    /// directory records (name, index of the entry whose local header it
    /// points at).
    fn build_zip(entries: &[(&str, u16, &[u8])], aliases: &[(&str, usize)]) -> Vec<u8> {
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
