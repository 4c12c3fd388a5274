//! The DenoiseRotator objective of one decoder layer and its analytic gradient
//! (ALGORITHMS.md §2.1.4–§2.1.6). Not a pass.
//!
//! Convention: `y = x Wᵀ`, `W` is out×in. With the residual rotation `Q1` (d×d) and the per-KV-head
//! rotations `R2_j` (head_dim², `R` = blockdiag over KV heads, `R_rep` = the same repeated over the
//! query heads of each group, head-major):
//!
//! | matrix | rotated | score groups |
//! |---|---|---|
//! | q, k, gate, up | `W Q1` | rows |
//! | v | `Rᵀ W Q1` | rows and columns |
//! | o | `Q1ᵀ W R_rep` | rows and columns |
//! | down | `Q1ᵀ W` | columns |
//!
//! Scores are `s_ab = W'_ab² · c_b` with a per-input-column factor: 1 (magnitude), `diag(H')_b`
//! (Wanda), `1 / diag((H + λI)⁻¹)'_b` (SparseGPT proxy), where `H' = R_inᵀ H R_in` rotates with the
//! input-side transform. down's input is not rotated and its groups are columns, so its factor
//! cancels and is omitted. The loss is the sum over groups of the Shannon entropy of
//! `p = s / Σ_group s`.
//!
//! Gradient, for one group with sum `S` and entropy `E`: `∂E/∂s_j = −(ln p_j + E)/S` (0 where
//! `s_j = 0`, the `0·ln 0` guard); then `∂/∂W'_ab = ∂/∂s_ab · 2 W'_ab c_b`,
//! `∂/∂c_b = Σ_a ∂/∂s_ab · W'_ab²`; a factor `e_b = (Qᵀ M Q)_bb` gives `∂/∂Q += 2 M Q diag(∂/∂e)`
//! (with `c = 1/e` for SparseGPT: `∂/∂e = −c² ∂/∂c`); `W' = W Q` gives `∂/∂Q += Wᵀ G'`,
//! `W' = Qᵀ W` gives `∂/∂Q += W G'ᵀ`.
//!
//! Numerics: products in f32 (faer's GEMM), sums over groups in f64.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// Which pruning method's importance the loss concentrates: the pruning method itself.
pub use crate::sparsity::matrix::PruneMethod as Importance;

/// Attention head layout of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// The KV head query head `h` reads (head-major grouping, as `repeat_kv` lays it out).
    pub fn kv_of(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads).max(1)
    }
}

/// The weights of one decoder layer (out×in, f32) and the statistics the method needs.
#[derive(Debug, Clone)]
pub struct LayerProblem {
    pub method: Importance,
    pub heads: Heads,
    /// q rows then k rows (both are read with row groups only, so stacking them is exact).
    pub qk: Mat<f32>,
    pub v: Mat<f32>,
    pub o: Mat<f32>,
    /// gate rows then up rows.
    pub gate_up: Mat<f32>,
    pub down: Mat<f32>,
    /// The matrix `M` whose rotated diagonal gives the column factor of q/k/v (H for Wanda, the
    /// damped inverse for SparseGPT; unused for magnitude).
    pub attn_m: Option<Mat<f32>>,
    /// The same for gate/up.
    pub mlp_m: Option<Mat<f32>>,
    /// The same for o's input (heads·head_dim square); only its diagonal blocks are read.
    pub o_m: Option<Mat<f32>>,
    /// The N:M-aware term added to the entropy (`None`: the entropy alone).
    pub nm: Option<NmTerm>,
    // down needs no statistics: its input is not rotated and its groups are columns, so a
    // per-column factor cancels in every normalized group.
}

/// The f32 product `a · b` (multi-threaded).
pub(crate) fn mm(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f32> {
    let mut c = Mat::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0f32, Par::rayon(0));
    c
}

/// `c += a · b`.
fn mm_acc(c: MatMut<'_, f32>, a: MatRef<'_, f32>, b: MatRef<'_, f32>) {
    matmul(c, Accum::Add, a, b, 1.0f32, Par::rayon(0));
}

/// Which groups of a score matrix are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Groups {
    Rows,
    Cols,
    Both,
}

/// Sum over groups of the entropy of `s_ab = w_ab² c_b`; writes `∂L/∂w` into `gw` (replacing it)
/// and adds `∂L/∂c` into `gc` (when both `c` and `gc` are given).
pub(crate) fn grouped_entropy(
    w: MatRef<'_, f32>,
    c: Option<&[f32]>,
    groups: Groups,
    gw: &mut Mat<f32>,
    gc: Option<&mut [f64]>,
) -> f64 {
    let (n, m) = (w.nrows(), w.ncols());
    let factor = |b: usize| c.map_or(1.0f32, |c| c[b]);
    // Scores and their logs (0 where the score is 0: the 0·ln 0 guard).
    let mut s = Mat::<f32>::zeros(n, m);
    let mut ls = Mat::<f32>::zeros(n, m);
    for b in 0..m {
        let cb = factor(b);
        for a in 0..n {
            let x = w[(a, b)];
            let v = x * x * cb;
            s[(a, b)] = v;
            ls[(a, b)] = if v > 0.0 && v.is_finite() {
                v.ln()
            } else {
                0.0
            };
        }
    }
    // dL/ds accumulated per element over the groups that contain it.
    let mut g = Mat::<f32>::zeros(n, m);
    let mut loss = 0.0f64;
    if matches!(groups, Groups::Rows | Groups::Both) {
        let mut sum = vec![0.0f64; n];
        let mut slog = vec![0.0f64; n];
        for b in 0..m {
            for a in 0..n {
                let v = s[(a, b)] as f64;
                sum[a] += v;
                slog[a] += v * ls[(a, b)] as f64;
            }
        }
        // E = ln S − Σ s ln s / S; dE/ds = −(ln s − ln S + E)/S.
        let mut shift = vec![0.0f32; n];
        let mut inv = vec![0.0f32; n];
        for a in 0..n {
            if sum[a] > 0.0 && sum[a].is_finite() {
                let e = sum[a].ln() - slog[a] / sum[a];
                loss += e;
                shift[a] = (e - sum[a].ln()) as f32;
                inv[a] = (1.0 / sum[a]) as f32;
            }
        }
        for b in 0..m {
            for a in 0..n {
                if s[(a, b)] > 0.0 {
                    g[(a, b)] -= (ls[(a, b)] + shift[a]) * inv[a];
                }
            }
        }
    }
    if matches!(groups, Groups::Cols | Groups::Both) {
        for b in 0..m {
            let (mut sum, mut slog) = (0.0f64, 0.0f64);
            for a in 0..n {
                let v = s[(a, b)] as f64;
                sum += v;
                slog += v * ls[(a, b)] as f64;
            }
            if !(sum > 0.0 && sum.is_finite()) {
                continue;
            }
            let e = sum.ln() - slog / sum;
            loss += e;
            let shift = (e - sum.ln()) as f32;
            let inv = (1.0 / sum) as f32;
            for a in 0..n {
                if s[(a, b)] > 0.0 {
                    g[(a, b)] -= (ls[(a, b)] + shift) * inv;
                }
            }
        }
    }
    if gw.nrows() != n || gw.ncols() != m {
        *gw = Mat::zeros(n, m);
    }
    for b in 0..m {
        let cb = factor(b);
        for a in 0..n {
            gw[(a, b)] = g[(a, b)] * 2.0 * w[(a, b)] * cb;
        }
    }
    if let (Some(_), Some(gc)) = (c, gc) {
        for b in 0..m {
            let mut acc = 0.0f64;
            for a in 0..n {
                let x = w[(a, b)] as f64;
                acc += g[(a, b)] as f64 * x * x;
            }
            gc[b] += acc;
        }
    }
    loss
}

/// The N:M-aware term of the objective: `weight · C`, where `C` sums over rows the
/// row-normalized importance that an N:M selection by score removes (in every group of `m`
/// consecutive input columns, the `m − n` smallest scores of the row) — the proxy cost the
/// channel permutation (`permute`) lowers after the search, here lowered during it. Why: the
/// entropy rewards concentrating a row's importance on few channels wherever they fall, while
/// an N:M pattern must drop `m − n` of every group, so concentration inside one group is
/// wasted; this term sees the groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmTerm {
    pub n: usize,
    pub m: usize,
    pub weight: f64,
}

/// `weight · C` of [`NmTerm`] for the rows of `w` (scores `s_ab = w_ab² c_b`, groups along the
/// columns); adds `weight · ∂C/∂w` into `gw` and `weight · ∂C/∂c` into `gc`. `C` is piecewise
/// smooth: inside a region where the selected entries do not change,
/// `∂C_row/∂s_b = [b removed]/S − R/S²` (`R` the removed sum, `S` the row's sum). A matrix
/// whose width is not a multiple of `m` adds nothing (N:M pruning refuses it).
pub(crate) fn nm_cost(
    w: MatRef<'_, f32>,
    c: Option<&[f32]>,
    term: &NmTerm,
    gw: &mut Mat<f32>,
    gc: Option<&mut [f64]>,
) -> f64 {
    let (rows, cols) = (w.nrows(), w.ncols());
    let (n, m) = (term.n, term.m);
    if m == 0 || n >= m || !cols.is_multiple_of(m) {
        return 0.0;
    }
    let drop = m - n;
    let factor = |b: usize| c.map_or(1.0f64, |c| c[b] as f64);
    // Rows of `w` as contiguous columns of its transpose (the loop runs along rows).
    let wt = w.transpose().to_owned();
    let mut gt = Mat::<f64>::zeros(cols, rows);
    let mut gc_acc = vec![0.0f64; cols];
    let mut total = 0.0f64;
    let mut s = vec![0.0f64; cols];
    let mut removed = vec![false; cols];
    let mut idx: Vec<usize> = Vec::with_capacity(m);
    for a in 0..rows {
        for b in 0..cols {
            let x = wt[(b, a)] as f64;
            s[b] = x * x * factor(b);
        }
        let sum: f64 = s.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            continue;
        }
        let mut r = 0.0f64;
        for g in (0..cols).step_by(m) {
            idx.clear();
            idx.extend(g..g + m);
            // Ascending by score, ties by position, so the selection is deterministic.
            idx.sort_by(|&i, &j| s[i].total_cmp(&s[j]).then(i.cmp(&j)));
            for (k, &b) in idx.iter().enumerate() {
                removed[b] = k < drop;
                if k < drop {
                    r += s[b];
                }
            }
        }
        total += r / sum;
        let base = r / (sum * sum);
        for b in 0..cols {
            let ds = if removed[b] { 1.0 / sum } else { 0.0 } - base;
            let x = wt[(b, a)] as f64;
            gt[(b, a)] = term.weight * ds * 2.0 * x * factor(b);
            gc_acc[b] += term.weight * ds * x * x;
        }
    }
    if gw.nrows() != rows || gw.ncols() != cols {
        *gw = Mat::zeros(rows, cols);
    }
    for b in 0..cols {
        for a in 0..rows {
            gw[(a, b)] += gt[(b, a)] as f32;
        }
    }
    if let (Some(_), Some(gc)) = (c, gc) {
        for (g, acc) in gc.iter_mut().zip(&gc_acc) {
            *g += acc;
        }
    }
    term.weight * total
}

/// Column factor of a rotated input: `e = diag(Qᵀ M Q)`, `c = e` (Wanda) or `1/e` (SparseGPT).
/// Returns `c` and `M Q` (kept for the backward step).
/// The loss of readers `w` of the rotated stream (`W Q1`, grouped by rows, with column factor
/// `c`), accumulating ∂/∂Q1 into `gq1` and ∂/∂c into `gc`; `gw` is scratch for ∂/∂(W Q1).
fn reader_loss(
    w: MatRef<'_, f32>,
    q1: MatRef<'_, f32>,
    c: Option<&[f32]>,
    nm: Option<&NmTerm>,
    gw: &mut Mat<f32>,
    gc: &mut [f64],
    gq1: &mut Mat<f32>,
) -> (f64, f64) {
    let a = mm(w, q1);
    let loss = grouped_entropy(a.as_ref(), c, Groups::Rows, gw, Some(&mut *gc));
    // The N:M term adds into the same ∂/∂(W Q1), so it must come before the product below.
    let nm_part = nm.map_or(0.0, |t| nm_cost(a.as_ref(), c, t, gw, Some(gc)));
    mm_acc(gq1.as_mut(), w.transpose(), gw.as_ref());
    (loss, nm_part)
}

pub(crate) fn col_factor(
    m: MatRef<'_, f32>,
    q: MatRef<'_, f32>,
    inverse: bool,
) -> (Vec<f32>, Mat<f32>) {
    let mq = mm(m, q);
    let c = (0..q.ncols())
        .map(|b| {
            let mut e = 0.0f64;
            for i in 0..q.nrows() {
                e += q[(i, b)] as f64 * mq[(i, b)] as f64;
            }
            if inverse {
                // A damped inverse is positive definite; the floor only keeps a degenerate
                // input from producing an infinite score.
                (1.0 / e.max(1e-30)) as f32
            } else {
                e.max(0.0) as f32
            }
        })
        .collect();
    (c, mq)
}

/// `gq += 2 · (M Q) · diag(∂L/∂e)` from `∂L/∂c`.
fn col_factor_backward(
    mq: &Mat<f32>,
    c: &[f32],
    gc: &[f64],
    inverse: bool,
    mut gq: MatMut<'_, f32>,
) {
    for b in 0..mq.ncols() {
        let ge = if inverse {
            -gc[b] * (c[b] as f64) * (c[b] as f64)
        } else {
            gc[b]
        };
        let f = (2.0 * ge) as f32;
        for i in 0..mq.nrows() {
            gq[(i, b)] += f * mq[(i, b)];
        }
    }
}

/// Loss of one layer split by matrix group (for reports).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    pub qk: f64,
    pub v: f64,
    pub o: f64,
    pub gate_up: f64,
    pub down: f64,
    /// The weighted N:M term (0 without one), over q, k, v, o, gate and up.
    pub nm: f64,
}

impl LossParts {
    pub fn total(&self) -> f64 {
        self.qk + self.v + self.o + self.gate_up + self.down + self.nm
    }
}

impl LayerProblem {
    pub fn d(&self) -> usize {
        self.qk.ncols()
    }

    fn check(&self, q1: MatRef<'_, f32>, r2: &[Mat<f32>]) {
        let hd = self.heads.head_dim;
        debug_assert_eq!(q1.nrows(), self.d());
        debug_assert_eq!(r2.len(), self.heads.kv_heads);
        debug_assert!(r2.iter().all(|r| r.nrows() == hd && r.ncols() == hd));
    }

    /// The loss at `(Q1, R2)`; adds `∂L/∂Q1` into `gq1` and `∂L/∂R2_j` into `gr2[j]`.
    pub fn loss_grad(
        &self,
        q1: MatRef<'_, f32>,
        r2: &[Mat<f32>],
        gq1: &mut Mat<f32>,
        gr2: &mut [Mat<f32>],
    ) -> LossParts {
        self.check(q1, r2);
        let hd = self.heads.head_dim;
        let inverse = self.method == Importance::SparseGpt;
        let mut parts = LossParts::default();
        let mut gw = Mat::<f32>::zeros(0, 0);

        // q, k, v: input side Q1, shared column factor.
        let attn_cf = self
            .attn_m
            .as_ref()
            .map(|m| col_factor(m.as_ref(), q1, inverse));
        let mut gc_attn = vec![0.0f64; self.d()];
        let nm = self.nm.as_ref();
        let qk_nm;
        (parts.qk, qk_nm) = reader_loss(
            self.qk.as_ref(),
            q1,
            attn_cf.as_ref().map(|(c, _)| c.as_slice()),
            nm,
            &mut gw,
            &mut gc_attn,
            gq1,
        );
        let mv = mm(self.v.as_ref(), q1);
        let mut vr = Mat::<f32>::zeros(mv.nrows(), mv.ncols());
        for (j, r) in r2.iter().enumerate() {
            let rows = j * hd..(j + 1) * hd;
            let block = mm(r.transpose(), mv.subrows(rows.start, hd));
            vr.subrows_mut(rows.start, hd).copy_from(&block);
        }
        parts.v = grouped_entropy(
            vr.as_ref(),
            attn_cf.as_ref().map(|(c, _)| c.as_slice()),
            Groups::Both,
            &mut gw,
            Some(&mut gc_attn),
        );
        let v_nm = nm.map_or(0.0, |t| {
            nm_cost(
                vr.as_ref(),
                attn_cf.as_ref().map(|(c, _)| c.as_slice()),
                t,
                &mut gw,
                Some(&mut gc_attn),
            )
        });
        // V' = Rᵀ Mv: ∂Mv_j = R_j ∂V'_j, ∂R_j = Mv_j ∂V'_jᵀ.
        let mut gmv = Mat::<f32>::zeros(mv.nrows(), mv.ncols());
        for (j, r) in r2.iter().enumerate() {
            let s = j * hd;
            mm_acc(
                gr2[j].as_mut(),
                mv.subrows(s, hd),
                gw.subrows(s, hd).transpose(),
            );
            let blk = mm(r.as_ref(), gw.subrows(s, hd));
            gmv.subrows_mut(s, hd).copy_from(&blk);
        }
        mm_acc(gq1.as_mut(), self.v.transpose(), gmv.as_ref());
        if let Some((c, mq)) = &attn_cf {
            col_factor_backward(mq, c, &gc_attn, inverse, gq1.as_mut());
        }

        // gate, up.
        let mlp_cf = self
            .mlp_m
            .as_ref()
            .map(|m| col_factor(m.as_ref(), q1, inverse));
        let mut gc_mlp = vec![0.0f64; self.d()];
        let gu_nm;
        (parts.gate_up, gu_nm) = reader_loss(
            self.gate_up.as_ref(),
            q1,
            mlp_cf.as_ref().map(|(c, _)| c.as_slice()),
            nm,
            &mut gw,
            &mut gc_mlp,
            gq1,
        );
        if let Some((c, mq)) = &mlp_cf {
            col_factor_backward(mq, c, &gc_mlp, inverse, gq1.as_mut());
        }

        // down: output side only, constant column factor.
        let dn = mm(q1.transpose(), self.down.as_ref());
        parts.down = grouped_entropy(dn.as_ref(), None, Groups::Cols, &mut gw, None);
        mm_acc(gq1.as_mut(), self.down.as_ref(), gw.transpose());

        // o: O' = Q1ᵀ N with N = Wo R_rep; column factor from R_j on o's input blocks.
        let heads = self.heads.heads;
        let mut n = Mat::<f32>::zeros(self.o.nrows(), self.o.ncols());
        let mut o_c = vec![1.0f32; self.o.ncols()];
        let mut o_mr: Vec<Option<Mat<f32>>> = vec![None; heads];
        for h in 0..heads {
            let r = &r2[self.heads.kv_of(h)];
            let s = h * hd;
            let blk = mm(self.o.subcols(s, hd), r.as_ref());
            n.subcols_mut(s, hd).copy_from(&blk);
            if let Some(m) = &self.o_m {
                let (c, mr) = col_factor(m.submatrix(s, s, hd, hd), r.as_ref(), inverse);
                o_c[s..s + hd].copy_from_slice(&c);
                o_mr[h] = Some(mr);
            }
        }
        let op = mm(q1.transpose(), n.as_ref());
        let mut gc_o = vec![0.0f64; self.o.ncols()];
        parts.o = grouped_entropy(
            op.as_ref(),
            self.o_m.as_ref().map(|_| o_c.as_slice()),
            Groups::Both,
            &mut gw,
            Some(&mut gc_o),
        );
        let o_nm = nm.map_or(0.0, |t| {
            nm_cost(
                op.as_ref(),
                self.o_m.as_ref().map(|_| o_c.as_slice()),
                t,
                &mut gw,
                Some(&mut gc_o),
            )
        });
        parts.nm = qk_nm + v_nm + gu_nm + o_nm;
        mm_acc(gq1.as_mut(), n.as_ref(), gw.transpose());
        let gn = mm(q1, gw.as_ref());
        for (h, mr) in o_mr.iter().enumerate() {
            let j = self.heads.kv_of(h);
            let s = h * hd;
            mm_acc(
                gr2[j].as_mut(),
                self.o.subcols(s, hd).transpose(),
                gn.subcols(s, hd),
            );
            if let Some(mr) = mr {
                col_factor_backward(
                    mr,
                    &o_c[s..s + hd],
                    &gc_o[s..s + hd],
                    inverse,
                    gr2[j].as_mut(),
                );
            }
        }
        parts
    }
}
