//! RUN-line file tests, in the manner of LLVM's lit + FileCheck.
//!
//! Each `tests/filecheck/**/*.oir` begins with `// RUN: ortho-opt %s <args>`; `%s` is the file.
//! The command runs in-process through `Driver::run`; its output (stdout, then stderr and the
//! exit status when non-zero) is compared with an insta snapshot in `tests/snapshots/`.
//! `// CHECK: text` lines must match output lines in order (each a substring of a later line than
//! the previous match); `// CHECK-NOT: text` must not appear anywhere; `// CHECK-EXIT: N` states
//! the exit status (default 0). A case file may hold several modules split by `// -----`
//! (pass `--split-input-file`).

use std::path::Path;

/// Splits a RUN line into arguments; single and double quotes group words.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The output of one file test as it is snapshotted.
fn run_file(path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("read test file");
    let run = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("// RUN:"))
        .unwrap_or_else(|| panic!("{}: no '// RUN:' line", path.display()));
    let mut args = shell_words(run.trim());
    assert_eq!(
        args.first().map(String::as_str),
        Some("ortho-opt"),
        "{}: RUN must call ortho-opt",
        path.display()
    );
    for a in &mut args {
        if a == "%s" {
            *a = path.to_string_lossy().into_owned();
        }
    }
    let out = ortho_opt::Driver::run(&args);
    let mut rendered = out.stdout.clone();
    if !out.stderr.is_empty() {
        rendered.push_str("// stderr:\n");
        rendered.push_str(&out.stderr);
    }
    if out.code != 0 {
        rendered.push_str(&format!("// exit status: {}\n", out.code));
    }
    // Paths differ between machines; the snapshot names files relative to the repository.
    let root = format!("{}/", env!("CARGO_MANIFEST_DIR"));
    let rendered = rendered.replace(&root, "");
    let mut problems = Vec::new();
    let expected_exit: i32 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("// CHECK-EXIT:"))
        .map(|s| s.trim().parse().expect("CHECK-EXIT number"))
        .unwrap_or(0);
    if out.code != expected_exit {
        problems.push(format!(
            "exit status {} (expected {expected_exit})",
            out.code
        ));
    }
    let lines: Vec<&str> = rendered.lines().collect();
    let mut at = 0;
    for l in text.lines() {
        let l = l.trim();
        if let Some(pat) = l.strip_prefix("// CHECK:") {
            let pat = pat.trim();
            match lines[at..].iter().position(|x| x.contains(pat)) {
                Some(i) => at += i + 1,
                None => problems.push(format!("CHECK not found (in order): {pat}")),
            }
        } else if let Some(pat) = l.strip_prefix("// CHECK-NOT:") {
            let pat = pat.trim();
            if rendered.contains(pat) {
                problems.push(format!("CHECK-NOT found: {pat}"));
            }
        }
    }
    (rendered, problems)
}

#[test]
fn filecheck() {
    let mut count = 0;
    let mut failures = Vec::new();
    insta::glob!("filecheck/**/*.oir", |path| {
        count += 1;
        let (rendered, problems) = run_file(path);
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n--- output ---\n{rendered}",
                path.display(),
                problems.join("\n  ")
            ));
        }
        insta::assert_snapshot!(rendered);
    });
    assert!(
        failures.is_empty(),
        "{} file test(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        count >= 10,
        "expected the file tests to be found, found {count}"
    );
}

#[test]
fn shell_words_split() {
    assert_eq!(
        shell_words("ortho-opt %s --pass-pipeline='a{x=1 y=2},b'"),
        vec!["ortho-opt", "%s", "--pass-pipeline=a{x=1 y=2},b"]
    );
    assert_eq!(shell_words("a \"b c\" ''"), vec!["a", "b c", ""]);
}
