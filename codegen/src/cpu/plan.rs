//! Compiling a module's main graph into an executable plan.
//!
//! Done once: the topological order, a kernel per node, constants decoded into typed host
//! tensors (memory-mapped weights are read through `TensorData::bytes()` and converted here),
//! nodes whose operands are all constants evaluated ahead of time, and buffer liveness (after
//! which step each value dies, and which operands a step may consume in place).
//!
//! One rewrite happens here rather than as a pass, because it is about memory layout only:
//! `MatMul(x, Transpose(W))` with a constant 2-D `W` reads `W` with swapped strides instead of
//! materializing the transpose (the tied embedding / LM head of Llama exports).

use crate::cpu::error::{KernelError, RuntimeError};
use crate::cpu::kernel::{ExecCx, Inputs, Kernel, KernelRegistry, KernelSite};
use crate::cpu::kernels;
use crate::cpu::pool::BufferPool;
use crate::cpu::tensor::HostTensor;
use ortho_ir::{DType, Dim, Graph, Module, NodeId, Op, ValueId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Told how far a compilation is: `done` of `total` nodes have their kernel (and decoded
/// constants), and the op type of the node being built now (empty at the end). Compiling a large model decodes every weight,
/// which takes seconds; the CLI draws this as a progress bar.
#[derive(Clone)]
pub struct CompileProgress(pub Arc<dyn Fn(usize, usize, &str) + Send + Sync>);

impl std::fmt::Debug for CompileProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileProgress")
    }
}

/// Options of [`Plan::compile_with`].
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Threads kernels may use (GEMM, large elementwise ops, attention). Default: the
    /// available parallelism.
    pub threads: usize,
    /// Kernels supplied from outside (JIT-compiled fused ops); they take precedence.
    pub kernels: KernelRegistry,
    /// Evaluate nodes whose operands are all constants at compile time.
    pub fold_constants: bool,
    /// Called after each node is built; `None` reports nothing.
    pub progress: Option<CompileProgress>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernels: KernelRegistry::default(),
            fold_constants: true,
            progress: None,
        }
    }
}

/// A graph input: name, slot, declared dtype and dims, and its default when it has one.
#[derive(Debug)]
pub(crate) struct InputSpec {
    pub name: String,
    pub slot: usize,
    pub dtype: DType,
    pub dims: Option<Vec<Dim>>,
    pub default: Option<HostTensor>,
}

/// One executable node.
pub(crate) struct Step {
    /// How errors name the node.
    pub desc: String,
    /// The op type, for profiles.
    pub op: String,
    pub kernel: Box<dyn Kernel>,
    pub inputs: Vec<Option<usize>>,
    /// Result slots; `None` for results nobody reads.
    pub outputs: Vec<Option<usize>>,
    /// Per operand: whether this step is the operand's last use (so it may be consumed).
    pub donate: Vec<bool>,
    /// Slots to free after this step.
    pub free: Vec<usize>,
}

/// An executable plan for a module's main graph.
pub struct Plan {
    pub(crate) steps: Vec<Step>,
    pub(crate) nslots: usize,
    pub(crate) consts: Vec<Option<HostTensor>>,
    pub(crate) inputs: Vec<InputSpec>,
    pub(crate) outputs: Vec<(String, usize)>,
    pub(crate) slot_of: HashMap<ValueId, usize>,
    pub(crate) value_of_slot: Vec<Option<ValueId>>,
    pub(crate) threads: usize,
    pub(crate) pool: Mutex<BufferPool>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps.len())
            .field("slots", &self.nslots)
            .finish()
    }
}

struct Building {
    desc: String,
    op: String,
    kernel: Box<dyn Kernel>,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// The node may be evaluated at compile time when its operands are constants.
    foldable: bool,
    /// Set for a 2-D Transpose of a constant: the slot of what it transposes.
    transpose2d_of: Option<usize>,
    is_matmul: bool,
}

impl Plan {
    /// Compiles with default options.
    pub fn compile(module: &Module) -> Result<Plan, RuntimeError> {
        Plan::compile_with(module, &PlanOptions::default())
    }

    pub fn compile_with(module: &Module, opts: &PlanOptions) -> Result<Plan, RuntimeError> {
        Plan::compile_inner(module, opts, None)
    }

    /// Compiles only the nodes needed to compute `outputs` from `feeds` (any values of the main
    /// graph, intermediate ones included) and the constants. Fed values become inputs named
    /// `feed#0`, `feed#1`, … (in `feeds` order), `outputs` become outputs named `out#0`, …; a
    /// graph input inside the region that is not fed stays an input under its own name. Used by
    /// the calibration evaluator to run one transformer block alone.
    pub fn compile_region(
        module: &Module,
        opts: &PlanOptions,
        feeds: &[ValueId],
        outputs: &[ValueId],
    ) -> Result<Plan, RuntimeError> {
        Plan::compile_inner(module, opts, Some((feeds, outputs)))
    }

    /// Compiles the main graph (or the region between `region`'s feeds and outputs) in phases:
    /// slots for every value, a kernel per node, the outputs, then rewrites (transposed
    /// MatMuls, dead steps, compile-time folding) and the schedule (liveness, buffer donation).
    fn compile_inner(
        module: &Module,
        opts: &PlanOptions,
        region: Option<(&[ValueId], &[ValueId])>,
    ) -> Result<Plan, RuntimeError> {
        let g = module.main_graph();
        let fed: HashMap<ValueId, usize> = region
            .map(|(f, _)| f.iter().enumerate().map(|(i, v)| (*v, i)).collect())
            .unwrap_or_default();
        let order = node_order(g, &fed, region.map(|r| r.1))?;
        let (slot_of, value_of_slot) = assign_slots(g, &order);
        let nslots = value_of_slot.len();
        let Built {
            mut consts,
            inputs,
            mut building,
        } = build_steps(module, opts, &order, &slot_of, &fed)?;
        let graph_outputs = output_slots(g, region.map(|r| r.1), &slot_of)?;
        let mut is_output = vec![false; nslots];
        for (_, s) in &graph_outputs {
            is_output[*s] = true;
        }

        rewrite_transposed_matmuls(&mut building, &is_output);
        remove_dead(&mut building, &is_output);
        let mut pool = BufferPool::new();
        if opts.fold_constants {
            fold_constants(
                &mut building,
                &mut consts,
                &is_output,
                &mut pool,
                opts.threads,
            )?;
        }
        remove_dead(&mut building, &is_output);
        let steps = schedule(building, &consts, &is_output);
        drop_unused_consts(&steps, &mut consts, &is_output);
        Ok(Plan {
            steps,
            nslots,
            consts,
            inputs,
            outputs: graph_outputs,
            slot_of,
            value_of_slot,
            threads: opts.threads.max(1),
            pool: Mutex::new(pool),
        })
    }

    /// The number of threads kernels use.
    pub fn threads(&self) -> usize {
        self.threads
    }
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    /// The model's inputs that must be fed: (name, dtype, dims as text).
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.name.clone()).collect()
    }
    /// The model's output names, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.0.clone()).collect()
    }
    /// The number of steps (kernels) executed per run.
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }
    /// Whether `v` is a value of the plan's graph that `run_with` can observe.
    pub fn knows_value(&self, v: ValueId) -> bool {
        self.slot_of.contains_key(&v)
    }
}

/// The nodes of `order` (kept in that order) needed to compute `outs` when the values in `fed`
/// are supplied: a backward walk from the outputs that stops at fed values.
fn region_nodes(
    g: &ortho_ir::Graph,
    order: &[ortho_ir::NodeId],
    fed: &HashMap<ValueId, usize>,
    outs: &[ValueId],
) -> Result<Vec<ortho_ir::NodeId>, RuntimeError> {
    let mut need: std::collections::HashSet<ortho_ir::NodeId> = Default::default();
    let mut stack: Vec<ValueId> = Vec::new();
    for v in outs {
        if !g.is_valid_value(*v) {
            return Err(RuntimeError::Graph(format!(
                "requested value {v:?} is not a value of the main graph"
            )));
        }
        stack.push(*v);
    }
    let mut seen: std::collections::HashSet<ValueId> = Default::default();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let partly_fed = g.results(v.node).iter().any(|r| fed.contains_key(r));
        if partly_fed && !fed.contains_key(&v) {
            return Err(RuntimeError::Graph(format!(
                "{} has a fed result and a result that must be computed",
                g.describe(v.node)
            )));
        }
        if need.insert(v.node) && !partly_fed {
            stack.extend(g.node(v.node).operands().iter().flatten().copied());
        }
    }
    Ok(order.iter().copied().filter(|n| need.contains(n)).collect())
}

/// The nodes to compile, in a topological order: all of them, or those a region needs.
fn node_order(
    g: &Graph,
    fed: &HashMap<ValueId, usize>,
    region_outputs: Option<&[ValueId]>,
) -> Result<Vec<NodeId>, RuntimeError> {
    let order = g
        .toposort()
        .map_err(|c| RuntimeError::Graph(format!("cycle through {}", g.describe(c.node))))?;
    match region_outputs {
        Some(outs) => region_nodes(g, &order, fed, outs),
        None => Ok(order),
    }
}

/// One slot per value the nodes produce, in order: the slot of each value, and its inverse.
#[allow(clippy::type_complexity)]
fn assign_slots(g: &Graph, order: &[NodeId]) -> (HashMap<ValueId, usize>, Vec<Option<ValueId>>) {
    let mut slot_of: HashMap<ValueId, usize> = HashMap::new();
    let mut value_of_slot: Vec<Option<ValueId>> = Vec::new();
    for &n in order {
        for v in g.results(n) {
            slot_of.insert(v, value_of_slot.len());
            value_of_slot.push(Some(v));
        }
    }
    (slot_of, value_of_slot)
}

/// What building the nodes produces: decoded constants per slot, the inputs to feed, and one
/// step (with its kernel) per computing node.
struct Built {
    consts: Vec<Option<HostTensor>>,
    inputs: Vec<InputSpec>,
    building: Vec<Building>,
}

/// Decodes constants, records inputs and builds a kernel per node. Every node without a kernel
/// is collected so that the error names every missing op type, before any work.
fn build_steps(
    module: &Module,
    opts: &PlanOptions,
    order: &[NodeId],
    slot_of: &HashMap<ValueId, usize>,
    fed: &HashMap<ValueId, usize>,
) -> Result<Built, RuntimeError> {
    let g = module.main_graph();
    let mut built = Built {
        consts: (0..slot_of.len()).map(|_| None).collect(),
        inputs: Vec::new(),
        building: Vec::new(),
    };
    let mut unsupported: Vec<RuntimeError> = Vec::new();
    for (i, &n) in order.iter().enumerate() {
        // `i` nodes are built; the op named is the one being built now.
        if let Some(p) = &opts.progress {
            p.0(i, order.len(), g.node(n).op.name());
        }
        let out_slots: Vec<Option<usize>> = g
            .results(n)
            .iter()
            .map(|v| slot_of.get(v).copied())
            .collect();
        // A node with fed results is not run: those results become inputs.
        let results = g.results(n);
        if results.iter().any(|v| fed.contains_key(v)) {
            for (v, s) in results.iter().zip(&out_slots) {
                if let (Some(s), true) = (s, fed.contains_key(v)) {
                    built.inputs.push(InputSpec {
                        name: format!("feed#{}", fed[v]),
                        slot: *s,
                        dtype: DType::Undefined,
                        dims: None,
                        default: None,
                    });
                }
            }
            continue;
        }
        if let Err(e) = build_node(module, opts, n, out_slots, slot_of, &mut built) {
            match e {
                e @ RuntimeError::UnsupportedOp { .. } => unsupported.push(e),
                e => return Err(e),
            }
        }
    }
    if let Some(p) = &opts.progress {
        p.0(order.len(), order.len(), "");
    }
    unsupported_error(unsupported).map_or(Ok(built), Err)
}

/// One error for every node without a kernel: `UnsupportedOp` (the first node) when they share
/// one op type, else `UnsupportedOps` naming each op type once with its node count, in order of
/// first appearance.
fn unsupported_error(errs: Vec<RuntimeError>) -> Option<RuntimeError> {
    let mut ops: Vec<(String, usize)> = Vec::new();
    let mut first_node = String::new();
    for e in &errs {
        if let RuntimeError::UnsupportedOp { op, domain, node } = e {
            let name = if domain.is_empty() {
                format!("'{op}'")
            } else {
                format!("'{op}' in domain '{domain}'")
            };
            if first_node.is_empty() {
                first_node = node.clone();
            }
            match ops.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => ops.push((name, 1)),
            }
        }
    }
    if ops.len() < 2 {
        return errs.into_iter().next();
    }
    Some(RuntimeError::UnsupportedOps {
        ops: ops
            .into_iter()
            .map(|(n, c)| format!("{n} ({c} node{})", if c == 1 { "" } else { "s" }))
            .collect(),
        first_node,
    })
}

/// Builds one node: a constant, an input, or a step with its kernel.
fn build_node(
    module: &Module,
    opts: &PlanOptions,
    n: NodeId,
    out_slots: Vec<Option<usize>>,
    slot_of: &HashMap<ValueId, usize>,
    built: &mut Built,
) -> Result<(), RuntimeError> {
    let g = module.main_graph();
    let node = g.node(n);
    let first = out_slots.first().copied().flatten();
    let Built {
        consts,
        inputs,
        building,
    } = built;
    match &node.op {
        Op::Const(t) => {
            let name = node
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default();
            let ht = HostTensor::from_tensor_data(module.tensor(*t)).map_err(|e| {
                RuntimeError::Constant {
                    name,
                    msg: e.to_string(),
                }
            })?;
            if let Some(s) = first {
                consts[s] = Some(ht);
            }
        }
        Op::Input { default } => {
            let out = node
                .outputs
                .first()
                .ok_or_else(|| RuntimeError::Graph("an input node without a result".into()))?;
            let (dtype, dims) = match out.ty.as_tensor() {
                Some(t) => (t.dtype, t.shape.clone()),
                None => (DType::Undefined, None),
            };
            let default =
                match default {
                    Some(t) => Some(HostTensor::from_tensor_data(module.tensor(*t)).map_err(
                        |e| RuntimeError::Constant {
                            name: out.name.clone(),
                            msg: e.to_string(),
                        },
                    )?),
                    None => None,
                };
            if let Some(slot) = first {
                inputs.push(InputSpec {
                    name: out.name.clone(),
                    slot,
                    dtype,
                    dims,
                    default,
                });
            }
        }
        Op::Capture => {
            return Err(RuntimeError::Graph(format!(
                "{} captures a value of an enclosing graph",
                g.describe(n)
            )))
        }
        Op::Constant(_) => {
            let t = kernels::constant_value(&node.op, module).map_err(|error| {
                RuntimeError::Kernel {
                    node: g.describe(n),
                    error,
                }
            })?;
            if let Some(s) = first {
                consts[s] = Some(t);
            }
        }
        op => {
            let site = KernelSite {
                module,
                graph: g,
                node_id: n,
                opset: module.opset(op.domain()).unwrap_or(0),
            };
            let kernel = match opts.kernels.get(op.domain(), op.name()) {
                Some(f) => Some(f(&site).map_err(|error| RuntimeError::Kernel {
                    node: g.describe(n),
                    error,
                })?),
                None => kernels::builtin(&site).map_err(|error| RuntimeError::Kernel {
                    node: g.describe(n),
                    error,
                })?,
            };
            let Some(kernel) = kernel else {
                return Err(RuntimeError::UnsupportedOp {
                    op: op.name().to_string(),
                    domain: op.domain().to_string(),
                    node: g.describe(n),
                });
            };
            let ins: Vec<Option<usize>> = node
                .operands()
                .iter()
                .map(|o| o.and_then(|v| slot_of.get(&v).copied()))
                .collect();
            let transpose2d_of = match op {
                Op::Transpose(a) if a.perm.as_deref().is_none_or(|p| p == [1, 0]) => ins
                    .first()
                    .copied()
                    .flatten()
                    .filter(|&s| consts[s].as_ref().is_some_and(|c| c.rank() == 2)),
                _ => None,
            };
            building.push(Building {
                desc: g.describe(n),
                op: op.name().to_string(),
                kernel,
                inputs: ins,
                outputs: out_slots,
                foldable: !op.has_side_effects() && !matches!(op, Op::Opaque(_)),
                transpose2d_of,
                is_matmul: matches!(op, Op::MatMul),
            });
        }
    }
    Ok(())
}

/// The slots of the plan's outputs, with their names: the graph's outputs, or a region's
/// requested values (`out#0`, …).
fn output_slots(
    g: &Graph,
    region_outputs: Option<&[ValueId]>,
    slot_of: &HashMap<ValueId, usize>,
) -> Result<Vec<(String, usize)>, RuntimeError> {
    match region_outputs {
        Some(outs) => outs
            .iter()
            .enumerate()
            .map(|(i, v)| {
                slot_of
                    .get(v)
                    .map(|&s| (format!("out#{i}"), s))
                    .ok_or_else(|| {
                        RuntimeError::Graph(format!("requested value {v:?} is not in the graph"))
                    })
            })
            .collect(),
        None => g
            .outputs
            .iter()
            .map(|o| {
                slot_of
                    .get(&o.value)
                    .map(|&s| (o.name.clone(), s))
                    .ok_or_else(|| {
                        RuntimeError::Graph(format!("output '{}' names no value", o.name))
                    })
            })
            .collect(),
    }
}

/// Orders the steps for execution with liveness: each operand's last use may consume
/// (donate) its buffer, and slots nobody reads afterwards are freed after the step.
fn schedule(
    building: Vec<Building>,
    consts: &[Option<HostTensor>],
    is_output: &[bool],
) -> Vec<Step> {
    let nslots = consts.len();
    // Liveness: the last step reading each slot.
    let mut last_use: Vec<Option<usize>> = vec![None; nslots];
    for (i, b) in building.iter().enumerate() {
        for s in b.inputs.iter().flatten() {
            last_use[*s] = Some(i);
        }
    }
    let mut steps = Vec::with_capacity(building.len());
    for (i, b) in building.into_iter().enumerate() {
        let donate = b
            .inputs
            .iter()
            .map(|s| match s {
                Some(s) => {
                    last_use[*s] == Some(i)
                        && !is_output[*s]
                        && consts[*s].is_none()
                        && b.inputs.iter().filter(|x| **x == Some(*s)).count() == 1
                }
                None => false,
            })
            .collect();
        let mut free: Vec<usize> = b
            .inputs
            .iter()
            .flatten()
            .copied()
            .filter(|&s| last_use[s] == Some(i) && !is_output[s] && consts[s].is_none())
            .collect();
        // Results nobody reads are freed right away.
        free.extend(
            b.outputs
                .iter()
                .flatten()
                .copied()
                .filter(|&s| last_use[s].is_none() && !is_output[s]),
        );
        free.sort_unstable();
        free.dedup();
        steps.push(Step {
            desc: b.desc,
            op: b.op,
            kernel: b.kernel,
            inputs: b.inputs,
            outputs: b.outputs,
            donate,
            free,
        });
    }
    steps
}

/// Drops the constants nothing reads any more (folded away).
fn drop_unused_consts(steps: &[Step], consts: &mut [Option<HostTensor>], is_output: &[bool]) {
    let mut used = vec![false; consts.len()];
    for s in steps {
        for i in s.inputs.iter().flatten() {
            used[*i] = true;
        }
    }
    for (s, c) in consts.iter_mut().enumerate() {
        if !used[s] && !is_output[s] {
            *c = None;
        }
    }
}

/// `MatMul(x, Transpose(W))` with a constant 2-D `W`: the MatMul reads `W` transposed.
fn rewrite_transposed_matmuls(building: &mut [Building], is_output: &[bool]) {
    let mut producer: HashMap<usize, usize> = HashMap::new();
    for (i, b) in building.iter().enumerate() {
        for s in b.outputs.iter().flatten() {
            producer.insert(*s, i);
        }
    }
    for i in 0..building.len() {
        if !building[i].is_matmul {
            continue;
        }
        let Some(Some(bslot)) = building[i].inputs.get(1).copied() else {
            continue;
        };
        let Some(&p) = producer.get(&bslot) else {
            continue;
        };
        let Some(w) = building[p].transpose2d_of else {
            continue;
        };
        if is_output[bslot] {
            continue;
        }
        building[i].inputs[1] = Some(w);
        building[i].kernel = kernels::matmul::matmul_transposed_b_kernel();
        building[i].op = "MatMul".into();
    }
}

/// Runs steps whose operands are all constants, turning their results into constants.
fn fold_constants(
    building: &mut Vec<Building>,
    consts: &mut [Option<HostTensor>],
    is_output: &[bool],
    pool: &mut BufferPool,
    threads: usize,
) -> Result<(), RuntimeError> {
    let mut keep = Vec::with_capacity(building.len());
    for b in building.drain(..) {
        let all_const = b.foldable
            && !b.inputs.is_empty()
            && b.inputs.iter().flatten().all(|s| consts[*s].is_some());
        if !all_const {
            keep.push(b);
            continue;
        }
        let outs = {
            let mut ins = Inputs::with_capacity(b.inputs.len());
            for s in &b.inputs {
                ins.push_ref(s.and_then(|s| consts[s].as_ref()));
            }
            let mut cx = ExecCx { pool, threads };
            b.kernel
                .run(&mut cx, &mut ins)
                .map_err(|error| RuntimeError::Kernel {
                    node: b.desc.clone(),
                    error,
                })?
        };
        let mut outs = outs.into_iter();
        for s in b.outputs.iter() {
            let t = outs.next();
            if let (Some(s), Some(t)) = (s, t) {
                consts[*s] = Some(t);
            } else if s.is_some_and(|s| is_output[s]) {
                return Err(RuntimeError::Kernel {
                    node: b.desc.clone(),
                    error: KernelError::invalid(
                        "the kernel returned fewer results than the node has",
                    ),
                });
            }
        }
    }
    *building = keep;
    Ok(())
}

/// Drops steps none of whose results are read (by a step or as a graph output).
fn remove_dead(building: &mut Vec<Building>, is_output: &[bool]) {
    loop {
        let mut used = vec![false; is_output.len()];
        for b in building.iter() {
            for s in b.inputs.iter().flatten() {
                used[*s] = true;
            }
        }
        let before = building.len();
        building.retain(|b| b.outputs.iter().flatten().any(|&s| used[s] || is_output[s]));
        if building.len() == before {
            break;
        }
    }
}
