//! A stable (no nightly) fuzzing harness for the four parsers of untrusted input: the ONNX
//! importer, the `.oir` parser, the pass-pipeline parser and `.npy` reading.
//!
//! Each target replays its corpus (`fuzz/corpus/<target>/`, small files derived from the
//! fixtures) and every saved crash (`fuzz/crashes/<target>/`), then a seeded mutator derives
//! mutants from the corpus (byte flips, interesting values, inserted/deleted/duplicated chunks,
//! truncation, splices of two inputs). A target may reject an input with an error; it must not
//! panic. Parsed modules also go through the verifier and the printer, and printed text must
//! parse again.
//!
//! In CI this runs `ORTHO_FUZZ_ITERS` (default 2000) mutants per corpus file, well under a
//! minute. `scripts/fuzz.sh` runs the same harness with millions of executions and a fresh
//! seed; a panicking mutant is written to `fuzz/crashes/<target>/` (replayed from then on) and
//! the test fails naming it. Stack overflows and aborts cannot be caught in-process: the nesting
//! limits (`ortho_ir::limits`) are what keeps them away, and the script would report the crash.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A small deterministic generator (xorshift64*), so a seed reproduces a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte values that often hit edge cases in decoders (varint continuation bits, signs, ASCII
/// punctuation of the text grammars).
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, b'[', b']', b'(', b')', b'{', b'}', b'<', b'>', b',', b'"', b'-',
    b'9', b'x', b'%', b'@', b'\n',
];

/// One mutant of `input` (with `other`, another corpus file, for splicing).
fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(16.min(len - i));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a chunk (repeats nesting and fields).
                let i = rng.below(len);
                let n = 1 + rng.below(64.min(len - i));
                let chunk: Vec<u8> = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 if len > 0 => v.truncate(rng.below(len)),
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                // A multi-byte little-endian number at a random place (lengths, dims).
                let i = rng.below(len);
                let bytes = rng.next().to_le_bytes();
                for (k, b) in bytes.iter().take(len - i).enumerate() {
                    v[i + k] = *b;
                }
            }
            _ => v.push(INTERESTING[rng.below(INTERESTING.len())]),
        }
    }
    v
}

/// A fuzz target: takes one input, may fail with an error, must not panic.
type Target = fn(&[u8], &Path);

fn onnx_target(bytes: &[u8], _scratch: &Path) {
    if let Ok(m) = ortho_frontends::onnx::import_bytes(bytes, Path::new("fuzz.onnx")) {
        module_checks(&m);
    }
}

fn oir_target(bytes: &[u8], _scratch: &Path) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(m) = ortho_ir::text::parse_module(&text) {
        module_checks(&m);
    }
}

fn pipeline_target(bytes: &[u8], _scratch: &Path) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(p) = ortho_passes::pipeline::Pipeline::parse(&text) {
        // The canonical form of a parsed pipeline parses again.
        let canonical = p.canonical();
        assert!(
            ortho_passes::pipeline::Pipeline::parse(&canonical).is_ok(),
            "canonical form '{canonical}' does not parse"
        );
    }
}

fn npy_target(bytes: &[u8], _scratch: &Path) {
    let _ = ortho_codegen::cpu::npy::from_bytes(bytes);
}

/// What every parsed module goes through: the verifier, and for a verified module, printing
/// and parsing its text again.
fn module_checks(m: &ortho_ir::Module) {
    if ortho_ir::verify::verify_module(m).is_ok() {
        let text =
            ortho_ir::text::print_module(m, ortho_ir::text::PrintOptions { elide_above: None });
        let _ = ortho_ir::text::parse_module(&text);
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs one input; on a panic saves it under fuzz/crashes/<name>/ and returns its path.
fn execute(name: &str, target: Target, input: &[u8], scratch: &Path) -> Option<PathBuf> {
    let r = catch_unwind(AssertUnwindSafe(|| target(input, scratch)));
    if r.is_ok() {
        return None;
    }
    let dir = common::repo().join("fuzz/crashes").join(name);
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let p = dir.join(format!("crash-{hash:016x}"));
    let _ = std::fs::write(&p, input);
    Some(p)
}

/// Replays the corpus and the saved crashes of `name`, then `iters` mutants per corpus file.
/// Returns the number of executions; panics listing the crashing inputs.
fn fuzz(name: &str, target: Target) -> u64 {
    let iters: usize = std::env::var("ORTHO_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("ORTHO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let root = common::repo().join("fuzz");
    let corpus: Vec<Vec<u8>> = files(&root.join("corpus").join(name))
        .iter()
        .map(|p| std::fs::read(p).expect("read corpus"))
        .collect();
    assert!(!corpus.is_empty(), "no corpus for {name}");
    let scratch = common::TempDir::new(&format!("fuzz-{name}"));
    let mut crashes = Vec::new();
    let mut runs = 0u64;
    for p in files(&root.join("crashes").join(name)) {
        let input = std::fs::read(&p).expect("read crash");
        runs += 1;
        if catch_unwind(AssertUnwindSafe(|| target(&input, scratch.path()))).is_err() {
            crashes.push(p);
        }
    }
    // Replaying only: the panics of the saved crashes are the failures to report.
    let mut rng = Rng(seed ^ name.bytes().fold(0, |h, b| h * 31 + b as u64) | 1);
    for (k, input) in corpus.iter().enumerate() {
        runs += 1;
        crashes.extend(execute(name, target, input, scratch.path()));
        let other = &corpus[(k + 1) % corpus.len()];
        for _ in 0..iters {
            let m = mutate(input, other, &mut rng);
            runs += 1;
            crashes.extend(execute(name, target, &m, scratch.path()));
        }
    }
    eprintln!("fuzz {name}: {runs} executions, {} crashes", crashes.len());
    assert!(crashes.is_empty(), "{name}: inputs that panic: {crashes:?}");
    runs
}

#[test]
fn fuzz_onnx_importer() {
    fuzz("onnx", onnx_target);
}

#[test]
fn fuzz_oir_parser() {
    fuzz("oir", oir_target);
}

#[test]
fn fuzz_pipeline_parser() {
    fuzz("pipeline", pipeline_target);
}

#[test]
fn fuzz_npy_reader() {
    fuzz("npy", npy_target);
}

#[test]
fn mutator_is_deterministic() {
    let a: Vec<Vec<u8>> = {
        let mut r = Rng(7);
        (0..20)
            .map(|_| mutate(b"module {}", b"graph", &mut r))
            .collect()
    };
    let b: Vec<Vec<u8>> = {
        let mut r = Rng(7);
        (0..20)
            .map(|_| mutate(b"module {}", b"graph", &mut r))
            .collect()
    };
    assert_eq!(a, b);
    assert!(
        a.iter().any(|m| m != b"module {}"),
        "mutants differ from the input"
    );
}
