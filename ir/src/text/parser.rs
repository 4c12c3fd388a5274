//! The `.oir` parser: recursive descent over characters (types such as `tensor<"batch"x128xf32>`
//! are context-sensitive, so there is no separate token stream). Value references may point
//! forward; they are resolved when a graph's closing brace is reached, so a cyclic graph parses
//! and the verifier, not the parser, reports the cycle.

use super::is_name_char;
use crate::attr::{Attr, AttrKind, AttrValue};
use crate::graph::{Graph, GraphId, GraphOutput, NodeId, Output, ValueId};
use crate::module::{Function, ModelMeta, Module, OpaqueField, OpsetImport};
use crate::op::Op;
use crate::types::{DType, Dim, TensorType, Type};
use std::collections::HashMap;

mod ortho;
mod tensor;

/// A syntax error with its position; `message` is the whole text after `line:col:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub kind: ParseErrorKind,
}

/// What kind of error a [`ParseError`] is, for callers that branch on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ParseErrorKind {
    /// The text does not follow the grammar (or a literal is out of range).
    #[default]
    Syntax,
    /// A value is used but never defined in its graph.
    UndefinedValue(String),
    /// A value is defined twice in one graph.
    DuplicateValue(String),
    /// The typed payload of an `ortho` op is invalid (`node` is its first result's name).
    InvalidOrthoOp {
        node: String,
        error: crate::fused::FusedError,
    },
}

type PResult<T> = Result<T, ParseError>;

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    m: Module,
    /// How many brackets, nested types and subgraphs enclose the current position: the parser
    /// recurses on each, so a limit keeps hostile text from overflowing the stack.
    nesting: usize,
    /// How many subgraphs enclose the current position (the main graph is 0).
    graph_depth: usize,
}

/// Parses a module from `.oir` text.
pub fn parse_module(src: &str) -> Result<Module, ParseError> {
    let mut p = Parser {
        src,
        pos: 0,
        m: Module::new("main"),
        nesting: 0,
        graph_depth: 0,
    };
    p.module()?;
    Ok(p.m)
}

/// An operand or result reference collected before resolution.
struct PendingNode {
    id: NodeId,
    operands: Vec<Option<(String, usize)>>,
}

impl<'s> Parser<'s> {
    fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(self.err_at(self.pos, msg))
    }

    fn err_at(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        let before = &self.src[..pos.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        ParseError {
            line,
            col,
            message: msg.into(),
            kind: ParseErrorKind::Syntax,
        }
    }

    /// An error of a given kind at `pos`.
    fn err_kind(&self, pos: usize, msg: impl Into<String>, kind: ParseErrorKind) -> ParseError {
        ParseError {
            kind,
            ..self.err_at(pos, msg)
        }
    }

    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn ws(&mut self) {
        loop {
            let r = self.rest();
            let trimmed = r.trim_start();
            self.pos += r.len() - trimmed.len();
            if self.rest().starts_with("//") {
                let end = self.rest().find('\n').unwrap_or(self.rest().len());
                self.pos += end;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self, s: &str) -> bool {
        self.ws();
        self.rest().starts_with(s)
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.peek(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// The `key = value` fields of a `{…}` block whose `{` is read, separated by optional
    /// commas, up to the closing `}`; `field` parses the value of each key.
    fn fields(&mut self, mut field: impl FnMut(&mut Self, &str) -> PResult<()>) -> PResult<()> {
        loop {
            if self.eat("}") {
                return Ok(());
            }
            let key = self.word()?;
            self.expect("=")?;
            field(self, &key)?;
            self.eat(",");
        }
    }

    /// `open` (ending in `<`), what `inner` parses, `>`: `None` when the text does not start
    /// with `open`.
    fn angled<T>(
        &mut self,
        open: &str,
        inner: impl FnOnce(&mut Self) -> PResult<T>,
    ) -> PResult<Option<T>> {
        if !self.eat(open) {
            return Ok(None);
        }
        let t = inner(self)?;
        self.expect(">")?;
        Ok(Some(t))
    }

    fn expect(&mut self, s: &str) -> PResult<()> {
        if self.eat(s) {
            Ok(())
        } else {
            let got: String = self.rest().chars().take(20).collect();
            self.err(format!("expected '{s}', found '{got}'"))
        }
    }

    /// A keyword: a bare word that must be followed by a non-name character.
    fn eat_kw(&mut self, kw: &str) -> bool {
        self.ws();
        let r = self.rest();
        if r.starts_with(kw)
            && !r[kw.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> PResult<String> {
        self.ws();
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(r.len());
        if n == 0 {
            return self.err("expected a word");
        }
        self.pos += n;
        Ok(r[..n].to_string())
    }

    fn string_bytes(&mut self) -> PResult<Vec<u8>> {
        self.ws();
        if !self.rest().starts_with('"') {
            return self.err("expected a string literal");
        }
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let r = self.rest();
            let Some(c) = r.chars().next() else {
                return Err(self.err_at(start, "unterminated string literal"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let Some(e) = self.rest().chars().next() else {
                        return Err(self.err_at(start, "unterminated string literal"));
                    };
                    self.pos += e.len_utf8();
                    match e {
                        'n' => out.push(b'\n'),
                        't' => out.push(b'\t'),
                        'r' => out.push(b'\r'),
                        '"' => out.push(b'"'),
                        '\\' => out.push(b'\\'),
                        'x' => {
                            let h = self.rest().get(..2).unwrap_or("");
                            let Ok(b) = u8::from_str_radix(h, 16) else {
                                return self.err("bad \\x escape");
                            };
                            self.pos += 2;
                            out.push(b);
                        }
                        _ => return self.err(format!("unknown escape '\\{e}'")),
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }

    fn string(&mut self) -> PResult<String> {
        let b = self.string_bytes()?;
        String::from_utf8(b).or_else(|_| self.err("string is not valid UTF-8"))
    }

    /// A name after `%` or `@`: bare or quoted.
    fn name(&mut self) -> PResult<String> {
        if self.rest().starts_with('"') {
            return self.string();
        }
        let r = self.rest();
        let n = r.find(|c: char| !is_name_char(c)).unwrap_or(r.len());
        if n == 0 {
            return self.err("expected a name");
        }
        self.pos += n;
        Ok(r[..n].to_string())
    }

    /// A numeric literal as text (sign, digits, '.', exponent, inf, nan).
    fn number_text(&mut self) -> PResult<String> {
        self.ws();
        let r = self.rest();
        let mut n = 0;
        if r.starts_with('-') || r.starts_with('+') {
            n = 1;
        }
        let body = &r[n..];
        if body.starts_with("inf") {
            n += 3;
        } else if body.starts_with("nan") || body.starts_with("NaN") {
            n += 3;
        } else {
            let b = r.as_bytes();
            while n < b.len() {
                let c = b[n] as char;
                let exp_sign = (c == '-' || c == '+') && n > 0 && matches!(b[n - 1], b'e' | b'E');
                if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exp_sign {
                    n += 1;
                } else {
                    break;
                }
            }
        }
        if n == 0 || r[..n] == *"-" {
            return self.err("expected a number");
        }
        self.pos += n;
        Ok(r[..n].to_string())
    }

    fn int(&mut self) -> PResult<i64> {
        let start = self.pos;
        let t = self.number_text()?;
        t.parse()
            .map_err(|_| self.err_at(start, format!("expected an integer, found '{t}'")))
    }

    fn u64(&mut self) -> PResult<u64> {
        let start = self.pos;
        let t = self.number_text()?;
        t.parse()
            .map_err(|_| self.err_at(start, format!("expected an unsigned integer, found '{t}'")))
    }

    fn float(&mut self) -> PResult<f64> {
        let start = self.pos;
        let t = self.number_text()?;
        parse_float(&t).ok_or_else(|| self.err_at(start, format!("expected a number, found '{t}'")))
    }

    /// An f32 parsed directly (not through f64, which could round twice).
    fn float32(&mut self) -> PResult<f32> {
        let start = self.pos;
        let t = self.number_text()?;
        parse_float32(&t)
            .ok_or_else(|| self.err_at(start, format!("expected a number, found '{t}'")))
    }

    fn hex(&mut self) -> PResult<Vec<u8>> {
        let start = self.pos;
        let s = self.string()?;
        let h = s
            .strip_prefix("0x")
            .ok_or_else(|| self.err_at(start, "expected a \"0x…\" hex literal"))?;
        if h.len() % 2 != 0 {
            return Err(self.err_at(start, "odd number of hex digits"));
        }
        (0..h.len() / 2)
            .map(|i| {
                u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                    .map_err(|_| self.err_at(start, "bad hex digit"))
            })
            .collect()
    }

    fn module(&mut self) -> PResult<()> {
        self.ws();
        if !self.eat_kw("module") {
            return self.err("expected 'module {…}' header");
        }
        self.expect("{")?;
        let mut meta = ModelMeta::default();
        self.fields(|p, key| {
            match key {
                "ir_version" => meta.ir_version = p.int()?,
                "model_version" => meta.model_version = p.int()?,
                "producer_name" => meta.producer_name = p.string()?,
                "producer_version" => meta.producer_version = p.string()?,
                "domain" => meta.domain = p.string()?,
                "doc" => meta.doc = p.string()?,
                "metadata_props" => meta.metadata_props = p.props()?,
                "opset_import" => p.m.opsets = p.opsets()?,
                "opaque_fields" => {
                    p.expect("[")?;
                    while !p.eat("]") {
                        let field = p.u64()? as u32;
                        p.expect("=")?;
                        let bytes = p.hex()?;
                        p.m.opaque_fields.push(OpaqueField { field, bytes });
                        p.eat(",");
                    }
                }
                k => return p.err(format!("unknown module field '{k}'")),
            }
            Ok(())
        })?;
        self.m.meta = meta;
        self.ws();
        if !self.eat_kw("graph") {
            return self.err("expected the main 'graph'");
        }
        let main = self.graph_body()?;
        self.m.main = main;
        loop {
            self.ws();
            if self.pos >= self.src.len() {
                return Ok(());
            }
            if !self.eat_kw("func") {
                return self.err("expected 'func' or end of input");
            }
            self.function()?;
        }
    }

    fn props(&mut self) -> PResult<Vec<(String, String)>> {
        self.expect("[")?;
        let mut v = Vec::new();
        while !self.eat("]") {
            let k = self.string()?;
            self.expect("=")?;
            v.push((k, self.string()?));
            self.eat(",");
        }
        Ok(v)
    }

    fn opsets(&mut self) -> PResult<Vec<OpsetImport>> {
        self.expect("[")?;
        let mut v = Vec::new();
        while !self.eat("]") {
            let domain = self.string()?;
            self.expect("=")?;
            v.push(OpsetImport {
                domain,
                version: self.int()?,
            });
            self.eat(",");
        }
        Ok(v)
    }

    fn function(&mut self) -> PResult<()> {
        self.expect("{")?;
        let (mut name, mut domain, mut overload, mut doc) =
            (String::new(), String::new(), String::new(), String::new());
        let (mut attributes, mut attribute_defaults, mut opsets, mut metadata_props) =
            (vec![], vec![], vec![], vec![]);
        self.fields(|p, key| {
            match key {
                "name" => name = p.string()?,
                "domain" => domain = p.string()?,
                "overload" => overload = p.string()?,
                "doc" => doc = p.string()?,
                "attributes" => {
                    p.expect("[")?;
                    while !p.eat("]") {
                        attributes.push(p.string()?);
                        p.eat(",");
                    }
                }
                "attribute_defaults" => {
                    p.expect("{")?;
                    attribute_defaults = p.attr_list("}")?;
                }
                "opset_import" => opsets = p.opsets()?,
                "metadata_props" => metadata_props = p.props()?,
                k => return p.err(format!("unknown function field '{k}'")),
            }
            Ok(())
        })?;
        if !self.eat_kw("graph") {
            return self.err("expected the function's 'graph'");
        }
        let graph = self.graph_body()?;
        self.m.functions.push(Function {
            name,
            domain,
            overload,
            graph,
            attributes,
            attribute_defaults,
            opsets,
            doc,
            metadata_props,
        });
        Ok(())
    }

    /// Parses `@name(params) -> (results) [doc(..)] [attributes {..}] { nodes }` after `graph`.
    fn graph_body(&mut self) -> PResult<GraphId> {
        self.expect("@")?;
        let name = self.name()?;
        let mut g = Graph::new(name);
        let mut defs: HashMap<String, ValueId> = HashMap::new();
        let mut pending: Vec<PendingNode> = Vec::new();
        self.expect("(")?;
        let mut inputs = Vec::new();
        while !self.eat(")") {
            let at = self.pos;
            self.expect("%")?;
            let vname = self.name()?;
            self.expect(":")?;
            let ty = self.ty()?;
            let default = if self.eat("=") {
                Some(self.tensor_literal()?)
            } else {
                None
            };
            let id = g.add_node(
                Op::Input { default },
                vec![],
                vec![Output::new(vname.clone(), ty)],
            );
            if defs
                .insert(
                    vname.clone(),
                    ValueId {
                        node: id,
                        output: 0,
                    },
                )
                .is_some()
            {
                return Err(self.err_kind(
                    at,
                    format!("value %{vname} is defined twice"),
                    ParseErrorKind::DuplicateValue(vname),
                ));
            }
            inputs.push(id);
            self.eat(",");
        }
        g.set_inputs(inputs);
        self.expect("->")?;
        self.expect("(")?;
        let mut outs: Vec<(String, String, usize)> = Vec::new();
        while !self.eat(")") {
            let at = self.pos;
            self.expect("%")?;
            let v = self.name()?;
            let exposed = if self.eat_kw("as") {
                self.string()?
            } else {
                v.clone()
            };
            outs.push((v, exposed, at));
            self.eat(",");
        }
        loop {
            if self.eat_kw("doc") {
                self.expect("(")?;
                g.doc = self.string()?;
                self.expect(")")?;
            } else if self.eat_kw("attributes") {
                self.expect("{")?;
                while !self.eat("}") {
                    let key = self.word()?;
                    self.expect("=")?;
                    match key.as_str() {
                        "metadata_props" => g.extra.metadata_props = self.props()?,
                        "quantization_annotations" => {
                            self.expect("[")?;
                            while !self.eat("]") {
                                g.extra.quantization_annotations.push(self.hex()?);
                                self.eat(",");
                            }
                        }
                        k => return self.err(format!("unknown graph attribute '{k}'")),
                    }
                    self.eat(",");
                }
            } else {
                break;
            }
        }
        self.expect("{")?;
        while !self.eat("}") {
            self.statement(&mut g, &mut defs, &mut pending)?;
        }
        for p in pending {
            let mut operands = Vec::with_capacity(p.operands.len());
            for o in p.operands {
                match o {
                    None => operands.push(None),
                    Some((n, at)) => match defs.get(&n) {
                        Some(v) => operands.push(Some(*v)),
                        None => {
                            return Err(self.err_kind(
                                at,
                                format!("use of undefined value %{n}"),
                                ParseErrorKind::UndefinedValue(n.clone()),
                            ))
                        }
                    },
                }
            }
            g.set_operands(p.id, operands);
        }
        for (v, exposed, at) in outs {
            let value = *defs
                .get(&v)
                .ok_or_else(|| self.err_at(at, format!("graph result %{v} is not defined")))?;
            g.outputs.push(GraphOutput {
                value,
                name: exposed,
            });
        }
        Ok(self.m.graphs.alloc(g))
    }

    fn statement(
        &mut self,
        g: &mut Graph,
        defs: &mut HashMap<String, ValueId>,
        pending: &mut Vec<PendingNode>,
    ) -> PResult<()> {
        self.ws();
        let stmt_at = self.pos;
        let mut results: Vec<(String, usize)> = Vec::new();
        loop {
            let at = self.pos;
            if self.eat("_") {
                results.push((String::new(), at));
            } else {
                self.expect("%")?;
                results.push((self.name()?, at));
            }
            if !self.eat(",") {
                break;
            }
        }
        self.expect("=")?;
        self.ws();
        let (op, operands, types) = if self.eat_kw("const") {
            (Op::Const(self.tensor_literal()?), vec![], None)
        } else if self.eat_kw("capture") {
            self.expect(":")?;
            (Op::Capture, vec![], Some(vec![self.ty()?]))
        } else if self.eat_kw("input") {
            self.expect(":")?;
            let ty = self.ty()?;
            let default = if self.eat("=") {
                Some(self.tensor_literal()?)
            } else {
                None
            };
            (Op::Input { default }, vec![], Some(vec![ty]))
        } else {
            let (domain, op_type) = self.op_name()?;
            self.expect("(")?;
            let mut operands = Vec::new();
            while !self.eat(")") {
                let at = self.pos;
                if self.eat("_") {
                    operands.push(None);
                } else {
                    self.expect("%")?;
                    operands.push(Some((self.name()?, at)));
                }
                self.eat(",");
            }
            // An `ortho` op written in its typed syntax; otherwise attributes as for any op.
            let typed = if domain == crate::op_ortho::DOMAIN && self.at_typed_ortho() {
                Some(self.ortho_op(&op_type, &results)?)
            } else {
                None
            };
            let op = match typed {
                Some(op) => op,
                None => {
                    let attrs = if self.eat("{") {
                        self.attr_list("}")?
                    } else {
                        Vec::new()
                    };
                    Op::from_parts(&domain, &op_type, attrs)
                }
            };
            self.expect(":")?;
            let mut tys = vec![self.ty()?];
            while self.eat(",") {
                tys.push(self.ty()?);
            }
            (op, operands, Some(tys))
        };
        let outputs: Vec<Output> = match &op {
            Op::Const(t) => {
                let td = self.m.tensor(*t);
                let ty = Type::Tensor(TensorType::new(
                    td.dtype,
                    td.dims.iter().map(|&d| Dim::Fixed(d)).collect(),
                ));
                results
                    .iter()
                    .map(|(n, _)| Output::new(n.clone(), ty.clone()))
                    .collect()
            }
            _ => {
                let tys = types.unwrap_or_default();
                if tys.len() != results.len() {
                    return Err(self.err_at(
                        stmt_at,
                        format!("{} results but {} types", results.len(), tys.len()),
                    ));
                }
                results
                    .iter()
                    .zip(tys)
                    .map(|((n, _), t)| Output::new(n.clone(), t))
                    .collect()
            }
        };
        let id = g.add_node(op, vec![], outputs);
        loop {
            if self.eat_kw("loc") {
                self.expect("(")?;
                g.node_mut(id).name = self.string()?;
                self.expect(")")?;
            } else if self.eat_kw("doc") {
                self.expect("(")?;
                g.node_mut(id).doc = self.string()?;
                self.expect(")")?;
            } else {
                break;
            }
        }
        for (i, (n, at)) in results.iter().enumerate() {
            if n.is_empty() {
                continue;
            }
            if defs
                .insert(
                    n.clone(),
                    ValueId {
                        node: id,
                        output: i as u32,
                    },
                )
                .is_some()
            {
                return Err(self.err_kind(
                    *at,
                    format!("value %{n} is defined twice"),
                    ParseErrorKind::DuplicateValue(n.clone()),
                ));
            }
        }
        pending.push(PendingNode { id, operands });
        Ok(())
    }

    fn op_name(&mut self) -> PResult<(String, String)> {
        if self.eat("op<") {
            let d = self.string()?;
            self.expect(",")?;
            let t = self.string()?;
            self.expect(">")?;
            return Ok((d, t));
        }
        self.ws();
        let start = self.pos;
        let w = self.word()?;
        if let Some(t) = w.strip_prefix("onnx.") {
            Ok((String::new(), t.to_string()))
        } else if let Some(t) = w.strip_prefix("ortho.") {
            Ok((crate::op_ortho::DOMAIN.to_string(), t.to_string()))
        } else {
            Err(self.err_at(
                start,
                format!(
                    "unknown operation '{w}' (expected onnx.X, ortho.X or op<\"domain\", \"X\">)"
                ),
            ))
        }
    }

    fn attr_list(&mut self, close: &str) -> PResult<Vec<Attr>> {
        let mut v = Vec::new();
        while !self.eat(close) {
            self.ws();
            let name = self.name()?;
            self.expect("=")?;
            let value = self.attr_value()?;
            let mut a = Attr::new(name, value);
            if self.eat_kw("doc") {
                self.expect("(")?;
                a.doc = self.string()?;
                self.expect(")")?;
            }
            v.push(a);
            self.eat(",");
        }
        Ok(v)
    }

    /// Enters one level of nesting, refusing text nested deeper than the limit.
    fn enter(&mut self) -> PResult<()> {
        if self.nesting >= crate::limits::MAX_TEXT_NESTING {
            return self.err(format!(
                "nested more than {} levels deep (brackets, types and subgraphs)",
                crate::limits::MAX_TEXT_NESTING
            ));
        }
        self.nesting += 1;
        Ok(())
    }

    fn attr_value(&mut self) -> PResult<AttrValue> {
        self.enter()?;
        let v = self.attr_value_inner();
        self.nesting -= 1;
        v
    }

    fn attr_value_inner(&mut self) -> PResult<AttrValue> {
        self.ws();
        let r = self.rest();
        if r.starts_with('"') {
            return Ok(AttrValue::String(self.string_bytes()?));
        }
        if r.starts_with("tensor<") {
            return Ok(AttrValue::Tensor(self.tensor_literal()?));
        }
        if self.eat_kw("graph") {
            return Ok(AttrValue::Graph(self.subgraph()?));
        }
        if let Some(b) = self.angled("sparse<", Self::hex)? {
            return Ok(AttrValue::SparseTensor(b));
        }
        if let Some(t) = self.angled("type<", Self::ty)? {
            return Ok(AttrValue::Type(t));
        }
        if self.eat("ref<") {
            let name = self.string()?;
            self.expect(",")?;
            let k = self.word()?;
            let kind = AttrKind::from_name(&k)
                .ok_or_else(|| self.err_at(self.pos, format!("unknown attribute kind '{k}'")))?;
            self.expect(">")?;
            return Ok(AttrValue::Ref { name, kind });
        }
        for (kw, empty) in [
            ("floats[]", AttrValue::Floats(vec![])),
            ("ints[]", AttrValue::Ints(vec![])),
            ("strings[]", AttrValue::Strings(vec![])),
            ("tensors[]", AttrValue::Tensors(vec![])),
            ("graphs[]", AttrValue::Graphs(vec![])),
            ("sparse_tensors[]", AttrValue::SparseTensors(vec![])),
            ("types[]", AttrValue::Types(vec![])),
        ] {
            if self.eat(kw) {
                return Ok(empty);
            }
        }
        if self.eat("[") {
            let first = self.attr_value()?;
            let mut items = vec![first];
            while self.eat(",") {
                items.push(self.attr_value()?);
            }
            self.expect("]")?;
            return self.collect_list(items);
        }
        let start = self.pos;
        let t = self.number_text()?;
        if is_float_text(&t) {
            parse_float32(&t)
                .map(AttrValue::Float)
                .ok_or_else(|| self.err_at(start, "bad float"))
        } else {
            t.parse()
                .map(AttrValue::Int)
                .map_err(|_| self.err_at(start, format!("bad integer '{t}'")))
        }
    }

    fn collect_list(&self, items: Vec<AttrValue>) -> PResult<AttrValue> {
        macro_rules! all {
            ($variant:ident, $list:ident) => {{
                let mut out = Vec::new();
                for i in &items {
                    match i {
                        AttrValue::$variant(x) => out.push(x.clone()),
                        _ => return self.err("mixed kinds in an attribute list"),
                    }
                }
                return Ok(AttrValue::$list(out));
            }};
        }
        match items.first() {
            Some(AttrValue::Float(_)) => all!(Float, Floats),
            Some(AttrValue::Int(_)) => all!(Int, Ints),
            Some(AttrValue::String(_)) => all!(String, Strings),
            Some(AttrValue::Tensor(_)) => all!(Tensor, Tensors),
            Some(AttrValue::Graph(_)) => all!(Graph, Graphs),
            Some(AttrValue::SparseTensor(_)) => all!(SparseTensor, SparseTensors),
            Some(AttrValue::Type(_)) => all!(Type, Types),
            _ => self.err("unsupported attribute list"),
        }
    }

    fn dtype(&mut self) -> PResult<DType> {
        let start = self.pos;
        let w = self.word()?;
        DType::from_name(&w)
            .ok_or_else(|| self.err_at(start, format!("unknown element type '{w}'")))
    }

    /// Parses `dims x ... x dtype` up to (not including) `>`.
    fn tensor_type_body(&mut self) -> PResult<TensorType> {
        if self.eat("*x") {
            let dtype = self.dtype()?;
            return Ok(TensorType { dtype, shape: None });
        }
        let mut dims = Vec::new();
        loop {
            self.ws();
            let r = self.rest();
            if r.starts_with('?') {
                self.pos += 1;
                dims.push(Dim::Unknown);
            } else if r.starts_with('"') {
                dims.push(Dim::Sym(self.string()?));
            } else if r.starts_with(|c: char| c.is_ascii_digit()) {
                let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                let v: i64 = r[..n]
                    .parse()
                    .map_err(|_| self.err_at(self.pos, "dimension too large"))?;
                self.pos += n;
                dims.push(Dim::Fixed(v));
            } else {
                let dtype = self.dtype()?;
                return Ok(TensorType {
                    dtype,
                    shape: Some(dims),
                });
            }
            if !self.rest().starts_with('x') {
                return self.err("expected 'x' after a dimension");
            }
            self.pos += 1;
        }
    }

    /// A subgraph attribute's graph, refusing nesting deeper than ONNX consumers read.
    fn subgraph(&mut self) -> PResult<GraphId> {
        if self.graph_depth >= crate::limits::MAX_GRAPH_DEPTH {
            return self.err(format!(
                "subgraphs nested more than {} levels deep",
                crate::limits::MAX_GRAPH_DEPTH
            ));
        }
        self.graph_depth += 1;
        let g = self.graph_body();
        self.graph_depth -= 1;
        g
    }

    fn ty(&mut self) -> PResult<Type> {
        self.enter()?;
        let t = self.ty_inner();
        self.nesting -= 1;
        t
    }

    fn ty_inner(&mut self) -> PResult<Type> {
        self.ws();
        if self.eat("?") {
            return Ok(Type::Unknown);
        }
        if let Some(t) = self.angled("tensor<", Self::tensor_type_body)? {
            return Ok(Type::Tensor(t));
        }
        if let Some(t) = self.angled("sparse_tensor<", Self::tensor_type_body)? {
            return Ok(Type::SparseTensor(t));
        }
        if let Some(t) = self.angled("seq<", Self::ty)? {
            return Ok(Type::Sequence(Box::new(t)));
        }
        if let Some(t) = self.angled("optional<", Self::ty)? {
            return Ok(Type::Optional(Box::new(t)));
        }
        let map = |p: &mut Self| -> PResult<(DType, Type)> {
            let k = p.dtype()?;
            p.expect(",")?;
            Ok((k, p.ty()?))
        };
        if let Some((k, v)) = self.angled("map<", map)? {
            return Ok(Type::Map(k, Box::new(v)));
        }
        self.err("expected a type")
    }
}

fn is_float_text(t: &str) -> bool {
    t.contains(['.', 'e', 'E']) || t.contains("inf") || t.contains("nan") || t.contains("NaN")
}

fn parse_float(t: &str) -> Option<f64> {
    match t {
        "nan" | "NaN" | "-nan" | "+nan" => Some(f64::NAN),
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

fn parse_float32(t: &str) -> Option<f32> {
    match t {
        "nan" | "NaN" | "-nan" | "+nan" => Some(f32::NAN),
        "inf" | "+inf" => Some(f32::INFINITY),
        "-inf" => Some(f32::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}
