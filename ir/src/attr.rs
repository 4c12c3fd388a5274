//! Attributes: the generic form every op can be converted to and from.
//!
//! Typed ops (see `op.rs`) keep their attributes in structs; everything else keeps a list of
//! [`Attr`]. Conversion in both directions is lossless for the typed ops' fields, so an op that
//! does not fit its typed struct exactly falls back to `Op::Opaque` and loses nothing.

use crate::graph::GraphId;
use crate::tensor::TensorId;
use crate::types::Type;

/// The kind of an attribute, as ONNX distinguishes them (needed for references and empty lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrKind {
    Float,
    Int,
    String,
    Tensor,
    Graph,
    SparseTensor,
    Type,
    Floats,
    Ints,
    Strings,
    Tensors,
    Graphs,
    SparseTensors,
    Types,
    Undefined,
}

const KIND_NAMES: &[(AttrKind, &str)] = &[
    (AttrKind::Float, "float"),
    (AttrKind::Int, "int"),
    (AttrKind::String, "string"),
    (AttrKind::Tensor, "tensor"),
    (AttrKind::Graph, "graph"),
    (AttrKind::SparseTensor, "sparse_tensor"),
    (AttrKind::Type, "type"),
    (AttrKind::Floats, "floats"),
    (AttrKind::Ints, "ints"),
    (AttrKind::Strings, "strings"),
    (AttrKind::Tensors, "tensors"),
    (AttrKind::Graphs, "graphs"),
    (AttrKind::SparseTensors, "sparse_tensors"),
    (AttrKind::Types, "types"),
    (AttrKind::Undefined, "undefined"),
];

impl AttrKind {
    pub fn name(self) -> &'static str {
        KIND_NAMES
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("undefined")
    }
    pub fn from_name(s: &str) -> Option<Self> {
        KIND_NAMES.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(TensorId),
    Graph(GraphId),
    /// A sparse tensor kept as the frontend's opaque encoding.
    SparseTensor(Vec<u8>),
    Type(Type),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<TensorId>),
    Graphs(Vec<GraphId>),
    SparseTensors(Vec<Vec<u8>>),
    Types(Vec<Type>),
    /// Inside a function body: the value of the caller's attribute `name`.
    Ref {
        name: String,
        kind: AttrKind,
    },
}

impl AttrValue {
    pub fn kind(&self) -> AttrKind {
        match self {
            AttrValue::Float(_) => AttrKind::Float,
            AttrValue::Int(_) => AttrKind::Int,
            AttrValue::String(_) => AttrKind::String,
            AttrValue::Tensor(_) => AttrKind::Tensor,
            AttrValue::Graph(_) => AttrKind::Graph,
            AttrValue::SparseTensor(_) => AttrKind::SparseTensor,
            AttrValue::Type(_) => AttrKind::Type,
            AttrValue::Floats(_) => AttrKind::Floats,
            AttrValue::Ints(_) => AttrKind::Ints,
            AttrValue::Strings(_) => AttrKind::Strings,
            AttrValue::Tensors(_) => AttrKind::Tensors,
            AttrValue::Graphs(_) => AttrKind::Graphs,
            AttrValue::SparseTensors(_) => AttrKind::SparseTensors,
            AttrValue::Types(_) => AttrKind::Types,
            AttrValue::Ref { kind, .. } => *kind,
        }
    }

    /// Subgraphs referenced by this value.
    pub fn graphs(&self) -> Vec<GraphId> {
        match self {
            AttrValue::Graph(g) => vec![*g],
            AttrValue::Graphs(gs) => gs.clone(),
            _ => Vec::new(),
        }
    }

    /// Tensors referenced by this value.
    pub fn tensors(&self) -> Vec<TensorId> {
        match self {
            AttrValue::Tensor(t) => vec![*t],
            AttrValue::Tensors(ts) => ts.clone(),
            _ => Vec::new(),
        }
    }
}

/// A named attribute with its documentation string.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub value: AttrValue,
    pub doc: String,
}

impl Attr {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Self {
        Attr {
            name: name.into(),
            value,
            doc: String::new(),
        }
    }
}

/// Conversion between a typed attribute field and the generic value.
pub trait AttrType: Sized {
    fn from_value(v: &AttrValue) -> Option<Self>;
    fn to_value(&self) -> AttrValue;
}

impl AttrType for i64 {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Int(x) = v {
            Some(*x)
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Int(*self)
    }
}
impl AttrType for f32 {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Float(x) = v {
            Some(*x)
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Float(*self)
    }
}
impl AttrType for Vec<i64> {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Ints(x) = v {
            Some(x.clone())
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Ints(self.clone())
    }
}
impl AttrType for Vec<f32> {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Floats(x) = v {
            Some(x.clone())
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Floats(self.clone())
    }
}
impl AttrType for String {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::String(x) = v {
            String::from_utf8(x.clone()).ok()
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::String(self.as_bytes().to_vec())
    }
}
impl AttrType for TensorId {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Tensor(x) = v {
            Some(*x)
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Tensor(*self)
    }
}
impl AttrType for GraphId {
    fn from_value(v: &AttrValue) -> Option<Self> {
        if let AttrValue::Graph(x) = v {
            Some(*x)
        } else {
            None
        }
    }
    fn to_value(&self) -> AttrValue {
        AttrValue::Graph(*self)
    }
}
