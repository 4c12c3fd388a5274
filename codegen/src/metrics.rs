//! Numbers for judging a model's logits: negative log-likelihood, Jensen–Shannon divergence,
//! logit differences, argmax. Everything is computed in f64 from f32 logits.

/// log Σ exp(x) of a row, in f64, and how many entries are not finite.
pub fn log_sum_exp(row: &[f32]) -> (f64, usize) {
    let mut non_finite = 0usize;
    let mut m = f64::NEG_INFINITY;
    for &v in row {
        if !v.is_finite() {
            non_finite += 1;
        }
        let v = v as f64;
        if v > m {
            m = v;
        }
    }
    if non_finite > 0 || m == f64::NEG_INFINITY {
        // Not hidden: a row with a NaN or ±inf gives a NaN (or infinite) result.
        let s: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        return (s.ln(), non_finite);
    }
    let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    (m + s.ln(), 0)
}

/// −log softmax(row)[target], and the number of non-finite logits in the row.
pub fn nll(row: &[f32], target: usize) -> (f64, usize) {
    let (lse, nf) = log_sum_exp(row);
    let x = row.get(target).map(|&v| v as f64).unwrap_or(f64::NAN);
    (lse - x, nf)
}

/// Jensen–Shannon divergence (nats, in [0, ln 2]) between softmax(a) and softmax(b).
pub fn js_divergence(a: &[f32], b: &[f32]) -> f64 {
    let (la, _) = log_sum_exp(a);
    let (lb, _) = log_sum_exp(b);
    let mut js = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let lp = x as f64 - la;
        let lq = y as f64 - lb;
        let (p, q) = (lp.exp(), lq.exp());
        let m = 0.5 * (p + q);
        if m <= 0.0 {
            continue;
        }
        let lm = m.ln();
        if p > 0.0 {
            js += 0.5 * p * (lp - lm);
        }
        if q > 0.0 {
            js += 0.5 * q * (lq - lm);
        }
    }
    js.max(0.0)
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best
}

/// max |a − b| over a row, and that divided by max |a| (the row's scale).
pub fn row_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut d = 0.0f64;
    let mut s = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let e = (x as f64 - y as f64).abs();
        if e > d || e.is_nan() {
            d = if e.is_nan() { f64::INFINITY } else { e };
        }
        s = s.max((x as f64).abs());
    }
    (d, if s > 0.0 { d / s } else { d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_and_js_by_hand() {
        let row = [0.0f32, (2.0f64).ln() as f32];
        // softmax = [1/3, 2/3]
        let (n, nf) = nll(&row, 1);
        assert!((n - (1.5f64).ln()).abs() < 1e-7 && nf == 0);
        assert!(js_divergence(&row, &row).abs() < 1e-15);
        let js = js_divergence(&[0.0, -1e30], &[-1e30, 0.0]);
        assert!((js - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        let (n, nf) = nll(&[0.0, f32::NAN], 0);
        assert!(n.is_nan() && nf == 1);
        assert_eq!(row_diff(&[1.0, -4.0], &[1.5, -4.0]), (0.5, 0.125));
    }
}
