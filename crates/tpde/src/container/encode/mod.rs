//! Encoding a checkpoint file into a `.tpde` container, in two steps:
//! [`plan`] reads the source (safetensors, torch archive, opaque bytes) and
//! decides what each chunk is and what it is coded against; [`execute`]
//! codes the chunks and writes the container. [`encode`] is the two, with
//! the check that the inputs did not change meanwhile.
//!
//! This file owns the options, the totals and [`encode`]; `plan.rs` the
//! [`Plan`]; `summary.rs` its [`PlanSummary`]; `execute.rs` the windows,
//! duplicates, payloads, index and trailer. May call [`common`](crate::common),
//! [`source`](crate::source), [`codec`](crate::codec) and
//! [`format`](crate::container::format).

use std::io::Write;

use crate::codec::lossy::Bound;
use crate::common::error::Result;
use crate::common::mmap;
use crate::container::format::SourceKind;

mod execute;
mod plan;
mod summary;

pub use execute::execute;
use execute::{execute_as, Input};
pub use plan::{plan, Plan, PlannedTensor};
pub use summary::{DtypeBytes, PlanSummary};

/// What kind of file is being encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputKind {
    /// A safetensors file; anything else is refused.
    #[default]
    Safetensors,
    /// Any file, coded as opaque bytes against the same bytes of the reference.
    Opaque,
    /// A zip archive written by `torch.save` (a `.pt`/`.pth` file): its tensor
    /// storages are coded as tensors against the storages of the same name (below the archive's top folder) in
    /// the reference archive; anything else is refused.
    Archive,
    /// Whichever of the three the file is: safetensors, else a torch archive,
    /// else opaque bytes. A reference of another kind is not used (the
    /// container is then a keyframe), nor one that no tensor matches.
    Auto,
}

/// Encoder settings.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Largest chunk in bytes (a multiple of 8, at least 64). Chunks are
    /// coded independently and in parallel.
    pub chunk_size: usize,
    /// zstd level of the entropy-coded sections.
    pub level: i32,
    /// How to read the input.
    pub input: InputKind,
    /// The lossy mode: float tensors (F16, BF16, F32, F64) restored within
    /// this bound of the original, coded against the reference as given (pass
    /// the *reconstruction* of the reference, what decoding it gave, so that
    /// errors do not add up). `None`: lossless.
    pub lossy: Option<Bound>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            chunk_size: 4 << 20,
            level: 3,
            input: InputKind::Safetensors,
            lossy: None,
        }
    }
}

/// Totals of one encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodeStats {
    pub original_len: u64,
    pub encoded_len: u64,
    /// Elements whose bits differ from their reference element (over the
    /// tensors that have one).
    pub changed: u64,
    /// Elements in all tensors.
    pub elements: u64,
    /// What the file was read as.
    pub source_kind: SourceKind,
    /// Whether the container needs the reference to decode (false for a
    /// keyframe, and with [`InputKind::Auto`] when the reference did not fit).
    pub reference_used: bool,
    /// XXH3-128 of what decoding gives: the original, or in the lossy mode
    /// its reconstruction.
    pub output_digest: u128,
    /// In the lossy mode, the largest error of any restored element (0 when
    /// every element came out exact); `None` when the container is lossless
    /// (no bound asked, or no float tensor to apply it to).
    pub max_abs_error: Option<f64>,
}

/// Bytes of input coded per parallel batch, which bounds the memory held at
/// once (two windows of the input and the reference, one written while the
/// next is coded; their coded payloads; the workers' buffers): two chunks
/// per worker thread, at least 8 MiB.
pub(crate) fn batch_bytes(chunk_size: usize) -> usize {
    (chunk_size * 2 * rayon::current_num_threads()).max(8 << 20)
}

/// Encodes `cur` against `reference` (a keyframe when `None`) and writes the
/// container to `out`. `progress` is told the input bytes done so far.
///
/// Each window of the input is copied once and every pass over it (chunk
/// checksums, duplicates, coding, the output digest) reads the copy, so that
/// the container always agrees with the bytes that were coded, even when the
/// file changes while it is read. The reference is read in place: coded
/// against bytes that changed meanwhile, a chunk fails its checksum when
/// decoded, never decodes silently to something else. When `cur` or
/// `reference` lies in a [`FileBytes`](crate::common::mmap::FileBytes) whose file changed
/// meanwhile (see [`FileBytes::check_unchanged`](crate::common::mmap::FileBytes::check_unchanged)),
/// the encode ends in [`Error::InputChanged`](crate::Error::InputChanged), after writing the container:
/// throw it away.
pub fn encode(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    encode_as(cur, reference, opts, out, progress, Input::Copied)
}

/// [`encode`], the input's windows read as `input` says.
fn encode_as(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
    input: Input,
) -> Result<EncodeStats> {
    let result = plan(cur, reference, opts).and_then(|p| execute_as(p, out, progress, input));
    // A file that changed while it was read: say so, whatever else went wrong
    // meanwhile (bytes cut short may not even parse any more).
    mmap::check_unchanged(cur)?;
    if let Some(r) = reference {
        mmap::check_unchanged(r)?;
    }
    result
}

/// [`encode`] of an input that nothing else can change while it is coded
/// (memory the caller owns, not a file map): read in place, without the
/// copy that guards against a file changing under the encoder.
pub(crate) fn encode_private(
    cur: &[u8],
    reference: Option<&[u8]>,
    opts: &EncodeOptions,
    out: &mut dyn Write,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<EncodeStats> {
    debug_assert!(!mmap::is_mapped(cur), "a file map is not private memory");
    encode_as(cur, reference, opts, out, progress, Input::InPlace)
}

/// Hooks for the tests of inputs that change while they are read: not part
/// of the API.
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};

    /// Called with each batch window's number (from 0).
    pub type Hook = Arc<dyn Fn(usize) + Send + Sync>;

    static AFTER_WINDOW: RwLock<Option<Hook>> = RwLock::new(None);
    static BATCH_BYTES: AtomicUsize = AtomicUsize::new(0);

    /// Calls `hook` once each batch window of the input has been read and
    /// coded, before the next window is read.
    pub fn set_after_window(hook: Option<Hook>) {
        *AFTER_WINDOW.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Sets the bytes of input coded per batch window (0: the default).
    pub fn set_batch_bytes(n: usize) {
        BATCH_BYTES.store(n, Ordering::Relaxed);
    }

    pub(crate) fn after_window(window: usize) {
        let hook = AFTER_WINDOW
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(window);
        }
    }

    pub(crate) fn batch_bytes() -> Option<usize> {
        Some(BATCH_BYTES.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }
}

/// A file of `tests/data`, for the unit tests of encoding.
#[cfg(test)]
fn test_data(path: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A safetensors file of F32 tensors `(name, values)`, for the unit tests.
#[cfg(test)]
pub(crate) fn test_safetensors(tensors: &[(&str, Vec<f32>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, v)) in tensors.iter().enumerate() {
        let begin = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        let sep = if i == 0 { "" } else { "," };
        header += &format!(
            r#"{sep}"{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{begin},{}]}}"#,
            v.len(),
            data.len()
        );
    }
    header.push('}');
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(&data);
    f
}

/// The containers of the shipped test inputs, digested: the refactorings of
/// the encoder must keep them byte for byte.
#[cfg(test)]
mod identity_tests {
    use super::*;
    use crate::container::format;

    fn data(path: &str) -> Vec<u8> {
        test_data(path)
    }

    /// XXH3-128 over every container (and its stats, or the error) of `cur`
    /// against `reference` as `input`, at several chunk sizes, lossless and
    /// lossy.
    fn digest_of(cur: &str, reference: Option<&str>, input: InputKind) -> String {
        let c = data(cur);
        let r = reference.map(data);
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for chunk_size in [64, 1024, 4 << 20] {
            for lossy in [
                None,
                Some(Bound::MaxAbsError(1e-3)),
                Some(Bound::MaxRelError(0.01)),
            ] {
                let opts = EncodeOptions {
                    chunk_size,
                    level: if chunk_size == 1024 { 1 } else { 3 },
                    input,
                    lossy,
                };
                let mut out = Vec::new();
                match encode(&c, r.as_deref(), &opts, &mut out, None) {
                    Ok(stats) => {
                        h.update(&out);
                        h.update(format!("{stats:?}").as_bytes());
                    }
                    Err(e) => h.update(format!("error: {e}").as_bytes()),
                }
            }
        }
        format::digest_hex(h.digest128())
    }

    #[test]
    fn the_shipped_inputs_encode_as_they_always_did() {
        use InputKind::*;
        let cases: &[(&str, Option<&str>, InputKind, &str)] = &[
            (
                "v1/cur.safetensors",
                Some("v1/ref.safetensors"),
                Safetensors,
                "0cdd8b33c5fa2720c06f320e79abdcc7",
            ),
            (
                "v1/cur.safetensors",
                None,
                Safetensors,
                "21416b687d89fff9aab1b47ab9d859e8",
            ),
            (
                "v1/cur-b.safetensors",
                Some("v1/ref-b.safetensors"),
                Auto,
                "24e37725534f0767ce67f845a0fe2cc8",
            ),
            (
                "v1/cur.safetensors",
                Some("v1/ref.safetensors"),
                Opaque,
                "02bb46b5e2380e400838227cc1792736",
            ),
            (
                "v1/cur.safetensors",
                Some("v2/ref.pt"),
                Auto,
                "21416b687d89fff9aab1b47ab9d859e8",
            ),
            (
                "v1/cur.safetensors",
                Some("v2/ref.pt"),
                Safetensors,
                "273b2033cbe23b3a368662078e201cf6",
            ),
            (
                "v3/cur.safetensors",
                Some("v3/ref.safetensors"),
                Safetensors,
                "0cdd8b33c5fa2720c06f320e79abdcc7",
            ),
            (
                "v2/cur.pt",
                Some("v2/ref.pt"),
                Archive,
                "22202be38f183acf5261053c69bbbe1c",
            ),
            (
                "v2/cur.pt",
                None,
                Archive,
                "1deeacd08f1c4244aa0079e5242fe49c",
            ),
            (
                "v2/cur.pt",
                Some("v2/ref.pt"),
                Auto,
                "22202be38f183acf5261053c69bbbe1c",
            ),
            (
                "v2/cur.pt",
                Some("v1/ref.safetensors"),
                Auto,
                "1deeacd08f1c4244aa0079e5242fe49c",
            ),
            (
                "torch/mixed.pt",
                None,
                Auto,
                "f11bfc7d5894a45b7d85d399afd11f14",
            ),
            (
                "torch/deflated.zip",
                None,
                Auto,
                "2cb13161f83afe7b6f373008b1945697",
            ),
            (
                "torch/deflated.zip",
                None,
                Archive,
                "2cb13161f83afe7b6f373008b1945697",
            ),
            (
                "torch/step-2/model.safetensors",
                Some("torch/step-1/model.safetensors"),
                Safetensors,
                "cc11ed9a29311476aa039637ec3c560f",
            ),
            (
                "torch/step-2/optimizer.pt",
                Some("torch/step-1/optimizer.pt"),
                Auto,
                "2066fcae1f1ce351c5e2772b88d65dc3",
            ),
            (
                "torch/step-2/optimizer.pt",
                Some("torch/step-1/optimizer.pt"),
                Opaque,
                "f62f84fcc0cf5c9dc1b2b240a2e1e169",
            ),
            (
                "torch/step-2/scheduler.pt",
                Some("torch/step-1/scheduler.pt"),
                Auto,
                "d6707da95a43bff8db05c19b6c100b3c",
            ),
            (
                "torch/step-2/rng_state.pth",
                Some("torch/step-1/rng_state.pth"),
                Auto,
                "399a9c53b7ec42bcfcc224ec6224ee18",
            ),
            (
                "torch/step-2/trainer_state.json",
                Some("torch/step-1/trainer_state.json"),
                Auto,
                "d98e3d5a003ef0fc3c1feb552dbaf76d",
            ),
            (
                "torch/step-2/config.json",
                None,
                Opaque,
                "2ce8b58d08b091a5f3395d3db3385f22",
            ),
            (
                "dcp/step-2/__0_0.distcp",
                Some("dcp/step-1/__0_0.distcp"),
                Auto,
                "2dfff43d5352f64ed5f1933fda96d8e1",
            ),
            (
                "dcp/step-2/.metadata",
                Some("dcp/step-1/.metadata"),
                Auto,
                "f6e2f68ecaf51eaaf1f61b2d9046a214",
            ),
        ];
        let mut wrong = Vec::new();
        for &(cur, reference, input, want) in cases {
            let got = digest_of(cur, reference, input);
            if got != want {
                wrong.push(format!("{cur} against {reference:?} as {input:?}: {got}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "containers changed:\n{}",
            wrong.join("\n")
        );
    }
}
