//! Helpers shared by the integration tests: an in-memory safetensors writer,
//! sha256, a seeded RNG, and encode/decode shorthands.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use sha2::{Digest, Sha256};

/// One tensor to write into a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn new(name: &str, dtype: &str, shape: &[u64], data: Vec<u8>) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            data,
        }
    }

    /// A tensor of `dtype` and `shape` filled with random bytes of the right
    /// length (for an unknown dtype, of an arbitrary length: 7/3 bytes an element).
    pub fn random(rng: &mut Rng, name: &str, dtype: &str, shape: &[u64]) -> Tensor {
        let elements = shape.iter().product::<u64>() as usize;
        let len = match dtype_bits(dtype) {
            Some(_) => byte_len(dtype, shape).expect("a shape that fills whole bytes"),
            None => elements * 7 / 3,
        };
        Tensor::new(name, dtype, shape, rng.bytes(len))
    }
}

/// Escapes a string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds a safetensors file: the header JSON (`__metadata__` first when
/// given, then the tensors in the given order), padded with spaces to a
/// multiple of 8 bytes as the reference implementation does, then the data of
/// the tensors in the given order.
pub fn safetensors(tensors: &[Tensor], metadata: Option<&[(&str, &str)]>) -> Vec<u8> {
    let mut entries = Vec::new();
    if let Some(meta) = metadata {
        let kv: Vec<String> = meta
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        entries.push(format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.data.len() as u64;
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        entries.push(format!(
            "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_string(&t.name),
            json_string(&t.dtype),
            shape.join(","),
            offset,
            end
        ));
        offset = end;
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut file = Vec::new();
    let data: Vec<&[u8]> = tensors.iter().map(|t| &t.data[..]).collect();
    raw_safetensors(&header, &data, &mut file);
    file
}

/// Writes a safetensors file from a header text (padded here with spaces to a
/// multiple of 8) and the data section pieces, in order.
pub fn raw_safetensors(header: &str, data: &[&[u8]], out: &mut Vec<u8>) {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for d in data {
        out.extend_from_slice(d);
    }
}

/// Bits per element of a known dtype; `None` for an unknown one.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Byte length of a tensor of a known dtype, when it fills whole bytes.
pub fn byte_len(dtype: &str, shape: &[u64]) -> Option<usize> {
    let bits = dtype_bits(dtype)? * shape.iter().product::<u64>();
    (bits % 8 == 0).then_some((bits / 8) as usize)
}

/// Every dtype of the safetensors format that tpde knows.
pub const KNOWN_DTYPES: &[&str] = &[
    "F64", "F32", "F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
    "C64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL",
];

/// Element width tpde codes a dtype with (1, 2, 4 or 8 bytes).
pub fn coding_width(dtype: &str) -> usize {
    match dtype {
        "C64" => 4,
        d => match dtype_bits(d) {
            Some(b) if b >= 8 => (b / 8) as usize,
            _ => 1,
        },
    }
}

/// sha256 of some bytes, as lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Relative path -> sha256 of every file (folders as "dir"), recursively.
pub fn tree(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, sha256(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every step in `steps` of `store` restores (through `get`, to disk) to
/// exactly the folder `original(step)`.
pub fn check_restores(
    store: &tpde::store::Store,
    original: impl Fn(u64) -> std::path::PathBuf,
    steps: &[u64],
) {
    let out = tempfile::tempdir().unwrap();
    for &s in steps {
        let dest = out.path().join(format!("restored-{s}"));
        store
            .get(s, &dest)
            .unwrap_or_else(|e| panic!("step {s}: {e}"));
        assert_eq!(tree(&dest), tree(&original(s)), "step {s}");
    }
}

/// A small seeded RNG (splitmix64): deterministic, no dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// A roughly normal value (sum of uniforms), scaled: weights-like.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        (s - 2.0) * 1.7
    }

    /// `n` weights-like F32 values, little-endian.
    pub fn f32_weights(&mut self, n: usize, scale: f32) -> Vec<u8> {
        (0..n)
            .flat_map(|_| ((self.normal() as f32) * scale).to_le_bytes())
            .collect()
    }
}

/// Changes element `i` (of `width` bytes) of `data` to a different bit
/// pattern: a small step of the low bits most of the time, random bits
/// otherwise. The element always ends up different.
pub fn perturb(rng: &mut Rng, data: &mut [u8], width: usize, i: usize) {
    let el = &mut data[i * width..(i + 1) * width];
    let before = el.to_vec();
    loop {
        if rng.chance(0.7) {
            let mut v = 0u64;
            for (k, b) in el.iter().enumerate() {
                v |= (*b as u64) << (8 * k);
            }
            let step = 1 + rng.below(16);
            v = if rng.chance(0.5) {
                v.wrapping_add(step)
            } else {
                v.wrapping_sub(step)
            };
            for (k, b) in el.iter_mut().enumerate() {
                *b = (v >> (8 * k)) as u8;
            }
        } else {
            for b in el.iter_mut() {
                *b = rng.next_u64() as u8;
            }
        }
        if el[..] != before[..] {
            return;
        }
    }
}

/// Changes each element of `data` with probability `p`; returns how many
/// elements changed.
pub fn perturb_fraction(rng: &mut Rng, data: &mut [u8], width: usize, p: f64) -> usize {
    let n = data.len() / width;
    let mut changed = 0;
    for i in 0..n {
        if rng.chance(p) {
            perturb(rng, data, width, i);
            changed += 1;
        }
    }
    changed
}

/// Encodes into a vector, panicking on error.
pub fn encode(cur: &[u8], reference: Option<&[u8]>, opts: &tpde::EncodeOptions) -> Vec<u8> {
    try_encode(cur, reference, opts).expect("encode")
}

/// Encodes into a vector.
pub fn try_encode(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &tpde::EncodeOptions,
) -> tpde::Result<Vec<u8>> {
    let mut out = Vec::new();
    let stats = tpde::encode(cur, reference, opts, &mut out, None)?;
    assert_eq!(stats.encoded_len, out.len() as u64, "stats.encoded_len");
    assert_eq!(stats.original_len, cur.len() as u64, "stats.original_len");
    Ok(out)
}

/// Decodes into a vector.
pub fn decode(container: &[u8], reference: Option<&[u8]>) -> tpde::Result<Vec<u8>> {
    let mut out = Vec::new();
    tpde::decode(container, reference, &mut out, None)?;
    Ok(out)
}

/// A frozen sample file: `tests/data/<dir>/<name>`.
/// The codings of each tensor's chunks of a `.tpde` file, in file order.
pub fn codings(file: &[u8]) -> Vec<Vec<tpde::codec::chunk::ChunkCoding>> {
    let c = tpde::container::format::Container::open(file).unwrap();
    c.index
        .tensors
        .iter()
        .map(|t| t.chunks.iter().map(|k| k.coding).collect())
        .collect()
}

pub fn frozen(dir: &str, name: &str) -> Vec<u8> {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Options with a small chunk size, so that small tensors span many chunks.
pub fn small_chunks(chunk_size: usize) -> tpde::EncodeOptions {
    tpde::EncodeOptions {
        chunk_size,
        ..Default::default()
    }
}

/// Encodes `cur` against `reference`, decodes it back and checks that the
/// result is byte-identical (sha256), that `decode_tensor` gives each tensor's
/// bytes, and that `inspect` agrees with the file. Returns the container.
pub fn roundtrip(cur: &[u8], reference: Option<&[u8]>, opts: &tpde::EncodeOptions) -> Vec<u8> {
    let packed = encode(cur, reference, opts);
    let restored = decode(&packed, reference).expect("decode");
    assert_eq!(
        sha256(&restored),
        sha256(cur),
        "decoded file differs from the original ({} vs {} bytes)",
        restored.len(),
        cur.len()
    );
    check_tensors(&packed, reference, cur);
    let report = tpde::container::inspect::inspect(&packed).expect("inspect");
    assert_eq!(report.original_len, cur.len() as u64);
    assert_eq!(report.encoded_len, packed.len() as u64);
    assert_eq!(report.reference.is_some(), reference.is_some());
    packed
}

/// Checks that `decode_tensor` gives back every tensor of `original`.
pub fn check_tensors(packed: &[u8], reference: Option<&[u8]>, original: &[u8]) {
    let header = tpde::source::safetensors::parse(original).expect("original parses");
    let hl = header.header_len as usize;
    for t in &header.tensors {
        let want = &original[hl + t.begin as usize..hl + t.end as usize];
        let got = tpde::decode_tensor(packed, reference, &t.name)
            .unwrap_or_else(|e| panic!("decode_tensor({:?}): {e}", t.name));
        assert!(got == want, "decode_tensor({:?}) differs", t.name);
    }
}

/// Every float element of `got` within `bound` of `cur` (NaN and
/// infinities exact); everything else byte for byte.
pub fn check_within(got: &[u8], cur: &[u8], bound: f64) {
    let (hg, hc) = (
        tpde::source::safetensors::parse(got).unwrap(),
        tpde::source::safetensors::parse(cur).unwrap(),
    );
    assert_eq!(got[..hg.header_len as usize], cur[..hc.header_len as usize]);
    for t in &hc.tensors {
        let s = (hc.header_len + t.begin) as usize..(hc.header_len + t.end) as usize;
        let (a, b) = (&got[s.clone()], &cur[s]);
        let vals: Option<Vec<(f64, f64)>> = match t.dtype.name() {
            "F32" => Some(
                a.chunks_exact(4)
                    .zip(b.chunks_exact(4))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| f64::from(f32::from_le_bytes(c.try_into().unwrap()));
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            "F64" => Some(
                a.chunks_exact(8)
                    .zip(b.chunks_exact(8))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap());
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            "F16" => Some(
                a.chunks_exact(2)
                    .zip(b.chunks_exact(2))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| half::f16::from_le_bytes([c[0], c[1]]).to_f64();
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            "BF16" => Some(
                a.chunks_exact(2)
                    .zip(b.chunks_exact(2))
                    .map(|(x, y)| {
                        let f = |c: &[u8]| half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
                        (f(x), f(y))
                    })
                    .collect(),
            ),
            _ => None,
        };
        match vals {
            None => assert_eq!(a, b, "{} is exact", t.name),
            Some(v) => {
                for (i, (x, y)) in v.into_iter().enumerate() {
                    if y.is_finite() {
                        assert!(
                            (x - y).abs() * (1.0 + f64::EPSILON) <= bound,
                            "{}[{i}]",
                            t.name
                        );
                    } else {
                        assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                    }
                }
            }
        }
    }
}
