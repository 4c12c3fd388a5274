//! Conversions between protobuf messages and IR types: dtype codes, value types, attributes.

use onnx_protobuf::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
use ortho_ir::types::{DType, Dim, TensorType, Type};

pub fn dtype_from_code(code: i32) -> DType {
    DType::from_code(code as i64)
}

pub fn dtype_code(d: DType) -> i32 {
    d.code()
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
        Some(type_proto::Value::SequenceType(s)) => Type::Sequence(Box::new(
            s.elem_type
                .as_ref()
                .map(type_from_proto)
                .unwrap_or_default(),
        )),
        Some(type_proto::Value::OptionalType(s)) => Type::Optional(Box::new(
            s.elem_type
                .as_ref()
                .map(type_from_proto)
                .unwrap_or_default(),
        )),
        Some(type_proto::Value::MapType(m)) => Type::Map(
            dtype_from_code(m.key_type),
            Box::new(
                m.value_type
                    .as_ref()
                    .map(type_from_proto)
                    .unwrap_or_default(),
            ),
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
