//! Operations.
//!
//! `Op` has one variant per operation the IR understands, each with a typed attribute struct
//! (in [`attrs`]), plus three structural variants (`Input`, `Const`, `Capture`), `Ortho` for
//! ortho-opt's own ops with their typed payloads ([`crate::op_ortho`]), and `Opaque` for
//! everything else, carried through untouched. The `onnx.` mnemonics below are the IR's textual
//! names; they equal the ONNX op types on purpose so that `.oir` reads like the model, and the
//! frontend maps NodeProtos through [`Op::from_parts`] / [`Op::to_parts`].
//!
//! An op is typed only when every attribute fits its struct (known name, right kind, no doc
//! string); otherwise it becomes `Opaque`, so no attribute is ever dropped.

use crate::attr::{Attr, AttrType};
#[allow(unused_imports)]
use crate::graph::GraphId;
#[allow(unused_imports)]
use crate::tensor::TensorId;

/// Unbounded arity.
pub const VAR: usize = usize::MAX;

/// How many operands and results an op takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arity {
    pub min_in: usize,
    pub max_in: usize,
    pub min_out: usize,
    pub max_out: usize,
}

/// An operation the IR does not model; kept verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct Opaque {
    pub domain: String,
    pub op_type: String,
    pub attrs: Vec<Attr>,
}

macro_rules! define_ops {
    (
        simple { $( $s:ident ($si:expr, $sx:expr => $so:expr) ),* $(,)? }
        typed { $( $v:ident ($vi:expr, $vx:expr => $vo:expr, $vox:expr) { $( $f:ident : $t:ty = $k:literal $( => $d:expr )? ),* $(,)? } ),* $(,)? }
    ) => {
        /// Typed attribute structs; a `None` field means the attribute was not given. Attributes with
        /// an ONNX default (written once, after `=>` in the op table) also get an accessor of the
        /// same name that returns the default when the attribute is absent: `a.epsilon()`.
        pub mod attrs {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[derive(Debug, Clone, Default, PartialEq)]
                pub struct $v { $( pub $f: Option<$t>, )* }

                impl $v {
                    $( $(
                        /// The attribute's value, or its ONNX default when it was not given.
                        #[allow(clippy::clone_on_copy)]
                        pub fn $f(&self) -> $t {
                            match &self.$f {
                                Some(x) => x.clone(),
                                None => $d,
                            }
                        }
                    )? )*
                }
            )*
        }

        /// An operation.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Op {
            /// A graph input (a parameter of the graph); `default` is an initializer that gives its value when not fed.
            Input { default: Option<TensorId> },
            /// A constant (an initializer).
            Const(TensorId),
            /// A value of an enclosing graph, referenced by name from inside a subgraph.
            Capture,
            /// An op of ortho-opt's own domain, with its typed payload.
            Ortho(crate::op_ortho::OrthoOp),
            $( $s, )*
            $( $v(attrs::$v), )*
            Opaque(Opaque),
        }

        impl Op {
            /// Builds the typed op for (domain, op_type, attributes), or `Opaque` when it does not fit.
            pub fn from_parts(domain: &str, op_type: &str, attrs_in: Vec<Attr>) -> Op {
                if domain.is_empty() || domain == "ai.onnx" {
                    match op_type {
                        $( stringify!($s) if attrs_in.is_empty() => return Op::$s, )*
                        $( stringify!($v) => {
                            let mut a = attrs::$v::default();
                            let mut ok = true;
                            for at in &attrs_in {
                                if !at.doc.is_empty() { ok = false; break; }
                                match at.name.as_str() {
                                    $( $k if a.$f.is_none() => match <$t as AttrType>::from_value(&at.value) {
                                        Some(x) => a.$f = Some(x),
                                        None => { ok = false; break; }
                                    }, )*
                                    _ => { ok = false; break; }
                                }
                            }
                            if ok { return Op::$v(a); }
                        } )*
                        _ => {}
                    }
                }
                if domain == crate::op_ortho::DOMAIN {
                    if let Some(o) = crate::op_ortho::OrthoOp::from_parts(op_type, &attrs_in) {
                        return Op::Ortho(o);
                    }
                }
                Op::Opaque(Opaque { domain: domain.to_string(), op_type: op_type.to_string(), attrs: attrs_in })
            }

            /// The (domain, op type, attributes) of this op. Structural ops have no parts.
            pub fn to_parts(&self) -> Option<(String, String, Vec<Attr>)> {
                match self {
                    Op::Input { .. } | Op::Const(_) | Op::Capture => None,
                    Op::Ortho(o) => Some((crate::op_ortho::DOMAIN.to_string(), o.op_type().to_string(), o.to_attrs())),
                    $( Op::$s => Some((String::new(), stringify!($s).to_string(), Vec::new())), )*
                    $( Op::$v(_a) => {
                        #[allow(unused_mut)]
                        let mut v: Vec<Attr> = Vec::new();
                        $( if let Some(x) = &_a.$f { v.push(Attr::new($k, x.to_value())); } )*
                        Some((String::new(), stringify!($v).to_string(), v))
                    } )*
                    Op::Opaque(o) => Some((o.domain.clone(), o.op_type.clone(), o.attrs.clone())),
                }
            }

            /// The op type name (`MatMul`, `input`, `const`, or an opaque op's type).
            pub fn name(&self) -> &str {
                match self {
                    Op::Input { .. } => "input",
                    Op::Const(_) => "const",
                    Op::Capture => "capture",
                    Op::Ortho(o) => o.op_type(),
                    $( Op::$s => stringify!($s), )*
                    $( Op::$v(_) => stringify!($v), )*
                    Op::Opaque(o) => &o.op_type,
                }
            }

            /// Operand and result counts this op accepts (opaque ops accept anything).
            pub fn arity(&self) -> Arity {
                let (min_in, max_in, min_out, max_out) = match self {
                    Op::Input { .. } | Op::Const(_) | Op::Capture => (0, 0, 1, 1),
                    Op::Ortho(o) => o.arity(),
                    $( Op::$s => ($si, $sx, $so, $so), )*
                    $( Op::$v(_) => ($vi, $vx, $vo, $vox), )*
                    Op::Opaque(_) => (0, VAR, 0, VAR),
                };
                Arity { min_in, max_in, min_out, max_out }
            }

            /// Every op type the IR models, for documentation and `--list-ops`.
            pub fn known_op_types() -> Vec<&'static str> {
                vec![ $( stringify!($s), )* $( stringify!($v), )* ]
            }
        }
    };
}

define_ops! {
    simple {
        Identity(1, 1 => 1), Neg(1, 1 => 1), Abs(1, 1 => 1), Sqrt(1, 1 => 1), Reciprocal(1, 1 => 1),
        Exp(1, 1 => 1), Log(1, 1 => 1), Sin(1, 1 => 1), Cos(1, 1 => 1), Tan(1, 1 => 1), Tanh(1, 1 => 1),
        Asin(1, 1 => 1), Acos(1, 1 => 1), Atan(1, 1 => 1), Sinh(1, 1 => 1), Cosh(1, 1 => 1),
        Asinh(1, 1 => 1), Acosh(1, 1 => 1), Atanh(1, 1 => 1),
        Erf(1, 1 => 1), Sigmoid(1, 1 => 1), Relu(1, 1 => 1), Floor(1, 1 => 1), Ceil(1, 1 => 1),
        Round(1, 1 => 1), Sign(1, 1 => 1), Not(1, 1 => 1), IsNaN(1, 1 => 1), Softplus(1, 1 => 1),
        Softsign(1, 1 => 1), HardSwish(1, 1 => 1), Mish(1, 1 => 1), BitwiseNot(1, 1 => 1),
        Add(2, 2 => 1), Sub(2, 2 => 1), Mul(2, 2 => 1), Div(2, 2 => 1), Pow(2, 2 => 1),
        And(2, 2 => 1), Or(2, 2 => 1), Xor(2, 2 => 1), BitwiseAnd(2, 2 => 1), BitwiseOr(2, 2 => 1),
        BitwiseXor(2, 2 => 1),
        Equal(2, 2 => 1), Less(2, 2 => 1), LessOrEqual(2, 2 => 1), Greater(2, 2 => 1),
        GreaterOrEqual(2, 2 => 1), PRelu(2, 2 => 1),
        MatMul(2, 2 => 1), Expand(2, 2 => 1), Tile(2, 2 => 1), Where(3, 3 => 1), Range(3, 3 => 1),
        Size(1, 1 => 1), NonZero(1, 1 => 1), Squeeze(1, 2 => 1), Unsqueeze(2, 2 => 1),
        Slice(3, 5 => 1), Clip(1, 3 => 1), Max(1, VAR => 1), Min(1, VAR => 1), Sum(1, VAR => 1),
        Mean(1, VAR => 1), GlobalAveragePool(1, 1 => 1), GlobalMaxPool(1, 1 => 1), Det(1, 1 => 1),
    }
    typed {
        Gemm(2, 3 => 1, 1) { alpha: f32 = "alpha" => 1.0, beta: f32 = "beta" => 1.0, trans_a: i64 = "transA" => 0, trans_b: i64 = "transB" => 0 },
        Softmax(1, 1 => 1, 1) { axis: i64 = "axis" => -1 },
        LogSoftmax(1, 1 => 1, 1) { axis: i64 = "axis" => -1 },
        ReduceMean(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceSum(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceMax(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceMin(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceProd(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceL2(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        ReduceSumSquare(1, 2 => 1, 1) { axes: Vec<i64> = "axes", keepdims: i64 = "keepdims" => 1, noop_with_empty_axes: i64 = "noop_with_empty_axes" => 0 },
        LayerNormalization(2, 3 => 1, 3) { axis: i64 = "axis" => -1, epsilon: f32 = "epsilon" => 1e-5, stash_type: i64 = "stash_type" => 1 },
        RMSNormalization(2, 2 => 1, 1) { axis: i64 = "axis" => -1, epsilon: f32 = "epsilon" => 1e-5, stash_type: i64 = "stash_type" => 1 },
        Attention(3, 7 => 1, 4) {
            is_causal: i64 = "is_causal" => 0, kv_num_heads: i64 = "kv_num_heads", q_num_heads: i64 = "q_num_heads",
            qk_matmul_output_mode: i64 = "qk_matmul_output_mode" => 0, scale: f32 = "scale", softcap: f32 = "softcap" => 0.0,
            softmax_precision: i64 = "softmax_precision",
            left_window_size: i64 = "left_window_size" => -1, right_window_size: i64 = "right_window_size" => -1,
        },
        RotaryEmbedding(3, 4 => 1, 1) { interleaved: i64 = "interleaved" => 0, num_heads: i64 = "num_heads" => 0, rotary_embedding_dim: i64 = "rotary_embedding_dim" => 0 },
        Gelu(1, 1 => 1, 1) { approximate: String = "approximate" => String::from("none") },
        LeakyRelu(1, 1 => 1, 1) { alpha: f32 = "alpha" => 0.01 },
        Elu(1, 1 => 1, 1) { alpha: f32 = "alpha" => 1.0 },
        Celu(1, 1 => 1, 1) { alpha: f32 = "alpha" => 1.0 },
        Selu(1, 1 => 1, 1) { alpha: f32 = "alpha" => 1.673_263_2, gamma: f32 = "gamma" => 1.050_701 },
        HardSigmoid(1, 1 => 1, 1) { alpha: f32 = "alpha" => 0.2, beta: f32 = "beta" => 0.5 },
        ThresholdedRelu(1, 1 => 1, 1) { alpha: f32 = "alpha" => 1.0 },
        IsInf(1, 1 => 1, 1) { detect_negative: i64 = "detect_negative" => 1, detect_positive: i64 = "detect_positive" => 1 },
        Mod(2, 2 => 1, 1) { fmod: i64 = "fmod" => 0 },
        Gather(2, 2 => 1, 1) { axis: i64 = "axis" => 0 },
        GatherElements(2, 2 => 1, 1) { axis: i64 = "axis" => 0 },
        GatherND(2, 2 => 1, 1) { batch_dims: i64 = "batch_dims" => 0 },
        ScatterND(3, 3 => 1, 1) { reduction: String = "reduction" => String::from("none") },
        ScatterElements(3, 3 => 1, 1) { axis: i64 = "axis" => 0, reduction: String = "reduction" => String::from("none") },
        Split(1, 2 => 1, VAR) { axis: i64 = "axis" => 0, num_outputs: i64 = "num_outputs", split: Vec<i64> = "split" },
        Concat(1, VAR => 1, 1) { axis: i64 = "axis" },
        Transpose(1, 1 => 1, 1) { perm: Vec<i64> = "perm" },
        Reshape(2, 2 => 1, 1) { allowzero: i64 = "allowzero" => 0 },
        Flatten(1, 1 => 1, 1) { axis: i64 = "axis" => 1 },
        Cast(1, 1 => 1, 1) { to: i64 = "to", saturate: i64 = "saturate" => 1, round_mode: String = "round_mode" => String::from("up") },
        CastLike(2, 2 => 1, 1) { saturate: i64 = "saturate" => 1, round_mode: String = "round_mode" => String::from("up") },
        Shape(1, 1 => 1, 1) { start: i64 = "start" => 0, end: i64 = "end" },
        ConstantOfShape(1, 1 => 1, 1) { value: TensorId = "value" },
        Constant(0, 0 => 1, 1) {
            value: TensorId = "value", value_float: f32 = "value_float", value_floats: Vec<f32> = "value_floats",
            value_int: i64 = "value_int", value_ints: Vec<i64> = "value_ints", value_string: String = "value_string",
        },
        Trilu(1, 2 => 1, 1) { upper: i64 = "upper" => 1 },
        Einsum(1, VAR => 1, 1) { equation: String = "equation" },
        CumSum(2, 2 => 1, 1) { exclusive: i64 = "exclusive" => 0, reverse: i64 = "reverse" => 0 },
        ArgMax(1, 1 => 1, 1) { axis: i64 = "axis" => 0, keepdims: i64 = "keepdims" => 1, select_last_index: i64 = "select_last_index" => 0 },
        ArgMin(1, 1 => 1, 1) { axis: i64 = "axis" => 0, keepdims: i64 = "keepdims" => 1, select_last_index: i64 = "select_last_index" => 0 },
        TopK(2, 2 => 2, 2) { axis: i64 = "axis" => -1, largest: i64 = "largest" => 1, sorted: i64 = "sorted" => 1 },
        Pad(2, 4 => 1, 1) { mode: String = "mode" => String::from("constant") },
        OneHot(3, 3 => 1, 1) { axis: i64 = "axis" => -1 },
        Dropout(1, 3 => 1, 2) { seed: i64 = "seed" },
        Hardmax(1, 1 => 1, 1) { axis: i64 = "axis" => -1 },
        CumProd(2, 2 => 1, 1) { exclusive: i64 = "exclusive" => 0, reverse: i64 = "reverse" => 0 },
        BitShift(2, 2 => 1, 1) { direction: String = "direction" },
        NegativeLogLikelihoodLoss(2, 3 => 1, 1) { ignore_index: i64 = "ignore_index", reduction: String = "reduction" => String::from("mean") },
        MaxPool(1, 1 => 1, 2) { auto_pad: String = "auto_pad" => String::from("NOTSET"), ceil_mode: i64 = "ceil_mode" => 0, dilations: Vec<i64> = "dilations", kernel_shape: Vec<i64> = "kernel_shape", pads: Vec<i64> = "pads", strides: Vec<i64> = "strides", storage_order: i64 = "storage_order" => 0 },
        AveragePool(1, 1 => 1, 1) { auto_pad: String = "auto_pad" => String::from("NOTSET"), ceil_mode: i64 = "ceil_mode" => 0, dilations: Vec<i64> = "dilations", kernel_shape: Vec<i64> = "kernel_shape", pads: Vec<i64> = "pads", strides: Vec<i64> = "strides", count_include_pad: i64 = "count_include_pad" => 0 },
        LpPool(1, 1 => 1, 1) { auto_pad: String = "auto_pad" => String::from("NOTSET"), ceil_mode: i64 = "ceil_mode" => 0, dilations: Vec<i64> = "dilations", kernel_shape: Vec<i64> = "kernel_shape", pads: Vec<i64> = "pads", strides: Vec<i64> = "strides", p: i64 = "p" => 2 },
        Conv(2, 3 => 1, 1) { auto_pad: String = "auto_pad" => String::from("NOTSET"), dilations: Vec<i64> = "dilations", group: i64 = "group" => 1, kernel_shape: Vec<i64> = "kernel_shape", pads: Vec<i64> = "pads", strides: Vec<i64> = "strides" },
        BatchNormalization(5, 5 => 1, 3) { epsilon: f32 = "epsilon" => 1e-5, momentum: f32 = "momentum" => 0.9, training_mode: i64 = "training_mode" => 0 },
        InstanceNormalization(3, 3 => 1, 1) { epsilon: f32 = "epsilon" => 1e-5 },
        MeanVarianceNormalization(1, 1 => 1, 1) { axes: Vec<i64> = "axes" => vec![0, 2, 3] },
        LpNormalization(1, 1 => 1, 1) { axis: i64 = "axis" => -1, p: i64 = "p" => 2 },
        EyeLike(1, 1 => 1, 1) { dtype: i64 = "dtype", k: i64 = "k" => 0 },
        Scatter(3, 3 => 1, 1) { axis: i64 = "axis" => 0 },
        ConvTranspose(2, 3 => 1, 1) { auto_pad: String = "auto_pad" => String::from("NOTSET"), dilations: Vec<i64> = "dilations", group: i64 = "group" => 1, kernel_shape: Vec<i64> = "kernel_shape", pads: Vec<i64> = "pads", strides: Vec<i64> = "strides", output_padding: Vec<i64> = "output_padding", output_shape: Vec<i64> = "output_shape" },
        DepthToSpace(1, 1 => 1, 1) { blocksize: i64 = "blocksize", mode: String = "mode" => String::from("DCR") },
        SpaceToDepth(1, 1 => 1, 1) { blocksize: i64 = "blocksize", mode: String = "mode" => String::from("DCR") },
        ReverseSequence(2, 2 => 1, 1) { batch_axis: i64 = "batch_axis" => 1, time_axis: i64 = "time_axis" => 0 },
        Compress(2, 2 => 1, 1) { axis: i64 = "axis" },
        Shrink(1, 1 => 1, 1) { bias: f32 = "bias" => 0.0, lambd: f32 = "lambd" => 0.5 },
        SoftmaxCrossEntropyLoss(2, 3 => 1, 2) { ignore_index: i64 = "ignore_index", reduction: String = "reduction" => String::from("mean") },
        If(1, 1 => 1, VAR) { then_branch: GraphId = "then_branch", else_branch: GraphId = "else_branch" },
        Loop(2, VAR => 1, VAR) { body: GraphId = "body" },
    }
}

impl Op {
    /// The domain the op belongs to (`""` is the default ONNX domain).
    pub fn domain(&self) -> &str {
        match self {
            Op::Opaque(o) => &o.domain,
            Op::Ortho(_) => crate::op_ortho::DOMAIN,
            _ => "",
        }
    }

    /// Whether the op is a graph input, a constant or a capture (no computation).
    pub fn is_structural(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Const(_) | Op::Capture)
    }

    /// Subgraphs held in the op's attributes.
    pub fn subgraphs(&self) -> Vec<GraphId> {
        match self {
            Op::If(a) => a
                .then_branch
                .iter()
                .chain(a.else_branch.iter())
                .copied()
                .collect(),
            Op::Loop(a) => a.body.iter().copied().collect(),
            Op::Opaque(o) => o.attrs.iter().flat_map(|a| a.value.graphs()).collect(),
            _ => Vec::new(),
        }
    }

    /// Tensors held in the op (a constant's data, tensor attributes).
    pub fn tensors(&self) -> Vec<TensorId> {
        match self {
            Op::Const(t) => vec![*t],
            Op::Input { default } => default.iter().copied().collect(),
            Op::ConstantOfShape(a) => a.value.iter().copied().collect(),
            Op::Constant(a) => a.value.iter().copied().collect(),
            Op::Opaque(o) => o.attrs.iter().flat_map(|a| a.value.tensors()).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the op may have effects beyond its results (randomness, ops of unknown domains),
    /// so DCE and CSE must not remove or merge it.
    pub fn has_side_effects(&self) -> bool {
        match self {
            // An op of another domain is unknown to us, so it may print, log or keep state.
            Op::Opaque(o)
                if !matches!(o.domain.as_str(), "" | "ai.onnx" | crate::op_ortho::DOMAIN) =>
            {
                true
            }
            Op::Opaque(o) => {
                o.op_type.contains("Random")
                    || o.op_type == "Multinomial"
                    || o.op_type == "Bernoulli"
            }
            Op::Dropout(_) => true,
            _ => false,
        }
    }
}
