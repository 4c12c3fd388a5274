//! Channel permutations for N:M patterns, composed into the rotations that `denoise-prune`
//! found. Not a pass.
//!
//! Why: the entropy objective is blind to *which* input channels receive the concentrated
//! importance — a permutation of the rotated basis leaves it unchanged — but an N:M pattern is
//! not: a group of `M` consecutive input columns keeps only `N` of them in every row, so
//! important channels that land in the same group compete for its `N` places. A permutation is
//! orthogonal, so it is composed into `Q1` (input channels of q, k, v, gate, up) and into each
//! `R2_j` (the head_dim positions of o's input, the same for every query head of the KV group)
//! at no cost, and the layer's function is unchanged.
//!
//! How: each channel's share is the row-normalized importance summed over the rows of every
//! matrix that reads it (`p = s / Σ_row s`, so every row counts once whatever its scale); the
//! channels, sorted by share, are dealt to the groups in boustrophedon order (the `G` largest
//! one per group, the next `G` one per group in reverse, …), then a bounded number of
//! pairwise-swap sweeps lowers the proxy cost — the row-normalized importance that N:M
//! selection by score would remove, summed over rows — and stops at the first sweep without
//! gain.

use super::loss::{mm, LayerProblem};
use faer::{Mat, MatRef};

/// The share of each column of `w` (out×in) with the column factor `c` (scores
/// `s_ab = w_ab² c_b`), rows normalized to sum 1, added into `acc`; the normalized scores are
/// appended to `rows` (one `Vec` per row) for the swap search.
fn add_rows(w: MatRef<'_, f32>, c: Option<&[f32]>, acc: &mut [f64], rows: &mut Vec<Vec<f32>>) {
    let (n, m) = (w.nrows(), w.ncols());
    for a in 0..n {
        let s: Vec<f64> = (0..m)
            .map(|b| {
                let x = w[(a, b)] as f64;
                x * x * c.map_or(1.0, |c| c[b] as f64)
            })
            .collect();
        let total: f64 = s.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            continue;
        }
        let p: Vec<f32> = s.iter().map(|v| (v / total) as f32).collect();
        for (b, v) in p.iter().enumerate() {
            acc[b] += *v as f64;
        }
        rows.push(p);
    }
}

/// The normalized scores of [`add_rows`] stored by column (column `c` is
/// `data[c·rows .. (c+1)·rows]`), so that a group's cost streams `M` contiguous columns instead
/// of gathering from every row: the swap search evaluates a group cost some 10⁴ times per
/// layer, and the row-major gathers made it seconds per block.
struct Columns {
    rows: usize,
    data: Vec<f32>,
}

impl Columns {
    fn new(rows: &[Vec<f32>], ncols: usize) -> Columns {
        let n = rows.len();
        let mut data = vec![0.0f32; n * ncols];
        for (r, row) in rows.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                data[c * n + r] = v;
            }
        }
        Columns { rows: n, data }
    }

    fn col(&self, c: usize) -> &[f32] {
        &self.data[c * self.rows..(c + 1) * self.rows]
    }
}

/// The proxy cost of one group of columns `cols` over the rows: the `M − N` smallest
/// normalized scores of each row, summed (rows in order, each row's smallest in ascending
/// order, so the sum does not depend on the storage).
fn group_cost(scores: &Columns, cols: &[usize], drop: usize) -> f64 {
    let group: Vec<&[f32]> = cols.iter().map(|&c| scores.col(c)).collect();
    let mut v = vec![0.0f32; cols.len()];
    let mut total = 0.0f64;
    for r in 0..scores.rows {
        for (k, col) in group.iter().enumerate() {
            v[k] = col[r];
        }
        // Insertion sort: M is a handful of values.
        for i in 1..v.len() {
            let mut j = i;
            while j > 0 && v[j - 1].total_cmp(&v[j]).is_gt() {
                v.swap(j - 1, j);
                j -= 1;
            }
        }
        total += v[..drop].iter().map(|&x| x as f64).sum::<f64>();
    }
    total
}

/// A permutation `perm` (new position → old column) of `shares.len()` columns for groups of
/// `m`: boustrophedon dealing by share, then swap sweeps on the proxy cost of `rows` (at most
/// `sweeps`). Returns the permutation and the proxy cost before (identity) and after.
fn spread(
    shares: &[f64],
    rows: &[Vec<f32>],
    n: usize,
    m: usize,
    sweeps: usize,
) -> (Vec<usize>, f64, f64) {
    let d = shares.len();
    let groups = d / m;
    let drop = m - n;
    let rows = &Columns::new(rows, d);
    let identity: Vec<usize> = (0..d).collect();
    let cost_of = |perm: &[usize]| -> f64 {
        (0..groups)
            .map(|g| group_cost(rows, &perm[g * m..(g + 1) * m], drop))
            .sum()
    };
    let before = cost_of(&identity);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]).then(a.cmp(&b)));
    let mut slots: Vec<Vec<usize>> = vec![Vec::with_capacity(m); groups];
    for (r, &col) in order.iter().enumerate() {
        let (round, i) = (r / groups, r % groups);
        let g = if round % 2 == 0 { i } else { groups - 1 - i };
        slots[g].push(col);
    }
    let mut cost: Vec<f64> = slots.iter().map(|s| group_cost(rows, s, drop)).collect();
    // Pairwise swaps between groups (the partner group of `g` in sweep `t` is `g + 1 + t·k`
    // modulo, so each sweep visits other pairs); a swap is kept when it lowers the two groups'
    // cost. Bounded by `sweeps`; stops early at a sweep without gain.
    for t in 0..sweeps {
        let mut gained = false;
        for g in 0..groups {
            let h = (g + 1 + t * 7) % groups;
            if h == g {
                continue;
            }
            for a in 0..m {
                for b in 0..m {
                    let (mut sg, mut sh) = (slots[g].clone(), slots[h].clone());
                    std::mem::swap(&mut sg[a], &mut sh[b]);
                    let (cg, ch) = (group_cost(rows, &sg, drop), group_cost(rows, &sh, drop));
                    if cg + ch < cost[g] + cost[h] - 1e-9 {
                        slots[g] = sg;
                        slots[h] = sh;
                        cost[g] = cg;
                        cost[h] = ch;
                        gained = true;
                    }
                }
            }
        }
        if !gained {
            break;
        }
    }
    let perm: Vec<usize> = slots.into_iter().flatten().collect();
    let after = cost_of(&perm);
    if after < before {
        (perm, before, after)
    } else {
        (identity, before, before)
    }
}

/// The permutations of one layer's rotated channels for an `n:m` pattern.
#[derive(Debug, Clone)]
pub struct NmPermutation {
    /// New position → old column of the stream (composed as `Q1 ← Q1 P`).
    pub stream: Vec<usize>,
    /// Per KV head, new position → old head_dim position (composed as `R2_j ← R2_j P_j`).
    pub heads: Vec<Vec<usize>>,
    /// Proxy cost (row-normalized importance removed, summed over rows) before → after, for
    /// the stream's readers and for o.
    pub stream_cost: (f64, f64),
    pub head_cost: (f64, f64),
}

impl LayerProblem {
    /// The channel permutations that spread the importance of the rotated layer `(Q1, R2)`
    /// over the `n:m` groups (see the module doc); `sweeps` bounds the swap search.
    pub fn nm_permutation(
        &self,
        q1: MatRef<'_, f32>,
        r2: &[Mat<f32>],
        n: usize,
        m: usize,
        sweeps: usize,
    ) -> NmPermutation {
        let d = self.d();
        let hd = self.heads.head_dim;
        let inverse = self.method == super::loss::Importance::SparseGpt;
        let factor = |mat: &Option<Mat<f32>>, q: MatRef<'_, f32>| -> Option<Vec<f32>> {
            mat.as_ref()
                .map(|mm_| super::loss::col_factor(mm_.as_ref(), q, inverse).0)
        };
        // The stream's readers.
        let mut shares = vec![0.0f64; d];
        let mut rows = Vec::new();
        let attn_c = factor(&self.attn_m, q1);
        let mlp_c = factor(&self.mlp_m, q1);
        let qk = mm(self.qk.as_ref(), q1);
        add_rows(qk.as_ref(), attn_c.as_deref(), &mut shares, &mut rows);
        let mv = mm(self.v.as_ref(), q1);
        add_rows(mv.as_ref(), attn_c.as_deref(), &mut shares, &mut rows);
        let gu = mm(self.gate_up.as_ref(), q1);
        add_rows(gu.as_ref(), mlp_c.as_deref(), &mut shares, &mut rows);
        let (stream, b0, a0) = if d.is_multiple_of(m) {
            spread(&shares, &rows, n, m, sweeps)
        } else {
            ((0..d).collect(), 0.0, 0.0)
        };
        // o's input, per KV head: the rows of every query head of the group, head_dim columns.
        let o_rot = mm(q1.transpose(), self.o.as_ref());
        let mut heads = Vec::with_capacity(r2.len());
        let (mut b1, mut a1) = (0.0, 0.0);
        for (j, r) in r2.iter().enumerate() {
            let mut sh = vec![0.0f64; hd];
            let mut hrows = Vec::new();
            let c = self.o_m.as_ref().map(|om| {
                // Every query head of the group shares R_j; their factors differ by head.
                (0..self.heads.heads)
                    .filter(|&h| self.heads.kv_of(h) == j)
                    .map(|h| {
                        super::loss::col_factor(
                            om.submatrix(h * hd, h * hd, hd, hd),
                            r.as_ref(),
                            inverse,
                        )
                        .0
                    })
                    .collect::<Vec<_>>()
            });
            for (k, h) in (0..self.heads.heads)
                .filter(|&h| self.heads.kv_of(h) == j)
                .enumerate()
            {
                let blk = mm(o_rot.subcols(h * hd, hd), r.as_ref());
                add_rows(
                    blk.as_ref(),
                    c.as_ref().map(|c| c[k].as_slice()),
                    &mut sh,
                    &mut hrows,
                );
            }
            if hd.is_multiple_of(m) {
                let (p, b, a) = spread(&sh, &hrows, n, m, sweeps);
                b1 += b;
                a1 += a;
                heads.push(p);
            } else {
                heads.push((0..hd).collect());
            }
        }
        NmPermutation {
            stream,
            heads,
            stream_cost: (b0, a0),
            head_cost: (b1, a1),
        }
    }
}

/// The permutation of the MLP's hidden channels (down's input columns; gate/up rows follow)
/// that spreads down's importance over the `n:m` groups: `down` is the rotated `Q1ᵀ W_down`
/// (d × hidden) and `c` its unrotated column factor. Returns the permutation and the proxy cost
/// before → after.
pub fn hidden_permutation(
    down: MatRef<'_, f32>,
    c: Option<&[f32]>,
    n: usize,
    m: usize,
    sweeps: usize,
) -> (Vec<usize>, f64, f64) {
    let hidden = down.ncols();
    if !hidden.is_multiple_of(m) {
        return ((0..hidden).collect(), 0.0, 0.0);
    }
    let mut shares = vec![0.0f64; hidden];
    let mut rows = Vec::new();
    add_rows(down, c, &mut shares, &mut rows);
    spread(&shares, &rows, n, m, sweeps)
}

/// `Q P` for a permutation `perm` (new position → old column): column `k` of the result is
/// column `perm[k]` of `q`.
pub fn permute_columns(q: &Mat<f64>, perm: &[usize]) -> Mat<f64> {
    Mat::from_fn(q.nrows(), q.ncols(), |i, k| q[(i, perm[k])])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four heavy columns side by side lose two of themselves in every row under 2:4; spread
    /// over four groups they lose nothing heavy, and the swap search never makes it worse.
    #[test]
    fn spreading_separates_heavy_columns() {
        let d = 16;
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|r| {
                let mut v: Vec<f32> = (0..d)
                    .map(|b| {
                        if b < 4 {
                            10.0
                        } else {
                            0.1 + 0.01 * ((r * 7 + b) % 5) as f32
                        }
                    })
                    .collect();
                let s: f32 = v.iter().sum();
                v.iter_mut().for_each(|x| *x /= s);
                v
            })
            .collect();
        let mut shares = vec![0.0f64; d];
        for r in &rows {
            for (b, x) in r.iter().enumerate() {
                shares[b] += *x as f64;
            }
        }
        let (perm, before, after) = spread(&shares, &rows, 2, 4, 4);
        assert!(
            before > 0.4,
            "two heavy columns of four pruned per row: {before}"
        );
        assert!(after < 0.1 * before, "{before} → {after}");
        let mut seen = perm.clone();
        seen.sort();
        assert_eq!(seen, (0..d).collect::<Vec<_>>(), "a permutation");
        for g in 0..4 {
            let heavy = perm[g * 4..g * 4 + 4].iter().filter(|&&c| c < 4).count();
            assert_eq!(heavy, 1, "one heavy column per group: {perm:?}");
        }
    }

    /// Already spread channels keep the identity (a permutation is only taken when it helps).
    #[test]
    fn no_gain_keeps_the_identity() {
        let rows: Vec<Vec<f32>> = vec![vec![0.25; 8]; 3];
        let shares = vec![0.75f64; 8];
        let (perm, before, after) = spread(&shares, &rows, 2, 4, 4);
        assert_eq!(perm, (0..8).collect::<Vec<_>>());
        assert_eq!(before, after);
    }
}
