//! `lower-ortho`: turns every op of ortho-opt's own domain back into standard ONNX ops, so that
//! the module exports as a model any ONNX runtime accepts.
//!
//! Needs: nothing. An `ortho` op this pass cannot lower, or a malformed one, is an error naming
//! the node (the module is then left partly lowered, as the manager documents for errors).
//! Leaves: no op in domain `ortho` in any reachable graph, and no `ortho` opset import.
//!
//! `ortho.FactorizedLinear` becomes Reshape/Transpose/MatMul/ReduceSum (see
//! `crate::factorize::lower`).
//!
//! `ortho.SparseLinear` becomes `MatMul(x, W)` with the dense weight expanded exactly from the
//! compact one (see `crate::sparse::lower`), unless [`lower_ortho_with`] is asked to keep the
//! compact form (`--emit-sparse`): then those nodes, and the `ortho` opset import, stay.
//!
//! `ortho.FusedElementwise` becomes one ONNX op per instruction: unary ops as themselves,
//! `add sub mul div` as Add/Sub/Mul/Div, `max min` as two-operand Max/Min, `powi`/`powf` as Pow
//! with an f32 scalar exponent constant, and `const` as an f32 scalar constant. The fused node
//! itself becomes the op of the last instruction, keeping its name, location, result name and
//! type; the other results get fresh names derived from it (`%y_f3` for register 3 of `%y`).

use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::fused::{Binary, FusedElementwise, Instr};
use ortho_ir::op_ortho::{malformed, OrthoOp, DOMAIN};
use ortho_ir::{Dim, Graph, GraphId, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

crate::declare_pass! {
    name: "lower-ortho",
    summary: "Rewrites ortho.* ops (fused elementwise regions) into standard ONNX ops.",
    run: run_pass,
}

/// What [`lower_ortho`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LowerOrthoStats {
    /// `ortho` nodes lowered.
    pub lowered: usize,
    /// ONNX nodes created for them (constants included, the reused node not counted).
    pub created: usize,
}

/// What becomes of `ortho.SparseLinear` nodes when lowering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SparseExport {
    /// Expanded to a dense `MatMul` (what every ONNX runtime loads).
    #[default]
    Dense,
    /// Kept in the compact form (read back by ortho-opt; see `ortho_ir::sparse`).
    Compact,
}

/// Lowers every `ortho` op of every reachable graph.
pub fn lower_ortho(m: &mut Module) -> Result<LowerOrthoStats, PassError> {
    lower_ortho_with(m, SparseExport::Dense)
}

/// Lowers every `ortho` op of every reachable graph, sparse linears as `sparse` says.
pub fn lower_ortho_with(
    m: &mut Module,
    sparse: SparseExport,
) -> Result<LowerOrthoStats, PassError> {
    let mut stats = LowerOrthoStats::default();
    for g in m.reachable_graphs() {
        let graph = m.graph(g);
        let Ok(order) = graph.toposort() else {
            return Err(PassError::new(format!(
                "graph @{} has a cycle; nothing was lowered in it",
                graph.name
            ))
            .in_graph(g));
        };
        let mut work = Vec::new();
        let mut factorized = Vec::new();
        let mut sparse_nodes = Vec::new();
        for id in order {
            let op = &graph.node(id).op;
            let f = match op {
                Op::Ortho(OrthoOp::FusedElementwise(f)) => f,
                Op::Ortho(OrthoOp::Factorized(f)) => {
                    factorized.push((id, *f));
                    continue;
                }
                Op::Ortho(OrthoOp::SparseLinear(p)) => {
                    if sparse == SparseExport::Dense {
                        sparse_nodes.push((id, *p));
                    }
                    continue;
                }
                Op::Opaque(_) if op.domain() == DOMAIN => {
                    // An `ortho` node the import could not type says why; an unknown one has
                    // no lowering.
                    let msg = match malformed(op) {
                        Some(e) => e.to_string(),
                        None => format!("no lowering for {DOMAIN}.{}", op.name()),
                    };
                    return Err(PassError::at(graph, id, msg).in_graph(g));
                }
                _ => continue,
            };
            // Register indices are trusted below, so an invalid program is refused first.
            if let Err(e) = f.validate() {
                return Err(PassError::at(graph, id, e.to_string()).in_graph(g));
            }
            if f.forms.len() != graph.node(id).operands().len() {
                return Err(PassError::at(
                    graph,
                    id,
                    format!(
                        "has {} operands but its program has {} operand forms",
                        graph.node(id).operands().len(),
                        f.forms.len()
                    ),
                )
                .in_graph(g));
            }
            work.push((id, f.clone()));
        }
        for (id, f) in work {
            lower_node(m, g, id, &f, &mut stats)?;
            stats.lowered += 1;
        }
        for (id, p) in sparse_nodes {
            stats.created += crate::sparse::lower::lower_sparse(m, g, id, p)
                .map_err(|e| PassError::at(m.graph(g), id, e.to_string()).in_graph(g))?;
            stats.lowered += 1;
        }
        // The Kronecker lowering needs each input's rank, which an imported model may not
        // declare: infer the graph's types once, before anything changes.
        let types = (!factorized.is_empty())
            .then(|| ortho_ir::shape::infer_types(m, g).ok())
            .flatten();
        for (id, f) in factorized {
            stats.created += crate::factorize::lower::lower_factorized(m, g, id, f, types.as_ref())
                .map_err(|e| PassError::at(m.graph(g), id, e.to_string()))?;
            stats.lowered += 1;
        }
    }
    if !any_ortho_ops(m) {
        m.opsets.retain(|o| o.domain != DOMAIN);
    }
    Ok(stats)
}

fn any_ortho_ops(m: &Module) -> bool {
    m.reachable_graphs().into_iter().any(|g| {
        let graph = m.graph(g);
        graph
            .node_ids()
            .into_iter()
            .any(|n| graph.node(n).op.domain() == DOMAIN)
    })
}

/// The shape two f32 operands broadcast to (`ortho_ir::semantics::broadcast`), as far as it is
/// known without a verifier: conflicting fixed sizes leave every dim unknown.
fn broadcast(a: &Type, b: &Type) -> Type {
    let (Some(x), Some(y)) = (
        a.as_tensor().and_then(|t| t.shape.as_ref()),
        b.as_tensor().and_then(|t| t.shape.as_ref()),
    ) else {
        return Type::Unknown;
    };
    let dims = ortho_ir::semantics::broadcast::broadcast_symbolic(x, y)
        .unwrap_or_else(|_| vec![Dim::Unknown; x.len().max(y.len())]);
    Type::tensor(ortho_ir::DType::F32, dims)
}

fn binary_op(b: Binary) -> Op {
    match b {
        Binary::Add => Op::Add,
        Binary::Sub => Op::Sub,
        Binary::Mul => Op::Mul,
        Binary::Div => Op::Div,
        Binary::Max => Op::Max,
        Binary::Min => Op::Min,
    }
}

/// Names for new values, unique in the graph.
struct Names {
    taken: HashMap<String, ValueId>,
}

impl Names {
    fn fresh(&mut self, graph: &Graph, base: &str, v: ValueId) -> String {
        let name = graph.fresh_name(base, &self.taken);
        self.taken.insert(name.clone(), v);
        name
    }
}

fn lower_node(
    m: &mut Module,
    g: GraphId,
    id: NodeId,
    f: &FusedElementwise,
    stats: &mut LowerOrthoStats,
) -> Result<(), PassError> {
    let (operands, root_name, root_ty, node_name) = {
        let graph = m.graph(g);
        let node = graph.node(id);
        let ops: Option<Vec<ValueId>> = node.operands().iter().copied().collect();
        let Some(ops) = ops else {
            return Err(
                PassError::at(graph, id, "an operand of a fused node is omitted").in_graph(g),
            );
        };
        let out = node
            .outputs
            .first()
            .ok_or_else(|| PassError::at(graph, id, "a fused node has no result").in_graph(g))?;
        (ops, out.name.clone(), out.ty.clone(), node.name.clone())
    };
    let mut names = Names {
        taken: m.graph(g).value_names(),
    };
    let scalar_ty = Type::tensor(ortho_ir::DType::F32, Vec::new());
    // Register → (value, type). The last instruction is built on the fused node itself.
    let mut regs: Vec<(ValueId, Type)> = Vec::with_capacity(f.program.len());
    let last = f.program.len() - 1;
    for (i, ins) in f.program.iter().enumerate() {
        // The op and operands of this instruction, or an existing value (input, constant).
        let (op, args): (Op, Vec<ValueId>) = match *ins {
            Instr::Input(k) => {
                let v = operands[k as usize];
                let ty = m.graph(g).value_type(v).clone();
                if i == last {
                    (Op::Identity, vec![v])
                } else {
                    regs.push((v, ty));
                    continue;
                }
            }
            Instr::Const(c) => {
                let v = new_const(m, g, c, &root_name, &mut names, stats);
                if i == last {
                    (Op::Identity, vec![v])
                } else {
                    regs.push((v, scalar_ty.clone()));
                    continue;
                }
            }
            Instr::Unary(u, r) => {
                // `validate` admits only fusible unary ops, which all have an ONNX op.
                let op = u.fusible_op().ok_or_else(|| {
                    PassError::at(m.graph(g), id, format!("{} cannot be lowered", u.name()))
                        .in_graph(g)
                })?;
                (op, vec![regs[r as usize].0])
            }
            Instr::Binary(b, x, y) => (binary_op(b), vec![regs[x as usize].0, regs[y as usize].0]),
            Instr::Powi(r, n) => {
                let e = new_const(m, g, n as f32, &root_name, &mut names, stats);
                (Op::Pow, vec![regs[r as usize].0, e])
            }
            Instr::Powf(r, e) => {
                let e = new_const(m, g, e, &root_name, &mut names, stats);
                (Op::Pow, vec![regs[r as usize].0, e])
            }
        };
        let ty = match *ins {
            Instr::Binary(_, x, y) => broadcast(&regs[x as usize].1, &regs[y as usize].1),
            Instr::Unary(_, r) | Instr::Powi(r, _) | Instr::Powf(r, _) => {
                regs[r as usize].1.clone()
            }
            _ => root_ty.clone(),
        };
        let graph = m.graph_mut(g);
        if i == last {
            graph.node_mut(id).op = op;
            graph.set_operands(id, args.into_iter().map(Some).collect());
        } else {
            let n = graph.add_node(op, args.into_iter().map(Some).collect(), Vec::new());
            let v = ValueId { node: n, output: 0 };
            let name = names.fresh(graph, &format!("{root_name}_f{i}"), v);
            let node = graph.node_mut(n);
            node.outputs.push(Output::new(name, ty.clone()));
            node.name = if node_name.is_empty() {
                String::new()
            } else {
                format!("{node_name}/f{i}")
            };
            stats.created += 1;
            regs.push((v, ty));
        }
    }
    Ok(())
}

/// A new f32 scalar constant node.
fn new_const(
    m: &mut Module,
    g: GraphId,
    c: f32,
    base: &str,
    names: &mut Names,
    stats: &mut LowerOrthoStats,
) -> ValueId {
    let t = m.add_tensor(TensorData::from_f32(Vec::new(), &[c]));
    let graph = m.graph_mut(g);
    let n = graph.add_node(Op::Const(t), Vec::new(), Vec::new());
    let v = ValueId { node: n, output: 0 };
    let name = names.fresh(graph, &format!("{base}_c"), v);
    graph.node_mut(n).outputs.push(Output::new(
        name,
        Type::tensor(ortho_ir::DType::F32, Vec::new()),
    ));
    stats.created += 1;
    v
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let s = lower_ortho(m)?;
    cx.stat("lowered", s.lowered as u64);
    cx.stat("created", s.created as u64);
    Ok(PassResult::changed(s.lowered > 0))
}
