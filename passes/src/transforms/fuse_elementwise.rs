//! `fuse-elementwise`: collapses regions of f32 elementwise ops into `ortho.FusedElementwise`
//! nodes (see `ortho_ir::fused` for the op and its program).
//!
//! Needs: value types. The pass infers them itself (`ortho_ir::shape`), so running
//! `infer-shapes` first changes nothing, but only values whose element type is f32 and whose
//! shape is known (numbers or symbols, no `?`) take part.
//! Leaves: every maximal region of at least `min-ops` fusible ops replaced by one fused node,
//! which takes over the region root's node (its name, location, result name and type), and the
//! `ortho` opset imported (version 1). `lower-ortho` turns the nodes back into ONNX ops.
//!
//! Fusible ops: Add, Sub, Mul, Div, Neg, Abs, Sqrt, Reciprocal, Exp, Log, Tanh, Sigmoid, Relu,
//! Erf, Max/Min/Sum (any arity), Clip (bounds become max/min), Pow with a constant scalar
//! exponent (integers up to 4 in magnitude by multiplication, others through powf), and
//! Identity and Cast to f32 of an f32 value (no instruction). Every operand and result must be f32.
//!
//! A region grows from its root (the last op, in topological order) toward its operands: an op
//! joins when every user of its result is already in the region (so no intermediate value is
//! needed elsewhere; a value used twice inside the region is computed once), its result is no
//! graph output and no subgraph captures it, and each of its operands broadcasts to the root's
//! shape in one of the supported forms (`ortho_ir::fused::Form`): the full shape, a scalar, a
//! vector along the last axis, or one value per row (`[..., 1]`). A middle-axis broadcast
//! (`[b, 1, k]` into `[b, s, k]`) or an unknown dimension stops the region there. Identity and
//! Cast only join regions, never start one. Scalar f32 constants are folded into the program
//! as constants instead of becoming operands (unless that would lower the result's rank).

use crate::captures::captured_names;
use crate::options::OptionKind;
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::fused::{Binary, Form, FusedElementwise, Instr, Reg, Unary};
use ortho_ir::op_ortho::{OrthoOp, DOMAIN};
use ortho_ir::shape::{infer_graph, InferOptions, Scope};
use ortho_ir::tensor::Storage;
use ortho_ir::{DType, Dim, GraphId, Module, NodeId, Op, OpsetImport, Type, ValueId};
use std::collections::{HashMap, HashSet};

crate::pass_options! {
    /// Options of [`fuse_elementwise`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FuseElementwiseOptions {
        /// Smallest region, in computing ops (`min-ops`).
        pub min_ops: usize = {
            name: "min-ops",
            default: 2,
            doc: "Smallest number of computing ops (Identity and Cast not counted) a region needs to be fused.",
            kind: OptionKind::Int { min: 1, max: 1_000_000 },
        },
    }
}

crate::declare_pass! {
    name: "fuse-elementwise",
    summary: "Fuses chains of f32 elementwise ops into ortho.FusedElementwise nodes (lower-ortho undoes it).",
    options: FuseElementwiseOptions,
    run: run_pass,
}

/// What [`fuse_elementwise`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseElementwiseStats {
    /// Fused nodes created.
    pub regions: usize,
    /// Ops absorbed into them (Identity and Cast included).
    pub ops: usize,
    /// Regions found but left alone because they had fewer than `min-ops` computing ops.
    pub too_small: usize,
}

/// Fuses elementwise regions in every reachable graph.
pub fn fuse_elementwise(m: &mut Module, opts: &FuseElementwiseOptions) -> FuseElementwiseStats {
    let mut stats = FuseElementwiseStats::default();
    for g in m.reachable_graphs() {
        let plans = plan(m, g, opts, &mut stats);
        for p in plans {
            stats.regions += 1;
            stats.ops += p.members.len();
            apply(m, g, p);
        }
    }
    if stats.regions > 0 && m.opset(DOMAIN).is_none() {
        m.opsets.push(OpsetImport {
            domain: DOMAIN.to_string(),
            version: 1,
        });
    }
    stats
}

/// How a fusible node computes its result from its operands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Unary(Unary),
    Binary(Binary),
    /// Max, Min, Sum: a left fold over every operand.
    Fold(Binary),
    /// Pow with a constant exponent (operand 1, which is not a value operand).
    Pow(f32),
    /// Clip(x, min?, max?).
    Clip,
    /// Identity, Cast to f32 of f32.
    Pass,
}

impl Kind {
    fn computes(self) -> bool {
        self != Kind::Pass
    }
}

/// A fusible node: its kind and the operands whose values it reads (slot order).
#[derive(Debug, Clone)]
struct Fusible {
    kind: Kind,
    /// Value operands with their slot (Pow's exponent is not one of them).
    operands: Vec<(usize, ValueId)>,
}

struct Region {
    root: NodeId,
    /// Members in topological order, the root last.
    members: Vec<NodeId>,
    program: FusedElementwise,
    leaves: Vec<ValueId>,
}

/// The shape of a value when it is an f32 tensor of known rank with no unknown dimension.
fn f32_shape(types: &HashMap<ValueId, Type>, v: ValueId) -> Option<&[Dim]> {
    let t = types.get(&v)?.as_tensor()?;
    let s = t.shape.as_deref()?;
    (t.dtype == DType::F32 && s.iter().all(|d| *d != Dim::Unknown)).then_some(s)
}

/// The value of a constant with one element, as f64 (any numeric dtype), and its rank.
fn scalar_const(m: &Module, g: GraphId, v: ValueId) -> Option<(f64, usize, DType)> {
    let graph = m.graph(g);
    let Op::Const(t) = graph.node(v.node).op else {
        return None;
    };
    let td = m.tensor(t);
    if td.numel()? != 1 || matches!(td.storage, Storage::Elided { .. }) {
        return None;
    }
    let x = *td.to_f64_vec()?.first()?;
    Some((x, td.dims.len(), td.dtype))
}

fn classify(m: &Module, g: GraphId, id: NodeId, types: &HashMap<ValueId, Type>) -> Option<Fusible> {
    let graph = m.graph(g);
    let node = graph.node(id);
    if node.outputs.len() != 1 || node.outputs[0].name.is_empty() {
        return None;
    }
    f32_shape(
        types,
        ValueId {
            node: id,
            output: 0,
        },
    )?;
    let all: Vec<(usize, ValueId)> = node
        .operands()
        .iter()
        .enumerate()
        .filter_map(|(s, v)| v.map(|v| (s, v)))
        .collect();
    let kind = match &node.op {
        op if Unary::fusible_of(op).is_some() => Kind::Unary(Unary::fusible_of(op)?),
        Op::Add => Kind::Binary(Binary::Add),
        Op::Sub => Kind::Binary(Binary::Sub),
        Op::Mul => Kind::Binary(Binary::Mul),
        Op::Div => Kind::Binary(Binary::Div),
        Op::Max => Kind::Fold(Binary::Max),
        Op::Min => Kind::Fold(Binary::Min),
        Op::Sum => Kind::Fold(Binary::Add),
        Op::Clip => Kind::Clip,
        Op::Identity => Kind::Pass,
        Op::Cast(a) if a.to.map(DType::from_code) == Some(DType::F32) => Kind::Pass,
        Op::Pow => {
            // The exponent must be a constant scalar that does not raise the rank.
            let base = node.operand(0)?;
            let exp = node.operand(1)?;
            let (e, rank, _) = scalar_const(m, g, exp)?;
            if rank > f32_shape(types, base)?.len() {
                return None;
            }
            let e32 = e as f32;
            if !e32.is_finite() || f64::from(e32) != e {
                return None;
            }
            return Some(Fusible {
                kind: Kind::Pow(e32),
                operands: vec![(0, base)],
            });
        }
        _ => return None,
    };
    // A one-operand Max/Min/Sum, and a Clip without bounds, compute nothing.
    let kind = match kind {
        Kind::Fold(_) if all.len() == 1 => Kind::Pass,
        Kind::Clip if all.len() == 1 => Kind::Pass,
        k => k,
    };
    let arity_ok = match kind {
        Kind::Unary(_) => all.len() == 1 && node.operands().len() == 1,
        Kind::Pass => all.len() == 1 && node.operand(0).is_some(),
        Kind::Binary(_) => all.len() == 2 && node.operands().len() == 2,
        Kind::Fold(_) => !all.is_empty() && all.len() == node.operands().len(),
        Kind::Clip => node.operand(0).is_some(),
        Kind::Pow(_) => true,
    };
    if !arity_ok || all.iter().any(|&(_, v)| f32_shape(types, v).is_none()) {
        return None;
    }
    Some(Fusible {
        kind,
        operands: all,
    })
}

/// Whether every value operand of `f` broadcasts to `shape` in a supported form.
fn operands_fit(f: &Fusible, types: &HashMap<ValueId, Type>, shape: &[Dim]) -> bool {
    f.operands.iter().all(|&(_, v)| {
        f32_shape(types, v)
            .and_then(|s| Form::of(s, shape))
            .is_some()
    })
}

fn plan(
    m: &Module,
    g: GraphId,
    opts: &FuseElementwiseOptions,
    stats: &mut FuseElementwiseStats,
) -> Vec<Region> {
    let graph = m.graph(g);
    let Ok(order) = graph.toposort() else {
        return Vec::new();
    };
    let inferred = infer_graph(
        m,
        g,
        &Scope::new(),
        InferOptions {
            subgraphs: false,
            conditional: false,
        },
    );
    let types = &inferred.types;
    let captured = captured_names(m, g);
    let outputs: HashSet<ValueId> = graph.outputs.iter().map(|o| o.value).collect();

    let mut fusible: HashMap<NodeId, Fusible> = HashMap::new();
    let mut root_of: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in order.iter().rev() {
        let Some(f) = classify(m, g, id, types) else {
            continue;
        };
        let v = ValueId {
            node: id,
            output: 0,
        };
        let users = graph.users(v);
        let interior_ok =
            !users.is_empty() && !outputs.contains(&v) && !captured.contains(graph.value_name(v));
        let mut joined = false;
        if interior_ok {
            let roots: HashSet<Option<NodeId>> =
                users.iter().map(|(u, _)| root_of.get(u).copied()).collect();
            if let (1, Some(Some(r))) = (roots.len(), roots.iter().next()) {
                let shape = f32_shape(
                    types,
                    ValueId {
                        node: *r,
                        output: 0,
                    },
                )
                .unwrap_or(&[]);
                if operands_fit(&f, types, shape) {
                    root_of.insert(id, *r);
                    joined = true;
                }
            }
        }
        if !joined && f.kind.computes() {
            let shape = f32_shape(types, v).unwrap_or(&[]);
            if operands_fit(&f, types, shape) {
                root_of.insert(id, id);
            }
        }
        fusible.insert(id, f);
    }

    // Members of each region in topological order.
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in &order {
        if let Some(&r) = root_of.get(&id) {
            members.entry(r).or_default().push(id);
        }
    }
    let mut out = Vec::new();
    for &root in order.iter().filter(|id| root_of.get(id) == Some(id)) {
        let mem = members.remove(&root).unwrap_or_default();
        let computing = mem
            .iter()
            .filter(|n| fusible.get(n).is_some_and(|f| f.kind.computes()))
            .count();
        if computing < opts.min_ops {
            if computing > 1 || mem.len() > 1 {
                stats.too_small += 1;
            }
            continue;
        }
        if let Some(r) = build_region(m, g, root, mem, &fusible, types) {
            out.push(r);
        }
    }
    out
}

/// The program of a region: members in topological order, each operand either a member's
/// register or a leaf (an operand of the fused node, or an embedded scalar constant).
fn build_region(
    m: &Module,
    g: GraphId,
    root: NodeId,
    members: Vec<NodeId>,
    fusible: &HashMap<NodeId, Fusible>,
    types: &HashMap<ValueId, Type>,
) -> Option<Region> {
    let in_region: HashSet<NodeId> = members.iter().copied().collect();
    let root_shape = f32_shape(
        types,
        ValueId {
            node: root,
            output: 0,
        },
    )?;
    // Leaves that are not embeddable constants fix the smallest rank the operands reach;
    // constants of higher rank (which raise the result's rank) stay operands.
    let leaf_values: Vec<ValueId> = members
        .iter()
        .flat_map(|n| {
            fusible
                .get(n)
                .map(|f| f.operands.clone())
                .unwrap_or_default()
        })
        .map(|(_, v)| v)
        .filter(|v| !in_region.contains(&v.node))
        .collect();
    let embeddable = |v: ValueId| matches!(scalar_const(m, g, v), Some((_, _, DType::F32)));
    let max_rank = leaf_values
        .iter()
        .filter(|v| !embeddable(**v))
        .filter_map(|v| f32_shape(types, *v).map(<[Dim]>::len))
        .max()?;

    let mut program: Vec<Instr> = Vec::new();
    let mut forms: Vec<Form> = Vec::new();
    let mut leaves: Vec<ValueId> = Vec::new();
    let mut reg_of: HashMap<ValueId, Reg> = HashMap::new();
    let push = |program: &mut Vec<Instr>, i: Instr| -> Reg {
        program.push(i);
        (program.len() - 1) as Reg
    };
    for &n in &members {
        let f = fusible.get(&n)?;
        let mut regs: Vec<Reg> = Vec::with_capacity(f.operands.len());
        for &(_, v) in &f.operands {
            if let Some(&r) = reg_of.get(&v) {
                regs.push(r);
                continue;
            }
            let r = match scalar_const(m, g, v) {
                Some((c, rank, DType::F32)) if rank <= max_rank => {
                    push(&mut program, Instr::Const(c as f32))
                }
                _ => {
                    let form = Form::of(f32_shape(types, v)?, root_shape)?;
                    leaves.push(v);
                    forms.push(form);
                    push(&mut program, Instr::Input((leaves.len() - 1) as u32))
                }
            };
            reg_of.insert(v, r);
            regs.push(r);
        }
        let first = *regs.first()?;
        let r = match f.kind {
            Kind::Unary(u) => push(&mut program, Instr::Unary(u, first)),
            Kind::Binary(b) => push(&mut program, Instr::Binary(b, first, *regs.get(1)?)),
            Kind::Fold(b) => regs[1..].iter().fold(first, |acc, &x| {
                push(&mut program, Instr::Binary(b, acc, x))
            }),
            Kind::Pow(e) => {
                let n = e as i32;
                if e == n as f32 && n.abs() <= 4 {
                    push(&mut program, Instr::Powi(first, n))
                } else {
                    push(&mut program, Instr::Powf(first, e))
                }
            }
            Kind::Clip => {
                let mut acc = first;
                for (&(slot, _), &x) in f.operands.iter().zip(&regs).skip(1) {
                    let op = if slot == 1 { Binary::Max } else { Binary::Min };
                    acc = push(&mut program, Instr::Binary(op, acc, x));
                }
                acc
            }
            Kind::Pass => first,
        };
        reg_of.insert(ValueId { node: n, output: 0 }, r);
    }
    // The root computes, so its register is the last instruction.
    let result = *reg_of.get(&ValueId {
        node: root,
        output: 0,
    })?;
    if result as usize + 1 != program.len() || leaves.is_empty() {
        return None;
    }
    let program = FusedElementwise { program, forms };
    program.validate().ok()?;
    Some(Region {
        root,
        members,
        program,
        leaves,
    })
}

/// Rewrites the root node into the fused node and removes the other members.
fn apply(m: &mut Module, g: GraphId, r: Region) {
    let graph = m.graph_mut(g);
    graph.node_mut(r.root).op = Op::Ortho(OrthoOp::FusedElementwise(r.program));
    graph.set_operands(r.root, r.leaves.into_iter().map(Some).collect());
    // Interior members are used only inside the region; once the root no longer reads them,
    // removing them all (any order) leaves no dangling operand.
    for n in r.members {
        if n != r.root {
            graph.remove_node(n);
        }
    }
}

fn run_pass(
    m: &mut Module,
    opts: &FuseElementwiseOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let s = fuse_elementwise(m, opts);
    cx.stat("regions", s.regions as u64);
    cx.stat("ops", s.ops as u64);
    cx.stat("too-small", s.too_small as u64);
    Ok(PassResult::changed(s.regions > 0))
}
