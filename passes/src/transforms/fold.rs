//! Constant-folding kernels used by `canonicalize` (this file is not a pass).
//!
//! Arithmetic follows the numerics policy: floats are decoded to f64, computed once and encoded
//! once into the result dtype (for one IEEE operation that equals computing in the narrow type);
//! integers compute in i64 with wrapping, then truncate to the result width like a C cast, which
//! is what ONNX runtimes do. Data-movement ops (Gather, Concat, Reshape, Slice, …) copy element
//! bytes and work for every dtype with a whole number of bytes per element. Results whose dtype
//! the IR cannot encode (f16, bf16, fp8) are not folded. Nothing here allocates more than the
//! byte budget: output sizes are checked before computing.

use ortho_ir::numeric::{encode_f64, encode_i64};
use ortho_ir::tensor::numel;
use ortho_ir::{DType, Module, Op, TensorData, Type};

/// One operand as folding sees it: its data when it is a constant, and its type.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: Option<&'a TensorData>,
    pub ty: &'a Type,
}

/// The outcome of trying to fold one node.
pub(crate) enum Folded {
    Tensor(TensorData),
    /// Foldable, but an operand or the result is larger than the budget.
    OverBudget,
    /// Not foldable (an operand is not constant, an op or dtype not handled, an invalid input).
    No,
}

enum Why {
    No,
    OverBudget,
}

type R = Result<TensorData, Why>;

/// Folds `op` over `ins` (one entry per operand slot, `None` for an omitted optional operand).
pub(crate) fn fold(m: &Module, op: &Op, ins: &[Option<Operand<'_>>], budget: u64) -> Folded {
    match fold_op(m, op, ins, budget) {
        Ok(t) => Folded::Tensor(t),
        Err(Why::OverBudget) => Folded::OverBudget,
        Err(Why::No) => Folded::No,
    }
}

fn fold_op(m: &Module, op: &Op, ins: &[Option<Operand<'_>>], budget: u64) -> R {
    // Shape needs only the operand's type, not its data.
    if let Op::Shape(a) = op {
        let x = ins.first().copied().flatten().ok_or(Why::No)?;
        let dims = match x.data {
            Some(d) => d.dims.clone(),
            None => fixed_dims(x.ty).ok_or(Why::No)?,
        };
        return shape(&dims, a.start, a.end, budget);
    }
    let mut data: Vec<Option<&TensorData>> = Vec::with_capacity(ins.len());
    for o in ins {
        match o {
            None => data.push(None),
            Some(o) => {
                let d = o.data.ok_or(Why::No)?;
                if d.byte_len() > budget {
                    return Err(Why::OverBudget);
                }
                data.push(Some(d));
            }
        }
    }
    let arg = |i: usize| data.get(i).copied().flatten().ok_or(Why::No);
    let opt_ints = |i: usize| data.get(i).copied().flatten().map(ints).transpose();
    match op {
        Op::Add => binary(Bin::Add, arg(0)?, arg(1)?, budget),
        Op::Sub => binary(Bin::Sub, arg(0)?, arg(1)?, budget),
        Op::Mul => binary(Bin::Mul, arg(0)?, arg(1)?, budget),
        Op::Div => binary(Bin::Div, arg(0)?, arg(1)?, budget),
        Op::Equal => binary(Bin::Equal, arg(0)?, arg(1)?, budget),
        Op::Neg => unary(false, arg(0)?),
        Op::Sqrt => unary(true, arg(0)?),
        Op::Cast(a) => cast(arg(0)?, dtype_from_onnx(a.to.ok_or(Why::No)?), budget),
        Op::Gather(a) => gather(
            arg(0)?,
            &ints(arg(1)?)?,
            arg(1)?.dims.as_slice(),
            a.axis.unwrap_or(0),
            budget,
        ),
        Op::Concat(a) => {
            let xs: Vec<&TensorData> = (0..data.len()).map(arg).collect::<Result<_, _>>()?;
            concat(&xs, a.axis.ok_or(Why::No)?, budget)
        }
        Op::Unsqueeze => unsqueeze(arg(0)?, &ints(arg(1)?)?),
        Op::Squeeze => squeeze(arg(0)?, opt_ints(1)?.as_deref()),
        Op::Reshape(a) => {
            let x = arg(0)?;
            let dims =
                reshape_dims(&x.dims, &ints(arg(1)?)?, a.allowzero == Some(1)).ok_or(Why::No)?;
            Ok(with_dims(x, dims))
        }
        Op::Range => range(arg(0)?, arg(1)?, arg(2)?, budget),
        Op::Where => where_(arg(0)?, arg(1)?, arg(2)?, budget),
        Op::ConstantOfShape(a) => {
            constant_of_shape(&ints(arg(0)?)?, a.value.map(|t| m.tensor(t)), budget)
        }
        Op::Slice => slice(
            arg(0)?,
            &ints(arg(1)?)?,
            &ints(arg(2)?)?,
            opt_ints(3)?.as_deref(),
            opt_ints(4)?.as_deref(),
            budget,
        ),
        _ => Err(Why::No),
    }
}

/// The dtype a `Cast.to` code names.
pub(crate) fn dtype_from_onnx(code: i64) -> DType {
    DType::from_code(code)
}

fn elem_size(d: DType) -> Option<usize> {
    match d {
        DType::Str => None,
        d => d.bits().filter(|b| b % 8 == 0).map(|b| (b / 8) as usize),
    }
}

/// Errors unless `dims` of `dtype` fit in the budget; returns the element count.
fn check(dtype: DType, dims: &[i64], budget: u64) -> Result<usize, Why> {
    let n = numel(dims).ok_or(Why::No)?;
    let bytes = dtype.bytes_for(n).ok_or(Why::No)?;
    if bytes > budget {
        return Err(Why::OverBudget);
    }
    Ok(n as usize)
}

/// The element bytes and element size of a constant, checked against its dims.
fn raw(t: &TensorData) -> Result<(&[u8], usize), Why> {
    let es = elem_size(t.dtype).ok_or(Why::No)?;
    let b = t.bytes().ok_or(Why::No)?;
    let n = numel(&t.dims).ok_or(Why::No)? as usize;
    if b.len() != n * es {
        return Err(Why::No);
    }
    Ok((b, es))
}

/// A shape-like operand (i64 or i32 elements).
fn ints(t: &TensorData) -> Result<Vec<i64>, Why> {
    match t.dtype {
        DType::I64 | DType::I32 => t.to_i64_vec().ok_or(Why::No),
        _ => Err(Why::No),
    }
}

fn with_dims(x: &TensorData, dims: Vec<i64>) -> TensorData {
    let bytes = x.bytes().map(<[u8]>::to_vec).unwrap_or_default();
    TensorData::from_bytes(x.dtype, dims, bytes)
}

/// Visits every multi-index of `dims` in row-major order.
fn for_each_index(dims: &[i64], mut f: impl FnMut(&[i64])) {
    if dims.iter().any(|&d| d <= 0) {
        return;
    }
    let mut idx = vec![0i64; dims.len()];
    loop {
        f(&idx);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

fn strides(dims: &[i64]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// The multidirectional (numpy) broadcast of `shapes`, `None` when they are incompatible.
pub(crate) fn broadcast(shapes: &[&[i64]]) -> Option<Vec<i64>> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1i64; r];
    for s in shapes {
        for (i, &d) in s.iter().rev().enumerate() {
            let o = &mut out[r - 1 - i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// For each element of `out` (row-major), the linear index of the element of an operand with
/// dims `dims` that broadcasting reads.
fn broadcast_index(dims: &[i64], out: &[i64]) -> Vec<usize> {
    let st = strides(dims);
    let shift = out.len() - dims.len();
    let mut v = Vec::new();
    for_each_index(out, |idx| {
        let mut off = 0;
        for (k, &d) in dims.iter().enumerate() {
            if d != 1 {
                off += idx[k + shift] * st[k];
            }
        }
        v.push(off as usize);
    });
    v
}

enum Num {
    F(Vec<f64>),
    I(Vec<i64>),
}

fn decode(t: &TensorData) -> Result<Num, Why> {
    if t.dtype.is_float() {
        t.to_f64_vec().map(Num::F).ok_or(Why::No)
    } else if t.dtype.is_int() || t.dtype == DType::Bool {
        t.to_i64_vec().map(Num::I).ok_or(Why::No)
    } else {
        Err(Why::No)
    }
}

fn encode(dtype: DType, v: &Num) -> Result<Vec<u8>, Why> {
    match v {
        Num::F(x) if matches!(dtype, DType::F32 | DType::F64) => {
            encode_f64(dtype, x).ok_or(Why::No)
        }
        Num::I(x) if dtype.is_int() || dtype == DType::Bool => encode_i64(dtype, x).ok_or(Why::No),
        _ => Err(Why::No),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Equal,
}

fn binary(op: Bin, a: &TensorData, b: &TensorData, budget: u64) -> R {
    if a.dtype != b.dtype {
        return Err(Why::No);
    }
    let dims = broadcast(&[&a.dims, &b.dims]).ok_or(Why::No)?;
    let out_dtype = if op == Bin::Equal {
        DType::Bool
    } else {
        a.dtype
    };
    check(out_dtype, &dims, budget)?;
    let (ia, ib) = (
        broadcast_index(&a.dims, &dims),
        broadcast_index(&b.dims, &dims),
    );
    let out = match (decode(a)?, decode(b)?) {
        (Num::F(x), Num::F(y)) => {
            let pairs = ia.iter().zip(&ib).map(|(&i, &j)| (x[i], y[j]));
            match op {
                Bin::Add => Num::F(pairs.map(|(p, q)| p + q).collect()),
                Bin::Sub => Num::F(pairs.map(|(p, q)| p - q).collect()),
                Bin::Mul => Num::F(pairs.map(|(p, q)| p * q).collect()),
                Bin::Div => Num::F(pairs.map(|(p, q)| p / q).collect()),
                Bin::Equal => Num::I(pairs.map(|(p, q)| i64::from(p == q)).collect()),
            }
        }
        (Num::I(x), Num::I(y)) => {
            let pairs: Vec<(i64, i64)> = ia.iter().zip(&ib).map(|(&i, &j)| (x[i], y[j])).collect();
            match op {
                Bin::Add => Num::I(pairs.iter().map(|(p, q)| p.wrapping_add(*q)).collect()),
                Bin::Sub => Num::I(pairs.iter().map(|(p, q)| p.wrapping_sub(*q)).collect()),
                Bin::Mul => Num::I(pairs.iter().map(|(p, q)| p.wrapping_mul(*q)).collect()),
                Bin::Div => {
                    // Division by zero is undefined for integers, and u64 values above i64::MAX
                    // decode negative, which would divide wrongly: leave both to the runtime.
                    if pairs
                        .iter()
                        .any(|(p, q)| *q == 0 || (a.dtype == DType::U64 && (*p < 0 || *q < 0)))
                    {
                        return Err(Why::No);
                    }
                    Num::I(pairs.iter().map(|(p, q)| p.wrapping_div(*q)).collect())
                }
                Bin::Equal => Num::I(pairs.iter().map(|(p, q)| i64::from(p == q)).collect()),
            }
        }
        _ => return Err(Why::No),
    };
    Ok(TensorData::from_bytes(
        out_dtype,
        dims,
        encode(out_dtype, &out)?,
    ))
}

fn unary(sqrt: bool, x: &TensorData) -> R {
    let out = match (decode(x)?, sqrt) {
        (Num::F(v), false) => Num::F(v.iter().map(|p| -p).collect()),
        (Num::F(v), true) => Num::F(v.iter().map(|p| p.sqrt()).collect()),
        (Num::I(v), false) => Num::I(v.iter().map(|p| p.wrapping_neg()).collect()),
        (Num::I(_), true) => return Err(Why::No),
    };
    Ok(TensorData::from_bytes(
        x.dtype,
        x.dims.clone(),
        encode(x.dtype, &out)?,
    ))
}

/// `[lo, hi)` of an integer dtype as f64, for checking float → int casts. Both bounds are
/// powers of two (or zero), so they are exact in f64 even for 64-bit types.
fn int_range(d: DType) -> Option<(f64, f64)> {
    let bits = d.bits()? as i32;
    match d {
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => {
            Some((-(2f64.powi(bits - 1)), 2f64.powi(bits - 1)))
        }
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => Some((0.0, 2f64.powi(bits))),
        _ => None,
    }
}

fn cast(x: &TensorData, to: DType, budget: u64) -> R {
    check(to, &x.dims, budget)?;
    let bytes = match (decode(x)?, to) {
        (Num::F(v), DType::F32 | DType::F64) => encode_f64(to, &v).ok_or(Why::No)?,
        (Num::F(v), DType::Bool) => encode_i64(
            to,
            &v.iter().map(|p| i64::from(*p != 0.0)).collect::<Vec<_>>(),
        )
        .ok_or(Why::No)?,
        (Num::F(v), t) => {
            // Out-of-range and NaN conversions are implementation-defined: do not fold them.
            let (lo, hi) = int_range(t).ok_or(Why::No)?;
            let mut out = Vec::with_capacity(v.len());
            for p in v {
                let q = p.trunc();
                if !(q >= lo && q < hi) {
                    return Err(Why::No);
                }
                out.push(if t == DType::U64 {
                    q as u64 as i64
                } else {
                    q as i64
                });
            }
            encode_i64(t, &out).ok_or(Why::No)?
        }
        (Num::I(v), DType::F32 | DType::F64) => {
            if x.dtype == DType::U64 && v.iter().any(|p| *p < 0) {
                return Err(Why::No);
            }
            // Straight from the integer, so the value is rounded once.
            if to == DType::F32 {
                v.iter().flat_map(|p| (*p as f32).to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|p| (*p as f64).to_le_bytes()).collect()
            }
        }
        (Num::I(v), t) if t.is_int() || t == DType::Bool => encode_i64(t, &v).ok_or(Why::No)?,
        _ => return Err(Why::No),
    };
    Ok(TensorData::from_bytes(to, x.dims.clone(), bytes))
}

/// The dims of a tensor type whose shape is fully fixed.
pub(crate) fn fixed_dims(ty: &Type) -> Option<Vec<i64>> {
    ty.as_tensor()?
        .shape
        .as_ref()?
        .iter()
        .map(|d| d.fixed())
        .collect()
}

fn shape(dims: &[i64], start: Option<i64>, end: Option<i64>, budget: u64) -> R {
    let r = dims.len() as i64;
    let norm = |x: i64| {
        let x = if x < 0 { x + r } else { x };
        x.clamp(0, r) as usize
    };
    let s = norm(start.unwrap_or(0));
    let e = norm(end.unwrap_or(r)).max(s);
    let v = &dims[s..e];
    check(DType::I64, &[v.len() as i64], budget)?;
    Ok(TensorData::from_i64(vec![v.len() as i64], v))
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize, Why> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(Why::No)
    }
}

fn gather(x: &TensorData, idx: &[i64], idx_dims: &[i64], axis: i64, budget: u64) -> R {
    let (b, es) = raw(x)?;
    let a = norm_axis(axis, x.dims.len())?;
    let d = x.dims[a];
    let mut dims = x.dims[..a].to_vec();
    dims.extend_from_slice(idx_dims);
    dims.extend_from_slice(&x.dims[a + 1..]);
    check(x.dtype, &dims, budget)?;
    let outer = numel(&x.dims[..a]).ok_or(Why::No)? as usize;
    let inner = numel(&x.dims[a + 1..]).ok_or(Why::No)? as usize * es;
    let mut out = Vec::new();
    for o in 0..outer {
        for &i in idx {
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(Why::No);
            }
            let at = (o * d as usize + i as usize) * inner;
            out.extend_from_slice(&b[at..at + inner]);
        }
    }
    Ok(TensorData::from_bytes(x.dtype, dims, out))
}

fn concat(xs: &[&TensorData], axis: i64, budget: u64) -> R {
    let first = xs.first().ok_or(Why::No)?;
    let a = norm_axis(axis, first.dims.len())?;
    let mut dims = first.dims.clone();
    dims[a] = 0;
    for x in xs {
        let same_rest =
            x.dims.len() == dims.len() && (0..dims.len()).all(|k| k == a || x.dims[k] == dims[k]);
        if x.dtype != first.dtype || !same_rest {
            return Err(Why::No);
        }
        dims[a] += x.dims[a];
    }
    check(first.dtype, &dims, budget)?;
    let outer = numel(&dims[..a]).ok_or(Why::No)? as usize;
    let mut out = Vec::new();
    for o in 0..outer {
        for x in xs {
            let (b, es) = raw(x)?;
            let chunk = numel(&x.dims[a..]).ok_or(Why::No)? as usize * es;
            out.extend_from_slice(&b[o * chunk..(o + 1) * chunk]);
        }
    }
    Ok(TensorData::from_bytes(first.dtype, dims, out))
}

fn unsqueeze(x: &TensorData, axes: &[i64]) -> R {
    raw(x)?;
    let r = x.dims.len() + axes.len();
    let mut ones = vec![false; r];
    for &ax in axes {
        let a = norm_axis(ax, r)?;
        if std::mem::replace(&mut ones[a], true) {
            return Err(Why::No);
        }
    }
    let mut rest = x.dims.iter();
    let dims = ones
        .iter()
        .map(|&one| if one { Some(1) } else { rest.next().copied() })
        .collect::<Option<Vec<_>>>()
        .ok_or(Why::No)?;
    Ok(with_dims(x, dims))
}

fn squeeze(x: &TensorData, axes: Option<&[i64]>) -> R {
    raw(x)?;
    let r = x.dims.len();
    let drop: Vec<usize> = match axes {
        None => (0..r).filter(|&k| x.dims[k] == 1).collect(),
        Some(axes) => axes
            .iter()
            .map(|&a| norm_axis(a, r))
            .collect::<Result<_, _>>()?,
    };
    if drop.iter().any(|&k| x.dims[k] != 1) {
        return Err(Why::No);
    }
    let dims = (0..r)
        .filter(|k| !drop.contains(k))
        .map(|k| x.dims[k])
        .collect();
    Ok(with_dims(x, dims))
}

/// The dims `Reshape` produces from `input` and the shape operand `shape` (0 copies the input
/// dim unless `allowzero`, one -1 is inferred); `None` when the shape is invalid.
pub(crate) fn reshape_dims(input: &[i64], shape: &[i64], allowzero: bool) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 if !allowzero => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            s if s >= 0 => out.push(s),
            _ => return None,
        }
    }
    let total = numel(input)?;
    if let Some(i) = infer {
        let rest = numel(&out)?;
        if rest == 0 || total % rest != 0 {
            return None;
        }
        out[i] = (total / rest) as i64;
    }
    (numel(&out)? == total).then_some(out)
}

fn range(start: &TensorData, limit: &TensorData, delta: &TensorData, budget: u64) -> R {
    let t = start.dtype;
    if limit.dtype != t
        || delta.dtype != t
        || [start, limit, delta].iter().any(|x| x.numel() != Some(1))
    {
        return Err(Why::No);
    }
    let es = elem_size(t).ok_or(Why::No)? as u64;
    let max_count = budget / es.max(1);
    let vals = match (decode(start)?, decode(limit)?, decode(delta)?) {
        (Num::F(s), Num::F(l), Num::F(d)) => {
            let n = ((l[0] - s[0]) / d[0]).ceil().max(0.0);
            if !n.is_finite() {
                return Err(Why::No);
            }
            if n > max_count as f64 {
                return Err(Why::OverBudget);
            }
            Num::F((0..n as u64).map(|i| s[0] + i as f64 * d[0]).collect())
        }
        (Num::I(s), Num::I(l), Num::I(d)) => {
            let (s, l, d) = (s[0] as i128, l[0] as i128, d[0] as i128);
            if d == 0 {
                return Err(Why::No);
            }
            let n = if d > 0 {
                (l - s + d - 1).div_euclid(d)
            } else {
                (s - l - d - 1).div_euclid(-d)
            }
            .max(0);
            if n > max_count as i128 {
                return Err(Why::OverBudget);
            }
            Num::I((0..n).map(|i| (s + i * d) as i64).collect())
        }
        _ => return Err(Why::No),
    };
    let n = match &vals {
        Num::F(v) => v.len(),
        Num::I(v) => v.len(),
    };
    Ok(TensorData::from_bytes(t, vec![n as i64], encode(t, &vals)?))
}

fn where_(cond: &TensorData, x: &TensorData, y: &TensorData, budget: u64) -> R {
    if cond.dtype != DType::Bool || x.dtype != y.dtype {
        return Err(Why::No);
    }
    let dims = broadcast(&[&cond.dims, &x.dims, &y.dims]).ok_or(Why::No)?;
    check(x.dtype, &dims, budget)?;
    let ((c, _), (xb, es), (yb, _)) = (raw(cond)?, raw(x)?, raw(y)?);
    let (ic, ix, iy) = (
        broadcast_index(&cond.dims, &dims),
        broadcast_index(&x.dims, &dims),
        broadcast_index(&y.dims, &dims),
    );
    let mut out = Vec::with_capacity(ic.len() * es);
    for k in 0..ic.len() {
        let (src, i) = if c[ic[k]] != 0 {
            (xb, ix[k])
        } else {
            (yb, iy[k])
        };
        out.extend_from_slice(&src[i * es..(i + 1) * es]);
    }
    Ok(TensorData::from_bytes(x.dtype, dims, out))
}

fn constant_of_shape(dims: &[i64], value: Option<&TensorData>, budget: u64) -> R {
    let zero = TensorData::from_f32(vec![1], &[0.0]);
    let v = value.unwrap_or(&zero);
    if v.numel() != Some(1) || dims.iter().any(|&d| d < 0) {
        return Err(Why::No);
    }
    let (b, _) = raw(v)?;
    let n = check(v.dtype, dims, budget)?;
    Ok(TensorData::from_bytes(v.dtype, dims.to_vec(), b.repeat(n)))
}

fn slice(
    x: &TensorData,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
    budget: u64,
) -> R {
    let (b, es) = raw(x)?;
    let r = x.dims.len();
    let k = starts.len();
    let default_axes: Vec<i64> = (0..k as i64).collect();
    let axes = axes.unwrap_or(&default_axes);
    let ones = vec![1i64; k];
    let steps = steps.unwrap_or(&ones);
    if ends.len() != k || axes.len() != k || steps.len() != k {
        return Err(Why::No);
    }
    let (mut start, mut step, mut dims) = (vec![0i64; r], vec![1i64; r], x.dims.clone());
    let mut seen = vec![false; r];
    for i in 0..k {
        let a = norm_axis(axes[i], r)?;
        let (d, st) = (x.dims[a], steps[i]);
        if std::mem::replace(&mut seen[a], true) || st == 0 {
            return Err(Why::No);
        }
        // i128: ends are often i64::MAX, and `end - start + step` must not overflow.
        let (d, stw) = (d as i128, st as i128);
        let adj = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
        let (s, e) = (adj(starts[i]), adj(ends[i]));
        let (s, count) = if d == 0 {
            (0, 0)
        } else if stw > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s, if e > s { (e - s + stw - 1) / stw } else { 0 })
        } else {
            let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
            (s, if s > e { (s - e - stw - 1) / -stw } else { 0 })
        };
        start[a] = s as i64;
        step[a] = st;
        dims[a] = count as i64;
    }
    check(x.dtype, &dims, budget)?;
    let st = strides(&x.dims);
    let mut out = Vec::new();
    for_each_index(&dims, |idx| {
        let off: i64 = (0..r).map(|a| (start[a] + idx[a] * step[a]) * st[a]).sum();
        let off = off as usize * es;
        out.extend_from_slice(&b[off..off + es]);
    });
    Ok(TensorData::from_bytes(x.dtype, dims, out))
}
