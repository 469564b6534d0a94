//! `tpde store get STORE STEP --tensor NAME -o OUT`: one tensor of a stored
//! step, decoded along its chain without restoring the step, written as a
//! `.npy` array or a one-tensor `.safetensors` file.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tpde::source::safetensors::{self, TensorData};
use tpde::store::Store;
use tpde::Dtype;

use crate::human;

/// What `-o` asks for, by its extension.
enum Out {
    Npy,
    Safetensors,
}

/// Writes tensor `name` of step `step` (from `file`, or the step's only
/// safetensors file) to `out`, atomically, replacing a file only with
/// `force`.
pub fn get_tensor(
    store: &Store,
    step: u64,
    file: Option<&str>,
    name: &str,
    out: Option<&Path>,
    force: bool,
) -> Result<()> {
    let Some(out) = out else {
        bail!(
            "--tensor needs -o NAME.npy or -o NAME.safetensors (the file to write the tensor to)"
        );
    };
    let kind = match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("npy") => Out::Npy,
        Some(e) if e.eq_ignore_ascii_case("safetensors") => Out::Safetensors,
        _ => bail!(
            "{}: --tensor writes a .npy or a .safetensors file; name the output so",
            out.display()
        ),
    };
    crate::check_output(out, &[], force)?;
    let t = Instant::now();
    let view = store.open_step(step, file)?;
    let info = view.tensor_info(name)?.clone();
    let descr = match kind {
        Out::Npy => Some(npy_descr(&info.dtype).with_context(|| {
            format!(
                "tensor {name:?} is {}, which numpy has no dtype for; write it with \
                 -o {}.safetensors instead (or read it in Python: \
                 tpde.Store(path).open(step).get_tensor(name), a torch tensor)",
                info.dtype,
                out.with_extension("").display()
            )
        })?),
        Out::Safetensors => None,
    };
    let data = view
        .tensor(name)
        .with_context(|| format!("reading tensor {name:?} of step {step}"))?;
    let bytes = match descr {
        Some(d) => npy(d, &info.shape, &data),
        None => safetensors::write(
            &[TensorData {
                name,
                dtype: info.dtype.name(),
                shape: &info.shape,
                data: &data,
            }],
            None,
        )?,
    };
    tpde::common::atomic::write_atomic(out, crate::replace(force), |w| {
        w.write_all(&bytes).map_err(|e| tpde::Error::Io {
            path: Some(out.to_path_buf()),
            err: e,
        })
    })
    .with_context(|| format!("writing {}", out.display()))?;
    let s = view.stats();
    println!(
        "step {step}, {}: {name} {} {:?} -> {} ({}); read {} of the store ({} content files), \
         {:.2} s",
        view.file(),
        info.dtype,
        info.shape,
        out.display(),
        human(bytes.len() as u64),
        human(s.bytes()),
        s.objects,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The numpy dtype (`descr`) of a safetensors dtype; `None` for those numpy
/// lacks (bfloat16, the float8, float6 and float4 kinds).
fn npy_descr(d: &Dtype) -> Option<&'static str> {
    Some(match d {
        Dtype::Bool => "|b1",
        Dtype::U8 => "|u1",
        Dtype::I8 => "|i1",
        Dtype::U16 => "<u2",
        Dtype::I16 => "<i2",
        Dtype::U32 => "<u4",
        Dtype::I32 => "<i4",
        Dtype::U64 => "<u8",
        Dtype::I64 => "<i8",
        Dtype::F16 => "<f2",
        Dtype::F32 => "<f4",
        Dtype::F64 => "<f8",
        Dtype::C64 => "<c8",
        _ => return None,
    })
}

/// A `.npy` file (format version 1.0) of C-order data.
fn npy(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6), version (2), length (2), then the header padded with
    // spaces and ended by a newline to a multiple of 64 bytes.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The header fields tests read back.
#[cfg(test)]
fn npy_header(file: &[u8]) -> &str {
    let n = u16::from_le_bytes([file[8], file[9]]) as usize;
    std::str::from_utf8(&file[10..10 + n]).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers() {
        let f = npy("<f4", &[2, 3], &[0; 24]);
        assert_eq!((10 + npy_header(&f).len()) % 64, 0);
        assert!(npy_header(&f)
            .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(npy_header(&f).ends_with('\n'));
        assert_eq!(f.len(), 128 + 24);
        assert!(npy_header(&npy("|b1", &[5], &[0; 5])).contains("'shape': (5,)"));
        assert!(npy_header(&npy("<f8", &[], &[0; 8])).contains("'shape': ()"));
        assert_eq!(npy_descr(&Dtype::BF16), None);
    }
}
