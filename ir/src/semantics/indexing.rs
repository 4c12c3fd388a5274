//! Index-driven data movement over plain slices: the element offsets `GatherND`, `ScatterND`
//! and `ScatterElements` read or write, `TopK`'s (and `Hardmax`'s) selection along a lane, and
//! `Pad`'s source element per output element. The engine's kernels run these; each validates
//! its operands once, and every index is checked, as ONNX makes an out-of-range index an error
//! whatever the data.

use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// One index against an axis of size `dim`, negative counting from the end.
fn norm_index(i: i64, dim: usize) -> SemResult<usize> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if j < 0 || j >= d {
        return Err(SemError::Index { index: i, dim });
    }
    Ok(j as usize)
}

/// The layout of `GatherND`/`ScatterND` indices against data: `batch_dims` leading dims shared
/// by both, index tuples of length `k` (the last indices dim) naming slices of `slice` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdLayout {
    pub batch_dims: usize,
    pub k: usize,
    /// Elements addressed by one index tuple (the data dims after `batch_dims + k`).
    pub slice: usize,
    /// Index tuples in all (the indices dims but the last).
    pub tuples: usize,
    /// The output dims of `GatherND` (= the `updates` dims `ScatterND` expects).
    pub out_dims: Vec<usize>,
}

/// Checks data dims against indices dims for `GatherND`/`ScatterND` with `batch_dims`.
pub fn nd_layout(data: &[usize], idx: &[usize], batch_dims: i64) -> SemResult<NdLayout> {
    let b = usize::try_from(batch_dims)
        .map_err(|_| SemError::Invalid(format!("batch_dims {batch_dims} must be ≥ 0")))?;
    let Some((&k, lead)) = idx.split_last() else {
        return Err(SemError::Invalid("indices must have rank ≥ 1".into()));
    };
    if b >= data.len().min(idx.len()) {
        return Err(SemError::Invalid(format!(
            "batch_dims {b} must be less than the ranks of data ({}) and indices ({})",
            data.len(),
            idx.len()
        )));
    }
    if b + k > data.len() {
        return Err(SemError::Invalid(format!(
            "index tuples of length {k} do not fit data of rank {} with {b} batch dims",
            data.len()
        )));
    }
    if data[..b] != idx[..b] {
        return Err(SemError::Invalid(format!(
            "batch dims of data {:?} and indices {:?} differ",
            &data[..b],
            &idx[..b]
        )));
    }
    let mut out_dims = lead.to_vec();
    out_dims.extend_from_slice(&data[b + k..]);
    Ok(NdLayout {
        batch_dims: b,
        k,
        slice: checked_numel(&data[b + k..])?,
        tuples: checked_numel(lead)?,
        out_dims,
    })
}

/// The data offset of the slice each index tuple names, in index order.
pub fn nd_offsets(data: &[usize], lay: &NdLayout, indices: &[i64]) -> SemResult<Vec<usize>> {
    let (b, k) = (lay.batch_dims, lay.k);
    let st = strides(data);
    // Each batch element owns `batch_stride` elements of data and `per_batch` index tuples.
    let batch_stride = checked_numel(&data[b..])?;
    let per_batch = lay.tuples / checked_numel(&data[..b])?.max(1);
    let n_tuples = lay.tuples;
    let mut offs = Vec::with_capacity(n_tuples);
    for t in 0..n_tuples {
        let mut off = (t / per_batch.max(1)) * batch_stride;
        for j in 0..k {
            off += norm_index(indices[t * k + j], data[b + j])? * st[b + j];
        }
        offs.push(off);
    }
    Ok(offs)
}

/// `GatherND` over plain slices: the output's elements.
pub fn gather_nd<T: Copy>(
    data: &[T],
    dims: &[usize],
    indices: &[i64],
    idx_dims: &[usize],
    batch_dims: i64,
) -> SemResult<(Vec<usize>, Vec<T>)> {
    let lay = nd_layout(dims, idx_dims, batch_dims)?;
    let offs = nd_offsets(dims, &lay, indices)?;
    let mut out = Vec::with_capacity(checked_numel(&lay.out_dims)?);
    for o in offs {
        out.extend_from_slice(&data[o..o + lay.slice]);
    }
    Ok((lay.out_dims, out))
}

/// The data offset each element of `ScatterElements`' indices (and updates) writes to: the
/// element's own coordinates with the one along `axis` (normalized) replaced by its index.
pub fn element_offsets(
    data: &[usize],
    idx_dims: &[usize],
    indices: &[i64],
    axis: usize,
) -> SemResult<Vec<usize>> {
    if data.len() != idx_dims.len() || axis >= data.len() {
        return Err(SemError::Invalid(format!(
            "indices {idx_dims:?} must have the rank of data {data:?}"
        )));
    }
    if idx_dims
        .iter()
        .zip(data)
        .enumerate()
        .any(|(a, (i, d))| a != axis && i > d)
    {
        return Err(SemError::Invalid(format!(
            "indices {idx_dims:?} exceed data {data:?} off the axis {axis}"
        )));
    }
    let (ds, is) = (strides(data), strides(idx_dims));
    indices
        .iter()
        .enumerate()
        .map(|(e, &j)| {
            let mut off = 0;
            for a in 0..data.len() {
                let c = if a == axis {
                    norm_index(j, data[a])?
                } else {
                    e / is[a] % idx_dims[a]
                };
                off += c * ds[a];
            }
            Ok(off)
        })
        .collect()
}

/// How a scatter combines an update with the value already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduction {
    /// The ONNX `reduction` attribute's word.
    pub fn from_word(w: &str) -> Option<ScatterReduction> {
        Some(match w {
            "none" => ScatterReduction::None,
            "add" => ScatterReduction::Add,
            "mul" => ScatterReduction::Mul,
            "max" => ScatterReduction::Max,
            "min" => ScatterReduction::Min,
            _ => return None,
        })
    }
}

/// The positions `TopK` selects along one lane of `n` elements (`at(i)` reads element `i`): the
/// `k` largest (or smallest) in order, equal values by lower position first, NaN above every
/// number (as numpy sorts it).
pub fn topk_lane<T: PartialOrd + Copy>(
    n: usize,
    at: impl Fn(usize) -> T,
    k: usize,
    largest: bool,
) -> Vec<usize> {
    use std::cmp::Ordering;
    let nan = |x: T| x.partial_cmp(&x).is_none();
    let cmp = |a: T, b: T| match (nan(a), nan(b)) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    };
    let mut pos: Vec<usize> = (0..n).collect();
    // A stable sort keeps equal values in position order, which is ONNX's tie rule.
    pos.sort_by(|&i, &j| {
        let o = cmp(at(i), at(j));
        if largest {
            o.reverse()
        } else {
            o
        }
    });
    pos.truncate(k.min(n));
    pos
}

/// `Pad`'s `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

impl PadMode {
    pub fn from_word(w: &str) -> Option<PadMode> {
        Some(match w {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            "wrap" => PadMode::Wrap,
            _ => return None,
        })
    }
}

/// Per data axis, the (begin, end) pads from `Pad`'s `pads` input and its optional `axes`
/// (negative pads crop).
pub fn pad_amounts(rank: usize, pads: &[i64], axes: Option<&[i64]>) -> SemResult<Vec<(i64, i64)>> {
    let axes: Vec<usize> = match axes {
        Some(a) => super::axis::norm_axes(a, rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(SemError::Invalid(format!(
            "pads has {} values for {} axes (expected {})",
            pads.len(),
            axes.len(),
            2 * axes.len()
        )));
    }
    let mut out = vec![(0i64, 0i64); rank];
    for (i, &a) in axes.iter().enumerate() {
        out[a] = (pads[i], pads[i + axes.len()]);
    }
    Ok(out)
}

/// For one axis of size `dim` padded by (begin, end): the source position of every output
/// position, `None` where the constant goes.
pub fn pad_axis(dim: usize, begin: i64, end: i64, mode: PadMode) -> SemResult<Vec<Option<usize>>> {
    let d = dim as i64;
    let n = d + begin + end;
    if n < 0 {
        return Err(SemError::NegativeDim {
            what: "Pad",
            dim: n,
        });
    }
    if dim == 0 && n > 0 && mode != PadMode::Constant {
        return Err(SemError::Invalid(format!(
            "Pad mode {mode:?} cannot pad an empty axis"
        )));
    }
    (0..n)
        .map(|o| {
            let s = o - begin;
            if (0..d).contains(&s) {
                return Ok(Some(s as usize));
            }
            Ok(match mode {
                PadMode::Constant => None,
                PadMode::Edge => Some(s.clamp(0, d - 1) as usize),
                PadMode::Wrap => Some(s.rem_euclid(d) as usize),
                PadMode::Reflect => {
                    if d == 1 {
                        Some(0)
                    } else {
                        // Reflection without repeating the edge has period 2(d−1).
                        let p = 2 * (d - 1);
                        let m = s.rem_euclid(p);
                        Some(if m < d { m } else { p - m } as usize)
                    }
                }
            })
        })
        .collect()
}

/// `Pad` over plain slices: the output dims and elements.
pub fn pad<T: Copy>(
    data: &[T],
    dims: &[usize],
    amounts: &[(i64, i64)],
    mode: PadMode,
    value: T,
) -> SemResult<(Vec<usize>, Vec<T>)> {
    let maps: Vec<Vec<Option<usize>>> = dims
        .iter()
        .zip(amounts)
        .map(|(&d, &(b, e))| pad_axis(d, b, e, mode))
        .collect::<SemResult<_>>()?;
    let out_dims: Vec<usize> = maps.iter().map(Vec::len).collect();
    let n = checked_numel(&out_dims)?;
    let (ist, ost) = (strides(dims), strides(&out_dims));
    let mut out = Vec::with_capacity(n);
    for o in 0..n {
        let mut src = Some(0usize);
        for a in 0..dims.len() {
            let p = o / ost[a] % out_dims[a];
            src = match (src, maps[a][p]) {
                (Some(s), Some(q)) => Some(s + q * ist[a]),
                _ => None,
            };
        }
        out.push(src.map_or(value, |s| data[s]));
    }
    Ok((out_dims, out))
}

/// `Compress`: the positions along an axis of size `dim` that `condition` keeps (a condition
/// shorter than the axis drops the rest; a true beyond the axis is an error).
pub fn compress_positions(condition: &[bool], dim: usize) -> SemResult<Vec<i64>> {
    if condition.iter().skip(dim).any(|&c| c) {
        return Err(SemError::Invalid(format!(
            "condition selects past the end of an axis of {dim}"
        )));
    }
    Ok(condition
        .iter()
        .take(dim)
        .enumerate()
        .filter(|&(_, &c)| c)
        .map(|(i, _)| i as i64)
        .collect())
}

/// `Det` of each trailing n×n matrix, by Gaussian elimination with partial pivoting in f64.
pub fn det(data: &[f64], dims: &[usize]) -> SemResult<(Vec<usize>, Vec<f64>)> {
    let r = dims.len();
    if r < 2 || dims[r - 1] != dims[r - 2] {
        return Err(SemError::Invalid(format!(
            "Det needs square trailing matrices, got {dims:?}"
        )));
    }
    let n = dims[r - 1];
    let out_dims = dims[..r - 2].to_vec();
    let count = checked_numel(&out_dims)?;
    let mut out = Vec::with_capacity(count);
    for b in 0..count {
        let mut a = data[b * n * n..(b + 1) * n * n].to_vec();
        let mut det = 1.0f64;
        for col in 0..n {
            let p = (col..n)
                .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
                .unwrap_or(col);
            if a[p * n + col] == 0.0 {
                det = 0.0;
                break;
            }
            if p != col {
                for k in 0..n {
                    a.swap(p * n + k, col * n + k);
                }
                det = -det;
            }
            let piv = a[col * n + col];
            det *= piv;
            for i in col + 1..n {
                let f = a[i * n + col] / piv;
                for k in col..n {
                    a[i * n + k] -= f * a[col * n + k];
                }
            }
        }
        out.push(det);
    }
    Ok((out_dims, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_nd_with_and_without_batch_dims() {
        // data [2,2]: index pairs pick elements, single indices pick rows.
        let data = [0, 1, 2, 3];
        let (d, v) = gather_nd(&data, &[2, 2], &[0, 0, 1, 1], &[2, 2], 0).expect("pairs");
        assert_eq!((d, v), (vec![2], vec![0, 3]));
        let (d, v) = gather_nd(&data, &[2, 2], &[1, 0], &[2, 1], 0).expect("rows");
        assert_eq!((d, v), (vec![2, 2], vec![2, 3, 0, 1]));
        // batch_dims 1 over data [2,2,2]: batch 0 takes row 1, batch 1 takes row 0.
        let data: Vec<i32> = (0..8).collect();
        let (d, v) = gather_nd(&data, &[2, 2, 2], &[1, 0], &[2, 1], 1).expect("batched");
        assert_eq!((d, v), (vec![2, 2], vec![2, 3, 4, 5]));
        assert!(gather_nd(&data, &[2, 2, 2], &[2, 0], &[2, 1], 1).is_err());
    }

    #[test]
    fn element_offsets_replace_the_axis_coordinate() {
        // data [2,3], indices [1,2] along axis 1: row 0, columns 2 and -3 (= 0).
        assert_eq!(
            element_offsets(&[2, 3], &[1, 2], &[2, -3], 1).expect("offsets"),
            vec![2, 0]
        );
        assert!(element_offsets(&[2, 3], &[1, 2], &[3, 0], 1).is_err());
    }

    #[test]
    fn topk_breaks_ties_by_position() {
        let v = [1.0, 3.0, 3.0, f64::NAN, 0.5];
        assert_eq!(topk_lane(5, |i| v[i], 3, true), vec![3, 1, 2]);
        assert_eq!(topk_lane(5, |i| v[i], 2, false), vec![4, 0]);
    }

    #[test]
    fn pad_modes() {
        let m = |mode| pad_axis(3, 2, 2, mode).expect("pad");
        let some = |v: &[usize]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        assert_eq!(m(PadMode::Edge), some(&[0, 0, 0, 1, 2, 2, 2]));
        assert_eq!(m(PadMode::Reflect), some(&[2, 1, 0, 1, 2, 1, 0]));
        assert_eq!(m(PadMode::Wrap), some(&[1, 2, 0, 1, 2, 0, 1]));
        assert_eq!(
            pad_axis(3, 1, -1, PadMode::Constant).expect("crop"),
            vec![None, Some(0), Some(1)]
        );
        let (d, v) = pad(&[1, 2], &[1, 2], &[(0, 0), (1, 0)], PadMode::Constant, 9).expect("2d");
        assert_eq!((d, v), (vec![1, 3], vec![9, 1, 2]));
    }

    #[test]
    fn compress_and_det() {
        assert_eq!(
            compress_positions(&[false, true, true], 4).expect("c"),
            vec![1, 2]
        );
        assert!(compress_positions(&[false, false, true], 2).is_err());
        let (d, v) = det(&[0.0, 1.0, 2.0, 3.0, 2.0, 0.0, 0.0, 2.0], &[2, 2, 2]).expect("det");
        assert_eq!((d, v), (vec![2], vec![-2.0, 4.0]));
    }
}
