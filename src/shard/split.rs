//! Cutting a model into shards at block boundaries.
//!
//! The cut points are the stream values entering blocks (the stream operand of a block's first
//! residual `Add`, or the input of its boundary linear when it has one). Each shard is the whole
//! module with the stream value entering its first block made a graph input, the value entering
//! the next shard's first block made its only output, and everything no longer reaching that
//! output removed. Auxiliary computations (positions, RoPE tables, masks) that the shard's
//! blocks need stay in the shard, and an original model input they read (e.g. `input_ids`,
//! whose shape the positions come from) stays a shard input, fed from the caller's inputs.

use super::error::ShardError;
use super::manifest::{ShardInput, Source, TensorSpec};
use ortho_ir::analysis::{analyze_transformer, Structure};
use ortho_ir::{Dim, GraphOutput, Module, Op, Type, ValueId};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// How blocks are distributed over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// Equal numbers of blocks (the first shards take one more when K does not divide).
    Blocks,
    /// Minimize the largest shard's parameters (embedding and head counted where they go).
    Params,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::Blocks => "blocks",
            Balance::Params => "params",
        }
    }
}

/// One built shard: its module and what the manifest says about it.
pub struct BuiltShard {
    pub module: Module,
    pub blocks: [usize; 2],
    pub embedding: bool,
    pub head: bool,
    pub params: u64,
    pub inputs: Vec<ShardInput>,
    pub outputs: Vec<TensorSpec>,
}

/// The result of [`split_module`].
pub struct Split {
    pub shards: Vec<BuiltShard>,
    pub blocks: usize,
    pub model_inputs: Vec<TensorSpec>,
    pub model_outputs: Vec<TensorSpec>,
}

/// The manifest's description of a tensor type.
pub fn spec(name: &str, ty: &Type) -> TensorSpec {
    let (dtype, shape) = match ty.as_tensor() {
        Some(t) => (
            t.dtype.name(),
            t.shape
                .as_ref()
                .map(|dims| {
                    dims.iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => serde_json::Value::from(*n),
                            Dim::Sym(s) => serde_json::Value::from(s.as_str()),
                            Dim::Unknown => serde_json::Value::from("?"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => ("?".to_string(), Vec::new()),
    };
    TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
    }
}

/// The stream value entering each block, in block order.
fn block_entries(m: &Module, s: &Structure, path: &Path) -> Result<Vec<ValueId>, ShardError> {
    let g = m.main_graph();
    let stream: HashSet<ValueId> = s.stream.iter().copied().collect();
    s.blocks
        .iter()
        .enumerate()
        .map(|(b, block)| {
            if let Some(l) = &block.entry {
                return Ok(l.input);
            }
            let first = block.attention.or(block.mlp).or(block.other);
            let branch =
                first
                    .map(|i| &s.branches[i])
                    .ok_or_else(|| ShardError::NotSplittable {
                        path: path.to_path_buf(),
                        why: format!("block {b} has no branch"),
                    })?;
            let add = g.node(branch.add);
            let inside: HashSet<_> = branch.nodes.iter().copied().collect();
            let mut cands = add.inputs().filter(|v| !inside.contains(&v.node));
            let v = cands.next();
            // Prefer a value the analysis lists as the stream proper when both qualify.
            let v = match (v, cands.next()) {
                (Some(a), Some(b)) if stream.contains(&b) && !stream.contains(&a) => Some(b),
                (v, _) => v,
            };
            v.ok_or_else(|| ShardError::NotSplittable {
                path: path.to_path_buf(),
                why: format!(
                    "cannot find the stream entering block {b} at {}",
                    g.describe(branch.add)
                ),
            })
        })
        .collect()
}

/// Parameters of the constants read by each block's branches, and of the embedding and head.
fn block_params(m: &Module, s: &Structure) -> (Vec<u64>, u64, u64) {
    let g = m.main_graph();
    let consts_of = |nodes: &mut dyn Iterator<Item = ortho_ir::NodeId>, seen: &mut HashSet<_>| {
        let mut n = 0u64;
        for node in nodes {
            for v in g.node(node).inputs() {
                if let Op::Const(t) = g.node(v.node).op {
                    if seen.insert(v.node) {
                        n += m.tensor(t).dims.iter().product::<i64>().max(0) as u64;
                    }
                }
            }
        }
        n
    };
    let mut seen = HashSet::new();
    let per_block = s
        .blocks
        .iter()
        .map(|b| {
            let mut nodes = [b.attention, b.mlp, b.other]
                .into_iter()
                .flatten()
                .flat_map(|i| s.branches[i].nodes.iter().copied())
                .chain(b.entry.map(|l| l.node));
            consts_of(&mut nodes, &mut seen)
        })
        .collect();
    let emb = s
        .embeddings
        .iter()
        .map(|e| (e.vocab * e.width).max(0) as u64)
        .sum();
    let head = s
        .heads
        .iter()
        .map(|h| (h.linear.in_features * h.linear.out_features).max(0) as u64)
        .sum();
    (per_block, emb, head)
}

/// Block ranges `[start, end)` of the K shards.
fn ranges(n: usize, k: usize, balance: Balance, costs: (&[u64], u64, u64)) -> Vec<[usize; 2]> {
    match balance {
        Balance::Blocks => {
            let (q, r) = (n / k, n % k);
            let mut start = 0;
            (0..k)
                .map(|i| {
                    let len = q + usize::from(i < r);
                    let out = [start, start + len];
                    start += len;
                    out
                })
                .collect()
        }
        Balance::Params => {
            let (per, emb, head) = costs;
            let prefix: Vec<u64> = std::iter::once(0)
                .chain(per.iter().scan(0u64, |acc, &x| {
                    *acc += x;
                    Some(*acc)
                }))
                .collect();
            let cost = |a: usize, b: usize| {
                prefix[b] - prefix[a] + if a == 0 { emb } else { 0 } + if b == n { head } else { 0 }
            };
            // best[j][b]: the smallest possible largest shard when blocks [0, b) form j shards.
            let mut best = vec![vec![u64::MAX; n + 1]; k + 1];
            let mut arg = vec![vec![0usize; n + 1]; k + 1];
            best[0][0] = 0;
            for j in 1..=k {
                for b in j..=n {
                    for a in (j - 1)..b {
                        if best[j - 1][a] == u64::MAX {
                            continue;
                        }
                        let c = best[j - 1][a].max(cost(a, b));
                        if c < best[j][b] {
                            best[j][b] = c;
                            arg[j][b] = a;
                        }
                    }
                }
            }
            let mut out = vec![[0, 0]; k];
            let mut b = n;
            for j in (1..=k).rev() {
                let a = arg[j][b];
                out[j - 1] = [a, b];
                b = a;
            }
            out
        }
    }
}

/// Splits the verified whole model `m` (read from `path`) into `k` shards.
pub fn split_module(
    m: &Module,
    path: &Path,
    k: usize,
    balance: Balance,
) -> Result<Split, ShardError> {
    let gid = m.main;
    let s = analyze_transformer(m, gid);
    if s.blocks.is_empty() {
        return Err(ShardError::NoBlocks {
            path: path.to_path_buf(),
        });
    }
    let n = s.blocks.len();
    if k == 0 || k > n {
        return Err(ShardError::TooManyShards {
            path: path.to_path_buf(),
            k,
            blocks: n,
        });
    }
    if !s.ends.embedding || !s.ends.head {
        return Err(ShardError::NotSplittable {
            path: path.to_path_buf(),
            why: "it is not a whole model (embedding and head); split the original model".into(),
        });
    }
    let entries = block_entries(m, &s, path)?;
    let (per, emb, head) = block_params(m, &s);
    let rs = ranges(n, k, balance, (&per, emb, head));
    let g = m.main_graph();
    let types = ortho_ir::shape::infer_types(m, gid).unwrap_or_default();
    let type_of = |v: ValueId| -> Type {
        let declared = g.value_type(v);
        match types.get(&v) {
            Some(t) if !t.is_unknown() => t.clone(),
            _ => declared.clone(),
        }
    };
    let model_inputs: Vec<TensorSpec> = g
        .inputs()
        .iter()
        .map(|&n| {
            let v = ValueId { node: n, output: 0 };
            spec(g.value_name(v), &type_of(v))
        })
        .collect();
    let model_outputs: Vec<TensorSpec> = g
        .outputs
        .iter()
        .map(|o| spec(&o.name, &type_of(o.value)))
        .collect();
    let mut shards = Vec::with_capacity(k);
    for (i, r) in rs.iter().enumerate() {
        let cut_in = (i > 0).then(|| entries[r[0]]);
        let cut_out = (i + 1 < k).then(|| entries[r[1]]);
        for v in cut_in.iter().chain(cut_out.iter()) {
            if type_of(*v).as_tensor().is_none() {
                return Err(ShardError::NotSplittable {
                    path: path.to_path_buf(),
                    why: format!("the stream value '{}' has no tensor type", g.value_name(*v)),
                });
            }
        }
        let mut sm = m.clone();
        let sg = sm.main_graph_mut();
        let in_name = cut_in.map(|v| g.value_name(v).to_string());
        let new_in = cut_in.map(|v| {
            let x = sg.add_input(format!("{}.upm_input", g.value_name(v)), type_of(v));
            sg.replace_all_uses(v, x);
            x
        });
        if let Some(v) = cut_out {
            sg.set_value_type(v, type_of(v));
            sg.outputs = vec![GraphOutput {
                value: v,
                name: g.value_name(v).to_string(),
            }];
        }
        ortho_passes::transforms::dce::dce(&mut sm);
        let sg = sm.main_graph_mut();
        // Inputs nothing reads any more (the token ids in a shard whose positions come from
        // elsewhere) leave the signature; the boundary input goes first.
        let used: Vec<_> = sg
            .inputs()
            .iter()
            .copied()
            .filter(|&n| {
                let v = ValueId { node: n, output: 0 };
                Some(v) == new_in
                    || !sg.users(v).is_empty()
                    || sg.outputs.iter().any(|o| o.value == v)
            })
            .collect();
        let dropped: Vec<_> = sg
            .inputs()
            .iter()
            .copied()
            .filter(|n| !used.contains(n))
            .collect();
        let mut order: Vec<_> = used
            .iter()
            .copied()
            .filter(|&n| Some(n) == new_in.map(|v| v.node))
            .collect();
        order.extend(
            used.iter()
                .copied()
                .filter(|&n| Some(n) != new_in.map(|v| v.node)),
        );
        sg.set_inputs(order);
        for d in dropped {
            sg.remove_node(d);
        }
        if let (Some(x), Some(name)) = (new_in, &in_name) {
            sg.node_mut(x.node).outputs[0].name = name.clone();
        }
        ortho_ir::verify::verify_module(&sm).map_err(|d| ShardError::NotSplittable {
            path: path.to_path_buf(),
            why: format!("shard {i} does not verify: {d}"),
        })?;
        let sg = sm.main_graph();
        let inputs = sg
            .inputs()
            .iter()
            .map(|&n| {
                let v = ValueId { node: n, output: 0 };
                let name = sg.value_name(v).to_string();
                let from = if Some(v) == new_in {
                    Source::Boundary(name.clone())
                } else {
                    Source::ModelInput(name.clone())
                };
                ShardInput {
                    spec: spec(&name, sg.value_type(v)),
                    from,
                }
            })
            .collect();
        let outputs = sg
            .outputs
            .iter()
            .map(|o| spec(&o.name, &type_of_in(&sm, o.value, &types)))
            .collect();
        let params = sm.parameter_count();
        shards.push(BuiltShard {
            module: sm,
            blocks: *r,
            embedding: i == 0,
            head: i + 1 == k,
            params,
            inputs,
            outputs,
        });
    }
    Ok(Split {
        shards,
        blocks: n,
        model_inputs,
        model_outputs,
    })
}

/// The type of an output of a shard: the declared one (set for the boundary), else inferred.
fn type_of_in(sm: &Module, v: ValueId, types: &HashMap<ValueId, Type>) -> Type {
    let declared = sm.main_graph().value_type(v);
    if declared.is_unknown() {
        types.get(&v).cloned().unwrap_or_default()
    } else {
        declared.clone()
    }
}
