//! `.npy` files (NumPy format 1.0 written; 1.0–3.0 read): little-endian, C order.

use crate::cpu::tensor::{HostTensor, TensorBuf};
use ortho_ir::DType;
use std::path::Path;

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

fn dtype_of(descr: &str) -> Result<DType, String> {
    let (order, code) = descr.split_at(1.min(descr.len()));
    if order == ">" && !matches!(code, "i1" | "u1" | "b1") {
        return Err(format!("big-endian arrays ('{descr}') are not supported"));
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
        _ => return Err(format!("unsupported .npy dtype '{descr}'")),
    })
}

/// Encodes a tensor as `.npy` bytes.
pub fn to_bytes(t: &HostTensor) -> Result<Vec<u8>, String> {
    let d =
        descr(t.dtype()).ok_or_else(|| format!("{} has no .npy type; cast it first", t.dtype()))?;
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
    let len = u16::try_from(header.len()).map_err(|_| "the .npy header is too long".to_string())?;
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.buf().to_le_bytes());
    Ok(out)
}

fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let pat = format!("'{key}'");
    let at = header
        .find(&pat)
        .ok_or_else(|| format!("the header has no '{key}'"))?;
    let rest = header[at + pat.len()..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or("malformed header")?
        .trim_start();
    Ok(rest)
}

/// Decodes `.npy` bytes.
pub fn from_bytes(b: &[u8]) -> Result<HostTensor, String> {
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b.get(start..start + hlen).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let d = field(header, "descr")?;
    let d = d
        .strip_prefix('\'')
        .and_then(|s| s.split('\'').next())
        .ok_or("malformed descr")?;
    let dtype = dtype_of(d)?;
    if field(header, "fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let s = field(header, "shape")?;
    let s = s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .map_err(|_| format!("bad dimension '{x}'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = &b[start + hlen..];
    let n: usize = shape.iter().product();
    let need = dtype.bytes_for(n as u64).ok_or("size")? as usize;
    if data.len() != need {
        return Err(format!(
            "shape {shape:?} of {dtype} needs {need} data bytes, the file has {}",
            data.len()
        ));
    }
    // Big-endian descriptors were refused above except for one-byte types, where order is moot.
    let buf = TensorBuf::from_le_bytes(dtype, data)?;
    HostTensor::make(shape, buf)
}

pub fn read(path: &Path) -> Result<HostTensor, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    from_bytes(&b).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn write(path: &Path, t: &HostTensor) -> Result<(), String> {
    let b = to_bytes(t)?;
    std::fs::write(path, b).map_err(|e| format!("{}: {e}", path.display()))
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
        assert!(from_bytes(b"hello world").is_err());
    }
}
