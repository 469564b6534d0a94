//! Grouping a byte plane by the reference's exponents: the groups of the
//! coded elements ([`Groups`]), the encoder's choice of them and of whether
//! grouping pays ([`put_plane`]), and reading a grouped section back.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::codec::ans;
use crate::codec::coding::ChunkParams;
use crate::codec::sample::SAMPLE;
use crate::codec::sections::{
    probe_says_rans, put_coded, put_coded_est, Coder, Sections, PROBE_MIN, SECTION_GROUPED,
    SECTION_HEAD,
};
use crate::codec::transform::Transform;
use crate::common::error::{Error, Result};

/// The parameters a grouped section starts with: the exponent field's
/// shift and bits, the first group's exponent (little-endian), the groups.
fn section_head(shift: u8, bits: u8, base: u16, count: u8) -> [u8; 5] {
    let b = base.to_le_bytes();
    [shift, bits, b[0], b[1], count]
}

/// The group of an element whose reference has exponent `e`: groups start
/// at exponent `base`, the first and last (`top`) take those below and above.
fn group_of(e: u16, base: u16, top: u16) -> u8 {
    e.saturating_sub(base).min(top) as u8
}

/// Groups of a grouped section, at most.
pub(super) const MAX_GROUPS: usize = 16;
/// Coded elements a chunk needs before grouping is tried.
pub(super) const GROUP_MIN: usize = 4096;

/// The reference's exponents sort the coded elements into groups: the size of
/// a float's change in units in the last place depends on the magnitude of
/// the float, so each group's bytes have their own, narrower, distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Groups {
    pub(super) shift: u8,
    pub(super) bits: u8,
    pub(super) base: u16,
    pub(super) count: u8,
    /// The group of each coded element.
    pub(super) of: Vec<u8>,
    /// Elements in each group.
    pub(super) counts: Vec<usize>,
}

impl Groups {
    /// Applies `f` to the exponent of each coded element's reference
    /// element: every element (`pos` is `None`) or those at `pos`.
    pub(super) fn map_exponents<T>(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        (shift, bits): (u8, u8),
        f: impl Fn(u16) -> T,
    ) -> Vec<T> {
        pub(super) fn go<const W: usize, T>(
            reference: &[u8],
            pos: Option<&[u32]>,
            shift: u8,
            mask: u64,
            f: impl Fn(u16) -> T,
        ) -> Vec<T> {
            let exp = |e: &[u8]| {
                let mut b = [0u8; 8];
                b[..W].copy_from_slice(e);
                f(((u64::from_le_bytes(b) >> shift) & mask) as u16)
            };
            match pos {
                None => reference.chunks_exact(W).map(exp).collect(),
                Some(pos) => pos
                    .iter()
                    .map(|&q| exp(&reference[q as usize * W..(q as usize + 1) * W]))
                    .collect(),
            }
        }
        let mask = (1u64 << bits) - 1;
        match width {
            1 => go::<1, T>(reference, pos, shift, mask, f),
            2 => go::<2, T>(reference, pos, shift, mask, f),
            4 => go::<4, T>(reference, pos, shift, mask, f),
            _ => go::<8, T>(reference, pos, shift, mask, f),
        }
    }

    /// The groups with the given parameters, read off the reference in one pass.
    pub(super) fn new(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        shift: u8,
        bits: u8,
        base: u16,
        count: u8,
    ) -> Groups {
        let top = u16::from(count) - 1;
        let of = Self::map_exponents(reference, width, pos, (shift, bits), |e| {
            group_of(e, base, top)
        });
        let hist = ans::histogram(&of);
        let counts: Vec<usize> = hist[..usize::from(count)]
            .iter()
            .map(|&c| c as usize)
            .collect();
        Groups {
            shift,
            bits,
            base,
            count,
            of,
            counts,
        }
    }

    /// Groups for the encoder: the window of `MAX_GROUPS` consecutive
    /// exponents that holds the most coded elements.
    pub(super) fn choose(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        exponent: (u8, u8),
    ) -> Option<Groups> {
        let (base, k) = Self::window(reference, width, pos, exponent)?;
        Some(Self::new(
            reference, width, pos, exponent.0, exponent.1, base, k,
        ))
    }

    /// The window [`Groups::choose`] takes: its first exponent and its
    /// number of groups, placed on a sample of the coded elements.
    fn window(
        reference: &[u8],
        width: usize,
        pos: Option<&[u32]>,
        (shift, bits): (u8, u8),
    ) -> Option<(u16, u8)> {
        if u32::from(shift) + u32::from(bits) > 8 * width as u32 || bits == 0 || bits > 11 {
            return None;
        }
        let mut hist = vec![0usize; 1 << bits];
        // A sample of the exponents is enough to place the window.
        let n = pos.map_or(reference.len() / width, <[u32]>::len);
        let stride = n.div_ceil(SAMPLE).max(1);
        let sample: Vec<u32> = match pos {
            None => (0..n).step_by(stride).map(|i| i as u32).collect(),
            Some(pos) => pos.iter().step_by(stride).copied().collect(),
        };
        for e in Self::map_exponents(reference, width, Some(&sample), (shift, bits), usize::from) {
            hist[e] += 1;
        }
        let k = MAX_GROUPS.min(hist.len());
        Some((densest_window(&hist, k) as u16, k as u8))
    }

    /// The parameters a grouped section starts with.
    pub(super) fn head(&self) -> [u8; 5] {
        section_head(self.shift, self.bits, self.base, self.count)
    }

    /// Where each group starts when the groups are laid end to end.
    fn starts(&self) -> [usize; MAX_GROUPS] {
        let mut starts = [0usize; MAX_GROUPS];
        let mut at = 0;
        for (s, &c) in starts.iter_mut().zip(&self.counts) {
            *s = at;
            at += c;
        }
        starts
    }

    /// The bytes of `plane` (one per coded element) split by group, in order.
    pub(super) fn split(&self, plane: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plane.len()];
        let mut next = self.starts();
        for (&g, &b) in self.of.iter().zip(plane) {
            let at = &mut next[usize::from(g)];
            out[*at] = b;
            *at += 1;
        }
        out
    }

    /// The inverse of [`Groups::split`]: `parts` (the groups end to end) back
    /// in element order.
    pub(super) fn merge(&self, parts: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; parts.len()];
        let mut next = self.starts();
        for (o, &g) in out.iter_mut().zip(&self.of) {
            let at = &mut next[usize::from(g)];
            *o = parts[*at];
            *at += 1;
        }
        out
    }

    /// Histograms of `plane`: whole, and of each group's bytes.
    pub(super) fn histograms(&self, plane: &[u8]) -> ([u64; 256], Vec<[u64; 256]>) {
        let mut hist = vec![[0u64; 256]; usize::from(self.count)];
        for (&g, &b) in self.of.iter().zip(plane) {
            hist[g as usize][b as usize] += 1;
        }
        let mut total = [0u64; 256];
        for h in &hist {
            for (t, c) in total.iter_mut().zip(h) {
                *t += c;
            }
        }
        (total, hist)
    }
}

/// Appends a plane: grouped by reference exponent where the estimates say
/// that pays, else as one section. `hist` is the plane's histogram when the
/// caller has it, `known` (with `hist`) its groups' histograms and its
/// estimates when the caller made them for `groups`. One zstd probe of the
/// whole plane decides whether its groups may try zstd at all.
pub(super) fn put_plane(
    out: &mut Vec<u8>,
    plane: &[u8],
    coder: Coder,
    hist: Option<&[u64; 256]>,
    groups: Option<&Groups>,
    known: Option<(&[[u64; 256]], &Estimates)>,
) -> Result<()> {
    let (Some(g), Coder::Auto(level)) = (groups, coder) else {
        return put_coded(out, plane, coder, hist);
    };
    let own;
    let (total, parts_hist, est) = match (known, hist) {
        (Some((parts, est)), Some(total)) => (*total, parts, Some(est)),
        _ => {
            own = g.histograms(plane);
            (own.0, &own.1[..], None)
        }
    };
    let grouping = Grouping {
        head: g.head(),
        counts: &g.counts,
        total: &total,
        parts: parts_hist,
        est,
    };
    put_plane_grouping(
        out,
        plane.len(),
        level,
        &grouping,
        || Cow::Borrowed(plane),
        || g.split(plane),
    )
}

/// A plane's groups as [`put_plane_grouping`] codes them: the grouped
/// section's parameters, the elements in each group, the plane's histogram
/// and its groups'.
pub(super) struct Grouping<'a> {
    pub(super) head: [u8; 5],
    pub(super) counts: &'a [usize],
    pub(super) total: &'a [u64; 256],
    pub(super) parts: &'a [[u64; 256]],
    /// Their estimates, where the caller has them.
    pub(super) est: Option<&'a Estimates>,
}

/// The rANS estimates ([`ans::estimate`]) of a plane and of its groups, as
/// [`plane_estimate_from`] and [`put_plane_grouping`] use them (computed
/// once for both).
pub(super) struct Estimates {
    whole: usize,
    /// Each group's, `None` where the group has no element; `None` for a
    /// plane without groups.
    parts: Option<Vec<Option<usize>>>,
}

impl Estimates {
    pub(super) fn of(total: &[u64; 256], parts: Option<&[[u64; 256]]>) -> Estimates {
        // A constant plane is one section (its groups would cost a section
        // head each), so its groups are not estimated.
        let constant = total.iter().filter(|&&c| c > 0).count() == 1;
        Estimates {
            whole: ans::estimate(total),
            parts: parts.filter(|_| !constant).map(|parts| {
                parts
                    .iter()
                    .map(|h| h.iter().any(|&c| c > 0).then(|| ans::estimate(h)))
                    .collect()
            }),
        }
    }

    /// The groups' sections (estimated), where the plane has groups.
    fn grouped(&self) -> Option<f64> {
        self.parts.as_ref().map(|parts| {
            parts
                .iter()
                .flatten()
                .map(|&e| (e + SECTION_HEAD) as f64)
                .sum()
        })
    }
}

/// [`put_plane`] with `Coder::Auto(level)` for a plane of `len` bytes that
/// the caller makes on demand: `plane()` the plane itself (for the zstd
/// probe and when grouping does not pay), `parts()` its groups end to end.
/// The output is the same as `put_plane`'s on that plane.
pub(super) fn put_plane_grouping<'p>(
    out: &mut Vec<u8>,
    len: usize,
    level: i32,
    g: &Grouping<'_>,
    plane: impl Fn() -> Cow<'p, [u8]>,
    parts: impl FnOnce() -> Vec<u8>,
) -> Result<()> {
    let own;
    let est = match g.est {
        Some(e) => e,
        None => {
            own = Estimates::of(g.total, Some(g.parts));
            &own
        }
    };
    let whole = est.whole;
    let grouped = est.grouped().unwrap_or(f64::INFINITY);
    if grouped < whole as f64 * 0.98 {
        let probe = if len >= PROBE_MIN {
            probe_says_rans(&plane(), whole, level)?
        } else {
            None
        };
        let part_coder = match probe {
            Some(true) => Coder::Rans,
            _ => Coder::Auto(level),
        };
        let mut body = g.head.to_vec();
        let parts = parts();
        let mut rest = &parts[..];
        let part_est = est.parts.as_deref().unwrap_or(&[]);
        for (i, (&c, h)) in g.counts.iter().zip(g.parts).enumerate() {
            let (part, tail) = rest.split_at(c);
            let e = part_est.get(i).copied().flatten();
            put_coded_est(&mut body, part, part_coder, Some((h, e)))?;
            rest = tail;
        }
        if body.len() < len {
            out.push(SECTION_GROUPED);
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
            return Ok(());
        }
    }
    put_coded_est(
        out,
        &plane(),
        Coder::Auto(level),
        Some((g.total, Some(whole))),
    )
}

/// The bytes of an empty or constant plane, which need no estimate.
fn trivial_cost(total: &[u64; 256]) -> Option<f64> {
    let mut present = total.iter().filter(|&&c| c > 0);
    match (present.next(), present.next()) {
        (None, _) => Some(0.0),
        (Some(_), None) => Some((SECTION_HEAD + 1) as f64),
        _ => None,
    }
}

/// Estimated bytes of a plane as [`put_plane`] codes it with `coder`
/// `Auto`: `total` its histogram, `est` its estimates and its groups'
/// where the chunk is grouped ([`Estimates::of`]). The same rule as
/// `put_plane`'s: grouped where the groups' estimates are 2% below the
/// whole plane's. (zstd, which a probe may let try, is left out: it wins
/// on planes that repeat themselves.)
pub(super) fn plane_estimate_from(total: &[u64; 256], est: &Estimates) -> f64 {
    if let Some(c) = trivial_cost(total) {
        return c;
    }
    let len: u64 = total.iter().sum();
    let whole = est.whole;
    match est.grouped() {
        Some(g) if g < whole as f64 * 0.98 && g + 5.0 + (SECTION_HEAD as f64) < len as f64 => {
            g + 5.0 + SECTION_HEAD as f64
        }
        _ => whole.min(len as usize + SECTION_HEAD) as f64,
    }
}

/// How many elements of `reference` have each exponent (a histogram of
/// `1 << bits` entries), in one pass, four sub-histograms to break the
/// dependency on repeated exponents.
fn exponent_histogram(reference: &[u8], width: usize, (shift, bits): (u8, u8)) -> Vec<u64> {
    fn go<const W: usize>(reference: &[u8], shift: u32, mask: u64, h: &mut [Vec<u32>; 4]) {
        let exp = |e: &[u8]| {
            let mut b = [0u8; 8];
            b[..W].copy_from_slice(e);
            ((u64::from_le_bytes(b) >> shift) & mask) as usize
        };
        let mut quads = reference.chunks_exact(4 * W);
        for q in &mut quads {
            h[0][exp(&q[..W])] += 1;
            h[1][exp(&q[W..2 * W])] += 1;
            h[2][exp(&q[2 * W..3 * W])] += 1;
            h[3][exp(&q[3 * W..])] += 1;
        }
        for e in quads.remainder().chunks_exact(W) {
            h[0][exp(e)] += 1;
        }
    }
    let size = 1usize << bits;
    let mask = (size - 1) as u64;
    // Chunks are under 4 GiB of elements: the counts fit in u32.
    let mut h: [Vec<u32>; 4] = std::array::from_fn(|_| vec![0u32; size]);
    let shift = u32::from(shift);
    match width {
        1 => go::<1>(reference, shift, mask, &mut h),
        2 => go::<2>(reference, shift, mask, &mut h),
        4 => go::<4>(reference, shift, mask, &mut h),
        _ => go::<8>(reference, shift, mask, &mut h),
    }
    (0..size)
        .map(|e| h.iter().map(|s| u64::from(s[e])).sum())
        .collect()
}

/// The groups the dense planes of a chunk would get ([`groups_for`] without
/// positions), counted from its changed elements alone, without building
/// the planes: see [`dense_groups`].
pub(super) struct DenseGroups {
    shift: u8,
    bits: u8,
    base: u16,
    count: u8,
    /// Elements (changed or not) in each group.
    pub(super) counts: Vec<usize>,
    /// The group of each changed element.
    of: Vec<u8>,
}

impl DenseGroups {
    /// The parameters a grouped section starts with.
    pub(super) fn head(&self) -> [u8; 5] {
        section_head(self.shift, self.bits, self.base, self.count)
    }

    /// Where each changed element (at `pos`, increasing) lands in a plane's
    /// groups laid end to end ([`Groups::split`] of the dense plane): one
    /// pass over the reference's exponents up to the last change.
    pub(super) fn places(&self, reference: &[u8], width: usize, pos: &[u32]) -> Vec<u32> {
        fn go<const W: usize>(
            reference: &[u8],
            pos: &[u32],
            (shift, mask, base, top): (u32, u64, u16, u16),
            of: &[u8],
            mut next: [u32; MAX_GROUPS],
        ) -> Vec<u32> {
            let group = |e: &[u8]| {
                let mut b = [0u8; 8];
                b[..W].copy_from_slice(e);
                let x = ((u64::from_le_bytes(b) >> shift) & mask) as u16;
                usize::from(group_of(x, base, top))
            };
            let mut out = Vec::with_capacity(pos.len());
            let mut from = 0usize;
            for (&q, &g) in pos.iter().zip(of) {
                let q = q as usize;
                for e in reference[from * W..q * W].chunks_exact(W) {
                    next[group(e)] += 1;
                }
                let g = usize::from(g);
                out.push(next[g]);
                next[g] += 1;
                from = q + 1;
            }
            out
        }
        let mut next = [0u32; MAX_GROUPS];
        let mut at = 0u32;
        for (s, &c) in next.iter_mut().zip(&self.counts) {
            *s = at;
            // Chunks are under 4 GiB: element counts fit in u32.
            at += c as u32;
        }
        let field = (
            u32::from(self.shift),
            (1u64 << self.bits) - 1,
            self.base,
            u16::from(self.count) - 1,
        );
        match width {
            1 => go::<1>(reference, pos, field, &self.of, next),
            2 => go::<2>(reference, pos, field, &self.of, next),
            4 => go::<4>(reference, pos, field, &self.of, next),
            _ => go::<8>(reference, pos, field, &self.of, next),
        }
    }
}

/// The groups of the dense planes of a chunk of `n` elements whose changed
/// elements are at `pos`, with `values` their planes (`width` planes of
/// `pos.len()` bytes), and for each plane its groups' histograms (the
/// changed elements' bytes in their groups, and the zeros of every
/// unchanged element); `None` where the dense planes are not grouped.
pub(super) fn count_dense_groups(
    p: &ChunkParams,
    t: Transform,
    reference: &[u8],
    pos: &[u32],
    values: &[u8],
) -> Option<(DenseGroups, Vec<Vec<[u64; 256]>>)> {
    let width = p.width;
    let n = reference.len() / width;
    if t == Transform::None || n < GROUP_MIN {
        return None;
    }
    let exponent = p.exponent?;
    let (base, count) = Groups::window(reference, width, None, exponent)?;
    let top = u16::from(count) - 1;
    let group = |e: u16| group_of(e, base, top);
    // Elements per group: the exponents of the whole reference, counted.
    let exps = exponent_histogram(reference, width, exponent);
    let mut counts = vec![0usize; usize::from(count)];
    for (e, &c) in exps.iter().enumerate() {
        counts[usize::from(group(e as u16))] += c as usize;
    }
    let mut unchanged: Vec<u64> = counts.iter().map(|&c| c as u64).collect();
    let of = Groups::map_exponents(reference, width, Some(pos), exponent, group);
    for &g in &of {
        unchanged[usize::from(g)] -= 1;
    }
    let m = pos.len();
    let parts = (0..width)
        .map(|k| {
            let mut parts = vec![[0u64; 256]; usize::from(count)];
            for (&g, &b) in of.iter().zip(&values[k * m..(k + 1) * m]) {
                parts[usize::from(g)][usize::from(b)] += 1;
            }
            for (h, &u) in parts.iter_mut().zip(&unchanged) {
                h[0] += u;
            }
            parts
        })
        .collect();
    let groups = DenseGroups {
        shift: exponent.0,
        bits: exponent.1,
        base,
        count,
        counts,
        of,
    };
    Some((groups, parts))
}

/// What a decoder needs to read grouped sections: the reference and which
/// elements are coded.
pub(super) struct GroupContext<'r> {
    pub(super) reference: &'r [u8],
    pub(super) width: usize,
    pub(super) pos: Option<&'r [u32]>,
    /// The groups of the last grouped section: the planes of a chunk share
    /// their parameters, so the exponents are read once.
    pub(super) cache: RefCell<Option<Groups>>,
}

/// Decodes the body of a grouped section holding `len` bytes.
pub(super) fn read_grouped(
    body: &[u8],
    len: usize,
    ctx: &GroupContext<'_>,
    what: &str,
) -> Result<Vec<u8>> {
    let bad = |m: &str| Error::corrupt(format!("{what} section, grouped: {m}"));
    let head = body.get(..5).ok_or_else(|| bad("parameters missing"))?;
    let (shift, bits, base, count) = (
        head[0],
        head[1],
        u16::from_le_bytes([head[2], head[3]]),
        head[4],
    );
    if bits == 0 || bits > 11 || u32::from(shift) + u32::from(bits) > 8 * ctx.width as u32 {
        return Err(bad("exponent field outside the element"));
    }
    if !(1..=MAX_GROUPS as u8).contains(&count) {
        return Err(bad("group count out of range"));
    }
    let mut cache = ctx.cache.borrow_mut();
    let fresh =
        |g: &Groups| g.shift == shift && g.bits == bits && g.base == base && g.count == count;
    if !cache.as_ref().is_some_and(fresh) {
        *cache = Some(Groups::new(
            ctx.reference,
            ctx.width,
            ctx.pos,
            shift,
            bits,
            base,
            count,
        ));
    }
    let g = cache.as_ref().expect("set above");
    if g.of.len() != len {
        return Err(bad("length differs from the coded elements"));
    }
    let mut inner = Sections { rest: &body[5..] };
    // Each group decoded in place, the groups end to end.
    let mut parts = vec![0u8; len];
    let mut at = 0;
    for &c in &g.counts {
        inner.next_into(&mut parts[at..at + c], what)?;
        at += c;
    }
    if !inner.rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(g.merge(&parts))
}

/// Groups by reference exponent, for a float delta with enough coded elements.
pub(super) fn groups_for(
    p: &ChunkParams,
    t: Transform,
    reference: &[u8],
    pos: Option<&[u32]>,
) -> Option<Groups> {
    let coded = pos.map_or(reference.len() / p.width, <[u32]>::len);
    if t == Transform::None || coded < GROUP_MIN {
        return None;
    }
    Groups::choose(reference, p.width, pos, p.exponent?)
}

/// Start of the `k` consecutive bins of `hist` (`k <= hist.len()`) that
/// hold the most (the first such window).
pub(super) fn densest_window(hist: &[usize], k: usize) -> usize {
    let mut best = (0usize, 0usize);
    let mut sum: usize = hist[..k].iter().sum();
    for start in 0..=hist.len() - k {
        if start > 0 {
            sum = sum + hist[start + k - 1] - hist[start - 1];
        }
        if sum > best.1 {
            best = (start, sum);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunk::tests::rng;
    use crate::codec::chunk::{decode_chunk, encode_chunk, encode_chunk_with, Positions};
    use crate::source::dtype::Family;

    /// Weight-like floats with changes of a similar absolute size: the ULP
    /// difference's top bytes depend on each weight's exponent, so grouping
    /// them by the reference's exponent pays, and round-trips.
    #[test]
    fn grouping_by_reference_exponent_pays_and_round_trips() {
        let mut next = rng(11);
        let mut gauss = move || {
            // Sum of uniforms: roughly normal, enough for the test.
            (0..6)
                .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64)
                .sum::<f64>()
                - 3.0
        };
        let n = 100_000;
        let w: Vec<f32> = (0..n).map(|_| (gauss() * 0.05) as f32).collect();
        let w2: Vec<f32> = w.iter().map(|&x| x + (gauss() * 1e-4) as f32).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (r, c) = (bytes(&w), bytes(&w2));
        // The byte planes (dense, as the estimate chooses for this data),
        // not the symbols that encode_chunk would choose.
        let code = |exponent| {
            let p = ChunkParams {
                width: 4,
                family: Family::Float,
                level: 3,
                exponent,
                fine_classes: true,
            };
            let (coding, payload) =
                encode_chunk_with(&c, Some(&r), p, Some(Positions::Dense)).unwrap();
            let mut out = vec![0u8; c.len()];
            decode_chunk(&coding, &payload, Some(&r), &mut out).unwrap();
            assert!(out == c);
            payload
        };
        let plain = code(None);
        let grouped = code(Some((23, 8)));
        // The top-level section codings of a dense payload.
        let mut codings = Vec::new();
        let mut rest = &grouped[..];
        while !rest.is_empty() {
            codings.push(rest[0]);
            let stored = u32::from_le_bytes(rest[5..9].try_into().unwrap()) as usize;
            rest = &rest[SECTION_HEAD + stored..];
        }
        assert_eq!(codings.len(), 4, "{codings:?}");
        assert!(
            codings.contains(&SECTION_GROUPED),
            "no grouped section: {codings:?}"
        );
        assert!(
            (grouped.len() as f64) < plain.len() as f64 * 0.99,
            "grouped {} vs plain {}",
            grouped.len(),
            plain.len()
        );
        // Without the reference's context a grouped section is an error.
        let p = ChunkParams {
            width: 4,
            family: Family::Float,
            level: 3,
            exponent: Some((23, 8)),
            fine_classes: true,
        };
        let (coding, payload) = encode_chunk_with(&c, Some(&r), p, Some(Positions::Dense)).unwrap();
        let mut other = r.clone();
        other[0] ^= 0x80; // a different exponent for element 0 shifts the groups
        let mut out = vec![0u8; c.len()];
        let res = decode_chunk(&coding, &payload, Some(&other), &mut out);
        assert!(
            res.is_err() || out != c,
            "a different reference must not decode to the original"
        );
        // What encode_chunk chooses for such data: the symbols (codec 5 or 6),
        // within half a percent of the grouped planes, or smaller.
        let (coding, payload) = encode_chunk(&c, Some(&r), p).unwrap();
        assert!(coding.codec.is_symbols(), "{:?}", coding.codec);
        assert!(
            (payload.len() as f64) < grouped.len() as f64 * 1.005,
            "symbols {} vs grouped planes {}",
            payload.len(),
            grouped.len()
        );
        let mut out = vec![0u8; c.len()];
        decode_chunk(&coding, &payload, Some(&r), &mut out).unwrap();
        assert!(out == c);
        // Against another reference the symbols do not decode to the original.
        let res = decode_chunk(&coding, &payload, Some(&other), &mut out);
        assert!(res.is_err() || out != c);
    }
}
