//! POET (ALGORITHMS.md §1): every chosen linear weight is trained as `R·W0·P` with `W0` frozen
//! and `R`, `P` orthogonal, so the weight's singular values stay those of `W0`.
//!
//! - [`reparam`]: the `poet-reparam` pass (a weight becomes a small subgraph of ordinary ops
//!   computing `R·W0·P` from trainable skew parameters, so `autodiff` differentiates it);
//! - [`merge`]: the `poet-merge` pass (the subgraph folded back into one dense weight, in f64);
//! - [`cayley`]: the Cayley–Neumann map and its exact reference, in f64;
//! - [`PoetState`]: one reparameterized weight's tensors on the host, what a training loop
//!   merges and re-draws every `T` steps without recompiling;
//! - [`lora`], [`lora_merge`]: the `lora` and `lora-merge` passes, the baseline.
//!
//! Layout. The subgraph works on the weight as stored (`r × c`, whichever axis is the input):
//! `S = Π_rᵀ·D_r·B·D_c·Π_c` where `B = Π_r·S0·Π_cᵀ` is the frozen base stored already permuted,
//! `D_r`, `D_c` are block-diagonal with orthogonal `b × b` blocks from the Cayley–Neumann map,
//! and the permutations are applied to the result by two `Gather`s with the inverse index. Both
//! sides are orthogonal, so `S`'s singular values are `S0`'s (up to the truncation's error).
//! `kind=bs`: the blocks cover every coordinate (`b` must divide both sides). `kind=fs`: one
//! block over the first `b` permuted coordinates, the identity elsewhere — the fully stochastic
//! primitive `I + D(S)(G − I)D(S)ᵀ` with a random index set `S` of size `b`.
//!
//! Why the weight is materialized once per step rather than applied to the activations
//! (input-centric, as POET-X does): materializing costs `≈ 2·r·c·b` multiply-adds per step,
//! the input-centric form `≈ T·b·(r + c)` for `T` tokens in the step; for square `d × d`
//! weights materializing is cheaper whenever `T > d`, which holds for every training run here
//! (`T = batch·context ≥ 1024` against `d ≤ 1536`). It also keeps the linear a plain `MatMul`,
//! so a bias is added after the whole `R·W0·P` and the merge is bias-correct by construction.

pub mod cayley;
pub mod emit;
pub mod lora;
pub mod lora_merge;
pub mod materialize;
pub mod merge;
pub mod reparam;
pub mod rng;

use cayley::{skew, tri_count};
use rng::{inverse, SplitMix};

/// Which orthogonal primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoetKind {
    /// Block-stochastic: a random permutation, then block-diagonal with `b × b` blocks.
    Bs,
    /// Fully stochastic: one `b × b` block over a random index set of size `b`.
    Fs,
}
crate::word_option_type!(PoetKind { Bs = "bs", Fs = "fs" });

/// How `W0` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoetInit {
    /// The model's weight (fine-tuning a pretrained model).
    Keep,
    /// Each output neuron's row drawn Gaussian and scaled to unit norm (training from scratch).
    NormalizedGaussian,
}
crate::word_option_type!(PoetInit {
    Keep = "keep",
    NormalizedGaussian = "normalized-gaussian",
});

/// What to do with a matrix the block size does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indivisible {
    Error,
    Skip,
}
crate::word_option_type!(Indivisible {
    Error = "error",
    Skip = "skip",
});

/// Marks the last node of a POET weight subgraph (its `doc`), so `poet-merge` and a training
/// loop find every reparameterized weight and the names of its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoetRecord {
    pub kind: PoetKind,
    pub block: usize,
    pub terms: usize,
    /// The name of the weight the subgraph replaced; its tensors are named `<stem>.poet_*`.
    pub stem: String,
}

const DOC_PREFIX: &str = "poet ";

impl PoetRecord {
    pub fn to_doc(&self) -> String {
        format!(
            "{DOC_PREFIX}kind={} block={} neumann-terms={} stem={}",
            self.kind.word(),
            self.block,
            self.terms,
            self.stem
        )
    }

    /// The record a node's `doc` holds, when it marks a POET weight.
    pub fn parse(doc: &str) -> Option<PoetRecord> {
        let rest = doc.strip_prefix(DOC_PREFIX)?;
        let (head, stem) = rest.split_once(" stem=")?;
        let mut kind = None;
        let mut block = None;
        let mut terms = None;
        for part in head.split(' ') {
            let (k, v) = part.split_once('=')?;
            match k {
                "kind" => kind = PoetKind::from_word(v),
                "block" => block = v.parse().ok(),
                "neumann-terms" => terms = v.parse().ok(),
                _ => return None,
            }
        }
        Some(PoetRecord {
            kind: kind?,
            block: block?,
            terms: terms?,
            stem: stem.to_string(),
        })
    }

    /// The frozen, permuted base `B` (`r × c`, the weight's dtype).
    pub fn base_name(&self) -> String {
        format!("{}.poet_base", self.stem)
    }
    /// The inverse row permutation (i64, `r`).
    pub fn rows_perm_name(&self) -> String {
        format!("{}.poet_rows_perm", self.stem)
    }
    pub fn cols_perm_name(&self) -> String {
        format!("{}.poet_cols_perm", self.stem)
    }
    /// The trainable skew parameters of the row side (`blocks · b(b−1)/2`).
    pub fn skew_rows_name(&self) -> String {
        format!("{}.poet_skew_rows", self.stem)
    }
    pub fn skew_cols_name(&self) -> String {
        format!("{}.poet_skew_cols", self.stem)
    }
}

/// The pattern naming every POET skew parameter (what a training loop marks trainable).
pub const SKEW_PATTERN: &str = "*.poet_skew_*";

/// How many blocks a side of `dim` coordinates gets (`None`: the block does not fit).
pub fn side_blocks(kind: PoetKind, block: usize, dim: usize) -> Option<usize> {
    if block < 2 || block > dim {
        return None;
    }
    match kind {
        PoetKind::Bs => (dim % block == 0).then_some(dim / block),
        PoetKind::Fs => Some(1),
    }
}

/// One POET weight on the host, in f64: the tensors its subgraph reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PoetState {
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
    pub terms: usize,
    /// `B = Π_r·S0·Π_cᵀ`, row-major `rows × cols`.
    pub base: Vec<f64>,
    /// `rows_perm[u]`: the row of `B` that row `u` of the weight comes from (`Π_r`'s inverse).
    pub rows_perm: Vec<usize>,
    pub cols_perm: Vec<usize>,
    pub skew_rows: Vec<f64>,
    pub skew_cols: Vec<f64>,
}

impl PoetState {
    /// A fresh state for the weight `w` (`rows × cols` as stored): permutations drawn from
    /// `rng`, skew parameters zero, so [`PoetState::materialize`] gives `w` back exactly.
    pub fn new(
        w: &[f64],
        rows: usize,
        cols: usize,
        kind: PoetKind,
        block: usize,
        terms: usize,
        rng: &mut SplitMix,
    ) -> Option<PoetState> {
        let nr = side_blocks(kind, block, rows)?;
        let nc = side_blocks(kind, block, cols)?;
        let mut s = PoetState {
            rows,
            cols,
            block,
            terms,
            base: Vec::new(),
            rows_perm: Vec::new(),
            cols_perm: Vec::new(),
            skew_rows: vec![0.0; nr * tri_count(block)],
            skew_cols: vec![0.0; nc * tri_count(block)],
        };
        s.redraw(w, rng);
        Some(s)
    }

    /// Re-bases on the weight `w` (`rows × cols`): new random permutations, the base permuted
    /// accordingly, the skew parameters reset to zero (the merge-then-reinitialize step).
    pub fn redraw(&mut self, w: &[f64], rng: &mut SplitMix) {
        let pr = rng.permutation(self.rows);
        let pc = rng.permutation(self.cols);
        let c = self.cols;
        self.base = (0..self.rows * c)
            .map(|k| w[pr[k / c] * c + pc[k % c]])
            .collect();
        self.rows_perm = inverse(&pr);
        self.cols_perm = inverse(&pc);
        self.skew_rows.iter_mut().for_each(|x| *x = 0.0);
        self.skew_cols.iter_mut().for_each(|x| *x = 0.0);
    }

    /// The orthogonal blocks of one side: the truncated Cayley–Neumann map of each with faer
    /// products (the merge of a large model evaluates thousands of blocks), the power sum by
    /// [`neumann_sum`] — the same polynomial as [`cayley::cnp`]'s Horner steps, in ⌊k/2⌋ (+1 for
    /// odd k) products instead of k − 1 (equal up to f64 rounding; tested).
    pub fn rotations(&self, skews: &[f64]) -> Vec<faer::Mat<f64>> {
        use faer::{Mat, MatRef};
        let b = self.block;
        let t = tri_count(b).max(1);
        skews
            .chunks(t)
            .map(|p| {
                let qv = skew(p, b);
                let q = MatRef::from_row_major_slice(&qv, b, b);
                let s = neumann_sum(q, self.terms);
                Mat::from_fn(b, b, |i, j| f64::from(u8::from(i == j)) + 2.0 * s[(i, j)])
            })
            .collect()
    }

    /// The weight the subgraph computes (see [`PoetState::materialize_with_error`]).
    pub fn materialize(&self) -> Vec<f64> {
        self.materialize_with_error().0
    }

    /// The largest `‖RᵀR − I‖_F` over the blocks of both sides.
    pub fn orthogonality_error(&self) -> f64 {
        self.materialize_with_error().1
    }

    /// Trainable parameters (both sides).
    pub fn trainable(&self) -> usize {
        self.skew_rows.len() + self.skew_cols.len()
    }
}

/// `S = Q + Q² + … + Q^k` for a `b × b` matrix in ⌊k/2⌋ (+1 when k is odd) products: with
/// `A = Q + Q²`, an even `k` is `A·(I + Q² + … + Q^{k−2})` by Horner steps in `Q²`
/// (`T ← A + Q²·T`), and an odd `k` is `Q + Q·S_{k−1}`. Horner steps in `Q` take k − 1.
pub fn neumann_sum(q: faer::MatRef<'_, f64>, k: usize) -> faer::Mat<f64> {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Mat, Par};
    let b = q.nrows();
    if k <= 1 {
        return if k == 1 {
            q.to_owned()
        } else {
            Mat::zeros(b, b)
        };
    }
    let mut q2 = Mat::<f64>::zeros(b, b);
    matmul(q2.as_mut(), Accum::Replace, q, q, 1.0, Par::Seq);
    let a = &q2 + q;
    let mut t = a.clone();
    for _ in 1..k / 2 {
        // T ← A + Q²·T.
        let mut next = a.clone();
        matmul(
            next.as_mut(),
            Accum::Add,
            q2.as_ref(),
            t.as_ref(),
            1.0,
            Par::Seq,
        );
        t = next;
    }
    if k % 2 == 1 {
        // S_k = Q + Q·S_{k−1}.
        let mut next = q.to_owned();
        matmul(next.as_mut(), Accum::Add, q, t.as_ref(), 1.0, Par::Seq);
        t = next;
    }
    t
}

/// The divisors of `g` a block size may take, from 16 (the sizes a useful block has) or, when
/// `g` has none that large, from 2.
pub fn block_sizes(g: usize) -> Vec<usize> {
    let all: Vec<usize> = (2..=g).filter(|d| g % d == 0).collect();
    let big: Vec<usize> = all.iter().copied().filter(|&d| d >= 16).collect();
    if big.is_empty() {
        all
    } else {
        big
    }
}

/// The singular values of a row-major `rows × cols` matrix, largest first (`None` when the
/// SVD fails).
pub fn singular_values(w: &[f64], rows: usize, cols: usize) -> Option<Vec<f64>> {
    let a = faer::Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j]);
    let svd = a.thin_svd().ok()?;
    let s = svd.S().column_vector();
    let mut v: Vec<f64> = (0..rows.min(cols)).map(|k| s[k]).collect();
    v.sort_by(|a, b| b.total_cmp(a));
    Some(v)
}

pub fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix::new(seed);
        (0..n).map(|_| r.gaussian()).collect()
    }

    #[test]
    fn record_round_trips_through_the_doc() {
        let r = PoetRecord {
            kind: PoetKind::Fs,
            block: 24,
            terms: 5,
            stem: "model.layers.0.mlp.up_proj.weight".into(),
        };
        assert_eq!(PoetRecord::parse(&r.to_doc()), Some(r));
        assert_eq!(PoetRecord::parse("something else"), None);
    }

    #[test]
    fn fresh_state_materializes_the_weight_exactly() {
        for kind in [PoetKind::Bs, PoetKind::Fs] {
            let w = random(8 * 12, 3);
            let s = PoetState::new(&w, 8, 12, kind, 4, 5, &mut SplitMix::new(9)).unwrap();
            assert_eq!(s.materialize(), w);
        }
    }

    /// The faer Horner steps of `rotations` agree with the reference `cayley::cnp`.
    #[test]
    fn rotations_agree_with_the_reference_map() {
        for terms in 1..=6 {
            rotations_agree_at(terms);
        }
    }

    fn rotations_agree_at(terms: usize) {
        let w = random(8 * 8, 1);
        let mut s =
            PoetState::new(&w, 8, 8, PoetKind::Bs, 4, terms, &mut SplitMix::new(2)).unwrap();
        s.skew_rows = random(s.skew_rows.len(), 5)
            .iter()
            .map(|x| 0.1 * x)
            .collect();
        for (blk, rot) in s.rotations(&s.skew_rows).iter().enumerate() {
            let p = &s.skew_rows[blk * 6..(blk + 1) * 6];
            let want = cayley::cnp(&skew(p, 4), 4, terms);
            for i in 0..4 {
                for j in 0..4 {
                    assert!((rot[(i, j)] - want[i * 4 + j]).abs() < 1e-14);
                }
            }
        }
    }

    #[test]
    fn block_sizes_of_smollm2_dims() {
        let g = gcd(gcd(576, 192), 1536);
        assert_eq!(block_sizes(g), vec![16, 24, 32, 48, 64, 96, 192]);
    }
}
