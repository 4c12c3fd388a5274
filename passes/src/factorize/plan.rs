//! Choosing ranks across matrices under a parameter budget.
//!
//! Each matrix `i` has a spectrum `σ_i` (of `W_i` for low rank, of `𝓡(W_i)` for a Kronecker
//! sum at its chosen shape), a parameter cost `c_i` per unit of rank and a dense size `mn_i`.
//! Keeping rank `r_i` costs `r_i·c_i` parameters and leaves the relative squared error
//! `Σ_{k≥r_i} σ_ik² / ‖W_i‖²`. The allocation minimizes the sum of relative errors under
//! `Σ r_i·c_i ≤ keep·Σ mn_i`: every matrix gets rank 1, then the remaining units go greedily
//! to the largest gain per parameter `σ_ik²/(‖W_i‖²·c_i)`. Gains decrease along each spectrum,
//! so the greedy order takes each matrix's ranks as a prefix, and it is the optimum of the
//! fractional relaxation. An optional cap bounds each matrix's multiply-adds per token.

/// One matrix as the allocation sees it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Singular values, largest first (their count is the full rank).
    pub sigma: Vec<f64>,
    /// Parameters per unit of rank.
    pub cost: usize,
    /// Multiply-adds per token per unit of rank.
    pub macs: usize,
    /// `m·n` of the dense matrix.
    pub dense: usize,
}

impl Item {
    /// `‖W‖_F²`.
    pub fn energy(&self) -> f64 {
        self.sigma.iter().map(|s| s * s).sum()
    }

    /// The squared error of a rank-`r` truncation.
    pub fn tail(&self, r: usize) -> f64 {
        self.sigma[r.min(self.sigma.len())..]
            .iter()
            .map(|s| s * s)
            .sum()
    }

    /// The highest rank the spectrum and the multiply-add cap allow (at least 1).
    pub fn max_rank(&self, max_macs: Option<f64>) -> usize {
        let full = self.sigma.len().max(1);
        match max_macs {
            Some(f) if self.macs > 0 => {
                let cap = (f * self.dense as f64 / self.macs as f64).floor() as usize;
                cap.clamp(1, full)
            }
            _ => full,
        }
    }
}

/// Ranks for `items` so that their parameters stay within `keep` (a fraction) of the dense
/// parameters, each at least 1 and at most [`Item::max_rank`].
pub fn allocate(items: &[Item], keep: f64, max_macs: Option<f64>) -> Vec<usize> {
    let dense: usize = items.iter().map(|i| i.dense).sum();
    let budget = keep * dense as f64;
    let mut ranks = vec![1usize; items.len()];
    let mut used: f64 = items.iter().map(|i| i.cost as f64).sum();
    let mut units: Vec<(f64, usize, usize)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let e = it.energy().max(f64::MIN_POSITIVE);
        for k in 1..it.max_rank(max_macs) {
            units.push((it.sigma[k] * it.sigma[k] / (e * it.cost as f64), i, k));
        }
    }
    // Largest gain per parameter first; within a matrix in rank order (a prefix).
    units.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, i, k) in units {
        let c = items[i].cost as f64;
        if ranks[i] == k && used + c <= budget {
            ranks[i] += 1;
            used += c;
        }
    }
    ranks
}

/// The rank each matrix gets when all keep the same fraction of their parameters.
pub fn uniform_rank(it: &Item, keep: f64, max_macs: Option<f64>) -> usize {
    let r = (keep * it.dense as f64 / it.cost.max(1) as f64).floor() as usize;
    r.clamp(1, it.max_rank(max_macs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_met_and_spent_where_the_spectrum_is_heavy() {
        // Matrix 0 has a flat spectrum, matrix 1 a steep one: at the same cost, the flat one
        // needs the units.
        let items = vec![
            Item {
                sigma: vec![1.0; 10],
                cost: 20,
                macs: 20,
                dense: 100,
            },
            Item {
                sigma: (0..10).map(|k| 0.1f64.powi(k)).collect(),
                cost: 20,
                macs: 20,
                dense: 100,
            },
        ];
        let r = allocate(&items, 0.5, None);
        let params: usize = r.iter().zip(&items).map(|(r, i)| r * i.cost).sum();
        assert!(params <= 100, "{r:?}");
        assert_eq!(r, vec![4, 1]);
        // A multiply-add cap of 0.4 allows rank 2 at 20 MACs per rank on 100.
        assert_eq!(allocate(&items, 0.5, Some(0.4)), vec![2, 2]);
        assert_eq!(uniform_rank(&items[0], 0.5, None), 2);
    }
}
