//! A strict reader (and a small writer) of the safetensors format.
//!
//! ```text
//! [0, 8)        u64 little-endian N: the header size
//! [8, 8 + N)    UTF-8 JSON: {"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}
//! [8 + N, end)  the data section, indexed entirely by the tensors, without holes
//! ```
//!
//! Every size read from the file is checked before use; nothing is trusted.

use std::collections::{BTreeMap, HashMap};

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::common::error::{Error, Result};
use crate::source::dtype::Dtype;

/// The largest header tpde accepts, as the safetensors reference does.
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range inside the data section.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    /// True when the tensor holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }

    /// Number of elements (product of the shape; 1 for a 0-d tensor).
    pub fn elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.shape.iter().product()
    }
}

/// The parsed header of a safetensors file: its tensors in data order.
#[derive(Debug, Clone)]
pub struct Header {
    /// Length of the header block: 8 + N.
    pub header_len: u64,
    /// Tensors sorted by (begin, end, name): the order of their data.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` value, if any, as it is written in the header
    /// (the JSON text, byte for byte; the format wants a map of strings,
    /// tpde keeps whatever is there, since the header is kept byte for byte).
    /// Parse it with `serde_json::from_str(m.get())` to read it.
    pub metadata: Option<Box<RawValue>>,
    /// Position of each tensor in `tensors`, by name.
    by_name: HashMap<String, usize>,
}

impl Header {
    /// Finds a tensor by name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Total length of the file this header describes.
    pub fn file_len(&self) -> u64 {
        self.header_len + self.tensors.last().map_or(0, |t| t.end)
    }
}

/// The fields of a tensor entry, as they are written (parsed when needed).
///
/// The header is read without building a JSON tree (which takes ~17 times
/// the text's size): the top-level object as a map of names to raw values,
/// each tensor entry as the raw values of its three fields. As in a JSON
/// tree, a key given twice counts once, with its last value; other fields
/// are skipped; an entry may also be the array `[dtype, shape, data_offsets]`.
#[derive(Default)]
struct RawTensor<'a> {
    dtype: Option<&'a RawValue>,
    shape: Option<&'a RawValue>,
    data_offsets: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Dtype,
    Shape,
    DataOffsets,
    #[serde(other)]
    Other,
}

const FIELDS: &[&str] = &["dtype", "shape", "data_offsets"];

impl<'de> Deserialize<'de> for RawTensor<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTensor<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a tensor entry {\"dtype\", \"shape\", \"data_offsets\"}")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut t = RawTensor::default();
                while let Some(field) = m.next_key::<Field>()? {
                    let slot = match field {
                        Field::Dtype => &mut t.dtype,
                        Field::Shape => &mut t.shape,
                        Field::DataOffsets => &mut t.data_offsets,
                        Field::Other => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(m.next_value()?);
                }
                Ok(t)
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut next = |i: usize| {
                    s.next_element::<&'de RawValue>()?
                        .ok_or_else(|| de::Error::invalid_length(i, &"3 fields"))
                };
                Ok(RawTensor {
                    dtype: Some(next(0)?),
                    shape: Some(next(1)?),
                    data_offsets: Some(next(2)?),
                })
            }
        }
        d.deserialize_struct("RawTensor", FIELDS, V)
    }
}

/// A field of a tensor entry, parsed: an error names the field.
fn field<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &'static str,
) -> Result<T, String> {
    let raw = raw.ok_or_else(|| format!("missing field `{name}`"))?;
    serde_json::from_str(raw.get()).map_err(|e| format!("field `{name}`: {e}"))
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Safetensors(msg.into())
}

/// Reads the header size from the first 8 bytes. Errors when they are missing
/// or when the size is out of bounds for a file of `file_len` bytes.
pub fn header_size(prefix: &[u8], file_len: u64) -> Result<u64> {
    let bytes: [u8; 8] = prefix
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            bad(format!(
                "file of {file_len} bytes is too short for the 8-byte header size"
            ))
        })?;
    let n = u64::from_le_bytes(bytes);
    if n > MAX_HEADER_SIZE {
        return Err(bad(format!(
            "header size {n} exceeds the limit of {MAX_HEADER_SIZE} bytes"
        )));
    }
    if n.checked_add(8).is_none_or(|end| end > file_len) {
        return Err(bad(format!(
            "header size {n} runs past the end of the file ({file_len} bytes)"
        )));
    }
    Ok(n)
}

/// Parses the header block (`8 + N` bytes) of a file of `file_len` bytes and
/// checks that the tensors index the data section exactly. Memory stays in
/// proportion to the header: no JSON tree is built, and the metadata is
/// kept as its text.
pub fn parse_header(block: &[u8], file_len: u64) -> Result<Header> {
    parse_header_with(block, file_len, true)
}

/// [`parse_header`]; unless `full`, [`Header::metadata`] is `None` (the
/// metadata is checked to be JSON, not copied) and [`Header::get`] finds
/// nothing: for a caller that only walks [`Header::tensors`].
pub(crate) fn parse_header_with(block: &[u8], file_len: u64, full: bool) -> Result<Header> {
    let n = header_size(block, file_len)?;
    let json = block
        .get(8..)
        .filter(|j| j.len() as u64 == n)
        .ok_or_else(|| bad("header block length does not match its size field"))?;
    let text = std::str::from_utf8(json).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let map: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;

    let mut metadata = None;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            if full {
                metadata = Some(value.to_owned());
            }
            continue;
        }
        let fields = (|| -> Result<_, String> {
            let raw: RawTensor = serde_json::from_str(value.get()).map_err(|e| e.to_string())?;
            let dtype: String = field(raw.dtype, "dtype")?;
            let shape: Vec<u64> = field(raw.shape, "shape")?;
            let offsets: (u64, u64) = field(raw.data_offsets, "data_offsets")?;
            Ok((dtype, shape, offsets))
        })();
        let (dtype, shape, (begin, end)) =
            fields.map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        if begin > end {
            return Err(bad(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] are reversed"
            )));
        }
        let dtype = Dtype::from_name(&dtype);
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {name:?}: shape {shape:?} overflows")))?;
        if let Some(bits) = dtype.bits() {
            let total_bits = elements
                .checked_mul(bits)
                .ok_or_else(|| bad(format!("tensor {name:?}: shape {shape:?} overflows")))?;
            if total_bits % 8 != 0 {
                return Err(bad(format!(
                    "tensor {name:?}: {elements} elements of {bits} bits do not fill whole bytes"
                )));
            }
            if total_bits / 8 != end - begin {
                return Err(bad(format!(
                    "tensor {name:?}: {} {dtype} x {:?} needs {} bytes but data_offsets give {}",
                    elements,
                    shape,
                    total_bits / 8,
                    end - begin
                )));
            }
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            begin,
            end,
        });
    }
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));

    let data_len = file_len - 8 - n;
    let mut cursor = 0u64;
    for t in &tensors {
        if t.begin != cursor {
            return Err(bad(if t.begin > cursor {
                format!(
                    "tensor {:?}: gap in the data section at byte {cursor}",
                    t.name
                )
            } else {
                format!(
                    "tensor {:?}: data overlaps the previous tensor at byte {}",
                    t.name, t.begin
                )
            }));
        }
        cursor = t.end;
    }
    if cursor != data_len {
        return Err(bad(format!(
            "tensors index {cursor} bytes of data but the data section holds {data_len}"
        )));
    }
    let by_name = if full {
        tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(Header {
        header_len: 8 + n,
        tensors,
        metadata,
        by_name,
    })
}

/// Parses a whole safetensors file held in memory.
pub fn parse(file: &[u8]) -> Result<Header> {
    let len = file.len() as u64;
    let n = header_size(file, len)?;
    // n + 8 <= len was checked, so the slice is in bounds.
    parse_header(&file[..(8 + n) as usize], len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_a_valid_file() {
        let f = file(
            r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}"#,
            &[0; 12],
        );
        let h = parse(&f).unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensors[1].dtype, Dtype::F32);
        assert_eq!(h.metadata.as_ref().unwrap().get(), r#"{"k":"v"}"#);
        assert_eq!(h.file_len(), f.len() as u64);
    }

    #[test]
    fn rejects_bad_files() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "too short"),
            (u64::MAX.to_le_bytes().to_vec(), "exceeds"),
            (file("{", &[]), "JSON"),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
                "needs 8 bytes",
            ),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#,
                    &[0; 3],
                ),
                "gap",
            ),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#,
                    &[0; 3],
                ),
                "overlaps",
            ),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
                    &[0; 3],
                ),
                "data section holds 3",
            ),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,2]}}"#,
                    &[0; 2],
                ),
                "overflows",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                    &[0; 2],
                ),
                "whole bytes",
            ),
        ];
        for (bytes, needle) in cases {
            let err = parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let mut bad_utf8 = 3u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
        assert!(parse(&bad_utf8).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn metadata_is_kept_as_written_without_a_json_tree() {
        // Spacing, key order, escapes and numbers beyond f64 stay as they
        // were (a JSON tree refused 1e400 and re-wrote the rest).
        let meta = r#"{ "z": "\u00e9", "a" : [1e400, 12345678901234567890123, {"x":[]}] }"#;
        let header = format!(
            r#"{{"__metadata__": {meta}, "t":{{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}}}"#
        );
        let f = file(&header, &[1, 2]);
        let h = parse(&f).unwrap();
        assert_eq!(h.metadata.as_ref().unwrap().get(), meta);
        assert_eq!(h.tensors[0].name, "t");
        // Deeply nested metadata is skipped without recursion.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let f = file(&format!(r#"{{"__metadata__":{deep}}}"#), &[]);
        assert_eq!(parse(&f).unwrap().metadata.unwrap().get().len(), deep.len());
    }

    #[test]
    fn tensor_entries_read_as_a_json_tree_would() {
        // A key given twice counts with its last value (the earlier one is
        // not even looked at), unknown fields are skipped, escaped keys
        // are keys, and an entry may be an array of the three fields.
        let f = file(
            r#"{"a":{"dtype":5,"dtype":"U8","shape":[2],"x":{"y":[1,{}]},"data_offsets":[0,2]},
                "b":["I16",[1],[2,4]],"a2":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},
                "a2":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}}"#,
            &[0; 5],
        );
        let h = parse(&f).unwrap();
        let got: Vec<_> = h
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype.name(), t.begin, t.end))
            .collect();
        assert_eq!(
            got,
            [("a", "U8", 0, 2), ("b", "I16", 2, 4), ("a2", "U8", 4, 5)]
        );
        for (header, needle) in [
            (
                r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#,
                "missing field `dtype`",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}"#,
                "field `shape`",
            ),
            (r#"{"a":["U8",[1]]}"#, "invalid length"),
            (r#"{"a":["U8",[1],[0,1],4]}"#, "tensor \"a\""),
            (r#"{"a":7}"#, "tensor \"a\""),
            (r#"[]"#, "not a JSON object"),
        ] {
            let err = parse(&file(header, &[0])).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{header}: {err:?} should mention {needle:?}"
            );
        }
    }

    #[test]
    fn keeps_unknown_dtypes_as_opaque() {
        let f = file(
            r#"{"a":{"dtype":"Q3_K","shape":[7],"data_offsets":[0,5]}}"#,
            &[0; 5],
        );
        let h = parse(&f).unwrap();
        assert_eq!(h.tensors[0].dtype, Dtype::Unknown("Q3_K".into()));
        assert_eq!(h.tensors[0].dtype.coding_width(), 1);
    }
}

/// One tensor to write: name, dtype name, shape, little-endian bytes.
pub struct TensorData<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

/// Writes a safetensors file. Tensors are laid out widest element type first
/// (then in the order given), so that with the header padded to a multiple of
/// 8 every tensor's data is aligned to its element size. Each byte length
/// must match dtype and shape; names must be unique and not `__metadata__`.
pub fn write(
    tensors: &[TensorData<'_>],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    let width = |t: &TensorData| Dtype::from_name(t.dtype).coding_width();
    order.sort_by_key(|&i| std::cmp::Reverse(width(&tensors[i])));
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        let m = m
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0u64;
    for &i in &order {
        let t = &tensors[i];
        let bits = Dtype::from_name(t.dtype).bits();
        let elements = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = match (bits, elements) {
            (Some(b), Some(n)) => n.checked_mul(b).map(|x| x.div_ceil(8)),
            (None, Some(_)) => Some(t.data.len() as u64), // an unknown dtype: any length
            _ => None,
        };
        if expected != Some(t.data.len() as u64) {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?}: {} bytes do not hold a {} tensor of shape {:?}",
                t.name,
                t.data.len(),
                t.dtype,
                t.shape
            )));
        }
        if t.name == "__metadata__" || header.contains_key(t.name) {
            return Err(Error::InvalidArgument(format!(
                "tensor name {:?} is used twice or reserved",
                t.name
            )));
        }
        let end = offset + t.data.len() as u64;
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset as usize);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for &i in &order {
        out.extend_from_slice(tensors[i].data);
    }
    Ok(out)
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn written_files_parse_aligned_and_round_trip() {
        let a = [1u8; 6]; // 3 x F16
        let b = [2u8; 16]; // 2 x F64
        let c = [3u8; 5]; // 5 x BOOL
        let tensors = [
            TensorData {
                name: "a",
                dtype: "F16",
                shape: &[3],
                data: &a,
            },
            TensorData {
                name: "b",
                dtype: "F64",
                shape: &[2, 1],
                data: &b,
            },
            TensorData {
                name: "c",
                dtype: "BOOL",
                shape: &[5],
                data: &c,
            },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let file = write(&tensors, Some(&meta)).unwrap();
        let h = parse(&file).unwrap();
        assert_eq!(h.header_len % 8, 0);
        for t in &tensors {
            let info = h.get(t.name).unwrap();
            let start = (h.header_len + info.begin) as usize;
            assert_eq!(&file[start..start + t.data.len()], t.data);
            // Aligned to the element size.
            assert_eq!(start % info.dtype.coding_width(), 0);
        }
        // The widest first.
        assert_eq!(h.tensors[0].name, "b");
        let bad = [TensorData {
            name: "x",
            dtype: "F32",
            shape: &[2],
            data: &a,
        }];
        assert!(write(&bad, None).is_err());
        let twice = [
            TensorData {
                name: "x",
                dtype: "U8",
                shape: &[1],
                data: &c[..1],
            },
            TensorData {
                name: "x",
                dtype: "U8",
                shape: &[1],
                data: &c[..1],
            },
        ];
        assert!(write(&twice, None).is_err());
    }
}
