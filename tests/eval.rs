//! `ortho-opt eval` and `compare`: exact answers on tiny hand-built models and tokenizers
//! (uniform logits give perplexity = vocabulary size; NaN logits are reported), the errors
//! (vocabulary mismatch, too little text), and the SmolLM2 fixtures against onnxruntime's
//! perplexity 36.62784 (16 × 128 of sotu_eval) within 1e-4 relative.

mod common;

use common::{fixtures, run, TempDir};
use ortho_ir::{
    attrs, DType, Dim, GraphOutput, Module, Op, OpsetImport, Output, TensorData, Type, ValueId,
};
use std::path::{Path, PathBuf};

const ORT_PPL: f64 = 36.62784;

/// A word-level tokenizer over `words` (ids in order) splitting on whitespace.
fn tokenizer(dir: &Path, words: &[&str]) -> PathBuf {
    let vocab: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "{}"}}}}"#,
        vocab.join(", "),
        words[words.len() - 1]
    );
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, json).expect("write tokenizer");
    p
}

/// logits = Gather(table, input_ids): row i of `table` is the logits after token i.
fn table_model(dir: &Path, name: &str, table: &[f32], v: usize) -> PathBuf {
    let mut m = Module::new("table");
    m.meta.ir_version = 8;
    m.opsets.push(OpsetImport {
        domain: String::new(),
        version: 17,
    });
    let t = m.add_tensor(TensorData::from_f32(vec![v as i64, v as i64], table));
    let g = m.main_graph_mut();
    let ids = g.add_input(
        "input_ids",
        Type::tensor(
            DType::I64,
            vec![Dim::Sym("batch".into()), Dim::Sym("seq".into())],
        ),
    );
    let w = g.add_node(
        Op::Const(t),
        vec![],
        vec![Output::new(
            "table",
            Type::tensor(DType::F32, vec![Dim::Fixed(v as i64); 2]),
        )],
    );
    let n = g.add_node(
        Op::Gather(attrs::Gather { axis: Some(0) }),
        vec![Some(ValueId { node: w, output: 0 }), Some(ids)],
        vec![Output::new("logits", Type::Unknown)],
    );
    g.outputs.push(GraphOutput {
        value: ValueId { node: n, output: 0 },
        name: "logits".into(),
    });
    let p = dir.join(name);
    ortho_frontends::export_file(&m, &p, &Default::default()).expect("export");
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"))
}

#[test]
fn uniform_logits_give_the_vocabulary_size_and_nan_is_reported() {
    let tmp = TempDir::new("eval-tiny");
    let tok = tokenizer(tmp.path(), &["a", "b", "c", "d"]);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "a b c d ".repeat(20)).expect("text");
    let uniform = table_model(tmp.path(), "uniform.onnx", &[0.5; 16], 4);
    let r = run(&[
        "eval",
        s(&uniform),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "3",
        "--seqlen",
        "8",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    assert!(
        (j["perplexity"].as_f64().expect("ppl") - 4.0).abs() < 1e-12,
        "{j}"
    );
    assert_eq!(j["tokens"], 21);
    assert_eq!(j["non_finite"], 0);
    // Row "a" puts all its mass on "b", the true next token: those predictions cost 0 nats.
    let mut t = vec![0.0f32; 16];
    t[1] = 1e4;
    t[2 * 4 + 3] = f32::NAN;
    let peaked = table_model(tmp.path(), "peaked.onnx", &t, 4);
    let r = run(&[
        "eval",
        s(&peaked),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "1",
        "--seqlen",
        "5",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    assert_eq!(j["non_finite"], 1, "{j}");
    assert_eq!(j["non_finite_positions"], 1, "{j}");
    assert!(j["perplexity"].is_null(), "a NaN must not be hidden: {j}");
    assert!(r.stderr.contains("non-finite"), "{}", r.stderr);
    // compare: the model against itself is exact; uniform vs peaked differs.
    let r = run(&[
        "compare",
        s(&uniform),
        s(&uniform),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "2",
        "--seqlen",
        "8",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    assert_eq!(j["max_abs_logit_diff"], 0.0);
    assert_eq!(j["delta_ppl"], 0.0);
    assert_eq!(j["js_max"], 0.0);
    assert_eq!(j["argmax_agreement"], 1.0);
    let mut t = vec![0.0f32; 16];
    t[1] = 2.0f32.ln();
    let skewed = table_model(tmp.path(), "skewed.onnx", &t, 4);
    let zeros = table_model(tmp.path(), "zeros.onnx", &[0.0; 16], 4);
    let r = run(&[
        "compare",
        s(&zeros),
        s(&skewed),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "1",
        "--seqlen",
        "5",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    assert!(
        (j["max_abs_logit_diff"].as_f64().expect("d") - 2.0f64.ln()).abs() < 1e-6,
        "{j}"
    );
    // After "a", B gives "b" 2/5 instead of 1/4: one of the 4 predictions ("a"→"b") costs ln(5/2).
    let nll_b = ((5.0f64 / 2.0).ln() + 3.0 * 4.0f64.ln()) / 4.0;
    assert!(
        (j["ppl_b"].as_f64().expect("ppl") - nll_b.exp()).abs() < 1e-6,
        "{j}"
    );
    assert!(
        (j["delta_ppl"].as_f64().expect("d") - (nll_b.exp() - 4.0)).abs() < 1e-6,
        "{j}"
    );
    assert!(
        j["js_max"].as_f64().expect("js") > 0.0 && j["argmax_agreement"].as_f64().expect("a") < 1.0,
        "{j}"
    );
    let r = run(&["compare", "--help"]);
    assert!(
        r.stdout.contains("js_mean") && r.stdout.contains("delta_ppl"),
        "{}",
        r.stdout
    );
}

#[test]
fn vocabulary_mismatch_and_short_text_are_errors() {
    let tmp = TempDir::new("eval-errors");
    let tok = tokenizer(tmp.path(), &["a", "b", "c"]);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "a b c ".repeat(10)).expect("text");
    let model = table_model(tmp.path(), "m.onnx", &[0.0; 16], 4);
    let r = run(&[
        "eval",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "1",
        "--seqlen",
        "4",
        "-q",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("vocabulary has 3 tokens but the model's logits are 4 wide"),
        "{}",
        r.stderr
    );
    assert!(
        matches!(
            r.error.as_deref(),
            Some(ortho_opt::CliError::VocabularyMismatch { vocab: 3, width: 4 })
        ),
        "{:?}",
        r.error
    );
    let r = run(&[
        "eval",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "100",
        "--seqlen",
        "4",
        "-q",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("has 30 tokens, fewer than 100 windows × 4"),
        "{}",
        r.stderr
    );
    assert!(
        matches!(
            r.error.as_deref(),
            Some(ortho_opt::CliError::TooFewWindows {
                tokens: 30,
                windows: 100,
                body: 4,
                ..
            })
        ),
        "{:?}",
        r.error
    );
    let r = run(&[
        "eval",
        s(&model),
        "--tokenizer",
        s(&text),
        "--text",
        s(&text),
        "-q",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot load the tokenizer"),
        "{}",
        r.stderr
    );
    assert!(
        matches!(
            r.error.as_deref(),
            Some(ortho_opt::CliError::Tokenizer { .. })
        ),
        "{:?}",
        r.error
    );
}

/// The target of issue 3: onnxruntime's perplexity on both fixtures within 1e-4 relative.
fn fixture_perplexity(style: &str) {
    let f = fixtures();
    let model = f.join(format!("smollm2-135m/{style}.onnx"));
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let r = run(&[
        "eval",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "16",
        "--seqlen",
        "128",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    let ppl = j["perplexity"].as_f64().expect("ppl");
    eprintln!(
        "{style}: perplexity {ppl} (onnxruntime {ORT_PPL}), {}",
        j["seconds"]
    );
    assert!(
        ((ppl - ORT_PPL) / ORT_PPL).abs() < 1e-4,
        "{style}: {ppl} vs {ORT_PPL}"
    );
    assert_eq!(j["tokens"], 16 * 127);
    assert_eq!(j["non_finite"], 0);
    assert_eq!(j["text_tokens"], 149_879);
}

#[test]
fn decomposed_perplexity_matches_onnxruntime() {
    fixture_perplexity("decomposed");
}

#[test]
fn fused_perplexity_matches_onnxruntime() {
    fixture_perplexity("fused");
}

/// The equivalence harness on the two spellings of the same model: tiny differences only.
#[test]
fn compare_decomposed_with_fused() {
    let f = fixtures();
    let a = f.join("smollm2-135m/decomposed.onnx");
    let b = f.join("smollm2-135m/fused.onnx");
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let r = run(&[
        "compare",
        s(&a),
        s(&b),
        "--tokenizer",
        s(&tok),
        "--text",
        s(&text),
        "--windows",
        "2",
        "--seqlen",
        "128",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&r.stdout);
    eprintln!("{j}");
    assert!(j["max_abs_logit_diff"].as_f64().expect("d") < 1e-3, "{j}");
    assert!(j["delta_ppl_rel"].as_f64().expect("d").abs() < 1e-5, "{j}");
    assert!(j["js_max"].as_f64().expect("js") < 1e-8, "{j}");
    assert_eq!(j["argmax_agreement"], 1.0, "{j}");
    assert_eq!(j["positions"], 256);
}

/// The stderr of the `ortho-opt` binary run with `args` (and `-q` when `quiet`), which must
/// succeed. A separate process, so that stderr is a pipe, not a terminal.
fn stderr_of(args: &[&str], quiet: bool) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ortho-opt"));
    c.args(args);
    if quiet {
        c.arg("-q");
    }
    let o = c.output().expect("run ortho-opt");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stderr).expect("utf8 stderr")
}

/// Progress goes to stderr: off a terminal (here, a pipe) a line per quarter of the windows and
/// one at the end — no `\r` bar redraws in logs; `-q` prints none.
#[test]
fn progress_lines_off_a_terminal_and_none_with_quiet() {
    let tmp = TempDir::new("eval-progress");
    let tok = tokenizer(tmp.path(), &["a", "b", "c", "d"]);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "a b c d ".repeat(20)).expect("text");
    let uniform = table_model(tmp.path(), "uniform.onnx", &[0.5; 16], 4);
    let eval = |quiet: bool| {
        let mut args = vec![
            "eval",
            s(&uniform),
            "--tokenizer",
            s(&tok),
            "--text",
            s(&text),
        ];
        args.extend(["--windows", "4", "--seqlen", "8", "--batch", "1"]);
        stderr_of(&args, quiet)
    };
    let loud = eval(false);
    let lines: Vec<&str> = loud.lines().filter(|l| l.starts_with("eval: ")).collect();
    assert_eq!(lines.len(), 4, "one line per quarter:\n{loud}");
    assert!(lines[0].starts_with("eval: 1/4 windows, "), "{loud}");
    assert!(lines[3].starts_with("eval: 4/4 windows, "), "{loud}");
    assert!(!loud.contains('\r'), "{loud:?}");
    let quiet = eval(true);
    assert!(!quiet.contains("windows"), "{quiet}");
}

/// Plan compilation reports progress too: compiling the real SmolLM2 (hundreds of nodes, every
/// weight decoded) prints, off a terminal, a line per quarter of the nodes ending at all of
/// them; `-q` prints none.
#[test]
fn compile_progress_lines_on_smollm2_and_none_with_quiet() {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let eval = |quiet: bool| {
        let mut args = vec![
            "eval",
            s(&model),
            "--tokenizer",
            s(&tok),
            "--text",
            s(&text),
        ];
        args.extend(["--windows", "1", "--seqlen", "8"]);
        stderr_of(&args, quiet)
    };
    let loud = eval(false);
    let lines: Vec<&str> = loud
        .lines()
        .filter(|l| l.starts_with("compile: "))
        .collect();
    assert_eq!(lines.len(), 4, "one line per quarter:\n{loud}");
    // "compile: DONE/TOTAL nodes, T s[: OP]": the counts rise to the total.
    let counts: Vec<(usize, usize)> = lines
        .iter()
        .map(|l| {
            let f = l["compile: ".len()..].split(' ').next().expect("count");
            let (d, t) = f.split_once('/').expect("d/t");
            (d.parse().expect("done"), t.parse().expect("total"))
        })
        .collect();
    let total = counts[0].1;
    assert!(total > 100, "SmolLM2 has hundreds of nodes: {loud}");
    assert!(
        counts
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[1].1 == total),
        "{loud}"
    );
    assert_eq!(counts[3].0, total, "{loud}");
    assert!(!loud.contains('\r'), "{loud:?}");
    let quiet = eval(true);
    assert!(!quiet.contains("compile: "), "{quiet}");
}
