//! `ortho-opt new-model`: a Llama-style decoder from a config (grouped-query heads, rotary
//! embedding, any sequence length up to the context), deterministic from its seed, causal, and
//! trainable from scratch with `train`; a byte-level BPE tokenizer trained on text.

mod common;

use common::{run, TempDir};
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_opt::new_model::{llama_oir, LlamaConfig};
use std::path::Path;

fn cfg(heads: usize, kv: usize, seed: u64) -> LlamaConfig {
    LlamaConfig {
        layers: 2,
        width: 16,
        heads,
        kv_heads: Some(kv),
        vocab: 40,
        context: 12,
        mlp: Some(24),
        seed,
        rope: true,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

fn logits(plan: &Plan, ids: &[i64], b: usize) -> Vec<f32> {
    let s = ids.len() / b;
    let feed = HostTensor::from_vec(vec![b, s], ids.to_vec()).expect("ids");
    let out = plan.run(&[("input_ids", feed)]).expect("forward");
    assert_eq!(out[0].1.shape(), [b, s, 40]);
    out[0].1.as_f32().expect("f32").to_vec()
}

#[test]
fn decoder_is_seeded_causal_and_takes_any_length_up_to_the_context() {
    let a = llama_oir(&cfg(4, 2, 7)).expect("valid config");
    assert_eq!(a, llama_oir(&cfg(4, 2, 7)).expect("valid"), "same seed");
    assert_ne!(a, llama_oir(&cfg(4, 2, 8)).expect("valid"), "another seed");
    let m = ortho_ir::text::parse_module(&a).expect("parses");
    assert!(ortho_ir::verify::verify_module(&m).is_ok());
    let plan = Plan::compile(&m).expect("compiles");
    let ids: Vec<i64> = (0..12).map(|i| (i * 7 % 40) as i64).collect();
    let full = logits(&plan, &ids, 1);
    // Causal: changing the last token leaves every earlier position's logits as they were.
    let mut other = ids.clone();
    other[11] = 3;
    let changed = logits(&plan, &other, 1);
    assert_eq!(full[..11 * 40], changed[..11 * 40]);
    assert_ne!(full[11 * 40..], changed[11 * 40..]);
    // A prefix gives the prefix's logits (the mask and rotary tables are sliced to its length).
    let prefix = logits(&plan, &ids[..5], 1);
    for (x, y) in prefix.iter().zip(&full[..5 * 40]) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
    // Rotary embedding makes position matter: the same token at two positions differs even
    // when everything before it is the same token.
    let same = logits(&plan, &[5; 4], 1);
    assert_ne!(same[..40], same[3 * 40..]);
    // Invalid shapes are refused by the config check.
    assert!(
        llama_oir(&cfg(3, 1, 1)).is_err(),
        "16 is not a multiple of 3 heads"
    );
    assert!(
        llama_oir(&cfg(4, 3, 1)).is_err(),
        "4 heads are not a multiple of 3 kv heads"
    );
}

fn p(x: &Path) -> String {
    x.to_str().expect("utf-8 path").to_string()
}

#[test]
fn new_model_and_tokenizer_train_from_scratch() {
    let dir = TempDir::new("new-model");
    let d = &dir.0;
    let text = d.join("text.txt");
    let sentence = "the cat sat on the mat. the dog sat on the log. a cat and a dog sat together. ";
    std::fs::write(&text, sentence.repeat(40)).expect("text written");
    let config = d.join("cfg.json");
    std::fs::write(
        &config,
        r#"{"layers": 1, "width": 16, "heads": 4, "kv_heads": 2, "vocab": 300, "context": 16, "seed": 3}"#,
    )
    .expect("config written");
    let make = |tag: &str| {
        let (model, tok) = (d.join(format!("{tag}.onnx")), d.join(format!("{tag}.json")));
        let r = run(&[
            "new-model",
            "--config",
            &p(&config),
            "-o",
            &p(&model),
            "--train-tokenizer",
            &p(&text),
            "--tokenizer-out",
            &p(&tok),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("vocab 300, context 16"), "{}", r.stdout);
        (model, tok)
    };
    let (model, tok) = make("a");
    let (model2, tok2) = make("b");
    assert_eq!(std::fs::read(&model).ok(), std::fs::read(&model2).ok());
    assert_eq!(std::fs::read(&tok).ok(), std::fs::read(&tok2).ok());
    let trained = d.join("trained.onnx");
    let curve = d.join("curve.json");
    let r = run(&[
        "train",
        &p(&model),
        "--tokenizer",
        &p(&tok),
        "--data",
        &p(&text),
        "--eval-text",
        &p(&text),
        "--eval-windows",
        "2",
        "--steps",
        "40",
        "--batch",
        "4",
        "--seqlen",
        "16",
        "--lr",
        "1e-2",
        "--trainable",
        "embed|head|g*|w*",
        "--curve",
        &p(&curve),
        "-o",
        &p(&trained),
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&curve).expect("curve")).expect("json");
    let ev = c["eval"].as_array().expect("evals");
    let (first, last) = (
        ev[0]["ppl"].as_f64().expect("ppl"),
        ev[ev.len() - 1]["ppl"].as_f64().expect("ppl"),
    );
    eprintln!("from scratch on a repeated text: perplexity {first:.2} → {last:.2}");
    assert!(last < 0.3 * first, "{first} → {last}");

    // A config that cannot make a model: an error naming the file, nothing written.
    std::fs::write(
        &config,
        r#"{"layers": 1, "width": 10, "heads": 4, "vocab": 30, "context": 8}"#,
    )
    .expect("written");
    let never = d.join("never.onnx");
    let r = run(&["new-model", "--config", &p(&config), "-o", &p(&never)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&p(&config)) && r.stderr.contains("not a multiple of heads"),
        "{}",
        r.stderr
    );
    assert!(!never.exists());
}
