//! The bounded pickle walker: storage key -> element type, read off the
//! persistent ids of a torch pickle without building any object, with a
//! stack and a memo whose sizes are capped (see [`storage_dtypes`]).

use std::collections::HashMap;
use std::rc::Rc;

use crate::source::dtype::Dtype;

#[cfg(test)]
thread_local! {
    /// Pickle bytes walked (by this thread).
    pub(super) static WALKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
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
pub(super) fn storage_dtypes(pickle: &[u8]) -> HashMap<String, Dtype> {
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
pub(super) mod tests {
    use super::*;
    use crate::source::archive::tests::OPTIMIZER_2;
    use ::zip::ZipArchive;
    use std::io::Cursor;

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
    pub(crate) fn protocol_4_pickle() -> Vec<u8> {
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
}
