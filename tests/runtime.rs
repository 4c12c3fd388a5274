//! The CPU engine (`ortho_codegen::cpu`) and `ortho-opt run`: small hand-built graphs with
//! hand-computed results, bad feeds, taps, supplied kernels; then both SmolLM2 fixtures against
//! onnxruntime's logits.

mod common;

use common::{fixtures, python, run, TempDir};
use ortho_codegen::cpu::{
    elementwise_f32, npy, HostTensor, KernelRegistry, Plan, PlanOptions, RuntimeError,
};
use ortho_ir::fused::{self, Binary, Form, FusedElementwise, Instr};
use ortho_ir::{
    attrs, op_ortho, DType, Dim, GraphOutput, Module, Op, OpsetImport, Output, TensorData, Type,
    ValueId,
};
use std::path::Path;
use std::sync::Arc;

fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

/// `y = Softmax((x + w) * x)` over x: f32 ["n", 3], and the intermediate `s = x + w`.
fn small_module() -> (Module, ValueId) {
    let mut m = Module::new("small");
    m.meta.ir_version = 8;
    m.opsets.push(OpsetImport {
        domain: String::new(),
        version: 17,
    });
    let w = m.add_tensor(TensorData::from_f32(vec![3], &[1.0, 2.0, 3.0]));
    let g = m.main_graph_mut();
    let x = g.add_input("x", Type::tensor(DType::F32, vec![sym("n"), Dim::Fixed(3)]));
    let wn = g.add_node(
        Op::Const(w),
        vec![],
        vec![Output::new(
            "w",
            Type::tensor(DType::F32, vec![Dim::Fixed(3)]),
        )],
    );
    let wv = ValueId {
        node: wn,
        output: 0,
    };
    let s = g.add_node(
        Op::Add,
        vec![Some(x), Some(wv)],
        vec![Output::new("s", Type::Unknown)],
    );
    let sv = ValueId { node: s, output: 0 };
    let p = g.add_node(
        Op::Mul,
        vec![Some(sv), Some(x)],
        vec![Output::new("p", Type::Unknown)],
    );
    let pv = ValueId { node: p, output: 0 };
    let y = g.add_node(
        Op::Softmax(attrs::Softmax { axis: Some(-1) }),
        vec![Some(pv)],
        vec![Output::new("y", Type::Unknown)],
    );
    g.outputs.push(GraphOutput {
        value: ValueId { node: y, output: 0 },
        name: "y".into(),
    });
    (m, sv)
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = v.iter().map(|x| (x - m).exp()).sum();
    v.iter().map(|x| (x - m).exp() / z).collect()
}

#[test]
fn small_graph_by_hand() {
    let (m, _) = small_module();
    let plan = Plan::compile(&m).expect("compile");
    let x = HostTensor::from_vec(vec![2, 3], vec![0.0f32, 1.0, -1.0, 2.0, 0.5, 0.0]).expect("x");
    let out = plan.run(&[("x", x)]).expect("run");
    assert_eq!(out[0].0, "y");
    let y = out[0].1.as_f32().expect("f32");
    // (x + w) * x, row by row
    let want: Vec<f64> = [softmax(&[0.0, 3.0, -2.0]), softmax(&[6.0, 1.25, 0.0])].concat();
    for (g, w) in y.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
}

#[test]
fn bad_feeds_error_clearly() {
    let (m, _) = small_module();
    let plan = Plan::compile(&m).expect("compile");
    let err = |feeds: &[(&str, HostTensor)]| plan.run(feeds).expect_err("must fail").to_string();
    let e = err(&[]);
    assert!(
        e.contains("missing input 'x'") && e.contains("x f32[n, 3]"),
        "{e}"
    );
    let e = err(&[(
        "x",
        HostTensor::from_vec(vec![1, 3], vec![1i64, 2, 3]).expect("t"),
    )]);
    assert!(
        e.contains("input 'x'") && e.contains("expected dtype f32, got i64"),
        "{e}"
    );
    let e = err(&[(
        "x",
        HostTensor::from_vec(vec![3, 2], vec![0.0f32; 6]).expect("t"),
    )]);
    assert!(
        e.contains("input 'x'") && e.contains("expected shape [n, 3]"),
        "{e}"
    );
    let e = err(&[(
        "x",
        HostTensor::from_vec(vec![3], vec![0.0f32; 3]).expect("t"),
    )]);
    assert!(e.contains("input 'x'") && e.contains("[3]"), "{e}");
    let e = err(&[
        (
            "x",
            HostTensor::from_vec(vec![1, 3], vec![0.0f32; 3]).expect("t"),
        ),
        ("z", HostTensor::scalar(1.0f32)),
    ]);
    assert!(e.contains("unknown input 'z'"), "{e}");
    assert!(matches!(
        plan.run(&[]),
        Err(RuntimeError::MissingInput { .. })
    ));
}

#[test]
fn taps_stream_intermediate_values() {
    let (m, s) = small_module();
    let plan = Plan::compile(&m).expect("compile");
    let x = HostTensor::from_vec(vec![1, 3], vec![1.0f32, 1.0, 1.0]).expect("x");
    let mut seen = Vec::new();
    plan.run_with(&[("x", x)], &[s], &mut |v, t| {
        seen.push((v, t.as_f32().expect("f32").to_vec()))
    })
    .expect("run");
    assert_eq!(seen, vec![(s, vec![2.0, 3.0, 4.0])]);
}

/// An op of another domain runs through a supplied kernel, and is an error naming it without one.
#[test]
fn supplied_kernels_and_unknown_ops() {
    let mut m = Module::new("custom");
    m.meta.ir_version = 8;
    m.opsets.push(OpsetImport {
        domain: String::new(),
        version: 17,
    });
    m.opsets.push(OpsetImport {
        domain: op_ortho::DOMAIN.into(),
        version: 1,
    });
    let g = m.main_graph_mut();
    let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(2)]));
    let y = g.add_input("y", Type::tensor(DType::F32, vec![Dim::Fixed(1)]));
    // z = x * 2 + y; the engine has no kernel of its own for fused nodes (the JIT is not wired
    // in by default), so a supplied one runs it.
    let op = FusedElementwise {
        program: vec![
            Instr::Input(0),
            Instr::Const(2.0),
            Instr::Binary(Binary::Mul, 0, 1),
            Instr::Input(1),
            Instr::Binary(Binary::Add, 2, 3),
        ],
        forms: vec![Form::Full, Form::Scalar],
    }
    .to_op();
    let n = g.add_node(
        op,
        vec![Some(x), Some(y)],
        vec![Output::new("z", Type::Unknown)],
    );
    g.outputs.push(GraphOutput {
        value: ValueId { node: n, output: 0 },
        name: "z".into(),
    });
    let e = Plan::compile(&m).expect_err("no kernel").to_string();
    assert!(
        e.contains("no kernel for op 'FusedElementwise'") && e.contains("domain 'ortho'"),
        "{e}"
    );
    let mut reg = KernelRegistry::new();
    reg.register(
        op_ortho::DOMAIN,
        fused::OP_TYPE,
        Arc::new(|_site| {
            Ok(elementwise_f32(Arc::new(
                |ins: &[&[f32]], out: &mut [f32]| {
                    for i in 0..out.len() {
                        out[i] = ins[0][i] * 2.0 + ins[1][i];
                    }
                },
            )))
        }),
    );
    let plan = Plan::compile_with(
        &m,
        &PlanOptions {
            kernels: reg,
            ..PlanOptions::default()
        },
    )
    .expect("compile");
    let out = plan
        .run(&[
            (
                "x",
                HostTensor::from_vec(vec![2], vec![1.0f32, 2.0]).expect("x"),
            ),
            (
                "y",
                HostTensor::from_vec(vec![1], vec![10.0f32]).expect("y"),
            ),
        ])
        .expect("run");
    assert_eq!(out[0].1.as_f32().expect("f32"), &[12.0, 14.0]);
}

/// `ortho-opt run` reads .npy feeds and writes .npy outputs; a bad feed fails with a message.
#[test]
fn run_command_writes_npy() {
    let (m, _) = small_module();
    let tmp = TempDir::new("run-cmd");
    let model = tmp.path().join("small.onnx");
    ortho_frontends::export_file(&m, &model, &Default::default()).expect("export");
    let xin = tmp.path().join("x.npy");
    npy::write(
        &xin,
        &HostTensor::from_vec(vec![1, 3], vec![0.0f32, 0.0, 0.0]).expect("x"),
    )
    .expect("write");
    let outdir = tmp.path().join("out");
    let p = |x: &Path| x.to_str().expect("utf8").to_string();
    let arg_in = format!("x={}", p(&xin));
    let r = run(&["run", &p(&model), "--input", &arg_in, "-o", &p(&outdir)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("y: f32 [1, 3]"), "{}", r.stdout);
    let y = npy::read(&outdir.join("y.npy")).expect("read");
    for v in y.as_f32().expect("f32") {
        assert!((v - 1.0 / 3.0).abs() < 1e-7);
    }
    npy::write(
        &xin,
        &HostTensor::from_vec(vec![1, 3], vec![0i32, 0, 0]).expect("x"),
    )
    .expect("write");
    let r = run(&["run", &p(&model), "--input", &arg_in, "-o", &p(&outdir)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("input 'x': expected dtype f32, got i32"),
        "{}",
        r.stderr
    );
    let r = run(&["run", &p(&model), "--input", "x", "-o", &p(&outdir)]);
    assert!(
        r.code != 0 && r.stderr.contains("NAME=FILE.npy"),
        "{}",
        r.stderr
    );
}

/// Logits of a fixture on two windows of real text vs onnxruntime's (max abs ≤ 1e-3, same argmax).
fn logits_match_onnxruntime(style: &str) {
    let f = fixtures();
    let model = f.join(format!("smollm2-135m/{style}.onnx"));
    let tmp = TempDir::new(&format!("ort-{style}"));
    let ids_path = tmp.path().join("ids.npy");
    let ref_path = tmp.path().join("ref.npy");
    let script = r#"
import sys, numpy as np, onnxruntime as ort
model, tokens, ids_out, ref_out = sys.argv[1:5]
ids = np.fromfile(tokens, dtype="<u2")[:256].astype(np.int64).reshape(2, 128)
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.log_severity_level = 3
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
np.save(ids_out, ids)
np.save(ref_out, s.run(None, {"input_ids": ids})[0])
"#;
    let tokens = f.join("text/sotu_eval.smollm2-135m.bin");
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .args([&model, &tokens, &ids_path, &ref_path])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "onnxruntime: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = npy::read(&ids_path).expect("ids");
    let want = npy::read(&ref_path).expect("ref");
    let m = ortho_frontends::import_file(&model).expect("import");
    let plan = Plan::compile(&m).expect("compile");
    let got = plan.run(&[("input_ids", ids)]).expect("run").remove(0).1;
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.as_f32().expect("f32"), want.as_f32().expect("f32"));
    let max_abs = g
        .iter()
        .zip(w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let v = 49152;
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &x)| if x > acc.1 { (i, x) } else { acc },
            )
            .0
    };
    let agree = g
        .chunks(v)
        .zip(w.chunks(v))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    eprintln!("{style}: max |logit − onnxruntime| = {max_abs:e}, argmax agreement {agree}/256");
    assert!(
        max_abs <= 1e-3,
        "{style}: max abs logit difference {max_abs}"
    );
    assert_eq!(agree, 256, "{style}: argmax differs");
}

#[test]
fn decomposed_logits_match_onnxruntime() {
    logits_match_onnxruntime("decomposed");
}

#[test]
fn fused_logits_match_onnxruntime() {
    logits_match_onnxruntime("fused");
}
