//! Copy-on-write rewriting of constant operands, shared by the folding passes (not a pass).
//!
//! A [`Rewrite`] names one operand slot that must read a transformed copy of a constant (maybe
//! through a `Transpose`). Rewrites are grouped by constant: when every use of the constant is
//! rewritten with the same transform, the constant node is pointed at the new tensor in place
//! (it keeps its name); otherwise each transform gets a new constant node (and a new
//! `Transpose` where the use went through one), so other readers — a tied head, a shared gain —
//! keep the old values. Old tensors stay in the arena; export writes only referenced ones.
//!
//! Numerics: values are decoded to f64, transformed, and encoded once into the storage dtype
//! (f32, f64, f16, bf16; round to nearest even).

use crate::pass::{PassError, PassErrorKind};
use ortho_ir::{DType, Graph, GraphId, Module, NodeId, Op, Output, TensorData, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Why a weight could not be read, transformed or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("weights of dtype {0} cannot be folded")]
    Dtype(DType),
    #[error("the tensor's data is not available (elided text, or a size mismatch)")]
    Unavailable,
    #[error("the tensor's byte length does not match its dims")]
    ByteLength,
    #[error("the tensor's bytes cannot be decoded")]
    Undecodable,
    #[error("cannot encode dtype {0}")]
    Encode(DType),
    #[error("a tensor of shape {dims:?} ({bytes} bytes) is not made of rows of {row_len}")]
    NotRows {
        dims: Vec<i64>,
        bytes: usize,
        row_len: usize,
    },
    #[error("a block changed size")]
    BlockSize,
    #[error("axis out of range")]
    Axis,
    #[error("a scale of {len} elements cannot apply to an axis of {axis_len}")]
    ScaleLength { len: usize, axis_len: usize },
    #[error("a worker thread failed")]
    Worker,
    /// The tensor's shape does not fit the transform a pass applies (the message says how).
    #[error("{0}")]
    Shape(String),
}

/// A builder of the new tensor for one rewrite key (see [`apply`]).
pub(crate) type MakeFn<'a> =
    dyn Fn(usize, &TensorData) -> Result<TensorData, WeightError> + Sync + 'a;

/// One operand to redirect to a transformed copy of its constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewrite {
    pub consumer: NodeId,
    pub slot: usize,
    pub konst: NodeId,
    pub transpose: Option<NodeId>,
    /// Which transform: rewrites with equal keys get the same new tensor.
    pub key: usize,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Constants replaced in place.
    pub in_place: usize,
    /// New constants created because the old one had other readers (e.g. an untied head).
    pub copies: usize,
    /// Bytes of the new tensors.
    pub bytes: u64,
}

/// The value of a node's first result.
fn v0(n: NodeId) -> ValueId {
    ValueId { node: n, output: 0 }
}

/// The constant a node holds.
fn tensor_of(g: &Graph, n: NodeId) -> Option<ortho_ir::TensorId> {
    match &g.node(n).op {
        Op::Const(t) => Some(*t),
        Op::Constant(a) => a.value,
        _ => None,
    }
}

/// Applies `rewrites` to graph `gid`; `make(key, old)` builds each new tensor.
pub(crate) fn apply(
    m: &mut Module,
    gid: GraphId,
    rewrites: &[Rewrite],
    suffix: &str,
    make: &MakeFn<'_>,
) -> Result<Applied, PassError> {
    let mut by_const: BTreeMap<NodeId, Vec<Rewrite>> = BTreeMap::new();
    for r in rewrites {
        by_const.entry(r.konst).or_default().push(*r);
    }
    // Plan first (reads only), then build tensors, then mutate.
    struct Job {
        konst: NodeId,
        key: usize,
        in_place: bool,
        uses: Vec<Rewrite>,
    }
    let mut jobs: Vec<Job> = Vec::new();
    {
        let g = m.graph(gid);
        for (&konst, rs) in &by_const {
            let Some(_) = tensor_of(g, konst) else {
                return Err(PassError::at(g, konst, "expected a constant").in_graph(gid));
            };
            let covered =
                |n: NodeId, slot: usize| rs.iter().any(|r| r.consumer == n && r.slot == slot);
            let mut all_covered = !g.outputs.iter().any(|o| o.value == v0(konst));
            for (u, slot) in g.users(v0(konst)) {
                if rs.iter().any(|r| r.transpose == Some(u)) {
                    let tv = v0(u);
                    all_covered &= !g.outputs.iter().any(|o| o.value == tv);
                    all_covered &= g.users(tv).iter().all(|&(c, s)| covered(c, s));
                } else {
                    all_covered &= covered(u, slot);
                }
            }
            let mut keys: Vec<usize> = rs.iter().map(|r| r.key).collect();
            keys.sort();
            keys.dedup();
            let in_place =
                all_covered && keys.len() == 1 && matches!(g.node(konst).op, Op::Const(_));
            for key in keys {
                jobs.push(Job {
                    konst,
                    key,
                    in_place,
                    uses: rs.iter().filter(|r| r.key == key).copied().collect(),
                });
            }
        }
    }
    // Build every new tensor (the expensive part) before touching the graph, so a failure
    // leaves the module as it was.
    let built = {
        let g = m.graph(gid);
        let olds: Vec<&TensorData> = jobs
            .iter()
            .map(|j| {
                tensor_of(g, j.konst)
                    .map(|t| m.tensor(t))
                    .ok_or_else(|| PassError::at(g, j.konst, "expected a constant").in_graph(gid))
            })
            .collect::<Result<_, _>>()?;
        let keys: Vec<usize> = jobs.iter().map(|j| j.key).collect();
        build_all(&olds, &keys, make)
            .into_iter()
            .zip(&jobs)
            .map(|(r, j)| {
                r.map_err(|e| {
                    PassError::at(g, j.konst, e.to_string())
                        .in_graph(gid)
                        .with_kind(PassErrorKind::Weights)
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut stats = Applied::default();
    let mut names = m.graph(gid).value_names();
    for (j, new) in jobs.into_iter().zip(built) {
        stats.bytes += new.byte_len();
        let tid = m.add_tensor(new);
        let g = m.graph_mut(gid);
        if j.in_place {
            g.node_mut(j.konst).op = Op::Const(tid);
            stats.in_place += 1;
            continue;
        }
        stats.copies += 1;
        let old_out = g.node(j.konst).outputs[0].clone();
        let name = g.fresh_name(&format!("{}.{suffix}", old_out.name), &names);
        let k = g.add_node(
            Op::Const(tid),
            vec![],
            vec![Output::new(name.clone(), old_out.ty.clone())],
        );
        names.insert(name, v0(k));
        let mut transposes: HashMap<NodeId, NodeId> = HashMap::new();
        for r in &j.uses {
            let src = match r.transpose {
                None => v0(k),
                Some(t) => {
                    let nt = match transposes.get(&t) {
                        Some(&nt) => nt,
                        None => {
                            let tn = g.node(t);
                            let (op, out) = (tn.op.clone(), tn.outputs[0].clone());
                            let tname = g.fresh_name(&format!("{}.{suffix}", out.name), &names);
                            let nt = g.add_node(
                                op,
                                vec![Some(v0(k))],
                                vec![Output::new(tname.clone(), out.ty)],
                            );
                            names.insert(tname, v0(nt));
                            transposes.insert(t, nt);
                            nt
                        }
                    };
                    v0(nt)
                }
            };
            g.set_operand(r.consumer, r.slot, Some(src));
        }
        // Transposes and constants this left without a use go (a dead Transpose would keep the
        // old constant alive and make the next fold copy it again).
        for t in j.uses.iter().filter_map(|r| r.transpose) {
            if g.contains(t) && !g.has_uses(t) {
                g.remove_node(t);
            }
        }
        if !g.has_uses(j.konst) {
            g.remove_node(j.konst);
        }
    }
    Ok(stats)
}

/// Runs `make` on every (key, tensor) pair, largest tensors first, on as many threads as the
/// machine has (each product inside runs single-threaded, so the pairs are the parallel unit).
fn build_all(
    olds: &[&TensorData],
    keys: &[usize],
    make: &MakeFn<'_>,
) -> Vec<Result<TensorData, WeightError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let mut order: Vec<usize> = (0..olds.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(olds[i].byte_len()));
    let results: Vec<Mutex<Option<Result<TensorData, WeightError>>>> =
        (0..olds.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, olds.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = make(keys[i], olds[i]);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or(Err(WeightError::Worker))
        })
        .collect()
}

/// The elements of a tensor as f64, or why they are not available.
pub(crate) fn decode(t: &TensorData) -> Result<Vec<f64>, WeightError> {
    if !matches!(t.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        return Err(WeightError::Dtype(t.dtype));
    }
    let v = t.to_f64_vec().ok_or(WeightError::Unavailable)?;
    if Some(v.len() as u64) != t.numel() {
        return Err(WeightError::ByteLength);
    }
    Ok(v)
}

/// f32 → f16 bits, round to nearest even (overflow to infinity, subnormals kept).
fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// f32 → bf16 bits, round to nearest even.
fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// A tensor of `like`'s dtype, dims and name holding `v` (cast once).
pub(crate) fn encode_like(like: &TensorData, v: &[f64]) -> Result<TensorData, WeightError> {
    let mut t = encode(like.dtype, like.dims.clone(), v)?;
    t.name = like.name.clone();
    t.doc = like.doc.clone();
    Ok(t)
}

/// A new tensor of `dtype` and `dims` holding `v`, cast once from f64.
pub(crate) fn encode(dtype: DType, dims: Vec<i64>, v: &[f64]) -> Result<TensorData, WeightError> {
    Ok(TensorData::from_bytes(dtype, dims, encode_bytes(dtype, v)?))
}

/// The little-endian bytes of `v` in `dtype`, cast once from f64.
fn encode_bytes(dtype: DType, v: &[f64]) -> Result<Vec<u8>, WeightError> {
    fn put<const N: usize>(v: &[f64], f: impl Fn(f64) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    Ok(match dtype {
        DType::F32 => put(v, |x| (x as f32).to_le_bytes()),
        DType::F64 => put(v, |x| x.to_le_bytes()),
        // Through f32 first: the f64 → f32 step is exact for every value an f16/bf16 can round
        // to, except in rare double-rounding ties, which are below the f16 resolution.
        DType::F16 => put(v, |x| f32_to_f16(x as f32).to_le_bytes()),
        DType::BF16 => put(v, |x| f32_to_bf16(x as f32).to_le_bytes()),
        d => return Err(WeightError::Encode(d)),
    })
}

/// A transform of a block of rows for [`map_rows`]: `(values, rows) → new values`.
pub(crate) type RowsFn<'a> = dyn Fn(&[f64], usize) -> Result<Vec<f64>, WeightError> + 'a;

/// A tensor like `old` whose rows (`row_len` consecutive elements) are transformed block by
/// block: `f(values, rows)` gets about 64 Ki elements of whole rows in f64 and returns their new
/// values. Decoding, transforming and encoding one block at a time keeps a large table (an
/// embedding or a head, 49152 × 576 in SmolLM2) from ever existing in f64 in full.
pub(crate) fn map_rows(
    old: &TensorData,
    row_len: usize,
    f: &RowsFn<'_>,
) -> Result<TensorData, WeightError> {
    if !matches!(
        old.dtype,
        DType::F32 | DType::F64 | DType::F16 | DType::BF16
    ) {
        return Err(WeightError::Dtype(old.dtype));
    }
    let bytes = old.bytes().ok_or(WeightError::Unavailable)?;
    let n = old.numel().unwrap_or(0) as usize;
    if n == 0 || n.checked_rem(row_len) != Some(0) || bytes.len().checked_rem(n) != Some(0) {
        return Err(WeightError::NotRows {
            dims: old.dims.clone(),
            bytes: bytes.len(),
            row_len,
        });
    }
    let size = bytes.len() / n;
    let rows = n / row_len;
    let block = ((1usize << 16) / row_len).max(1);
    let mut out = Vec::with_capacity(bytes.len());
    for start in (0..rows).step_by(block) {
        let r = block.min(rows - start);
        let chunk = &bytes[start * row_len * size..(start + r) * row_len * size];
        let v = ortho_ir::numeric::decode_f64(old.dtype, chunk).ok_or(WeightError::Undecodable)?;
        let y = f(&v, r)?;
        if y.len() != v.len() {
            return Err(WeightError::BlockSize);
        }
        out.extend_from_slice(&encode_bytes(old.dtype, &y)?);
    }
    let mut t = TensorData::from_bytes(old.dtype, old.dims.clone(), out);
    t.name = old.name.clone();
    t.doc = old.doc.clone();
    Ok(t)
}

/// Multiplies every fiber along `axis` elementwise by `s` (`s.len()` = that axis' size).
pub(crate) fn scale_axis(
    v: &mut [f64],
    dims: &[i64],
    axis: usize,
    s: &[f64],
) -> Result<(), WeightError> {
    let n = *dims.get(axis).ok_or(WeightError::Axis)? as usize;
    if n != s.len() {
        return Err(WeightError::ScaleLength {
            len: s.len(),
            axis_len: n,
        });
    }
    let inner: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    for (i, x) in v.iter_mut().enumerate() {
        *x *= s[(i / inner) % n];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_rounding() {
        // (input, f16 bits, bf16 bits)
        let cases = [
            (1.0f32, 0x3c00u16, 0x3f80u16),
            (-2.0, 0xc000, 0xc000),
            (65504.0, 0x7bff, 0x4780),
            (1e6, 0x7c00, 0x4974),
            (0.0, 0, 0),
        ];
        for (x, h, b) in cases {
            assert_eq!(f32_to_f16(x), h, "f16 {x}");
            assert_eq!(f32_to_bf16(x), b, "bf16 {x}");
        }
        // The smallest f16 subnormal, and a tie that rounds to even.
        assert_eq!(f32_to_f16(5.960_464_5e-8), 1);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        for bits in [0x0001u16, 0x03ff, 0x0400, 0x3555, 0x7bff, 0x8001, 0xc123] {
            assert_eq!(
                f32_to_f16(ortho_ir::numeric::f16_to_f32(bits)),
                bits,
                "round trip {bits:#x}"
            );
        }
    }
}
