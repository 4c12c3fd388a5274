//! `ortho-opt shard`: splitting a small decoder (tests/filecheck/upm/too-many-shards.oir, 3
//! blocks), running the chain, re-keying it, and the file-safety errors. The real-model checks
//! are in upm_real.rs.

mod common;

use common::{repo, run, TempDir};
use ortho_codegen::cpu::{npy, HostTensor};
use std::path::{Path, PathBuf};

fn model() -> PathBuf {
    repo().join("tests/filecheck/upm/too-many-shards.oir")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs MODEL (a model or a manifest) on fixed token ids and returns its logits.
fn logits(model: &Path, tmp: &Path, tag: &str) -> Vec<f32> {
    let ids = tmp.join("ids.npy");
    let t = HostTensor::from_vec(vec![2, 5], vec![0i64, 1, 2, 3, 4, 5, 4, 3, 2, 1]).expect("ids");
    npy::write(&ids, &t).expect("write ids");
    let out = tmp.join(format!("out-{tag}"));
    let r = run(&[
        "run",
        &s(model),
        "--input",
        &format!("ids={}", s(&ids)),
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "run {}: {}", model.display(), r.stderr);
    let l = npy::read(&out.join("logits.npy")).expect("read logits");
    assert_eq!(&l.shape()[..2], &[2, 5]);
    l.as_f32().expect("f32 logits").to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn split(dir: &Path, k: usize, balance: &str) -> ortho_opt::DriverOutput {
    run(&[
        "shard",
        "split",
        &s(&model()),
        "-k",
        &k.to_string(),
        "--balance",
        balance,
        "-o",
        &s(dir),
    ])
}

fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest JSON")
}

#[test]
fn split_chains_to_the_original_exactly() {
    let tmp = TempDir::new("upm-split");
    let want = logits(&model(), tmp.path(), "orig");
    for k in 1..=3 {
        for balance in ["blocks", "params"] {
            let dir = tmp.path().join(format!("k{k}-{balance}"));
            let r = split(&dir, k, balance);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let m = manifest(&dir);
            let shards = m["shards"].as_array().expect("shards");
            assert_eq!(shards.len(), k);
            // Blocks cover 0..3 in order, embedding with the first, head with the last.
            let mut next = 0;
            for (i, sh) in shards.iter().enumerate() {
                assert_eq!(sh["blocks"][0].as_u64(), Some(next));
                next = sh["blocks"][1].as_u64().expect("end");
                assert_eq!(sh["embedding"].as_bool(), Some(i == 0));
                assert_eq!(sh["head"].as_bool(), Some(i + 1 == k));
                assert_eq!(sh["sha256"].as_str().map(str::len), Some(64));
            }
            assert_eq!(next, 3);
            // The shards are cut, not copied: a middle shard holds no embedding table.
            if k == 3 {
                assert!(shards[1]["params"].as_u64() < shards[0]["params"].as_u64());
                assert_eq!(
                    shards[1]["inputs"][0]["from"]["boundary"],
                    shards[0]["outputs"][0]["name"]
                );
            }
            let got = logits(&dir, tmp.path(), &format!("k{k}{balance}"));
            assert_eq!(
                got, want,
                "K = {k}, balance {balance}: the chain must be bit-exact"
            );
        }
    }
}

#[test]
fn rekey_keeps_the_function_and_is_deterministic() {
    let tmp = TempDir::new("upm-rekey");
    let want = logits(&model(), tmp.path(), "orig");
    for (placement, kinds) in [
        ("folded", ["haar", "hadamard", "signed-perm"]),
        ("per-shard", ["haar", "signed-perm", "hadamard"]),
    ] {
        let a = tmp.path().join(format!("{placement}-a"));
        let b = tmp.path().join(format!("{placement}-b"));
        for d in [&a, &b] {
            assert_eq!(split(d, 3, "blocks").code, 0);
            for (e, kind) in kinds.iter().enumerate() {
                let r = run(&[
                    "shard",
                    "rekey",
                    &s(d),
                    "--kind",
                    kind,
                    "--seed",
                    &(40 + e).to_string(),
                    "--placement",
                    placement,
                ]);
                assert_eq!(r.code, 0, "{}", r.stderr);
            }
        }
        let (ma, mb) = (manifest(&a), manifest(&b));
        assert_eq!(ma["epoch"].as_u64(), Some(3));
        assert_eq!(ma["transforms"].as_array().map(Vec::len), Some(3));
        for i in 0..3 {
            let sa = ma["shards"][i]["sha256"].as_str().expect("hash");
            assert_eq!(
                Some(sa),
                mb["shards"][i]["sha256"].as_str(),
                "same seeds ⇒ identical shard {i}"
            );
            // The weights did change: shard i is not its epoch-0 file.
            assert!(
                !a.join("epoch-000000").exists(),
                "old epoch removed without --keep-old"
            );
            let fa = std::fs::read(a.join(ma["shards"][i]["file"].as_str().expect("file")))
                .expect("read");
            let fb = std::fs::read(b.join(mb["shards"][i]["file"].as_str().expect("file")))
                .expect("read");
            assert_eq!(fa, fb);
        }
        let got = logits(&a, tmp.path(), placement);
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "{placement}: max |Δlogit| {d} after 3 epochs");
        assert_ne!(
            got, want,
            "{placement}: the weights must have been rewritten in f32"
        );
    }
    // A different seed gives different shards.
    let c = tmp.path().join("c");
    assert_eq!(split(&c, 3, "blocks").code, 0);
    assert_eq!(run(&["shard", "rekey", &s(&c), "--seed", "1"]).code, 0);
    let d = tmp.path().join("d");
    assert_eq!(split(&d, 3, "blocks").code, 0);
    assert_eq!(run(&["shard", "rekey", &s(&d), "--seed", "2"]).code, 0);
    assert_ne!(
        manifest(&c)["shards"][1]["sha256"],
        manifest(&d)["shards"][1]["sha256"]
    );
    // Placements do not mix.
    let r = run(&[
        "shard",
        "rekey",
        &s(&c),
        "--seed",
        "3",
        "--placement",
        "per-shard",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot switch to per-shard"),
        "{}",
        r.stderr
    );
}

#[test]
fn interrupted_rekey_leaves_the_previous_epoch() {
    let tmp = TempDir::new("upm-kill");
    let want = logits(&model(), tmp.path(), "orig");
    let dir = tmp.path().join("set");
    assert_eq!(split(&dir, 3, "blocks").code, 0);
    let before = std::fs::read(dir.join("manifest.json")).expect("manifest");
    let r = run(&[
        "shard",
        "rekey",
        &s(&dir),
        "--seed",
        "5",
        "--fail-after",
        "2",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).expect("manifest"),
        before
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only manifest.json and epoch-000000 remain: {names:?}"
    );
    assert_eq!(logits(&dir, tmp.path(), "after-kill"), want);
}

#[test]
fn bad_shard_sets_are_refused_naming_the_file() {
    let tmp = TempDir::new("upm-bad");
    let dir = tmp.path().join("set");
    assert_eq!(split(&dir, 3, "blocks").code, 0);
    let ids = tmp.path().join("ids.npy");
    npy::write(
        &ids,
        &HostTensor::from_vec(vec![1, 2], vec![0i64, 1]).expect("ids"),
    )
    .expect("ids");
    let out = tmp.path().join("out");
    let run_set = |m: &Path| {
        run(&[
            "run",
            &s(m),
            "--input",
            &format!("ids={}", s(&ids)),
            "-o",
            &s(&out),
        ])
    };
    let m = manifest(&dir);
    let shard1 = dir.join(m["shards"][1]["file"].as_str().expect("file"));

    // A shard whose bytes changed.
    let good = std::fs::read(&shard1).expect("read");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&shard1, &bad).expect("write");
    let r = run_set(&dir);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("shard-001.onnx: sha256") && r.stderr.contains("does not match"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "nothing written");
    let r = run(&["shard", "rekey", &s(&dir), "--seed", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("shard-001.onnx: sha256"), "{}", r.stderr);
    std::fs::write(&shard1, &good).expect("restore");

    // A missing shard, and a manifest naming a file outside its folder.
    for (file, needle) in [
        ("epoch-000000/shard-009.onnx", "shard-009.onnx' is missing"),
        (
            "../elsewhere/shard-001.onnx",
            "outside its folder (a foreign shard)",
        ),
    ] {
        let mut m2 = m.clone();
        m2["shards"][1]["file"] = serde_json::Value::from(file);
        let p = dir.join("other.json");
        std::fs::write(&p, serde_json::to_string(&m2).expect("json")).expect("write");
        let r = run_set(&p);
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("other.json") && r.stderr.contains(needle),
            "{}",
            r.stderr
        );
        assert!(!out.exists(), "nothing written");
    }

    // An output folder that is not empty.
    let r = split(&dir, 2, "blocks");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("exists and is not empty"), "{}", r.stderr);
    assert_eq!(manifest(&dir), m, "the existing set is untouched");
}

/// Copies the regular files of `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

#[test]
fn participant_local_rekey_reads_only_its_own_shard() {
    let tmp = TempDir::new("upm-local");
    let want = logits(&model(), tmp.path(), "orig");
    for placement in ["folded", "per-shard"] {
        let base = tmp.path().join(format!("{placement}-base"));
        assert_eq!(split(&base, 3, "blocks").code, 0);
        let rekey = |d: &Path, extra: &[&str]| {
            let mut args = vec![
                "shard",
                "rekey",
                d.to_str().expect("utf-8 path"),
                "--kind",
                "haar",
                "--seed",
                "11",
                "--placement",
                placement,
            ];
            args.extend_from_slice(extra);
            run(&args)
        };
        // The whole set at once: the reference.
        let whole = tmp.path().join(format!("{placement}-whole"));
        copy_dir(&base, &whole);
        let r = rekey(&whole, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mw = manifest(&whole);
        // Each participant holds the manifest and its own shard only: the other shard files
        // are deleted, so a re-key that opened them would fail.
        for i in 0..3usize {
            let p = tmp.path().join(format!("{placement}-p{i}"));
            copy_dir(&base, &p);
            for j in (0..3).filter(|&j| j != i) {
                std::fs::remove_file(p.join(format!("epoch-000000/shard-{j:03}.onnx")))
                    .expect("delete another shard");
            }
            let r = rekey(&p, &["--shard", &i.to_string()]);
            assert_eq!(r.code, 0, "participant {i}: {}", r.stderr);
            let m = manifest(&p);
            assert_eq!(m["epoch"].as_u64(), Some(0), "the set waits for the others");
            assert_eq!(m["shards"][i]["epoch"].as_u64(), Some(1));
            assert_eq!(m["shards"][i]["sha256"], mw["shards"][i]["sha256"]);
            let got = std::fs::read(p.join(m["shards"][i]["file"].as_str().expect("file")))
                .expect("read");
            let reference = std::fs::read(whole.join(mw["shards"][i]["file"].as_str().expect("f")))
                .expect("read");
            assert!(
                got == reference,
                "{placement}: participant {i}'s shard equals the whole-set re-key's"
            );
        }
        // One folder re-keyed shard by shard: mid-epoch it refuses to run (mixed epochs) and
        // refuses other seeds; after the last shard the set is at epoch 1 and keeps the function.
        let seq = tmp.path().join(format!("{placement}-seq"));
        copy_dir(&base, &seq);
        for i in [2usize, 0, 1] {
            let r = rekey(&seq, &["--shard", &i.to_string()]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            if i == 2 {
                let ids = tmp.path().join("ids1.npy");
                npy::write(
                    &ids,
                    &HostTensor::from_vec(vec![1, 2], vec![0i64, 1]).expect("ids"),
                )
                .expect("ids");
                let r = run(&[
                    "run",
                    &s(&seq),
                    "--input",
                    &format!("ids={}", s(&ids)),
                    "-o",
                    &s(&tmp.path().join("never")),
                ]);
                assert_eq!(r.code, 1);
                assert!(
                    r.stderr.contains("re-key the remaining shards"),
                    "{}",
                    r.stderr
                );
                let r = run(&[
                    "shard",
                    "rekey",
                    &s(&seq),
                    "--seed",
                    "12",
                    "--placement",
                    placement,
                    "--shard",
                    "0",
                ]);
                assert_eq!(r.code, 1);
                assert!(r.stderr.contains("must use the same"), "{}", r.stderr);
                let r = rekey(&seq, &["--shard", "2"]);
                assert_eq!(r.code, 1);
                assert!(r.stderr.contains("already at epoch 1"), "{}", r.stderr);
                let r = rekey(&seq, &[]);
                assert_eq!(r.code, 1);
                assert!(r.stderr.contains("with --shard"), "{}", r.stderr);
            }
        }
        let m = manifest(&seq);
        assert_eq!(m["epoch"].as_u64(), Some(1));
        assert!(m["shards"][1].get("epoch").is_none());
        assert_eq!(m["transforms"][0]["shards"], serde_json::json!([2, 0, 1]));
        assert!(!seq.join("epoch-000000").exists(), "old epoch removed");
        for i in 0..3 {
            assert_eq!(m["shards"][i]["sha256"], mw["shards"][i]["sha256"]);
        }
        let got = logits(&seq, tmp.path(), &format!("{placement}-seq"));
        assert!(max_diff(&got, &want) < 1e-5, "{placement}");
    }
}

/// The numbers after `key` in a re-key report, one per shard line.
fn report_numbers(stdout: &str, key: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|l| l.split(key).nth(1))
        .map(|rest| {
            let num: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-' | '+'))
                .collect();
            num.parse().expect("a number in the report")
        })
        .collect()
}

#[test]
fn head_keys_are_bounded_and_keep_the_function() {
    let tmp = TempDir::new("upm-heads");
    let model = repo().join("tests/upm/gqa2.oir");
    let want = logits(&model, tmp.path(), "orig");
    for placement in ["folded", "per-shard"] {
        let dir = tmp.path().join(placement);
        let r = run(&["shard", "split", &s(&model), "-k", "2", "-o", &s(&dir)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // Three epochs with V/O keys of condition ≤ 4, then one back to the identity key.
        for (e, cond) in [(1, Some("4")), (2, Some("4")), (3, Some("4")), (4, None)] {
            let seed = e.to_string();
            let mut args = vec![
                "shard",
                "rekey",
                dir.to_str().expect("utf-8"),
                "--seed",
                &seed,
                "--placement",
                placement,
            ];
            if let Some(c) = cond {
                args.extend(["--head-cond", c]);
            }
            let r = run(&args);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let keys = report_numbers(&r.stdout, "cond(A_t) ≤");
            let changes = report_numbers(&r.stdout, "cond(A_{t−1}⁻¹A_t) ≤");
            let inv = report_numbers(&r.stdout, "‖C·C⁻¹ − I‖_max");
            assert_eq!(keys.len(), 2, "{}", r.stdout);
            for ((k, c), i) in keys.iter().zip(&changes).zip(&inv) {
                // An absolute key never exceeds the cap, so nothing compounds; the change
                // between two of them is bounded by the cap squared.
                match cond {
                    Some(_) => assert!(*k > 1.0 + 1e-6 && *k <= 4.0 + 1e-9, "{}", r.stdout),
                    None => assert!((k - 1.0).abs() < 1e-9, "{}", r.stdout),
                }
                assert!(*c >= 1.0 && *c <= 16.0 + 1e-9, "{}", r.stdout);
                assert!(*i < 1e-12, "{}", r.stdout);
            }
            let got = logits(&dir, tmp.path(), &format!("{placement}{e}"));
            let d = max_diff(&got, &want);
            assert!(d < 1e-5, "{placement}, epoch {e}: max |Δlogit| {d}");
        }
        let m = manifest(&dir);
        assert_eq!(m["transforms"][2]["head_cond"].as_f64(), Some(4.0));
        assert!(m["transforms"][3].get("head_cond").is_none());
    }
    // A cap below 1 is refused, nothing written.
    let dir = tmp.path().join("folded");
    let before = manifest(&dir);
    let r = run(&[
        "shard",
        "rekey",
        &s(&dir),
        "--seed",
        "9",
        "--head-cond",
        "0.5",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("condition cap"), "{}", r.stderr);
    assert_eq!(manifest(&dir), before);
}
