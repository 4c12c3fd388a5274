//! Normalizations over groups of elements, in f64: `BatchNormalization` (per channel, with the
//! training-mode statistics), `InstanceNormalization` (per sample and channel),
//! `MeanVarianceNormalization` (over chosen axes) and `LpNormalization` (along one axis).
//! Channels are axis 1 of `(N, C, …)` data.

use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// Elements grouped by their coordinates on the kept axes (`reduced[a]` false): each element's
/// group, and per group the mean and the population variance.
pub struct Moments {
    pub group: Vec<usize>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// The moments of `x` (dims `dims`) over the axes marked in `reduced`.
pub fn moments(x: &[f64], dims: &[usize], reduced: &[bool]) -> SemResult<Moments> {
    let kept: Vec<usize> = dims
        .iter()
        .zip(reduced)
        .map(|(&d, &r)| if r { 1 } else { d })
        .collect();
    let groups = checked_numel(&kept)?;
    let (st, kst) = (strides(dims), strides(&kept));
    let group: Vec<usize> = (0..x.len())
        .map(|e| {
            (0..dims.len())
                .filter(|&a| !reduced[a])
                .map(|a| e / st[a] % dims[a] * kst[a])
                .sum()
        })
        .collect();
    let (mut sum, mut count) = (vec![0.0f64; groups], vec![0usize; groups]);
    for (&g, &v) in group.iter().zip(x) {
        sum[g] += v;
        count[g] += 1;
    }
    let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, &n)| s / n as f64).collect();
    let mut var = vec![0.0f64; groups];
    for (&g, &v) in group.iter().zip(x) {
        var[g] += (v - mean[g]).powi(2);
    }
    for (v, &n) in var.iter_mut().zip(&count) {
        *v /= n as f64;
    }
    Ok(Moments { group, mean, var })
}

fn per_channel(v: &[f64], c: usize, what: &str) -> SemResult<()> {
    if v.len() != c {
        return Err(SemError::Invalid(format!(
            "{what} has {} values for {c} channels",
            v.len()
        )));
    }
    Ok(())
}

fn channels(dims: &[usize], op: &str) -> SemResult<usize> {
    match dims.get(1) {
        Some(&c) => Ok(c),
        None => Err(SemError::Invalid(format!(
            "{op} needs (N, C, …) data, got {dims:?}"
        ))),
    }
}

/// The channel of every element of `(N, C, …)` data.
fn channel_of(dims: &[usize]) -> impl Fn(usize) -> usize + '_ {
    let inner: usize = dims[2..].iter().product();
    move |e| e / inner.max(1) % dims[1]
}

/// What `BatchNormalization` gives: Y, and in training mode the updated running mean and
/// variance (`running = input · momentum + batch · (1 − momentum)`).
pub struct BatchNorm {
    pub y: Vec<f64>,
    pub running: Option<(Vec<f64>, Vec<f64>)>,
}

/// `BatchNormalization(x, scale, bias, mean, var)`; `momentum` set means training mode (the
/// batch's own statistics normalize).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &[f64],
    dims: &[usize],
    scale: &[f64],
    bias: &[f64],
    mean: &[f64],
    var: &[f64],
    epsilon: f64,
    momentum: Option<f64>,
) -> SemResult<BatchNorm> {
    let c = channels(dims, "BatchNormalization")?;
    for (v, what) in [
        (scale, "scale"),
        (bias, "B"),
        (mean, "input_mean"),
        (var, "input_var"),
    ] {
        per_channel(v, c, what)?;
    }
    let ch = channel_of(dims);
    let (m, v, running) = match momentum {
        None => (mean.to_vec(), var.to_vec(), None),
        Some(mo) => {
            let reduced: Vec<bool> = (0..dims.len()).map(|a| a != 1).collect();
            let st = moments(x, dims, &reduced)?;
            let blend = |run: &[f64], batch: &[f64]| -> Vec<f64> {
                run.iter()
                    .zip(batch)
                    .map(|(r, b)| r * mo + b * (1.0 - mo))
                    .collect()
            };
            let running = (blend(mean, &st.mean), blend(var, &st.var));
            (st.mean, st.var, Some(running))
        }
    };
    let y = x
        .iter()
        .enumerate()
        .map(|(e, &xv)| {
            let k = ch(e);
            scale[k] * (xv - m[k]) / (v[k] + epsilon).sqrt() + bias[k]
        })
        .collect();
    Ok(BatchNorm { y, running })
}

/// `InstanceNormalization(x, scale, bias)`: each (sample, channel) over its spatial elements.
pub fn instance_norm(
    x: &[f64],
    dims: &[usize],
    scale: &[f64],
    bias: &[f64],
    epsilon: f64,
) -> SemResult<Vec<f64>> {
    let c = channels(dims, "InstanceNormalization")?;
    per_channel(scale, c, "scale")?;
    per_channel(bias, c, "B")?;
    let reduced: Vec<bool> = (0..dims.len()).map(|a| a >= 2).collect();
    let st = moments(x, dims, &reduced)?;
    let ch = channel_of(dims);
    Ok(x.iter()
        .enumerate()
        .map(|(e, &xv)| {
            let (g, k) = (st.group[e], ch(e));
            scale[k] * (xv - st.mean[g]) / (st.var[g] + epsilon).sqrt() + bias[k]
        })
        .collect())
}

/// `MeanVarianceNormalization` over the normalized `axes`: (x − mean) / (std + 1e-9), the
/// epsilon of the ONNX function body.
pub fn mean_variance(x: &[f64], dims: &[usize], axes: &[usize]) -> SemResult<Vec<f64>> {
    let reduced: Vec<bool> = (0..dims.len()).map(|a| axes.contains(&a)).collect();
    let st = moments(x, dims, &reduced)?;
    Ok(x.iter()
        .zip(&st.group)
        .map(|(&xv, &g)| (xv - st.mean[g]) / (st.var[g].sqrt() + 1e-9))
        .collect())
}

/// `LpNormalization` along `axis` (p = 1 or 2): each lane divided by its p-norm, a zero norm
/// giving zeros.
pub fn lp_normalize(x: &[f64], dims: &[usize], axis: usize, p: i64) -> SemResult<Vec<f64>> {
    if p != 1 && p != 2 {
        return Err(SemError::Invalid(format!(
            "LpNormalization p = {p} (1 or 2)"
        )));
    }
    let reduced: Vec<bool> = (0..dims.len()).map(|a| a == axis).collect();
    let st = moments(x, dims, &reduced)?;
    let mut norm = vec![0.0f64; st.mean.len()];
    for (&g, &v) in st.group.iter().zip(x) {
        norm[g] += if p == 1 { v.abs() } else { v * v };
    }
    if p == 2 {
        norm.iter_mut().for_each(|n| *n = n.sqrt());
    }
    Ok(x.iter()
        .zip(&st.group)
        .map(|(&v, &g)| if norm[g] == 0.0 { 0.0 } else { v / norm[g] })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_norm_inference_and_training() {
        // (N=2, C=1, 1): values 1 and 3; stored mean 0, var 1; scale 2, bias 1.
        let x = [1.0, 3.0];
        let r = batch_norm(&x, &[2, 1, 1], &[2.0], &[1.0], &[0.0], &[1.0], 0.0, None)
            .expect("inference");
        assert_eq!(r.y, vec![3.0, 7.0]);
        // Training: the batch mean 2 and variance 1 normalize; running stats blend with 0.9.
        let r = batch_norm(
            &x,
            &[2, 1, 1],
            &[2.0],
            &[1.0],
            &[0.0],
            &[1.0],
            0.0,
            Some(0.9),
        )
        .expect("training");
        assert_eq!(r.y, vec![-1.0, 3.0]);
        let (m, v) = r.running.expect("running stats");
        assert!((m[0] - 0.2).abs() < 1e-12 && (v[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn instance_mvn_and_lp() {
        let x = [1.0, 3.0, 0.0, 4.0];
        // (N=1, C=2, 2): each channel normalized on its own.
        let y = instance_norm(&x, &[1, 2, 2], &[1.0, 1.0], &[0.0, 0.0], 0.0).expect("in");
        assert_eq!(y, vec![-1.0, 1.0, -1.0, 1.0]);
        let y = mean_variance(&x, &[2, 2], &[1]).expect("mvn");
        assert!((y[0] + 1.0).abs() < 1e-6 && (y[3] - 1.0).abs() < 1e-6);
        assert_eq!(
            lp_normalize(&[3.0, 4.0], &[2], 0, 2).expect("l2"),
            vec![0.6, 0.8]
        );
        assert_eq!(
            lp_normalize(&[0.0, 0.0], &[2], 0, 1).expect("l1"),
            vec![0.0, 0.0]
        );
    }
}
