//! Built-in kernels and the dispatch from IR ops to them.
//!
//! `builtin` reads a node's typed attributes once, at plan compile time, and returns a closure;
//! an op without a kernel returns `None`, which the plan reports as an unsupported op.

pub mod activation;
pub mod attention;
pub mod blocks;
pub mod broadcast;
pub mod cast;
pub mod conv;
pub mod einsum;
pub mod elementwise;
pub mod factorized;
pub mod gemv;
pub mod index;
pub mod loss;
pub mod mathf;
pub mod matmul;
pub mod nn;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod scatter;
pub mod select;
pub mod shape;
pub mod sparse;
pub mod sparse_simd;
pub mod unary;

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs, Kernel, KernelSite};
use crate::cpu::tensor::HostTensor;
use elementwise::{Arith, Cmp, Logic};
use ortho_ir::{AttrValue, DType, Module, Op};
use reduce::Reduce;
use unary::Unary;

/// The loss ops' attributes, the reduction word checked at compile time.
fn loss_attrs(ignore_index: Option<i64>, reduction: &str) -> KernelResult<loss::LossAttrs> {
    let reduction = ortho_ir::semantics::loss::LossReduction::from_word(reduction)
        .ok_or_else(|| KernelError::invalid(format!("loss reduction '{reduction}'")))?;
    Ok(loss::LossAttrs {
        ignore_index,
        reduction,
    })
}

use ortho_ir::semantics::pool::{PoolAttrs, PoolKind};

/// Values computed in f64 as a tensor of element type `d`, each rounded once: how the kernels
/// that evaluate an `ortho_ir::semantics` rule in f64 return their result.
pub(crate) fn from_f64_as(d: DType, dims: Vec<usize>, v: Vec<f64>) -> KernelResult<HostTensor> {
    use crate::cpu::tensor::Elem;
    Ok(
        crate::with_dtype!(d, T => HostTensor::make(dims, T::wrap(v.into_iter().map(T::from_f64).collect()))?,
        _ => return Err(KernelError::dtype(format!("not defined for {d}")))),
    )
}

/// DepthToSpace / SpaceToDepth `mode`, checked at compile time.
fn block_mode(w: &str) -> KernelResult<ortho_ir::semantics::blocks::BlockMode> {
    ortho_ir::semantics::blocks::BlockMode::from_word(w)
        .ok_or_else(|| KernelError::invalid(format!("mode '{w}' (DCR or CRD)")))
}

fn k<F>(f: F) -> Option<Box<dyn Kernel>>
where
    F: Fn(&mut ExecCx<'_>, &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>>
        + Send
        + Sync
        + 'static,
{
    Some(Box::new(f))
}

fn un(op: Unary) -> Option<Box<dyn Kernel>> {
    k(move |cx, ins| unary::unary(cx, op, ins))
}

fn bin(op: Arith) -> Option<Box<dyn Kernel>> {
    k(move |cx, ins| elementwise::arith(cx, op, ins))
}

fn cmp(op: Cmp) -> Option<Box<dyn Kernel>> {
    k(move |cx, ins| elementwise::compare(cx, op, ins))
}

fn red(op: Reduce, axes: Option<Vec<i64>>, keepdims: i64, noop: i64) -> Option<Box<dyn Kernel>> {
    let (keep, noop) = (keepdims != 0, noop != 0);
    k(move |cx, ins| reduce::reduce(cx, op, ins, axes.as_deref(), keep, noop))
}

fn opaque_ints(attrs: &[ortho_ir::Attr], name: &str) -> Option<Vec<i64>> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| match &a.value {
            AttrValue::Ints(v) => Some(v.clone()),
            AttrValue::Int(v) => Some(vec![*v]),
            _ => None,
        })
}

fn opaque_int(attrs: &[ortho_ir::Attr], name: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| match &a.value {
            AttrValue::Int(v) => Some(*v),
            _ => None,
        })
}

fn positive(v: Option<i64>) -> Option<usize> {
    v.filter(|&x| x > 0).map(|x| x as usize)
}

/// The built-in kernel for the node at `site`, or `None` when there is none.
pub fn builtin(site: &KernelSite<'_>) -> KernelResult<Option<Box<dyn Kernel>>> {
    let node = site.node();
    let n_out = site.num_outputs();
    Ok(match &node.op {
        Op::Identity => k(|_, ins| shape::identity(ins)),
        Op::Neg => un(Unary::Neg),
        Op::Abs => un(Unary::Abs),
        Op::Sqrt => un(Unary::Sqrt),
        Op::Reciprocal => un(Unary::Reciprocal),
        Op::Exp => un(Unary::Exp),
        Op::Log => un(Unary::Log),
        Op::Sin => un(Unary::Sin),
        Op::Cos => un(Unary::Cos),
        Op::Tan => un(Unary::Tan),
        Op::Tanh => un(Unary::Tanh),
        Op::Asin => un(Unary::Asin),
        Op::Acos => un(Unary::Acos),
        Op::Atan => un(Unary::Atan),
        Op::Sinh => un(Unary::Sinh),
        Op::Cosh => un(Unary::Cosh),
        Op::Asinh => un(Unary::Asinh),
        Op::Acosh => un(Unary::Acosh),
        Op::Atanh => un(Unary::Atanh),
        Op::Erf => un(Unary::Erf),
        Op::Sigmoid => un(Unary::Sigmoid),
        Op::Relu => un(Unary::Relu),
        Op::Floor => un(Unary::Floor),
        Op::Ceil => un(Unary::Ceil),
        Op::Round => un(Unary::Round),
        Op::Sign => un(Unary::Sign),
        Op::Softplus => un(Unary::Softplus),
        Op::Softsign => un(Unary::Softsign),
        Op::HardSwish => un(Unary::HardSwish),
        Op::Mish => un(Unary::Mish),
        Op::Gelu(a) => un(Unary::Gelu {
            tanh: a.approximate() == "tanh",
        }),
        Op::LeakyRelu(a) => un(Unary::LeakyRelu(a.alpha())),
        Op::Elu(a) => un(Unary::Elu(a.alpha())),
        Op::Celu(a) => un(Unary::Celu(a.alpha())),
        Op::Selu(a) => un(Unary::Selu(a.alpha(), a.gamma())),
        Op::HardSigmoid(a) => un(Unary::HardSigmoid(a.alpha(), a.beta())),
        Op::ThresholdedRelu(a) => un(Unary::ThresholdedRelu(a.alpha())),
        Op::IsNaN => k(|cx, ins| unary::classify(cx, ins, true, false, false)),
        Op::IsInf(a) => {
            let (neg, pos) = (a.detect_negative() != 0, a.detect_positive() != 0);
            k(move |cx, ins| unary::classify(cx, ins, false, neg, pos))
        }
        Op::Not | Op::BitwiseNot => k(unary::not),
        Op::Add => bin(Arith::Add),
        Op::Sub => bin(Arith::Sub),
        Op::Mul => bin(Arith::Mul),
        Op::Div => bin(Arith::Div),
        Op::Pow => bin(Arith::Pow),
        Op::PRelu => bin(Arith::PRelu),
        Op::Mod(a) => bin(Arith::Mod {
            fmod: a.fmod() != 0,
        }),
        Op::BitwiseAnd => bin(Arith::BitAnd),
        Op::BitwiseOr => bin(Arith::BitOr),
        Op::BitwiseXor => bin(Arith::BitXor),
        Op::And => k(|cx, ins| elementwise::logic(cx, Logic::And, ins)),
        Op::Or => k(|cx, ins| elementwise::logic(cx, Logic::Or, ins)),
        Op::Xor => k(|cx, ins| elementwise::logic(cx, Logic::Xor, ins)),
        Op::Equal => cmp(Cmp::Eq),
        Op::Less => cmp(Cmp::Lt),
        Op::LessOrEqual => cmp(Cmp::Le),
        Op::Greater => cmp(Cmp::Gt),
        Op::GreaterOrEqual => cmp(Cmp::Ge),
        Op::Max => k(|cx, ins| elementwise::variadic(cx, Arith::Max, false, ins)),
        Op::Min => k(|cx, ins| elementwise::variadic(cx, Arith::Min, false, ins)),
        Op::Sum => k(|cx, ins| elementwise::variadic(cx, Arith::Add, false, ins)),
        Op::Mean => k(|cx, ins| elementwise::variadic(cx, Arith::Add, true, ins)),
        Op::Where => k(cast::where_kernel),
        Op::Clip => k(|cx, ins| cast::clip(cx, ins, None, None)),
        Op::Cast(a) => {
            let to = DType::from_code(a.to.ok_or(KernelError::invalid("Cast needs 'to'"))?);
            k(move |cx, ins| cast::cast_kernel(cx, ins, to))
        }
        Op::CastLike(_) => k(|cx, ins| {
            let to = ins.req(1)?.dtype();
            cast::cast_kernel(cx, ins, to)
        }),
        Op::MatMul => k(|cx, ins| matmul::matmul(cx, ins, false)),
        &Op::Ortho(ortho_ir::op_ortho::OrthoOp::Factorized(f)) => {
            k(move |cx, ins| factorized::factorized(cx, f, ins))
        }
        &Op::Ortho(ortho_ir::op_ortho::OrthoOp::SparseLinear(p)) => {
            k(move |cx, ins| sparse::sparse_linear(cx, p, ins))
        }
        Op::Gemm(a) => {
            let (al, be, ta, tb) = (a.alpha(), a.beta(), a.trans_a() != 0, a.trans_b() != 0);
            k(move |cx, ins| matmul::gemm_op(cx, ins, al, be, ta, tb))
        }
        Op::Softmax(_) | Op::LogSoftmax(_) => {
            let (log, axis) = match &node.op {
                Op::LogSoftmax(a) => (true, a.axis),
                Op::Softmax(a) => (false, a.axis),
                _ => (false, None),
            };
            let legacy = site.opset > 0 && site.opset < 13;
            let axis = axis.unwrap_or(if legacy { 1 } else { -1 });
            k(move |cx, ins| reduce::softmax(cx, ins, axis, log, legacy))
        }
        Op::ReduceMean(a) => red(
            Reduce::Mean,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceSum(a) => red(
            Reduce::Sum,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceMax(a) => red(
            Reduce::Max,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceMin(a) => red(
            Reduce::Min,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceProd(a) => red(
            Reduce::Prod,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceL2(a) => red(
            Reduce::L2,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::ReduceSumSquare(a) => red(
            Reduce::SumSquare,
            a.axes.clone(),
            a.keepdims(),
            a.noop_with_empty_axes(),
        ),
        Op::RMSNormalization(a) => {
            let (axis, eps) = (a.axis(), a.epsilon());
            k(move |cx, ins| nn::rms_norm(cx, ins, axis, eps))
        }
        Op::LayerNormalization(a) => {
            let (axis, eps) = (a.axis(), a.epsilon());
            k(move |cx, ins| nn::layer_norm(cx, ins, axis, eps, n_out))
        }
        Op::RotaryEmbedding(a) => {
            let (il, nh, rd) = (
                a.interleaved() != 0,
                a.num_heads(),
                a.rotary_embedding_dim(),
            );
            k(move |cx, ins| nn::rotary(cx, ins, il, nh, rd))
        }
        Op::Attention(a) => {
            let attrs = attention::AttentionAttrs {
                is_causal: a.is_causal() != 0,
                q_heads: positive(a.q_num_heads),
                kv_heads: positive(a.kv_num_heads),
                scale: a.scale,
                softcap: a.softcap(),
                qk_mode: a.qk_matmul_output_mode(),
                // −1 (the default) leaves a side of the window unbounded.
                left_window: usize::try_from(a.left_window_size()).ok(),
                right_window: usize::try_from(a.right_window_size()).ok(),
            };
            let want_qk = site.output_used(3);
            let outs = (0..3)
                .filter(|&i| site.output_used(i))
                .max()
                .map_or(1, |i| i + 1);
            k(move |cx, ins| attention::attention(cx, ins, attrs, outs, want_qk))
        }
        Op::Reshape(a) => {
            let allowzero = a.allowzero() != 0;
            k(move |_, ins| shape::reshape(ins, allowzero))
        }
        Op::Flatten(a) => {
            let axis = a.axis();
            k(move |_, ins| shape::flatten(ins, axis))
        }
        Op::Squeeze => k(|_, ins| shape::squeeze(ins, None)),
        Op::Unsqueeze => k(|_, ins| shape::unsqueeze(ins, None)),
        Op::Transpose(a) => {
            let perm = a.perm.clone();
            k(move |cx, ins| shape::transpose(cx, ins, perm.as_deref()))
        }
        Op::Slice => k(shape::slice),
        Op::Concat(a) => {
            let axis = a.axis.ok_or(KernelError::shape("Concat needs 'axis'"))?;
            k(move |cx, ins| shape::concat(cx, ins, axis))
        }
        Op::Split(a) => {
            let (axis, split) = (a.axis(), a.split.clone());
            let parts = a.num_outputs.map(|n| n as usize).unwrap_or(n_out);
            k(move |cx, ins| shape::split(cx, ins, axis, split.as_deref(), parts))
        }
        Op::Expand => k(shape::expand),
        Op::Tile => k(shape::tile),
        Op::Gather(a) => {
            let axis = a.axis();
            k(move |cx, ins| shape::gather(cx, ins, axis))
        }
        Op::ScatterND(a) => {
            let red = scatter::ScatterReduction::from_word(&a.reduction()).ok_or_else(|| {
                KernelError::unsupported(format!("ScatterND reduction '{}'", a.reduction()))
            })?;
            k(move |_, ins| scatter::scatter_nd(ins, red))
        }
        Op::ScatterElements(a) => {
            let red = scatter::ScatterReduction::from_word(&a.reduction()).ok_or_else(|| {
                KernelError::invalid(format!("ScatterElements reduction '{}'", a.reduction()))
            })?;
            let axis = a.axis();
            k(move |_, ins| scatter::scatter_elements(ins, axis, red))
        }
        Op::Einsum(a) => {
            let eq = a
                .equation
                .clone()
                .ok_or(KernelError::invalid("Einsum needs 'equation'"))?;
            k(move |_, ins| einsum::einsum(ins, &eq))
        }
        Op::GatherND(a) => {
            let b = a.batch_dims();
            k(move |_, ins| select::gather_nd(ins, b))
        }
        Op::TopK(a) => {
            let (axis, largest) = (a.axis(), a.largest() != 0);
            k(move |_, ins| select::topk(ins, axis, largest))
        }
        Op::Hardmax(a) => {
            // Before opset 13 the default axis is 1 and the lane is the input seen as 2-D.
            let legacy = site.opset > 0 && site.opset < 13;
            let axis = a.axis.unwrap_or(if legacy { 1 } else { a.axis() });
            k(move |_, ins| select::hardmax(ins, axis, legacy))
        }
        Op::Pad(a) => {
            let mode = ortho_ir::semantics::indexing::PadMode::from_word(&a.mode())
                .ok_or_else(|| KernelError::invalid(format!("Pad mode '{}'", a.mode())))?;
            k(move |_, ins| select::pad(ins, mode))
        }
        Op::NegativeLogLikelihoodLoss(a) => {
            let at = loss_attrs(a.ignore_index, &a.reduction())?;
            k(move |_, ins| loss::nll(ins, at))
        }
        Op::SoftmaxCrossEntropyLoss(a) => {
            let at = loss_attrs(a.ignore_index, &a.reduction())?;
            k(move |cx, ins| loss::softmax_cross_entropy(cx, ins, at))
        }
        Op::MaxPool(a) => {
            let at = PoolAttrs::from(a);
            let kind = PoolKind::Max {
                col_major: a.storage_order() != 0,
            };
            let with_indices = site.output_used(1);
            k(move |_, ins| pool::pool(ins, &at, kind, with_indices))
        }
        Op::AveragePool(a) => {
            let at = PoolAttrs::from(a);
            let kind = PoolKind::Average {
                count_include_pad: a.count_include_pad() != 0,
            };
            k(move |_, ins| pool::pool(ins, &at, kind, false))
        }
        Op::LpPool(a) => {
            let at = PoolAttrs::from(a);
            let kind = PoolKind::Lp { p: a.p() as f64 };
            k(move |_, ins| pool::pool(ins, &at, kind, false))
        }
        Op::GlobalAveragePool => {
            let kind = PoolKind::Average {
                count_include_pad: false,
            };
            k(move |_, ins| pool::global_pool(ins, kind))
        }
        Op::GlobalMaxPool => {
            let kind = PoolKind::Max { col_major: false };
            k(move |_, ins| pool::global_pool(ins, kind))
        }
        Op::Conv(a) => {
            let at = PoolAttrs::from(a);
            let group = a.group();
            k(move |_, ins| conv::conv(ins, &at, group))
        }
        Op::BatchNormalization(a) => {
            let eps = f64::from(a.epsilon());
            // Training mode normalizes with the batch's statistics and blends the running ones.
            let momentum = (a.training_mode() != 0).then_some(f64::from(a.momentum()));
            k(move |_, ins| normalize::batch_norm(ins, eps, momentum))
        }
        Op::InstanceNormalization(a) => {
            let eps = f64::from(a.epsilon());
            k(move |_, ins| normalize::instance_norm(ins, eps))
        }
        Op::MeanVarianceNormalization(a) => {
            let axes = a.axes();
            k(move |_, ins| normalize::mean_variance(ins, &axes))
        }
        Op::LpNormalization(a) => {
            let (axis, p) = (a.axis(), a.p());
            k(move |_, ins| normalize::lp_normalize(ins, axis, p))
        }
        Op::EyeLike(a) => {
            let (dtype, diag) = (a.dtype.map(DType::from_code), a.k());
            k(move |_, ins| index::eye_like(ins, dtype, diag))
        }
        Op::Scatter(a) => {
            // The deprecated Scatter (opset 9-10) is ScatterElements without a reduction.
            let axis = a.axis();
            k(move |_, ins| scatter::scatter_elements(ins, axis, scatter::ScatterReduction::None))
        }
        Op::ConvTranspose(a) => {
            let at = ortho_ir::semantics::conv::TransposeAttrs::from(a);
            let group = a.group();
            k(move |_, ins| conv::conv_transpose(ins, &at, group))
        }
        Op::DepthToSpace(a) => {
            let (b, mode) = (a.blocksize.unwrap_or(0), block_mode(&a.mode())?);
            k(move |cx, ins| blocks::depth_to_space(cx, ins, b, mode))
        }
        Op::SpaceToDepth(a) => {
            let (b, mode) = (a.blocksize.unwrap_or(0), block_mode(&a.mode())?);
            k(move |cx, ins| blocks::space_to_depth(cx, ins, b, mode))
        }
        Op::ReverseSequence(a) => {
            let (b, t) = (a.batch_axis(), a.time_axis());
            k(move |_, ins| blocks::reverse_sequence(ins, b, t))
        }
        Op::Compress(a) => {
            let axis = a.axis;
            k(move |_, ins| select::compress(ins, axis))
        }
        Op::Det => k(|_, ins| select::det(ins)),
        Op::Shrink(a) => {
            let (l, b) = (f64::from(a.lambd()), f64::from(a.bias()));
            k(move |_, ins| activation::shrink(ins, l, b))
        }
        Op::BitShift(a) => match a.direction.as_deref() {
            Some("LEFT") => bin(Arith::ShiftLeft),
            Some("RIGHT") => bin(Arith::ShiftRight),
            d => return Err(KernelError::invalid(format!("BitShift direction {d:?}"))),
        },
        Op::Shape(a) => {
            let (s, e) = (a.start, a.end);
            k(move |_, ins| shape::shape_of(ins, s, e))
        }
        Op::Size => k(|_, ins| shape::size_of(ins)),
        Op::Range => k(|_, ins| shape::range(ins)),
        Op::ConstantOfShape(a) => {
            let v = match a.value {
                Some(t) => Some(HostTensor::from_tensor_data(site.module.tensor(t))?),
                None => None,
            };
            k(move |_, ins| shape::constant_of_shape(ins, v.as_ref()))
        }
        Op::Trilu(a) => {
            let upper = a.upper() != 0;
            k(move |_, ins| shape::trilu(ins, upper))
        }
        Op::ArgMax(a) => {
            let (axis, keep, last) = (a.axis(), a.keepdims() != 0, a.select_last_index() != 0);
            k(move |_, ins| index::arg_extreme(ins, axis, keep, true, last))
        }
        Op::ArgMin(a) => {
            let (axis, keep, last) = (a.axis(), a.keepdims() != 0, a.select_last_index() != 0);
            k(move |_, ins| index::arg_extreme(ins, axis, keep, false, last))
        }
        Op::CumSum(a) => {
            let (ex, rev) = (a.exclusive() != 0, a.reverse() != 0);
            k(move |_, ins| index::cumsum(ins, ex, rev, index::Cumulative::Sum))
        }
        Op::CumProd(a) => {
            let (ex, rev) = (a.exclusive() != 0, a.reverse() != 0);
            k(move |_, ins| index::cumsum(ins, ex, rev, index::Cumulative::Prod))
        }
        Op::GatherElements(a) => {
            let axis = a.axis();
            k(move |_, ins| index::gather_elements(ins, axis))
        }
        Op::NonZero => k(|_, ins| index::nonzero(ins)),
        Op::OneHot(a) => {
            let axis = a.axis();
            k(move |_, ins| index::onehot(ins, axis))
        }
        Op::Dropout(_) => {
            // Inference: the identity, and an all-true mask when asked for. Training mode with a
            // nonzero ratio draws a random mask no run of ours can reproduce, so it is refused
            // rather than answered with the identity.
            let mask = site.output_used(1);
            k(move |_, ins| {
                let training = ins
                    .get(2)
                    .is_some_and(|t| t.to_i64_vec().first().is_some_and(|&v| v != 0));
                let ratio = ins
                    .get(1)
                    .map_or(0.5, |r| r.to_f64_vec().first().copied().unwrap_or(0.5));
                if training && ratio != 0.0 {
                    return Err(KernelError::unsupported(
                        "Dropout in training mode with a nonzero ratio (a random mask)",
                    ));
                }
                let shape = ins.req(0)?.shape().to_vec();
                let mut r = shape::identity(ins)?;
                if mask {
                    let n = shape.iter().product();
                    r.push(HostTensor::from_vec(shape, vec![true; n])?);
                }
                Ok(r)
            })
        }
        Op::Opaque(o) if o.domain.is_empty() || o.domain == "ai.onnx" => match o.op_type.as_str() {
            // Older opsets keep axes as attributes, which the typed ops do not model.
            "Squeeze" => {
                let axes = opaque_ints(&o.attrs, "axes");
                k(move |_, ins| shape::squeeze(ins, axes.as_deref()))
            }
            "Unsqueeze" => {
                let axes = opaque_ints(&o.attrs, "axes");
                k(move |_, ins| shape::unsqueeze(ins, axes.as_deref()))
            }
            "ReduceL1" | "ReduceLogSum" | "ReduceLogSumExp" => {
                let op = match o.op_type.as_str() {
                    "ReduceL1" => Reduce::L1,
                    "ReduceLogSum" => Reduce::LogSum,
                    _ => Reduce::LogSumExp,
                };
                // These reductions share the typed ones' attributes, defaults included.
                let d = ortho_ir::attrs::ReduceSum::default();
                red(
                    op,
                    opaque_ints(&o.attrs, "axes"),
                    opaque_int(&o.attrs, "keepdims").unwrap_or(d.keepdims()),
                    opaque_int(&o.attrs, "noop_with_empty_axes")
                        .unwrap_or(d.noop_with_empty_axes()),
                )
            }
            _ => None,
        },
        _ => None,
    })
}

/// The value of an `onnx.Constant` node.
pub fn constant_value(op: &Op, module: &Module) -> KernelResult<HostTensor> {
    let Op::Constant(a) = op else {
        return Err(KernelError::invalid("not a Constant"));
    };
    if let Some(t) = a.value {
        return HostTensor::from_tensor_data(module.tensor(t));
    }
    if let Some(v) = a.value_float {
        return Ok(HostTensor::scalar(v));
    }
    if let Some(v) = &a.value_floats {
        return HostTensor::from_vec(vec![v.len()], v.clone()).map_err(KernelError::from);
    }
    if let Some(v) = a.value_int {
        return Ok(HostTensor::scalar(v));
    }
    if let Some(v) = &a.value_ints {
        return HostTensor::from_vec(vec![v.len()], v.clone()).map_err(KernelError::from);
    }
    Err(KernelError::unsupported(
        "Constant without a numeric value (strings are not supported)",
    ))
}
