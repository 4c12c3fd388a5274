//! Cast's element rules, written once for the engine's kernel and the constant folder.
//!
//! - Integer and bool sources convert to integers and bools through i64, so large values stay
//!   exact (then truncate to the result width like a C cast).
//! - Integer → float converts straight from the integer, so the value is rounded once
//!   (i64 → f64 → f32 would round twice above 2^53). A u64 above `i64::MAX` reads negative as an
//!   i64; such an element goes through f64 instead ([`int_reads_negative`]).
//! - Float → integer truncates toward zero ([`float_to_int`]). NaN and values outside the
//!   result's range are undefined in ONNX: the folder leaves them to the engine, whose kernel
//!   saturates (Rust's `as`), so the folder never decides an undefined case.

use crate::DType;

/// Whether `d` converts like an integer (integers and bool).
pub fn int_like(d: DType) -> bool {
    d.is_int() || d == DType::Bool
}

/// Whether an element of integer dtype `from`, read as `i`, is a u64 above `i64::MAX` (it reads
/// negative as i64 and must be converted through its unsigned value).
pub fn int_reads_negative(from: DType, i: i64) -> bool {
    from == DType::U64 && i < 0
}

/// `[lo, hi)` of an integer dtype as f64. Both bounds are powers of two (or zero), so they are
/// exact in f64 even for 64-bit types.
pub fn int_range(d: DType) -> Option<(f64, f64)> {
    let bits = d.bits()? as i32;
    match d {
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => {
            Some((-(2f64.powi(bits - 1)), 2f64.powi(bits - 1)))
        }
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => Some((0.0, 2f64.powi(bits))),
        _ => None,
    }
}

/// A float element converted to integer dtype `to` as ONNX defines it (truncation toward zero),
/// as the i64 whose low bits are the result; `None` where ONNX leaves it undefined (NaN, out of
/// range) or `to` is not an integer type.
pub fn float_to_int(v: f64, to: DType) -> Option<i64> {
    let (lo, hi) = int_range(to)?;
    let q = v.trunc();
    if !(q >= lo && q < hi) {
        return None;
    }
    Some(if to == DType::U64 {
        q as u64 as i64
    } else {
        q as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_truncates_and_refuses_undefined_cases() {
        assert_eq!(float_to_int(-2.7, DType::I8), Some(-2));
        assert_eq!(float_to_int(127.9, DType::I8), Some(127));
        assert_eq!(float_to_int(128.0, DType::I8), None);
        assert_eq!(float_to_int(-1.0, DType::U8), None);
        assert_eq!(float_to_int(f64::NAN, DType::I32), None);
        assert_eq!(float_to_int(1.5, DType::F32), None);
        // 2^63 fits u64 but not i64: it comes back as the i64 with the same low bits.
        assert_eq!(
            float_to_int(9_223_372_036_854_775_808.0, DType::U64),
            Some(i64::MIN)
        );
        assert_eq!(float_to_int(9_223_372_036_854_775_808.0, DType::I64), None);
    }

    #[test]
    fn only_u64_elements_above_i64_max_read_negative() {
        assert!(int_reads_negative(DType::U64, -1));
        assert!(!int_reads_negative(DType::I64, -1));
        assert!(!int_reads_negative(DType::U64, 5));
        assert!(int_like(DType::Bool) && int_like(DType::U16) && !int_like(DType::F16));
    }
}
