//! The evaluator interface: how passes run (part of) a module's main graph on data without
//! depending on a runtime.
//!
//! `passes` depends on `ir` only, so calibration-driven passes (pruning, DenoiseRotator) reach the
//! CPU engine through the [`Evaluator`] trait defined here and implemented by `codegen`
//! (`ortho_codegen::cpu::CpuEvaluator`); `src/` constructs the implementation and hands it to the
//! pass manager.
//!
//! The model is "compile once, run many":
//!
//! 1. [`Evaluator::compile`] takes the module *as it is now* (so weights a pass has just rewritten
//!    are what runs — compile again after changing weights) and a [`Region`]: values that will be
//!    fed ([`Region::feeds`], graph inputs or any intermediate value, e.g. the cached
//!    residual-stream tensor entering a block) and the statistics wanted ([`Region::requests`]).
//!    Only the nodes needed to compute the requested values from the feeds (and constants) are
//!    compiled, so one transformer block can be evaluated alone. A feed outside that cone is
//!    ignored; a graph input inside it that is not fed is an error at compile time.
//! 2. [`CompiledRegion::run`] executes the region on one chunk of data (the caller splits the
//!    calibration set into chunks of a few sequences, so attention scores of the whole set never
//!    exist at once) and accumulates into [`Stats`], one [`Stat`] per request, without keeping
//!    activations (except for [`StatKind::Full`], which asks for them).
//!
//! All statistics treat a value of shape `[..., d]` as `rows × d` (every axis but the last
//! flattened into rows) and accumulate in f64.

use crate::graph::ValueId;
use crate::module::Module;
use std::fmt;

/// Host data fed to or returned from an evaluator: row-major, dense.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl EvalTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            EvalTensor::F32 { shape, .. } | EvalTensor::I64 { shape, .. } => shape,
        }
    }

    /// Bytes of the payload (for memory estimates).
    pub fn byte_len(&self) -> usize {
        match self {
            EvalTensor::F32 { data, .. } => data.len() * 4,
            EvalTensor::I64 { data, .. } => data.len() * 8,
        }
    }
}

/// What to accumulate for one requested value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// `Σ xᵀx` over rows (the `d × d` Gram matrix of the last axis), in f64, with the row count.
    Gram,
    /// `Σ x²` per column (the diagonal of the Gram matrix, at O(d) cost), with the row count.
    ColSumSq,
    /// The whole tensor of every run, kept in f32 (e.g. a block's output to cache).
    Full,
}

/// One requested statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatRequest {
    pub value: ValueId,
    pub kind: StatKind,
}

/// The part of the main graph to compile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Region {
    /// Values the caller supplies on every run, in the order of [`CompiledRegion::run`]'s feeds.
    pub feeds: Vec<ValueId>,
    pub requests: Vec<StatRequest>,
}

/// The accumulated Gram matrix `Σ xᵀx` of a value's last axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub dim: usize,
    /// Rows seen (tokens).
    pub rows: u64,
    /// `dim × dim`, row-major, symmetric (both triangles filled).
    pub xtx: Vec<f64>,
}

impl Gram {
    pub fn new(dim: usize) -> Gram {
        Gram {
            dim,
            rows: 0,
            xtx: vec![0.0; dim * dim],
        }
    }

    /// SparseGPT's input Hessian `H = (2/N) Σ xᵀx` (zero when no row was seen).
    pub fn hessian(&self) -> Vec<f64> {
        let s = if self.rows == 0 {
            0.0
        } else {
            2.0 / self.rows as f64
        };
        self.xtx.iter().map(|v| v * s).collect()
    }

    /// `Σ x²` per column: the diagonal.
    pub fn diag(&self) -> Vec<f64> {
        (0..self.dim).map(|i| self.xtx[i * self.dim + i]).collect()
    }
}

/// The accumulated value of one [`StatRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum Stat {
    /// Nothing run yet (the width is learned from the first run).
    Empty,
    Gram(Gram),
    ColSumSq {
        sums: Vec<f64>,
        rows: u64,
    },
    /// One tensor per run, in run order.
    Full(Vec<EvalTensor>),
}

/// The statistics of a region's requests, in request order; accumulates over runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    pub stats: Vec<Stat>,
}

impl Stats {
    /// Empty accumulators for `region`.
    pub fn for_region(region: &Region) -> Stats {
        Stats {
            stats: region.requests.iter().map(|_| Stat::Empty).collect(),
        }
    }

    /// Adds the rows of `x` (shape `[..., d]`, row-major f32) to accumulator `i`, by the request's
    /// kind. Implementations of [`CompiledRegion`] may use it or a faster equivalent. The Gram
    /// product is computed in f64 here (portable, O(rows·d²)).
    pub fn accumulate(
        &mut self,
        i: usize,
        kind: StatKind,
        shape: &[usize],
        x: &[f32],
    ) -> Result<(), EvalError> {
        let d = shape.last().copied().unwrap_or(1).max(1);
        let rows = x.len() / d;
        let slot = self
            .stats
            .get_mut(i)
            .ok_or_else(|| EvalError(format!("statistic #{i} was not requested")))?;
        match kind {
            StatKind::Full => {
                if matches!(slot, Stat::Empty) {
                    *slot = Stat::Full(Vec::new());
                }
                if let Stat::Full(v) = slot {
                    v.push(EvalTensor::F32 {
                        shape: shape.to_vec(),
                        data: x.to_vec(),
                    });
                }
            }
            StatKind::ColSumSq => {
                if matches!(slot, Stat::Empty) {
                    *slot = Stat::ColSumSq {
                        sums: vec![0.0; d],
                        rows: 0,
                    };
                }
                let Stat::ColSumSq { sums, rows: n } = slot else {
                    return Err(EvalError(format!("statistic #{i} changed kind")));
                };
                if sums.len() != d {
                    return Err(width_changed(i, sums.len(), d));
                }
                for r in x.chunks_exact(d) {
                    for (s, &v) in sums.iter_mut().zip(r) {
                        *s += f64::from(v) * f64::from(v);
                    }
                }
                *n += rows as u64;
            }
            StatKind::Gram => {
                if matches!(slot, Stat::Empty) {
                    *slot = Stat::Gram(Gram::new(d));
                }
                let Stat::Gram(g) = slot else {
                    return Err(EvalError(format!("statistic #{i} changed kind")));
                };
                if g.dim != d {
                    return Err(width_changed(i, g.dim, d));
                }
                let mut row = vec![0.0f64; d];
                for r in x.chunks_exact(d) {
                    for (a, &b) in row.iter_mut().zip(r) {
                        *a = f64::from(b);
                    }
                    // Upper triangle only; mirrored once at the end of the chunk.
                    for p in 0..d {
                        let xp = row[p];
                        if xp == 0.0 {
                            continue;
                        }
                        let dst = &mut g.xtx[p * d + p..(p + 1) * d];
                        for (h, &xq) in dst.iter_mut().zip(&row[p..]) {
                            *h += xp * xq;
                        }
                    }
                }
                for p in 0..d {
                    for q in 0..p {
                        g.xtx[p * d + q] = g.xtx[q * d + p];
                    }
                }
                g.rows += rows as u64;
            }
        }
        Ok(())
    }
}

fn width_changed(i: usize, was: usize, now: usize) -> EvalError {
    EvalError(format!(
        "statistic #{i}: the last axis was {was} wide and is now {now}"
    ))
}

/// An evaluator failure (compile or run), with a message naming the node or value concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// A runtime that can compile and run regions of a module's main graph.
pub trait Evaluator: Send + Sync {
    /// Compiles the nodes of `module`'s main graph that compute `region`'s requested values from
    /// its feeds and the constants, reading the weights as they are now.
    fn compile(
        &self,
        module: &Module,
        region: &Region,
    ) -> Result<Box<dyn CompiledRegion>, EvalError>;
}

/// A compiled region; runs many times.
pub trait CompiledRegion {
    /// Runs once on `feeds` (one tensor per [`Region::feeds`] entry, same order) and accumulates
    /// every request into `stats` (made by [`Stats::for_region`]). Gram matrices are symmetric
    /// with both triangles filled after every run.
    fn run(&mut self, feeds: &[EvalTensor], stats: &mut Stats) -> Result<(), EvalError>;
}
