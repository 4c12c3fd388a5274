//! `lora-merge`: folds every `lora` update back into one dense weight `W0 + A·B`, computed in
//! f64 from the (possibly trained) tensors and cast once; the graph is the input of `lora`
//! again, each weight a constant under its own name. Needs the tensors `<weight>.lora_base`,
//! `.lora_a`, `.lora_b` as constants or defaulted graph inputs.

use super::lora::parse_doc;
use super::merge::remove_dead_chain;
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use ortho_ir::{Dim, Module, Op, Output, TensorData, Type, ValueId};

crate::declare_pass! {
    name: "lora-merge",
    summary: "Folds every LoRA update back into one dense weight W0 + A·B (f64, cast once).",
    run: run_pass,
}

/// Merges every LoRA update of `m`; returns how many.
pub fn lora_merge(m: &mut Module) -> Result<usize, PassError> {
    let g = m.main_graph();
    let order = g
        .toposort()
        .map_err(|_| PassError::new("the main graph has a cycle"))?;
    let found: Vec<_> = order
        .into_iter()
        .filter_map(|n| parse_doc(&g.node(n).doc).map(|(r, stem)| (n, r, stem)))
        .collect();
    let names = g.value_names();
    let mut merged = Vec::new();
    for (n, r, stem) in &found {
        let read = |suffix: &str| -> Result<(Vec<f64>, Vec<i64>), PassError> {
            let name = format!("{stem}.{suffix}");
            let bad = || {
                PassError::at_main(
                    m,
                    *n,
                    format!("LoRA tensor '{name}' is missing or not float"),
                )
                .with_kind(PassErrorKind::Weights)
            };
            let v = names.get(&name).ok_or_else(bad)?;
            let t = match m.main_graph().node(v.node).op {
                Op::Const(t) | Op::Input { default: Some(t) } => m.tensor(t),
                _ => return Err(bad()),
            };
            Ok((t.to_f64_vec().ok_or_else(bad)?, t.dims.clone()))
        };
        let (w, dims) = read("lora_base")?;
        let (a, _) = read("lora_a")?;
        let (b, _) = read("lora_b")?;
        let (rows, cols) = (dims[0] as usize, dims.get(1).copied().unwrap_or(1) as usize);
        if a.len() != rows * r || b.len() != r * cols || w.len() != rows * cols {
            return Err(PassError::at_main(
                m,
                *n,
                format!("LoRA weight '{stem}': tensor sizes disagree"),
            )
            .with_kind(PassErrorKind::Weights));
        }
        let mut out = w;
        for i in 0..rows {
            for k in 0..*r {
                let x = a[i * r + k];
                for j in 0..cols {
                    out[i * cols + j] += x * b[k * cols + j];
                }
            }
        }
        merged.push((*n, rows, cols, out));
    }
    for (n, rows, cols, w) in &merged {
        let v = ValueId {
            node: *n,
            output: 0,
        };
        let name = m.main_graph().value_name(v).to_string();
        let t = m.add_tensor(TensorData::from_f32(
            vec![*rows as i64, *cols as i64],
            &w.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        ));
        let ty = Type::tensor(
            ortho_ir::DType::F32,
            vec![Dim::Fixed(*rows as i64), Dim::Fixed(*cols as i64)],
        );
        let g = m.main_graph_mut();
        g.node_mut(*n).outputs[0].name = format!("{name}.merged_away");
        let k = g.add_node(Op::Const(t), Vec::new(), vec![Output::new(name, ty)]);
        g.replace_all_uses(v, ValueId { node: k, output: 0 });
        remove_dead_chain(m, *n);
    }
    if !merged.is_empty() {
        ortho_ir::shape::infer_shapes(m);
    }
    Ok(merged.len())
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let n = lora_merge(m)?;
    cx.note(format!("{n} LoRA weights merged"));
    cx.stat("weights", n as u64);
    Ok(PassResult::changed(n > 0))
}
