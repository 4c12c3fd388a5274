//! `.npy` files (NumPy format 1.0 written; 1.0–3.0 read): little-endian, C order.

use crate::cpu::error::KernelError;
use crate::cpu::tensor::{HostTensor, TensorBuf};
use ortho_ir::semantics::size::checked_numel;
use ortho_ir::DType;
use std::borrow::Cow;
use std::path::Path;
use thiserror::Error;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NpyError {
    /// The bytes are not a well-formed `.npy` file.
    #[error("{0}")]
    Format(Cow<'static, str>),
    /// A valid file this reader does not handle (big-endian, Fortran order, a dtype).
    #[error("{0}")]
    Unsupported(Cow<'static, str>),
    /// The shape's size overflows or does not match the data.
    #[error("{0}")]
    Size(Cow<'static, str>),
    /// The data does not make a tensor.
    #[error(transparent)]
    Tensor(#[from] KernelError),
    /// A file that could not be decoded; `error` says why.
    #[error("{path}: {error}")]
    File { path: String, error: Box<NpyError> },
    /// A file that could not be read or written.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// For callers that report text.
impl From<NpyError> for String {
    fn from(e: NpyError) -> String {
        e.to_string()
    }
}

fn format_err(msg: impl Into<Cow<'static, str>>) -> NpyError {
    NpyError::Format(msg.into())
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

fn dtype_of(descr: &str) -> Result<DType, NpyError> {
    // Split after the first character, not byte: a non-ASCII descr must be an error, not a
    // panic on a char boundary (found by tests/fuzz_replay.rs).
    let (order, code) = descr.split_at(descr.chars().next().map_or(0, char::len_utf8));
    if order == ">" && !matches!(code, "i1" | "u1" | "b1") {
        return Err(NpyError::Unsupported(
            format!("big-endian arrays ('{descr}') are not supported").into(),
        ));
    }
    let code = if matches!(order, "<" | "|" | "=" | ">") {
        code
    } else {
        descr
    };
    Ok(match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => {
            return Err(NpyError::Unsupported(
                format!("unsupported .npy dtype '{descr}'").into(),
            ))
        }
    })
}

/// Encodes a tensor as `.npy` bytes.
pub fn to_bytes(t: &HostTensor) -> Result<Vec<u8>, NpyError> {
    let d = descr(t.dtype()).ok_or_else(|| {
        NpyError::Unsupported(format!("{} has no .npy type; cast it first", t.dtype()).into())
    })?;
    let shape = match t.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| NpyError::Size("the .npy header is too long".into()))?;
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.buf().to_le_bytes());
    Ok(out)
}

fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pat = format!("'{key}'");
    let at = header
        .find(&pat)
        .ok_or_else(|| format_err(format!("the header has no '{key}'")))?;
    let rest = header[at + pat.len()..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| format_err("malformed header"))?
        .trim_start();
    Ok(rest)
}

/// Decodes `.npy` bytes.
pub fn from_bytes(b: &[u8]) -> Result<HostTensor, NpyError> {
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err(format_err("not a .npy file (bad magic)"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => {
            return Err(NpyError::Unsupported(
                format!("unsupported .npy version {v}").into(),
            ))
        }
    };
    let header = b
        .get(start..start + hlen)
        .ok_or_else(|| format_err("truncated .npy header"))?;
    let header =
        std::str::from_utf8(header).map_err(|_| format_err("the .npy header is not text"))?;
    let d = field(header, "descr")?;
    let d = d
        .strip_prefix('\'')
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| format_err("malformed descr"))?;
    let dtype = dtype_of(d)?;
    if field(header, "fortran_order")?.starts_with("True") {
        return Err(NpyError::Unsupported(
            "Fortran-ordered arrays are not supported".into(),
        ));
    }
    let s = field(header, "shape")?;
    let s = s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format_err("malformed shape"))?;
    let shape = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .map_err(|_| format_err(format!("bad dimension '{x}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = &b[start + hlen..];
    let n = checked_numel(&shape).map_err(|e| NpyError::Size(e.to_string().into()))?;
    let need = dtype
        .bytes_for(n as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or(NpyError::Size("size".into()))?;
    if data.len() != need {
        return Err(NpyError::Size(
            format!(
                "shape {shape:?} of {dtype} needs {need} data bytes, the file has {}",
                data.len()
            )
            .into(),
        ));
    }
    // Big-endian descriptors were refused above except for one-byte types, where order is moot.
    let buf = TensorBuf::from_le_bytes(dtype, data)?;
    Ok(HostTensor::make(shape, buf)?)
}

fn io_err(path: &Path, e: std::io::Error) -> NpyError {
    NpyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub fn read(path: &Path) -> Result<HostTensor, NpyError> {
    let b = std::fs::read(path).map_err(|e| io_err(path, e))?;
    from_bytes(&b).map_err(|e| NpyError::File {
        path: path.display().to_string(),
        error: Box::new(e),
    })
}

/// Writes `t` to `path` through `ortho_ir::output` (an exclusive temporary renamed into place),
/// so an existing symlink at `path` is replaced, never written through.
pub fn write(path: &Path, t: &HostTensor) -> Result<(), NpyError> {
    let b = to_bytes(t)?;
    ortho_ir::output::write_file(path, &b).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_the_header() {
        for t in [
            HostTensor::from_vec(vec![2, 3], vec![1.5f32, -2.0, 3.0, 4.0, 5.0, 6.0]).expect("t"),
            HostTensor::from_vec(vec![4], vec![1i64, -2, 3, 4]).expect("t"),
            HostTensor::scalar(true),
        ] {
            let b = to_bytes(&t).expect("encode");
            let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
            assert_eq!((10 + hl) % 64, 0);
            assert_eq!(from_bytes(&b).expect("decode"), t);
        }
        assert!(matches!(
            from_bytes(b"hello world"),
            Err(NpyError::Format(_))
        ));
    }
}
