//! Pooling (`MaxPool`, `AveragePool`, `LpPool` and the global forms): the output size and pads
//! per spatial axis (explicit pads with floor or ceil rounding, or `auto_pad`), the taps of each
//! window, and an evaluation in f64 over `(N, C, spatial…)` data.
//!
//! A window tap is *real* when it falls on the input, *counted* when it falls on the input or
//! on an explicit pad (`AveragePool` with `count_include_pad = 1` divides by the counted taps);
//! taps past the end pad, which ceil rounding can create, are never counted.

use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// The `auto_pad` attribute of pooling and convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl AutoPad {
    pub fn from_word(w: &str) -> Option<AutoPad> {
        Some(match w {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            _ => return None,
        })
    }
}

/// The attributes that place the windows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolAttrs {
    pub kernel: Vec<i64>,
    pub strides: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
    pub pads: Option<Vec<i64>>,
    pub auto_pad: Option<String>,
    pub ceil_mode: bool,
}

/// One spatial axis of a pooling: input size, window, and the pads actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolAxis {
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
    pub output: usize,
}

fn positive(v: Option<&Vec<i64>>, i: usize, what: &str) -> SemResult<usize> {
    let x = v.and_then(|v| v.get(i).copied()).unwrap_or(1);
    usize::try_from(x)
        .ok()
        .filter(|&x| x > 0)
        .ok_or_else(|| SemError::Invalid(format!("{what} {x} must be positive")))
}

/// The axes of a pooling over the spatial dims `spatial`.
pub fn pool_axes(spatial: &[usize], at: &PoolAttrs) -> SemResult<Vec<PoolAxis>> {
    let n = spatial.len();
    if at.kernel.len() != n {
        return Err(SemError::Invalid(format!(
            "kernel_shape {:?} for {n} spatial dims",
            at.kernel
        )));
    }
    let word = at.auto_pad.as_deref().unwrap_or("NOTSET");
    let auto =
        AutoPad::from_word(word).ok_or_else(|| SemError::Invalid(format!("auto_pad '{word}'")))?;
    if let Some(p) = &at.pads {
        if p.len() != 2 * n || p.iter().any(|&x| x < 0) {
            return Err(SemError::Invalid(format!(
                "pads {p:?} must be {} values ≥ 0",
                2 * n
            )));
        }
    }
    (0..n)
        .map(|i| {
            let input = spatial[i];
            let kernel = positive(Some(&at.kernel), i, "kernel_shape")?;
            let stride = positive(at.strides.as_ref(), i, "stride")?;
            let dilation = positive(at.dilations.as_ref(), i, "dilation")?;
            // The span of one window on the padded input.
            let span = (kernel - 1) * dilation + 1;
            let (pad_begin, pad_end, output) = match auto {
                AutoPad::NotSet => {
                    let (pb, pe) = at
                        .pads
                        .as_ref()
                        .map_or((0, 0), |p| (p[i] as usize, p[i + n] as usize));
                    let room = (input + pb + pe).checked_sub(span).ok_or_else(|| {
                        SemError::Invalid(format!(
                            "a window of {span} does not fit {input} + pads {pb}, {pe}"
                        ))
                    })?;
                    let mut out = if at.ceil_mode {
                        room.div_ceil(stride) + 1
                    } else {
                        room / stride + 1
                    };
                    // With ceil rounding the last window must still start inside the input
                    // or the begin pad.
                    if at.ceil_mode && (out - 1) * stride >= input + pb {
                        out -= 1;
                    }
                    (pb, pe, out)
                }
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let out = input.div_ceil(stride);
                    let total = ((out.max(1) - 1) * stride + span).saturating_sub(input);
                    let small = total / 2;
                    if auto == AutoPad::SameUpper {
                        (small, total - small, out)
                    } else {
                        (total - small, small, out)
                    }
                }
                AutoPad::Valid => {
                    let room = input.checked_sub(span).ok_or_else(|| {
                        SemError::Invalid(format!("a window of {span} does not fit {input}"))
                    })?;
                    (0, 0, room / stride + 1)
                }
            };
            Ok(PoolAxis {
                input,
                kernel,
                stride,
                dilation,
                pad_begin,
                pad_end,
                output,
            })
        })
        .collect()
}

/// The counted taps of output position `o` on one axis: `Some(input position)` for a real tap,
/// `None` for a counted pad.
fn axis_taps(a: &PoolAxis, o: usize) -> Vec<Option<usize>> {
    let end = (a.input + a.pad_begin + a.pad_end) as i64;
    (0..a.kernel)
        .map(|t| (o * a.stride + t * a.dilation) as i64)
        .filter(|&p| p < end)
        .map(|p| {
            let q = p - a.pad_begin as i64;
            (0..a.input as i64).contains(&q).then_some(q as usize)
        })
        .collect()
}

/// What a window computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolKind {
    /// The largest real tap (the first one on ties); its flat index in the input, spatial
    /// offsets row-major, or column-major with `col_major` (MaxPool's `storage_order = 1`).
    Max {
        col_major: bool,
    },
    Average {
        count_include_pad: bool,
    },
    /// `(Σ |x|^p)^(1/p)` over the real taps.
    Lp {
        p: f64,
    },
}

/// A pooling over `(N, C, spatial…)` data in f64: the output dims, values and, for `Max`, the
/// index of each chosen element (−1 for a window without a real tap).
pub fn pool_f64(
    x: &[f64],
    dims: &[usize],
    at: &PoolAttrs,
    kind: PoolKind,
) -> SemResult<(Vec<usize>, Vec<f64>, Vec<i64>)> {
    if dims.len() < 3 {
        return Err(SemError::Invalid(format!(
            "pooling needs (N, C, spatial…) data, got {dims:?}"
        )));
    }
    let spatial = &dims[2..];
    let axes = pool_axes(spatial, at)?;
    let mut out_dims = dims[..2].to_vec();
    out_dims.extend(axes.iter().map(|a| a.output));
    let out_spatial = &out_dims[2..];
    let (channels, in_size, out_size) = (
        dims[0] * dims[1],
        checked_numel(spatial)?,
        checked_numel(out_spatial)?,
    );
    let (ist, ost) = (strides(spatial), strides(out_spatial));
    // Column-major spatial strides, for MaxPool's storage_order = 1.
    let mut cst = vec![1usize; spatial.len()];
    for k in 1..spatial.len() {
        cst[k] = cst[k - 1] * spatial[k - 1];
    }
    let mut vals = Vec::with_capacity(channels * out_size);
    let mut idx = Vec::new();
    for c in 0..channels {
        let plane = &x[c * in_size..(c + 1) * in_size];
        for o in 0..out_size {
            let taps: Vec<Vec<Option<usize>>> = axes
                .iter()
                .enumerate()
                .map(|(k, a)| axis_taps(a, o / ost[k] % out_spatial[k]))
                .collect();
            let counted: usize = taps.iter().map(Vec::len).product();
            // Walk the real taps of the window in row-major order.
            let mut best: Option<(f64, usize)> = None;
            let (mut sum, mut real) = (0.0f64, 0usize);
            let mut pos = vec![0usize; taps.len()];
            'window: for _ in 0..counted {
                let coords: Option<Vec<usize>> =
                    taps.iter().zip(&pos).map(|(t, &p)| t[p]).collect();
                if let Some(cs) = coords {
                    let off: usize = cs.iter().zip(&ist).map(|(c, s)| c * s).sum();
                    let v = plane[off];
                    real += 1;
                    match kind {
                        PoolKind::Max { col_major } => {
                            if best.is_none_or(|(b, _)| v > b) {
                                let flat = if col_major {
                                    cs.iter().zip(&cst).map(|(c, s)| c * s).sum()
                                } else {
                                    off
                                };
                                best = Some((v, flat));
                            }
                        }
                        PoolKind::Average { .. } => sum += v,
                        PoolKind::Lp { p } => sum += v.abs().powf(p),
                    }
                }
                // The next tap: the last axis fastest.
                for k in (0..pos.len()).rev() {
                    pos[k] += 1;
                    if pos[k] < taps[k].len() {
                        continue 'window;
                    }
                    pos[k] = 0;
                }
            }
            match kind {
                PoolKind::Max { .. } => {
                    vals.push(best.map_or(0.0, |b| b.0));
                    idx.push(best.map_or(-1, |b| (c * in_size + b.1) as i64));
                }
                PoolKind::Average { count_include_pad } => {
                    let n = if count_include_pad { counted } else { real };
                    vals.push(sum / n as f64);
                }
                PoolKind::Lp { p } => vals.push(sum.powf(1.0 / p)),
            }
        }
    }
    Ok((out_dims, vals, idx))
}

/// The window attributes of each pooling op and of Conv (which has no ceil rounding), read
/// through their typed accessors.
macro_rules! from_window_op {
    ($($op:ident: $ceil:expr),*) => {$(
        impl From<&crate::op::attrs::$op> for PoolAttrs {
            fn from(a: &crate::op::attrs::$op) -> PoolAttrs {
                let ceil: fn(&crate::op::attrs::$op) -> bool = $ceil;
                PoolAttrs {
                    kernel: a.kernel_shape.clone().unwrap_or_default(),
                    strides: a.strides.clone(),
                    dilations: a.dilations.clone(),
                    pads: a.pads.clone(),
                    auto_pad: Some(a.auto_pad()),
                    ceil_mode: ceil(a),
                }
            }
        }
    )*};
}
from_window_op!(
    MaxPool: |a| a.ceil_mode() != 0,
    AveragePool: |a| a.ceil_mode() != 0,
    LpPool: |a| a.ceil_mode() != 0,
    Conv: |_| false,
    ConvTranspose: |_| false
);

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kernel: &[i64], strides: &[i64], pads: &[i64], ceil_mode: bool) -> PoolAttrs {
        PoolAttrs {
            kernel: kernel.to_vec(),
            strides: Some(strides.to_vec()),
            pads: Some(pads.to_vec()),
            ceil_mode,
            ..PoolAttrs::default()
        }
    }

    #[test]
    fn output_sizes_and_auto_pads() {
        // 5 wide, kernel 2, stride 2: floor gives 2 windows, ceil 3 (the last one half real).
        let a = pool_axes(&[5], &attrs(&[2], &[2], &[0, 0], false)).expect("floor");
        assert_eq!(a[0].output, 2);
        let a = pool_axes(&[5], &attrs(&[2], &[2], &[0, 0], true)).expect("ceil");
        assert_eq!(a[0].output, 3);
        let same = PoolAttrs {
            kernel: vec![3],
            strides: Some(vec![2]),
            auto_pad: Some("SAME_LOWER".into()),
            ..PoolAttrs::default()
        };
        let a = pool_axes(&[4], &same).expect("same");
        // ceil(4/2) = 2 windows need 5 positions: the one pad goes first with SAME_LOWER.
        assert_eq!((a[0].output, a[0].pad_begin, a[0].pad_end), (2, 1, 0));
    }

    #[test]
    fn max_average_and_lp_windows() {
        // One 1×4 plane [1, -2, 3, 4], kernel 2, stride 2, pad 1 each side: windows
        // [pad, 1], [-2, 3], [4, pad].
        let x = [1.0, -2.0, 3.0, 4.0];
        let at = attrs(&[2], &[2], &[1, 1], false);
        let (d, v, i) =
            pool_f64(&x, &[1, 1, 4], &at, PoolKind::Max { col_major: false }).expect("max");
        assert_eq!(
            (d, v, i),
            (vec![1, 1, 3], vec![1.0, 3.0, 4.0], vec![0, 2, 3])
        );
        let avg = |count_include_pad| {
            pool_f64(&x, &[1, 1, 4], &at, PoolKind::Average { count_include_pad })
                .expect("avg")
                .1
        };
        assert_eq!(avg(false), vec![1.0, 0.5, 4.0]);
        assert_eq!(avg(true), vec![0.5, 0.5, 2.0]);
        let (_, v, _) = pool_f64(&x, &[1, 1, 4], &at, PoolKind::Lp { p: 2.0 }).expect("lp");
        assert_eq!(v[1], 13.0f64.sqrt());
    }
}
