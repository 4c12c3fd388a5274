//! Emitting one POET weight's subgraph (see the module docs of [`crate::poet`] for the layout):
//! ordinary ONNX ops only — Concat/Gather/Transpose/Sub for the skew blocks, MatMul/Add for the
//! Neumann series, Reshape/MatMul (batched over the blocks) for the block-diagonal products,
//! Slice/Concat where a `kind=fs` block covers part of a side, Gather for the permutations —
//! so every op on the gradient path has an `autodiff` rule. Weights are f32 (the training
//! engine's type).

use super::cayley::{tri_count, tri_index};
use super::{PoetRecord, PoetState};
use ortho_ir::{attrs, Dim, Module, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

/// Adds nodes to the main graph with fresh names under `poet/<stem>/`.
pub struct Emitter<'m> {
    pub m: &'m mut Module,
    names: HashMap<String, ValueId>,
    prefix: String,
}

/// An f32 tensor from f64 values (cast once).
pub fn f32_tensor(dims: Vec<i64>, v: &[f64]) -> TensorData {
    TensorData::from_f32(dims, &v.iter().map(|&x| x as f32).collect::<Vec<_>>())
}

impl<'m> Emitter<'m> {
    pub fn new(m: &'m mut Module, stem: &str) -> Self {
        let names = m.main_graph().value_names();
        Emitter {
            m,
            names,
            prefix: format!("poet/{stem}"),
        }
    }

    fn take(&mut self, name: String, v: ValueId) -> String {
        self.names.insert(name.clone(), v);
        name
    }

    fn fresh(&mut self, tag: &str) -> String {
        let base = format!("{}/{tag}", self.prefix);
        self.m.main_graph().fresh_name(&base, &self.names)
    }

    /// A constant named exactly `name` when that name is free (else a fresh one beside it).
    pub fn named_const(&mut self, name: &str, t: TensorData) -> ValueId {
        let ty = Type::tensor(
            t.dtype,
            t.dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>(),
        );
        let name = if self.names.contains_key(name) {
            self.m.main_graph().fresh_name(name, &self.names)
        } else {
            name.to_string()
        };
        let tid = self.m.add_tensor(t);
        let id = self.m.main_graph_mut().add_node(
            Op::Const(tid),
            Vec::new(),
            vec![Output::new(name.clone(), ty)],
        );
        let v = ValueId {
            node: id,
            output: 0,
        };
        self.take(name, v);
        v
    }

    fn konst(&mut self, tag: &str, t: TensorData) -> ValueId {
        let name = self.fresh(tag);
        self.named_const(&name, t)
    }

    fn ints(&mut self, tag: &str, v: &[i64]) -> ValueId {
        self.konst(tag, TensorData::from_i64(vec![v.len() as i64], v))
    }

    fn floats(&mut self, tag: &str, dims: Vec<i64>, v: &[f64]) -> ValueId {
        self.konst(tag, f32_tensor(dims, v))
    }

    pub fn op(&mut self, op: Op, operands: &[ValueId], tag: &str) -> ValueId {
        let name = self.fresh(tag);
        let id = self.m.main_graph_mut().add_node(
            op,
            operands.iter().map(|&v| Some(v)).collect(),
            vec![Output::new(name.clone(), Type::Unknown)],
        );
        let v = ValueId {
            node: id,
            output: 0,
        };
        self.take(name, v);
        v
    }

    fn reshape(&mut self, x: ValueId, shape: &[i64]) -> ValueId {
        let s = self.ints("shape", shape);
        self.op(Op::Reshape(attrs::Reshape::default()), &[x, s], "reshape")
    }

    fn transpose(&mut self, x: ValueId, perm: &[i64]) -> ValueId {
        let op = Op::Transpose(attrs::Transpose {
            perm: Some(perm.to_vec()),
        });
        self.op(op, &[x], "transpose")
    }

    fn slice(&mut self, x: ValueId, start: i64, end: i64, axis: i64) -> ValueId {
        let s = self.ints("starts", &[start]);
        let e = self.ints("ends", &[end]);
        let a = self.ints("axes", &[axis]);
        self.op(Op::Slice, &[x, s, e, a], "slice")
    }

    fn concat(&mut self, parts: &[ValueId], axis: i64) -> ValueId {
        let op = Op::Concat(attrs::Concat { axis: Some(axis) });
        self.op(op, parts, "concat")
    }

    fn gather(&mut self, x: ValueId, idx: ValueId) -> ValueId {
        let op = Op::Gather(attrs::Gather { axis: Some(0) });
        self.op(op, &[x, idx], "gather")
    }

    /// The `nb` orthogonal blocks `[nb, b, b]` of one side from its skew parameters (`nb ·
    /// b(b−1)/2`): the parameters with a zero appended are gathered into the strict upper
    /// triangle (every other entry reads the zero), `Q = A − Aᵀ`, `S ← Q + Q·S` (k − 1 times),
    /// `R = I + (S + S)`.
    pub fn rotations(&mut self, skew: ValueId, nb: usize, b: usize, k: usize) -> ValueId {
        let t = tri_count(b);
        let zero = self.floats("zero", vec![1], &[0.0]);
        let ext = self.concat(&[skew, zero], 0);
        let mut idx = vec![(nb * t) as i64; nb * b * b];
        for blk in 0..nb {
            for i in 0..b {
                for j in i + 1..b {
                    idx[blk * b * b + i * b + j] = (blk * t + tri_index(b, i, j)) as i64;
                }
            }
        }
        let idx = self.konst(
            "triangle",
            TensorData::from_i64(vec![nb as i64, b as i64, b as i64], &idx),
        );
        let a = self.gather(ext, idx);
        let at = self.transpose(a, &[0, 2, 1]);
        let q = self.op(Op::Sub, &[a, at], "skew");
        let mut s = q;
        for _ in 1..k {
            let qs = self.op(Op::MatMul, &[q, s], "neumann");
            s = self.op(Op::Add, &[q, qs], "neumann");
        }
        let s2 = self.op(Op::Add, &[s, s], "twice");
        let mut eye = vec![0.0; b * b];
        for i in 0..b {
            eye[i * b + i] = 1.0;
        }
        let eye = self.floats("identity", vec![b as i64, b as i64], &eye);
        self.op(Op::Add, &[eye, s2], "rotation")
    }

    /// `D·x` for `x` (`rows × cols`) with `D` block-diagonal over the first `nb·b` rows.
    fn left(
        &mut self,
        x: ValueId,
        r: ValueId,
        rows: usize,
        cols: usize,
        nb: usize,
        b: usize,
    ) -> ValueId {
        let l = (nb * b) as i64;
        let (rows, cols) = (rows as i64, cols as i64);
        let head = if l < rows { self.slice(x, 0, l, 0) } else { x };
        let h3 = self.reshape(head, &[nb as i64, b as i64, cols]);
        let y3 = self.op(Op::MatMul, &[r, h3], "rotate_rows");
        let y = self.reshape(y3, &[l, cols]);
        if l < rows {
            let rest = self.slice(x, l, rows, 0);
            self.concat(&[y, rest], 0)
        } else {
            y
        }
    }

    /// `x·D` for `x` (`rows × cols`) with `D` block-diagonal over the first `nb·b` columns.
    fn right(
        &mut self,
        x: ValueId,
        r: ValueId,
        rows: usize,
        cols: usize,
        nb: usize,
        b: usize,
    ) -> ValueId {
        let l = (nb * b) as i64;
        let (rows, cols) = (rows as i64, cols as i64);
        let head = if l < cols { self.slice(x, 0, l, 1) } else { x };
        let h3 = self.reshape(head, &[rows, nb as i64, b as i64]);
        let ht = self.transpose(h3, &[1, 0, 2]);
        let y3 = self.op(Op::MatMul, &[ht, r], "rotate_cols");
        let yt = self.transpose(y3, &[1, 0, 2]);
        let y = self.reshape(yt, &[rows, l]);
        if l < cols {
            let rest = self.slice(x, l, cols, 1);
            self.concat(&[y, rest], 1)
        } else {
            y
        }
    }
}

/// Emits the subgraph of one POET weight with `state`'s tensors as named constants (base,
/// permutations, skew parameters) and returns its result, the weight as stored. The last node
/// carries the record in its `doc`.
pub fn emit_weight(m: &mut Module, rec: &PoetRecord, state: &PoetState) -> ValueId {
    let (rows, cols, b) = (state.rows, state.cols, state.block);
    let t = tri_count(b);
    let (nr, nc) = (state.skew_rows.len() / t, state.skew_cols.len() / t);
    let mut e = Emitter::new(m, &rec.stem);
    let floats = f32_tensor;
    let ints = |v: &[usize]| {
        TensorData::from_i64(
            vec![v.len() as i64],
            &v.iter().map(|&x| x as i64).collect::<Vec<_>>(),
        )
    };
    let base = e.named_const(
        &rec.base_name(),
        floats(vec![rows as i64, cols as i64], &state.base),
    );
    let rp = e.named_const(&rec.rows_perm_name(), ints(&state.rows_perm));
    let cp = e.named_const(&rec.cols_perm_name(), ints(&state.cols_perm));
    let sr = e.named_const(
        &rec.skew_rows_name(),
        floats(vec![state.skew_rows.len() as i64], &state.skew_rows),
    );
    let sc = e.named_const(
        &rec.skew_cols_name(),
        floats(vec![state.skew_cols.len() as i64], &state.skew_cols),
    );
    let r_rows = e.rotations(sr, nr, b, state.terms);
    let r_cols = e.rotations(sc, nc, b, state.terms);
    let m1 = e.left(base, r_rows, rows, cols, nr, b);
    let m2 = e.right(m1, r_cols, rows, cols, nc, b);
    let g1 = e.gather(m2, rp);
    let t1 = e.transpose(g1, &[1, 0]);
    let g2 = e.gather(t1, cp);
    let out = e.transpose(g2, &[1, 0]);
    e.m.main_graph_mut().node_mut(out.node).doc = rec.to_doc();
    out
}
