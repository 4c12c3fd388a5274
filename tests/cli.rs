//! The command line itself: subcommands and their help, the mlir-opt-style default form, the
//! shared (global) options, and what a mistyped command gets.

mod common;

use common::{repo, run, TempDir};
use ortho_opt::CliError;
use std::path::PathBuf;

/// A small decoder of the file tests (embedding, one block, tied head).
fn model() -> PathBuf {
    repo().join("tests/filecheck/analyze/json.oir")
}

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn help_subcommand_prints_help_instead_of_opening_a_file() {
    let r = run(&["help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: ortho-opt"), "{}", r.stdout);
    for command in ["run", "eval", "compare", "analyze"] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "`help` lists {command}: {}",
            r.stdout
        );
    }
    let r = run(&["help", "eval"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: ortho-opt eval"), "{}", r.stdout);
    // The command's own help text (its JSON keys) and the shared options.
    assert!(r.stdout.contains("nll_mean"), "{}", r.stdout);
    assert!(r.stdout.contains("--tokenizer"), "{}", r.stdout);
    assert!(r.stdout.contains("--threads"), "{}", r.stdout);
}

#[test]
fn top_level_help_lists_analyze_and_the_default_form() {
    let r = run(&["--help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("analyze ")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("--pass-pipeline"), "{}", r.stdout);
    assert!(r.stdout.contains("[INPUT]"), "{}", r.stdout);
}

#[test]
fn usage_lines_name_the_subcommand() {
    for (command, args) in [
        ("run", vec!["run"]),
        ("eval", vec!["eval"]),
        ("compare", vec!["compare", "a.onnx"]),
        ("analyze", vec!["analyze"]),
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{command}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("Usage: ortho-opt {command} ")),
            "{command}: {}",
            r.stderr
        );
        let r = run(&[command, "--help"]);
        assert_eq!(r.code, 0, "{command}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("Usage: ortho-opt {command} ")),
            "{command}: {}",
            r.stdout
        );
    }
}

#[test]
fn a_mistyped_command_gets_a_suggestion() {
    for (typed, meant) in [
        ("evl", "eval"),
        ("anlyze", "analyze"),
        ("compar", "compare"),
    ] {
        let r = run(&[typed, "model.onnx"]);
        assert_eq!(r.code, 2, "{typed}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("unrecognized subcommand '{typed}'")),
            "{typed}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!("'{meant}'")),
            "{typed}: {}",
            r.stderr
        );
        match r.error.as_deref() {
            Some(CliError::CommandLine(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::InvalidSubcommand)
            }
            other => panic!("{typed}: {other:?}"),
        }
    }
    // A missing model is still a missing file, not a command.
    let r = run(&["no-such-model.onnx"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no-such-model.onnx") && !r.stderr.contains("subcommand"),
        "{}",
        r.stderr
    );
    assert!(
        matches!(r.error.as_deref(), Some(CliError::Import { .. })),
        "{:?}",
        r.error
    );
    let r = run(&["zzzz"]);
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("subcommand"), "{}", r.stderr);
    // No input at all is a usage error.
    let r = run(&[]);
    assert_eq!(r.code, 2);
    assert!(
        matches!(r.error.as_deref(), Some(CliError::NoInput)),
        "{r:?}"
    );
}

#[test]
fn a_model_file_named_like_a_command_is_opened() {
    let tmp = TempDir::new("cli-named-run");
    let text = std::fs::read_to_string(model()).expect("read model");
    // `.oir` picks the text reader; the stem is a command's name.
    let named = tmp.path().join("run.oir");
    std::fs::write(&named, &text).expect("write");
    let r = run(&[&s(&named)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("graph @json_decoder"), "{}", r.stdout);
    // A bare word that names an existing file is the input even when it is close to a command.
    // The driver resolves it against the working directory, so the test runs from the folder.
    let bare = tmp.path().join("evl");
    std::fs::write(&bare, &text).expect("write");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ortho-opt"))
        .current_dir(tmp.path())
        .args(["evl", "--emit=oir"])
        .output()
        .expect("run ortho-opt");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!stderr.contains("subcommand"), "{stderr}");
    // Without the .oir extension the file is read as ONNX, which this text is not: the error
    // names the file, which shows it was opened as the input.
    assert!(stderr.contains("evl"), "{stderr}");
}

#[test]
fn the_default_form_still_optimizes_and_writes() {
    let tmp = TempDir::new("cli-default");
    let out = tmp.path().join("out.oir");
    let r = run(&[
        &s(&model()),
        "-o",
        &s(&out),
        "--pass-pipeline=canonicalize,cse,dce",
        "--statistics",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = std::fs::read_to_string(&out).expect("output written");
    assert!(written.contains("graph @json_decoder"), "{written}");
    assert!(r.stderr.contains("dce"), "{}", r.stderr);
    let r = run(&["--list-passes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("canonicalize"), "{}", r.stdout);
    // Once the input is seen, a later word is not taken for a command.
    let r = run(&[&s(&model()), "run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn global_options_are_shared_by_the_commands() {
    // The same --threads / -q are accepted after any command and in the default form.
    let r = run(&["analyze", &s(&model()), "--threads", "2", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("residual stream: d = 4"), "{}", r.stdout);
    let r = run(&[&s(&model()), "--threads", "1", "--quiet"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Before the command's name they mean the same.
    let r = run(&["--threads", "2", "-q", "analyze", &s(&model())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("residual stream: d = 4"), "{}", r.stdout);
    let r = run(&["--tokenizer", "t.json", "help", "eval"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: ortho-opt eval"), "{}", r.stdout);
    let r = run(&["--threads=1", "anlyze", &s(&model())]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("'analyze'"), "{}", r.stderr);
    // The calibration spellings remain aliases of the shared options.
    let r = run(&[&s(&model()), "--calib-threads", "1", "--calib-quiet"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // eval and compare need the shared --tokenizer; without it the error says so.
    let r = run(&["eval", &s(&model()), "--text", "t.txt"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("eval needs --tokenizer"), "{}", r.stderr);
    let r = run(&["compare", &s(&model()), &s(&model()), "--text", "t.txt"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("compare needs --tokenizer"),
        "{}",
        r.stderr
    );
}

/// A word-level tokenizer of `n` tokens named t0 … t{n-1}.
fn word_tokenizer(dir: &std::path::Path, n: usize) -> PathBuf {
    let vocab: Vec<String> = (0..n).map(|i| format!("\"t{i}\": {i}")).collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "t0"}}}}"#,
        vocab.join(", ")
    );
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, json).expect("write tokenizer");
    p
}

#[test]
fn compare_gates_set_the_exit_code() {
    let d = TempDir::new("cli-gates");
    // B: the same decoder under a Haar rotation, equal to A up to rounding.
    let b = d.path().join("b.oir");
    let r = run(&[
        &s(&model()),
        "-o",
        &s(&b),
        "--elide-above=none",
        "--pass-pipeline=fold-norms,rotate-residual{kind=haar seed=1}",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tok = word_tokenizer(d.path(), 6);
    let text = d.path().join("text.txt");
    let words: Vec<String> = (0..64).map(|i| format!("t{}", (i * 7 + 3) % 6)).collect();
    std::fs::write(&text, words.join(" ")).expect("write text");
    let compare = |gates: &[&str]| {
        let mut args = vec![
            "compare".to_string(),
            s(&model()),
            s(&b),
            "--tokenizer".into(),
            s(&tok),
            "--text".into(),
            s(&text),
            "--windows".into(),
            "2".into(),
            "--seqlen".into(),
            "16".into(),
            "-q".into(),
        ];
        args.extend(gates.iter().map(|g| g.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    };
    let pass = compare(&[
        "--max-abs-logit",
        "1e-3",
        "--max-delta-ppl",
        "1e-3",
        "--min-argmax",
        "0.99",
    ]);
    assert_eq!(pass.code, 0, "{}", pass.stderr);
    let fail = compare(&["--max-abs-logit", "0", "--min-argmax", "0.99"]);
    assert_eq!(fail.code, 1, "{}", fail.stderr);
    assert!(
        fail.stderr.contains("gate failed: --max-abs-logit 0"),
        "{}",
        fail.stderr
    );
    assert!(!fail.stderr.contains("--min-argmax"), "{}", fail.stderr);
    assert!(
        fail.stdout.contains("max |Δlogit|"),
        "the report is still printed"
    );
    assert!(matches!(
        fail.error.as_deref(),
        Some(CliError::GateFailed { count: 1 })
    ));
}

#[test]
fn verbose_prints_each_pass_and_the_command_time() {
    let r = run(&[&s(&model()), "-v", "--pass-pipeline=canonicalize,cse,dce"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in ["pass #1 canonicalize", "pass #2 cse: ", "pass #3 dce: "] {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
    assert!(r.stderr.contains("import: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("ortho-opt: exit 0 after "),
        "{}",
        r.stderr
    );
    // Without -v none of it.
    let quiet = run(&[&s(&model()), "--pass-pipeline=canonicalize,cse,dce"]);
    assert!(!quiet.stderr.contains("pass #1"), "{}", quiet.stderr);
    // -v is shared by every command; -q and -v contradict each other.
    let r = run(&["analyze", &s(&model()), "-v"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("analyze: exit 0 after "), "{}", r.stderr);
    let r = run(&["-v", "analyze", &s(&model()), "-q"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// A writer that records each write and whether the output file existed at that moment.
#[derive(Clone)]
struct Recorder {
    out: PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl std::io::Write for Recorder {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(b).into_owned();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push((text, self.out.exists()));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn notes_and_ir_dumps_stream_while_the_run_goes_on() {
    let tmp = TempDir::new("cli-stream");
    let out = tmp.path().join("out.oir");
    let input = repo().join("tests/filecheck/prune/magnitude.oir");
    let rec = Recorder {
        out: out.clone(),
        seen: Default::default(),
    };
    let args: Vec<String> = [
        "ortho-opt",
        &s(&input),
        "-o",
        &s(&out),
        "--pass-pipeline=prune{method=magnitude linears=q},cse",
        "--print-ir-after=prune",
        "-v",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let r = ortho_opt::Driver::run_streaming(&args, Box::new(rec.clone()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.exists());
    let seen = rec.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let when = |needle: &str| {
        seen.iter()
            .position(|(t, _)| t.contains(needle))
            .unwrap_or_else(|| panic!("'{needle}' was not streamed: {seen:?}"))
    };
    // The dump and the note arrive before the next pass ran and before the output existed.
    let (dump, note, cse) = (
        when("IR Dump After prune"),
        when("note: prune: magnitude unstructured"),
        when("pass #2 cse"),
    );
    assert!(dump < cse && note < cse, "{seen:?}");
    assert!(
        !seen[dump].1 && !seen[note].1,
        "written before the output: {seen:?}"
    );
    // Streamed text is not repeated in the collected stderr.
    assert!(!r.stderr.contains("IR Dump"), "{}", r.stderr);
    assert!(!r.stderr.contains("note: prune"), "{}", r.stderr);
}

#[test]
fn the_reproducer_keeps_every_option_that_influenced_the_run() {
    let tmp = TempDir::new("cli-repro");
    let out = tmp.path().join("out.oir");
    let input = repo().join("tests/filecheck/denoise-prune/invalid-no-calibration.oir");
    let text = std::fs::read_to_string(&input).expect("read");
    // One case of the file, without --split-input-file.
    let case = tmp.path().join("case.oir");
    std::fs::write(&case, text.split("// -----").next().unwrap_or(&text)).expect("write");
    let r = run(&[
        &s(&case),
        "-o",
        &s(&out),
        "--threads",
        "1",
        "--verify-each=false",
        "--opt-bisect-limit=9",
        "--timing",
        "--pass-pipeline=fold-norms,denoise-prune{method=magnitude pattern=2:4},cse",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("reproduce with: "))
        .unwrap_or_else(|| panic!("no reproducer: {}", r.stderr));
    for kept in ["--threads 1", "--verify-each=false", "--opt-bisect-limit=9"] {
        assert!(line.contains(kept), "{kept} missing: {line}");
    }
    for dropped in ["-o ", "--timing", ",cse"] {
        assert!(!line.contains(dropped), "{dropped} kept: {line}");
    }
    // Running it fails at the same pass.
    let words = shlex::split(line).expect("a shell line");
    let again = ortho_opt::Driver::run(&words);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("denoise-prune needs calibration data"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains(line), "{}", again.stderr);
    assert!(!out.exists());
}

#[test]
fn compare_locate_names_the_first_diverging_node() {
    let d = TempDir::new("cli-locate");
    // B: the decoder with one weight of the v projection changed, as a buggy pass might.
    let text = std::fs::read_to_string(model()).expect("model");
    let start = text.find("%wv = const").expect("json.oir has %wv");
    let first_value = text[start..].find("dense<[").expect("dense") + start + "dense<[".len();
    let end = text[first_value..].find(',').expect("comma") + first_value;
    let mut bad = text.clone();
    bad.replace_range(first_value..end, "9.0");
    let b = d.path().join("b.oir");
    std::fs::write(&b, bad).expect("write b");
    let tok = word_tokenizer(d.path(), 6);
    let words: Vec<String> = (0..64).map(|i| format!("t{}", (i * 7 + 3) % 6)).collect();
    let text_file = d.path().join("text.txt");
    std::fs::write(&text_file, words.join(" ")).expect("write text");
    let compare = |b: &std::path::Path, json: bool| {
        let mut args = vec![
            "compare".to_string(),
            s(&model()),
            s(b),
            "--tokenizer".into(),
            s(&tok),
            "--text".into(),
            s(&text_file),
            "--windows".into(),
            "1".into(),
            "--seqlen".into(),
            "16".into(),
            "-q".into(),
            "--locate".into(),
        ];
        if json {
            args.push("--json".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    };
    let r = compare(&b, true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    let first = &v["locate"]["first"];
    assert_eq!(first["value"], "%v", "{v}");
    assert!(
        first["node"].as_str().unwrap_or("").contains("MatMul"),
        "{first}"
    );
    assert!(first["relative"].as_f64().unwrap_or(0.0) > 1e-4, "{first}");
    // Everything before %v agreed: the boundary is the v projection's input.
    assert!(v["locate"]["last_agreeing"].is_object(), "{v}");
    // The HTML report: self-contained, with the NLL of A and B per position as inline SVG.
    let html = d.path().join("cmp.html");
    let r = run(&[
        "compare",
        &s(&model()),
        &s(&b),
        "--tokenizer",
        &s(&tok),
        "--text",
        &s(&text_file),
        "--windows",
        "2",
        "--seqlen",
        "16",
        "-q",
        "--html",
        &s(&html),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_eq!(page.matches("<svg").count(), 2, "two charts");
    // One line per series (A, B, B − A) plus the legend's marks.
    assert!(page.matches("<polyline").count() >= 3, "{page}");
    assert!(page.contains("Mean NLL per position"));
    assert!(
        !page.contains("<script") && !page.contains(" src="),
        "self-contained"
    );
    // A model against itself: no divergence, and the summary says so.
    let same = compare(&model(), false);
    assert_eq!(same.code, 0, "{}", same.stderr);
    assert!(
        same.stdout.contains("first divergence:   none"),
        "{}",
        same.stdout
    );
}

#[test]
fn seeded_passes_write_the_same_bytes_whatever_the_thread_count() {
    let d = TempDir::new("cli-threads");
    let ids = d.path().join("ids.txt");
    let words: Vec<String> = (0..256).map(|i| ((i * 7 + 3) % 6).to_string()).collect();
    std::fs::write(&ids, words.join(" ")).expect("write ids");
    for pipeline in SEEDED {
        let out = |threads: usize| -> Vec<u8> {
            let path = d.path().join(format!("out-{threads}.onnx"));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let r = pool.install(|| {
                run(&[
                    &s(&model()),
                    "-o",
                    &s(&path),
                    &format!("--pass-pipeline={pipeline}"),
                    "--calib-ids",
                    &s(&ids),
                    "--calib-samples",
                    "4",
                    "--calib-seqlen",
                    "16",
                    "--threads",
                    &threads.to_string(),
                    "-q",
                ])
            });
            assert_eq!(r.code, 0, "{pipeline} on {threads} threads: {}", r.stderr);
            std::fs::read(&path).expect("output written")
        };
        let one = out(1);
        for t in [2, 3, 16] {
            assert!(
                one == out(t),
                "{pipeline}: {t} threads write other bytes than 1"
            );
        }
    }
}

/// Every pass with a seed, in a pipeline that runs on the small decoder.
const SEEDED: &[&str] = &[
    "fold-norms,rotate-residual{kind=haar seed=3}",
    "rotate-heads{seed=3}",
    "fold-norms,joint-basis{seed=3}",
    // The json model's weights are 4×4: the default block (64) does not divide them and the default LoRA rank (8) exceeds them.
    "poet-reparam{seed=3 block=2}",
    "lora{seed=3 rank=2}",
];
