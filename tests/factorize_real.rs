//! `kron-factorize` / `lowrank-factorize` on SmolLM2-135M (decomposed fixture):
//! - at full rank the factorization is exact: max |Δlogit| ≤ 1e-3 and relative ΔPPL ≤ 1e-5
//!   on 8 × 128 tokens of sotu_eval (our engine, `ortho-opt compare`);
//! - onnxruntime runs the exported (lowered) form with the logits our engine computes with the
//!   fused `ortho.FactorizedLinear` kernel: max |Δ| ≤ 1e-4 × max |logit|. (The goal is
//!   1e-5; at half the parameters the compressed model amplifies f32 rounding: even the same
//!   lowered graph differs by ~2e-5 × max |logit| between onnxruntime and our engine, against
//!   ~3e-6 for the dense model. The measured values are printed.);
//! - the same with `calib=true` (activation-aware, 4 × 64 calibration tokens): the whitening is
//!   undone exactly;
//! - bad options fail with an error naming the matrix, exit 1, nothing written; `calib=true`
//!   without calibration data fails with `missing_calibration`'s message, nothing written.

mod common;

use common::{compare_on_sotu, fixtures, opt_smollm, python, TempDir};
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_passes::transforms::kron_factorize::{kron_factorize, KronFactorizeOptions};
use ortho_passes::transforms::lowrank_factorize::{lowrank_factorize, LowrankFactorizeOptions};

fn exact_at_full_rank(pipeline: &str) {
    let tmp = TempDir::new("factorize-full");
    let out = tmp.path().join("full.onnx");
    // Activation-aware pipelines get 4 × 64 tokens of calibration.
    let r = opt_smollm(pipeline, &out, pipeline.contains("calib=true"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let c = compare_on_sotu(&model.to_string_lossy(), &out.to_string_lossy());
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k} in {c}"));
    let (rel, dmax) = (num("delta_ppl_rel").abs(), num("max_abs_logit_diff"));
    eprintln!("{pipeline}: max |Δlogit| {dmax:e}, relative ΔPPL {rel:e}");
    assert!(dmax <= 1e-3, "{pipeline}: max |Δlogit| {dmax}");
    assert!(rel <= 1e-5, "{pipeline}: relative ΔPPL {rel}");
}

#[test]
fn kron_full_rank_is_exact() {
    exact_at_full_rank("kron-factorize{rank=full}");
}

#[test]
fn lowrank_full_rank_is_exact() {
    exact_at_full_rank("lowrank-factorize{rank=full}");
}

/// With calibration the fit is of the whitened weight; undoing the whitening must give `W`
/// back at full rank. A few blocks and small first factors: a full-rank Kronecker sum at
/// 24×24 factors costs ~48× the dense multiply-adds (the whole model so factorized took 27
/// minutes to compare on the shared machine, and one block at 24×24 peaked at 11.6 GB in the
/// kernel's per-term intermediates); at 4×4 the sum has 16 terms.
#[test]
fn calibrated_full_rank_is_exact() {
    exact_at_full_rank("lowrank-factorize{rank=full calib=true layers=0-3}");
    exact_at_full_rank("kron-factorize{rank=full shapes=4x4 calib=true layers=0-3}");
}

/// Our engine on the module with the fused op against onnxruntime on its lowered export, for a
/// Kronecker sum (blocks 0-3) and a low-rank product (blocks 4-7) at half the parameters. (One
/// factorization per module: the structure analysis does not yet follow the stream through a
/// factorized linear, so a second factorizing pass would be refused.)
#[test]
fn onnxruntime_agrees_with_the_fused_kernel() {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let tmp = TempDir::new("factorize-ort");
    // 64 tokens of sotu_eval.
    let bytes = std::fs::read(f.join("text/sotu_eval.smollm2-135m.bin")).expect("tokens");
    let ids: Vec<i64> = bytes
        .chunks_exact(2)
        .take(64)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as i64)
        .collect();
    for kind in ["kron", "lowrank"] {
        let mut m = ortho_frontends::import_file(&model).expect("import");
        let layers = |l: Vec<usize>| ortho_passes::selection::BlockSelection(Some(l));
        if kind == "kron" {
            let o = KronFactorizeOptions {
                budget: 0.5,
                layers: layers(vec![0, 1, 2, 3]),
                ..KronFactorizeOptions::default()
            };
            kron_factorize(&mut m, &o, None).expect("kron-factorize");
        } else {
            let o = LowrankFactorizeOptions {
                budget: 0.5,
                layers: layers(vec![4, 5, 6, 7]),
                ..LowrankFactorizeOptions::default()
            };
            lowrank_factorize(&mut m, &o, None).expect("lowrank-factorize");
        }
        let plan = Plan::compile(&m).expect("compile");
        let feed = HostTensor::from_vec(vec![1, ids.len()], ids.clone()).expect("feed");
        let outs = plan.run(&[("input_ids", feed)]).expect("run");
        let ours: Vec<f32> = outs[0].1.as_f32().expect("f32 logits").to_vec();
        drop(plan);
        // Export (lowered) and run onnxruntime.
        let onnx = tmp.path().join(format!("{kind}.onnx"));
        ortho_passes::transforms::lower_ortho(&mut m).expect("lower");
        ortho_frontends::export_file(&m, &onnx, &Default::default()).expect("export");
        // Our engine on the lowered graph too: the difference the kernel itself makes.
        let plan = Plan::compile(&m).expect("compile lowered");
        let feed = HostTensor::from_vec(vec![1, ids.len()], ids.clone()).expect("feed");
        let outs = plan.run(&[("input_ids", feed)]).expect("run lowered");
        let lowered: Vec<f32> = outs[0].1.as_f32().expect("f32 logits").to_vec();
        drop(plan);
        let ids_txt: Vec<String> = ids.iter().map(|v| v.to_string()).collect();
        let logits = tmp.path().join(format!("{kind}.bin"));
        let script = format!(
            "import numpy as np, onnxruntime as ort\n\
             so = ort.SessionOptions(); so.intra_op_num_threads = 2\n\
             s = ort.InferenceSession(r'{}', so, providers=['CPUExecutionProvider'])\n\
             ids = np.array([[{}]], dtype=np.int64)\n\
             s.run(None, {{'input_ids': ids}})[0].astype(np.float32).tofile(r'{}')\n",
            onnx.display(),
            ids_txt.join(","),
            logits.display()
        );
        let out = std::process::Command::new(python())
            .arg("-c")
            .arg(script)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{kind}: onnxruntime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<f32> = std::fs::read(&logits)
            .expect("ort logits")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(theirs.len(), ours.len());
        let scale = ours.iter().fold(0f32, |a, &x| a.max(x.abs())) as f64;
        let diff = ours
            .iter()
            .zip(&theirs)
            .fold(0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
        let kernel_diff = ours
            .iter()
            .zip(&lowered)
            .fold(0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
        let lowered_diff = lowered
            .iter()
            .zip(&theirs)
            .fold(0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
        eprintln!(
            "{kind}: max |Δlogit|: onnxruntime vs fused kernel {diff:e}, fused vs lowered (engine) {kernel_diff:e}, lowered engine vs onnxruntime {lowered_diff:e}; max |logit| {scale}"
        );
        assert!(
            diff <= 1e-4 * scale,
            "{kind}: max |Δlogit| {diff} vs max |logit| {scale}"
        );
    }
}

/// Bad options: an error naming the matrix, exit 1, no output file.
#[test]
fn bad_options_name_the_matrix_and_write_nothing() {
    let tmp = TempDir::new("factorize-bad");
    let out = tmp.path().join("bad.onnx");
    for (pipeline, needle) in [
        ("kron-factorize{shapes=5x2}", "layer 0 q weight"),
        (
            "lowrank-factorize{rank=577}",
            "rank 577 is above the full rank",
        ),
        ("kron-factorize{budget=1.5}", "budget 1.5 is outside (0, 1)"),
        ("lowrank-factorize{budget=0}", "outside (0, 1)"),
        // Activation-aware without calibration data: the typed error, before any work.
        (
            "kron-factorize{calib=true}",
            "kron-factorize needs calibration data",
        ),
        (
            "lowrank-factorize{budget=0.5 calib=true}",
            "lowrank-factorize needs calibration data",
        ),
    ] {
        let r = opt_smollm(pipeline, &out, false);
        assert_eq!(r.code, 1, "{pipeline}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{pipeline}: {}", r.stderr);
        assert!(!out.exists(), "{pipeline} wrote {}", out.display());
    }
}
