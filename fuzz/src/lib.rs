//! Helpers shared by the fuzz targets and the seed-corpus generator: building
//! small safetensors files, and the fixed reference the `decode` target uses.

use std::sync::OnceLock;

/// One tensor of a safetensors file to build.
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
}

/// Builds a safetensors file: the tensors' data are laid out in the order
/// given, the JSON header lists them in that order too (the format does not
/// care), with an optional `__metadata__` entry and the header padded with
/// spaces to a multiple of 8 bytes plus `extra_pad` more.
pub fn safetensors(tensors: &[Tensor], metadata: bool, extra_pad: usize) -> Vec<u8> {
    let mut json = String::from("{");
    let mut first = true;
    if metadata {
        json.push_str(r#""__metadata__":{"format":"pt","step":"7"}"#);
        first = false;
    }
    let mut offset = 0u64;
    for t in tensors {
        if !first {
            json.push(',');
        }
        first = false;
        let end = offset + t.data.len() as u64;
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        json.push_str(&format!(
            r#"{}:{{"dtype":{},"shape":[{}],"data_offsets":[{},{}]}}"#,
            serde_json::to_string(&t.name).expect("a string serializes"),
            serde_json::to_string(&t.dtype).expect("a string serializes"),
            shape.join(","),
            offset,
            end
        ));
        offset = end;
    }
    json.push('}');
    let pad = (8 - json.len() % 8) % 8 + extra_pad;
    json.extend(std::iter::repeat_n(' ', pad));
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    for t in tensors {
        file.extend_from_slice(&t.data);
    }
    file
}

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [-scale, scale), as an f64.
    pub fn float(&mut self, scale: f64) -> f64 {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
    }
}

/// The bits of an f16 close to `x` (truncating; subnormals flushed to zero).
pub fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        sign
    } else if exp >= 31 {
        sign | 0x7c00
    } else {
        sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
    }
}

/// `n` elements of `dtype` (a safetensors dtype name), weight-like values for
/// the float types and small numbers for the integer ones.
pub fn values(dtype: &str, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let x = rng.float(0.05);
        match dtype {
            "F32" => out.extend_from_slice(&(x as f32).to_le_bytes()),
            "F64" => out.extend_from_slice(&x.to_le_bytes()),
            "BF16" => out.extend_from_slice(&(((x as f32).to_bits() >> 16) as u16).to_le_bytes()),
            "F16" => out.extend_from_slice(&f16_bits(x as f32).to_le_bytes()),
            "I32" => out.extend_from_slice(&((rng.next_u64() % 2001) as i32 - 1000).to_le_bytes()),
            "I64" => out.extend_from_slice(&((rng.next_u64() % 2001) as i64 - 1000).to_le_bytes()),
            _ => out.push((rng.next_u64() % 7) as u8),
        }
    }
    out
}

/// The tensors of the fixed reference: one of each common dtype, one empty,
/// one large enough for the encoder to group its planes.
pub fn reference_tensors() -> Vec<Tensor> {
    let mut rng = Rng(0x7470_6465);
    let mut t = |name: &str, dtype: &str, shape: &[u64]| {
        let n = shape.iter().product::<u64>() as usize;
        Tensor::new(name, dtype, shape, values(dtype, n, &mut rng))
    };
    vec![
        t("w", "F32", &[4, 16]),
        t("b", "BF16", &[32]),
        t("h", "F16", &[24]),
        t("i", "I32", &[16]),
        t("u", "U8", &[40]),
        t("d", "F64", &[8]),
        t("e", "F32", &[0]),
        // Large enough (> 4096 elements) for grouped sections, with
        // magnitudes spread over many exponents, as trained weights have.
        Tensor::new("g", "F32", &[128, 128], {
            let mut rng = Rng(0x6772);
            (0..128 * 128)
                .flat_map(|_| {
                    let m = (rng.float(6.0) - 6.0).exp2() * rng.float(1.0).signum();
                    (m as f32).to_le_bytes()
                })
                .collect()
        }),
    ]
}

/// The fixed, small, valid safetensors reference that the `decode` target
/// decodes against (the seed corpus holds deltas against it).
pub fn reference() -> &'static [u8] {
    static REF: OnceLock<Vec<u8>> = OnceLock::new();
    REF.get_or_init(|| safetensors(&reference_tensors(), true, 0))
}

/// A zip archive of stored entries (name, bytes) as torch.save writes them,
/// without alignment or data descriptors.
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for &(name, data) in entries {
        let at = out.len() as u32;
        let (len, name_len) = (data.len() as u32, name.len() as u16);
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00");
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00");
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&at.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let start = out.len() as u32;
    let count = entries.len() as u16;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}
