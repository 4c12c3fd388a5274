//! Sizes computed from model data (element counts, byte lengths) with checked arithmetic.

use super::{SemError, SemResult};

/// The product of `dims`, an error when it overflows `usize`.
pub fn checked_numel(dims: &[usize]) -> SemResult<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| SemError::Overflow(format!("the element count of {dims:?}")))
}

/// The product of signed `dims` (as ONNX stores them); negative dims are an error.
pub fn checked_numel_i64(dims: &[i64]) -> SemResult<usize> {
    let mut acc = 1usize;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| SemError::NegativeDim {
            what: "shape",
            dim: d,
        })?;
        acc = acc
            .checked_mul(d)
            .ok_or_else(|| SemError::Overflow(format!("the element count of {dims:?}")))?;
    }
    Ok(acc)
}

/// The byte length of `n` elements of `elem_bytes` bytes each.
pub fn checked_bytes(n: usize, elem_bytes: usize) -> SemResult<usize> {
    n.checked_mul(elem_bytes)
        .ok_or_else(|| SemError::Overflow(format!("{n} elements of {elem_bytes} bytes")))
}

/// `a × b` for sizes from input data (windows × seqlen, samples × seqlen), naming `what` when
/// the product overflows.
pub fn checked_mul(a: usize, b: usize, what: &str) -> SemResult<usize> {
    a.checked_mul(b)
        .ok_or_else(|| SemError::Overflow(format!("{what}: {a} × {b}")))
}

/// The memory the system can still give this process, in bytes: Linux's `MemAvailable` plus
/// free swap. `None` where it is not known (no `/proc/meminfo`), and then no pre-check refuses.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    let avail = field("MemAvailable:")?;
    Some(avail.saturating_add(field("SwapFree:").unwrap_or(0)))
}

/// Allocations below this never consult `/proc/meminfo` (the check costs a file read).
const PRECHECK_MIN_BYTES: u64 = 1 << 30;

/// Refuses an allocation of `bytes` for `what` that exceeds the available memory. With Linux's
/// overcommit such an allocation often succeeds and the process is killed later while filling
/// it; this turns that into an error that names what was too large.
pub fn check_memory(bytes: u64, what: &str) -> SemResult<()> {
    if bytes < PRECHECK_MIN_BYTES {
        return Ok(());
    }
    match available_memory() {
        Some(available) if bytes > available => Err(SemError::OutOfMemory {
            what: what.to_string(),
            bytes,
            available,
        }),
        _ => Ok(()),
    }
}

/// A vector of `n` copies of `value`, allocated fallibly: the memory pre-check, then
/// `try_reserve_exact`, so a size from model data gives an error, never an abort.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> SemResult<Vec<T>> {
    let bytes = checked_bytes(n, std::mem::size_of::<T>())?;
    check_memory(bytes as u64, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| SemError::OutOfMemory {
        what: what.to_string(),
        bytes: bytes as u64,
        available: available_memory().unwrap_or(0),
    })?;
    v.resize(n, value);
    Ok(v)
}

/// Signed dims as `usize`, naming `what` when one is negative.
pub fn dims_to_usize(dims: &[i64], what: &'static str) -> SemResult<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| SemError::NegativeDim { what, dim: d }))
        .collect()
}

/// `usize` dims as the signed dims ONNX stores.
pub fn dims_to_i64(dims: &[usize]) -> SemResult<Vec<i64>> {
    dims.iter()
        .map(|&d| i64::try_from(d).map_err(|_| SemError::Overflow(format!("dimension {d} as i64"))))
        .collect()
}

/// Row-major element strides of `dims` (the last dim has stride 1). Callers hold a tensor of
/// these dims, so the element count (and every stride, which divides it) fits.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// `(outer, dim, inner)` around `axis`: the element counts before, at and after it.
pub fn split_at_axis(dims: &[usize], axis: usize) -> SemResult<(usize, usize, usize)> {
    Ok((
        checked_numel(&dims[..axis])?,
        dims[axis],
        checked_numel(&dims[axis + 1..])?,
    ))
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn checked_mul_names_what_overflowed() {
        assert_eq!(checked_mul(3, 4, "x").ok(), Some(12));
        let e = checked_mul(usize::MAX, 2, "--windows × --seqlen").expect_err("wraps");
        assert!(e.to_string().contains("--windows × --seqlen"), "{e}");
    }

    #[test]
    fn allocation_beyond_memory_is_an_error() {
        // 2^61 u64 elements = 16 EiB: more than any machine, refused before allocating.
        let e = try_filled(1usize << 61, 0u64, "a test buffer").expect_err("too large");
        assert!(
            matches!(e, SemError::OutOfMemory { .. } | SemError::Overflow(_)),
            "{e}"
        );
        assert_eq!(try_filled(3, 7u8, "small").ok(), Some(vec![7, 7, 7]));
    }
}
