//! Losses appended to a model that has none: the mean token cross-entropy of next-token
//! logits against a labels input.

use super::builder::{vector_tensor, Builder};
use super::AutodiffError;
use ortho_ir::{attrs, DType, Dim, Module, Op, Type};

/// The names [`append_token_cross_entropy`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossEntropy {
    /// The new graph input holding the target token ids (i64, the logits' shape without the
    /// vocabulary axis).
    pub labels: String,
    /// The scalar loss value (also a graph output).
    pub loss: String,
}

/// Appends `loss = mean over tokens of −log softmax(logits)[label]` to the main graph, with a new
/// i64 graph input `labels_name`. The label is selected by a one-hot product, so the gradient
/// flows through rules the model's ops already use (LogSoftmax, Mul, the reductions).
pub fn append_token_cross_entropy(
    m: &mut Module,
    logits_name: &str,
    labels_name: &str,
) -> Result<CrossEntropy, AutodiffError> {
    ortho_ir::shape::infer_shapes(m);
    let logits = *m
        .main_graph()
        .value_names()
        .get(logits_name)
        .ok_or_else(|| AutodiffError::NoLoss(logits_name.to_string()))?;
    let mut b = Builder::new(m);
    let dims = b.dims(logits)?;
    let dt = b.dtype(logits)?;
    let vocab = dims
        .last()
        .and_then(Dim::fixed)
        .ok_or_else(|| AutodiffError::UnknownRank {
            value: logits_name.to_string(),
            node: "the cross-entropy loss (needs a fixed vocabulary size)".into(),
        })?;
    let label_dims = dims[..dims.len() - 1].to_vec();
    let labels =
        b.m.main_graph_mut()
            .add_input(labels_name, Type::tensor(DType::I64, label_dims));
    let logp = b.one(
        Op::LogSoftmax(attrs::LogSoftmax { axis: Some(-1) }),
        &[logits],
        "logp",
    );
    let depth = b.ints(&[vocab], "vocab");
    let values = b.konst(vector_tensor(dt, &[0.0, 1.0]), "onehot_values");
    let onehot = b.one(
        Op::OneHot(attrs::OneHot { axis: Some(-1) }),
        &[labels, depth, values],
        "onehot",
    );
    let picked = b.mul(logp, onehot);
    let r = dims.len() as i64;
    let tok = b.reduce_sum(picked, &[r - 1], false);
    let mean = b.one(
        Op::ReduceMean(attrs::ReduceMean {
            keepdims: Some(0),
            ..Default::default()
        }),
        &[tok],
        "mean",
    );
    let loss = b.neg(mean);
    let loss_name = b.m.main_graph().value_name(loss).to_string();
    let g = b.m.main_graph_mut();
    g.outputs.push(ortho_ir::GraphOutput {
        value: loss,
        name: loss_name.clone(),
    });
    ortho_ir::shape::infer_shapes(m);
    Ok(CrossEntropy {
        labels: labels_name.to_string(),
        loss: loss_name,
    })
}
