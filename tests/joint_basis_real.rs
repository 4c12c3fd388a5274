//! `joint-basis` on the real SmolLM2-135M fixture (decomposed), two leading layers: the report
//! (split-half noise, one certificate line per block input) leaves the model's function
//! unchanged, `fold=true` is an exact rewrite (`ortho-opt compare`, 8 windows × 128 of
//! sotu_eval: relative ΔPPL ≤ 1e-6, every argmax equal) adding one d×d boundary per changed
//! layer boundary, and before `fold-norms` the pass is refused with nothing written.

mod common;

use common::{compare_on_sotu, fixtures, run, stat, TempDir};

const D: u64 = 576;
const VOCAB_X_D: u64 = 49_152 * 576;

/// Runs `pipeline` with 4 × 64 calibration tokens in two chunks (so split-half resampling has
/// two halves).
fn opt(pipeline: &str, out: &std::path::Path) -> ortho_opt::DriverOutput {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let args: Vec<String> = vec![
        model.to_string_lossy().into_owned(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
        format!("--pass-pipeline={pipeline}"),
        "--statistics".into(),
        "--calib-text".into(),
        f.join("text/sotu_calib.txt").to_string_lossy().into_owned(),
        "--tokenizer".into(),
        f.join("smollm2-135m/tokenizer.json")
            .to_string_lossy()
            .into_owned(),
        "--calib-samples".into(),
        "4".into(),
        "--calib-seqlen".into(),
        "64".into(),
        "--calib-chunk".into(),
        "2".into(),
        "--calib-quiet".into(),
    ];
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&refs)
}

fn compare(out: &std::path::Path) -> (f64, f64, f64) {
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let c = compare_on_sotu(&model.to_string_lossy(), &out.to_string_lossy());
    let num = |k: &str| {
        c[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {c}"))
    };
    (
        num("delta_ppl_rel").abs(),
        num("max_abs_logit_diff"),
        num("argmax_agreement"),
    )
}

fn params(p: &std::path::Path) -> u64 {
    ortho_frontends::import_file(p)
        .expect("import")
        .parameter_count()
}

#[test]
fn joint_basis_fold_is_exact_and_reports_certificates() {
    let tmp = TempDir::new("joint-basis-fold");
    let out = tmp.path().join("folded.onnx");
    let r = opt("fold-norms,joint-basis{layers=2 fold=true sweeps=3}", &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{}", r.stderr);
    assert_eq!(stat(&r.stderr, "joint-basis.inputs"), 4);
    // Layers 0 and 1 get their own basis, the rest keep the identity: boundaries 0→1, 1→2.
    assert_eq!(stat(&r.stderr, "joint-basis.boundaries"), 2);
    assert!(r.stderr.contains("split-half estimate"), "{}", r.stderr);
    for input in [
        "layer 0 attention",
        "layer 0 mlp",
        "layer 1 attention",
        "layer 1 mlp",
    ] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(input))
            .unwrap_or_else(|| panic!("no report for {input}:\n{}", r.stderr));
        assert!(
            line.contains("certified") && line.contains("identified"),
            "{line}"
        );
    }
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    // fold-norms unties the head (final norm gain); two boundary matrices.
    assert_eq!(params(&out), params(&model) + VOCAB_X_D + 2 * D * D);
    let (rel, dmax, agree) = compare(&out);
    eprintln!("joint-basis fold: relative ΔPPL {rel:e}, max |Δlogit| {dmax:e}, argmax {agree}");
    assert!(rel <= 1e-6, "relative ΔPPL {rel}");
    assert_eq!(agree, 1.0);
}

#[test]
fn joint_basis_refused_before_fold_norms() {
    let tmp = TempDir::new("joint-basis-refuse");
    let out = tmp.path().join("out.onnx");
    let r = opt("joint-basis{layers=1}", &out);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("the residual stream does not admit rotations")
            && r.stderr.contains("run fold-norms first"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}
