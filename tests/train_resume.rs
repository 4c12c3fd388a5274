//! `train` checkpoints, resume, held-out evaluation and the curve's plot, on a tiny language
//! model: a run resumed from its step-N checkpoint writes the same model, curve and final
//! checkpoint, byte for byte, as the run that never stopped; damaged checkpoints and changed
//! settings are refused naming the file; `--eval-text` records held-out perplexity.

mod common;
mod train_tiny;

use common::{run, TempDir};
use std::path::{Path, PathBuf};
use train_tiny::TINY;

/// A word-level tokenizer whose words are the digits 0–7 (ids = the digits).
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"0":0,"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7},"unk_token":"0"}}"#;

/// A cycle with one noisy position in 7, so the loss cannot reach zero.
fn text(n: usize, shift: usize) -> String {
    let cycle = [3, 1, 4, 0, 5, 2, 6, 7];
    (0..n)
        .map(|i| {
            let t = if (i + shift) % 7 == 0 {
                (i * 5) % 8
            } else {
                cycle[i % 8]
            };
            t.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Setup {
    dir: TempDir,
    model: PathBuf,
    data: PathBuf,
    eval: PathBuf,
    tokenizer: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let model = dir.0.join("tiny.oir");
    std::fs::write(&model, TINY).expect("model written");
    let data = dir.0.join("train.txt");
    std::fs::write(&data, text(600, 0)).expect("data written");
    let eval = dir.0.join("eval.txt");
    std::fs::write(&eval, text(300, 3)).expect("eval text written");
    let tokenizer = dir.0.join("tokenizer.json");
    std::fs::write(&tokenizer, TOKENIZER).expect("tokenizer written");
    Setup {
        dir,
        model,
        data,
        eval,
        tokenizer,
    }
}

fn p(x: &Path) -> String {
    x.to_str().expect("utf-8 path").to_string()
}

/// `train` with the common settings plus `extra`.
fn train(s: &Setup, out: &Path, extra: &[&str]) -> ortho_opt::DriverOutput {
    let (model, data, tok) = (p(&s.model), p(&s.data), p(&s.tokenizer));
    let out = p(out);
    let mut args = vec![
        "train",
        &model,
        "--data",
        &data,
        "--tokenizer",
        &tok,
        "-o",
        &out,
        "--weight-decay",
        "0.01",
        "--batch",
        "3",
        "--seqlen",
        "6",
        "--accum",
        "2",
        "--warmup",
        "3",
        "--keep-zeros",
        "--seed",
        "5",
        "-q",
    ];
    // --steps and --lr have defaults here that `extra` may replace.
    for (flag, value) in [("--steps", "20"), ("--lr", "0.05")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    run(&args)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Asserts two files hold the same bytes (without printing them).
fn same(a: &Path, b: &Path) {
    let (x, y) = (read(a), read(b));
    let first = x.iter().zip(&y).position(|(p, q)| p != q);
    assert!(
        x == y,
        "{} ({} bytes) and {} ({} bytes) differ (first at {first:?})",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

#[test]
fn resume_is_byte_identical_to_an_uninterrupted_run() {
    let s = setup("train-resume");
    let d = &s.dir.0;
    let run_full = |tag: &str| {
        let out = d.join(format!("{tag}.onnx"));
        let curve = d.join(format!("{tag}.json"));
        let ckpt = d.join(format!("{tag}-{{step}}.ckpt"));
        let r = train(
            &s,
            &out,
            &[
                "--save-every",
                "10",
                "--checkpoint",
                &p(&ckpt),
                "--curve",
                &p(&curve),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        (out, curve)
    };
    let (out_a, curve_a) = run_full("a");
    let (out_b, _) = run_full("b");
    // Same seed and data: byte-identical checkpoints and models.
    same(&d.join("a-10.ckpt"), &d.join("b-10.ckpt"));
    same(&d.join("a-20.ckpt"), &d.join("b-20.ckpt"));
    same(&out_a, &out_b);
    assert!(!d.join("a-30.ckpt").exists());

    // Resumed at step 10 in a fresh trainer: the rest of the run is the same, to the byte.
    let out_r = d.join("r.onnx");
    let curve_r = d.join("r.json");
    let r = train(
        &s,
        &out_r,
        &[
            "--resume",
            &p(&d.join("a-10.ckpt")),
            "--save-every",
            "10",
            "--checkpoint",
            &p(&d.join("r-{step}.ckpt")),
            "--curve",
            &p(&curve_r),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("trained 10 steps"), "{}", r.stdout);
    assert!(
        !d.join("r-10.ckpt").exists(),
        "steps before the resume are not redone"
    );
    same(&out_r, &out_a);
    same(&d.join("r-20.ckpt"), &d.join("a-20.ckpt"));
    let losses = |c: &Path| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_slice(&read(c)).expect("curve json");
        v["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|x| x["loss"].as_f64().expect("loss"))
            .collect()
    };
    let (la, lr) = (losses(&curve_a), losses(&curve_r));
    assert_eq!(la.len(), 20);
    assert_eq!(la, lr, "identical losses");
    assert!(la[19] < la[0], "it trains: {la:?}");
    // W2's zero (entry 11) stays zero (the mask is part of the checkpoint).
    let trained = ortho_frontends::import_file(&out_r).expect("imports");
    let g = trained.main_graph();
    let ortho_ir::Op::Const(t) = g.node(g.value_names()["W2"].node).op else {
        panic!("W2 is an initializer")
    };
    assert_eq!(trained.tensor(t).to_f64_vec().expect("f32")[11], 0.0);
}

#[test]
fn damaged_checkpoints_and_changed_settings_are_refused() {
    let s = setup("train-ckpt-bad");
    let d = &s.dir.0;
    let good = d.join("good.ckpt");
    let r = train(
        &s,
        &d.join("m.onnx"),
        &[
            "--steps",
            "4",
            "--save-every",
            "4",
            "--checkpoint",
            &p(&good),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = read(&good);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated.ckpt",
            bytes[..bytes.len() - 100].to_vec(),
            "truncated",
        ),
        (
            "flipped.ckpt",
            {
                let mut b = bytes.clone();
                let k = b.len() - 200;
                b[k] ^= 0x10;
                b
            },
            "corrupted",
        ),
        (
            "garbage.ckpt",
            b"not a checkpoint at all, no".to_vec(),
            "not an ortho-opt checkpoint",
        ),
    ];
    for (name, content, why) in cases {
        let path = d.join(name);
        std::fs::write(&path, content).expect("written");
        let out = d.join(format!("{name}.onnx"));
        let r = train(&s, &out, &["--steps", "4", "--resume", &p(&path)]);
        assert_eq!(r.code, 1, "{name}: {}", r.stdout);
        assert!(r.stderr.contains(why), "{name}: {}", r.stderr);
        assert!(r.stderr.contains(&p(&path)), "names the file: {}", r.stderr);
        assert!(!out.exists(), "nothing written");
    }
    // The intact checkpoint with another learning rate: refused, naming the setting.
    let out = d.join("lr.onnx");
    let r = train(
        &s,
        &out,
        &["--steps", "4", "--lr", "0.01", "--resume", &p(&good)],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("lr = 0.05") && r.stderr.contains("0.01"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn eval_text_records_held_out_perplexity_and_plots_the_curve() {
    let s = setup("train-eval");
    let d = &s.dir.0;
    let (curve, plot) = (d.join("c.json"), d.join("c.svg"));
    let r = train(
        &s,
        &d.join("m.onnx"),
        &[
            "--eval-text",
            &p(&s.eval),
            "--eval-every",
            "5",
            "--eval-windows",
            "4",
            "--eval-seqlen",
            "8",
            "--curve",
            &p(&curve),
            "--plot",
            &p(&plot),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c: serde_json::Value = serde_json::from_slice(&read(&curve)).expect("json");
    let evals = c["eval"].as_array().expect("eval list");
    let steps: Vec<u64> = evals
        .iter()
        .map(|e| e["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, [0, 5, 10, 15, 20]);
    let ppl: Vec<f64> = evals
        .iter()
        .map(|e| e["ppl"].as_f64().expect("ppl"))
        .collect();
    eprintln!("held-out perplexity over training: {ppl:?}");
    // Untrained: close to uniform over 8 tokens; trained on the same cycle: far lower.
    assert!((ppl[0] - 8.0).abs() < 1.0, "{ppl:?}");
    assert!(ppl[4] < 0.5 * ppl[0], "{ppl:?}");
    assert_eq!(evals[0]["predictions"], 4 * 7);
    assert!(r.stdout.contains("eval at step 20"), "{}", r.stdout);
    let svg = String::from_utf8(read(&plot)).expect("utf-8 svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("held-out NLL"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    // The held-out perplexity is the one `eval` computes on the written model.
    let e = run(&[
        "eval",
        &p(&d.join("m.onnx")),
        "--tokenizer",
        &p(&s.tokenizer),
        "--text",
        &p(&s.eval),
        "--windows",
        "4",
        "--seqlen",
        "8",
        "--json",
        "-q",
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let j: serde_json::Value = serde_json::from_str(e.stdout.trim()).expect("eval json");
    let want = j["perplexity"].as_f64().expect("ppl");
    assert!((want - ppl[4]).abs() <= 1e-9 * want, "{want} vs {}", ppl[4]);
}
