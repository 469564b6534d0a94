//! The codec's SIMD kernels (x86-64 AVX2), chosen at run time, each with a
//! scalar twin in its own module that gives the same results (tested on
//! seeded random data: `tests` below). This is the only module of the codec
//! with `unsafe`: the loads and gathers of the intrinsics take pointers, and
//! a `#[target_feature]` function may only be called where the feature is
//! known to be present. Every block says why it is sound.
//!
//! - [`symbols_pass1`]: the symbol pass of the symbols decoder (codecs 5
//!   and 6): eight interleaved rANS states per vector (one vector, or four
//!   whose chains overlap), their table lookups as gathers, the
//!   renormalization words spread to the states that take one by a
//!   permutation.
//! - [`backward`]: the rANS pass of the symbols encoder: eight states per
//!   vector, the constants of their symbols ([`Enc`], two words each)
//!   gathered, the quotient by a 32-bit reciprocal multiply, a vector's
//!   renormalization words compressed into the output by a shuffle.
//! - [`differences`]: the raw-bits pass of the symbols decoder: eight
//!   elements at a time, their bit offsets by a prefix sum, their bits out
//!   of 32 bytes by dword permutations.
//! - [`forward`], [`values`]: the other
//!   passes of the symbols coder. Their one body (in `symbols`) is compiled
//!   twice: for the baseline and for x86-64-v3 (AVX2, BMI1/2, LZCNT, FMA:
//!   `lzcnt` for bit lengths, `shlx`/`bzhi` for the bit writer and reader,
//!   AVX2 for the loops the compiler vectorizes). Same source, so the same
//!   results; the tests check that too.

use crate::codec::symbols::{self, Enc, Forward, ForwardOut, Pass1, Pass1State, SymTable};

/// Which kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this processor runs.
    pub(super) fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if has_v3() {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Every kernel this processor runs (for the equivalence tests).
    #[cfg(test)]
    pub(super) fn all() -> Vec<Kernel> {
        let mut k = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        if has_v3() {
            k.push(Kernel::Avx2);
        }
        k
    }
}

/// Whether the processor has what the `Avx2` kernels are compiled for.
#[cfg(target_arch = "x86_64")]
fn has_v3() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("lzcnt")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The symbols encoder's forward pass (`symbols::forward_body`).
#[inline(never)]
pub(super) fn forward<const B: u32>(
    kernel: Kernel,
    f: &Forward<'_>,
    o: &mut ForwardOut<'_>,
) -> (usize, usize) {
    match kernel {
        Kernel::Scalar => symbols::forward_body::<B>(f, o),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernel::Avx2` is only made where the processor has
        // x86-64-v3 (`has_v3`); the body itself is safe code.
        Kernel::Avx2 => unsafe { avx2::forward::<B>(f, o) },
    }
}

/// Entries of the encoder's table of per-symbol constants: one per
/// context and symbol (`context << 8 | symbol`).
pub(super) const ENC_ENTRIES: usize = symbols::MAX_CONTEXTS << 8;

/// The symbols encoder's rANS pass (`symbols::backward_body`) on `S`
/// states (8 or 32): `enc` has [`ENC_ENTRIES`] entries and `rev` room for
/// `idx.len() + 8` words.
#[inline(never)]
pub(super) fn backward<const S: usize>(
    kernel: Kernel,
    idx: &[u16],
    enc: &[Enc],
    rev: &mut [u16],
) -> ([u32; S], usize) {
    const { assert!(S == symbols::NARROW || S == symbols::WIDE) };
    match kernel {
        Kernel::Scalar => symbols::backward_body::<S>(idx, enc, rev),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(
                enc.len() == ENC_ENTRIES && rev.len() >= idx.len() + 8,
                "symbols encoder tables out of bounds"
            );
            // SAFETY: `Kernel::Avx2` is only made where the processor has
            // x86-64-v3 (`has_v3`), S is 8 or 32 (checked at compile
            // time), and the lengths the kernel's gathers and stores rely
            // on hold (just checked).
            unsafe { avx2::backward::<S>(idx, enc, rev) }
        }
    }
}

/// The symbols decoder's raw-bits pass (`symbols::differences_body`).
#[inline(never)]
pub(super) fn differences(
    kernel: Kernel,
    bytes: &[u8],
    at: &mut usize,
    table: &SymTable,
    sym: &[u8],
    diff: &mut [u32],
) {
    match kernel {
        Kernel::Scalar => symbols::differences_body(bytes, at, table, sym, diff),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernel::Avx2` is only made where the processor has
        // x86-64-v3 (`has_v3`); the kernel checks the bounds of its loads.
        Kernel::Avx2 => unsafe { avx2::differences(bytes, at, table, sym, diff) },
    }
}

/// The symbols decoder's inverse transform (`symbols::values_body`).
#[inline(never)]
pub(super) fn values<const B: u32>(kernel: Kernel, out: &mut [u8], reference: &[u8], diff: &[u32]) {
    match kernel {
        Kernel::Scalar => symbols::values_body::<B>(out, reference, diff),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `forward`.
        Kernel::Avx2 => unsafe { avx2::values::<B>(out, reference, diff) },
    }
}

/// Decodes the symbols of the elements of `reference` (a whole number of
/// groups of `S`, 8 or 32, `B / 8` bytes each) into `sym` with `kernel`;
/// see [`Pass1`] for the tables and what stopping early means.
pub(super) fn symbols_pass1<const B: u32, const S: usize>(
    kernel: Kernel,
    p: &Pass1<'_>,
    s: &mut Pass1State<S>,
    reference: &[u8],
    sym: &mut [u8],
) {
    const { assert!(S == symbols::NARROW || S == symbols::WIDE) };
    match kernel {
        Kernel::Scalar => symbols::pass1_scalar::<B, S>(p, s, reference, sym),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(p.in_bounds(), "symbols tables out of bounds");
            // SAFETY: `Kernel::Avx2` is only made where the processor has
            // x86-64-v3 (`has_v3`), S is 8 or 32 (checked at compile
            // time), and `bounds_hold` held (just checked), which is what
            // the kernel's loads and gathers rely on.
            unsafe { avx2::pass1::<B, S>(p, s, reference, sym) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::codec::ans::{L, MASK, SCALE_BITS};
    use crate::codec::symbols::{
        self, Enc, Forward, ForwardOut, Pass1, Pass1State, SymTable, ABSENT,
    };

    /// The features the `Avx2` kernels are compiled for (x86-64-v3).
    macro_rules! v3 {
        ($($item:item)*) => {
            $(#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,fma")] $item)*
        };
    }

    v3! {
        pub(super) fn forward<const B: u32>(f: &Forward<'_>, o: &mut ForwardOut<'_>) -> (usize, usize) {
            symbols::forward_body::<B>(f, o)
        }

        pub(super) fn values<const B: u32>(out: &mut [u8], reference: &[u8], diff: &[u32]) {
            symbols::values_body::<B>(out, reference, diff)
        }
    }

    /// The raw-bits pass (the twin of `symbols::differences_body`), eight
    /// elements at a time: their symbols' packed words gathered, the bit
    /// offsets of their raw bits by a prefix sum of the raw bit counts, and
    /// each lane's bits taken out of the 32 bytes at the cursor's byte (a
    /// group's raw bits span at most 7 + 8 x 31 bits: they lie within) by
    /// two dword permutations and shifts. Where fewer than 32 bytes are left
    /// after the cursor's byte, and for the last `sym.len() % 8` elements,
    /// the scalar body finishes.
    ///
    /// # Safety
    /// The processor has x86-64-v3.
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,fma")]
    pub(super) unsafe fn differences(
        bytes: &[u8],
        at: &mut usize,
        table: &SymTable,
        sym: &[u8],
        diff: &mut [u32],
    ) {
        let n = sym.len().min(diff.len());
        let mut a = *at;
        let mut done = 0usize;
        let tab = table.packed.as_ptr().cast::<i32>();
        let zero = _mm256_setzero_si256();
        let one = _mm256_set1_epi32(1);
        let three = _mm256_set1_epi32(3);
        let seven = _mm256_set1_epi32(7);
        let low5 = _mm256_set1_epi32(31);
        let thirty_two = _mm256_set1_epi32(32);
        while done + 8 <= n && (a >> 3) + 32 <= bytes.len() {
            // SAFETY: done + 8 <= n <= sym.len(): eight bytes.
            let y = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(sym.as_ptr().add(done).cast()) });
            // SAFETY: every lane of y is below 256, the table's length.
            let p = unsafe { _mm256_i32gather_epi32::<4>(tab, y) };
            let raw = _mm256_and_si256(_mm256_srli_epi32::<8>(p), low5);
            // Inclusive prefix sum of the raw bit counts over the lanes.
            let mut s = _mm256_add_epi32(raw, _mm256_slli_si256::<4>(raw));
            s = _mm256_add_epi32(s, _mm256_slli_si256::<8>(s));
            let carry = _mm256_permutevar8x32_epi32(s, three);
            s = _mm256_add_epi32(s, _mm256_blend_epi32::<0b1111_0000>(zero, carry));
            // Each lane's bit offset into the 32 bytes at the cursor's byte:
            // below 7 + 7 x 31 + 1, and with its bits below 256.
            let rel = _mm256_add_epi32(_mm256_set1_epi32((a & 7) as i32), _mm256_sub_epi32(s, raw));
            // SAFETY: (a >> 3) + 32 <= bytes.len(): 32 bytes.
            let v = unsafe { _mm256_loadu_si256(bytes.as_ptr().add(a >> 3).cast()) };
            let d = _mm256_srli_epi32::<5>(rel);
            let r = _mm256_and_si256(rel, low5);
            // Dword d shifted down by r, and the next dword's low bits above
            // it (a shift by 32 gives zero; past dword 7 the bits are masked
            // off, as a lane's bits end below bit 256).
            let lo = _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(v, d), r);
            let hi = _mm256_sllv_epi32(
                _mm256_permutevar8x32_epi32(v, _mm256_add_epi32(d, one)),
                _mm256_sub_epi32(thirty_two, r),
            );
            let bits = _mm256_or_si256(lo, hi);
            let mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, raw), one);
            let lead = _mm256_sllv_epi32(_mm256_and_si256(p, seven), raw);
            let m = _mm256_or_si256(lead, _mm256_and_si256(bits, mask));
            let negm = _mm256_sub_epi32(zero, _mm256_and_si256(_mm256_srli_epi32::<16>(p), one));
            let dv = _mm256_sub_epi32(_mm256_xor_si256(m, negm), negm);
            // SAFETY: done + 8 <= n <= diff.len(): 32 bytes.
            unsafe { _mm256_storeu_si256(diff.as_mut_ptr().add(done).cast(), dv) };
            a += _mm256_extract_epi32::<7>(s) as u32 as usize;
            done += 8;
        }
        symbols::differences_body(bytes, &mut a, table, &sym[done..n], &mut diff[done..n]);
        *at = a;
    }

    /// Lane j of entry m: how many of the lanes below j are set in m (the
    /// renormalization word lane j takes, counted from the cursor).
    static PERM: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            let mut below = 0;
            while j < 8 {
                t[m][j] = below;
                below += (m >> j & 1) as u32;
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// Byte j of entry m: the bytes of the 16-bit lanes set in m, from lane
    /// 7 down to lane 0 (the renormalization words of one group in the
    /// order the encoder writes them), then -1 (zero bytes).
    static COMPRESS: [[i8; 16]; 256] = {
        let mut t = [[-1i8; 16]; 256];
        let mut m = 0;
        while m < 256 {
            let mut k = 0;
            let mut j = 8;
            while j > 0 {
                j -= 1;
                if m >> j & 1 == 1 {
                    t[m][k] = 2 * j as i8;
                    t[m][k + 1] = 2 * j as i8 + 1;
                    k += 2;
                }
            }
            m += 1;
        }
        t
    };

    /// The encoder's backward pass (the twin of `symbols::backward_body`)
    /// on S states (8 or 32): the tail in scalar code, then eight states
    /// per vector (S / 8 vectors), the constants of their symbols gathered,
    /// the renormalization words of a vector compressed into `rev` by a
    /// shuffle. Within a group the vectors go last to first and their lanes
    /// 7 to 0, as the scalar twin codes states S - 1 to 0.
    ///
    /// # Safety
    /// The processor has x86-64-v3, S is 8 or 32, `enc` has `ENC_ENTRIES`
    /// entries and `rev` room for `idx.len() + 8` words.
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,fma")]
    pub(super) unsafe fn backward<const S: usize>(
        idx: &[u16],
        enc: &[Enc],
        rev: &mut [u16],
    ) -> ([u32; S], usize) {
        let mut st = [L; S];
        let mut len = 0usize;
        symbols::backward_tail(idx, enc, rev, &mut st, &mut len);
        let entry = _mm256_set1_epi32((super::ENC_ENTRIES - 1) as i32);
        let freq_mask = _mm256_set1_epi32(Enc::FREQ as i32);
        let start_mask = _mm256_set1_epi32(MASK as i32);
        let one = _mm256_set1_epi32(1);
        let total = _mm256_set1_epi32(1 << SCALE_BITS);
        // The low two bytes of each 32-bit lane to the low eight bytes of
        // its half.
        let low16 = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
            -1, -1, -1, -1, -1, -1, -1,
        );
        let base = enc.as_ptr().cast::<i32>();
        let mut x = [_mm256_setzero_si256(); 4];
        for (v, xv) in x.iter_mut().enumerate().take(S / 8) {
            // SAFETY: `st` has S >= 8 (v + 1) u32; loadu has no alignment need.
            *xv = unsafe { _mm256_loadu_si256(st.as_ptr().add(8 * v).cast()) };
        }
        for b in idx.chunks_exact(S).rev() {
            for v in (0..S / 8).rev() {
                // SAFETY: `b` is S u16, and 8 v + 8 <= S: 16 bytes.
                let i =
                    _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(b.as_ptr().add(8 * v).cast()) });
                // Two 32-bit words per entry; the index masked into the table.
                let w = _mm256_slli_epi32::<1>(_mm256_and_si256(i, entry));
                // SAFETY: every lane of w is at most 2 (ENC_ENTRIES - 1), and
                // enc has ENC_ENTRIES entries of two words (`Enc` is repr(C),
                // 8 bytes), so both words of the entry are within it.
                let rcp = unsafe { _mm256_i32gather_epi32::<4>(base, w) };
                // SAFETY: as above, the entry's second word.
                let pk = unsafe { _mm256_i32gather_epi32::<4>(base.add(1), w) };
                let freq = _mm256_and_si256(pk, freq_mask);
                let xv = x[v];
                // Renormalize when x >> 20 >= freq.
                let out =
                    _mm256_cmpgt_epi32(_mm256_srli_epi32::<20>(xv), _mm256_sub_epi32(freq, one));
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(out)) as usize;
                let lo = _mm256_permute4x64_epi64::<0b1000>(_mm256_shuffle_epi8(xv, low16));
                // SAFETY: m < 256; COMPRESS entries are 16 bytes.
                let sel = unsafe { _mm_loadu_si128(COMPRESS[m].as_ptr().cast()) };
                let words = _mm_shuffle_epi8(_mm256_castsi256_si128(lo), sel);
                // SAFETY: len is at most the symbols coded so far, fewer
                // than idx.len(), and rev has room for idx.len() + 8 words.
                unsafe { _mm_storeu_si128(rev.as_mut_ptr().add(len).cast(), words) };
                len += m.count_ones() as usize;
                let xv = _mm256_blendv_epi8(xv, _mm256_srli_epi32::<16>(xv), out);
                // hi = x * rcp_lo >> 32 per lane (even and odd lanes apart).
                let even = _mm256_srli_epi64::<32>(_mm256_mul_epu32(xv, rcp));
                let odd =
                    _mm256_mul_epu32(_mm256_srli_epi64::<32>(xv), _mm256_srli_epi64::<32>(rcp));
                let hi = _mm256_blend_epi32::<0b1010_1010>(even, odd);
                let s1 = _mm256_and_si256(_mm256_srli_epi32::<{ Enc::S1 as i32 }>(pk), one);
                let s2 = _mm256_srli_epi32::<{ Enc::S2 as i32 }>(pk);
                let q = _mm256_srlv_epi32(
                    _mm256_add_epi32(hi, _mm256_srlv_epi32(_mm256_sub_epi32(xv, hi), s1)),
                    s2,
                );
                let start =
                    _mm256_and_si256(_mm256_srli_epi32::<{ Enc::START as i32 }>(pk), start_mask);
                x[v] = _mm256_add_epi32(
                    _mm256_add_epi32(xv, _mm256_mullo_epi32(q, _mm256_sub_epi32(total, freq))),
                    start,
                );
            }
        }
        for (v, xv) in x.iter().enumerate().take(S / 8) {
            // SAFETY: as the load above.
            unsafe { _mm256_storeu_si256(st.as_mut_ptr().add(8 * v).cast(), *xv) };
        }
        (st, len)
    }

    /// The symbol pass on S states (8 or 32), eight per vector: a group's
    /// vectors decode their symbols (their gathers overlap), then take
    /// their renormalization words in state order.
    ///
    /// # Safety
    /// The processor has x86-64-v3, S is 8 or 32, and `p.bounds_hold()`:
    /// every context offset (without ABSENT) plus a slot is within
    /// `p.slots`, `p.ctx_off` has an entry for every masked exponent, and
    /// `p.words` has 32 words past `p.nwords`.
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,fma")]
    pub(super) unsafe fn pass1<const B: u32, const S: usize>(
        p: &Pass1<'_>,
        s: &mut Pass1State<S>,
        reference: &[u8],
        sym: &mut [u8],
    ) {
        let wb = B as usize / 8;
        let shift = _mm_cvtsi32_si128(p.shift as i32);
        let emask = _mm256_set1_epi32(p.emask as i32);
        let mask = _mm256_set1_epi32(MASK as i32);
        let not_absent = _mm256_set1_epi32(!ABSENT as i32);
        let bias = _mm256_set1_epi32(i32::MIN);
        let low_bound = _mm256_set1_epi32((L ^ 0x8000_0000) as i32);
        let one = _mm256_set1_epi32(1);
        // Byte 3 of each 32-bit lane to the lane's half's low bytes.
        let top = _mm256_setr_epi8(
            3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let mut x = [_mm256_setzero_si256(); 4];
        for (v, xv) in x.iter_mut().enumerate().take(S / 8) {
            // SAFETY: `s.st` has S >= 8 (v + 1) u32; loadu has no alignment need.
            *xv = unsafe { _mm256_loadu_si256(s.st.as_ptr().add(8 * v).cast()) };
        }
        let mut absent = _mm256_setzero_si256();
        let mut at = s.at;
        let ctx = p.ctx_off.as_ptr().cast::<i32>();
        let slots = p.slots.as_ptr().cast::<i32>();
        for (rg, sg) in reference.chunks_exact(S * wb).zip(sym.chunks_exact_mut(S)) {
            if at > p.nwords {
                s.short = true;
                break;
            }
            for (v, (r8, s8)) in rg
                .chunks_exact(8 * wb)
                .zip(sg.chunks_exact_mut(8))
                .enumerate()
            {
                let r = if B == 16 {
                    // SAFETY: `r8` is 16 bytes (8 two-byte elements).
                    _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(r8.as_ptr().cast()) })
                } else {
                    // SAFETY: `r8` is 32 bytes (8 four-byte elements).
                    unsafe { _mm256_loadu_si256(r8.as_ptr().cast()) }
                };
                let e_idx = _mm256_and_si256(_mm256_srl_epi32(r, shift), emask);
                // SAFETY: every lane of e_idx is at most p.emask, and
                // ctx_off has emask + 1 entries (`bounds_hold`).
                let o = unsafe { _mm256_i32gather_epi32::<4>(ctx, e_idx) };
                absent = _mm256_or_si256(absent, o);
                let xv = x[v];
                let slot =
                    _mm256_or_si256(_mm256_and_si256(o, not_absent), _mm256_and_si256(xv, mask));
                // SAFETY: an offset without ABSENT plus a slot (< TOTAL) is
                // within p.slots (`bounds_hold`).
                let e = unsafe { _mm256_i32gather_epi32::<4>(slots, slot) };
                let freq =
                    _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32::<12>(e), mask), one);
                x[v] = _mm256_add_epi32(
                    _mm256_mullo_epi32(freq, _mm256_srli_epi32::<{ SCALE_BITS as i32 }>(xv)),
                    _mm256_and_si256(e, mask),
                );
                let t = _mm256_shuffle_epi8(e, top);
                let lo = _mm256_cvtsi256_si32(t) as u32;
                let hi = _mm256_extract_epi32::<4>(t) as u32;
                s8.copy_from_slice(&(u64::from(lo) | u64::from(hi) << 32).to_le_bytes());
            }
            // Renormalization: the states below L (unsigned) take the next
            // words, in state order.
            for xv in x.iter_mut().take(S / 8) {
                let low = _mm256_cmpgt_epi32(low_bound, _mm256_xor_si256(*xv, bias));
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(low)) as usize;
                // SAFETY: at <= p.nwords + 8 v (checked at the group's start,
                // at most eight words per vector before this one) and p.words
                // has 32 words past p.nwords, so the eight read are within it.
                let w = _mm256_cvtepu16_epi32(unsafe {
                    _mm_loadu_si128(p.words.as_ptr().add(at).cast())
                });
                // SAFETY: m < 256 (eight mask bits); PERM entries are 32 bytes.
                let perm = unsafe { _mm256_loadu_si256(PERM[m].as_ptr().cast()) };
                let w = _mm256_permutevar8x32_epi32(w, perm);
                let shifted = _mm256_or_si256(_mm256_slli_epi32::<16>(*xv), w);
                *xv = _mm256_blendv_epi8(*xv, shifted, low);
                at += m.count_ones() as usize;
            }
        }
        for (v, xv) in x.iter().enumerate().take(S / 8) {
            // SAFETY: as the load above.
            unsafe { _mm256_storeu_si256(s.st.as_mut_ptr().add(8 * v).cast(), *xv) };
        }
        let mut a = [0u32; 8];
        // SAFETY: `a` is 32 bytes.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), absent) };
        s.absent |= a.iter().fold(0, |acc, &v| acc | v);
        s.at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunk::tests::rng;
    use crate::codec::symbols::{Enc, NARROW, WIDE};
    use crate::codec::symbols::{Pass1, Pass1State, SymTable, ABSENT};

    /// Every backward kernel gives the scalar twin's states, words and word
    /// count, on random tables (valid frequencies, random starts) and
    /// random symbol indices, for every tail length.
    #[test]
    fn backward_kernels_match_the_scalar_twin() {
        let mut next = rng(23);
        for round in 0..300 {
            let enc: Vec<Enc> = (0..ENC_ENTRIES)
                .map(|_| {
                    let f = 1 + (next() % 4096) as u32;
                    // Small frequencies often: they renormalize most.
                    let f = if next().is_multiple_of(2) {
                        1 + f % 16
                    } else {
                        f
                    };
                    Enc::new(f, (next() as u32) % (4097 - f))
                })
                .collect();
            let n = (next() % 700) as usize;
            let idx: Vec<u16> = (0..n)
                .map(|_| (next() % ENC_ENTRIES as u64) as u16)
                .collect();
            let run = |k: Kernel, wide: bool| {
                let mut rev = vec![0u16; n + 8];
                let (st, len) = if wide {
                    let (st, len) = backward::<WIDE>(k, &idx, &enc, &mut rev);
                    (st.to_vec(), len)
                } else {
                    let (st, len) = backward::<NARROW>(k, &idx, &enc, &mut rev);
                    (st.to_vec(), len)
                };
                (st, rev[..len].to_vec())
            };
            for wide in [false, true] {
                let want = run(Kernel::Scalar, wide);
                for k in Kernel::all() {
                    assert_eq!(
                        run(k, wide),
                        want,
                        "round {round} n {n} wide {wide} kernel {k:?}"
                    );
                }
            }
        }
    }

    /// Every raw-bits kernel gives the scalar twin's differences and
    /// cursor, on random bit streams, symbols a payload can hold (below
    /// 247, small ones often: no raw bits) and cursors, near the stream's
    /// end too.
    #[test]
    fn differences_kernels_match_the_scalar_twin() {
        let table = SymTable::new();
        for (y, &p) in table.packed.iter().enumerate().take(247) {
            let (top, raw, neg) = (p & 7, (p >> 8) & 31, (p >> 16) & 1);
            assert_eq!(top << raw, table.info[y].lead, "symbol {y}");
            assert_eq!(raw, table.info[y].raw, "symbol {y}");
            assert_eq!(neg.wrapping_neg(), table.info[y].negm, "symbol {y}");
        }
        let mut next = rng(29);
        for round in 0..400 {
            let len = (next() % 3000) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let n = (next() % 700) as usize;
            let sym: Vec<u8> = (0..n)
                .map(|_| {
                    let v = next();
                    let m = if v.is_multiple_of(3) { 16 } else { 247 };
                    ((v >> 8) % m) as u8
                })
                .collect();
            let at0 = (next() % (len as u64 * 8 + 1)) as usize;
            let run = |k: Kernel| {
                let mut at = at0;
                let mut diff = vec![0u32; n];
                differences(k, &bytes, &mut at, &table, &sym, &mut diff);
                (at, diff)
            };
            let want = run(Kernel::Scalar);
            for k in Kernel::all() {
                assert_eq!(run(k), want, "round {round} kernel {k:?}");
            }
        }
    }

    /// Every kernel gives the scalar twin's symbols, states, cursor and
    /// flags, on random tables, states, words and references (valid or
    /// not), for both widths.
    #[test]
    fn kernels_match_the_scalar_twin() {
        let mut next = rng(21);
        for round in 0..200 {
            let tables = 1 + (next() % 4) as usize;
            let slots: Vec<u32> = (0..tables << 12)
                .map(|_| {
                    let v = next() as u32;
                    // A frequency of at most 2^12, a bias below it.
                    let f = (v >> 12) & 0xfff;
                    let b = (v & 0xfff) % (f + 1);
                    (v & 0xff00_0000) | f << 12 | b
                })
                .collect();
            let bits = 1 + (next() % 8) as u32;
            let ctx_off: Vec<u32> = (0..1u32 << bits)
                .map(|_| {
                    let t = (next() % tables as u64) as u32;
                    (t << 12) | if next().is_multiple_of(20) { ABSENT } else { 0 }
                })
                .collect();
            let nwords = (next() % 300) as usize;
            let mut words: Vec<u16> = (0..nwords).map(|_| next() as u16).collect();
            words.extend([0; WIDE]);
            let groups = 1 + (next() % 40) as usize;
            for b in [16u32, 32] {
                let wb = b as usize / 8;
                let reference: Vec<u8> = (0..groups * WIDE * wb).map(|_| next() as u8).collect();
                let p = Pass1::new(
                    &slots,
                    &ctx_off,
                    &words,
                    nwords,
                    (next() % (b - bits + 1) as u64) as u32,
                    (1 << bits) - 1,
                );
                assert!(p.in_bounds());
                let st: [u32; WIDE] = std::array::from_fn(|_| (next() as u32) | 1 << 16);
                let at = (next() % (nwords as u64 + 1)) as usize;
                let narrow = |k: Kernel| {
                    let mut s = Pass1State::<NARROW> {
                        st: st[..NARROW].try_into().unwrap(),
                        at,
                        absent: 0,
                        short: false,
                    };
                    let mut sym = vec![0u8; groups * WIDE];
                    if b == 16 {
                        symbols_pass1::<16, NARROW>(k, &p, &mut s, &reference, &mut sym);
                    } else {
                        symbols_pass1::<32, NARROW>(k, &p, &mut s, &reference, &mut sym);
                    }
                    (s.st.to_vec(), s.at, s.absent, s.short, sym)
                };
                let wide = |k: Kernel| {
                    let mut s = Pass1State::<WIDE> {
                        st,
                        at,
                        absent: 0,
                        short: false,
                    };
                    let mut sym = vec![0u8; groups * WIDE];
                    if b == 16 {
                        symbols_pass1::<16, WIDE>(k, &p, &mut s, &reference, &mut sym);
                    } else {
                        symbols_pass1::<32, WIDE>(k, &p, &mut s, &reference, &mut sym);
                    }
                    (s.st.to_vec(), s.at, s.absent, s.short, sym)
                };
                let (want_narrow, want_wide) = (narrow(Kernel::Scalar), wide(Kernel::Scalar));
                for k in Kernel::all() {
                    assert_eq!(
                        narrow(k),
                        want_narrow,
                        "round {round} width {b} kernel {k:?}"
                    );
                    assert_eq!(
                        wide(k),
                        want_wide,
                        "round {round} width {b} wide kernel {k:?}"
                    );
                }
            }
        }
    }
}
