//! Adding the cache's nodes to the main graph: fresh names under `kv_cache/`, small integer
//! constants, and typed graph inputs and outputs.

use ortho_ir::{attrs, DType, Dim, Module, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

/// Writes new nodes into the main graph of a module.
pub struct Emit<'m> {
    pub m: &'m mut Module,
    taken: HashMap<String, ValueId>,
}

impl<'m> Emit<'m> {
    pub fn new(m: &'m mut Module) -> Self {
        let taken = m.main_graph().value_names();
        Emit { m, taken }
    }

    /// A fresh value name from `base`, reserved for `v`.
    fn name(&mut self, base: &str, v: ValueId) -> String {
        let n = self.m.main_graph().fresh_name(base, &self.taken);
        self.taken.insert(n.clone(), v);
        n
    }

    /// A node with one result of type `ty` named from `tag`.
    pub fn one(&mut self, op: Op, operands: &[ValueId], tag: &str, ty: Type) -> ValueId {
        let g = self.m.main_graph_mut();
        let id = g.add_node(op, operands.iter().map(|&v| Some(v)).collect(), Vec::new());
        let v = ValueId {
            node: id,
            output: 0,
        };
        let name = self.name(&format!("kv_cache/{tag}"), v);
        self.m
            .main_graph_mut()
            .node_mut(id)
            .outputs
            .push(Output::new(name, ty));
        v
    }

    /// A node with as many results as `like` has, typed unknown (shape inference types them).
    pub fn copy_of(
        &mut self,
        op: Op,
        operands: Vec<Option<ValueId>>,
        results: usize,
        tag: &str,
    ) -> Vec<ValueId> {
        let g = self.m.main_graph_mut();
        let id = g.add_node(op, operands, Vec::new());
        (0..results as u32)
            .map(|output| {
                let v = ValueId { node: id, output };
                let name = self.name(&format!("kv_cache/{tag}"), v);
                self.m
                    .main_graph_mut()
                    .node_mut(id)
                    .outputs
                    .push(Output::new(name, Type::Unknown));
                v
            })
            .collect()
    }

    /// A 1-D i64 constant.
    pub fn ints(&mut self, v: &[i64], tag: &str) -> ValueId {
        let t = TensorData::from_i64(vec![v.len() as i64], v);
        let tid = self.m.add_tensor(t);
        let ty = Type::tensor(DType::I64, vec![Dim::Fixed(v.len() as i64)]);
        self.one(Op::Const(tid), &[], tag, ty)
    }

    /// `Shape(x)`.
    pub fn shape(&mut self, x: ValueId, tag: &str) -> ValueId {
        self.one(Op::Shape(attrs::Shape::default()), &[x], tag, Type::Unknown)
    }

    /// `Slice(x, starts, ends, axes)` with 1-D i64 operands.
    pub fn slice(
        &mut self,
        x: ValueId,
        starts: ValueId,
        ends: ValueId,
        axes: ValueId,
        tag: &str,
    ) -> ValueId {
        self.one(Op::Slice, &[x, starts, ends, axes], tag, Type::Unknown)
    }

    /// `Concat(xs, axis)`.
    pub fn concat(&mut self, xs: &[ValueId], axis: i64, tag: &str, ty: Type) -> ValueId {
        self.one(Op::Concat(attrs::Concat { axis: Some(axis) }), xs, tag, ty)
    }

    /// A new graph input.
    pub fn input(&mut self, name: &str, ty: Type) -> ValueId {
        let g = self.m.main_graph_mut();
        let v = g.add_input(name, ty);
        self.taken.insert(name.to_string(), v);
        v
    }
}
