//! Tensor literals: `tensor<2x3xf32> dense<[…]>` or `elided<"hash", len>`, with optional
//! `name(..)` and `doc(..)`.

use super::{PResult, Parser};
use crate::tensor::{Storage, TensorData, TensorId};
use crate::types::{DType, Dim};

impl Parser<'_> {
    /// `tensor<2x3xf32> dense<…>|elided<"hash", len> [name(..)] [doc(..)]`
    pub(super) fn tensor_literal(&mut self) -> PResult<TensorId> {
        self.ws();
        let start = self.pos;
        self.expect("tensor<")?;
        let tt = self.tensor_type_body()?;
        self.expect(">")?;
        let mut dims = Vec::new();
        for d in tt.shape.unwrap_or_default() {
            match d {
                Dim::Fixed(n) => dims.push(n),
                _ => return Err(self.err_at(start, "a constant tensor needs fixed dimensions")),
            }
        }
        let dtype = tt.dtype;
        let storage = if self.eat("elided<") {
            let hs = self.string()?;
            let hash =
                u64::from_str_radix(&hs, 16).map_err(|_| self.err_at(self.pos, "bad hash"))?;
            self.expect(",")?;
            let len = self.u64()?;
            self.expect(">")?;
            Storage::Elided { hash, len }
        } else {
            self.expect("dense<")?;
            let s = self.dense(dtype)?;
            self.expect(">")?;
            s
        };
        let mut td = TensorData {
            dtype,
            dims,
            storage,
            name: String::new(),
            doc: String::new(),
        };
        loop {
            if self.eat_kw("name") {
                self.expect("(")?;
                td.name = self.string()?;
                self.expect(")")?;
            } else if self.eat_kw("doc") {
                self.expect("(")?;
                td.doc = self.string()?;
                self.expect(")")?;
            } else {
                break;
            }
        }
        if let Some(expected) = td.numel().and_then(|n| td.dtype.bytes_for(n)) {
            if let Storage::Bytes(b) = &td.storage {
                if b.len() as u64 != expected {
                    return Err(self.err_at(
                        start,
                        format!(
                            "tensor literal has {} bytes, its type needs {expected}",
                            b.len()
                        ),
                    ));
                }
            }
        }
        Ok(self.m.add_tensor(td))
    }

    fn dense(&mut self, dtype: DType) -> PResult<Storage> {
        self.ws();
        if self.rest().starts_with('"') {
            return Ok(Storage::Bytes(self.hex()?.into()));
        }
        self.expect("[")?;
        if dtype == DType::Str {
            let mut v = Vec::new();
            while !self.eat("]") {
                v.push(self.string_bytes()?);
                self.eat(",");
            }
            return Ok(Storage::Strings(v));
        }
        let mut bytes = Vec::new();
        while !self.eat("]") {
            let start = self.pos;
            match dtype {
                DType::F32 => bytes.extend(self.float32()?.to_le_bytes()),
                DType::F64 => bytes.extend(self.float()?.to_le_bytes()),
                DType::U64 => bytes.extend(self.u64()?.to_le_bytes()),
                _ => {
                    let v = self.int()?;
                    // Encoding keeps the low bits: 300 as i8 would silently become 44.
                    if let Some((lo, hi)) = int_range(dtype) {
                        if v < lo || v > hi {
                            return Err(self.err_at(
                                start,
                                format!("{v} is out of range for {dtype} ({lo}..={hi})"),
                            ));
                        }
                    }
                    let enc = crate::numeric::encode_i64(dtype, &[v]).ok_or_else(|| {
                        self.err_at(start, format!("no decimal literal form for {dtype}"))
                    })?;
                    bytes.extend(enc);
                }
            }
            self.eat(",");
        }
        Ok(Storage::Bytes(bytes.into()))
    }
}

/// The values an integer element type holds, for the types written as decimal integers.
fn int_range(dtype: DType) -> Option<(i64, i64)> {
    Some(match dtype {
        DType::I8 => (i8::MIN.into(), i8::MAX.into()),
        DType::U8 => (0, u8::MAX.into()),
        DType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DType::U16 => (0, u16::MAX.into()),
        DType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DType::U32 => (0, u32::MAX.into()),
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::Bool => (0, 1),
        _ => return None,
    })
}
