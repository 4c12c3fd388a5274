//! [`CpuEvaluator`]: the CPU engine behind `ortho_ir::eval::Evaluator`, which calibration passes
//! use to run regions of a module (one transformer block, the embedding) on chunks of data.
//!
//! Compiling a region goes through [`Plan::compile_region`] with the module's current weights,
//! so a pass that rewrote weights compiles again and sees them. Gram matrices are accumulated
//! with an f64 GEMM (`Σ xᵀx` of a chunk added straight into the f64 accumulator): the chunk is
//! widened to f64 once, so no product or sum is rounded to f32.

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
                StatKind::Gram => gram_f64(stats, i, t.shape(), x, self.threads)?,
                k => stats.accumulate(i, *k, t.shape(), x)?,
            }
        }
        Ok(())
    }
}

/// Adds `xᵀx` of the rows of `x` to Gram accumulator `i` with an f64 GEMM.
fn gram_f64(
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
    let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst is d×d row-major (cs 1, rs d); lhs is xᵀ (d × rows: element (p, r) at
    // r·d + p, so column stride d, row stride 1); rhs is x (rows × d, cs 1, rs d). All
    // three buffers are live, correctly sized and do not alias.
    unsafe {
        gemm::gemm(
            d,
            d,
            rows,
            g.xtx.as_mut_ptr(),
            1,
            d as isize,
            true,
            xf.as_ptr(),
            d as isize,
            1,
            xf.as_ptr(),
            1,
            d as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    g.rows += rows as u64;
    Ok(())
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
            gram_f64(&mut a, 0, &shape, &x, 2).unwrap();
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
}
