//! `denoise-rotate` on the real SmolLM2-135M fixture (decomposed): the rotation-only graph is
//! equivalent to the original for both variants (`ortho-opt compare`, 8 windows × 128 of
//! sotu_eval: relative ΔPPL ≤ 1e-4, max |Δlogit| ≤ 1e-3, every argmax equal), the per-layer
//! variant adds exactly one d×d boundary matrix per layer boundary and the global one nothing;
//! with zero iterations, rotation then pruning writes exactly the same model as plain pruning;
//! before `fold-norms` the pass is refused and nothing is written.

mod common;

use common::{compare_on_sotu, fixtures, run, stat, TempDir};

const VOCAB_X_D: u64 = 49_152 * 576;
const D: u64 = 576;

/// Runs `pipeline` (with a small calibration set) on the decomposed fixture into `out`.
fn opt(pipeline: &str, out: &std::path::Path) -> ortho_opt::DriverOutput {
    common::opt_smollm(pipeline, out, true)
}

/// Runs a rotation-only pipeline and proves the result equivalent; `extra` parameters expected.
fn prove(pipeline: &str, extra: u64, boundaries: u64) {
    let tag: String = pipeline
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tmp = TempDir::new(&format!("denoise-{tag}"));
    let out = tmp.path().join("rotated.onnx");
    let r = opt(pipeline, &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{pipeline}:\n{}", r.stderr);
    assert_eq!(stat(&r.stderr, "denoise-rotate.layers"), 30);
    assert_eq!(stat(&r.stderr, "denoise-rotate.boundaries"), boundaries);
    // The entropy went down in every layer (one Adam step from the identity).
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("entropy before/after per layer"))
        .expect("entropy report");
    assert!(line.contains("29: "), "{line}");
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let before = ortho_frontends::import_file(&model)
        .expect("import")
        .parameter_count();
    let after = ortho_frontends::import_file(&out)
        .expect("re-import")
        .parameter_count();
    assert_eq!(
        after,
        before + extra,
        "parameters before {before}, after {after}"
    );
    let c = compare_on_sotu(&model.to_string_lossy(), &out.to_string_lossy());
    let num = |k: &str| {
        c[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {c}"))
    };
    let (rel, dmax, agree) = (
        num("delta_ppl_rel").abs(),
        num("max_abs_logit_diff"),
        num("argmax_agreement"),
    );
    eprintln!("{pipeline}: relative ΔPPL {rel:e}, max |Δlogit| {dmax:e}, argmax agreement {agree}");
    assert!(rel <= 1e-4, "{pipeline}: relative ΔPPL {rel}");
    assert!(dmax <= 1e-3, "{pipeline}: max |Δlogit| {dmax}");
    assert_eq!(agree, 1.0);
}

#[test]
fn denoise_per_layer_rotation_only_is_equivalent() {
    // fold-norms unties the head (final norm gain); per-layer adds 29 boundary matrices.
    prove(
        "fold-norms,denoise-rotate{mode=per-layer method=magnitude iters=1}",
        VOCAB_X_D + 29 * D * D,
        29,
    );
}

#[test]
fn denoise_global_rotation_only_is_equivalent() {
    prove(
        "fold-norms,denoise-rotate{method=wanda iters=1}",
        VOCAB_X_D,
        0,
    );
}

#[test]
fn denoise_identity_then_prune_equals_plain_prune() {
    let tmp = TempDir::new("denoise-identity");
    let (a, b) = (
        tmp.path().join("plain.onnx"),
        tmp.path().join("denoised.onnx"),
    );
    let plain = "fold-norms,prune{method=wanda pattern=2:4}";
    let r = opt(plain, &a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = opt(
        "fold-norms,denoise-rotate{mode=per-layer method=wanda iters=0},prune{method=wanda pattern=2:4}",
        &b,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(stat(&r.stderr, "denoise-rotate.boundaries"), 0);
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(x.len() > 100_000_000);
    assert!(
        x == y,
        "the two models differ ({} vs {} bytes)",
        x.len(),
        y.len()
    );
}

#[test]
fn denoise_refused_before_fold_norms() {
    let tmp = TempDir::new("denoise-refuse");
    let out = tmp.path().join("rotated.onnx");
    let r = opt("denoise-rotate{method=magnitude iters=1}", &out);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("the residual stream does not admit rotations")
            && r.stderr.contains("input_layernorm")
            && r.stderr.contains("run fold-norms first"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn denoise_sparsegpt_needs_calibration() {
    let tmp = TempDir::new("denoise-nocalib");
    let out = tmp.path().join("rotated.onnx");
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let r = run(&[
        &model.to_string_lossy(),
        "-o",
        &out.to_string_lossy(),
        "--pass-pipeline=fold-norms,denoise-rotate{method=sparsegpt}",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("needs calibration data"), "{}", r.stderr);
    assert!(!out.exists());
}
