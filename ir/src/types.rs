//! Element types, dimensions and value types.
//!
//! The IR names dtypes itself (`f32`, `bf16`, …); the ONNX enum codes are mapped in `frontends`.
//! A dtype the IR does not know is kept as `DType::Other(code)` so that it survives a round trip.

use std::fmt;

/// An element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    Str,
    C64,
    C128,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    U4,
    I4,
    F4E2M1,
    F8E8M0,
    /// The dtype is not set (ONNX `UNDEFINED`).
    Undefined,
    /// A code the IR does not know; carried through unchanged.
    Other(i32),
}

const NAMES: &[(DType, &str)] = &[
    (DType::F32, "f32"),
    (DType::F16, "f16"),
    (DType::BF16, "bf16"),
    (DType::F64, "f64"),
    (DType::I8, "i8"),
    (DType::I16, "i16"),
    (DType::I32, "i32"),
    (DType::I64, "i64"),
    (DType::U8, "u8"),
    (DType::U16, "u16"),
    (DType::U32, "u32"),
    (DType::U64, "u64"),
    (DType::Bool, "bool"),
    (DType::Str, "str"),
    (DType::C64, "c64"),
    (DType::C128, "c128"),
    (DType::F8E4M3FN, "f8e4m3fn"),
    (DType::F8E4M3FNUZ, "f8e4m3fnuz"),
    (DType::F8E5M2, "f8e5m2"),
    (DType::F8E5M2FNUZ, "f8e5m2fnuz"),
    (DType::U4, "u4"),
    (DType::I4, "i4"),
    (DType::F4E2M1, "f4e2m1"),
    (DType::F8E8M0, "f8e8m0"),
    (DType::Undefined, "undef"),
];

/// Element types in the order of their ONNX `TensorProto.DataType` codes (index = code).
const CODE_ORDER: [DType; 25] = [
    DType::Undefined,
    DType::F32,
    DType::U8,
    DType::I8,
    DType::U16,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::Str,
    DType::Bool,
    DType::F16,
    DType::F64,
    DType::U32,
    DType::U64,
    DType::C64,
    DType::C128,
    DType::BF16,
    DType::F8E4M3FN,
    DType::F8E4M3FNUZ,
    DType::F8E5M2,
    DType::F8E5M2FNUZ,
    DType::U4,
    DType::I4,
    DType::F4E2M1,
    DType::F8E8M0,
];

impl DType {
    /// The dtype of an ONNX `DataType` code. The codes are part of op definitions themselves
    /// (`Cast.to`, `stash_type`), which is why the IR knows them; unknown codes are kept as `Other`.
    pub fn from_code(code: i64) -> DType {
        usize::try_from(code)
            .ok()
            .and_then(|i| CODE_ORDER.get(i).copied())
            .unwrap_or_else(|| DType::Other(i32::try_from(code).unwrap_or(-1)))
    }

    /// The ONNX `DataType` code of this dtype.
    pub fn code(self) -> i32 {
        match self {
            DType::Other(c) => c,
            d => CODE_ORDER
                .iter()
                .position(|x| *x == d)
                .map(|i| i as i32)
                .unwrap_or(0),
        }
    }

    /// The textual name used by `.oir`.
    pub fn name(self) -> String {
        match self {
            DType::Other(c) => format!("dtype{c}"),
            d => NAMES
                .iter()
                .find(|(x, _)| *x == d)
                .map(|(_, n)| (*n).to_string())
                .unwrap_or_default(),
        }
    }

    /// Parses a textual dtype name.
    pub fn from_name(s: &str) -> Option<DType> {
        if let Some(code) = s.strip_prefix("dtype") {
            return code.parse().ok().map(DType::Other);
        }
        NAMES.iter().find(|(_, n)| *n == s).map(|(d, _)| *d)
    }

    /// Storage size in bits of one element, when the element has a fixed size.
    pub fn bits(self) -> Option<u64> {
        use DType::*;
        Some(match self {
            F64 | I64 | U64 | C64 => 64,
            C128 => 128,
            F32 | I32 | U32 => 32,
            F16 | BF16 | I16 | U16 => 16,
            I8 | U8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 8,
            U4 | I4 | F4E2M1 => 4,
            Str | Undefined | Other(_) => return None,
        })
    }

    /// Bytes needed to store `n` elements (sub-byte types are packed two per byte).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bits = self.bits()?;
        n.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(
            self,
            F32 | F16 | BF16 | F64 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0
        )
    }

    pub fn is_int(self) -> bool {
        use DType::*;
        matches!(self, I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64 | U4 | I4)
    }

    /// Whether this is a numeric type (what arithmetic ops accept).
    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_int() || matches!(self, DType::C64 | DType::C128)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One dimension of a shape: a number, a named symbol (`batch`), or unknown.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{}", crate::text::quote(s)),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A tensor type: element type plus a shape, or no shape at all (unranked).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Option<Vec<Dim>>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        TensorType {
            dtype,
            shape: Some(shape),
        }
    }
    pub fn fixed(dtype: DType, dims: &[i64]) -> Self {
        TensorType::new(dtype, dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }
}

/// The type of an SSA value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Type {
    /// Nothing is known about the value.
    #[default]
    Unknown,
    Tensor(TensorType),
    SparseTensor(TensorType),
    Sequence(Box<Type>),
    Optional(Box<Type>),
    Map(DType, Box<Type>),
}

impl Type {
    pub fn tensor(dtype: DType, shape: Vec<Dim>) -> Type {
        Type::Tensor(TensorType::new(dtype, shape))
    }
    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            Type::Tensor(t) => Some(t),
            _ => None,
        }
    }
    pub fn dtype(&self) -> Option<DType> {
        self.as_tensor().map(|t| t.dtype)
    }
    pub fn is_unknown(&self) -> bool {
        matches!(self, Type::Unknown)
    }
}

fn write_tensor_body(f: &mut fmt::Formatter<'_>, t: &TensorType) -> fmt::Result {
    match &t.shape {
        None => f.write_str("*x")?,
        Some(dims) => {
            for d in dims {
                write!(f, "{d}x")?;
            }
        }
    }
    write!(f, "{}", t.dtype)
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Unknown => f.write_str("?"),
            Type::Tensor(t) => {
                f.write_str("tensor<")?;
                write_tensor_body(f, t)?;
                f.write_str(">")
            }
            Type::SparseTensor(t) => {
                f.write_str("sparse_tensor<")?;
                write_tensor_body(f, t)?;
                f.write_str(">")
            }
            Type::Sequence(t) => write!(f, "seq<{t}>"),
            Type::Optional(t) => write!(f, "optional<{t}>"),
            Type::Map(k, v) => write!(f, "map<{k}, {v}>"),
        }
    }
}
