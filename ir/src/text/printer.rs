//! The `.oir` printer. Output is deterministic: nodes in Kahn order with creation order as the
//! tie-break, attributes in their stored order, floats in Rust's shortest round-trip form.

use super::{quote, quote_bytes, quote_name};
use crate::attr::{Attr, AttrValue};
use crate::graph::{Graph, GraphId, NodeId};
use crate::module::{Module, OpsetImport};
use crate::op::Op;
use crate::op_ortho::{OrthoOp, DOMAIN};
use crate::tensor::{Storage, TensorData, TensorId};
use crate::types::{DType, Dim, TensorType, Type};
use std::fmt::Write;

/// Printing options.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    /// Tensors with more elements than this print as `elided<hash, bytes>`; `None` prints all.
    pub elide_above: Option<u64>,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            elide_above: Some(16),
        }
    }
}

struct Printer<'m> {
    m: &'m Module,
    opts: PrintOptions,
    out: String,
}

/// Prints a whole module.
pub fn print_module(m: &Module, opts: PrintOptions) -> String {
    let mut p = Printer {
        m,
        opts,
        out: String::new(),
    };
    p.module_header();
    p.graph(m.main, 0);
    p.out.push('\n');
    for f in &m.functions {
        let _ = write!(
            p.out,
            "func {{domain = {}, name = {}, overload = {}, attributes = [{}], attribute_defaults = {{",
            quote(&f.domain),
            quote(&f.name),
            quote(&f.overload),
            f.attributes.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", ")
        );
        p.attr_list(&f.attribute_defaults, 0);
        let _ = write!(p.out, "}}, opset_import = {}", opsets(&f.opsets));
        let _ = write!(
            p.out,
            ", doc = {}, metadata_props = {}}}\n",
            quote(&f.doc),
            props(&f.metadata_props)
        );
        p.graph(f.graph, 0);
        p.out.push('\n');
    }
    p.out
}

/// Prints one graph of a module (for `--print-ir-*` of a single graph).
pub fn print_graph(m: &Module, g: GraphId, opts: PrintOptions) -> String {
    let mut p = Printer {
        m,
        opts,
        out: String::new(),
    };
    p.graph(g, 0);
    p.out.push('\n');
    p.out
}

fn opsets(o: &[OpsetImport]) -> String {
    let items: Vec<String> = o
        .iter()
        .map(|o| format!("{} = {}", quote(&o.domain), o.version))
        .collect();
    format!("[{}]", items.join(", "))
}

fn props(p: &[(String, String)]) -> String {
    let items: Vec<String> = p
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Formats a float so that it reads back as a float and as the same value.
pub(crate) fn fmt_float(x: f64, is_f32: bool) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if is_f32 {
        format!("{:?}", x as f32)
    } else {
        format!("{x:?}")
    }
}

impl Printer<'_> {
    fn module_header(&mut self) {
        let meta = &self.m.meta;
        let _ = write!(
            self.out,
            "module {{ir_version = {}, opset_import = {}, producer_name = {}, producer_version = {}, domain = {}, model_version = {}, doc = {}, metadata_props = {}",
            meta.ir_version,
            opsets(&self.m.opsets),
            quote(&meta.producer_name),
            quote(&meta.producer_version),
            quote(&meta.domain),
            meta.model_version,
            quote(&meta.doc),
            props(&meta.metadata_props)
        );
        if !self.m.opaque_fields.is_empty() {
            let items: Vec<String> = self
                .m
                .opaque_fields
                .iter()
                .map(|f| format!("{} = {}", f.field, hex_literal(&f.bytes)))
                .collect();
            let _ = write!(self.out, ", opaque_fields = [{}]", items.join(", "));
        }
        self.out.push_str("}\n");
    }

    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str("  ");
        }
    }

    fn graph(&mut self, gid: GraphId, level: usize) {
        let g = self.m.graph(gid);
        let _ = write!(self.out, "graph @{}(", quote_name(&g.name));
        for (i, &inp) in g.inputs().iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            let n = g.node(inp);
            let o = &n.outputs[0];
            let _ = write!(self.out, "%{}: {}", quote_name(&o.name), o.ty);
            if let Op::Input { default: Some(t) } = n.op {
                self.out.push_str(" = ");
                self.tensor_literal(t);
            }
        }
        self.out.push_str(") -> (");
        for (i, o) in g.outputs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            let vname = g.value_name(o.value);
            let _ = write!(self.out, "%{}", quote_name(vname));
            if vname != o.name {
                let _ = write!(self.out, " as {}", quote(&o.name));
            }
        }
        self.out.push(')');
        if !g.doc.is_empty() {
            let _ = write!(self.out, " doc({})", quote(&g.doc));
        }
        let x = &g.extra;
        if !x.metadata_props.is_empty() || !x.quantization_annotations.is_empty() {
            let qa: Vec<String> = x
                .quantization_annotations
                .iter()
                .map(|b| hex_literal(b))
                .collect();
            let _ = write!(
                self.out,
                " attributes {{metadata_props = {}, quantization_annotations = [{}]}}",
                props(&x.metadata_props),
                qa.join(", ")
            );
        }
        self.out.push_str(" {\n");
        match g.toposort() {
            Ok(order) => {
                for n in order {
                    if !matches!(g.node(n).op, Op::Input { .. }) || !g.inputs().contains(&n) {
                        self.node(g, n, level + 1);
                    }
                }
            }
            Err(c) => {
                // A cyclic graph cannot be ordered; print in creation order so the cycle is visible.
                self.indent(level + 1);
                let _ = writeln!(self.out, "// error: cycle through {}", g.describe(c.node));
                let mut ids = g.node_ids();
                ids.sort_by_key(|&n| g.node(n).seq());
                for n in ids {
                    if !g.inputs().contains(&n) {
                        self.node(g, n, level + 1);
                    }
                }
            }
        }
        self.indent(level);
        self.out.push('}');
    }

    fn node(&mut self, g: &Graph, id: NodeId, level: usize) {
        let n = g.node(id);
        self.indent(level);
        let names: Vec<String> = n
            .outputs
            .iter()
            .map(|o| {
                if o.name.is_empty() {
                    "_".to_string()
                } else {
                    format!("%{}", quote_name(&o.name))
                }
            })
            .collect();
        if !names.is_empty() {
            let _ = write!(self.out, "{} = ", names.join(", "));
        }
        match &n.op {
            Op::Const(t) => {
                self.out.push_str("const ");
                self.tensor_literal(*t);
            }
            Op::Capture => {
                let _ = write!(self.out, "capture : {}", n.outputs[0].ty);
            }
            Op::Input { default } => {
                // An input node that is not listed among the graph inputs (only in broken graphs).
                let _ = write!(self.out, "input : {}", n.outputs[0].ty);
                if let Some(t) = default {
                    self.out.push_str(" = ");
                    self.tensor_literal(*t);
                }
            }
            op => {
                let (domain, op_type, attrs) = op.to_parts().unwrap_or_default();
                self.out.push_str(&op_mnemonic(&domain, &op_type));
                self.out.push('(');
                let operands: Vec<String> = n
                    .operands()
                    .iter()
                    .map(|o| match o {
                        Some(v) if g.is_valid_value(*v) => {
                            format!("%{}", quote_name(g.value_name(*v)))
                        }
                        Some(_) => "%<invalid>".to_string(),
                        None => "_".to_string(),
                    })
                    .collect();
                self.out.push_str(&operands.join(", "));
                self.out.push(')');
                if let Op::Ortho(o) = op {
                    // The typed payload, not the integer attributes that encode it in ONNX.
                    let _ = write!(self.out, " {{{}}}", ortho_payload(o));
                } else if !attrs.is_empty() {
                    self.out.push_str(" {");
                    self.attr_list(&attrs, level);
                    self.out.push('}');
                }
                let tys: Vec<String> = n.outputs.iter().map(|o| o.ty.to_string()).collect();
                let _ = write!(self.out, " : {}", tys.join(", "));
            }
        }
        if !n.name.is_empty() {
            let _ = write!(self.out, " loc({})", quote(&n.name));
        }
        if !n.doc.is_empty() {
            let _ = write!(self.out, " doc({})", quote(&n.doc));
        }
        self.out.push('\n');
    }

    fn attr_list(&mut self, attrs: &[Attr], level: usize) {
        for (i, a) in attrs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            let _ = write!(self.out, "{} = ", quote_name(&a.name));
            self.attr_value(&a.value, level);
            if !a.doc.is_empty() {
                let _ = write!(self.out, " doc({})", quote(&a.doc));
            }
        }
    }

    fn attr_value(&mut self, v: &AttrValue, level: usize) {
        match v {
            AttrValue::Float(x) => self.out.push_str(&fmt_float(*x as f64, true)),
            AttrValue::Int(x) => {
                let _ = write!(self.out, "{x}");
            }
            AttrValue::String(s) => self.out.push_str(&quote_bytes(s)),
            AttrValue::Tensor(t) => self.tensor_literal(*t),
            AttrValue::Graph(g) => self.graph(*g, level + 1),
            AttrValue::SparseTensor(b) => {
                let _ = write!(self.out, "sparse<{}>", hex_literal(b));
            }
            AttrValue::Type(t) => {
                let _ = write!(self.out, "type<{t}>");
            }
            AttrValue::Ref { name, kind } => {
                let _ = write!(self.out, "ref<{}, {}>", quote(name), kind.name());
            }
            list => {
                let kind = list.kind();
                let items: Vec<String> = match list {
                    AttrValue::Floats(v) => v.iter().map(|x| fmt_float(*x as f64, true)).collect(),
                    AttrValue::Ints(v) => v.iter().map(|x| x.to_string()).collect(),
                    AttrValue::Strings(v) => v.iter().map(|x| quote_bytes(x)).collect(),
                    AttrValue::SparseTensors(v) => v
                        .iter()
                        .map(|x| format!("sparse<{}>", hex_literal(x)))
                        .collect(),
                    AttrValue::Types(v) => v.iter().map(|x| format!("type<{x}>")).collect(),
                    AttrValue::Tensors(v) => {
                        let mut items = Vec::new();
                        for t in v {
                            let saved = std::mem::take(&mut self.out);
                            self.tensor_literal(*t);
                            items.push(std::mem::replace(&mut self.out, saved));
                        }
                        items
                    }
                    AttrValue::Graphs(v) => {
                        let mut items = Vec::new();
                        for g in v {
                            let saved = std::mem::take(&mut self.out);
                            self.graph(*g, level + 1);
                            items.push(std::mem::replace(&mut self.out, saved));
                        }
                        items
                    }
                    _ => Vec::new(),
                };
                if items.is_empty() {
                    let _ = write!(self.out, "{}[]", kind.name());
                } else {
                    let _ = write!(self.out, "[{}]", items.join(", "));
                }
            }
        }
    }

    fn tensor_literal(&mut self, t: TensorId) {
        let td = self.m.tensor(t);
        let ty = Type::Tensor(TensorType::new(
            td.dtype,
            td.dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        ));
        let _ = write!(self.out, "{ty} {}", tensor_body(td, self.opts));
        if !td.name.is_empty() {
            let _ = write!(self.out, " name({})", quote(&td.name));
        }
        if !td.doc.is_empty() {
            let _ = write!(self.out, " doc({})", quote(&td.doc));
        }
    }
}

/// The typed attribute block of an `ortho` op (parsed by `parser::ortho`).
fn ortho_payload(o: &OrthoOp) -> String {
    match o {
        OrthoOp::FusedElementwise(f) => f.to_string(),
        OrthoOp::Factorized(f) => f.to_string(),
        OrthoOp::SparseLinear(s) => s.to_string(),
    }
}

/// `onnx.Op`, `ortho.Op`, or `op<"domain", "Op">`.
pub(crate) fn op_mnemonic(domain: &str, op_type: &str) -> String {
    let ident = !op_type.is_empty()
        && op_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    match domain {
        "" if ident => format!("onnx.{op_type}"),
        DOMAIN if ident => format!("{DOMAIN}.{op_type}"),
        _ => format!("op<{}, {}>", quote(domain), quote(op_type)),
    }
}

fn hex_literal(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2 + 4);
    s.push_str("\"0x");
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s.push('"');
    s
}

fn tensor_body(td: &TensorData, opts: PrintOptions) -> String {
    let numel = match &td.storage {
        Storage::Strings(s) => s.len() as u64,
        _ => td.numel().unwrap_or(u64::MAX),
    };
    let elide =
        matches!(td.storage, Storage::Elided { .. }) || opts.elide_above.is_some_and(|n| numel > n);
    if elide {
        return format!("elided<\"{:016x}\", {}>", td.content_hash(), td.byte_len());
    }
    if let Storage::Strings(s) = &td.storage {
        let items: Vec<String> = s.iter().map(|x| quote_bytes(x)).collect();
        return format!("dense<[{}]>", items.join(", "));
    }
    let bytes = td.bytes().unwrap_or(&[]);
    let decimal = match td.dtype {
        DType::F32 | DType::F64 => crate::numeric::decode_f64(td.dtype, bytes)
            .filter(|v| v.iter().all(|x| !x.is_nan()))
            .map(|v| {
                v.iter()
                    .map(|x| fmt_float(*x, td.dtype == DType::F32))
                    .collect::<Vec<_>>()
            }),
        DType::I8
        | DType::I16
        | DType::I32
        | DType::I64
        | DType::U8
        | DType::U16
        | DType::U32
        | DType::Bool => crate::numeric::decode_i64(td.dtype, bytes)
            .filter(|v| td.dtype != DType::Bool || v.iter().all(|&x| x == 0 || x == 1))
            .map(|v| v.iter().map(|x| x.to_string()).collect()),
        DType::U64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    u64::from_le_bytes(a).to_string()
                })
                .collect(),
        ),
        _ => None,
    };
    match decimal {
        Some(items) if items.len() as u64 == numel => format!("dense<[{}]>", items.join(", ")),
        _ => format!("dense<{}>", hex_literal(bytes)),
    }
}
