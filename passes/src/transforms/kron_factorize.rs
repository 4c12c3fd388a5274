//! `kron-factorize{budget=F, rank=none|N|full, shapes=auto|m1xn1, max-flops=F, layers, linears}`:
//! replaces the blocks' linears by sums of Kronecker products (Shapeshifter's factorized
//! reshaped matrices), post-training.
//!
//! Needs: the structure analysis (blocks and their linears q, k, v, o, gate, up, down; dense
//! `MatMul` weights). Each chosen weight `W` (`m×n`) becomes `Σ_{k<r} A_k ⊗ B_k`, the nearest
//! such sum in Frobenius norm: the rank-`r` truncated SVD of the rearrangement `𝓡(W)`
//! (Van Loan–Pitsianis), in f64, the factors stored in the weight's dtype. Factor shapes
//! (`A_k: m1×n1`, `B_k: m2×n2`, `m = m1·m2`, `n = n1·n2`) are given or searched per matrix
//! (`shapes=auto`: a few candidates, the one with the least error at the matrix's share of the
//! budget); ranks are allocated across matrices to remove the fraction `budget` of the chosen
//! weights' parameters, optionally with each layer's multiply-adds per token capped at
//! `max-flops` × dense.
//! Leaves: `ortho.FactorizedLinear(x, A, B)` in place of each chosen `MatMul` (name, result and
//! type kept), the old weights removed when nothing else reads them, the `ortho` opset
//! imported; `lower-ortho` turns the op into standard ONNX for export. Notes: one line per
//! linear (shape, rank, parameters, MACs, relative error ‖W−Ŵ‖/‖W‖ from the spectrum) and
//! the totals. Refused before any change: a budget outside (0, 1),
//! shapes that do not divide a weight, a rank above a matrix's full rank (each naming the
//! matrix).

use crate::calib::Calibration;
use crate::factorize::apply::{factorize, FactorizeSpec, FactorizeStats, Method};
use crate::factorize::options::{
    check_target, RankSpec, ShapeSpec, BUDGET, CALIB, MAX_FLOPS, RANK,
};
use crate::options::{OptionError, OptionKind};
use crate::pass::{PassContext, PassError, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use ortho_ir::Module;

crate::pass_options! {
    /// Options of [`kron_factorize`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct KronFactorizeOptions {
        pub budget: f64 = BUDGET,
        pub rank: RankSpec = RANK,
        /// The first factor's shape.
        pub shapes: ShapeSpec = {
            name: "shapes",
            default: ShapeSpec::Auto,
            doc: "auto (searched per matrix), or m1xn1: every A_k is m1×n1 (m1 | out, n1 | in).",
        },
        pub max_flops: f64 = MAX_FLOPS,
        pub calib: bool = CALIB,
        /// ALS steps on the exact activation objective.
        pub als_steps: usize = {
            name: "als-steps",
            default: 0,
            doc: "With calib: alternating least-squares steps on the exact output error (the full input Gram) after the whitened fit; 0: none.",
            kind: OptionKind::Int { min: 0, max: 1000 },
        },
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
    }
    check: KronFactorizeOptions::check;
}

impl KronFactorizeOptions {
    fn check(&self) -> Result<(), OptionError> {
        if self.als_steps > 0 && !self.calib {
            return Err(OptionError::Invalid(
                "als-steps needs calib=true (the steps minimize the output error on calibration data)"
                    .into(),
            ));
        }
        check_target(self.budget, self.max_flops)
    }

    /// The factorization these options ask for.
    pub fn spec(&self) -> FactorizeSpec {
        FactorizeSpec {
            method: Method::Kron(self.shapes),
            budget: self.budget,
            rank: self.rank,
            max_flops: self.max_flops,
            layers: self.layers.0.clone(),
            roles: self.linears.0.clone(),
            calib: self.calib,
            als_steps: self.als_steps,
        }
    }
}

crate::declare_pass! {
    name: "kron-factorize",
    summary: "Replaces the blocks' linears by sums of Kronecker products (SVD of the rearranged weight) under a parameter budget.",
    options: KronFactorizeOptions,
    run: run_pass,
}

/// Factorizes the module's block linears as Kronecker sums.
pub fn kron_factorize(
    m: &mut Module,
    opts: &KronFactorizeOptions,
    calib: Option<&Calibration>,
) -> Result<FactorizeStats, PassError> {
    factorize(m, &opts.spec(), calib)
}

fn run_pass(
    m: &mut Module,
    opts: &KronFactorizeOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    crate::factorize::run(m, &opts.spec(), cx)
}
