//! ONNX → IR.
//!
//! Every value name is resolved to an SSA value; a name that no node, initializer or input
//! produces is an error naming the node, as is a name produced twice. Names a subgraph takes
//! from an enclosing graph become `Op::Capture` nodes. Ops the IR models become typed ops, the
//! rest `Op::Opaque` with every attribute.

use super::convert::{dtype_from_code, type_from_proto};
use super::external::{ExternalResolver, MappedFile};
use super::wire::{parse_model_lazy, RawRef};
use super::OnnxError;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, TensorProto,
};
use ortho_ir::module::OpaqueField;
use ortho_ir::tensor::{numel, Storage};
use ortho_ir::types::TensorType;
use ortho_ir::{
    Attr, AttrKind, AttrValue, Backing, DType, Dim, Function, Graph, GraphId, GraphOutput, Module,
    Op, OpsetImport, Output, TensorData, Type, ValueId,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads an ONNX model file; weights stay memory-mapped.
pub fn import_file(path: &Path) -> Result<Module, OnnxError> {
    let file = MappedFile::open(path)?;
    let lazy = parse_model_lazy(file.bytes()).map_err(|source| OnnxError::Wire {
        path: path.to_path_buf(),
        source,
    })?;
    let backing: Arc<dyn Backing> = file.clone();
    let mut imp = Importer {
        path: path.to_path_buf(),
        m: Module::new("main"),
        resolver: ExternalResolver::new(path),
    };
    imp.model(&lazy.model, Some((&backing, &lazy.raw)))?;
    Ok(imp.m)
}

/// Reads an ONNX model from bytes (external data is resolved relative to `path`).
pub fn import_bytes(bytes: &[u8], path: &Path) -> Result<Module, OnnxError> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| OnnxError::Model {
        path: path.to_path_buf(),
        message: format!("not a valid ONNX model: {e}"),
    })?;
    let mut imp = Importer {
        path: path.to_path_buf(),
        m: Module::new("main"),
        resolver: ExternalResolver::new(path),
    };
    imp.model(&model, None)?;
    Ok(imp.m)
}

struct Importer {
    path: PathBuf,
    m: Module,
    resolver: ExternalResolver,
}

/// Names visible in enclosing graphs, with their types.
type Scope = HashMap<String, Type>;

impl Importer {
    fn model_err(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Model {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn node_err(&self, graph: &str, node: &NodeProto, message: impl Into<String>) -> OnnxError {
        let desc = if node.name.is_empty() {
            format!(
                "{} producing '{}'",
                node.op_type,
                node.output.first().map(String::as_str).unwrap_or("")
            )
        } else {
            format!("{} '{}'", node.op_type, node.name)
        };
        OnnxError::Node {
            path: self.path.clone(),
            graph: graph.to_string(),
            node: desc,
            message: message.into(),
        }
    }

    fn model(
        &mut self,
        mp: &ModelProto,
        raw: Option<(&Arc<dyn Backing>, &[RawRef])>,
    ) -> Result<(), OnnxError> {
        let meta = &mut self.m.meta;
        meta.ir_version = mp.ir_version;
        meta.producer_name = mp.producer_name.clone();
        meta.producer_version = mp.producer_version.clone();
        meta.domain = mp.domain.clone();
        meta.model_version = mp.model_version;
        meta.doc = mp.doc_string.clone();
        meta.metadata_props = mp
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        self.m.opsets = mp
            .opset_import
            .iter()
            .map(|o| OpsetImport {
                domain: o.domain.clone(),
                version: o.version,
            })
            .collect();
        for t in &mp.training_info {
            let bytes = t
                .write_to_bytes()
                .map_err(|e| self.model_err(format!("training_info: {e}")))?;
            self.m.opaque_fields.push(OpaqueField { field: 20, bytes });
        }
        let Some(gp) = mp.graph.as_ref() else {
            return Err(self.model_err("the model has no graph"));
        };
        let main = self.graph(gp, &[], raw)?;
        self.m.main = main;
        for f in &mp.functions {
            let mut g = Graph::new(f.name.clone());
            g.doc = String::new();
            let types: Scope = f
                .value_info
                .iter()
                .filter_map(|v| {
                    v.type_
                        .as_ref()
                        .map(|t| (v.name.clone(), type_from_proto(t)))
                })
                .collect();
            let mut defs: HashMap<String, ValueId> = HashMap::new();
            for name in &f.input {
                let v = g.add_input(name.clone(), types.get(name).cloned().unwrap_or_default());
                defs.insert(name.clone(), v);
            }
            let gname = format!("{}.{}", f.domain, f.name);
            self.nodes(&mut g, &gname, &f.node, &[], &types, &mut defs)?;
            for name in &f.output {
                let value = *defs.get(name).ok_or_else(|| {
                    self.model_err(format!(
                        "function '{gname}': output '{name}' is not produced by any node"
                    ))
                })?;
                g.outputs.push(GraphOutput {
                    value,
                    name: name.clone(),
                });
            }
            let graph = self.m.graphs.alloc(g);
            let mut defaults = Vec::new();
            for a in &f.attribute_proto {
                defaults.push(self.attr(a, &gname, &[])?);
            }
            self.m.functions.push(Function {
                name: f.name.clone(),
                domain: f.domain.clone(),
                overload: f.overload.clone(),
                graph,
                attributes: f.attribute.clone(),
                attribute_defaults: defaults,
                opsets: f
                    .opset_import
                    .iter()
                    .map(|o| OpsetImport {
                        domain: o.domain.clone(),
                        version: o.version,
                    })
                    .collect(),
                doc: f.doc_string.clone(),
                metadata_props: f
                    .metadata_props
                    .iter()
                    .map(|p| (p.key.clone(), p.value.clone()))
                    .collect(),
            });
        }
        Ok(())
    }

    /// Converts a graph; `outer` lists the scopes of enclosing graphs, innermost last.
    fn graph(
        &mut self,
        gp: &GraphProto,
        outer: &[&Scope],
        raw: Option<(&Arc<dyn Backing>, &[RawRef])>,
    ) -> Result<GraphId, OnnxError> {
        let gname = gp.name.clone();
        // Each enclosing scope is one level of subgraph nesting.
        if outer.len() > ortho_ir::limits::MAX_GRAPH_DEPTH {
            return Err(self.model_err(format!(
                "graph '{gname}': subgraphs nested more than {} levels deep",
                ortho_ir::limits::MAX_GRAPH_DEPTH
            )));
        }
        if !gp.sparse_initializer.is_empty() {
            return Err(self.model_err(format!(
                "graph '{gname}': sparse initializers are not supported"
            )));
        }
        let mut g = Graph::new(gname.clone());
        g.doc = gp.doc_string.clone();
        g.extra.metadata_props = gp
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        for qa in &gp.quantization_annotation {
            let b = qa.write_to_bytes().map_err(|e| {
                self.model_err(format!("graph '{gname}': quantization annotation: {e}"))
            })?;
            g.extra.quantization_annotations.push(b);
        }
        // Types known for each name: value_info first, then inputs and outputs, which are authoritative.
        let mut types: Scope = HashMap::new();
        for vi in gp.value_info.iter().chain(&gp.input).chain(&gp.output) {
            if let Some(t) = vi.type_.as_ref() {
                types.insert(vi.name.clone(), type_from_proto(t));
            }
        }
        let raw_by_init: HashMap<usize, RawRef> = raw
            .map(|(_, r)| r.iter().map(|x| (x.initializer, *x)).collect())
            .unwrap_or_default();
        let mut inits: HashMap<&str, (usize, &TensorProto)> = HashMap::new();
        for (i, t) in gp.initializer.iter().enumerate() {
            if inits.insert(t.name.as_str(), (i, t)).is_some() {
                return Err(self.tensor_err(&t.name, "initializer name is used twice"));
            }
        }
        let mut defs: HashMap<String, ValueId> = HashMap::new();
        let mut inputs = Vec::new();
        for vi in &gp.input {
            let ty = types.get(&vi.name).cloned().unwrap_or_default();
            let default = match inits.get(vi.name.as_str()) {
                Some(&(i, t)) => {
                    let td = self.tensor(t, raw.map(|(b, _)| b), raw_by_init.get(&i))?;
                    // An initializer is named by its value; keeping the name twice would only drift.
                    Some(self.m.add_tensor(TensorData {
                        name: String::new(),
                        ..td
                    }))
                }
                None => None,
            };
            let id = g.add_node(
                Op::Input { default },
                vec![],
                vec![Output::new(vi.name.clone(), ty)],
            );
            if defs
                .insert(
                    vi.name.clone(),
                    ValueId {
                        node: id,
                        output: 0,
                    },
                )
                .is_some()
            {
                return Err(self.model_err(format!(
                    "graph '{gname}': input '{}' is declared twice",
                    vi.name
                )));
            }
            inputs.push(id);
        }
        g.set_inputs(inputs);
        for (i, t) in gp.initializer.iter().enumerate() {
            if defs.contains_key(&t.name) {
                continue;
            }
            let td = self.tensor(t, raw.map(|(b, _)| b), raw_by_init.get(&i))?;
            let td = TensorData {
                name: String::new(),
                ..td
            };
            let ty = Type::Tensor(TensorType::new(
                td.dtype,
                td.dims.iter().map(|&d| Dim::Fixed(d)).collect(),
            ));
            let tid = self.m.add_tensor(td);
            let id = g.add_node(
                Op::Const(tid),
                vec![],
                vec![Output::new(t.name.clone(), ty)],
            );
            defs.insert(
                t.name.clone(),
                ValueId {
                    node: id,
                    output: 0,
                },
            );
        }
        self.nodes(&mut g, &gname, &gp.node, outer, &types, &mut defs)?;
        for vi in &gp.output {
            let value = match defs.get(&vi.name) {
                Some(v) => *v,
                None => match capture_type(outer, &vi.name) {
                    Some(ty) => {
                        let v = add_capture(&mut g, &vi.name, ty);
                        defs.insert(vi.name.clone(), v);
                        v
                    }
                    None => return Err(self.model_err(format!("graph '{gname}': output '{}' is not produced by any node, initializer or input", vi.name))),
                },
            };
            if g.value_type(value).is_unknown() {
                if let Some(t) = types.get(&vi.name) {
                    g.set_value_type(value, t.clone());
                }
            }
            g.outputs.push(GraphOutput {
                value,
                name: vi.name.clone(),
            });
        }
        Ok(self.m.graphs.alloc(g))
    }

    fn nodes(
        &mut self,
        g: &mut Graph,
        gname: &str,
        nodes: &[NodeProto],
        outer: &[&Scope],
        types: &Scope,
        defs: &mut HashMap<String, ValueId>,
    ) -> Result<(), OnnxError> {
        // Every name this graph defines, so a subgraph can capture values defined later in the file.
        let mut scope: Scope = HashMap::new();
        for (name, v) in defs.iter() {
            scope.insert(name.clone(), g.value_type(*v).clone());
        }
        for n in nodes {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                scope.insert(o.clone(), types.get(o).cloned().unwrap_or_default());
            }
        }
        let mut inner_outer: Vec<&Scope> = outer.to_vec();
        inner_outer.push(&scope);
        let mut created = Vec::with_capacity(nodes.len());
        for n in nodes {
            let mut attrs = Vec::with_capacity(n.attribute.len());
            for a in &n.attribute {
                let at = self.attr(a, gname, &inner_outer).map_err(|e| match e {
                    OnnxError::Model { message, .. } => self.node_err(gname, n, message),
                    other => other,
                })?;
                attrs.push(at);
            }
            let op = Op::from_parts(&n.domain, &n.op_type, attrs);
            let outputs: Vec<Output> = n
                .output
                .iter()
                .map(|o| {
                    Output::new(
                        o.clone(),
                        if o.is_empty() {
                            Type::Unknown
                        } else {
                            types.get(o).cloned().unwrap_or_default()
                        },
                    )
                })
                .collect();
            let id = g.add_node(op, vec![], outputs);
            let node = g.node_mut(id);
            node.name = n.name.clone();
            node.doc = n.doc_string.clone();
            for (i, o) in n.output.iter().enumerate() {
                if o.is_empty() {
                    continue;
                }
                if defs
                    .insert(
                        o.clone(),
                        ValueId {
                            node: id,
                            output: i as u32,
                        },
                    )
                    .is_some()
                {
                    return Err(self.node_err(
                        gname,
                        n,
                        format!("value '{o}' is produced more than once (duplicate value name)"),
                    ));
                }
            }
            created.push(id);
        }
        for (n, id) in nodes.iter().zip(created) {
            let mut operands = Vec::with_capacity(n.input.len());
            for name in &n.input {
                if name.is_empty() {
                    operands.push(None);
                    continue;
                }
                let v = match defs.get(name) {
                    Some(v) => *v,
                    None => match capture_type(outer, name) {
                        Some(ty) => {
                            let v = add_capture(g, name, ty);
                            defs.insert(name.clone(), v);
                            v
                        }
                        None => return Err(self.node_err(gname, n, format!("input '{name}' is not produced by any node, initializer or graph input"))),
                    },
                };
                operands.push(Some(v));
            }
            g.set_operands(id, operands);
        }
        Ok(())
    }

    fn attr(
        &mut self,
        a: &AttributeProto,
        gname: &str,
        outer: &[&Scope],
    ) -> Result<Attr, OnnxError> {
        let kind = attr_kind(a);
        let value = if !a.ref_attr_name.is_empty() {
            AttrValue::Ref {
                name: a.ref_attr_name.clone(),
                kind,
            }
        } else {
            match kind {
                AttrKind::Float => AttrValue::Float(a.f),
                AttrKind::Int => AttrValue::Int(a.i),
                AttrKind::String => AttrValue::String(a.s.clone()),
                AttrKind::Tensor => {
                    let t = a.t.as_ref().ok_or_else(|| {
                        self.model_err(format!("attribute '{}' has no tensor", a.name))
                    })?;
                    let td = self.tensor(t, None, None)?;
                    AttrValue::Tensor(self.m.add_tensor(td))
                }
                AttrKind::Graph => {
                    let gp = a.g.as_ref().ok_or_else(|| {
                        self.model_err(format!("attribute '{}' has no graph", a.name))
                    })?;
                    AttrValue::Graph(self.graph(gp, outer, None)?)
                }
                AttrKind::SparseTensor => {
                    AttrValue::SparseTensor(self.encode(a.sparse_tensor.as_ref(), gname)?)
                }
                AttrKind::Type => {
                    AttrValue::Type(a.tp.as_ref().map(type_from_proto).unwrap_or_default())
                }
                AttrKind::Floats => AttrValue::Floats(a.floats.clone()),
                AttrKind::Ints => AttrValue::Ints(a.ints.clone()),
                AttrKind::Strings => AttrValue::Strings(a.strings.clone()),
                AttrKind::Tensors => {
                    let mut v = Vec::new();
                    for t in &a.tensors {
                        let td = self.tensor(t, None, None)?;
                        v.push(self.m.add_tensor(td));
                    }
                    AttrValue::Tensors(v)
                }
                AttrKind::Graphs => {
                    let mut v = Vec::new();
                    for gp in &a.graphs {
                        v.push(self.graph(gp, outer, None)?);
                    }
                    AttrValue::Graphs(v)
                }
                AttrKind::SparseTensors => {
                    let mut v = Vec::new();
                    for s in &a.sparse_tensors {
                        v.push(self.encode(Some(s), gname)?);
                    }
                    AttrValue::SparseTensors(v)
                }
                AttrKind::Types => {
                    AttrValue::Types(a.type_protos.iter().map(type_from_proto).collect())
                }
                AttrKind::Undefined => {
                    return Err(
                        self.model_err(format!("attribute '{}' has no type and no value", a.name))
                    )
                }
            }
        };
        Ok(Attr {
            name: a.name.clone(),
            value,
            doc: a.doc_string.clone(),
        })
    }

    fn encode<M: Message>(&self, m: Option<&M>, gname: &str) -> Result<Vec<u8>, OnnxError> {
        match m {
            Some(m) => m
                .write_to_bytes()
                .map_err(|e| self.model_err(format!("graph '{gname}': {e}"))),
            None => Ok(Vec::new()),
        }
    }

    fn tensor_err(&self, tensor: &str, message: impl Into<String>) -> OnnxError {
        OnnxError::Tensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }

    /// Converts a TensorProto; `raw` points at its raw bytes in the mapped model when they were not copied.
    fn tensor(
        &mut self,
        t: &TensorProto,
        backing: Option<&Arc<dyn Backing>>,
        raw: Option<&RawRef>,
    ) -> Result<TensorData, OnnxError> {
        let dtype = dtype_from_code(t.data_type);
        if let Some(&d) = t.dims.iter().find(|&&d| d < 0) {
            return Err(self.tensor_err(&t.name, format!("negative dimension {d} in {:?}", t.dims)));
        }
        let n = numel(&t.dims).ok_or_else(|| {
            self.tensor_err(
                &t.name,
                format!("the product of dims {:?} overflows", t.dims),
            )
        })?;
        let storage = if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
            let mut location = String::new();
            let (mut offset, mut length) = (None, None);
            for e in &t.external_data {
                let num = |s: &str| {
                    s.parse::<u64>().map_err(|_| {
                        self.tensor_err(
                            &t.name,
                            format!("external data {} '{s}' is not a number", e.key),
                        )
                    })
                };
                match e.key.as_str() {
                    "location" => location = e.value.clone(),
                    "offset" => offset = Some(num(&e.value)?),
                    "length" => length = Some(num(&e.value)?),
                    _ => {}
                }
            }
            let (file, off, len) = self
                .resolver
                .resolve(&self.path, &t.name, &location, offset, length)?;
            Storage::Mapped {
                backing: file,
                offset: off,
                len,
            }
        } else if let (Some(b), Some(r)) = (backing, raw) {
            Storage::Mapped {
                backing: b.clone(),
                offset: r.offset,
                len: r.len,
            }
        } else if !t.raw_data.is_empty() {
            Storage::Bytes(t.raw_data.clone().into())
        } else {
            typed_storage(t, dtype)
        };
        let td = TensorData {
            dtype,
            dims: t.dims.clone(),
            storage,
            name: String::new(),
            doc: t.doc_string.clone(),
        };
        // A fixed-width dtype whose byte length overflows: the data can never match.
        if dtype.bits().is_some() && dtype.bytes_for(n).is_none() {
            return Err(self.tensor_err(
                &t.name,
                format!("the byte length of {dtype} × {:?} overflows", t.dims),
            ));
        }
        if let Some(expected) = dtype.bytes_for(n) {
            let got = td.byte_len();
            if got != expected {
                return Err(self.tensor_err(
                    &t.name,
                    format!(
                        "has {got} bytes of data but {dtype} × {:?} needs {expected}",
                        t.dims
                    ),
                ));
            }
        } else if dtype == DType::Str && td.byte_len() > 0
            || matches!(td.storage, Storage::Strings(ref s) if s.len() as u64 != n)
        {
            if let Storage::Strings(s) = &td.storage {
                if s.len() as u64 != n {
                    return Err(self.tensor_err(
                        &t.name,
                        format!("has {} strings but dims {:?} need {n}", s.len(), t.dims),
                    ));
                }
            }
        }
        Ok(TensorData {
            name: t.name.clone(),
            ..td
        })
    }
}

/// Data stored in the typed repeated fields, as little-endian bytes.
fn typed_storage(t: &TensorProto, dtype: DType) -> Storage {
    let bytes: Vec<u8> = match dtype {
        DType::Str => return Storage::Strings(t.string_data.clone()),
        DType::F32 | DType::C64 => t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F64 | DType::C128 => t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U32 => t
            .uint64_data
            .iter()
            .flat_map(|x| (*x as u32).to_le_bytes())
            .collect(),
        DType::U64 => t.uint64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I32 => t.int32_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I16 | DType::U16 | DType::F16 | DType::BF16 => t
            .int32_data
            .iter()
            .flat_map(|x| (*x as u16).to_le_bytes())
            .collect(),
        // One byte per int32: 8-bit types hold one element, 4-bit types two packed elements.
        _ => t.int32_data.iter().map(|x| *x as u8).collect(),
    };
    Storage::Bytes(bytes.into())
}

fn attr_kind(a: &AttributeProto) -> AttrKind {
    match a.type_.enum_value() {
        Ok(AttributeType::FLOAT) => AttrKind::Float,
        Ok(AttributeType::INT) => AttrKind::Int,
        Ok(AttributeType::STRING) => AttrKind::String,
        Ok(AttributeType::TENSOR) => AttrKind::Tensor,
        Ok(AttributeType::GRAPH) => AttrKind::Graph,
        Ok(AttributeType::SPARSE_TENSOR) => AttrKind::SparseTensor,
        Ok(AttributeType::TYPE_PROTO) => AttrKind::Type,
        Ok(AttributeType::FLOATS) => AttrKind::Floats,
        Ok(AttributeType::INTS) => AttrKind::Ints,
        Ok(AttributeType::STRINGS) => AttrKind::Strings,
        Ok(AttributeType::TENSORS) => AttrKind::Tensors,
        Ok(AttributeType::GRAPHS) => AttrKind::Graphs,
        Ok(AttributeType::SPARSE_TENSORS) => AttrKind::SparseTensors,
        Ok(AttributeType::TYPE_PROTOS) => AttrKind::Types,
        // Very old exporters leave the type unset; infer it from the field that carries data.
        _ => {
            if a.t.is_some() {
                AttrKind::Tensor
            } else if a.g.is_some() {
                AttrKind::Graph
            } else if !a.floats.is_empty() {
                AttrKind::Floats
            } else if !a.ints.is_empty() {
                AttrKind::Ints
            } else if !a.strings.is_empty() {
                AttrKind::Strings
            } else if !a.s.is_empty() {
                AttrKind::String
            } else if a.f != 0.0 {
                AttrKind::Float
            } else if a.i != 0 {
                AttrKind::Int
            } else {
                AttrKind::Undefined
            }
        }
    }
}

fn capture_type(outer: &[&Scope], name: &str) -> Option<Type> {
    outer.iter().rev().find_map(|s| s.get(name).cloned())
}

fn add_capture(g: &mut Graph, name: &str, ty: Type) -> ValueId {
    let id = g.add_node(Op::Capture, vec![], vec![Output::new(name, ty)]);
    ValueId {
        node: id,
        output: 0,
    }
}
