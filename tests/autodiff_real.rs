//! The autodiff gradient of a 2-block prefix of the real SmolLM2-135M (decomposed spelling),
//! cast to f64, against a central finite difference of the loss along a random direction in the
//! space of all its trainable weights (a directional-derivative check of the full gradient).

mod common;
mod gradcheck;

use common::fixtures;
use gradcheck::Rng;
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::{attrs, DType, Module, Op, TensorData, Type};
use ortho_passes::autodiff::{autodiff, parameters_as_inputs, select_params, AutodiffSpec};

/// Every f32 initializer becomes f64, every `Cast` to f32 a `Cast` to f64, and value types are
/// inferred again, so the whole model computes in f64.
fn to_f64(m: &mut Module) {
    let main = m.main;
    let ids = m.graph(main).node_ids();
    for n in ids {
        let op = m.graph(main).node(n).op.clone();
        match op {
            Op::Const(t) if m.tensor(t).dtype == DType::F32 => {
                let src = m.tensor(t);
                let vals = src.to_f64_vec().expect("f32 initializer readable");
                let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
                let nt = m.add_tensor(TensorData::from_bytes(DType::F64, src.dims.clone(), bytes));
                m.graph_mut(main).node_mut(n).op = Op::Const(nt);
            }
            Op::Cast(a) if a.to == Some(DType::F32.code() as i64) => {
                m.graph_mut(main).node_mut(n).op = Op::Cast(attrs::Cast {
                    to: Some(DType::F64.code() as i64),
                    ..a
                });
            }
            _ => {}
        }
        let g = m.graph_mut(main);
        // f32 values are typed again by inference, now as f64.
        for o in &mut g.node_mut(n).outputs {
            if o.ty.dtype() == Some(DType::F32) {
                o.ty = Type::Unknown;
            }
        }
    }
    ortho_ir::shape::infer_shapes(m);
}

#[test]
fn two_block_prefix_directional_derivative_f64() {
    let path = fixtures().join("smollm2-135m/decomposed.onnx");
    let mut m = ortho_frontends::onnx::import_file(&path).expect("imports");
    to_f64(&mut m);
    let (seq, width) = (6usize, 576usize);
    // The prefix: blocks 0 and 1; loss = Σ h ⊙ probe over the stream after block 1.
    ortho_opt::train_prefix::prefix_with_probe(&mut m, 2, width, DType::F64).expect("prefix");

    let patterns = vec![
        "model.layers.0.*".to_string(),
        "model.layers.1.*".to_string(),
    ];
    let params = select_params(&m, &patterns);
    assert_eq!(params.len(), 18, "9 weights per block");
    let names = parameters_as_inputs(&mut m, &params);
    let r = autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: patterns,
        },
    )
    .expect("autodiff of the prefix");
    assert!(r.unused.is_empty(), "{:?}", r.unused);
    if let Err(d) = ortho_ir::verify::verify_module(&m) {
        panic!("backward graph does not verify: {d:?}");
    }
    let plan = Plan::compile(&m).expect("compiles");

    let mut rng = Rng(2024);
    let ids: Vec<i64> = (0..seq).map(|_| rng.int(0, 49151) as i64).collect();
    let probe: Vec<f64> = (0..seq * width).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let g = m.main_graph();
    let values: Vec<(Vec<usize>, Vec<f64>)> = params
        .iter()
        .map(|&p| {
            let Op::Input { default: Some(t) } = g.node(p.node).op else {
                panic!("parameter is an input now");
            };
            let td = m.tensor(t);
            let shape = td.dims.iter().map(|&d| d as usize).collect();
            (shape, td.to_f64_vec().expect("weights"))
        })
        .collect();
    // A random direction, each tensor's part scaled to the tensor's RMS so every weight moves
    // in proportion to its size.
    let dirs: Vec<Vec<f64>> = values
        .iter()
        .map(|(_, v)| {
            let rms = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
            v.iter().map(|_| rng.uniform(-1.0, 1.0) * rms).collect()
        })
        .collect();
    let run = |step: f64| {
        let mut feeds: Vec<(&str, HostTensor)> = vec![
            (
                "input_ids",
                HostTensor::from_vec(vec![1, seq], ids.clone()).expect("ids"),
            ),
            (
                "probe",
                HostTensor::from_vec(vec![1, seq, width], probe.clone()).expect("probe"),
            ),
        ];
        for ((name, (shape, v)), d) in names.iter().zip(&values).zip(&dirs) {
            let moved: Vec<f64> = v.iter().zip(d).map(|(a, b)| a + step * b).collect();
            feeds.push((
                name.as_str(),
                HostTensor::from_vec(shape.clone(), moved).expect("param"),
            ));
        }
        plan.run(&feeds).expect("runs")
    };
    let base = run(0.0);
    let mut gv = 0.0;
    for ((pname, gname), d) in r.grads.iter().zip(&dirs) {
        let gt = base
            .iter()
            .find(|(n, _)| n == gname)
            .unwrap_or_else(|| panic!("no gradient output for {pname}"));
        gv +=
            gt.1.to_f64_vec()
                .iter()
                .zip(d)
                .map(|(a, b)| a * b)
                .sum::<f64>();
    }
    let loss_of = |o: &[(String, HostTensor)]| {
        o.iter()
            .find(|(n, _)| n == "loss")
            .map(|(_, t)| t.to_f64_vec()[0])
            .expect("loss")
    };
    let h = 1e-4;
    let fd = (loss_of(&run(h)) - loss_of(&run(-h))) / (2.0 * h);
    let rel = (gv - fd).abs() / fd.abs();
    eprintln!("2-block SmolLM2 prefix (f64): g·v = {gv:.12e}, finite difference = {fd:.12e}, relative error {rel:.3e}");
    assert!(
        rel <= 1e-6,
        "directional derivative: relative error {rel:.3e}"
    );
}
