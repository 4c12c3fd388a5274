//! Constant evaluation of one node, used by `canonicalize` to fold constants (not a pass).
//!
//! The op rules (broadcasting, axes, slice clamping, reshape dims, Gather/Concat/Where/Slice/
//! Range/ConstantOfShape data movement) are `ortho_ir::semantics`, the same code the engine's
//! kernels run, so this folder and the engine's compile-time folding agree by construction.
//! This file only adapts constants (raw little-endian bytes) to those functions: elements are
//! viewed as opaque `[u8; N]` values, so data movement works for every dtype with a whole
//! number of bytes per element.
//!
//! Arithmetic follows the numerics policy: floats are decoded to f64, computed once and encoded
//! once into the result dtype (for one IEEE operation that equals computing in the narrow type);
//! integers compute in i64 with wrapping, then truncate to the result width like a C cast, which
//! is what ONNX runtimes do. Data-movement ops (Gather, Concat, Reshape, Slice, …) copy element
//! bytes and work for every dtype with a whole number of bytes per element. Results whose dtype
//! the IR cannot encode (f16, bf16, fp8) are not folded. Nothing here allocates more than the
//! byte budget: output sizes are checked before computing.

use ortho_ir::numeric::{encode_f64, encode_i64};
use ortho_ir::semantics::axis::{norm_axis, shape_range};
use ortho_ir::semantics::broadcast::{broadcast_index, broadcast_shapes};
use ortho_ir::semantics::cast as cast_rule;
use ortho_ir::semantics::size::{checked_bytes, checked_numel, dims_to_i64, dims_to_usize};
use ortho_ir::semantics::{movement, reshape, slice as sem_slice, SemError};
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
            a.axis(),
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
            let dims = reshape_dims(&x.dims, &ints(arg(1)?)?, a.allowzero() == 1).ok_or(Why::No)?;
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

/// Every semantics error means "leave this node to the runtime".
impl From<SemError> for Why {
    fn from(_: SemError) -> Why {
        Why::No
    }
}

/// Errors unless `dims` of `dtype` fit in the budget; returns the element count.
fn check(dtype: DType, dims: &[usize], budget: u64) -> Result<usize, Why> {
    let n = checked_numel(dims)?;
    let bytes = dtype.bytes_for(n as u64).ok_or(Why::No)?;
    if bytes > budget {
        return Err(Why::OverBudget);
    }
    Ok(n)
}

/// A constant's dims as `usize`.
fn udims(t: &TensorData) -> Result<Vec<usize>, Why> {
    Ok(dims_to_usize(&t.dims, "constant")?)
}

/// The element bytes and element size of a constant, checked against its dims.
fn raw(t: &TensorData) -> Result<(&[u8], usize), Why> {
    let es = elem_size(t.dtype).ok_or(Why::No)?;
    let b = t.bytes().ok_or(Why::No)?;
    let n = checked_numel(&udims(t)?)?;
    if b.len() != checked_bytes(n, es)? {
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

/// A constant of `dtype` with `dims` and element bytes `bytes`.
fn tensor(dtype: DType, dims: &[usize], bytes: Vec<u8>) -> R {
    Ok(TensorData::from_bytes(dtype, dims_to_i64(dims)?, bytes))
}

/// Raw bytes viewed as elements of `N` bytes (the caller checked the length).
fn elems<const N: usize>(b: &[u8]) -> Vec<[u8; N]> {
    b.chunks_exact(N)
        .map(|c| {
            let mut e = [0u8; N];
            e.copy_from_slice(c);
            e
        })
        .collect()
}

/// Elements back to raw bytes.
fn flat<const N: usize>(v: Vec<[u8; N]>) -> Vec<u8> {
    v.into_iter().flatten().collect()
}

/// Runs `$body` with `$n` bound to the element size `$es` as a constant, so that the generic
/// semantics functions see elements as `[u8; $n]`.
macro_rules! per_width {
    ($es:expr, |$n:ident| $body:expr) => {
        match $es {
            1 => {
                const $n: usize = 1;
                $body
            }
            2 => {
                const $n: usize = 2;
                $body
            }
            4 => {
                const $n: usize = 4;
                $body
            }
            8 => {
                const $n: usize = 8;
                $body
            }
            16 => {
                const $n: usize = 16;
                $body
            }
            _ => Err(Why::No),
        }
    };
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
    let (da, db) = (udims(a)?, udims(b)?);
    let dims = broadcast_shapes(&[&da, &db])?;
    let out_dtype = if op == Bin::Equal {
        DType::Bool
    } else {
        a.dtype
    };
    check(out_dtype, &dims, budget)?;
    let (ia, ib) = (broadcast_index(&da, &dims)?, broadcast_index(&db, &dims)?);
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
    tensor(out_dtype, &dims, encode(out_dtype, &out)?)
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

fn cast(x: &TensorData, to: DType, budget: u64) -> R {
    check(to, &udims(x)?, budget)?;
    let bytes = match (decode(x)?, to) {
        (Num::F(v), DType::F32 | DType::F64) => encode_f64(to, &v).ok_or(Why::No)?,
        (Num::F(v), DType::Bool) => encode_i64(
            to,
            &v.iter().map(|p| i64::from(*p != 0.0)).collect::<Vec<_>>(),
        )
        .ok_or(Why::No)?,
        (Num::F(v), t) => {
            // Out-of-range and NaN conversions are undefined: do not fold them.
            let out = v
                .iter()
                .map(|&p| cast_rule::float_to_int(p, t))
                .collect::<Option<Vec<i64>>>()
                .ok_or(Why::No)?;
            encode_i64(t, &out).ok_or(Why::No)?
        }
        (Num::I(v), DType::F32 | DType::F64) => {
            if v.iter().any(|&p| cast_rule::int_reads_negative(x.dtype, p)) {
                return Err(Why::No);
            }
            // Straight from the integer, so the value is rounded once.
            if to == DType::F32 {
                v.iter().flat_map(|p| (*p as f32).to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|p| (*p as f64).to_le_bytes()).collect()
            }
        }
        (Num::I(v), t) if cast_rule::int_like(t) => encode_i64(t, &v).ok_or(Why::No)?,
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
    let v = &dims[shape_range(dims.len(), start, end)];
    check(DType::I64, &[v.len()], budget)?;
    Ok(TensorData::from_i64(vec![v.len() as i64], v))
}

fn gather(x: &TensorData, idx: &[i64], idx_dims: &[i64], axis: i64, budget: u64) -> R {
    let (b, es) = raw(x)?;
    let dims = udims(x)?;
    let idx_dims = dims_to_usize(idx_dims, "indices")?;
    let a = norm_axis(axis, dims.len())?;
    let out_dims = movement::gather_dims(&dims, &idx_dims, a);
    check(x.dtype, &out_dims, budget)?;
    let bytes = per_width!(es, |N| {
        let (_, v) = movement::gather(&elems::<N>(b), &dims, idx, &idx_dims, a)?;
        Ok(flat(v))
    })?;
    tensor(x.dtype, &out_dims, bytes)
}

fn concat(xs: &[&TensorData], axis: i64, budget: u64) -> R {
    let first = xs.first().ok_or(Why::No)?;
    if xs.iter().any(|x| x.dtype != first.dtype) {
        return Err(Why::No);
    }
    let a = norm_axis(axis, first.dims.len())?;
    let shapes = xs.iter().map(|x| udims(x)).collect::<Result<Vec<_>, _>>()?;
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let dims = movement::concat_dims(&shape_refs, a)?;
    check(first.dtype, &dims, budget)?;
    let raws = xs.iter().map(|x| raw(x)).collect::<Result<Vec<_>, _>>()?;
    let es = raws.first().map_or(0, |r| r.1);
    let bytes = per_width!(es, |N| {
        let data: Vec<Vec<[u8; N]>> = raws.iter().map(|r| elems::<N>(r.0)).collect();
        let parts: Vec<(&[[u8; N]], &[usize])> = data
            .iter()
            .zip(&shape_refs)
            .map(|(d, s)| (d.as_slice(), *s))
            .collect();
        let (_, v) = movement::concat(&parts, a)?;
        Ok(flat(v))
    })?;
    tensor(first.dtype, &dims, bytes)
}

fn unsqueeze(x: &TensorData, axes: &[i64]) -> R {
    raw(x)?;
    let dims = reshape::unsqueeze_dims(&udims(x)?, axes)?;
    Ok(with_dims(x, dims_to_i64(&dims)?))
}

fn squeeze(x: &TensorData, axes: Option<&[i64]>) -> R {
    raw(x)?;
    let dims = reshape::squeeze_dims(&udims(x)?, axes)?;
    Ok(with_dims(x, dims_to_i64(&dims)?))
}

/// The dims `Reshape` produces from `input` and the shape operand `shape` (0 copies the input
/// dim unless `allowzero`, one -1 is inferred); `None` when the shape is invalid.
pub(crate) fn reshape_dims(input: &[i64], shape: &[i64], allowzero: bool) -> Option<Vec<i64>> {
    let input = dims_to_usize(input, "input").ok()?;
    let out = reshape::reshape_dims(&input, shape, allowzero).ok()?;
    dims_to_i64(&out).ok()
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
    let over = |n: usize| n as u64 > max_count;
    let bytes = match (decode(start)?, decode(limit)?, decode(delta)?) {
        (Num::F(s), Num::F(l), Num::F(d)) => {
            let n = movement::range_len_float(s[0], l[0], d[0])?;
            if over(n) {
                return Err(Why::OverBudget);
            }
            // Each element is computed in the element type, as the engine does.
            match t {
                DType::F32 => movement::range_values(s[0] as f32, d[0] as f32, n)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                DType::F64 => {
                    encode_f64(t, &movement::range_values(s[0], d[0], n)).ok_or(Why::No)?
                }
                _ => return Err(Why::No),
            }
        }
        (Num::I(s), Num::I(l), Num::I(d)) => {
            let n = movement::range_len_int(s[0], l[0], d[0])?;
            if over(n) {
                return Err(Why::OverBudget);
            }
            encode_i64(t, &movement::range_values(s[0], d[0], n)).ok_or(Why::No)?
        }
        _ => return Err(Why::No),
    };
    let n = bytes.len() / es.max(1) as usize;
    tensor(t, &[n], bytes)
}

fn where_(cond: &TensorData, x: &TensorData, y: &TensorData, budget: u64) -> R {
    if cond.dtype != DType::Bool || x.dtype != y.dtype {
        return Err(Why::No);
    }
    let (dc, dx, dy) = (udims(cond)?, udims(x)?, udims(y)?);
    let dims = broadcast_shapes(&[&dc, &dx, &dy])?;
    check(x.dtype, &dims, budget)?;
    let ((c, _), (xb, es), (yb, _)) = (raw(cond)?, raw(x)?, raw(y)?);
    let c: Vec<bool> = c.iter().map(|&v| v != 0).collect();
    let bytes = per_width!(es, |N| {
        let (xe, ye) = (elems::<N>(xb), elems::<N>(yb));
        let (_, v) = movement::where_select((&c, &dc), (&xe, &dx), (&ye, &dy))?;
        Ok(flat(v))
    })?;
    tensor(x.dtype, &dims, bytes)
}

fn constant_of_shape(dims: &[i64], value: Option<&TensorData>, budget: u64) -> R {
    let zero = TensorData::from_f32(vec![1], &[0.0]);
    let v = value.unwrap_or(&zero);
    let dims = dims_to_usize(dims, "ConstantOfShape")?;
    let (b, es) = raw(v)?;
    check(v.dtype, &dims, budget)?;
    let bytes = per_width!(es, |N| Ok(flat(movement::constant_of_shape(
        &dims,
        &elems::<N>(b)
    )?)))?;
    tensor(v.dtype, &dims, bytes)
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
    let dims = udims(x)?;
    let plan = sem_slice::slice_plan(&dims, starts, ends, axes, steps)?;
    let out_dims = sem_slice::plan_dims(&plan);
    check(x.dtype, &out_dims, budget)?;
    let bytes = per_width!(es, |N| Ok(flat(sem_slice::slice_copy(
        &elems::<N>(b),
        &dims,
        &plan
    )?)))?;
    tensor(x.dtype, &out_dims, bytes)
}
