//! The first blocks of a decoder with a probe loss, for gradient checks of a whole model prefix:
//! `loss = Σ h ⊙ probe` over the residual stream `h` after block `blocks − 1` (a random `probe`
//! makes every component of the stream's gradient matter). Shared by `tests/autodiff_real.rs`
//! (f64, against finite differences) and `benches/train.rs` (f32, against PyTorch).

use crate::train::TrainLoopError;
use ortho_ir::{attrs, DType, Dim, GraphOutput, Module, Op, Output, Type, ValueId};

/// Cuts `m` (the decomposed SmolLM2 spelling: block outputs named
/// `model.layers.{i}/resid_mlp_out`) after `blocks` blocks, adds an input `probe` of the
/// stream's shape (`[batch, seq, width]`, `dtype`) and makes `loss = ReduceSum(h ⊙ probe)` the
/// only output; everything the loss does not use is removed.
pub fn prefix_with_probe(
    m: &mut Module,
    blocks: usize,
    width: usize,
    dtype: DType,
) -> Result<(), TrainLoopError> {
    let stream = format!("model.layers.{}/resid_mlp_out", blocks.saturating_sub(1));
    let g = m.main_graph_mut();
    let h = *g
        .value_names()
        .get(stream.as_str())
        .ok_or_else(|| TrainLoopError::MissingOutput(stream.clone()))?;
    // The probe carries the stream's symbolic batch and sequence dims, so its broadcasting
    // against the stream is known statically.
    let ids = *g
        .value_names()
        .get("input_ids")
        .ok_or_else(|| TrainLoopError::MissingOutput("input_ids".into()))?;
    let mut dims = g
        .value_type(ids)
        .as_tensor()
        .and_then(|t| t.shape.clone())
        .ok_or_else(|| TrainLoopError::Data("input_ids has no known rank".into()))?;
    dims.push(Dim::Fixed(width as i64));
    let probe = g.add_input("probe", Type::tensor(dtype, dims));
    let prod = g.add_node(
        Op::Mul,
        vec![Some(h), Some(probe)],
        vec![Output::new("probed", Type::Unknown)],
    );
    let loss = g.add_node(
        Op::ReduceSum(attrs::ReduceSum {
            keepdims: Some(0),
            ..Default::default()
        }),
        vec![Some(ValueId {
            node: prod,
            output: 0,
        })],
        vec![Output::new("loss", Type::Unknown)],
    );
    g.outputs = vec![GraphOutput {
        value: ValueId {
            node: loss,
            output: 0,
        },
        name: "loss".into(),
    }];
    ortho_passes::dce(m);
    ortho_ir::shape::infer_shapes(m);
    Ok(())
}
