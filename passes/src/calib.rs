//! Calibration: the data a calibration-driven pass runs on, and the layer-wise ("true
//! sequential") driver that walks a pre-norm transformer's blocks in order.
//!
//! A pass never builds a runtime: `src/` puts a [`Calibration`] (an `ortho_ir::eval::Evaluator`
//! plus the calibration token batches, already chunked into graph-input feeds) into
//! `ManagerOptions::calibration`, and the pass finds it with `PassContext::calibration`. A pass
//! that needs it and finds none fails with [`missing_calibration`].
//!
//! [`walk_layers`] keeps, for every calibration sequence, the residual-stream tensor entering the
//! current block (f32; 128 × 512 × 576 × 4 B ≈ 150 MB for SmolLM2 at the setting). For
//! each block it hands the visitor a [`LayerCx`], through which the visitor reads input Gram
//! matrices (`H = (2/N) Σ xᵀx` via [`Gram::hessian`]) of any values inside the block *with the
//! weights as they are now*, changes weights (prune, rotate), and collects again for the next
//! group. When the visitor returns, the block runs once more on the cached input with its final
//! weights and its output becomes the next block's cached input — so block `i` is calibrated on
//! the outputs of the already rewritten blocks before it. Where a boundary linear (a basis change
//! on the stream, e.g. from `denoise-rotate{mode=per-layer}`) enters the next block, the advance
//! runs through it: the cache holds the next block's input ([`BlockSpan::input`]), not this
//! block's output.
//!
//! Evaluation runs one chunk of sequences at a time (the chunking is chosen by whoever built the
//! [`Calibration`]), so attention scores of the whole set never exist at once.

use crate::pass::{PassError, PassErrorKind};
use ortho_ir::analysis::transformer::{
    analyze_transformer, Attention, Block, BranchKind, Mlp, Structure,
};
use ortho_ir::eval::{EvalTensor, Evaluator, Gram, Region, Stat, StatKind, StatRequest, Stats};
use ortho_ir::{Module, Op, ValueId};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// One step of a calibration pass: it works on layer `done + 1` of `total` (so `done` layers
/// are finished), doing `what`. Printed as `layer 3/30: what`.
#[derive(Debug, Clone, Copy)]
pub struct ProgressEvent<'a> {
    pub done: usize,
    pub total: usize,
    pub what: &'a str,
}

impl fmt::Display for ProgressEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {}/{}: {}", self.done + 1, self.total, self.what)
    }
}

/// A progress sink (one event per call); `src/` draws it on stderr (a bar on a terminal, lines
/// otherwise).
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// Calibration data and the runtime to evaluate it with.
#[derive(Clone)]
pub struct Calibration {
    pub evaluator: Arc<dyn Evaluator>,
    /// The graph-input feeds of each chunk: `(input name, tensor)`, e.g. `input_ids`
    /// `[chunk, seqlen]` int64 and, when the model has them, `attention_mask` and `position_ids`.
    pub chunks: Vec<Vec<(String, EvalTensor)>>,
    /// Sequences and tokens per sequence over all chunks (for reports).
    pub samples: usize,
    pub seqlen: usize,
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calibration")
            .field("samples", &self.samples)
            .field("seqlen", &self.seqlen)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Calibration {
    /// Sends one progress event to the sink, if there is one.
    pub fn progress(&self, event: &ProgressEvent) {
        if let Some(p) = &self.progress {
            p(event);
        }
    }
}

/// The error of a calibration-driven pass run without calibration data (kind
/// [`PassErrorKind::MissingCalibration`]).
pub fn missing_calibration(pass: &str) -> PassError {
    PassError::new(format!(
        "{pass} needs calibration data: pass --calib-text FILE --tokenizer tokenizer.json \
         (and optionally --calib-samples N --calib-seqlen L --calib-seed S)"
    ))
    .with_kind(PassErrorKind::MissingCalibration)
}

/// One block of the residual stream, between the value entering it and the value leaving it.
#[derive(Debug, Clone)]
pub struct BlockSpan {
    pub index: usize,
    /// The stream value the block's first branch reads and adds to. After a boundary linear (a
    /// basis change between blocks, `entry`) it is the boundary's result, not the previous
    /// block's `output`.
    pub input: ValueId,
    /// The boundary linear on the stream entering the block, when there is one.
    pub entry: Option<ortho_ir::NodeId>,
    /// The result of the block's last residual add.
    pub output: ValueId,
    /// The stream value between the block's two branches (the first residual add's result),
    /// when the block has two.
    pub mid: Option<ValueId>,
    pub attention: Option<Attention>,
    pub mlp: Option<Mlp>,
}

/// The first linear layer (a `MatMul`/`Gemm` with a constant weight) that depends on `v`.
fn linear_downstream(m: &Module, v: ValueId) -> Option<ortho_ir::NodeId> {
    let g = m.main_graph();
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        for (n, _) in g.users(v) {
            if !seen.insert(n) {
                continue;
            }
            if ortho_ir::analysis::linear::match_linear(m, g, n).is_some() {
                return Some(n);
            }
            todo.extend(g.results(n));
        }
    }
    None
}

/// The blocks of the main graph, in stream order, found by the structure analysis.
pub fn block_spans(m: &Module) -> Result<Vec<BlockSpan>, PassError> {
    let s = analyze_transformer(m, m.main);
    check_walkable(m, &s)?;
    let mut spans = Vec::new();
    for (index, b) in s.blocks.iter().enumerate() {
        if let Some(span) = block_span(m, &s, index, b)? {
            spans.push(span);
        }
    }
    Ok(spans)
}

/// Refuses a structure the layer-wise walk would cover only in part.
fn check_walkable(m: &Module, s: &Structure) -> Result<(), PassError> {
    let g = m.main_graph();
    if s.blocks.is_empty() {
        return Err(PassError::new(
            "the structure analysis found no transformer blocks (see `ortho-opt analyze`)",
        )
        .in_graph(m.main));
    }
    // A node on the stream that no layer claims, or a linear layer reading what the analysis takes
    // for the LM head, ends the blocks the analysis can see; walking only those would silently
    // calibrate or prune part of the model, so refuse instead. (Boundary linears between blocks
    // are no such node: the analysis makes each the entry of the block after it.)
    if let Some(u) = s.unmatched.first() {
        return Err(PassError::at(
            g,
            u.node,
            format!(
                "the structure analysis cannot place this node ({}; {} such node(s), see \
                 `ortho-opt analyze`), so the layer-wise walk would miss blocks after it",
                u.why,
                s.unmatched.len()
            ),
        )
        .in_graph(m.main));
    }
    for h in &s.heads {
        if let Some(n) = linear_downstream(m, h.linear.output) {
            return Err(PassError::at(
                g,
                h.linear.node,
                format!(
                    "the structure analysis takes this node for the LM head, but a linear layer \
                     ({}) reads its result: the stream goes on through a node no block contains, \
                     so the layer-wise walk would miss the blocks after it",
                    g.describe(n)
                ),
            )
            .in_graph(m.main));
        }
    }
    Ok(())
}

/// The span of block `b` (number `index`): its stream input (after its entry boundary, if any)
/// and output, and its middle value when it has two branches. `None` for a block without
/// branches.
fn block_span(
    m: &Module,
    s: &Structure,
    index: usize,
    b: &Block,
) -> Result<Option<BlockSpan>, PassError> {
    let g = m.main_graph();
    let ids: Vec<usize> = [b.attention, b.mlp, b.other]
        .into_iter()
        .flatten()
        .collect();
    let (Some(&first), Some(&last)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(None);
    };
    let (fb, lb) = (&s.branches[first], &s.branches[last]);
    for br in [fb, lb] {
        if !matches!(g.node(br.add).op, Op::Add) {
            return Err(PassError::at(
                g,
                br.add,
                "the residual sum is not a plain Add (fused skip-norms are not supported by \
                 the layer-wise calibration driver)",
            )
            .in_graph(m.main));
        }
    }
    let input = g
        .node(fb.add)
        .inputs()
        .find(|v| !fb.nodes.contains(&v.node))
        .ok_or_else(|| {
            PassError::at(g, fb.add, "residual Add without a stream operand").in_graph(m.main)
        })?;
    let output = ValueId {
        node: lb.add,
        output: 0,
    };
    let attention = b.attention.and_then(|i| match &s.branches[i].kind {
        BranchKind::Attention(a) => Some(a.clone()),
        _ => None,
    });
    let mlp = b.mlp.and_then(|i| match &s.branches[i].kind {
        BranchKind::Mlp(x) => Some(x.clone()),
        _ => None,
    });
    let mid = (first != last).then_some(ValueId {
        node: fb.add,
        output: 0,
    });
    Ok(Some(BlockSpan {
        index,
        input,
        entry: b.entry.map(|l| l.node),
        output,
        mid,
        attention,
        mlp,
    }))
}

/// What the driver hands the visitor for one block.
pub struct LayerCx<'a> {
    module: &'a mut Module,
    calib: &'a Calibration,
    /// Graph inputs fed on every run, in the order of each chunk's feed list.
    input_values: &'a [ValueId],
    cache: &'a [EvalTensor],
    pub block: &'a BlockSpan,
    /// Number of blocks in the walk.
    pub blocks: usize,
    /// A stream value inside the block and its tensors per chunk, final for the rest of the
    /// block (see [`LayerCx::feed_mid`]).
    mid: Option<(ValueId, Vec<EvalTensor>)>,
}

impl<'a> LayerCx<'a> {
    /// The module, to read or rewrite weights; collect again after changing them.
    pub fn module(&mut self) -> &mut Module {
        self.module
    }

    pub fn module_ref(&self) -> &Module {
        self.module
    }

    /// The cached residual-stream input of the block, one tensor `[chunk, seqlen, d]` per chunk.
    pub fn block_input(&self) -> &[EvalTensor] {
        self.cache
    }

    pub fn calibration(&self) -> &Calibration {
        self.calib
    }

    /// Runs the part of the block needed for `requests` on every chunk, with the current
    /// weights, and returns the accumulated statistics (request order).
    pub fn collect(&mut self, requests: &[StatRequest]) -> Result<Stats, PassError> {
        self.collect_first(requests, usize::MAX)
    }

    /// Declares the block's mid-stream value (`BlockSpan::mid`, with its tensors per chunk, as a
    /// `StatKind::Full` request returned them) final: the weights before it will not change
    /// again. From then on [`collect`](Self::collect) runs the block from that value instead of
    /// from the block input, and the walk advances the cache from it too — the first branch is
    /// not recomputed. Ignored unless every chunk has a tensor.
    pub fn feed_mid(&mut self, value: ValueId, tensors: Vec<EvalTensor>) {
        if tensors.len() == self.cache.len() {
            self.mid = Some((value, tensors));
        }
    }

    /// Whether [`feed_mid`](Self::feed_mid) was called for this block.
    pub fn has_mid(&self) -> bool {
        self.mid.is_some()
    }

    /// [`collect`](Self::collect) over the leading chunks only, as many as hold at least
    /// `sequences` calibration sequences (all of them when the set is smaller).
    pub fn collect_first(
        &mut self,
        requests: &[StatRequest],
        sequences: usize,
    ) -> Result<Stats, PassError> {
        let mut chunks = 0;
        let mut seen = 0;
        for c in &self.calib.chunks {
            if seen >= sequences {
                break;
            }
            seen += c
                .first()
                .map_or(1, |(_, t)| t.shape().first().copied().unwrap_or(1));
            chunks += 1;
        }
        let fed = match &self.mid {
            Some((v, t)) => (*v, &t[..chunks]),
            None => (self.block.input, &self.cache[..chunks]),
        };
        run_region(
            self.module,
            self.calib,
            self.input_values,
            Some(fed),
            requests,
        )
    }

    /// [`grams`](Self::grams) over the leading chunks holding at least `sequences` sequences.
    pub fn grams_first(
        &mut self,
        values: &[ValueId],
        sequences: usize,
    ) -> Result<Vec<Gram>, PassError> {
        let reqs: Vec<StatRequest> = values
            .iter()
            .map(|&value| StatRequest {
                value,
                kind: StatKind::Gram,
            })
            .collect();
        self.collect_first(&reqs, sequences)?
            .stats
            .into_iter()
            .map(|s| match s {
                Stat::Gram(g) => Ok(g),
                _ => Err(PassError::new("the evaluator returned no Gram matrix")),
            })
            .collect()
    }

    /// `Σ xᵀx` (with row counts) of each value, e.g. the inputs of a group of linears.
    pub fn grams(&mut self, values: &[ValueId]) -> Result<Vec<Gram>, PassError> {
        self.grams_first(values, usize::MAX)
    }

    /// One progress event for this layer.
    pub fn progress(&self, what: &str) {
        self.calib.progress(&ProgressEvent {
            done: self.block.index,
            total: self.blocks,
            what,
        });
    }
}

/// What [`walk_layers`] did.
#[derive(Debug, Clone, Default)]
pub struct WalkReport {
    pub blocks: usize,
    /// Seconds spent advancing the cache (running blocks with their final weights).
    pub advance_seconds: f64,
}

/// Compiles a region with `extra` (value, per-chunk tensors) fed besides the graph inputs and runs
/// it on every chunk.
fn run_region(
    m: &Module,
    calib: &Calibration,
    input_values: &[ValueId],
    extra: Option<(ValueId, &[EvalTensor])>,
    requests: &[StatRequest],
) -> Result<Stats, PassError> {
    let mut feeds = input_values.to_vec();
    if let Some((v, _)) = extra {
        feeds.push(v);
    }
    let region = Region {
        feeds,
        requests: requests.to_vec(),
    };
    let mut prog = calib
        .evaluator
        .compile(m, &region)
        .map_err(|e| PassError::new(format!("calibration: {e}")))?;
    let mut stats = Stats::for_region(&region);
    // With a fed value, only the chunks it has tensors for run.
    let n = extra.map_or(calib.chunks.len(), |(_, t)| t.len());
    for (c, chunk) in calib.chunks.iter().enumerate().take(n) {
        let mut f: Vec<EvalTensor> = chunk.iter().map(|(_, t)| t.clone()).collect();
        if let Some((_, cache)) = extra {
            f.push(cache[c].clone());
        }
        prog.run(&f, &mut stats)
            .map_err(|e| PassError::new(format!("calibration chunk {c}: {e}")))?;
    }
    Ok(stats)
}

/// The main graph's input values named by the first chunk's feeds, in that order.
fn input_values(m: &Module, calib: &Calibration) -> Result<Vec<ValueId>, PassError> {
    let g = m.main_graph();
    let Some(first) = calib.chunks.first() else {
        return Err(PassError::new("the calibration set is empty"));
    };
    first
        .iter()
        .map(|(name, _)| {
            g.inputs()
                .iter()
                .map(|&n| ValueId { node: n, output: 0 })
                .find(|&v| g.value_name(v) == name)
                .ok_or_else(|| PassError::new(format!("the model has no input '{name}'")))
        })
        .collect()
}

/// Walks the blocks of the main graph in order, calling `visit` for each with the block's cached
/// input, then advancing the cache through the block as `visit` left it.
pub fn walk_layers(
    m: &mut Module,
    calib: &Calibration,
    visit: &mut dyn FnMut(&mut LayerCx<'_>) -> Result<(), PassError>,
) -> Result<WalkReport, PassError> {
    walk_layers_until(m, calib, None, visit)
}

/// [`walk_layers`] that stops after block `last` (when given): later blocks are neither visited
/// nor run, which saves the forward passes a pass limited to early layers does not need.
pub fn walk_layers_until(
    m: &mut Module,
    calib: &Calibration,
    last: Option<usize>,
    visit: &mut dyn FnMut(&mut LayerCx<'_>) -> Result<(), PassError>,
) -> Result<WalkReport, PassError> {
    let mut spans = block_spans(m)?;
    if let Some(l) = last {
        spans.truncate(l + 1);
    }
    let inputs = input_values(m, calib)?;
    let t = Instant::now();
    let first = run_region(
        m,
        calib,
        &inputs,
        None,
        &[StatRequest {
            value: spans[0].input,
            kind: StatKind::Full,
        }],
    )?;
    let mut cache = take_full(first)?;
    let mut report = WalkReport {
        blocks: spans.len(),
        advance_seconds: t.elapsed().as_secs_f64(),
    };
    for (k, span) in spans.iter().enumerate() {
        // The value the next block reads: this block's output, or — across a boundary linear
        // (a basis change between blocks) — the boundary's result, so the advance applies it.
        let next_input = spans.get(k + 1).map(|s| s.input);
        let mid = {
            let mut cx = LayerCx {
                module: m,
                calib,
                input_values: &inputs,
                cache: &cache,
                block: span,
                blocks: spans.len(),
                mid: None,
            };
            visit(&mut cx)?;
            cx.mid
        };
        let Some(next_input) = next_input else {
            break;
        };
        let t = Instant::now();
        let fed = match &mid {
            Some((v, tensors)) => (*v, tensors.as_slice()),
            None => (span.input, cache.as_slice()),
        };
        let next = run_region(
            m,
            calib,
            &inputs,
            Some(fed),
            &[StatRequest {
                value: next_input,
                kind: StatKind::Full,
            }],
        )?;
        drop(mid);
        cache = take_full(next)?;
        report.advance_seconds += t.elapsed().as_secs_f64();
    }
    Ok(report)
}

fn take_full(s: Stats) -> Result<Vec<EvalTensor>, PassError> {
    match s.stats.into_iter().next() {
        Some(Stat::Full(v)) => Ok(v),
        _ => Err(PassError::new("the evaluator returned no tensor")),
    }
}
