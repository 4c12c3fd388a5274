//! Decoding and encoding of element bytes for the dtypes the IR computes with (constant folding,
//! shape inference of shape tensors). Sub-byte and fp8 types are not decoded here.

use crate::types::DType;

fn chunks<const N: usize>(b: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
    if !b.len().is_multiple_of(N) {
        return None;
    }
    Some(b.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }))
}

/// f16 bits → f32, exact.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // A subnormal f16 is a normal f32: scale it explicitly.
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// bf16 bits → f32, exact.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

pub fn decode_f64(dtype: DType, b: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        DType::F32 => chunks::<4>(b)?
            .map(|a| f32::from_le_bytes(a) as f64)
            .collect(),
        DType::F64 => chunks::<8>(b)?.map(f64::from_le_bytes).collect(),
        DType::F16 => chunks::<2>(b)?
            .map(|a| f16_to_f32(u16::from_le_bytes(a)) as f64)
            .collect(),
        DType::BF16 => chunks::<2>(b)?
            .map(|a| bf16_to_f32(u16::from_le_bytes(a)) as f64)
            .collect(),
        _ => decode_i64(dtype, b)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
    })
}

pub fn decode_i64(dtype: DType, b: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        DType::I64 => chunks::<8>(b)?.map(i64::from_le_bytes).collect(),
        DType::I32 => chunks::<4>(b)?
            .map(|a| i32::from_le_bytes(a) as i64)
            .collect(),
        DType::I16 => chunks::<2>(b)?
            .map(|a| i16::from_le_bytes(a) as i64)
            .collect(),
        DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
        DType::U16 => chunks::<2>(b)?
            .map(|a| u16::from_le_bytes(a) as i64)
            .collect(),
        DType::U32 => chunks::<4>(b)?
            .map(|a| u32::from_le_bytes(a) as i64)
            .collect(),
        DType::U64 => chunks::<8>(b)?
            .map(|a| u64::from_le_bytes(a) as i64)
            .collect(),
        _ => return None,
    })
}

/// Encodes f64 values into `dtype` (f32/f64 and integer types; integers truncate toward zero).
pub fn encode_f64(dtype: DType, v: &[f64]) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        DType::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => encode_i64(dtype, &v.iter().map(|x| *x as i64).collect::<Vec<_>>())?,
    })
}

pub fn encode_i64(dtype: DType, v: &[i64]) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::I64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
        DType::I16 => v.iter().flat_map(|x| (*x as i16).to_le_bytes()).collect(),
        DType::I8 => v.iter().map(|x| *x as i8 as u8).collect(),
        DType::U8 => v.iter().map(|x| *x as u8).collect(),
        DType::Bool => v.iter().map(|x| (*x != 0) as u8).collect(),
        DType::U16 => v.iter().flat_map(|x| (*x as u16).to_le_bytes()).collect(),
        DType::U32 => v.iter().flat_map(|x| (*x as u32).to_le_bytes()).collect(),
        DType::U64 => v.iter().flat_map(|x| (*x as u64).to_le_bytes()).collect(),
        _ => return None,
    })
}
