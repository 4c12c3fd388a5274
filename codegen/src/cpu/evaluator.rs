//! [`CpuEvaluator`]: the CPU engine behind `ortho_ir::eval::Evaluator`, which calibration passes
//! use to run regions of a module (one transformer block, the embedding) on chunks of data.
//!
//! Compiling a region goes through [`Plan::compile_region`] with the module's current weights,
//! so a pass that rewrote weights compiles again and sees them. Gram matrices are accumulated
//! in f64 from f32 GEMMs over blocks of 256 rows (lower triangle only, then mirrored): f32
//! rounding never spans more than one block, the sum over the calibration set is f64.

use crate::cpu::plan::{Plan, PlanOptions};
use crate::cpu::tensor::HostTensor;
use ortho_ir::eval::{
    CompiledRegion, EvalError, EvalTensor, Evaluator, Gram, Region, Stat, StatKind, Stats,
};
use ortho_ir::{DType, Module};

/// The CPU engine as an evaluator.
#[derive(Debug, Clone)]
pub struct CpuEvaluator {
    /// Threads for kernels and for the Gram GEMM.
    pub threads: usize,
}

impl Default for CpuEvaluator {
    fn default() -> Self {
        CpuEvaluator {
            threads: PlanOptions::default().threads,
        }
    }
}

struct CpuRegion {
    plan: Plan,
    kinds: Vec<StatKind>,
    /// Per request, the plan output holding its value (a value requested twice is computed once).
    output_of: Vec<usize>,
    nfeeds: usize,
    threads: usize,
}

impl Evaluator for CpuEvaluator {
    fn compile(
        &self,
        module: &Module,
        region: &Region,
    ) -> Result<Box<dyn CompiledRegion>, EvalError> {
        let opts = PlanOptions {
            threads: self.threads.max(1),
            ..PlanOptions::default()
        };
        let mut outs: Vec<ortho_ir::ValueId> = Vec::new();
        let mut output_of = Vec::new();
        for r in &region.requests {
            let i = match outs.iter().position(|v| *v == r.value) {
                Some(i) => i,
                None => {
                    outs.push(r.value);
                    outs.len() - 1
                }
            };
            output_of.push(i);
        }
        let plan = Plan::compile_region(module, &opts, &region.feeds, &outs)
            .map_err(|e| EvalError(format!("compiling the region: {e}")))?;
        // Graph inputs inside the region must be fed (as values), not left to the plan.
        let g = module.main_graph();
        for name in plan.input_names() {
            if !name.starts_with("feed#") {
                return Err(EvalError(format!(
                    "the region reads graph input '{name}', which is not among its feeds ({})",
                    region
                        .feeds
                        .iter()
                        .map(|v| format!("'{}'", g.value_name(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(Box::new(CpuRegion {
            plan,
            kinds: region.requests.iter().map(|r| r.kind).collect(),
            output_of,
            nfeeds: region.feeds.len(),
            threads: self.threads.max(1),
        }))
    }
}

fn to_host(t: &EvalTensor) -> Result<HostTensor, EvalError> {
    match t {
        EvalTensor::F32 { shape, data } => HostTensor::from_vec(shape.clone(), data.clone()),
        EvalTensor::I64 { shape, data } => HostTensor::from_vec(shape.clone(), data.clone()),
    }
    .map_err(|e| EvalError(e.to_string()))
}

impl CompiledRegion for CpuRegion {
    fn run(&mut self, feeds: &[EvalTensor], stats: &mut Stats) -> Result<(), EvalError> {
        if feeds.len() != self.nfeeds {
            return Err(EvalError(format!(
                "the region takes {} feeds, got {}",
                self.nfeeds,
                feeds.len()
            )));
        }
        let names: Vec<String> = (0..feeds.len()).map(|i| format!("feed#{i}")).collect();
        let wanted = self.plan.input_names();
        let mut host: Vec<(&str, HostTensor)> = Vec::new();
        for (name, t) in names.iter().zip(feeds) {
            // Feeds outside the region's cone are ignored.
            if wanted.iter().any(|w| w == name) {
                host.push((name.as_str(), to_host(t)?));
            }
        }
        let outs = self
            .plan
            .run(&host)
            .map_err(|e| EvalError(format!("running the region: {e}")))?;
        for (i, (&o, kind)) in self.output_of.iter().zip(&self.kinds).enumerate() {
            let t = &outs[o].1;
            if t.dtype() != DType::F32 {
                return Err(EvalError(format!(
                    "requested value #{i} is {}, statistics need float32",
                    t.dtype()
                )));
            }
            let x = t.as_f32().unwrap_or(&[]);
            match kind {
                StatKind::Gram => gram_into(stats, i, t.shape(), x, self.threads)?,
                k => stats.accumulate(i, *k, t.shape(), x)?,
            }
        }
        Ok(())
    }
}

/// Rows multiplied in f32 before their partial Gram is added into the f64 accumulator.
const GRAM_ROWS: usize = 256;

/// Adds `xᵀx` of the rows of `x` to Gram accumulator `i`: blocks of [`GRAM_ROWS`] rows are
/// multiplied with an f32 GEMM (twice the f64 rate) and each block's product is added into the
/// f64 accumulator, so f32 rounding only ever spans 256 products (relative error ~1e-6, far
/// below SparseGPT's 1 % damping) while the sum over the calibration set stays f64.
fn gram_into(
    stats: &mut Stats,
    i: usize,
    shape: &[usize],
    x: &[f32],
    threads: usize,
) -> Result<(), EvalError> {
    let d = shape.last().copied().unwrap_or(1).max(1);
    let rows = x.len() / d;
    let slot = stats
        .stats
        .get_mut(i)
        .ok_or_else(|| EvalError(format!("statistic #{i} was not requested")))?;
    if matches!(slot, Stat::Empty) {
        *slot = Stat::Gram(Gram::new(d));
    }
    let Stat::Gram(g) = slot else {
        return Err(EvalError(format!("statistic #{i} changed kind")));
    };
    if g.dim != d {
        return Err(EvalError(format!(
            "statistic #{i}: the last axis was {} wide and is now {d}",
            g.dim
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut part = vec![0.0f32; d * d];
    for r0 in (0..rows).step_by(GRAM_ROWS) {
        let n = GRAM_ROWS.min(rows - r0);
        let xb = &x[r0 * d..(r0 + n) * d];
        lower_gram_f32(xb, n, d, &mut part, par);
        for i in 0..d {
            let (acc, p) = (
                &mut g.xtx[i * d..i * d + i + 1],
                &part[i * d..i * d + i + 1],
            );
            for (a, &b) in acc.iter_mut().zip(p) {
                *a += f64::from(b);
            }
        }
    }
    for i in 0..d {
        for j in i + 1..d {
            g.xtx[i * d + j] = g.xtx[j * d + i];
        }
    }
    g.rows += rows as u64;
    Ok(())
}

/// The lower triangle (with the diagonal) of `xᵀx` for the `n × d` row-major `x`, written into
/// the row-major `d × d` `out` (the upper triangle is left as it was). Only the lower triangle
/// is multiplied, one panel of `PANEL` columns at a time (rows from the panel's first column
/// down): a little over half the work of the full product.
fn lower_gram_f32(x: &[f32], n: usize, d: usize, out: &mut [f32], par: gemm::Parallelism) {
    const PANEL: usize = 128;
    assert!(
        x.len() >= n * d && out.len() >= d * d,
        "gram: buffers too small"
    );
    let mut c0 = 0;
    while c0 < d {
        let c1 = (c0 + PANEL).min(d);
        // SAFETY: dst is the block rows c0..d × columns c0..c1 of the d×d row-major `out`
        // (row stride d); lhs is xᵀ restricted to rows c0..d (element (p, r) at r·d + c0 + p:
        // row stride 1, column stride d); rhs is x restricted to columns c0..c1 (element (r, q)
        // at r·d + c0 + q). Every index stays below d·d resp. n·d (checked above), and `out`
        // does not alias `x`.
        unsafe {
            gemm::gemm(
                d - c0,
                c1 - c0,
                n,
                out.as_mut_ptr().add(c0 * d + c0),
                1,
                d as isize,
                false,
                x.as_ptr().add(c0),
                d as isize,
                1,
                x.as_ptr().add(c0),
                1,
                d as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
        c0 = c1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_gram_matches_the_portable_accumulator() {
        let shape = [2usize, 3, 5];
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let region = Region {
            feeds: vec![],
            requests: vec![],
        };
        let mut a = Stats {
            stats: vec![Stat::Empty],
        };
        let mut b = Stats::for_region(&region);
        b.stats.push(Stat::Empty);
        for _ in 0..2 {
            gram_into(&mut a, 0, &shape, &x, 2).unwrap();
            b.accumulate(0, StatKind::Gram, &shape, &x).unwrap();
        }
        let (Stat::Gram(ga), Stat::Gram(gb)) = (&a.stats[0], &b.stats[0]) else {
            panic!("not grams")
        };
        assert_eq!(ga.rows, 12);
        assert_eq!(gb.rows, 12);
        for (p, q) in ga.xtx.iter().zip(&gb.xtx) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
        // A hand-checked entry: Σ over rows of x[r,0]².
        let direct: f64 = (0..6).map(|r| f64::from(x[r * 5]).powi(2)).sum::<f64>() * 2.0;
        assert!((ga.xtx[0] - direct).abs() < 1e-12);
    }

    #[test]
    fn gram_panels_cover_the_whole_matrix() {
        // 300 columns: three panels of the lower-triangle product (128, 128, 44 wide); 600
        // rows: three f32 blocks (256, 256, 88). The values are multiples of 1/64 whose
        // products and block sums are exact in f32, so the result must match to rounding.
        let (rows, d) = (600usize, 300usize);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let mut a = Stats {
            stats: vec![Stat::Empty],
        };
        gram_into(&mut a, 0, &[rows, d], &x, 2).unwrap();
        gram_into(&mut a, 0, &[rows, d], &x, 1).unwrap();
        let Stat::Gram(g) = &a.stats[0] else {
            panic!("not a gram")
        };
        for i in 0..d {
            for j in 0..d {
                let direct: f64 = (0..rows)
                    .map(|r| f64::from(x[r * d + i]) * f64::from(x[r * d + j]))
                    .sum::<f64>()
                    * 2.0;
                let got = g.xtx[i * d + j];
                assert!((got - direct).abs() < 1e-9, "({i}, {j}): {got} vs {direct}");
            }
        }
    }
}
