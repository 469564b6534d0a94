//! Structured round trip: two small safetensors files built from the input
//! (the current one derived from the reference by sparse or dense edits), the
//! current one encoded against the reference (or alone) with a fuzzed chunk
//! size, decoded again: it must come back byte for byte, and each tensor must
//! come back alone through `decode_tensor`.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tpde_fuzz::{safetensors, values, Rng, Tensor};

/// Most elements per tensor, and tensors per file.
const MAX_ELEMS: usize = 600;
const MAX_TENSORS: usize = 5;

#[derive(Debug, Arbitrary)]
struct Input {
    tensors: Vec<Spec>,
    /// chunk size = 64 + 8 * (chunk % 256): 64 ..= 2104 bytes.
    chunk: u8,
    /// zstd level = level % 5 - 1: -1 ..= 3.
    level: u8,
    /// Encode without the reference (a keyframe).
    keyframe: bool,
    /// Encode the files as opaque bytes rather than as safetensors.
    opaque: bool,
    /// The lossy mode with bound 10^-(k % 8): the float tensors must come
    /// back within it, everything else exact.
    lossy: Option<u8>,
    /// Whether each file has a `__metadata__` entry, and the extra padding.
    cur_metadata: bool,
    ref_metadata: bool,
    ref_pad: u8,
    /// Tensors of the reference only, and its order of tensor data.
    ref_extra: u8,
    ref_reversed: bool,
}

#[derive(Debug, Arbitrary)]
struct Spec {
    dtype: Dtype,
    /// Elements: elems % (MAX_ELEMS + 1).
    elems: u16,
    /// Shape: [n], [1, n], [n, 1], or [] when n == 1.
    shape: u8,
    fill: Fill,
    edit: Edit,
    /// How the reference holds the tensor of that name.
    in_ref: InRef,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Dtype {
    F32,
    BF16,
    F16,
    I32,
    U8,
    F64,
    I64,
    Bool,
    F8E4M3,
    C64,
    /// A dtype tpde does not know: opaque bytes.
    Unknown,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::Bool => "BOOL",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::C64 => "C64",
            Dtype::Unknown => "Q3_K",
        }
    }

    fn width(self) -> usize {
        match self {
            Dtype::U8 | Dtype::Bool | Dtype::F8E4M3 | Dtype::Unknown => 1,
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::C64 => 8,
        }
    }
}

/// The reference's data of a tensor.
#[derive(Debug, Arbitrary)]
enum Fill {
    /// Weight-like values from a seed.
    Values(u64),
    /// These bytes, repeated.
    Bytes(Vec<u8>),
    /// One byte everywhere.
    Const(u8),
}

/// How the current tensor differs from the reference's.
#[derive(Debug, Arbitrary)]
enum Edit {
    Same,
    /// Elements (index % n) set to these bit patterns (truncated to the width).
    Sparse(Vec<(u16, u64)>),
    /// Each element, with probability density/256, moved by a few ULPs
    /// (an integer step on its bits, within `spread`).
    Nudge {
        seed: u64,
        density: u8,
        spread: u8,
    },
    /// Each element, with probability density/256, XORed with random low bits.
    Flip {
        seed: u64,
        density: u8,
        bits: u8,
    },
    /// All new values.
    Fresh(u64),
    /// The same values but one element fewer (the shapes no longer match).
    Shrink,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum InRef {
    Same,
    Missing,
    /// Same bytes, another dtype of the same width (mismatch: no reference).
    OtherDtype,
}

fn fill(f: &Fill, dtype: Dtype, n: usize) -> Vec<u8> {
    let len = n * dtype.width();
    match f {
        Fill::Values(seed) => {
            let name = match dtype {
                Dtype::C64 => "F32",
                d => d.name(),
            };
            let per = if matches!(dtype, Dtype::C64) { 2 } else { 1 };
            let mut v = values(name, n * per, &mut Rng(*seed));
            v.resize(len, 0);
            v
        }
        Fill::Bytes(b) if !b.is_empty() => b.iter().copied().cycle().take(len).collect(),
        Fill::Bytes(_) => vec![0; len],
        Fill::Const(c) => vec![*c; len],
    }
}

fn edit(e: &Edit, dtype: Dtype, data: &[u8]) -> (Vec<u8>, usize) {
    let w = dtype.width();
    let n = data.len() / w;
    let mut cur = data.to_vec();
    let get = |b: &[u8], i: usize| {
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(&b[i * w..(i + 1) * w]);
        u64::from_le_bytes(x)
    };
    let set = |b: &mut [u8], i: usize, v: u64| {
        b[i * w..(i + 1) * w].copy_from_slice(&v.to_le_bytes()[..w])
    };
    match e {
        Edit::Same => {}
        Edit::Sparse(edits) if n > 0 => {
            for &(i, v) in edits {
                set(&mut cur, i as usize % n, v);
            }
        }
        Edit::Sparse(_) => {}
        Edit::Nudge {
            seed,
            density,
            spread,
        } => {
            let mut rng = Rng(*seed);
            let spread = u64::from(*spread) + 1;
            for i in 0..n {
                let r = rng.next_u64();
                if (r & 0xff) < u64::from(*density) {
                    let step = (r >> 8) % (2 * spread + 1);
                    let v = get(&cur, i).wrapping_add(step).wrapping_sub(spread);
                    set(&mut cur, i, v);
                }
            }
        }
        Edit::Flip {
            seed,
            density,
            bits,
        } => {
            let mut rng = Rng(*seed);
            let mask = (1u64 << (bits % 64)).wrapping_sub(1).max(1);
            for i in 0..n {
                let r = rng.next_u64();
                if (r & 0xff) < u64::from(*density) {
                    let v = get(&cur, i) ^ (rng.next_u64() & mask);
                    set(&mut cur, i, v);
                }
            }
        }
        Edit::Fresh(seed) => cur = fill(&Fill::Values(*seed), dtype, n),
        Edit::Shrink if n > 0 => {
            cur.truncate((n - 1) * w);
            return (cur, n - 1);
        }
        Edit::Shrink => {}
    }
    (cur, n)
}

fn shape(sel: u8, n: usize) -> Vec<u64> {
    let n = n as u64;
    match sel % 4 {
        0 => vec![n],
        1 => vec![1, n],
        2 => vec![n, 1],
        _ if n == 1 => vec![],
        _ => vec![n],
    }
}

fn other_dtype(d: Dtype) -> Dtype {
    match d {
        Dtype::F32 => Dtype::I32,
        Dtype::I32 => Dtype::F32,
        Dtype::BF16 => Dtype::F16,
        Dtype::F16 => Dtype::BF16,
        Dtype::U8 => Dtype::Bool,
        Dtype::Bool | Dtype::F8E4M3 | Dtype::Unknown => Dtype::U8,
        Dtype::F64 | Dtype::C64 => Dtype::I64,
        Dtype::I64 => Dtype::F64,
    }
}

/// The value of element `i` of a float tensor, if `dtype` is one the lossy
/// mode quantizes.
fn float_at(dtype: &str, b: &[u8], i: usize) -> Option<f64> {
    Some(match dtype {
        "F32" => f64::from(f32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().ok()?)),
        "F64" => f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?),
        "F16" => half::f16::from_le_bytes([b[i * 2], b[i * 2 + 1]]).to_f64(),
        "BF16" => half::bf16::from_le_bytes([b[i * 2], b[i * 2 + 1]]).to_f64(),
        _ => return None,
    })
}

/// The lossy guarantee: same header, non-float tensors exact, float
/// elements within `e` (NaN and infinities bit for bit).
fn check_within(cur: &[u8], got: &[u8], e: f64) {
    assert_eq!(cur.len(), got.len(), "lossy output of another length");
    let h = tpde::source::safetensors::parse(cur).expect("built a valid file");
    let hl = h.header_len as usize;
    assert!(cur[..hl] == got[..hl], "lossy output changed the header");
    for t in &h.tensors {
        let r = hl + t.begin as usize..hl + t.end as usize;
        let (a, b) = (&cur[r.clone()], &got[r]);
        let w = t.dtype.coding_width();
        let dtype = t.dtype.name();
        if a.is_empty() || float_at(dtype, a, 0).is_none() {
            assert!(a == b, "tensor {:?} of dtype {dtype} is not exact", t.name);
            continue;
        }
        for i in 0..a.len() / w {
            let (x, y) = (float_at(dtype, a, i).unwrap(), float_at(dtype, b, i).unwrap());
            if x.is_finite() {
                // Exact for values read from F16, BF16, F32; for F64 the
                // subtraction is off by half an ulp at most.
                let d = (x - y).abs();
                let d = if dtype == "F64" { d * (1.0 + f64::EPSILON) } else { d };
                assert!(d <= e, "{:?}[{i}]: {y} vs {x}, bound {e}", t.name);
            } else {
                assert!(a[i * w..(i + 1) * w] == b[i * w..(i + 1) * w], "NaN/inf changed");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut cur_tensors = Vec::new();
    let mut ref_tensors = Vec::new();
    for (k, s) in input.tensors.iter().take(MAX_TENSORS).enumerate() {
        let n = s.elems as usize % (MAX_ELEMS + 1);
        // Names sort differently from the data order, and need JSON escapes.
        let name = format!("layer.{}\"\\{}", MAX_TENSORS - k, k);
        let ref_data = fill(&s.fill, s.dtype, n);
        let (cur_data, cur_n) = edit(&s.edit, s.dtype, &ref_data);
        let ref_shape = shape(s.shape, n);
        cur_tensors.push(Tensor::new(
            &name,
            s.dtype.name(),
            &shape(s.shape, cur_n),
            cur_data,
        ));
        match s.in_ref {
            InRef::Same => {
                ref_tensors.push(Tensor::new(&name, s.dtype.name(), &ref_shape, ref_data))
            }
            InRef::Missing => {}
            InRef::OtherDtype => {
                let d = other_dtype(s.dtype);
                let m = ref_data.len() / d.width();
                ref_tensors.push(Tensor::new(&name, d.name(), &shape(s.shape, m), ref_data));
            }
        }
    }
    for k in 0..input.ref_extra % 3 {
        let data = fill(&Fill::Values(u64::from(k)), Dtype::F32, 20);
        ref_tensors.push(Tensor::new(&format!("extra{k}"), "F32", &[20], data));
    }
    if input.ref_reversed {
        ref_tensors.reverse();
    }
    let cur = safetensors(&cur_tensors, input.cur_metadata, 0);
    let reference = safetensors(
        &ref_tensors,
        input.ref_metadata,
        usize::from(input.ref_pad % 17),
    );
    let reference = (!input.keyframe).then_some(&reference[..]);

    let bound = input.lossy.map(|k| 10f64.powi(-i32::from(k % 8)));
    let opts = tpde::EncodeOptions {
        chunk_size: 64 + 8 * usize::from(input.chunk),
        level: i32::from(input.level % 5) - 1,
        input: if input.opaque {
            tpde::InputKind::Opaque
        } else {
            tpde::InputKind::Safetensors
        },
        lossy: bound.map(tpde::codec::lossy::Bound::MaxAbsError),
    };
    let mut packed = Vec::new();
    if let Err(e) = tpde::encode(&cur, reference, &opts, &mut packed, None) {
        panic!("encode of a valid file failed: {e}");
    }
    let mut restored = Vec::new();
    if let Err(e) = tpde::decode(&packed, reference, &mut restored, None) {
        panic!("decode of a fresh encode failed: {e}");
    }
    match bound {
        Some(e) if !input.opaque => check_within(&cur, &restored, e),
        _ => assert!(restored == cur, "round trip changed the file"),
    }
    if let Err(e) = tpde::container::inspect::inspect(&packed) {
        panic!("inspect of a fresh encode failed: {e}");
    }
    if input.opaque {
        return;
    }
    let header = tpde::source::safetensors::parse(&cur).expect("built a valid file");
    let hl = header.header_len as usize;
    for t in &header.tensors {
        match tpde::decode_tensor(&packed, reference, &t.name) {
            Ok(bytes) => assert!(
                bytes == restored[hl + t.begin as usize..hl + t.end as usize],
                "decode_tensor({:?}) differs",
                t.name
            ),
            Err(e) => panic!("decode_tensor({:?}) failed: {e}", t.name),
        }
    }
});
