//! Structure analysis and the residual rotation on the real SmolLM2-135M fixtures (decomposed
//! opset 17 and fused opset 23). `analyze` must find 30 blocks of GQA attention (9 query / 3 KV
//! heads of 64, RoPE) and SwiGLU, and a tied head, with nothing unmatched; after
//! `fold-norms,rotate-residual{kind=haar seed=7}` (or Hadamard on the stream plus per-KV-head
//! `rotate-heads`, or `rotate-heads` alone) the exported model loads in onnxruntime, has
//! the same parameters plus one untied head, and its logits and perplexity match the original
//! (max |Δlogit| ≤ 1e-3, |ΔPPL| ≤ 1e-4 relative) through our own engine (`ortho-opt compare`,
//! 8 windows × 128 of sotu_eval); onnxruntime checks that the output loads and runs.

mod common;

use common::{compare_on_sotu, fixtures, python_tool, run, TempDir};

const VOCAB_X_D: u64 = 49_152 * 576;

fn json_number(text: &str, key: &str) -> f64 {
    let k = format!("\"{key}\": ");
    let at = text
        .find(&k)
        .map(|i| i + k.len())
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    let num: String = text[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect();
    num.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {text}"))
}

fn analyze(style: &str) {
    let model = fixtures().join(format!("smollm2-135m/{style}.onnx"));
    let r = run(&["analyze", &model.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = &r.stdout;
    for want in [
        "residual stream: d = 576, 61 stream tensors, pre-norm",
        "blocks: 30",
        "blocks 0–29 (30×)",
        "attention q 576→576, k 576→192, v 576→192, o 576→576; 9 heads, 3 KV heads (GQA, groups of 3), head_dim 64, RoPE",
        "SwiGLU MLP 576→1536→576",
        "576→49152 (tied to the embedding",
        "norms: 61 on the stream (61 with a gain γ ≠ 1)",
        "unmatched: none",
        "admits signed permutations",
    ] {
        assert!(t.contains(want), "{style}: '{want}' not in:\n{t}");
    }
    let j = run(&["analyze", &model.to_string_lossy(), "--json"]);
    assert_eq!(j.code, 0);
    assert!(j.stdout.starts_with('{') && j.stdout.trim_end().ends_with('}'));
    assert_eq!(j.stdout.matches("\"type\": \"attention\"").count(), 30);
    assert_eq!(j.stdout.matches("\"kind\": \"SwiGLU\"").count(), 30);
}

#[test]
fn analyze_decomposed() {
    analyze("decomposed");
}

#[test]
fn analyze_fused() {
    analyze("fused");
}

/// Runs `pipeline` on the fixture, then proves the output equivalent to the original: it loads
/// in onnxruntime (and its logits agree there on one window), it has the original parameters
/// plus `extra`, and `ortho-opt compare` on 8 × 128 tokens gives relative ΔPPL ≤ 1e-4 and
/// max |Δlogit| ≤ 1e-3 with every argmax equal.
fn prove(style: &str, pipeline: &str, extra: u64) {
    let f = fixtures();
    let model = f.join(format!("smollm2-135m/{style}.onnx"));
    let tag: String = pipeline
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tmp = TempDir::new(&format!("prove-{style}-{tag}"));
    let out = tmp.path().join("rewritten.onnx");
    let (ms, os) = (
        model.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    let r = run(&[
        &ms,
        "-o",
        &os,
        &format!("--pass-pipeline={pipeline}"),
        "--timing",
        "--statistics",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{style} {pipeline}:\n{}", r.stderr);
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
    // onnxruntime loads and runs the output.
    let tokens = f.join("text/sotu_eval.smollm2-135m.bin");
    let report = python_tool(
        "ort_logits.py",
        &[&ms, &os, &tokens.to_string_lossy(), "--windows", "1"],
    );
    let d = json_number(&report, "max_abs_diff");
    eprintln!("{style} {pipeline}: onnxruntime max |Δlogit| = {d:e}");
    assert!(d <= 1e-3, "{style}: onnxruntime max |Δlogit| = {d}");
    // Our engine: the equivalence harness.
    let c = compare_on_sotu(&ms, &os);
    let num = |k: &str| {
        c[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {c}"))
    };
    let (rel, dmax, agree) = (
        num("delta_ppl_rel").abs(),
        num("max_abs_logit_diff"),
        num("argmax_agreement"),
    );
    eprintln!(
        "{style} {pipeline}: compare: perplexity {} → {} (relative Δ {rel:e}), max |Δlogit| {dmax:e}, argmax agreement {agree}, JS max {:e}",
        num("ppl_a"),
        num("ppl_b"),
        num("js_max")
    );
    assert!(rel <= 1e-4, "{style} {pipeline}: relative ΔPPL {rel}");
    assert!(dmax <= 1e-3, "{style} {pipeline}: max |Δlogit| {dmax}");
    assert_eq!(agree, 1.0, "{style} {pipeline}: argmax agreement {agree}");
    assert_eq!(num("positions"), 8.0 * 128.0);
}

/// Before the gains are folded, a rotation is refused and nothing is written.
fn refused_before_fold(style: &str) {
    let model = fixtures().join(format!("smollm2-135m/{style}.onnx"));
    let tmp = TempDir::new(&format!("refuse-{style}"));
    let out = tmp.path().join("rotated.onnx");
    let r = run(&[
        &model.to_string_lossy(),
        "-o",
        &out.to_string_lossy(),
        "--pass-pipeline=rotate-residual{kind=haar seed=7}",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("kind=haar is not admitted")
            && r.stderr.contains("kind=signed-permutation"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn rotate_refused_before_fold() {
    refused_before_fold("decomposed");
    refused_before_fold("fused");
}

#[test]
fn rotate_haar_decomposed() {
    prove(
        "decomposed",
        "fold-norms,rotate-residual{kind=haar seed=7}",
        VOCAB_X_D,
    );
}

#[test]
fn rotate_haar_fused() {
    prove(
        "fused",
        "fold-norms,rotate-residual{kind=haar seed=7}",
        VOCAB_X_D,
    );
}

/// Hadamard on the stream, composed with a per-KV-head Hadamard on the V/O paths.
#[test]
fn rotate_hadamard_and_heads_decomposed() {
    prove(
        "decomposed",
        "fold-norms,rotate-residual{kind=hadamard seed=7},rotate-heads{kind=hadamard seed=5}",
        VOCAB_X_D,
    );
}

#[test]
fn rotate_hadamard_and_heads_fused() {
    prove(
        "fused",
        "fold-norms,rotate-residual{kind=hadamard seed=7},rotate-heads{kind=hadamard seed=5}",
        VOCAB_X_D,
    );
}

/// Per-KV-head Haar rotations alone (3 KV heads of 64 shared by 9 query heads in each of the
/// 30 layers): no new parameter.
#[test]
fn rotate_heads_decomposed() {
    prove("decomposed", "rotate-heads{kind=haar seed=3}", 0);
}

#[test]
fn rotate_heads_fused() {
    prove("fused", "rotate-heads{kind=haar seed=3}", 0);
}
