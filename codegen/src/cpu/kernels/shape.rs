//! Data movement and shape ops: Reshape, Transpose, (Un)Squeeze, Flatten, Slice, Concat, Split,
//! Expand, Tile, Gather, Shape, Size, Range, ConstantOfShape, Trilu, Identity.
//!
//! The op rules (axes, reshape dims, slice clamping, gather/concat movement, range counts) are
//! `ortho_ir::semantics`, shared with the constant folder; this file adds typed dispatch, the
//! buffer pool and strided copies.

use super::broadcast::{broadcast_shapes, fill_runs, Walk};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, strides, Elem, HostTensor};
use ortho_ir::semantics::slice::{plan_dims, slice_plan, SliceAxis};
use ortho_ir::semantics::{axis, movement, reshape as rs, size};
use ortho_ir::DType;

/// Normalizes a possibly negative axis for a tensor of rank `rank`.
pub fn norm_axis(a: i64, rank: usize) -> KernelResult<usize> {
    Ok(axis::norm_axis(a, rank)?)
}

fn dims_from(v: &[i64], what: &'static str) -> KernelResult<Vec<usize>> {
    Ok(size::dims_to_usize(v, what)?)
}

/// Passes operand 0 through under a new shape, without copying when it dies here.
fn relabel(ins: &mut Inputs<'_>, shape: Vec<usize>) -> KernelResult<Vec<HostTensor>> {
    let t = match ins.take(0) {
        Some(t) => t,
        None => ins.req(0)?.clone(),
    };
    if size::checked_numel(&shape)? != t.numel() {
        return Err(KernelError::shape(format!(
            "cannot reshape {:?} to {:?}",
            t.shape(),
            shape
        )));
    }
    Ok(vec![t.reshaped(shape)?])
}

pub fn identity(ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let s = ins.req(0)?.shape().to_vec();
    relabel(ins, s)
}

pub fn reshape(ins: &mut Inputs<'_>, allowzero: bool) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let spec = ins.req(1)?.to_i64_vec();
    let out = rs::reshape_dims(x.shape(), &spec, allowzero)?;
    relabel(ins, out)
}

pub fn flatten(ins: &mut Inputs<'_>, axis: i64) -> KernelResult<Vec<HostTensor>> {
    let s = ins.req(0)?.shape().to_vec();
    let dims = rs::flatten_dims(&s, axis)?;
    relabel(ins, dims.to_vec())
}

pub fn squeeze(ins: &mut Inputs<'_>, attr_axes: Option<&[i64]>) -> KernelResult<Vec<HostTensor>> {
    let s = ins.req(0)?.shape().to_vec();
    let axes: Option<Vec<i64>> = match ins.get(1) {
        Some(a) => Some(a.to_i64_vec()),
        None => attr_axes.map(|a| a.to_vec()),
    };
    let out = rs::squeeze_dims(&s, axes.as_deref())?;
    relabel(ins, out)
}

pub fn unsqueeze(ins: &mut Inputs<'_>, attr_axes: Option<&[i64]>) -> KernelResult<Vec<HostTensor>> {
    let s = ins.req(0)?.shape().to_vec();
    let axes = match ins.get(1) {
        Some(a) => a.to_i64_vec(),
        None => attr_axes
            .map(|a| a.to_vec())
            .ok_or(KernelError::invalid("Unsqueeze needs axes"))?,
    };
    let out = rs::unsqueeze_dims(&s, &axes)?;
    relabel(ins, out)
}

/// Copies a strided view of `x` (element strides per output dim, starting at `base`).
fn gather_strided<T: Elem>(
    cx: &mut ExecCx<'_>,
    x: &[T],
    base: usize,
    out_shape: &[usize],
    st: Vec<usize>,
) -> KernelResult<Vec<T>> {
    let walk = Walk::from_strides(out_shape, &[st]);
    let s = walk.inner_strides[0];
    let mut out = cx.pool.alloc::<T>(numel(out_shape))?;
    fill_runs(cx, &walk, &mut out, |o, offs| {
        let src = &x[base + offs[0]..];
        if s == 1 {
            o.copy_from_slice(&src[..o.len()]);
        } else {
            for (i, o) in o.iter_mut().enumerate() {
                *o = src[i * s];
            }
        }
    });
    Ok(out)
}

fn transpose_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    perm: &[usize],
) -> KernelResult<HostTensor> {
    let xs = strides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let out = gather_strided(
        cx,
        x.data::<T>().ok_or(KernelError::dtype("dtype"))?,
        0,
        &shape,
        st,
    )?;
    HostTensor::make(shape, T::wrap(out))
}

pub fn transpose(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    perm: Option<&[i64]>,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let r = x.rank();
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&a| norm_axis(a, r))
            .collect::<KernelResult<_>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort_unstable();
    if seen != (0..r).collect::<Vec<_>>() {
        return Err(KernelError::shape(format!(
            "perm {perm:?} is not a permutation of rank {r}"
        )));
    }
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => transpose_typed::<T>(cx, x, &perm), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

/// Expands `t` to `shape` (which `t` broadcasts to) as a contiguous vector.
pub fn expand_to<T: Elem>(
    cx: &mut ExecCx<'_>,
    t: &HostTensor,
    shape: &[usize],
) -> KernelResult<Vec<T>> {
    let x = t.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let walk = Walk::new(shape, &[t.shape()]);
    let s = walk.inner_strides[0];
    let mut out = cx.pool.alloc::<T>(size::checked_numel(shape)?)?;
    fill_runs(cx, &walk, &mut out, |o, offs| {
        if s == 1 {
            o.copy_from_slice(&x[offs[0]..offs[0] + o.len()]);
        } else {
            o.fill(x[offs[0]]);
        }
    });
    Ok(out)
}

pub fn expand(cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let target = dims_from(&ins.req(1)?.to_i64_vec(), "Expand")?;
    let shape = broadcast_shapes(&[x.shape(), &target])?;
    let d = x.dtype();
    let v = crate::with_dtype!(d, T => T::wrap(expand_to::<T>(cx, x, &shape)?), _ => return Err(KernelError::dtype(format!("not defined for {d}"))));
    Ok(vec![HostTensor::make(shape, v)?])
}

pub fn tile(cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let reps = dims_from(&ins.req(1)?.to_i64_vec(), "Tile")?;
    if reps.len() != x.rank() {
        return Err(KernelError::shape(format!(
            "repeats {reps:?} do not match rank {}",
            x.rank()
        )));
    }
    // out[r0, i0, r1, i1, ...] viewed with the repeats as broadcast dims, then merged.
    let mut view = Vec::new();
    let mut st = Vec::new();
    let xs = strides(x.shape());
    for (i, &n) in x.shape().iter().enumerate() {
        view.push(reps[i]);
        st.push(0);
        view.push(n);
        st.push(xs[i]);
    }
    let shape = x
        .shape()
        .iter()
        .zip(&reps)
        .map(|(a, b)| a.checked_mul(*b))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            KernelError::size(format!("tiling {:?} by {reps:?} overflows", x.shape()))
        })?;
    size::checked_numel(&shape)?;
    let d = x.dtype();
    let v = crate::with_dtype!(d, T => T::wrap(gather_strided::<T>(cx, x.data::<T>().ok_or(KernelError::dtype("dtype"))?, 0, &view, st)?), _ => return Err(KernelError::dtype(format!("not defined for {d}"))));
    Ok(vec![HostTensor::make(shape, v)?])
}

fn slice_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    spec: &[SliceAxis],
) -> KernelResult<HostTensor> {
    let xs = strides(x.shape());
    let shape = plan_dims(spec);
    let xd = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    if numel(&shape) == 0 {
        return HostTensor::make(shape, T::wrap(Vec::new()));
    }
    if spec.iter().all(|s| s.step > 0) {
        let base: usize = spec
            .iter()
            .zip(&xs)
            .map(|(s, st)| s.start as usize * st)
            .sum();
        let st: Vec<usize> = spec
            .iter()
            .zip(&xs)
            .map(|(s, st)| s.step as usize * st)
            .collect();
        let out = gather_strided(cx, xd, base, &shape, st)?;
        return HostTensor::make(shape, T::wrap(out));
    }
    // Negative steps: a plain index loop.
    let n = numel(&shape);
    let os = strides(&shape);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut off: i64 = 0;
        for d in 0..shape.len() {
            let idx = (i / os[d] % shape[d]) as i64;
            off += (spec[d].start + idx * spec[d].step) * xs[d] as i64;
        }
        out.push(xd[off as usize]);
    }
    HostTensor::make(shape, T::wrap(out))
}

pub fn slice(cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let starts = ins.req(1)?.to_i64_vec();
    let ends = ins.req(2)?.to_i64_vec();
    let axes = ins.get(3).map(|a| a.to_i64_vec());
    let steps = ins.get(4).map(|s| s.to_i64_vec());
    let spec = slice_plan(x.shape(), &starts, &ends, axes.as_deref(), steps.as_deref())?;
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => slice_typed::<T>(cx, x, &spec), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

fn concat_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    xs: &[&HostTensor],
    axis: usize,
    shape: Vec<usize>,
) -> KernelResult<HostTensor> {
    let mut out = cx.pool.alloc::<T>(numel(&shape))?;
    let parts: Vec<(&[T], &[usize])> = xs
        .iter()
        .map(|x| Ok((x.data::<T>().ok_or(KernelError::dtype("dtype"))?, x.shape())))
        .collect::<KernelResult<_>>()?;
    movement::concat_into(&parts, axis, &mut out);
    HostTensor::make(shape, T::wrap(out))
}

pub fn concat(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
) -> KernelResult<Vec<HostTensor>> {
    let xs: Vec<&HostTensor> = (0..ins.len()).filter_map(|i| ins.get(i)).collect();
    let first = xs
        .first()
        .ok_or(KernelError::invalid("Concat needs operands"))?;
    let a = norm_axis(axis, first.rank())?;
    if let Some(x) = xs.iter().find(|x| x.dtype() != first.dtype()) {
        return Err(KernelError::dtype(format!(
            "cannot concatenate {:?} {} with {:?} {} on axis {a}",
            first.shape(),
            first.dtype(),
            x.shape(),
            x.dtype()
        )));
    }
    let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
    let shape = movement::concat_dims(&shapes, a)?;
    let d = first.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => concat_typed::<T>(cx, &xs, a, shape), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

fn split_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    axis: usize,
    sizes: &[usize],
) -> KernelResult<Vec<HostTensor>> {
    let xd = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let (outer, dim, inner) = size::split_at_axis(x.shape(), axis)?;
    let row = dim * inner;
    let mut start = 0;
    let mut res = Vec::with_capacity(sizes.len());
    for &s in sizes {
        let n = s * inner;
        let mut out = cx.pool.alloc::<T>(outer * n)?;
        for o in 0..outer {
            out[o * n..(o + 1) * n].copy_from_slice(&xd[o * row + start..o * row + start + n]);
        }
        let mut shape = x.shape().to_vec();
        shape[axis] = s;
        res.push(HostTensor::make(shape, T::wrap(out))?);
        start += n;
    }
    Ok(res)
}

pub fn split(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    attr_split: Option<&[i64]>,
    n_out: usize,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let a = norm_axis(axis, x.rank())?;
    let dim = x.shape()[a];
    let sizes: Vec<usize> = match (ins.get(1), attr_split) {
        (Some(s), _) => dims_from(&s.to_i64_vec(), "Split")?,
        (None, Some(s)) => dims_from(s, "Split")?,
        (None, None) => {
            // Equal parts; the last one smaller when the dim does not divide (opset 18).
            let k = n_out.max(1);
            let part = dim.div_ceil(k);
            (0..k)
                .map(|i| part.min(dim.saturating_sub(i * part)))
                .collect()
        }
    };
    if sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(dim) {
        return Err(KernelError::shape(format!(
            "split sizes {sizes:?} do not add up to dim {dim}"
        )));
    }
    let d = x.dtype();
    crate::with_dtype!(d, T => split_typed::<T>(cx, x, a, &sizes), _ => Err(KernelError::dtype(format!("not defined for {d}"))))
}

fn gather_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    idx: &[i64],
    idx_shape: &[usize],
    axis: usize,
) -> KernelResult<HostTensor> {
    let xd = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let shape = movement::gather_dims(x.shape(), idx_shape, axis);
    let mut out = cx.pool.alloc::<T>(size::checked_numel(&shape)?)?;
    movement::gather_into(xd, x.shape(), idx, axis, &mut out)?;
    HostTensor::make(shape, T::wrap(out))
}

pub fn gather(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let ind = ins.req(1)?;
    if !(ind.dtype().is_int()) {
        return Err(KernelError::dtype(format!(
            "indices must be integers, got {}",
            ind.dtype()
        )));
    }
    let a = norm_axis(axis, x.rank())?;
    let idx = ind.to_i64_vec();
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => gather_typed::<T>(cx, x, &idx, ind.shape(), a), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

pub fn shape_of(
    ins: &mut Inputs<'_>,
    start: Option<i64>,
    end: Option<i64>,
) -> KernelResult<Vec<HostTensor>> {
    let s = size::dims_to_i64(ins.req(0)?.shape())?;
    let v = s[axis::shape_range(s.len(), start, end)].to_vec();
    Ok(vec![HostTensor::make(vec![v.len()], i64::wrap(v))?])
}

pub fn size_of(ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    Ok(vec![HostTensor::scalar(ins.req(0)?.numel() as i64)])
}

pub fn range(ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let (s, l, d) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    let dt = s.dtype();
    let scalar = || KernelError::shape("Range operands must be scalars");
    if dt.is_int() {
        let g = |t: &HostTensor| t.to_i64_vec().first().copied().ok_or_else(scalar);
        let (start, limit, delta) = (g(s)?, g(l)?, g(d)?);
        let n = movement::range_len_int(start, limit, delta)?;
        let t = HostTensor::make(vec![n], i64::wrap(movement::range_values(start, delta, n)))?;
        let mut pool = crate::cpu::pool::BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        return Ok(vec![super::cast::cast(&mut cx, &t, dt)?]);
    }
    let f = |t: &HostTensor| t.to_f64_vec().first().copied().ok_or_else(scalar);
    let (start, limit, delta) = (f(s)?, f(l)?, f(d)?);
    let n = movement::range_len_float(start, limit, delta)?;
    let t = match dt {
        DType::F32 => HostTensor::make(
            vec![n],
            f32::wrap(movement::range_values(start as f32, delta as f32, n)),
        )?,
        DType::F64 => {
            HostTensor::make(vec![n], f64::wrap(movement::range_values(start, delta, n)))?
        }
        d => return Err(KernelError::dtype(format!("Range is not defined for {d}"))),
    };
    Ok(vec![t])
}

pub fn constant_of_shape(
    ins: &mut Inputs<'_>,
    value: Option<&HostTensor>,
) -> KernelResult<Vec<HostTensor>> {
    let shape = dims_from(&ins.req(0)?.to_i64_vec(), "ConstantOfShape")?;
    let t = match value {
        None => HostTensor::make(
            shape.clone(),
            f32::wrap(movement::constant_of_shape(&shape, &[0.0f32])?),
        )?,
        Some(v) => {
            let d = v.dtype();
            crate::with_dtype!(d, T => {
                let x = v.data::<T>().ok_or(KernelError::dtype("dtype"))?;
                HostTensor::make(shape.clone(), T::wrap(movement::constant_of_shape(&shape, x)?))?
            }, _ => return Err(KernelError::dtype(format!("not defined for {d}"))))
        }
    };
    Ok(vec![t])
}

fn trilu_typed<T: Elem>(x: &HostTensor, upper: bool, k: i64) -> KernelResult<HostTensor> {
    let r = x.rank();
    if r < 2 {
        return Err(KernelError::shape("Trilu needs rank ≥ 2"));
    }
    let (m, n) = (x.shape()[r - 2], x.shape()[r - 1]);
    let mut v = x.data::<T>().ok_or(KernelError::dtype("dtype"))?.to_vec();
    for (e, o) in v.iter_mut().enumerate() {
        let i = (e / n % m) as i64;
        let j = (e % n) as i64;
        let keep = if upper { j - i >= k } else { j - i <= k };
        if !keep {
            *o = T::default();
        }
    }
    HostTensor::make(x.shape().to_vec(), T::wrap(v))
}

pub fn trilu(ins: &mut Inputs<'_>, upper: bool) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let k = ins
        .get(1)
        .and_then(|t| t.to_i64_vec().first().copied())
        .unwrap_or(0);
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => trilu_typed::<T>(x, upper, k), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    fn iota(shape: &[usize]) -> HostTensor {
        HostTensor::from_vec(
            shape.to_vec(),
            (0..numel(shape)).map(|i| i as f32).collect(),
        )
        .expect("t")
    }

    #[test]
    fn transpose_slice_concat_split_gather() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = iota(&[2, 3]);
        let t = transpose(&mut cx, &mut Inputs::borrowed(&[Some(&x)]), None).expect("t");
        assert_eq!(t[0].as_f32().expect("f"), &[0., 3., 1., 4., 2., 5.]);
        let i = |v: &[i64]| HostTensor::from_vec(vec![v.len()], v.to_vec()).expect("i");
        let (st, en, ax, sp) = (i(&[2]), i(&[-100]), i(&[1]), i(&[-2]));
        let s = slice(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x), Some(&st), Some(&en), Some(&ax), Some(&sp)]),
        )
        .expect("slice");
        assert_eq!(s[0].shape(), &[2, 2]);
        assert_eq!(s[0].as_f32().expect("f"), &[2., 0., 5., 3.]);
        let c = concat(&mut cx, &mut Inputs::borrowed(&[Some(&x), Some(&x)]), -1).expect("concat");
        assert_eq!(c[0].shape(), &[2, 6]);
        assert_eq!(&c[0].as_f32().expect("f")[..6], &[0., 1., 2., 0., 1., 2.]);
        let sizes = i(&[1, 2]);
        let p = split(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x), Some(&sizes)]),
            1,
            None,
            2,
        )
        .expect("split");
        assert_eq!(p[1].as_f32().expect("f"), &[1., 2., 4., 5.]);
        let idx = HostTensor::from_vec(vec![2], vec![-1i64, 0]).expect("idx");
        let g = gather(&mut cx, &mut Inputs::borrowed(&[Some(&x), Some(&idx)]), 0).expect("gather");
        assert_eq!(g[0].as_f32().expect("f"), &[3., 4., 5., 0., 1., 2.]);
        let tr = trilu(&mut Inputs::borrowed(&[Some(&iota(&[3, 3]))]), false).expect("trilu");
        assert_eq!(
            tr[0].as_f32().expect("f"),
            &[0., 0., 0., 3., 4., 0., 6., 7., 8.]
        );
        let shp = i(&[2, 2, 3]);
        let e = expand(&mut cx, &mut Inputs::borrowed(&[Some(&x), Some(&shp)])).expect("expand");
        assert_eq!(e[0].shape(), &[2, 2, 3]);
        assert_eq!(&e[0].as_f32().expect("f")[6..], &[0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn reshape_infers_and_copies_dims() {
        let x = iota(&[2, 3, 4]);
        let s = HostTensor::from_vec(vec![3], vec![0i64, -1, 2]).expect("s");
        let r = reshape(&mut Inputs::borrowed(&[Some(&x), Some(&s)]), false).expect("reshape");
        assert_eq!(r[0].shape(), &[2, 6, 2]);
        let bad = HostTensor::from_vec(vec![2], vec![5i64, -1]).expect("s");
        assert!(reshape(&mut Inputs::borrowed(&[Some(&x), Some(&bad)]), false).is_err());
    }
}
