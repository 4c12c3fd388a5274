//! Conversions between protobuf messages and IR types: dtype codes, value types, attributes.

use ortho_ir::types::{DType, Dim, TensorType, Type};
use onnx_protobuf::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};

/// ONNX `TensorProto.DataType` codes in the order of the IR's dtypes.
const CODES: &[(DType, i32)] = &[
    (DType::Undefined, 0),
    (DType::F32, 1),
    (DType::U8, 2),
    (DType::I8, 3),
    (DType::U16, 4),
    (DType::I16, 5),
    (DType::I32, 6),
    (DType::I64, 7),
    (DType::Str, 8),
    (DType::Bool, 9),
    (DType::F16, 10),
    (DType::F64, 11),
    (DType::U32, 12),
    (DType::U64, 13),
    (DType::C64, 14),
    (DType::C128, 15),
    (DType::BF16, 16),
    (DType::F8E4M3FN, 17),
    (DType::F8E4M3FNUZ, 18),
    (DType::F8E5M2, 19),
    (DType::F8E5M2FNUZ, 20),
    (DType::U4, 21),
    (DType::I4, 22),
    (DType::F4E2M1, 23),
    (DType::F8E8M0, 24),
];

pub fn dtype_from_code(code: i32) -> DType {
    CODES.iter().find(|(_, c)| *c == code).map(|(d, _)| *d).unwrap_or(DType::Other(code))
}

pub fn dtype_code(d: DType) -> i32 {
    match d {
        DType::Other(c) => c,
        d => CODES.iter().find(|(x, _)| *x == d).map(|(_, c)| *c).unwrap_or(0),
    }
}

fn shape_from_proto(s: &TensorShapeProto) -> Vec<Dim> {
    s.dim
        .iter()
        .map(|d| match &d.value {
            Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Dim::Fixed(*v),
            Some(tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Sym(p.clone()),
            _ => Dim::Unknown,
        })
        .collect()
}

fn shape_to_proto(dims: &[Dim]) -> TensorShapeProto {
    let mut s = TensorShapeProto::new();
    for d in dims {
        let mut pd = tensor_shape_proto::Dimension::new();
        pd.value = match d {
            Dim::Fixed(v) => Some(tensor_shape_proto::dimension::Value::DimValue(*v)),
            Dim::Sym(p) => Some(tensor_shape_proto::dimension::Value::DimParam(p.clone())),
            Dim::Unknown => None,
        };
        s.dim.push(pd);
    }
    s
}

pub fn type_from_proto(t: &TypeProto) -> Type {
    match &t.value {
        Some(type_proto::Value::TensorType(tt)) => Type::Tensor(TensorType {
            dtype: dtype_from_code(tt.elem_type),
            shape: tt.shape.as_ref().map(shape_from_proto),
        }),
        Some(type_proto::Value::SparseTensorType(tt)) => Type::SparseTensor(TensorType {
            dtype: dtype_from_code(tt.elem_type),
            shape: tt.shape.as_ref().map(shape_from_proto),
        }),
        Some(type_proto::Value::SequenceType(s)) => {
            Type::Sequence(Box::new(s.elem_type.as_ref().map(type_from_proto).unwrap_or_default()))
        }
        Some(type_proto::Value::OptionalType(s)) => {
            Type::Optional(Box::new(s.elem_type.as_ref().map(type_from_proto).unwrap_or_default()))
        }
        Some(type_proto::Value::MapType(m)) => Type::Map(
            dtype_from_code(m.key_type),
            Box::new(m.value_type.as_ref().map(type_from_proto).unwrap_or_default()),
        ),
        _ => Type::Unknown,
    }
}

/// `None` for an unknown type (no value_info is written for it).
pub fn type_to_proto(t: &Type) -> Option<TypeProto> {
    let mut p = TypeProto::new();
    p.value = Some(match t {
        Type::Unknown => return None,
        Type::Tensor(tt) | Type::SparseTensor(tt) => {
            let mut x = type_proto::Tensor::new();
            x.elem_type = dtype_code(tt.dtype);
            if let Some(dims) = &tt.shape {
                x.shape = protobuf::MessageField::some(shape_to_proto(dims));
            }
            if matches!(t, Type::Tensor(_)) {
                type_proto::Value::TensorType(x)
            } else {
                let mut s = type_proto::SparseTensor::new();
                s.elem_type = x.elem_type;
                s.shape = x.shape;
                type_proto::Value::SparseTensorType(s)
            }
        }
        Type::Sequence(e) => {
            let mut s = type_proto::Sequence::new();
            s.elem_type = type_to_proto(e).into();
            type_proto::Value::SequenceType(s)
        }
        Type::Optional(e) => {
            let mut s = type_proto::Optional::new();
            s.elem_type = type_to_proto(e).into();
            type_proto::Value::OptionalType(s)
        }
        Type::Map(k, v) => {
            let mut s = type_proto::Map::new();
            s.key_type = dtype_code(*k);
            s.value_type = type_to_proto(v).into();
            type_proto::Value::MapType(s)
        }
    });
    Some(p)
}
