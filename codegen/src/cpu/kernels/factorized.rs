//! `ortho.FactorizedLinear` (see `ortho_ir::factorized` for operands and semantics), without
//! materializing the weight.
//!
//! Kronecker sum over `T` tokens, `X: [T, n1, n2]`, in two GEMMs:
//! 1. `Z = X·Bᵀ` with the `r` factors `B_k` stacked: `[T·n1, n2] × [n2, r·m2]` → `Z[t, j1, k, i2]`;
//! 2. `Z` is permuted to `Z'[(k, j1), (t, i2)]` and `A` to `A'[i1, (k, j1)]`, so that
//!    `Y'[i1, (t, i2)] = A'·Z'` is one `[m1, r·n1] × [r·n1, T·m2]` product summing over the
//!    terms `k` and the inner index `j1` at once; `Y'` is permuted to `Y[t, i1, i2]`.
//!
//! The permutations copy `T·r·n1·m2 + T·m1·m2` elements, small next to the GEMMs' work.
//! Low rank: `y = (x·V)·Uᵀ`, two GEMMs, `U` read with swapped strides.

use super::matmul::{gemm_into, GemmElem, Mat};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, HostTensor};
use ortho_ir::factorized::Factorized;
use ortho_ir::{DType, Dim};

/// The kernel body: `ins` are `(x, A, B)` or `(x, U, V)`.
pub fn factorized(
    cx: &mut ExecCx<'_>,
    f: Factorized,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let (x, p, q) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    // The operand rules (factor shapes, input width, one float dtype) live in the IR op; the
    // kernel checks the runtime shapes against them rather than restating them.
    let rule = |e: ortho_ir::factorized::FactorizedError| {
        KernelError::shape(format!("FactorizedLinear: {e}"))
    };
    f.check_dtypes([x.dtype(), p.dtype(), q.dtype()])
        .map_err(rule)?;
    let dims =
        |t: &HostTensor| -> Vec<Dim> { t.shape().iter().map(|&d| Dim::Fixed(d as i64)).collect() };
    f.infer_shape(Some(&dims(x)), Some(&dims(p)), Some(&dims(q)))
        .map_err(rule)?;
    let r = match x.dtype() {
        DType::F32 => typed::<f32>(cx, f, x, p, q),
        DType::F64 => typed::<f64>(cx, f, x, p, q),
        DType::F16 | DType::BF16 => {
            super::elementwise::via_f32(&[x, p, q], |t| typed::<f32>(cx, f, t[0], t[1], t[2]))
        }
        d => Err(KernelError::dtype(format!(
            "FactorizedLinear is not defined for {d}"
        ))),
    }?;
    Ok(vec![r])
}

fn data<'a, T: GemmElem>(t: &'a HostTensor) -> KernelResult<&'a [T]> {
    t.data::<T>()
        .ok_or_else(|| KernelError::dtype("operand dtype"))
}

fn typed<T: GemmElem>(
    cx: &mut ExecCx<'_>,
    f: Factorized,
    x: &HostTensor,
    p: &HostTensor,
    q: &HostTensor,
) -> KernelResult<HostTensor> {
    let Some((&n, lead)) = x.shape().split_last() else {
        return Err(KernelError::shape(
            "FactorizedLinear needs an input of rank ≥ 1",
        ));
    };
    let tokens = numel(lead);
    let (xd, pd, qd) = (data::<T>(x)?, data::<T>(p)?, data::<T>(q)?);
    let threads = cx.threads;
    let (m, out) = match f {
        Factorized::KronSum {
            m1,
            n1,
            m2,
            n2,
            rank,
        } => (
            m1 * m2,
            kron::<T>(cx, xd, pd, qd, tokens, [m1, n1, m2, n2], rank, threads)?,
        ),
        Factorized::LowRank { rank } => {
            let m = p.shape()[0];
            // h = x·V: [T, n] × [n, r].
            let mut h = vec![T::ZERO; tokens * rank];
            gemm_into(
                tokens,
                rank,
                n,
                Mat {
                    data: xd,
                    rs: n,
                    cs: 1,
                },
                Mat {
                    data: qd,
                    rs: rank,
                    cs: 1,
                },
                &mut h,
                rank,
                false,
                T::ZERO,
                T::ONE,
                threads,
            );
            // y = h·Uᵀ: [T, r] × [r, m], U stored [m, r].
            let mut y = cx.pool.alloc::<T>(tokens * m)?;
            gemm_into(
                tokens,
                m,
                rank,
                Mat {
                    data: &h,
                    rs: rank,
                    cs: 1,
                },
                Mat {
                    data: pd,
                    rs: 1,
                    cs: rank,
                },
                &mut y,
                m,
                false,
                T::ZERO,
                T::ONE,
                threads,
            );
            (m, y)
        }
    };
    let mut shape = lead.to_vec();
    shape.push(m);
    HostTensor::make(shape, T::wrap(out))
}

#[allow(clippy::too_many_arguments)]
fn kron<T: GemmElem>(
    cx: &mut ExecCx<'_>,
    x: &[T],
    a: &[T],
    b: &[T],
    tokens: usize,
    [m1, n1, m2, n2]: [usize; 4],
    r: usize,
    threads: usize,
) -> KernelResult<Vec<T>> {
    // 1. Z[(t, j1), (k, i2)] = Σ_j2 X[(t, j1), j2]·B[k, i2, j2]: B read as [n2, r·m2].
    let rows = tokens * n1;
    let mut z = vec![T::ZERO; rows * r * m2];
    gemm_into(
        rows,
        r * m2,
        n2,
        Mat {
            data: x,
            rs: n2,
            cs: 1,
        },
        Mat {
            data: b,
            rs: 1,
            cs: n2,
        },
        &mut z,
        r * m2,
        false,
        T::ZERO,
        T::ONE,
        threads,
    );
    // 2. Z'[(k, j1), (t, i2)] and A'[i1, (k, j1)].
    let mut zp = vec![T::ZERO; z.len()];
    for t in 0..tokens {
        for j1 in 0..n1 {
            for k in 0..r {
                let src = ((t * n1 + j1) * r + k) * m2;
                let dst = (k * n1 + j1) * tokens * m2 + t * m2;
                zp[dst..dst + m2].copy_from_slice(&z[src..src + m2]);
            }
        }
    }
    drop(z);
    let mut ap = vec![T::ZERO; m1 * r * n1];
    for k in 0..r {
        for i1 in 0..m1 {
            let src = (k * m1 + i1) * n1;
            let dst = i1 * r * n1 + k * n1;
            ap[dst..dst + n1].copy_from_slice(&a[src..src + n1]);
        }
    }
    // 3. Y'[i1, (t, i2)] = Σ_(k, j1) A'[i1, (k, j1)]·Z'[(k, j1), (t, i2)].
    let cols = tokens * m2;
    let mut yp = vec![T::ZERO; m1 * cols];
    gemm_into(
        m1,
        cols,
        r * n1,
        Mat {
            data: &ap,
            rs: r * n1,
            cs: 1,
        },
        Mat {
            data: &zp,
            rs: cols,
            cs: 1,
        },
        &mut yp,
        cols,
        false,
        T::ZERO,
        T::ONE,
        threads,
    );
    // 4. Y[t, (i1, i2)].
    let mut y = cx.pool.alloc::<T>(tokens * m1 * m2)?;
    for i1 in 0..m1 {
        for t in 0..tokens {
            let src = i1 * cols + t * m2;
            let dst = (t * m1 + i1) * m2;
            y[dst..dst + m2].copy_from_slice(&yp[src..src + m2]);
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    /// A deterministic pseudo-random vector in [-1, 1).
    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn run(f: Factorized, x: &HostTensor, p: &HostTensor, q: &HostTensor) -> Vec<f64> {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 2,
        };
        let r = factorized(
            &mut cx,
            f,
            &mut Inputs::borrowed(&[Some(x), Some(p), Some(q)]),
        )
        .expect("kernel");
        r[0].data::<f64>().expect("f64").to_vec()
    }

    fn t(shape: &[usize], v: Vec<f64>) -> HostTensor {
        HostTensor::from_vec(shape.to_vec(), v).expect("tensor")
    }

    /// The kernel against `x·Wᵀ` with `W = Σ_k A_k ⊗ B_k` built densely from the definition
    /// of the Kronecker product (`W[i1·m2+i2, j1·n2+j2] = Σ_k A_k[i1,j1]·B_k[i2,j2]`).
    #[test]
    fn kron_sum_matches_the_dense_kronecker_product() {
        let (m1, n1, m2, n2, r, tokens) = (3, 2, 4, 5, 3, 7);
        let (m, n) = (m1 * m2, n1 * n2);
        let a = rnd(r * m1 * n1, 1);
        let b = rnd(r * m2 * n2, 2);
        let x = rnd(tokens * n, 3);
        let mut w = vec![0.0; m * n];
        for k in 0..r {
            for i1 in 0..m1 {
                for j1 in 0..n1 {
                    for i2 in 0..m2 {
                        for j2 in 0..n2 {
                            w[(i1 * m2 + i2) * n + j1 * n2 + j2] +=
                                a[(k * m1 + i1) * n1 + j1] * b[(k * m2 + i2) * n2 + j2];
                        }
                    }
                }
            }
        }
        let f = Factorized::KronSum {
            m1,
            n1,
            m2,
            n2,
            rank: r,
        };
        let y = run(
            f,
            &t(&[1, tokens, n], x.clone()),
            &t(&[r, m1, n1], a),
            &t(&[r, m2, n2], b),
        );
        assert_eq!(y.len(), tokens * m);
        for tk in 0..tokens {
            for i in 0..m {
                let want: f64 = (0..n).map(|j| x[tk * n + j] * w[i * n + j]).sum();
                assert!((y[tk * m + i] - want).abs() < 1e-12, "token {tk} row {i}");
            }
        }
    }

    #[test]
    fn low_rank_by_hand() {
        // U = [[1, 0], [0, 2], [1, 1]] (m = 3, r = 2), V = [[1, 1], [0, 1]] (n = 2).
        // W = U·Vᵀ = [[1, 0], [2, 2], [2, 1]]; x = [3, 4] → y = [3, 14, 10].
        let u = t(&[3, 2], vec![1., 0., 0., 2., 1., 1.]);
        let v = t(&[2, 2], vec![1., 1., 0., 1.]);
        let y = run(
            Factorized::LowRank { rank: 2 },
            &t(&[2], vec![3., 4.]),
            &u,
            &v,
        );
        assert_eq!(y, vec![3., 14., 10.]);
    }
}
