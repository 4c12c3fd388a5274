//! `ortho-opt generate` on SmolLM2-135M (decomposed fixture, given its cache in memory):
//! greedy text continues the prompt and reports prefill and decode speeds; seeded sampling
//! gives the same text for the same seed; bad sampling options are usage errors (exit 1).

mod common;

use common::{fixtures, run};

fn generate(extra: &[&str]) -> ortho_opt::DriverOutput {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let tok = f.join("smollm2-135m/tokenizer.json");
    let mut args = vec![
        "generate".to_string(),
        model.to_string_lossy().into_owned(),
        "--tokenizer".into(),
        tok.to_string_lossy().into_owned(),
        "--prompt".into(),
        "The state of the union is".into(),
        "--max-new-tokens".into(),
        "8".into(),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&refs)
}

#[test]
fn greedy_continues_the_prompt_and_reports_speeds() {
    let r = generate(&["--greedy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("The state of the union is"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.trim().len() > "The state of the union is".len(),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("kv-cache: 30 attention layers cached"),
        "{}",
        r.stderr
    );
    for key in ["prefill 6 tokens in", "decode 7 tokens in", "tokens/s"] {
        assert!(r.stderr.contains(key), "no '{key}' in {}", r.stderr);
    }
}

#[test]
fn seeded_sampling_is_deterministic() {
    let opts = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "7"];
    let a = generate(&opts);
    let b = generate(&opts);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout);
    assert!(
        a.stdout.starts_with("The state of the union is"),
        "{}",
        a.stdout
    );
}

#[test]
fn bad_sampling_options_are_usage_errors() {
    for bad in [
        &["--temperature", "0"][..],
        &["--temperature", "1", "--top-p", "1.5"][..],
        &["--greedy", "--temperature", "1"][..],
    ] {
        let r = generate(bad);
        assert_ne!(r.code, 0, "{bad:?} accepted");
        assert!(r.stdout.is_empty(), "{bad:?} printed {}", r.stdout);
    }
}
