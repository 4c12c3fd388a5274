//! Emitting the backward graph: fresh names, typed scalar constants, and the few composite
//! helpers every gradient rule uses (reducing a broadcast gradient back to its operand's shape,
//! reshaping to an operand's shape, zeros of a value's shape).
//!
//! The builder writes into the main graph of the module it holds. New values are created with
//! `Type::Unknown`; the driver re-runs shape inference once at the end, so rules never compute
//! result types by hand.

use super::AutodiffError;
use ortho_ir::semantics::broadcast::broadcast_dim;
use ortho_ir::{attrs, DType, Dim, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

/// Appends gradient ops to the main graph of a module.
pub struct Builder<'m> {
    pub m: &'m mut Module,
    names: HashMap<String, ValueId>,
    /// The default-domain opset, which decides whether axes are attributes or operands.
    pub opset: i64,
    /// Nodes emitted so far (statistics).
    pub emitted: usize,
    /// The node whose gradient is being emitted; names and errors refer to it.
    pub site: Option<NodeId>,
}

pub type BResult<T> = Result<T, AutodiffError>;

impl<'m> Builder<'m> {
    pub fn new(m: &'m mut Module) -> Self {
        let names = m.main_graph().value_names();
        let opset = m.opset("").unwrap_or(1);
        Builder {
            m,
            names,
            opset,
            emitted: 0,
            site: None,
        }
    }

    /// The type of a value of the main graph.
    pub fn ty(&self, v: ValueId) -> &Type {
        self.m.main_graph().value_type(v)
    }

    /// The shape of `v` when its rank is known.
    pub fn dims(&self, v: ValueId) -> BResult<Vec<Dim>> {
        self.ty(v)
            .as_tensor()
            .and_then(|t| t.shape.clone())
            .ok_or_else(|| self.err_rank(v))
    }

    pub fn rank(&self, v: ValueId) -> BResult<usize> {
        Ok(self.dims(v)?.len())
    }

    /// The element type of `v`; gradients exist for f32 and f64 only.
    pub fn dtype(&self, v: ValueId) -> BResult<DType> {
        match self.ty(v).dtype() {
            Some(d @ (DType::F32 | DType::F64)) => Ok(d),
            other => Err(AutodiffError::DType {
                value: self.m.main_graph().value_name(v).to_string(),
                dtype: other.map(|d| d.name()).unwrap_or_else(|| "unknown".into()),
            }),
        }
    }

    fn err_rank(&self, v: ValueId) -> AutodiffError {
        AutodiffError::UnknownRank {
            value: self.m.main_graph().value_name(v).to_string(),
            node: self.site_name(),
        }
    }

    /// How the node being differentiated is named, for errors.
    pub fn site_name(&self) -> String {
        self.site
            .map(|n| self.m.main_graph().describe(n))
            .unwrap_or_default()
    }

    fn fresh(&mut self, tag: &str) -> String {
        let base = match self.site {
            Some(n) => {
                let g = self.m.main_graph();
                let first = g.node(n).outputs.first().map(|o| o.name.as_str());
                format!("grad/{}/{tag}", first.unwrap_or("node"))
            }
            None => format!("grad/{tag}"),
        };
        let s = self.m.main_graph().fresh_name(&base, &self.names);
        // The placeholder id is never read: the map only records which names are taken.
        self.names.insert(
            s.clone(),
            ValueId {
                node: self.site.unwrap_or_else(|| self.m.main_graph().inputs()[0]),
                output: 0,
            },
        );
        s
    }

    /// Adds a node with `n_out` results named after `tag`.
    pub fn node(&mut self, op: Op, operands: &[ValueId], n_out: usize, tag: &str) -> Vec<ValueId> {
        let outs: Vec<Output> = (0..n_out)
            .map(|_| Output::new(self.fresh(tag), Type::Unknown))
            .collect();
        let ops = operands.iter().map(|&v| Some(v)).collect();
        let id = self.m.main_graph_mut().add_node(op, ops, outs);
        self.emitted += 1;
        (0..n_out as u32)
            .map(|output| ValueId { node: id, output })
            .collect()
    }

    /// A node with one result.
    pub fn one(&mut self, op: Op, operands: &[ValueId], tag: &str) -> ValueId {
        self.node(op, operands, 1, tag)[0]
    }

    /// A constant node holding `t`.
    pub fn konst(&mut self, t: TensorData, tag: &str) -> ValueId {
        let ty = Type::tensor(
            t.dtype,
            t.dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>(),
        );
        let tid = self.m.add_tensor(t);
        let name = self.fresh(tag);
        let id = self.m.main_graph_mut().add_node(
            Op::Const(tid),
            Vec::new(),
            vec![Output::new(name, ty)],
        );
        self.emitted += 1;
        ValueId {
            node: id,
            output: 0,
        }
    }

    /// A scalar constant of element type `dt` (f32 or f64).
    pub fn scalar(&mut self, dt: DType, x: f64, tag: &str) -> ValueId {
        self.konst(scalar_tensor(dt, x, vec![]), tag)
    }

    /// A 1-D i64 constant (axes, shapes, split sizes).
    pub fn ints(&mut self, v: &[i64], tag: &str) -> ValueId {
        self.konst(TensorData::from_i64(vec![v.len() as i64], v), tag)
    }

    pub fn shape_of(&mut self, v: ValueId) -> ValueId {
        self.one(Op::Shape(attrs::Shape::default()), &[v], "shape")
    }

    /// `dy` reshaped to the shape `like` has at run time.
    pub fn reshape_like(&mut self, dy: ValueId, like: ValueId) -> ValueId {
        let s = self.shape_of(like);
        self.one(Op::Reshape(attrs::Reshape::default()), &[dy, s], "reshape")
    }

    /// Zeros with the shape and element type of `like`.
    pub fn zeros_like(&mut self, like: ValueId) -> BResult<ValueId> {
        let dt = self.dtype(like)?;
        let s = self.shape_of(like);
        let z = self.m.add_tensor(scalar_tensor(dt, 0.0, vec![1]));
        Ok(self.one(
            Op::ConstantOfShape(attrs::ConstantOfShape { value: Some(z) }),
            &[s],
            "zeros",
        ))
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.one(Op::Add, &[a, b], "add")
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.one(Op::Sub, &[a, b], "sub")
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.one(Op::Mul, &[a, b], "mul")
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.one(Op::Div, &[a, b], "div")
    }
    pub fn neg(&mut self, a: ValueId) -> ValueId {
        self.one(Op::Neg, &[a], "neg")
    }

    /// `x * c` for a constant `c` of `x`'s element type.
    pub fn scale(&mut self, x: ValueId, like: ValueId, c: f64) -> BResult<ValueId> {
        let dt = self.dtype(like)?;
        let k = self.scalar(dt, c, "k");
        Ok(self.mul(x, k))
    }

    /// `ReduceSum(x, axes, keepdims)`, axes as an operand from opset 13 on, else an attribute.
    pub fn reduce_sum(&mut self, x: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        let keep = Some(i64::from(keepdims));
        if self.opset >= 13 {
            let a = self.ints(axes, "axes");
            let op = Op::ReduceSum(attrs::ReduceSum {
                keepdims: keep,
                ..Default::default()
            });
            self.one(op, &[x, a], "sum")
        } else {
            let op = Op::ReduceSum(attrs::ReduceSum {
                axes: Some(axes.to_vec()),
                keepdims: keep,
                ..Default::default()
            });
            self.one(op, &[x], "sum")
        }
    }

    /// `ReduceMean(x, axes, keepdims = 1)`, axes as an operand from opset 18 on.
    pub fn reduce_mean(&mut self, x: ValueId, axes: &[i64]) -> ValueId {
        if self.opset >= 18 {
            let a = self.ints(axes, "axes");
            let op = Op::ReduceMean(attrs::ReduceMean {
                keepdims: Some(1),
                ..Default::default()
            });
            self.one(op, &[x, a], "mean")
        } else {
            let op = Op::ReduceMean(attrs::ReduceMean {
                axes: Some(axes.to_vec()),
                keepdims: Some(1),
                ..Default::default()
            });
            self.one(op, &[x], "mean")
        }
    }

    /// `Unsqueeze(x, axes)` in the opset's form.
    pub fn unsqueeze(&mut self, x: ValueId, axes: &[i64]) -> ValueId {
        if self.opset >= 13 {
            let a = self.ints(axes, "axes");
            self.one(Op::Unsqueeze, &[x, a], "unsqueeze")
        } else {
            let op = Op::Opaque(ortho_ir::Opaque {
                domain: String::new(),
                op_type: "Unsqueeze".into(),
                attrs: vec![ortho_ir::Attr::new(
                    "axes",
                    ortho_ir::AttrValue::Ints(axes.to_vec()),
                )],
            });
            self.one(op, &[x], "unsqueeze")
        }
    }

    pub fn transpose(&mut self, x: ValueId, perm: Vec<i64>) -> ValueId {
        let op = Op::Transpose(attrs::Transpose { perm: Some(perm) });
        self.one(op, &[x], "transpose")
    }

    /// Reduces `dy`, the gradient of a broadcast result whose shape is `out`, back to the shape
    /// of the operand `a` (numpy broadcasting read backwards): leading axes `a` lacks and axes
    /// where `a` has a 1 against a larger dim are summed. Each aligned pair is checked with the
    /// shared broadcast rule; a pair whose broadcasting is decided only at run time (a symbol
    /// beside a different dim) is an error rather than a guess.
    pub fn sum_to(&mut self, dy: ValueId, a: ValueId, out: &[Dim]) -> BResult<ValueId> {
        let ad = self.dims(a)?;
        if ad.len() > out.len() {
            return Err(self.err_broadcast(a));
        }
        let lead = out.len() - ad.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, d) in ad.iter().enumerate() {
            let o = &out[lead + i];
            match broadcast_dim(d, o) {
                Ok(r) if r == *o && d == o => {}
                Ok(r) if r == *o && *d == Dim::Fixed(1) => axes.push((lead + i) as i64),
                _ => return Err(self.err_broadcast(a)),
            }
        }
        if axes.is_empty() {
            return Ok(dy);
        }
        let r = self.reduce_sum(dy, &axes, true);
        Ok(if lead > 0 { self.reshape_like(r, a) } else { r })
    }

    fn err_broadcast(&self, v: ValueId) -> AutodiffError {
        AutodiffError::Broadcast {
            value: self.m.main_graph().value_name(v).to_string(),
            node: self.site_name(),
        }
    }

    /// The integer values of a constant operand (an `onnx.Const` initializer or an
    /// `onnx.Constant`), e.g. axes given as an operand.
    pub fn const_ints(&self, v: ValueId) -> Option<Vec<i64>> {
        let g = self.m.main_graph();
        match &g.node(v.node).op {
            Op::Const(t) => self.m.tensor(*t).to_i64_vec(),
            Op::Constant(a) => match (&a.value, &a.value_ints, a.value_int) {
                (Some(t), _, _) => self.m.tensor(*t).to_i64_vec(),
                (_, Some(v), _) => Some(v.clone()),
                (_, _, Some(x)) => Some(vec![x]),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A tensor of shape `dims` filled with `x`, in element type `dt` (f32, else f64).
pub fn scalar_tensor(dt: DType, x: f64, dims: Vec<i64>) -> TensorData {
    let n: i64 = dims.iter().product();
    let vals = vec![x; n.max(0) as usize];
    typed_tensor(dt, dims, &vals)
}

/// A 1-D tensor of `vals` in element type `dt` (f32, else f64).
pub fn vector_tensor(dt: DType, vals: &[f64]) -> TensorData {
    typed_tensor(dt, vec![vals.len() as i64], vals)
}

fn typed_tensor(dt: DType, dims: Vec<i64>, vals: &[f64]) -> TensorData {
    if dt == DType::F32 {
        let v: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
        TensorData::from_f32(dims, &v)
    } else {
        let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData::from_bytes(DType::F64, dims, bytes)
    }
}
