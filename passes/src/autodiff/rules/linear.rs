//! Gradient rules of the linear ops: MatMul (batched, broadcasting) and Gemm. The structured
//! linears other passes create (factorized, low-rank, Kronecker) get their rules here.
//!
//! For `Y = A·B`: `dA = dY·Bᵀ` and `dB = Aᵀ·dY`, each reduced over the batch axes its operand
//! was broadcast along. A 2-D weight read by a batched activation (every linear layer of a
//! decoder) gets its gradient as one Gemm over the flattened rows, `A₂ᵀ·dY₂`, instead of a
//! batched product followed by a sum, and the activation's as `dY₂·Bᵀ` with Gemm's `transB`,
//! so no transposed copy of the weight is made (those copies were 40 % of a SmolLM2 step).

use super::Site;
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::{attrs, Dim, Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::MatMul => slot < 2,
        Op::Gemm(_) => slot < 3,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    match &s.op {
        Op::MatMul => Some(matmul(b, s)),
        Op::Gemm(a) => Some(gemm(b, s, a)),
        _ => None,
    }
}

/// The permutation that swaps the last two axes of a rank-`r` tensor.
fn swap_last(r: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..r as i64).collect();
    p.swap(r - 2, r - 1);
    p
}

fn gemm_op(alpha: f32, ta: bool, tb: bool) -> Op {
    Op::Gemm(attrs::Gemm {
        alpha: (alpha != 1.0).then_some(alpha),
        beta: None,
        trans_a: ta.then_some(1),
        trans_b: tb.then_some(1),
    })
}

fn matmul(b: &mut Builder<'_>, s: &Site) -> BResult<Vec<Option<ValueId>>> {
    let dy = s.dy0(b)?;
    let (a, w) = (s.x(b, 0)?, s.x(b, 1)?);
    let (ad, wd, yd) = (b.dims(a)?, b.dims(w)?, b.dims(s.y[0])?);
    if ad.len() < 2 || wd.len() < 2 {
        return matmul_vector(b, s, (a, ad.len()), (w, wd.len()), dy);
    }
    let batch = &yd[..yd.len() - 2];
    let mut dx = vec![None, None];
    let k = ad[ad.len() - 1].fixed();
    let n = wd[wd.len() - 1].fixed();
    // dY as rows `[-1, n]` when the weight is 2-D with a known width, made at its first use
    // and shared by both gradients.
    let width = if wd.len() == 2 { n } else { None };
    let mut rows = None;
    let mut dy_rows = |b: &mut Builder<'_>, n: i64| {
        *rows.get_or_insert_with(|| {
            let ns = b.ints(&[-1, n], "rows");
            b.one(Op::Reshape(attrs::Reshape::default()), &[dy, ns], "rows")
        })
    };
    if s.wants(0) {
        dx[0] = Some(match width {
            // A 2-D weight: one Gemm reading W transposed in place (no transposed copy of the
            // weight per step), back to A's run-time shape; A's batch axes are Y's.
            Some(n) => {
                let d2 = dy_rows(b, n);
                let t = b.one(gemm_op(1.0, false, true), &[d2, w], "dA");
                b.reshape_like(t, a)
            }
            None => {
                let wt = b.transpose(w, swap_last(wd.len()));
                let t = b.one(Op::MatMul, &[dy, wt], "dA");
                let mut shape = batch.to_vec();
                shape.extend_from_slice(&ad[ad.len() - 2..]);
                b.sum_to(t, a, &shape)?
            }
        });
    }
    if s.wants(1) {
        dx[1] = Some(match (width, k) {
            (Some(n), Some(k)) => {
                let ks = b.ints(&[-1, k], "rows");
                let a2 = b.one(Op::Reshape(attrs::Reshape::default()), &[a, ks], "rows");
                let d2 = dy_rows(b, n);
                b.one(gemm_op(1.0, true, false), &[a2, d2], "dB")
            }
            _ => {
                let at = b.transpose(a, swap_last(ad.len()));
                let t = b.one(Op::MatMul, &[at, dy], "dB");
                let mut shape = batch.to_vec();
                shape.extend_from_slice(&wd[wd.len() - 2..]);
                b.sum_to(t, w, &shape)?
            }
        });
    }
    Ok(dx)
}

/// MatMul with a 1-D operand (ONNX reads a 1-D `A` as a row `[1, K]` and a 1-D `B` as a column
/// `[K, 1]`, then drops that axis from the result): the products below restore the dropped
/// axis of `dY` and sum the 1-D operand's gradient over every other axis. A low-rank
/// `ortho.FactorizedLinear` of a single token lowers to this.
fn matmul_vector(
    b: &mut Builder<'_>,
    s: &Site,
    (a, ar): (ValueId, usize),
    (w, wr): (ValueId, usize),
    dy: ValueId,
) -> BResult<Vec<Option<ValueId>>> {
    let mut dx = vec![None, None];
    // Every axis but the last of a rank-`r` product, for summing it down to a vector.
    let lead = |r: usize| (0..r as i64 - 1).collect::<Vec<i64>>();
    match (ar, wr) {
        (1, 1) => {
            // y = a·w is a scalar: dA = dY·w, dB = dY·a.
            if s.wants(0) {
                dx[0] = Some(b.mul(dy, w));
            }
            if s.wants(1) {
                dx[1] = Some(b.mul(dy, a));
            }
        }
        (1, _) => {
            // y[…, n] = Σ_k a[k]·w[…, k, n].
            let row = b.unsqueeze(dy, &[-2]);
            if s.wants(0) {
                let wt = b.transpose(w, swap_last(wr));
                let t = b.one(Op::MatMul, &[row, wt], "dA");
                dx[0] = Some(b.reduce_sum(t, &lead(wr), false));
            }
            if s.wants(1) {
                let col = b.unsqueeze(a, &[-1]);
                dx[1] = Some(b.one(Op::MatMul, &[col, row], "dB"));
            }
        }
        _ => {
            // y[…, m] = Σ_k a[…, m, k]·w[k].
            let col = b.unsqueeze(dy, &[-1]);
            if s.wants(0) {
                let row = b.unsqueeze(w, &[0]);
                dx[0] = Some(b.one(Op::MatMul, &[col, row], "dA"));
            }
            if s.wants(1) {
                let row = b.unsqueeze(dy, &[-2]);
                let t = b.one(Op::MatMul, &[row, a], "dB");
                dx[1] = Some(b.reduce_sum(t, &lead(ar), false));
            }
        }
    }
    Ok(dx)
}

/// `Y = α·op(A)·op(B) + β·C` with `op` an optional transpose.
fn gemm(b: &mut Builder<'_>, s: &Site, at: &attrs::Gemm) -> BResult<Vec<Option<ValueId>>> {
    let dy = s.dy0(b)?;
    let (a, w) = (s.x(b, 0)?, s.x(b, 1)?);
    let (alpha, beta) = (at.alpha(), at.beta());
    let (ta, tb) = (at.trans_a() != 0, at.trans_b() != 0);
    let mut dx = vec![None; s.x.len()];
    if s.wants(0) {
        // d op(A) = α·dY·op(B)ᵀ; transposed back when A was read transposed.
        dx[0] = Some(if ta {
            b.one(gemm_op(alpha, tb, true), &[w, dy], "dA")
        } else {
            b.one(gemm_op(alpha, false, !tb), &[dy, w], "dA")
        });
    }
    if s.wants(1) {
        // d op(B) = α·op(A)ᵀ·dY.
        dx[1] = Some(if tb {
            b.one(gemm_op(alpha, true, ta), &[dy, a], "dB")
        } else {
            b.one(gemm_op(alpha, !ta, false), &[a, dy], "dB")
        });
    }
    if s.wants(2) {
        let c = s.x(b, 2)?;
        let out: Vec<Dim> = b.dims(s.y[0])?;
        let t = if beta != 1.0 {
            b.scale(dy, c, f64::from(beta))?
        } else {
            dy
        };
        dx[2] = Some(b.sum_to(t, c, &out)?);
    }
    Ok(dx)
}
