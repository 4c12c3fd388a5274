//! `lowrank-factorize{budget=F, rank=none|N|full, max-flops=F, layers, linears}`: replaces the
//! blocks' linears by truncated SVDs `W ≈ U·Vᵀ`, the baseline `kron-factorize` is compared
//! against.
//!
//! Needs: the structure analysis (blocks and their linears q, k, v, o, gate, up, down; dense
//! `MatMul` weights). Each chosen weight `W` (`m×n`) becomes its best rank-`r` approximation in
//! Frobenius norm (Eckart–Young), in f64, `U: m×r` and `V: n×r` stored in the weight's dtype
//! (each scaled by `√σ`). Ranks are allocated across matrices to remove the fraction `budget`
//! of the chosen weights' parameters (`r·(m+n)` per matrix against `m·n`), optionally with each
//! layer's multiply-adds per token capped at `max-flops` × dense.
//! Leaves: `ortho.FactorizedLinear(x, U, V)` (`y = (x·V)·Uᵀ`) in place of each chosen `MatMul`,
//! the old weights removed when nothing else reads them, the `ortho` opset imported;
//! `lower-ortho` turns the op into two ONNX MatMuls. Notes: one line per linear and the totals.
//! Refused before any change: a budget outside (0, 1), a rank above
//! `min(m, n)` (naming the matrix).

use crate::calib::Calibration;
use crate::factorize::apply::{factorize, FactorizeSpec, FactorizeStats, Method};
use crate::factorize::options::{check_target, RankSpec, BUDGET, CALIB, MAX_FLOPS, RANK};
use crate::options::OptionError;
use crate::pass::{PassContext, PassError, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use ortho_ir::Module;

crate::pass_options! {
    /// Options of [`lowrank_factorize`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct LowrankFactorizeOptions {
        pub budget: f64 = BUDGET,
        pub rank: RankSpec = RANK,
        pub max_flops: f64 = MAX_FLOPS,
        pub calib: bool = CALIB,
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
    }
    check: LowrankFactorizeOptions::check;
}

impl LowrankFactorizeOptions {
    fn check(&self) -> Result<(), OptionError> {
        check_target(self.budget, self.max_flops)
    }

    /// The factorization these options ask for.
    pub fn spec(&self) -> FactorizeSpec {
        FactorizeSpec {
            method: Method::LowRank,
            budget: self.budget,
            rank: self.rank,
            max_flops: self.max_flops,
            layers: self.layers.0.clone(),
            roles: self.linears.0.clone(),
            calib: self.calib,
            als_steps: 0,
        }
    }
}

crate::declare_pass! {
    name: "lowrank-factorize",
    summary: "Replaces the blocks' linears by truncated SVDs U·Vᵀ under a parameter budget (the baseline of kron-factorize).",
    options: LowrankFactorizeOptions,
    run: run_pass,
}

/// Factorizes the module's block linears as low-rank products.
pub fn lowrank_factorize(
    m: &mut Module,
    opts: &LowrankFactorizeOptions,
    calib: Option<&Calibration>,
) -> Result<FactorizeStats, PassError> {
    factorize(m, &opts.spec(), calib)
}

fn run_pass(
    m: &mut Module,
    opts: &LowrankFactorizeOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    crate::factorize::run(m, &opts.spec(), cx)
}
