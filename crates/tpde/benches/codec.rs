//! `cargo bench -p tpde --bench codec`: encode and decode of one 4 MiB
//! chunk (a safetensors file of one tensor, through `tpde::encode` and
//! `tpde::decode`) in three regimes, beside zstd -3 and lz4 (lz4_flex, block
//! format) on the same bytes. Everything runs on one thread (a one-thread
//! rayon pool for tpde), so the GB/s compare like with like.
//!
//! The regimes, on synthetic data from a fixed xorshift seed:
//! - `dense_f32`: F32 weights w against the previous w minus small gaussian
//!   noise, so every element changed;
//! - `sparse_bf16`: BF16 weights of which 1% changed;
//! - `keyframe_f32`: the dense regime's weights with no reference.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Bytes of tensor data in each regime: the default chunk size, so one chunk.
const DATA: usize = 4 << 20;

/// xorshift64*: deterministic, no rand crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A safetensors file of one 1-D tensor of `dtype` holding `data`.
fn safetensors(dtype: &str, width: usize, data: &[u8]) -> Vec<u8> {
    let n = data.len() / width;
    let mut header = format!(
        r#"{{"w":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        data.len()
    )
    .into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(data);
    file
}

/// (reference, current) F32 files: every element moved by gaussian noise
/// about 1/200 of the weights' spread.
fn dense_f32(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let (mut prev, mut cur) = (Vec::with_capacity(DATA), Vec::with_capacity(DATA));
    for _ in 0..DATA / 4 {
        let w = (0.02 * rng.gauss()) as f32;
        let mut next = w + (1e-4 * rng.gauss()) as f32;
        if next == w {
            next = f32::from_bits(w.to_bits() ^ 1);
        }
        prev.extend_from_slice(&w.to_le_bytes());
        cur.extend_from_slice(&next.to_le_bytes());
    }
    (safetensors("F32", 4, &prev), safetensors("F32", 4, &cur))
}

/// (reference, current) BF16 files: 1% of the elements (chosen at random)
/// moved by one to three units in the last place.
fn sparse_bf16(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let n = DATA / 2;
    let prev: Vec<u16> = (0..n)
        .map(|_| (((0.02 * rng.gauss()) as f32).to_bits() >> 16) as u16)
        .collect();
    let mut cur = prev.clone();
    for _ in 0..n / 100 {
        let i = (rng.next() % n as u64) as usize;
        let step = 1 + (rng.next() % 3) as u16;
        cur[i] = if rng.next() & 1 == 0 {
            cur[i].wrapping_add(step)
        } else {
            cur[i].wrapping_sub(step)
        };
    }
    let bytes = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    (
        safetensors("BF16", 2, &bytes(&prev)),
        safetensors("BF16", 2, &bytes(&cur)),
    )
}

/// One regime's group; tpde runs on `one`, a one-thread rayon pool (entered
/// per call: criterion's state cannot move to the pool's thread).
fn regime(
    c: &mut Criterion,
    one: &rayon::ThreadPool,
    name: &str,
    reference: Option<&[u8]>,
    cur: &[u8],
) {
    let opts = tpde::EncodeOptions::default();
    let mut packed = Vec::new();
    tpde::encode(cur, reference, &opts, &mut packed, None).expect("encode");
    let mut back = Vec::new();
    tpde::decode(&packed, reference, &mut back, None).expect("decode");
    assert!(back == cur, "{name}: tpde round trip differs");
    let z = zstd::bulk::compress(cur, 3).expect("zstd");
    let lz = lz4_flex::block::compress_prepend_size(cur);
    eprintln!(
        "{name}: {} bytes; tpde {:.3}x, zstd -3 {:.3}x, lz4 {:.3}x",
        cur.len(),
        cur.len() as f64 / packed.len() as f64,
        cur.len() as f64 / z.len() as f64,
        cur.len() as f64 / lz.len() as f64
    );

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(cur.len() as u64));
    g.bench_function("tpde_encode", |b| {
        let mut out = Vec::with_capacity(cur.len());
        b.iter(|| {
            out.clear();
            one.install(|| tpde::encode(black_box(cur), reference, &opts, &mut out, None))
                .unwrap()
        })
    });
    g.bench_function("tpde_decode", |b| {
        let mut out = Vec::with_capacity(cur.len());
        b.iter(|| {
            out.clear();
            one.install(|| tpde::decode(black_box(&packed), reference, &mut out, None))
                .unwrap()
        })
    });
    g.bench_function("zstd3_compress", |b| {
        b.iter(|| zstd::bulk::compress(black_box(cur), 3).unwrap())
    });
    g.bench_function("zstd3_decompress", |b| {
        b.iter(|| zstd::bulk::decompress(black_box(&z), cur.len()).unwrap())
    });
    g.bench_function("lz4_compress", |b| {
        b.iter(|| lz4_flex::block::compress_prepend_size(black_box(cur)))
    });
    g.bench_function("lz4_decompress", |b| {
        b.iter(|| lz4_flex::block::decompress_size_prepended(black_box(&lz)).unwrap())
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (prev, cur) = dense_f32(&mut rng);
    let (bprev, bcur) = sparse_bf16(&mut rng);
    regime(c, &one, "dense_f32", Some(&prev), &cur);
    regime(c, &one, "sparse_bf16", Some(&bprev), &bcur);
    regime(c, &one, "keyframe_f32", None, &cur);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);
