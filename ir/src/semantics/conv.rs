//! `Conv` and `ConvTranspose`: grouped N-D convolutions (cross-correlation, as ONNX defines
//! it) and their transposes, evaluated in f64.
//! The windows — output sizes, explicit or automatic pads, strides, dilations — are the
//! pooling rule of [`super::pool`] with the kernel read off the weights.

use super::pool::{pool_axes, PoolAttrs};
use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// Checks X `(N, C, spatial…)` against W (`(M, C / group, kernel…)` for Conv, `(C, M / group,
/// kernel…)` transposed) and B; returns (group, M).
fn check_operands(
    op: &str,
    xd: &[usize],
    wd: &[usize],
    bias: Option<&[f64]>,
    group: i64,
    transposed: bool,
) -> SemResult<(usize, usize)> {
    if xd.len() < 3 || wd.len() != xd.len() {
        return Err(SemError::Invalid(format!(
            "{op} needs X (N, C, spatial…) and W of the same rank, got {xd:?} and {wd:?}"
        )));
    }
    let g = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| SemError::Invalid(format!("group {group} must be positive")))?;
    let c = xd[1];
    let (fits, m) = if transposed {
        (wd[0] == c && c % g == 0, wd[1] * g)
    } else {
        (wd[1] * g == c && wd[0] % g == 0, wd[0])
    };
    if !fits {
        return Err(SemError::Invalid(format!(
            "W {wd:?} with group {g} does not fit {c} input channels"
        )));
    }
    if bias.is_some_and(|b| b.len() != m) {
        return Err(SemError::Invalid(format!("B must have {m} values")));
    }
    Ok((g, m))
}

/// `Conv(x, w, b?)` over `x` `(N, C, spatial…)` and `w` `(M, C / group, kernel…)`: the output
/// dims `(N, M, out…)` and values.
pub fn conv_f64(
    x: &[f64],
    xd: &[usize],
    w: &[f64],
    wd: &[usize],
    bias: Option<&[f64]>,
    at: &PoolAttrs,
    group: i64,
) -> SemResult<(Vec<usize>, Vec<f64>)> {
    let (g, m) = check_operands("Conv", xd, wd, bias, group, false)?;
    let (n, c, cg) = (xd[0], xd[1], wd[1]);
    let kernel: Vec<i64> = wd[2..].iter().map(|&k| k as i64).collect();
    if !at.kernel.is_empty() && at.kernel != kernel {
        return Err(SemError::Invalid(format!(
            "kernel_shape {:?} differs from W's {kernel:?}",
            at.kernel
        )));
    }
    let axes = pool_axes(
        &xd[2..],
        &PoolAttrs {
            kernel,
            ..at.clone()
        },
    )?;
    let out_sp: Vec<usize> = axes.iter().map(|a| a.output).collect();
    let ksp = &wd[2..];
    let (in_sp, out_n, k_n) = (
        checked_numel(&xd[2..])?,
        checked_numel(&out_sp)?,
        checked_numel(ksp)?,
    );
    let (ist, ost, kst) = (strides(&xd[2..]), strides(&out_sp), strides(ksp));
    let mut out_dims = vec![n, m];
    out_dims.extend_from_slice(&out_sp);
    let mut y = vec![0.0f64; checked_numel(&out_dims)?];
    // Per output position and kernel tap, the input offset (None where it falls on a pad).
    let taps: Vec<Option<usize>> = (0..out_n * k_n)
        .map(|ok| {
            let (o, t) = (ok / k_n, ok % k_n);
            let mut off = 0usize;
            for (a, ax) in axes.iter().enumerate() {
                let p = (o / ost[a] % out_sp[a] * ax.stride + t / kst[a] % ksp[a] * ax.dilation)
                    as i64
                    - ax.pad_begin as i64;
                if p < 0 || p >= ax.input as i64 {
                    return None;
                }
                off += p as usize * ist[a];
            }
            Some(off)
        })
        .collect();
    let m_per_group = m / g;
    for s in 0..n {
        for oc in 0..m {
            let ic0 = oc / m_per_group * cg;
            let yo = (s * m + oc) * out_n;
            for o in 0..out_n {
                let mut acc = bias.map_or(0.0, |b| b[oc]);
                for ci in 0..cg {
                    let xs = &x[(s * c + ic0 + ci) * in_sp..][..in_sp];
                    let ws = &w[(oc * cg + ci) * k_n..][..k_n];
                    for (t, &wv) in ws.iter().enumerate() {
                        if let Some(off) = taps[o * k_n + t] {
                            acc += xs[off] * wv;
                        }
                    }
                }
                y[yo + o] = acc;
            }
        }
    }
    Ok((out_dims, y))
}

/// `ConvTranspose`'s own attributes beside the windows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransposeAttrs {
    pub window: PoolAttrs,
    pub output_padding: Option<Vec<i64>>,
    pub output_shape: Option<Vec<i64>>,
}

/// Per spatial axis of a transposed convolution: (output size, begin pad). With
/// `output_shape` (or SAME auto-padding, whose output is input × stride) the pads are what
/// makes the full result `stride·(in−1) + output_padding + span` that long, the odd one at the
/// end for SAME_UPPER and at the start otherwise; else the explicit pads crop the full result.
fn transpose_axes(
    spatial: &[usize],
    kernel: &[usize],
    at: &TransposeAttrs,
) -> SemResult<Vec<(usize, i64)>> {
    let n = spatial.len();
    let w = &at.window;
    let word = w.auto_pad.as_deref().unwrap_or("NOTSET");
    let auto = super::pool::AutoPad::from_word(word)
        .ok_or_else(|| SemError::Invalid(format!("auto_pad '{word}'")))?;
    let get = |v: &Option<Vec<i64>>, i: usize, default: i64| -> i64 {
        v.as_ref()
            .and_then(|v| v.get(i).copied())
            .unwrap_or(default)
    };
    // `output_shape` may name every dim or only the spatial ones.
    let shape = at
        .output_shape
        .as_ref()
        .map(|s| s[s.len().saturating_sub(n)..].to_vec());
    (0..n)
        .map(|i| {
            let (inp, k) = (spatial[i] as i64, kernel[i] as i64);
            let (s, d) = (get(&w.strides, i, 1), get(&w.dilations, i, 1));
            if s < 1 || d < 1 {
                return Err(SemError::Invalid(format!(
                    "stride {s} and dilation {d} must be positive"
                )));
            }
            let full = s * (inp - 1) + get(&at.output_padding, i, 0) + (k - 1) * d + 1;
            let same = matches!(
                auto,
                super::pool::AutoPad::SameUpper | super::pool::AutoPad::SameLower
            );
            let target = match &shape {
                Some(sh) => Some(*sh.get(i).ok_or_else(|| {
                    SemError::Invalid(format!("output_shape {sh:?} for {n} spatial dims"))
                })?),
                None if same => Some(inp * s),
                None => None,
            };
            let (out, begin) = match target {
                Some(out) => {
                    let total = full - out;
                    let small = total.div_euclid(2);
                    let begin = if auto == super::pool::AutoPad::SameUpper {
                        small
                    } else {
                        total - small
                    };
                    (out, begin)
                }
                None => {
                    let (pb, pe) = (get(&w.pads, i, 0), get(&w.pads, i + n, 0));
                    (full - pb - pe, pb)
                }
            };
            let out = usize::try_from(out).map_err(|_| SemError::NegativeDim {
                what: "ConvTranspose",
                dim: out,
            })?;
            Ok((out, begin))
        })
        .collect()
}

/// `ConvTranspose(x, w, b?)` over `x` `(N, C, spatial…)` and `w` `(C, M / group, kernel…)`:
/// every input element spreads its products with the kernel over the output, each tap at
/// `in·stride + tap·dilation − begin pad`.
pub fn conv_transpose_f64(
    x: &[f64],
    xd: &[usize],
    w: &[f64],
    wd: &[usize],
    bias: Option<&[f64]>,
    at: &TransposeAttrs,
    group: i64,
) -> SemResult<(Vec<usize>, Vec<f64>)> {
    let (g, m) = check_operands("ConvTranspose", xd, wd, bias, group, true)?;
    let (n, c, mg) = (xd[0], xd[1], wd[1]);
    let ksp = &wd[2..];
    let axes = transpose_axes(&xd[2..], ksp, at)?;
    let out_sp: Vec<usize> = axes.iter().map(|a| a.0).collect();
    let (in_n, out_n, k_n) = (
        checked_numel(&xd[2..])?,
        checked_numel(&out_sp)?,
        checked_numel(ksp)?,
    );
    let (ist, ost, kst) = (strides(&xd[2..]), strides(&out_sp), strides(ksp));
    let get =
        |v: &Option<Vec<i64>>, i: usize| v.as_ref().and_then(|v| v.get(i).copied()).unwrap_or(1);
    // Per input position and kernel tap, the output offset (None where it falls outside).
    let taps: Vec<Option<usize>> = (0..in_n * k_n)
        .map(|it| {
            let (p, t) = (it / k_n, it % k_n);
            let mut off = 0usize;
            for (a, &(out, begin)) in axes.iter().enumerate() {
                let o = (p / ist[a] % xd[2 + a]) as i64 * get(&at.window.strides, a)
                    + (t / kst[a] % ksp[a]) as i64 * get(&at.window.dilations, a)
                    - begin;
                if o < 0 || o >= out as i64 {
                    return None;
                }
                off += o as usize * ost[a];
            }
            Some(off)
        })
        .collect();
    let mut out_dims = vec![n, m];
    out_dims.extend_from_slice(&out_sp);
    let mut y = vec![0.0f64; checked_numel(&out_dims)?];
    let cg = c / g;
    for s in 0..n {
        for oc in 0..m {
            let (grp, j) = (oc / mg, oc % mg);
            let yo = &mut y[(s * m + oc) * out_n..][..out_n];
            if let Some(b) = bias {
                yo.iter_mut().for_each(|v| *v = b[oc]);
            }
            for ci in grp * cg..(grp + 1) * cg {
                let xs = &x[(s * c + ci) * in_n..][..in_n];
                let ws = &w[(ci * mg + j) * k_n..][..k_n];
                for (p, &xv) in xs.iter().enumerate() {
                    for (t, &wv) in ws.iter().enumerate() {
                        if let Some(o) = taps[p * k_n + t] {
                            yo[o] += xv * wv;
                        }
                    }
                }
            }
        }
    }
    Ok((out_dims, y))
}

impl From<&crate::op::attrs::ConvTranspose> for TransposeAttrs {
    fn from(a: &crate::op::attrs::ConvTranspose) -> TransposeAttrs {
        TransposeAttrs {
            window: PoolAttrs::from(a),
            output_padding: a.output_padding.clone(),
            output_shape: a.output_shape.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_strided_and_grouped() {
        // 1×1×3×3 input 1..9, a 2×2 kernel of ones, stride 2, pad 1 before each axis:
        // windows {1}, {2, 3}, {4, 7}, {5, 6, 8, 9}.
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let at = PoolAttrs {
            strides: Some(vec![2, 2]),
            pads: Some(vec![1, 1, 0, 0]),
            ..PoolAttrs::default()
        };
        let (d, y) =
            conv_f64(&x, &[1, 1, 3, 3], &[1.0; 4], &[1, 1, 2, 2], None, &at, 1).expect("conv");
        assert_eq!((d, y), (vec![1, 1, 2, 2], vec![1.0, 5.0, 11.0, 28.0]));
        // Two groups of one channel each: each output channel sees only its own input.
        let (_, y) = conv_f64(
            &[1.0, 10.0],
            &[1, 2, 1],
            &[2.0, 3.0],
            &[2, 1, 1],
            Some(&[0.5, 0.0]),
            &PoolAttrs::default(),
            2,
        )
        .expect("grouped");
        assert_eq!(y, vec![2.5, 30.0]);
    }

    #[test]
    fn transposed_convolution_strides_and_output_shape() {
        // x [1, 2], kernel [1, 1]: stride 1 overlaps the taps, stride 2 does not.
        let w = TransposeAttrs::default();
        let (d, y) = conv_transpose_f64(
            &[1.0, 2.0],
            &[1, 1, 2],
            &[1.0, 1.0],
            &[1, 1, 2],
            None,
            &w,
            1,
        )
        .expect("stride 1");
        assert_eq!((d, y), (vec![1, 1, 3], vec![1.0, 3.0, 2.0]));
        let mut at = TransposeAttrs {
            window: PoolAttrs {
                strides: Some(vec![2]),
                ..PoolAttrs::default()
            },
            ..TransposeAttrs::default()
        };
        let (_, y) = conv_transpose_f64(
            &[1.0, 2.0],
            &[1, 1, 2],
            &[1.0, 1.0],
            &[1, 1, 2],
            None,
            &at,
            1,
        )
        .expect("stride 2");
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0]);
        // Asking for 3 outputs of the 4 drops one at the start (NOTSET puts the odd pad first).
        at.output_shape = Some(vec![3]);
        let (_, y) = conv_transpose_f64(
            &[1.0, 2.0],
            &[1, 1, 2],
            &[1.0, 1.0],
            &[1, 1, 2],
            None,
            &at,
            1,
        )
        .expect("output_shape");
        assert_eq!(y, vec![1.0, 2.0, 2.0]);
    }
}
