//! `tpde._tpde`: the Rust core of the Python package. Every call that does
//! real work releases the GIL; every error becomes `tpde.TpdeError` with the
//! library's message. The torch-specific code is Python (`tpde/_state.py`).

use std::path::PathBuf;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

// Module `tpde`: the class is `tpde.TpdeError` in tracebacks and pickles
// (the package re-exports it), not `_tpde.TpdeError`.
create_exception!(
    tpde,
    TpdeError,
    PyException,
    "Raised for every tpde failure, with a message naming the problem."
);

fn err(e: tpde::Error) -> PyErr {
    TpdeError::new_err(e.to_string())
}

/// The lossy bound from the keyword arguments (at most one of them).
fn bound(
    max_abs_error: Option<f64>,
    max_rel_error: Option<f64>,
) -> PyResult<Option<tpde::codec::lossy::Bound>> {
    use tpde::codec::lossy::Bound;
    let b = match (max_abs_error, max_rel_error) {
        (Some(_), Some(_)) => {
            return Err(TpdeError::new_err(
                "give max_abs_error or max_rel_error, not both",
            ))
        }
        (Some(e), None) => Some(Bound::MaxAbsError(e)),
        (None, Some(r)) => Some(Bound::MaxRelError(r)),
        (None, None) => None,
    };
    b.map(|b| b.check().map_err(TpdeError::new_err)).transpose()
}

fn input_kind(kind: &str) -> PyResult<tpde::InputKind> {
    Ok(match kind {
        "auto" => tpde::InputKind::Auto,
        "safetensors" => tpde::InputKind::Safetensors,
        "torch" => tpde::InputKind::Archive,
        "bytes" => tpde::InputKind::Opaque,
        other => {
            return Err(TpdeError::new_err(format!(
                "unknown kind {other:?}: use \"auto\", \"safetensors\", \"torch\" or \"bytes\""
            )))
        }
    })
}

/// Encodes the bytes of a checkpoint file against `reference` (a keyframe
/// without) and returns the `.tpde` container.
#[pyfunction]
#[pyo3(signature = (data, reference=None, *, kind="auto", level=3, chunk_kib=4096, max_abs_error=None, max_rel_error=None))]
#[allow(clippy::too_many_arguments)]
fn encode<'py>(
    py: Python<'py>,
    data: PyBackedBytes,
    reference: Option<PyBackedBytes>,
    kind: &str,
    level: i32,
    chunk_kib: usize,
    max_abs_error: Option<f64>,
    max_rel_error: Option<f64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let opts = tpde::EncodeOptions {
        chunk_size: chunk_kib.saturating_mul(1024),
        level,
        input: input_kind(kind)?,
        lossy: bound(max_abs_error, max_rel_error)?,
    };
    let out = py
        .detach(|| {
            let mut out = Vec::new();
            tpde::encode(&data, reference.as_deref(), &opts, &mut out, None).map(|_| out)
        })
        .map_err(err)?;
    Ok(PyBytes::new(py, &out))
}

/// Decodes a `.tpde` container (with the reference it was encoded against,
/// for a delta) and returns the original bytes, every checksum verified. A
/// container that claims more than `max_output` bytes is refused before
/// anything is allocated.
#[pyfunction]
#[pyo3(signature = (data, reference=None, *, max_output=None))]
fn decode<'py>(
    py: Python<'py>,
    data: PyBackedBytes,
    reference: Option<PyBackedBytes>,
    max_output: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let opts = tpde::DecodeOptions { max_output };
    let out = py
        .detach(|| {
            let mut out = Vec::new();
            tpde::decode_with(&data, reference.as_deref(), &mut out, None, &opts).map(|_| out)
        })
        .map_err(err)?;
    Ok(PyBytes::new(py, &out))
}

/// Encodes the file `path` into `out` (atomically); returns (original bytes,
/// stored bytes).
#[pyfunction]
#[pyo3(signature = (path, out, reference=None, *, kind="auto"))]
fn encode_file(
    py: Python<'_>,
    path: PathBuf,
    out: PathBuf,
    reference: Option<PathBuf>,
    kind: &str,
) -> PyResult<(u64, u64)> {
    let opts = tpde::EncodeOptions {
        input: input_kind(kind)?,
        ..Default::default()
    };
    let s = py
        .detach(|| {
            tpde::container::files::encode_file(&path, reference.as_deref(), &out, &opts, None)
        })
        .map_err(err)?;
    Ok((s.original_len, s.encoded_len))
}

/// Decodes the `.tpde` file `path` into `out` (atomically, verified),
/// refusing a file that claims more than `max_output` bytes or than the
/// free space of `out`'s filesystem before anything is written.
#[pyfunction]
#[pyo3(signature = (path, out, reference=None, *, max_output=None))]
fn decode_file(
    py: Python<'_>,
    path: PathBuf,
    out: PathBuf,
    reference: Option<PathBuf>,
    max_output: Option<u64>,
) -> PyResult<u64> {
    let opts = tpde::DecodeOptions { max_output };
    let s = py
        .detach(|| {
            tpde::container::files::decode_file_with(
                &path,
                reference.as_deref(),
                &out,
                None,
                &opts,
                tpde::common::atomic::Replace::Yes,
            )
        })
        .map_err(err)?;
    Ok(s.original_len)
}

/// One tensor of a safetensors buffer: (name, dtype, shape, begin, end),
/// begin and end absolute in the buffer.
type TensorSpan = (String, String, Vec<u64>, u64, u64);

/// Parses the safetensors file in `buf` (strictly) and returns its tensors
/// and its `__metadata__` as JSON (or None).
#[pyfunction]
fn safetensors_index(buf: PyReadonlyArray1<'_, u8>) -> PyResult<(Vec<TensorSpan>, Option<String>)> {
    let bytes = buf
        .as_slice()
        .map_err(|e| TpdeError::new_err(e.to_string()))?;
    let h = tpde::source::safetensors::parse(bytes).map_err(err)?;
    let spans = h
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.name().to_string(),
                t.shape.clone(),
                h.header_len + t.begin,
                h.header_len + t.end,
            )
        })
        .collect();
    Ok((spans, h.metadata.as_ref().map(|m| m.to_string())))
}

/// The step number in a checkpoint's name (`checkpoint-500` is 500), as
/// `tpde store add` reads it; None when the name has none.
#[pyfunction]
fn step_from_name(name: &str) -> Option<u64> {
    tpde::store::watch::step_from_name(name)
}

/// A checkpoint store (see docs/STORE.md); `tpde.Store` wraps it.
#[pyclass(frozen, module = "tpde._tpde")]
struct Store {
    inner: tpde::store::Store,
}

/// A restored checkpoint: (name, "file" or "dir", [(path, uint8 array)], dirs).
type RestoredPy<'py> = (
    String,
    String,
    Vec<(String, Bound<'py, PyArray1<u8>>)>,
    Vec<String>,
);

#[pymethods]
impl Store {
    /// Opens the store at `location` (a folder, or `s3://bucket/prefix` on
    /// S3-compatible object storage), creating it (with a keyframe every
    /// `keyframe_every` steps) when `create` is set and there is none: in a
    /// new or empty folder, whose parent must exist unless `create_parents`.
    /// Many processes may do this at once; they all get the same store.
    #[new]
    #[pyo3(signature = (location, *, keyframe_every=None, create=true, create_parents=false))]
    fn new(
        py: Python<'_>,
        location: String,
        keyframe_every: Option<u32>,
        create: bool,
        create_parents: bool,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| {
                use tpde::store::Store;
                if create {
                    Store::open_or_create_location(
                        &location,
                        keyframe_every.unwrap_or(tpde::store::DEFAULT_KEYFRAME_EVERY),
                        create_parents,
                    )
                } else {
                    Store::open_location(&location)
                }
            })
            .map_err(err)?;
        Ok(Store {
            inner: inner.keep_latest(),
        })
    }

    /// The store's folder, or its `s3://` URL.
    #[getter]
    fn path(&self) -> String {
        self.inner.location()
    }

    /// The stored steps, in increasing order.
    fn steps(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        py.detach(|| self.inner.steps()).map_err(err)
    }

    /// The manifest as JSON text.
    fn manifest_json(&self, py: Python<'_>) -> PyResult<String> {
        let m = py.detach(|| self.inner.manifest()).map_err(err)?;
        serde_json::to_string(&m).map_err(|e| TpdeError::new_err(e.to_string()))
    }

    /// Adds a checkpoint file or folder as step `step`.
    #[pyo3(signature = (path, step, *, max_abs_error=None, max_rel_error=None))]
    fn add_path(
        &self,
        py: Python<'_>,
        path: PathBuf,
        step: u64,
        max_abs_error: Option<f64>,
        max_rel_error: Option<f64>,
    ) -> PyResult<()> {
        let lossy = bound(max_abs_error, max_rel_error)?;
        py.detach(|| {
            let ck = tpde::store::Checkpoint::from_path(&path)?;
            self.inner.add_checkpoint(&ck, step, lossy, &mut |_| {})
        })
        .map(|_| ())
        .map_err(err)
    }

    /// Adds step `step` as a folder `name` holding `tensors.safetensors`
    /// (built from `tensors`: (name, dtype, shape, little-endian bytes as a
    /// uint8 array)) and the files `extra` ((path, bytes)).
    #[pyo3(signature = (step, name, tensors, extra, *, max_abs_error=None, max_rel_error=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_tensors(
        &self,
        py: Python<'_>,
        step: u64,
        name: String,
        tensors: Vec<(String, String, Vec<u64>, PyReadonlyArray1<'_, u8>)>,
        extra: Vec<(String, PyBackedBytes)>,
        max_abs_error: Option<f64>,
        max_rel_error: Option<f64>,
    ) -> PyResult<()> {
        let lossy = bound(max_abs_error, max_rel_error)?;
        let mut data = Vec::with_capacity(tensors.len());
        for (n, _, _, a) in &tensors {
            data.push(a.as_slice().map_err(|e| {
                TpdeError::new_err(format!("tensor {n:?}: {e} (pass a contiguous array)"))
            })?);
        }
        let specs: Vec<(&str, &str, &[u64])> = tensors
            .iter()
            .map(|(n, d, s, _)| (n.as_str(), d.as_str(), s.as_slice()))
            .collect();
        py.detach(|| {
            let list: Vec<tpde::source::safetensors::TensorData> = specs
                .iter()
                .zip(&data)
                .map(
                    |(&(name, dtype, shape), data)| tpde::source::safetensors::TensorData {
                        name,
                        dtype,
                        shape,
                        data,
                    },
                )
                .collect();
            let file = tpde::source::safetensors::write(&list, None)?;
            let mut files = vec![("tensors.safetensors".to_string(), file)];
            files.extend(extra.iter().map(|(p, b)| (p.clone(), b.to_vec())));
            let ck = tpde::store::Checkpoint::from_files(&name, files)?;
            // Handed over: kept as the next step's reference without a copy.
            self.inner
                .add_checkpoint_owned(ck, step, lossy, &mut |_| {})
        })
        .map(|_| ())
        .map_err(err)
    }

    /// Restores step `step` in memory.
    fn restore<'py>(&self, py: Python<'py>, step: u64) -> PyResult<RestoredPy<'py>> {
        let r = py.detach(|| self.inner.restore(step)).map_err(err)?;
        let kind = match r.kind {
            tpde::store::EntryKind::File => "file",
            tpde::store::EntryKind::Dir => "dir",
        };
        let files = r
            .files
            .into_iter()
            .map(|(p, b)| (p, PyArray1::from_vec(py, b)))
            .collect();
        Ok((r.name, kind.to_string(), files, r.dirs))
    }

    /// Restores step `step` to `out` (a file or folder that must not exist).
    fn get(&self, py: Python<'_>, step: u64, out: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.get(step, &out))
            .map(|_| ())
            .map_err(err)
    }

    /// Checks every content file and restores every step: (steps, files,
    /// bytes, problems, leftovers).
    fn verify(&self, py: Python<'_>) -> PyResult<(usize, usize, u64, Vec<String>, usize)> {
        let r = py.detach(|| self.inner.verify()).map_err(err)?;
        Ok((r.steps, r.files, r.bytes, r.problems, r.leftovers.len()))
    }

    /// Removes step `step`; returns the steps re-coded because of it.
    fn remove(&self, py: Python<'_>, step: u64) -> PyResult<Vec<u64>> {
        py.detach(|| self.inner.remove(step)).map_err(err)
    }

    /// Keeps the last `keep_last` steps and the multiples of `keep_every`;
    /// returns the removed steps.
    #[pyo3(signature = (keep_last=0, keep_every=None))]
    fn prune(
        &self,
        py: Python<'_>,
        keep_last: usize,
        keep_every: Option<u64>,
    ) -> PyResult<Vec<u64>> {
        py.detach(|| self.inner.prune(keep_last, keep_every))
            .map_err(err)
    }

    fn __repr__(&self) -> String {
        format!("tpde.Store({:?})", self.inner.location())
    }
}

/// Compares steps `a` and `b` of the store at `location` tensor by tensor
/// (sorted by `sort`: "rel", "changed" or "name"): the diff as JSON.
#[pyfunction]
#[pyo3(signature = (location, a, b, sort="rel"))]
fn store_diff(py: Python<'_>, location: String, a: u64, b: u64, sort: &str) -> PyResult<String> {
    let by: tpde::store::DiffSort = sort.parse().map_err(TpdeError::new_err)?;
    let d = py
        .detach(|| {
            let mut d = tpde::store::Store::open_location(&location)?.diff(a, b)?;
            d.sort(by);
            Ok::<_, tpde::Error>(d)
        })
        .map_err(err)?;
    serde_json::to_string(&d).map_err(|e| TpdeError::new_err(e.to_string()))
}

/// Writes the report of the store at `location` as HTML, CSV and JSON (to
/// those paths that are given; an existing file only with `overwrite`);
/// returns it as JSON.
#[pyfunction]
#[pyo3(signature = (location, html=None, csv=None, json=None, overwrite=false))]
fn store_report(
    py: Python<'_>,
    location: String,
    html: Option<PathBuf>,
    csv: Option<PathBuf>,
    json: Option<PathBuf>,
    overwrite: bool,
) -> PyResult<String> {
    py.detach(|| {
        let r = tpde::store::Store::open_location(&location)?.report()?;
        let replace = if overwrite {
            tpde::common::atomic::Replace::Yes
        } else {
            tpde::common::atomic::Replace::No
        };
        r.write(html.as_deref(), csv.as_deref(), json.as_deref(), replace)?;
        r.json()
    })
    .map_err(err)
}

/// What reading tensors cost: (content files opened, index bytes, payload
/// bytes, chunks, tensors decoded).
type ReadStatsPy = (u64, u64, u64, u64, u64);

fn read_stats(s: tpde::store::ReadStats) -> ReadStatsPy {
    (
        s.objects,
        s.index_bytes,
        s.payload_bytes,
        s.chunks,
        s.tensors,
    )
}

/// A tensor as (name, safetensors dtype, shape).
type TensorSpecPy = (String, String, Vec<u64>);

/// An opened step: (file, content file id, tensors, metadata JSON, stats).
type OpenedStepPy = (
    String,
    String,
    Vec<TensorSpecPy>,
    Option<String>,
    ReadStatsPy,
);

/// Opens a safetensors file of step `step` for reading tensor by tensor
/// (`file`: its path; by default `Store.save`'s, or the step's only one):
/// (file, content file id, [(name, dtype, shape)], metadata JSON, stats).
#[pyfunction]
#[pyo3(signature = (store, step, file=None))]
fn store_open_step(
    py: Python<'_>,
    store: &Store,
    step: u64,
    file: Option<String>,
) -> PyResult<OpenedStepPy> {
    py.detach(|| {
        let v = store.inner.open_step(step, file.as_deref())?;
        let tensors = v
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype.name().to_string(), t.shape.clone()))
            .collect();
        Ok((
            v.file().to_string(),
            v.object().to_string(),
            tensors,
            v.metadata().map(str::to_string),
            read_stats(v.stats()),
        ))
    })
    .map_err(err)
}

/// Tensor `name` of file `file` of step `step`, decoded along its chain:
/// (its bytes as a uint8 array, the stats of this read). `object`: the
/// content file the caller opened; another one is an error.
#[pyfunction]
fn store_tensor<'py>(
    py: Python<'py>,
    store: &Store,
    step: u64,
    file: String,
    object: String,
    name: String,
) -> PyResult<(Bound<'py, PyArray1<u8>>, ReadStatsPy)> {
    let (bytes, stats) = py
        .detach(|| {
            let v = store.inner.open_step(step, Some(&file))?;
            if v.object() != object {
                return Err(tpde::Error::InvalidArgument(format!(
                    "step {step}, file {file} has changed since it was opened: open it again"
                )));
            }
            let before = v.stats();
            let bytes = v.tensor(&name)?;
            let after = v.stats();
            let mut s = after;
            s.objects -= before.objects;
            s.index_bytes -= before.index_bytes;
            Ok((bytes, s))
        })
        .map_err(err)?;
    Ok((PyArray1::from_vec(py, bytes), read_stats(stats)))
}

/// File `path` of step `step` alone, decoded along its chain: (its bytes,
/// stats).
#[pyfunction]
fn store_read_file<'py>(
    py: Python<'py>,
    store: &Store,
    step: u64,
    path: String,
) -> PyResult<(Bound<'py, PyBytes>, ReadStatsPy)> {
    let (bytes, stats) = py
        .detach(|| store.inner.read_file(step, &path))
        .map_err(err)?;
    Ok((PyBytes::new(py, &bytes), read_stats(stats)))
}

/// The plan of shared step `step` (the coordinator of a distributed save,
/// before the ranks code), as JSON.
#[pyfunction]
fn store_plan_shared(py: Python<'_>, store: &Store, step: u64) -> PyResult<String> {
    py.detach(|| store.inner.plan_shared(step))
        .map(|p| p.to_json())
        .map_err(err)
}

/// Codes `data` as file `path` of the shared step `plan` (JSON) on this
/// rank, against `kept` (the bytes this rank saved last, when they are the
/// reference's) or the reference decoded from the store; returns the file's
/// record (JSON) for the coordinator.
#[pyfunction]
#[pyo3(signature = (store, plan, path, data, kept=None, *, max_abs_error=None, max_rel_error=None))]
#[allow(clippy::too_many_arguments)]
fn store_code_shared(
    py: Python<'_>,
    store: &Store,
    plan: &str,
    path: String,
    data: PyBackedBytes,
    kept: Option<PyBackedBytes>,
    max_abs_error: Option<f64>,
    max_rel_error: Option<f64>,
) -> PyResult<String> {
    let plan = tpde::store::SharedPlan::from_json(plan).map_err(err)?;
    let lossy = bound(max_abs_error, max_rel_error)?;
    let rec = py
        .detach(|| {
            store
                .inner
                .code_shared(&plan, &path, &data, kept.as_deref(), lossy)
        })
        .map_err(err)?;
    serde_json::to_string(&rec).map_err(|e| TpdeError::new_err(e.to_string()))
}

/// Commits the shared step `plan` (JSON) as folder step `name` from every
/// rank's file records (JSON), waiting up to `wait_s` seconds for another
/// writer's lock; returns the step's record (JSON).
#[pyfunction]
fn store_commit_shared(
    py: Python<'_>,
    store: &Store,
    plan: &str,
    name: String,
    records: Vec<String>,
    wait_s: f64,
) -> PyResult<String> {
    let plan = tpde::store::SharedPlan::from_json(plan).map_err(err)?;
    let files = records
        .iter()
        .map(|r| serde_json::from_str::<tpde::store::FileRecord>(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TpdeError::new_err(format!("not a file record of a shared step: {e}")))?;
    if !(0.0..=1e9).contains(&wait_s) {
        return Err(TpdeError::new_err(format!(
            "wait_s must be between 0 and 1e9 seconds, not {wait_s}"
        )));
    }
    let wait = std::time::Duration::from_secs_f64(wait_s);
    let rec = py
        .detach(|| store.inner.commit_shared(&plan, &name, files, wait))
        .map_err(err)?;
    serde_json::to_string(&rec).map_err(|e| TpdeError::new_err(e.to_string()))
}

/// The bytes of file `path` of step `step` in each of `ranges` (offset,
/// length), decoding only what they need along the chain: ([bytes], stats).
#[pyfunction]
fn store_read_ranges<'py>(
    py: Python<'py>,
    store: &Store,
    step: u64,
    path: String,
    ranges: Vec<(u64, u64)>,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, ReadStatsPy)> {
    let (parts, stats) = py
        .detach(|| store.inner.read_ranges(step, &path, &ranges))
        .map_err(err)?;
    let parts = parts.iter().map(|b| PyBytes::new(py, b)).collect();
    Ok((parts, read_stats(stats)))
}

#[pymodule]
fn _tpde(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TpdeError", m.py().get_type::<TpdeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Store>()?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(encode_file, m)?)?;
    m.add_function(wrap_pyfunction!(decode_file, m)?)?;
    m.add_function(wrap_pyfunction!(safetensors_index, m)?)?;
    m.add_function(wrap_pyfunction!(step_from_name, m)?)?;
    m.add_function(wrap_pyfunction!(store_diff, m)?)?;
    m.add_function(wrap_pyfunction!(store_report, m)?)?;
    m.add_function(wrap_pyfunction!(store_open_step, m)?)?;
    m.add_function(wrap_pyfunction!(store_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(store_read_file, m)?)?;
    m.add_function(wrap_pyfunction!(store_plan_shared, m)?)?;
    m.add_function(wrap_pyfunction!(store_code_shared, m)?)?;
    m.add_function(wrap_pyfunction!(store_commit_shared, m)?)?;
    m.add_function(wrap_pyfunction!(store_read_ranges, m)?)?;
    Ok(())
}
