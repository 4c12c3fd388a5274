//! The learning-rate schedule (linear warm-up, then cosine decay) and gradient accumulation over
//! micro-batches.

/// The learning-rate multiplier at `step` (0-based): a linear ramp `(step+1)/warmup` over the
/// first `warmup` steps, then a half cosine from 1 down to `min_ratio` at `total - 1`; after
/// `total` steps it stays at `min_ratio`.
pub fn cosine_with_warmup(step: u64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).saturating_sub(1);
    if span == 0 {
        return if step < total { 1.0 } else { min_ratio };
    }
    let t = ((step - warmup) as f64 / span as f64).min(1.0);
    min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Sums gradients over micro-batches and returns their mean.
#[derive(Debug, Clone, Default)]
pub struct GradAccumulator {
    sums: Vec<Vec<f64>>,
    count: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients (one vector per parameter, the same sizes every time).
    pub fn add(&mut self, grads: &[Vec<f32>]) {
        if self.sums.is_empty() {
            self.sums = grads.iter().map(|g| vec![0.0; g.len()]).collect();
        }
        for (s, g) in self.sums.iter_mut().zip(grads) {
            for (a, &b) in s.iter_mut().zip(g) {
                *a += f64::from(b);
            }
        }
        self.count += 1;
    }

    /// Micro-batches added since the last [`GradAccumulator::take`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean gradient (summed in f64, rounded once), and a reset.
    pub fn take(&mut self) -> Vec<Vec<f32>> {
        let n = self.count.max(1) as f64;
        let out = self
            .sums
            .iter()
            .map(|s| s.iter().map(|&x| (x / n) as f32).collect())
            .collect();
        self.sums.clear();
        self.count = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        // warmup 4, total 12: 0.25, 0.5, 0.75, 1 then cos from 1 (step 4) to 0.1 (step 11).
        let s: Vec<f64> = (0..14).map(|i| cosine_with_warmup(i, 4, 12, 0.1)).collect();
        assert_eq!(&s[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((s[4] - 1.0).abs() < 1e-15);
        assert!((s[11] - 0.1).abs() < 1e-15);
        // Halfway through the decay (step 4 + 3.5 is between 7 and 8): symmetric around 0.55.
        assert!((s[7] + s[8] - 1.1).abs() < 1e-12, "{} {}", s[7], s[8]);
        assert!(s.windows(2).skip(4).all(|w| w[1] <= w[0]));
        assert_eq!(s[13], 0.1);
    }

    #[test]
    fn accumulation_averages() {
        let mut acc = GradAccumulator::new();
        acc.add(&[vec![1.0, 2.0], vec![3.0]]);
        acc.add(&[vec![3.0, -2.0], vec![0.5]]);
        assert_eq!(acc.count(), 2);
        assert_eq!(acc.take(), vec![vec![2.0, 0.0], vec![1.75]]);
        assert_eq!(acc.count(), 0);
    }
}
