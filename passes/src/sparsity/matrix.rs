//! The maths of pruning one weight matrix (not a pass; `prune` and `denoise-prune` call it).
//!
//! Conventions: `w` is `rows × cols` row-major f64 with one row per *output* neuron and one
//! column per *input* feature (`y = x wᵀ`), and `h` is the `cols × cols` input Hessian
//! `H = (2/N) Σ xᵀx` (only its diagonal matters for Wanda; SparseGPT uses all of it).
//!
//! - magnitude: score `|w|`, lowest scores of the whole matrix removed (N:M: per group);
//! - Wanda: score `|w_ij| · ‖X_j‖` (`‖X_j‖ ∝ √H_jj`), lowest of each *row* removed;
//! - SparseGPT: OBS with lazy block updates (Frantar & Alistarh 2023): `H + λI` with
//!   `λ = damp · mean(diag H)`, the upper Cholesky factor `U` of `(H + λI)⁻¹` in f64; columns
//!   are processed left to right in blocks of `block`; inside a block a weight is pruned by the
//!   score `w² / U_jj²` (chosen for the whole block at its start when unstructured, every `m`
//!   columns for N:M), and each column's error `(w − q)/U_jj` is spread over the not yet
//!   processed columns through row `j` of `U`.
//!
//! Ties are broken by position (lower index pruned first) so results are deterministic.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

/// Why a matrix could not be pruned as asked, or a pruned matrix breaks its pattern.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PruneError {
    #[error("pattern '{0}' is neither 'unstructured' nor N:M with 0 < N < M")]
    BadPattern(String),
    #[error("sparsity must lie in (0, 1), got {0}")]
    Sparsity(f64),
    #[error("the SparseGPT block must be at least 1")]
    Block,
    #[error("damping must be ≥ 0, got {0}")]
    Damping(f64),
    /// An N:M pattern on a matrix whose input width `m` does not divide.
    #[error("pattern {n}:{m} needs an input width divisible by {m}, got {cols}")]
    Width { n: usize, m: usize, cols: usize },
    #[error("weight has {len} values, expected {rows} × {cols}")]
    WeightSize {
        len: usize,
        rows: usize,
        cols: usize,
    },
    #[error(
        "weight has {len} values and the diagonal {diag}, expected {rows} × {cols} and {cols}"
    )]
    DiagonalSize {
        len: usize,
        diag: usize,
        rows: usize,
        cols: usize,
    },
    #[error("Hessian has {len} values, expected {cols} × {cols}")]
    HessianSize { len: usize, cols: usize },
    /// The method (named) needs the input Hessian and none was given.
    #[error("{0} needs the input Hessian")]
    NeedsHessian(&'static str),
    #[error("sparsegpt needs the whole input Hessian, not its diagonal")]
    NeedsFullHessian,
    #[error("the damped Hessian is not positive definite")]
    NotPositiveDefinite,
    #[error("the inverse Hessian is not positive definite")]
    InverseNotPositiveDefinite,
    #[error("a {rows} × {cols} matrix cannot hold {n}:{m} groups")]
    NoGroups {
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
    },
    /// A group of `m` weights of row `row` starting at column `start` keeps `kept > n`.
    #[error("row {row}, columns {start}..{}: {kept} non-zeros, more than {n} of {m}", start + m)]
    GroupTooDense {
        row: usize,
        start: usize,
        kept: usize,
        n: usize,
        m: usize,
    },
    /// Fewer zeros than the sparsity asks, in row `row` (`None`: in the whole matrix).
    #[error("{}{zeros} zeros, fewer than {needed}", row.map_or(String::new(), |r| format!("row {r}: ")))]
    TooFewZeros {
        row: Option<usize>,
        zeros: usize,
        needed: usize,
    },
}

/// Which score decides what is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl PruneMethod {
    pub fn needs_hessian(self) -> bool {
        !matches!(self, PruneMethod::Magnitude)
    }
    pub fn name(self) -> &'static str {
        self.word()
    }
}

/// Where zeros may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Any position; the fraction removed is the sparsity.
    Unstructured,
    /// In every group of `m` consecutive input weights of a row, at most `n` are kept.
    NM { n: usize, m: usize },
}

impl Pattern {
    /// Parses `unstructured` or `N:M` (0 < N < M).
    pub fn parse(s: &str) -> Result<Pattern, PruneError> {
        if s == "unstructured" {
            return Ok(Pattern::Unstructured);
        }
        let bad = || PruneError::BadPattern(s.to_string());
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = a.trim().parse().map_err(|_| bad())?;
        let m: usize = b.trim().parse().map_err(|_| bad())?;
        if n == 0 || n >= m {
            return Err(bad());
        }
        Ok(Pattern::NM { n, m })
    }

    /// The fraction of weights the pattern removes (`sparsity` when unstructured).
    pub fn sparsity(self, sparsity: f64) -> f64 {
        match self {
            Pattern::Unstructured => sparsity,
            Pattern::NM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }
}

impl std::fmt::Display for Pattern {
    /// `unstructured` or `N:M`, as [`Pattern::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// How to prune one matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneSpec {
    pub method: PruneMethod,
    /// Fraction removed, in (0, 1); ignored by N:M patterns.
    pub sparsity: f64,
    pub pattern: Pattern,
    /// SparseGPT's column block.
    pub block: usize,
    /// SparseGPT's relative damping.
    pub damp: f64,
}

impl PruneSpec {
    pub fn new(method: PruneMethod, sparsity: f64, pattern: Pattern) -> PruneSpec {
        PruneSpec {
            method,
            sparsity,
            pattern,
            block: 128,
            damp: 0.01,
        }
    }

    /// Checks the options that do not depend on a matrix.
    pub fn validate(&self) -> Result<(), PruneError> {
        if !(self.sparsity > 0.0 && self.sparsity < 1.0) {
            return Err(PruneError::Sparsity(self.sparsity));
        }
        if self.block == 0 {
            return Err(PruneError::Block);
        }
        if !(self.damp >= 0.0 && self.damp.is_finite()) {
            return Err(PruneError::Damping(self.damp));
        }
        Ok(())
    }

    /// Checks that the pattern fits a matrix with `cols` input features.
    pub fn check_width(&self, cols: usize) -> Result<(), PruneError> {
        if let Pattern::NM { n, m } = self.pattern {
            if !cols.is_multiple_of(m) {
                return Err(PruneError::Width { n, m, cols });
            }
        }
        Ok(())
    }
}

/// What pruning one matrix did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PruneOutcome {
    pub zeros: usize,
    pub total: usize,
}

impl PruneOutcome {
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.total.max(1) as f64
    }
}

/// Prunes `w` (`rows × cols`, see the module doc) in place. `h` (`cols × cols`) is required by
/// Wanda and SparseGPT.
pub fn prune_matrix(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: Option<&[f64]>,
    spec: &PruneSpec,
) -> Result<PruneOutcome, PruneError> {
    spec.validate()?;
    spec.check_width(cols)?;
    if w.len() != rows * cols {
        return Err(PruneError::WeightSize {
            len: w.len(),
            rows,
            cols,
        });
    }
    let need_h = spec.method.needs_hessian();
    let h = match h {
        Some(h) if h.len() == cols * cols => Some(h),
        Some(h) => return Err(PruneError::HessianSize { len: h.len(), cols }),
        None if need_h => return Err(PruneError::NeedsHessian(spec.method.name())),
        None => None,
    };
    match spec.method {
        PruneMethod::Magnitude => {
            let scores: Vec<f64> = w.iter().map(|x| x.abs()).collect();
            let mask = select_mask(&scores, rows, cols, spec, false);
            apply_mask(w, &mask);
        }
        PruneMethod::Wanda => {
            let h = h.ok_or(PruneError::NeedsHessian("wanda"))?;
            let norms: Vec<f64> = (0..cols).map(|j| h[j * cols + j].max(0.0).sqrt()).collect();
            let scores: Vec<f64> = w
                .iter()
                .enumerate()
                .map(|(i, x)| x.abs() * norms[i % cols])
                .collect();
            let mask = select_mask(&scores, rows, cols, spec, true);
            apply_mask(w, &mask);
        }
        PruneMethod::SparseGpt => {
            let h = h.ok_or(PruneError::NeedsHessian("sparsegpt"))?;
            sparsegpt(w, rows, cols, h, spec)?;
        }
    }
    Ok(PruneOutcome {
        zeros: w.iter().filter(|x| **x == 0.0).count(),
        total: w.len(),
    })
}

/// Magnitude or Wanda from the Hessian's diagonal alone (`Σ x²` per input column, any positive
/// scale): what Wanda needs, at O(cols) memory instead of O(cols²). SparseGPT is refused.
pub fn prune_matrix_diag(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    diag: &[f64],
    spec: &PruneSpec,
) -> Result<PruneOutcome, PruneError> {
    if spec.method == PruneMethod::SparseGpt {
        return Err(PruneError::NeedsFullHessian);
    }
    spec.validate()?;
    spec.check_width(cols)?;
    if w.len() != rows * cols || diag.len() != cols {
        return Err(PruneError::DiagonalSize {
            len: w.len(),
            diag: diag.len(),
            rows,
            cols,
        });
    }
    let per_row = spec.method == PruneMethod::Wanda;
    let scores: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if per_row {
                x.abs() * diag[i % cols].max(0.0).sqrt()
            } else {
                x.abs()
            }
        })
        .collect();
    let mask = select_mask(&scores, rows, cols, spec, per_row);
    apply_mask(w, &mask);
    Ok(PruneOutcome {
        zeros: w.iter().filter(|x| **x == 0.0).count(),
        total: w.len(),
    })
}

/// `true` = prune. Unstructured: per matrix (`per_row` false) or per row; N:M: per group.
pub fn select_mask(
    scores: &[f64],
    rows: usize,
    cols: usize,
    spec: &PruneSpec,
    per_row: bool,
) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    match spec.pattern {
        Pattern::NM { n, m } => {
            for r in 0..rows {
                for g0 in (0..cols).step_by(m) {
                    let idx: Vec<usize> = (r * cols + g0..r * cols + g0 + m).collect();
                    for i in lowest(scores, &idx, m - n) {
                        mask[i] = true;
                    }
                }
            }
        }
        Pattern::Unstructured if per_row => {
            let k = (cols as f64 * spec.sparsity) as usize;
            for r in 0..rows {
                let idx: Vec<usize> = (r * cols..(r + 1) * cols).collect();
                for i in lowest(scores, &idx, k) {
                    mask[i] = true;
                }
            }
        }
        Pattern::Unstructured => {
            let k = (scores.len() as f64 * spec.sparsity) as usize;
            let idx: Vec<usize> = (0..scores.len()).collect();
            for i in lowest(scores, &idx, k) {
                mask[i] = true;
            }
        }
    }
    mask
}

/// The `k` indices of `idx` with the lowest scores (ties: lower index first).
fn lowest(scores: &[f64], idx: &[usize], k: usize) -> Vec<usize> {
    let mut v = idx.to_vec();
    let key = |i: &usize| (scores[*i], *i);
    v.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    v.truncate(k.min(idx.len()));
    v
}

fn apply_mask(w: &mut [f64], mask: &[bool]) {
    for (x, &m) in w.iter_mut().zip(mask) {
        if m {
            *x = 0.0;
        }
    }
}

/// The upper Cholesky factor `U` (`A = UᵀU`) of `(H + λI)⁻¹`, row-major, after SparseGPT's
/// treatment of dead inputs (a zero diagonal entry gets 1, its weights are zeroed by the caller).
pub fn sparsegpt_hinv_upper(h: &[f64], cols: usize, damp: f64) -> Result<Vec<f64>, PruneError> {
    let mut hm = Mat::<f64>::from_fn(cols, cols, |i, j| h[i * cols + j]);
    for i in 0..cols {
        if hm[(i, i)] == 0.0 {
            hm[(i, i)] = 1.0;
        }
    }
    let mean = (0..cols).map(|i| hm[(i, i)]).sum::<f64>() / cols.max(1) as f64;
    for i in 0..cols {
        hm[(i, i)] += damp * mean;
    }
    let llt = hm
        .llt(Side::Lower)
        .map_err(|_| PruneError::NotPositiveDefinite)?;
    let inv = llt.inverse();
    let inv_llt = inv
        .llt(Side::Lower)
        .map_err(|_| PruneError::InverseNotPositiveDefinite)?;
    let l = inv_llt.L();
    // U = Lᵀ: U[i][j] = L[j][i] for j ≥ i.
    let mut u = vec![0.0; cols * cols];
    for i in 0..cols {
        for j in i..cols {
            u[i * cols + j] = l[(j, i)];
        }
    }
    Ok(u)
}

/// SparseGPT on `w` in place (see the module doc).
fn sparsegpt(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: &[f64],
    spec: &PruneSpec,
) -> Result<(), PruneError> {
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let u = sparsegpt_hinv_upper(h, cols, spec.damp)?;
    let bs = match spec.pattern {
        // Blocks must hold whole groups.
        Pattern::NM { m, .. } => spec.block.div_ceil(m) * m,
        Pattern::Unstructured => spec.block,
    };
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        // The block's columns, rows × count.
        let mut w1: Vec<f64> = (0..rows)
            .flat_map(|r| w[r * cols + i1..r * cols + i2].to_vec())
            .collect();
        let mut err1 = vec![0.0; rows * count];
        let mut mask1 = vec![false; rows * count];
        let d = |i: usize| u[(i1 + i) * cols + i1 + i];
        if let Pattern::Unstructured = spec.pattern {
            let scores: Vec<f64> = (0..rows * count)
                .map(|k| w1[k] * w1[k] / (d(k % count) * d(k % count)))
                .collect();
            let n = (scores.len() as f64 * spec.sparsity) as usize;
            let idx: Vec<usize> = (0..scores.len()).collect();
            for k in lowest(&scores, &idx, n) {
                mask1[k] = true;
            }
        }
        for i in 0..count {
            if let Pattern::NM { n, m } = spec.pattern {
                if i % m == 0 {
                    for r in 0..rows {
                        let scores: Vec<f64> = (i..i + m)
                            .map(|c| {
                                let x = w1[r * count + c];
                                x * x / (d(c) * d(c))
                            })
                            .collect();
                        let idx: Vec<usize> = (0..m).collect();
                        for c in lowest(&scores, &idx, m - n) {
                            mask1[r * count + i + c] = true;
                        }
                    }
                }
            }
            let di = d(i);
            for r in 0..rows {
                let k = r * count + i;
                let wv = w1[k];
                let q = if mask1[k] { 0.0 } else { wv };
                let e = (wv - q) / di;
                w1[k] = q;
                err1[k] = e;
                if e != 0.0 {
                    let urow = &u[(i1 + i) * cols + i1..(i1 + i) * cols + i2];
                    for c in i + 1..count {
                        w1[r * count + c] -= e * urow[c];
                    }
                }
            }
        }
        for r in 0..rows {
            w[r * cols + i1..r * cols + i2].copy_from_slice(&w1[r * count..(r + 1) * count]);
        }
        // The rest of the matrix: W[:, i2:] -= Err1 · U[i1:i2, i2:].
        if i2 < cols {
            let rest = cols - i2;
            let e = faer::MatRef::from_row_major_slice(&err1, rows, count);
            let ub = Mat::<f64>::from_fn(count, rest, |a, b| u[(i1 + a) * cols + i2 + b]);
            let mut prod = Mat::<f64>::zeros(rows, rest);
            faer::linalg::matmul::matmul(
                prod.as_mut(),
                faer::Accum::Replace,
                e,
                ub.as_ref(),
                1.0,
                faer::Par::rayon(0),
            );
            for r in 0..rows {
                for b in 0..rest {
                    w[r * cols + i2 + b] -= prod[(r, b)];
                }
            }
        }
        i1 = i2;
    }
    Ok(())
}

/// Checks that every group of `m` consecutive weights of each row (`rows × cols`) has at most
/// `n` non-zeros; the error names the first offending row and group.
pub fn check_nm(w: &[f64], rows: usize, cols: usize, n: usize, m: usize) -> Result<(), PruneError> {
    if m == 0 || !cols.is_multiple_of(m) || w.len() != rows * cols {
        return Err(PruneError::NoGroups { rows, cols, n, m });
    }
    for r in 0..rows {
        for g0 in (0..cols).step_by(m) {
            let kept = w[r * cols + g0..r * cols + g0 + m]
                .iter()
                .filter(|x| **x != 0.0)
                .count();
            if kept > n {
                return Err(PruneError::GroupTooDense {
                    row: r,
                    start: g0,
                    kept,
                    n,
                    m,
                });
            }
        }
    }
    Ok(())
}

/// Checks that at least `floor(len · sparsity)` weights are zero, per row when `per_row`.
pub fn check_unstructured(
    w: &[f64],
    rows: usize,
    cols: usize,
    sparsity: f64,
    per_row: bool,
) -> Result<(), PruneError> {
    let zeros = |s: &[f64]| s.iter().filter(|x| **x == 0.0).count();
    if per_row {
        let k = (cols as f64 * sparsity) as usize;
        for r in 0..rows {
            let z = zeros(&w[r * cols..(r + 1) * cols]);
            if z < k {
                return Err(PruneError::TooFewZeros {
                    row: Some(r),
                    zeros: z,
                    needed: k,
                });
            }
        }
    } else {
        let k = (w.len() as f64 * sparsity) as usize;
        let z = zeros(w);
        if z < k {
            return Err(PruneError::TooFewZeros {
                row: None,
                zeros: z,
                needed: k,
            });
        }
    }
    Ok(())
}
