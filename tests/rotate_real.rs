//! Structure analysis and the residual rotation on the real SmolLM2-135M fixtures (decomposed
//! opset 17 and fused opset 23). `analyze` must find 30 blocks of GQA attention (9 query / 3 KV
//! heads of 64, RoPE) and SwiGLU, and a tied head, with nothing unmatched; after
//! `fold-norms,rotate-residual{kind=haar seed=7}` the exported model loads in onnxruntime, has
//! the same parameters plus one untied head, and its logits and perplexity match the original
//! (max |Δlogit| ≤ 1e-3, |ΔPPL| ≤ 1e-4 relative). Until `ortho-opt compare` exists, the numbers
//! come from the fixtures' Python tools.

mod common;

use common::{fixtures, python_tool, run, TempDir};

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

fn perplexity(model: &str, tmp: &TempDir, tag: &str) -> f64 {
    let f = fixtures();
    let out = tmp.path().join(format!("{tag}.json"));
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    python_tool(
        "eval_onnx.py",
        &[
            model,
            &s(&tok),
            &s(&text),
            "--runs",
            "1",
            "--json",
            &s(&out),
        ],
    );
    json_number(
        &std::fs::read_to_string(&out).expect("eval json"),
        "ppl_onnxruntime",
    )
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

fn rotate(style: &str) {
    let f = fixtures();
    let model = f.join(format!("smollm2-135m/{style}.onnx"));
    let tmp = TempDir::new(&format!("rotate-{style}"));
    let out = tmp.path().join("rotated.onnx");
    let (ms, os) = (
        model.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    // Refused before the gains are folded, and nothing is written.
    let r = run(&[
        &ms,
        "-o",
        &os,
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
    let r = run(&[
        &ms,
        "-o",
        &os,
        "--pass-pipeline=fold-norms,rotate-residual{kind=haar seed=7}",
        "--timing",
        "--statistics",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{style}:\n{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("fold-norms.untied") && l.trim_end().ends_with(" 1")),
        "{}",
        r.stderr
    );
    // Same parameters, plus the untied head.
    let before = ortho_frontends::import_file(&model)
        .expect("import")
        .parameter_count();
    let after = ortho_frontends::import_file(&out)
        .expect("re-import")
        .parameter_count();
    assert_eq!(
        after,
        before + VOCAB_X_D,
        "parameters before {before}, after {after}"
    );
    let tokens = f.join("text/sotu_eval.smollm2-135m.bin");
    let report = python_tool(
        "ort_logits.py",
        &[&ms, &os, &tokens.to_string_lossy(), "--windows", "1"],
    );
    let d = json_number(&report, "max_abs_diff");
    eprintln!("{style}: max |Δlogit| = {d:e}; {report}");
    assert!(d <= 1e-3, "{style}: max |Δlogit| = {d}");
    assert!(report.contains("\"argmax_agreement\": 1.0"), "{report}");
    let (p0, p1) = (
        perplexity(&ms, &tmp, "before"),
        perplexity(&os, &tmp, "after"),
    );
    let rel = ((p1 - p0) / p0).abs();
    eprintln!("{style}: perplexity {p0} → {p1} (relative Δ {rel:e})");
    assert!(rel <= 1e-4, "{style}: perplexity {p0} → {p1}");
}

#[test]
fn rotate_decomposed() {
    rotate("decomposed");
}

#[test]
fn rotate_fused() {
    rotate("fused");
}
