//! Factorized linears (`ortho.FactorizedLinear`), shared by `kron-factorize` and
//! `lowrank-factorize` (not a pass): the maths on one matrix (`matrix`), the rank allocation
//! under a budget (`plan`), the options both passes declare (`options`), rewriting a module's
//! block linears (`apply`), and the op's export form in standard ONNX (`lower`, called by
//! `lower-ortho`).

pub mod als;
pub mod apply;
pub mod lower;
pub mod matrix;
pub mod options;
pub mod plan;
pub mod whiten;

use crate::pass::{PassContext, PassError, PassResult};
use apply::{factorize, FactorizeSpec, FactorizeStats};
use ortho_ir::Module;

/// The body of both passes' `run_pass`: factorize as `spec` says, then record the notes.
pub(crate) fn run(
    m: &mut Module,
    spec: &FactorizeSpec,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let calib = cx.calibration().cloned();
    let s = factorize(m, spec, calib.as_ref())?;
    report(cx, &s);
    Ok(PassResult::changed(s.linears > 0))
}

/// The notes and statistics both passes record.
pub(crate) fn report(cx: &mut PassContext, s: &FactorizeStats) {
    for line in &s.lines {
        cx.note(line.clone());
    }
    if !s.skipped.is_empty() {
        cx.note(format!(
            "kept as they are (factorized already): {}",
            s.skipped.join(", ")
        ));
    }
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    if s.linears == 0 {
        cx.note("no linear factorized".to_string());
    } else {
        cx.note(format!(
        "{} linears: {} of {} params kept ({:.2} %, {:.2} % removed), MACs per token {:.2} % of dense, {} {:.4} overall, {:.4} at most",
        s.linears,
        s.factor_params,
        s.dense_params,
        pct(s.factor_params, s.dense_params),
        100.0 - pct(s.factor_params, s.dense_params),
        pct(s.factor_macs, s.dense_macs),
        apply::err_name(s.activation),
        s.total_rel_error,
        s.max_rel_error
    ));
    }
    if s.plain_starts > 0 {
        cx.note(format!(
            "{} Kronecker fits start from the weight-only fit (lower output error than the fit whitened by the Kronecker-factored Gram)",
            s.plain_starts
        ));
    }
    if s.als_refined + s.als_skipped > 0 {
        cx.note(format!(
            "ALS on the exact Gram: {} linears refined, output error (sum of squares) {:.4e} -> {:.4e} ({:.2} % lower){}",
            s.als_refined,
            s.als_before,
            s.als_after,
            100.0 * (1.0 - s.als_after / s.als_before.max(f64::MIN_POSITIVE)),
            if s.als_skipped > 0 {
                format!(", {} skipped (system above {} unknowns)", s.als_skipped, als::MAX_UNKNOWNS)
            } else {
                String::new()
            }
        ));
    }
    cx.stat("linears", s.linears as u64);
    cx.stat("dense-params", s.dense_params as u64);
    cx.stat("factor-params", s.factor_params as u64);
}

/// A seeded xorshift stream in [-1, 1) for the factorize tests (`salt` keeps each module's
/// draws as they were).
#[cfg(test)]
pub(crate) fn test_rnd(n: usize, seed: u64, salt: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(salt);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}
