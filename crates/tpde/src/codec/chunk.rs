//! Coding one chunk: transform against the reference, positions of the
//! changed elements, byte planes of the values, entropy coding. The choice
//! between the codings lives here ([`encode_chunk`]), and decoding a chunk
//! back ([`decode_chunk`]); the parts they assemble are in the sibling
//! modules `sections`, `groups`, `positions` and `sample`, the lossy mode's
//! chunk in `quantized`.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::codec::ans;
use crate::codec::groups::{
    count_dense_groups, groups_for, plane_estimate_from, put_plane, put_plane_grouping,
    DenseGroups, Estimates, GroupContext, Grouping, Groups,
};
use crate::codec::positions::{
    bitmap, changed_positions, classes_estimates, elias_gaps, fine_gap_classes, gap_classes,
    gaps_bits, gather_planes, read_classes, read_gaps,
};
use crate::codec::quantized::decode_quantized;
use crate::codec::sample::{entropy, Sample, Sampled, RAW_ENTROPY};
use crate::codec::sections::{
    probe_says_rans, put_coded, put_section, zstd_compress, zstd_decompress_exact, Coder, Sections,
};
use crate::codec::symbols::{self, Window};
use crate::codec::transform::{self, Transform};
use crate::common::error::{Error, Result};
use crate::source::dtype::Family;

pub use crate::codec::coding::{ChunkCoding, ChunkParams, Codec, Positions};
pub use crate::codec::quantized::encode_quantized_chunk;

/// Builds the payload of a planes/delta chunk: optional positions section,
/// then one section per byte plane, `hists` being the planes' histograms.
/// Planes that look random are stored raw without trying zstd.
///
/// `known`, where the choice made them for these planes and `groups`: each
/// plane's groups' histograms (with groups) and estimates (`None` for a
/// plane stored raw), which are then not made again.
fn build_sections(
    width: usize,
    pos_sections: &[&[u8]],
    planes: &[u8],
    hists: &[[u64; 256]],
    level: i32,
    groups: Option<&Groups>,
    known: Option<&PlaneCosts>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(planes.len() / 2 + 64);
    for p in pos_sections {
        put_section(&mut out, p, Some(level))?;
    }
    let m = planes.len() / width;
    for (k, hist) in hists.iter().enumerate().take(width) {
        let plane = &planes[k * m..(k + 1) * m];
        let coder = if looks_random(hist) {
            Coder::Raw
        } else {
            Coder::Auto(level)
        };
        let pre = known.and_then(|c| {
            let est = c.est[k].as_ref()?;
            Some((c.parts.as_ref()?[k].as_slice(), est))
        });
        put_plane(&mut out, plane, coder, Some(hist), groups, pre)?;
    }
    Ok(out)
}

/// What the positions-or-dense choice counted of one side's planes, for
/// its build: the groups' histograms of each plane (where the side is
/// grouped) and each plane's estimates (`None` where it is stored raw).
struct PlaneCosts {
    parts: Option<Vec<Vec<[u64; 256]>>>,
    est: Vec<Option<Estimates>>,
}

impl PlaneCosts {
    /// The estimates of planes with histograms `hists` and groups' `parts`.
    fn of(hists: &[[u64; 256]], parts: Option<Vec<Vec<[u64; 256]>>>) -> PlaneCosts {
        let est = hists
            .iter()
            .enumerate()
            .map(|(k, h)| {
                (!looks_random(h)).then(|| Estimates::of(h, parts.as_ref().map(|d| &d[k][..])))
            })
            .collect();
        PlaneCosts { parts, est }
    }

    /// Estimated bytes of the planes as [`build_sections`] codes them: raw
    /// where they look random, else as `put_plane` would.
    fn total(&self, hists: &[[u64; 256]]) -> f64 {
        hists
            .iter()
            .zip(&self.est)
            .map(|(h, e)| match e {
                Some(e) => plane_estimate_from(h, e),
                None => h.iter().sum::<u64>() as f64,
            })
            .sum()
    }
}

/// A chunk's changed elements, when its planes were not made: their
/// positions, their `width` planes, the groups of the dense planes counted
/// from them, and the dense planes' estimates (`None` where stored raw).
struct Changes {
    pos: Vec<u32>,
    values: Vec<u8>,
    groups: DenseGroups,
    /// Each dense plane's groups' histograms.
    parts: Vec<Vec<[u64; 256]>>,
    est: Vec<Option<Estimates>>,
}

/// [`build_sections`] of a chunk's dense planes, grouped, made from its
/// changed elements alone (`c`): each plane's groups are zeros but at the
/// changed elements' places, so neither the planes nor the group of every
/// element are made (a plane is, only where a zstd probe or an ungrouped
/// section needs it). The output is the same as `build_sections` on the
/// planes.
fn build_dense_from_changes(
    c: &Changes,
    n: usize,
    hists: &[[u64; 256]],
    level: i32,
    reference: &[u8],
    width: usize,
) -> Result<Vec<u8>> {
    let (pos, values, groups) = (&c.pos, &c.values, &c.groups);
    let m = pos.len();
    let places = groups.places(reference, width, pos);
    let scatter = |at: &[u32], vals: &[u8]| {
        let mut out = vec![0u8; n];
        for (&q, &b) in at.iter().zip(vals) {
            out[q as usize] = b;
        }
        out
    };
    let mut out = Vec::with_capacity(values.len() + 64);
    for (k, hist) in hists.iter().enumerate().take(width) {
        let vals = &values[k * m..(k + 1) * m];
        let plane = || Cow::Owned(scatter(pos, vals));
        if looks_random(hist) {
            put_coded(&mut out, &plane(), Coder::Raw, Some(hist))?;
            continue;
        }
        let grouping = Grouping {
            head: groups.head(),
            counts: &groups.counts,
            total: hist,
            parts: &c.parts[k],
            est: c.est[k].as_ref(),
        };
        put_plane_grouping(&mut out, n, level, &grouping, plane, || {
            scatter(&places, vals)
        })?;
    }
    Ok(out)
}

/// How much larger than the byte planes' the estimate of the symbols may
/// be and still choose them: the planes' estimate leaves out their
/// grouping by exponent, the symbols' their contexts, which gain alike.
const SYMBOLS_MARGIN: f64 = 1.005;

/// Whether a chunk of `len` bytes with these parameters may be coded with
/// symbols (codec 5 or 6, format version 4 on) when it has reference data: a float
/// of 2 or 4 bytes with its exponent field known, and enough elements.
pub fn symbols_eligible(len: usize, p: &ChunkParams) -> bool {
    p.family == Family::Float
        && matches!(p.width, 2 | 4)
        && p.exponent.is_some()
        && len / p.width >= symbols::MIN_ELEMENTS
}

/// Share of changed elements up to which a chunk is transformed at its
/// changed elements first (and its positions found from them).
const FAST_SPARSE: f64 = 0.25;

/// Elements of a chunk at most for which both the dense and the sparse
/// coding are built when their estimates are close.
const SMALL_CHUNK: usize = 4096;

/// Whether a plane with histogram `h` is stored raw, without trying a coder.
fn looks_random(h: &[u64; 256]) -> bool {
    entropy(h) > RAW_ENTROPY
}

/// Estimated bytes of a plane with histogram `h`: raw where it looks
/// random (as [`build_sections`] stores it), else its rANS size.
fn plane_cost(h: &[u64; 256]) -> f64 {
    let len: u64 = h.iter().sum();
    if len == 0 {
        0.0
    } else if looks_random(h) {
        len as f64
    } else {
        ans::estimate(h).min(len as usize) as f64
    }
}

/// Encodes one chunk of `cur`, against `reference` (same length) when given.
/// Returns its coding and payload; the payload is never longer than the raw
/// chunk.
pub fn encode_chunk(
    cur: &[u8],
    reference: Option<&[u8]>,
    p: ChunkParams,
) -> Result<(ChunkCoding, Vec<u8>)> {
    encode_chunk_with(cur, reference, p, None)
}

/// [`encode_chunk`], or with `force`, exactly that positions coding and no
/// fallback, and never symbols (for tests of every decoding path).
pub(super) fn encode_chunk_with(
    cur: &[u8],
    reference: Option<&[u8]>,
    p: ChunkParams,
    force: Option<Positions>,
) -> Result<(ChunkCoding, Vec<u8>)> {
    let width = p.width;
    debug_assert!(cur.len().is_multiple_of(width) && !cur.is_empty());
    debug_assert!(reference.is_none_or(|r| r.len() == cur.len()));
    let n = cur.len() / width;

    // 1. Choose the transform on a sample, by the estimated entropy of its planes.
    let mut candidates = vec![Transform::None];
    if reference.is_some() {
        candidates.push(Transform::Xor);
        candidates.push(match p.family {
            Family::Float => Transform::Ulp,
            Family::Integer => Transform::IntDiff,
        });
    }
    let r = reference.unwrap_or(&[]);
    let sampled = Sampled::gather(width, cur, r);
    let cost = |s: &Sample| s.dense_bits().min(s.sparse_bits() + 2.0);
    let (transform, sample) = candidates
        .into_iter()
        .map(|t| {
            let s = Sample::take(t, width, &sampled);
            (cost(&s), t, s)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, t, s)| (t, s))
        .expect("at least one candidate");

    // 1b. A float delta: one symbol per element (codec 5), when the sample
    // says it codes no larger than the byte planes (both estimated without
    // their exponent contexts, bits per element).
    if force.is_none() && transform == Transform::Ulp && symbols_eligible(cur.len(), &p) {
        let planes_bits = sample
            .dense_bits()
            .min(sample.changed * (sample.sparse_bits() + 2.0));
        let symbol_bits = symbols::sample_bits(&sampled.cur, &sampled.reference, width);
        if let (true, Some(exponent)) = (symbol_bits <= planes_bits * SYMBOLS_MARGIN, p.exponent) {
            let window = Window::choose(r, width, exponent);
            if let Some(c) = symbols::encode(cur, r, width, window, cur.len() / 10 * 9) {
                let coding = ChunkCoding {
                    codec: if c.states == symbols::WIDE {
                        Codec::Symbols32
                    } else {
                        Codec::Symbols
                    },
                    transform,
                    positions: Positions::Dense,
                    width: width as u8,
                    nnz: c.nnz,
                };
                return Ok((coding, c.payload));
            }
        }
    }

    // 2. Transform: where the sample says few elements changed, only the
    // changed ones, at their positions (the planes of every element are
    // made only if dense planes are tried); else the whole chunk straight
    // into byte planes.
    let mut known: Option<(Vec<u32>, Vec<u8>)> = None;
    if sample.changed <= FAST_SPARSE && force.is_none_or(|f| f != Positions::Dense) {
        let (pos, values) = transform::forward_sparse(transform, width, cur, r);
        if pos.len() as f64 <= n as f64 * FAST_SPARSE {
            known = Some((pos, values));
        }
    }
    let all_planes = || {
        let mut planes = vec![0u8; cur.len()];
        let nnz = transform::forward_planes(transform, width, cur, r, &mut planes);
        (planes, nnz)
    };
    let (mut planes, nnz) = match &known {
        Some((pos, _)) => (None, pos.len() as u64),
        None => {
            let (planes, nnz) = all_planes();
            (Some(planes), nnz)
        }
    };
    let codec = if transform == Transform::None {
        Codec::Planes
    } else {
        Codec::Delta
    };
    let coding = |positions| ChunkCoding {
        codec,
        transform,
        positions,
        width: width as u8,
        nnz,
    };

    // 3. Positions: none (dense), Elias-delta gaps, gap classes or a bitmap,
    // chosen by exact order-0 costs and only the chosen one built. An
    // unchanged element is zero in every plane, so a plane's histogram over
    // the changed elements is its whole histogram less the unchanged ones.
    // With few changes, the positions and the changed values come first,
    // and only the values are counted (the planes add the unchanged zeros).
    let unchanged = n as u64 - nnz;
    let (hists, sparse_hists): (Vec<[u64; 256]>, Vec<[u64; 256]>) =
        if let Some((pos, values)) = &known {
            let m = pos.len();
            let sparse: Vec<[u64; 256]> = (0..width)
                .map(|k| ans::histogram(&values[k * m..(k + 1) * m]))
                .collect();
            let dense = sparse
                .iter()
                .map(|h| {
                    let mut h = *h;
                    h[0] += unchanged;
                    h
                })
                .collect();
            (dense, sparse)
        } else {
            let planes = planes
                .as_ref()
                .expect("the planes of a chunk with many changes");
            let dense: Vec<[u64; 256]> = planes.chunks_exact(n).map(ans::histogram).collect();
            let sparse = dense
                .iter()
                .map(|h| {
                    let mut h = *h;
                    h[0] -= unchanged;
                    h
                })
                .collect();
            (dense, sparse)
        };
    // First estimates, without groups: whether positions may pay at all.
    let dense_est: f64 = hists.iter().map(plane_cost).sum();
    let sparse_values: f64 = sparse_hists.iter().map(plane_cost).sum();
    // When nearly everything changed, positions pay off only if the
    // unchanged elements cluster; with independent positions nothing beats
    // the entropy of the changed/unchanged pattern, so when even that floor
    // loses to dense planes the positions are not computed.
    let p_changed = nnz as f64 / n as f64;
    let pattern_bits = if nnz == 0 || nnz as usize == n {
        0.0
    } else {
        -(p_changed * p_changed.log2() + (1.0 - p_changed) * (1.0 - p_changed).log2())
    };
    let sparse_floor = n as f64 * pattern_bits / 8.0 + sparse_values;
    let worth_sparse = (nnz as usize) < n && (p_changed < 0.9 || sparse_floor < dense_est);
    let mut best: Option<(ChunkCoding, Vec<u8>)> = None;
    // A small chunk's estimates are rough (table overheads, zstd on short
    // sections): there both codings are built when they are close, and the
    // smaller kept. Building is cheap at that size.
    let mut try_dense = force.is_none_or(|f| f == Positions::Dense);
    // The dense planes' groups, when made for the estimate.
    let mut dense_groups: Option<Option<Groups>> = None;
    // Where the planes were not made: the changed elements and the dense
    // planes' groups counted from them, to build the dense planes' groups
    // from the changes alone.
    let mut from_changes: Option<Changes> = None;
    // Where they were: the dense planes' estimates, for their build.
    let mut planes_costs: Option<PlaneCosts> = None;
    if force.is_some_and(|f| f != Positions::Dense) || (force.is_none() && worth_sparse) {
        let (pos, values) = match known.take() {
            Some((pos, values)) => (pos, values),
            None => {
                let planes = planes
                    .as_ref()
                    .expect("planes unless the positions are known");
                let pos = changed_positions(planes, n, nnz);
                let values = gather_planes(width, planes, n, &pos);
                (pos, values)
            }
        };
        let mut counted: Option<DenseGroups> = None;
        // Bytes of each way to code the positions: Elias-delta gaps (exact),
        // a bitmap (before zstd), gap classes and fine gap classes
        // (estimated; fine ones only in a version 6 file).
        let elias = gaps_bits(&pos).div_ceil(8);
        let bits = (n as u64).div_ceil(8);
        let (classes, fine) = classes_estimates(&pos);
        let fine = if p.fine_classes { fine } else { u64::MAX };
        let pos_est = elias.min(bits).min(classes).min(fine);
        // Both sides as build_sections codes them: grouped by the
        // reference's exponent where that pays. Where the chance that an
        // element changes depends on its magnitude (BF16 weights under a
        // small learning rate: the smallest change, the largest stay), the
        // dense planes' groups code the positions almost for free, which
        // the positions cannot.
        let sparse_groups = groups_for(&p, transform, r, Some(&pos));
        let m = pos.len();
        let sparse_costs = PlaneCosts::of(
            &sparse_hists,
            sparse_groups.as_ref().map(|g| {
                (0..width)
                    .map(|k| g.histograms(&values[k * m..(k + 1) * m]).1)
                    .collect()
            }),
        );
        let sparse_values = sparse_costs.total(&sparse_hists);
        let costs = match &planes {
            Some(planes) => {
                let parts = dense_groups
                    .get_or_insert_with(|| groups_for(&p, transform, r, None))
                    .as_ref()
                    .map(|g| {
                        planes
                            .chunks_exact(n)
                            .map(|plane| g.histograms(plane).1)
                            .collect()
                    });
                PlaneCosts::of(&hists, parts)
            }
            None => {
                let (groups, parts) = count_dense_groups(&p, transform, r, &pos, &values).unzip();
                counted = groups;
                PlaneCosts::of(&hists, parts)
            }
        };
        let dense_est = costs.total(&hists);
        let sparse_est = pos_est as f64 + sparse_values;
        let close = n <= SMALL_CHUNK && sparse_est > dense_est * 0.97 && nnz > 0;
        // The estimates are the coded sizes but for zstd, which dense
        // planes try where a probe says it may win (planes that repeat
        // themselves): positions chosen within 0.5% of the dense planes'
        // order-0 estimate (no groups) cost up to 1.8x on tensors of
        // examples/regimes.sh bf16-lowlr. So no slack for speed.
        if force.is_some() || sparse_est < dense_est * if close { 1.03 } else { 1.0 } || nnz == 0 {
            let choice = force.unwrap_or(if pos_est == elias {
                Positions::Gaps
            } else if pos_est == bits {
                Positions::Bitmap
            } else if pos_est == classes {
                Positions::Classes
            } else {
                Positions::FineClasses
            });
            let (positions, pos_sections) = match choice {
                Positions::Gaps => (Positions::Gaps, vec![elias_gaps(&pos)]),
                Positions::Bitmap => (Positions::Bitmap, vec![bitmap(n, &pos)]),
                Positions::FineClasses => {
                    let (c, low) = fine_gap_classes(&pos);
                    (Positions::FineClasses, vec![c, low])
                }
                _ => {
                    let (c, low) = gap_classes(&pos);
                    (Positions::Classes, vec![c, low])
                }
            };
            let views: Vec<&[u8]> = pos_sections.iter().map(|v| &v[..]).collect();
            let payload = build_sections(
                width,
                &views,
                &values,
                &sparse_hists,
                p.level,
                sparse_groups.as_ref(),
                Some(&sparse_costs),
            )?;
            best = Some((coding(positions), payload));
            try_dense = force.is_none() && close;
        }
        if try_dense {
            match (planes.is_some(), counted, costs) {
                (
                    false,
                    Some(groups),
                    PlaneCosts {
                        parts: Some(parts),
                        est,
                    },
                ) => {
                    from_changes = Some(Changes {
                        pos,
                        values,
                        groups,
                        parts,
                        est,
                    });
                }
                (true, _, costs) => planes_costs = Some(costs),
                _ => {}
            }
        }
    }
    if try_dense {
        let payload = match &from_changes {
            Some(c) => build_dense_from_changes(c, n, &hists, p.level, r, width)?,
            None => {
                let groups = dense_groups.unwrap_or_else(|| groups_for(&p, transform, r, None));
                let planes = planes.get_or_insert_with(|| all_planes().0);
                build_sections(
                    width,
                    &[],
                    planes,
                    &hists,
                    p.level,
                    groups.as_ref(),
                    planes_costs.as_ref(),
                )?
            }
        };
        if best.as_ref().is_none_or(|b| payload.len() < b.1.len()) {
            best = Some((coding(Positions::Dense), payload));
        }
    }
    let mut best = best.expect("a coding was built");
    if force.is_some() {
        return Ok(best);
    }

    // 4. Fallbacks: plain zstd when the planes barely helped and a probe
    // says zstd may do better, stored when nothing did.
    if best.1.len() * 10 > cur.len() * 9
        && probe_says_rans(cur, best.1.len(), p.level)? != Some(true)
    {
        let z = zstd_compress(cur, p.level)?;
        if z.len() < best.1.len() {
            best = (plain(Codec::Zstd, cur.len() as u64), z);
        }
    }
    if best.1.len() >= cur.len() {
        best = (plain(Codec::Stored, cur.len() as u64), cur.to_vec());
    }
    Ok(best)
}

fn plain(codec: Codec, len: u64) -> ChunkCoding {
    ChunkCoding {
        codec,
        transform: Transform::None,
        positions: Positions::Dense,
        width: 1,
        nnz: len,
    }
}

/// Decodes one chunk into `out` (exactly the chunk's raw length).
/// `reference` must be given, of the same length, for [`Codec::Delta`].
pub fn decode_chunk(
    c: &ChunkCoding,
    payload: &[u8],
    reference: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let width = usize::from(c.width);
    if !matches!(width, 1 | 2 | 4 | 8) || !out.len().is_multiple_of(width) {
        return Err(Error::corrupt(format!(
            "bad element width {width} for a chunk of {} bytes",
            out.len()
        )));
    }
    let n = out.len() / width;
    match c.codec {
        Codec::Quantized => return decode_quantized(c, payload, reference, out),
        Codec::Stored | Codec::Zstd => {
            if c.transform != Transform::None || c.positions != Positions::Dense || width != 1 {
                return Err(Error::corrupt("plain chunk with a transform or positions"));
            }
            if c.codec == Codec::Stored {
                if payload.len() != out.len() {
                    return Err(Error::corrupt(
                        "stored chunk length differs from its raw length",
                    ));
                }
                out.copy_from_slice(payload);
                return Ok(());
            }
            return zstd_decompress_exact(payload, out, "zstd chunk");
        }
        Codec::Planes if c.transform != Transform::None => {
            return Err(Error::corrupt("planes chunk with a transform"));
        }
        Codec::Delta if c.transform == Transform::None => {
            return Err(Error::corrupt("delta chunk without a transform"));
        }
        Codec::Symbols | Codec::Symbols32 => {
            if c.transform != Transform::Ulp
                || c.positions != Positions::Dense
                || !matches!(width, 2 | 4)
            {
                return Err(Error::corrupt(
                    "symbols chunk with another transform, positions or width",
                ));
            }
            let r = reference
                .filter(|r| r.len() == out.len())
                .ok_or_else(|| Error::corrupt("symbols chunk without reference data"))?;
            let states = if c.codec == Codec::Symbols32 {
                symbols::WIDE
            } else {
                symbols::NARROW
            };
            if symbols::decode(payload, r, width, states, out)? != c.nnz {
                return Err(Error::corrupt(
                    "changed count differs from the chunk's values",
                ));
            }
            return Ok(());
        }
        _ => {}
    }
    let reference = match (c.codec, reference) {
        (Codec::Delta, Some(r)) if r.len() == out.len() => r,
        (Codec::Delta, _) => return Err(Error::corrupt("delta chunk without reference data")),
        _ => &[][..],
    };
    let nnz = usize::try_from(c.nnz)
        .ok()
        .filter(|&k| k <= n)
        .ok_or_else(|| Error::corrupt(format!("{} changed elements in a chunk of {n}", c.nnz)))?;

    let mut sections = Sections { rest: payload };
    let pos: Option<Vec<u32>> = match c.positions {
        Positions::Dense => None,
        Positions::Gaps => {
            let len = sections.peek_len("positions")?;
            // A gap takes at least one bit: bound the length before allocating.
            if len > payload.len().saturating_mul(64) || len > nnz.saturating_mul(10) + 8 {
                return Err(Error::corrupt(
                    "positions section longer than its chunk allows",
                ));
            }
            let bytes = sections.next(len, "positions")?;
            Some(read_gaps(&bytes, nnz, n, "changed position")?)
        }
        Positions::Classes | Positions::FineClasses => {
            let classes = sections.next(nnz, "gap classes")?;
            let len = sections.peek_len("gap bits")?;
            // At most 31 low bits per gap: bound the length before allocating.
            if len > nnz.saturating_mul(4) + 8 {
                return Err(Error::corrupt(
                    "gap bits section longer than its chunk allows",
                ));
            }
            let bytes = sections.next(len, "gap bits")?;
            let fine = c.positions == Positions::FineClasses;
            Some(read_classes(&classes, &bytes, n, fine)?)
        }
        Positions::Bitmap => {
            let bytes = sections.next(n.div_ceil(8), "bitmap")?;
            let mut pos = Vec::with_capacity(nnz);
            for (i, &b) in bytes.iter().enumerate() {
                let mut bits = b;
                while bits != 0 {
                    let lz = bits.leading_zeros() as usize;
                    pos.push((i * 8 + lz) as u32);
                    bits &= !(0x80 >> lz);
                }
            }
            if pos.len() != nnz || pos.last().is_some_and(|&p| p as usize >= n) {
                return Err(Error::corrupt("bitmap does not match the changed count"));
            }
            Some(pos)
        }
    };

    let m = if pos.is_some() { nnz } else { n };
    let ctx = (c.codec == Codec::Delta).then(|| GroupContext {
        reference,
        width,
        pos: pos.as_deref(),
        cache: RefCell::new(None),
    });
    let planes: Vec<Cow<'_, [u8]>> = (0..width)
        .map(|_| sections.next_in(m, "byte plane", ctx.as_ref()))
        .collect::<Result<_>>()?;
    if !sections.rest.is_empty() {
        return Err(Error::corrupt("chunk payload has trailing bytes"));
    }
    let views: Vec<&[u8]> = planes.iter().map(|p| &p[..]).collect();
    match &pos {
        None => {
            if transform::inverse_planes(c.transform, width, &views, reference, out) != c.nnz {
                return Err(Error::corrupt(
                    "changed count differs from the chunk's values",
                ));
            }
        }
        Some(pos) => transform::inverse_sparse(c.transform, width, pos, &views, reference, out),
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn round_trip(
        cur: &[u8],
        reference: Option<&[u8]>,
        width: usize,
        family: Family,
    ) -> ChunkCoding {
        let (coding, payload) = encode_chunk(
            cur,
            reference,
            ChunkParams {
                width,
                family,
                level: 3,
                exponent: None,
                fine_classes: true,
            },
        )
        .unwrap();
        assert!(
            payload.len() <= cur.len(),
            "payload longer than the raw chunk"
        );
        let mut out = vec![0u8; cur.len()];
        decode_chunk(&coding, &payload, reference, &mut out).unwrap();
        assert!(out == cur, "{coding:?} does not round-trip");
        coding
    }

    /// Patterns of changes: long gaps, random gaps, runs, all changed, none.
    fn patterns() -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut next = rng(7);
        let n = 50_000;
        let reference: Vec<u8> = (0..n * 4).map(|_| next() as u8).collect();
        let mut out = Vec::new();
        for (period, run) in [
            (20_000u64, 1usize),
            (50, 1),
            (40, 16),
            (1, 1),
            (u64::MAX, 1),
        ] {
            let mut cur = reference.clone();
            let mut i = 0;
            while i < n {
                if next().is_multiple_of(period) {
                    for k in i..(i + run).min(n) {
                        cur[k * 4 + (next() % 4) as usize] ^= (next() as u8) | 1;
                    }
                    i += run;
                } else {
                    i += 1;
                }
            }
            out.push((reference.clone(), cur));
        }
        out
    }

    #[test]
    fn every_positions_coding_round_trips_on_every_pattern() {
        for (reference, cur) in patterns() {
            for force in [
                Positions::Dense,
                Positions::Gaps,
                Positions::Bitmap,
                Positions::Classes,
                Positions::FineClasses,
            ] {
                let params = ChunkParams {
                    width: 4,
                    family: Family::Float,
                    level: 3,
                    exponent: Some((23, 8)),
                    fine_classes: true,
                };
                let (coding, payload) =
                    encode_chunk_with(&cur, Some(&reference), params, Some(force)).unwrap();
                assert_eq!(coding.positions, force);
                let mut out = vec![0u8; cur.len()];
                decode_chunk(&coding, &payload, Some(&reference), &mut out).unwrap();
                assert!(out == cur, "{coding:?} does not round-trip");
            }
        }
    }

    /// The encoder's own choice. Random changes cost least as entropy-coded
    /// dense planes (the zeros of a plane code the positions at their
    /// entropy); clustered ones as gap classes; no change at all as an empty
    /// Elias-delta stream.
    #[test]
    fn chosen_codings_round_trip() {
        let mut seen = Vec::new();
        for (reference, cur) in patterns() {
            seen.push(round_trip(&cur, Some(&reference), 4, Family::Float).positions);
        }
        assert_eq!(seen[4], Positions::Gaps, "{seen:?}");
        assert_eq!(seen[2], Positions::Classes, "{seen:?}");
        assert!(seen.contains(&Positions::Classes), "{seen:?}");
        assert!(seen.contains(&Positions::Dense), "{seen:?}");
    }

    /// The parameters of a BF16 chunk.
    fn bf16_params() -> ChunkParams {
        ChunkParams {
            width: 2,
            family: Family::Float,
            level: 3,
            exponent: Some((7, 8)),
            fine_classes: true,
        }
    }

    /// A BF16 chunk of 2 Mi elements against its reference: weights near
    /// 0.01 but for those `small(i)` marks (under 2.4e-4), and changes of
    /// 1-3 units in the last place at `chance(exponent)` in 10,000 of the
    /// elements.
    fn bf16_changes(
        seed: u64,
        small: impl Fn(usize, u64) -> bool,
        chance: impl Fn(u16) -> u64,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut next = rng(seed);
        let n = 2 << 20;
        let prev: Vec<u16> = (0..n)
            .map(|i| {
                let r = next();
                let x = if small(i, r % 10_000) {
                    (r >> 20) as f32 % 480.0 * 1e-6 - 2.4e-4
                } else {
                    (r >> 20) as f32 % 20_000.0 * 1e-6 - 0.01
                };
                (x.to_bits() >> 16) as u16
            })
            .collect();
        let cur: Vec<u16> = prev
            .iter()
            .map(|&x| {
                if next() % 10_000 < chance((x >> 7) & 0xff) {
                    let s = 1 + (next() % 3) as u16;
                    if next() & 1 == 0 {
                        x.wrapping_add(s)
                    } else {
                        x.wrapping_sub(s)
                    }
                } else {
                    x
                }
            })
            .collect();
        let b = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        (b(&prev), b(&cur))
    }

    /// Where few elements changed, the dense planes' groups are built from
    /// the changed elements alone (`build_dense_from_changes`): the same
    /// bytes as the planes' own coding (forced dense builds the planes).
    #[test]
    fn dense_planes_from_the_changes_are_the_planes_coding() {
        let params = bf16_params();
        let cases = [
            bf16_changes(
                12,
                |i, r| (i / 128) % 50 == 7 || r < 200,
                |e| {
                    if e <= 115 {
                        9_000
                    } else {
                        5
                    }
                },
            ),
            bf16_changes(13, |_, r| r < 1_500, |e| if e <= 118 { 9_500 } else { 1 }),
            bf16_changes(14, |_, r| r < 300, |e| if e <= 115 { 5_000 } else { 200 }),
        ];
        let mut dense = 0;
        for (i, (reference, cur)) in cases.iter().enumerate() {
            let (coding, payload) = encode_chunk(cur, Some(reference), params).unwrap();
            let mut out = vec![0u8; cur.len()];
            decode_chunk(&coding, &payload, Some(reference), &mut out).unwrap();
            assert!(&out == cur, "case {i}: {coding:?} does not round-trip");
            if coding.positions == Positions::Dense && coding.codec == Codec::Delta {
                dense += 1;
                let (forced_coding, forced) =
                    encode_chunk_with(cur, Some(reference), params, Some(Positions::Dense))
                        .unwrap();
                assert_eq!(forced_coding, coding, "case {i}");
                assert!(forced == payload, "case {i}: the payloads differ");
            }
        }
        assert!(dense >= 2, "only {dense} cases coded dense");
    }

    /// A damaged grouped section (its groups decode in place) is an error
    /// or other bytes, never a panic, and a truncated one is an error.
    #[test]
    fn damaged_grouped_sections_are_errors() {
        let params = bf16_params();
        let (reference, cur) =
            bf16_changes(13, |_, r| r < 1_500, |e| if e <= 118 { 9_500 } else { 1 });
        let (coding, payload) = encode_chunk(&cur, Some(&reference), params).unwrap();
        assert_eq!(coding.positions, Positions::Dense);
        assert_eq!(payload[0], crate::codec::sections::SECTION_GROUPED);
        let mut out = vec![0u8; cur.len()];
        let step = (payload.len() / 600).max(1);
        for at in (0..payload.len()).step_by(step) {
            let mut bad = payload.clone();
            bad[at] ^= 0x5a;
            if decode_chunk(&coding, &bad, Some(&reference), &mut out).is_ok() {
                assert!(out != cur, "a flipped byte {at} decoded to the same chunk");
            }
            assert!(
                decode_chunk(&coding, &payload[..at], Some(&reference), &mut out).is_err(),
                "truncated at {at}"
            );
        }
    }

    /// The encoder's choice between dense planes and each positions coding
    /// is the smallest of them (within 0.2%), from estimates alone: where
    /// 1% of the elements change at random (the two are within 1% there:
    /// the dense planes' zeros cost more at rANS's 12-bit precision than
    /// their entropy, which an estimate of the entropy missed), and where
    /// the changes are the small weights' (dense planes grouped by
    /// exponent, by far: the reference tells which elements change, the
    /// positions cannot).
    #[test]
    fn the_choice_is_the_smallest_coding() {
        let params = bf16_params();
        let random = bf16_changes(11, |_, _| false, |_| 100);
        // Small weights in 2% of the rows of 128 and at 2% of the other
        // places; they change, the others hardly: the positions see the
        // rows, the dense planes' groups every small weight.
        let by_size = bf16_changes(
            12,
            |i, r| (i / 128) % 50 == 7 || r < 200,
            |e| if e <= 115 { 9_000 } else { 5 },
        );
        for (name, (reference, cur), want) in [
            ("random", random, None),
            ("by exponent", by_size, Some(Positions::Dense)),
        ] {
            let (coding, payload) = encode_chunk(&cur, Some(&reference), params).unwrap();
            let mut out = vec![0u8; cur.len()];
            decode_chunk(&coding, &payload, Some(&reference), &mut out).unwrap();
            assert!(out == cur, "{name}: {coding:?} does not round-trip");
            let forced: Vec<(Positions, usize)> = [
                Positions::Dense,
                Positions::Gaps,
                Positions::Bitmap,
                Positions::Classes,
                Positions::FineClasses,
            ]
            .into_iter()
            .map(|f| {
                let (_, payload) =
                    encode_chunk_with(&cur, Some(&reference), params, Some(f)).unwrap();
                (f, payload.len())
            })
            .collect();
            let least = forced.iter().map(|f| f.1).min().unwrap();
            assert!(
                payload.len() * 1000 <= least * 1002,
                "{name}: chose {:?} at {} bytes; forced: {forced:?}",
                coding.positions,
                payload.len()
            );
            if let Some(want) = want {
                assert_eq!(coding.positions, want, "{name}: {forced:?}");
            }
        }
    }

    #[test]
    fn identical_and_unrelated_chunks() {
        let mut next = rng(3);
        let a: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let b: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let same = round_trip(&a, Some(&a), 4, Family::Float);
        assert_eq!(same.nnz, 0);
        let other = round_trip(&b, Some(&a), 4, Family::Float);
        assert_eq!(
            other.codec,
            Codec::Stored,
            "random data is stored, not expanded"
        );
        round_trip(&b, None, 8, Family::Float);
    }
}
