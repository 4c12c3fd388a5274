//! `ortho-opt compare`: the equivalence harness. Runs two models on the same token windows and
//! reports how far B's logits and perplexity are from A's.

use crate::cli::GlobalArgs;
use crate::eval::{
    batch_nll, default_batch, finite_or_null as num, forward_windows, tokenize, TextArgs, Timings,
};
use crate::progress::Progress;
use crate::{CliError, DriverOutput};
use ortho_codegen::metrics;
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

pub const COMPARE_JSON: &str = "Metrics are over every position of every window (perplexities over the seqlen − 1
predictions of each window). With --json, stdout is one JSON object:
  max_abs_logit_diff   max |B − A| over all logits
  max_rel_logit_diff   max over positions of max|B − A| / max|A| (the row's scale)
  ppl_a, ppl_b         perplexities (null when not finite)
  nll_mean_a, nll_mean_b
  delta_ppl            ppl_b − ppl_a
  delta_ppl_rel        (ppl_b − ppl_a) / ppl_a
  js_mean, js_max      Jensen–Shannon divergence of the next-token distributions, nats (≤ ln 2)
  argmax_agreement     fraction of positions where both models pick the same top token
  positions            positions compared;  tokens: predictions scored
  non_finite_a, non_finite_b   non-finite logits seen in each model
  locate               with --locate: {compared, unmatched, tolerance, first, last_agreeing}, each
                       divergence {value, node, max_abs, relative}; absent without --locate
  windows, seqlen, bos, model_a, model_b, tokenizer, text, threads, seconds {tokenize, compile, forward, total}";

/// Compare two models' logits and perplexity on the same text (B relative to A).
#[derive(Debug, clap::Args)]
#[command(after_help = COMPARE_JSON)]
pub struct CompareArgs {
    /// The reference model (.onnx or .oir, or a shard manifest).
    pub model_a: PathBuf,
    /// The model to judge.
    pub model_b: PathBuf,
    #[command(flatten)]
    pub text: TextArgs,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when B's perplexity exceeds A's by more than X (ppl_b − ppl_a > X,
    /// or a perplexity is not finite).
    #[arg(long, value_name = "X")]
    pub max_delta_ppl: Option<f64>,
    /// Exit with status 1 when max |B − A| over all logits exceeds X.
    #[arg(long, value_name = "X")]
    pub max_abs_logit: Option<f64>,
    /// Exit with status 1 when the argmax agreement (a fraction, 0 to 1) is below X.
    #[arg(long, value_name = "X")]
    pub min_argmax: Option<f64>,
    /// Also run the first window through both models keeping every activation, and name the
    /// first node of B whose output differs from A's namesake by more than --locate-tol
    /// (relative to the tensor's largest |A|): for finding where a transform that should be
    /// exact goes wrong. Values are matched by name.
    #[arg(long)]
    pub locate: bool,
    /// Write a self-contained HTML report to FILE: the mean NLL at each position of the
    /// windows for A and B, and their difference, as inline SVG charts.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// The relative tolerance of --locate.
    #[arg(long, value_name = "X", default_value_t = 1e-4, requires = "locate")]
    pub locate_tol: f64,
}

/// The gates of `--max-delta-ppl`, `--max-abs-logit` and `--min-argmax` that the measured
/// values fail, as lines for stderr. NaN fails every gate it meets.
fn failed_gates(a: &CompareArgs, dppl: f64, max_abs: f64, agree: f64) -> Vec<String> {
    let mut failed = Vec::new();
    if let Some(x) = a.max_delta_ppl {
        if !(dppl <= x) {
            failed.push(format!("--max-delta-ppl {x}: ppl_b − ppl_a = {dppl:.6}"));
        }
    }
    if let Some(x) = a.max_abs_logit {
        if !(max_abs <= x) {
            failed.push(format!("--max-abs-logit {x}: max |Δlogit| = {max_abs:.6e}"));
        }
    }
    if let Some(x) = a.min_argmax {
        if !(agree >= x) {
            failed.push(format!("--min-argmax {x}: argmax agreement = {agree:.6}"));
        }
    }
    failed
}

#[derive(Default)]
struct Acc {
    max_abs: f64,
    max_rel: f64,
    js_sum: f64,
    js_max: f64,
    agree: usize,
    positions: usize,
    nll_a: f64,
    nll_b: f64,
    preds: usize,
    nf_a: usize,
    nf_b: usize,
    /// Summed NLL at each position of a window (for --html), A and B.
    pos_a: Vec<f64>,
    pos_b: Vec<f64>,
    /// Predictions summed into each position.
    pos_n: Vec<usize>,
}

pub fn run(a: CompareArgs, g: &GlobalArgs) -> DriverOutput {
    if a.locate {
        if let Some(refused) = crate::compare_locate::refuse_manifests(&a.model_a, &a.model_b) {
            return refused;
        }
    }
    match run_inner(&a, g) {
        Err(e) => DriverOutput::failed(e),
        Ok((out, err, failed)) if failed.is_empty() => DriverOutput::ok(out, err),
        // The report still goes to stdout: a CI log shows by how much the gate failed.
        Ok((out, mut err, failed)) => {
            for f in &failed {
                let _ = writeln!(err, "error: gate failed: {f}");
            }
            let e = CliError::GateFailed {
                count: failed.len(),
            };
            DriverOutput {
                code: e.exit_code(),
                stdout: out,
                stderr: err,
                error: Some(std::sync::Arc::new(e)),
            }
        }
    }
}

fn run_inner(a: &CompareArgs, g: &GlobalArgs) -> Result<(String, String, Vec<String>), CliError> {
    let t_all = Instant::now();
    let tokenizer = g.tokenizer("compare needs --tokenizer tokenizer.json")?;
    let w = tokenize(&a.text, tokenizer)?;
    let t0 = Instant::now();
    let pa = crate::run::compile(&a.model_a, g.threads, g.quiet)?;
    let pb = crate::run::compile(&a.model_b, g.threads, g.quiet)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut progress = Progress::new("compare", "windows", w.ids.len(), g.quiet);
    let t1 = Instant::now();
    let mut acc = Acc::default();
    forward_windows(
        &[&pa, &pb],
        &w,
        default_batch(&a.text),
        &mut progress,
        |first, logits| {
            let (la, lb) = (&logits[0], &logits[1]);
            let (n, s, v) = (la.shape()[0], la.shape()[1], la.shape()[2]);
            let (da, db) = (la.as_f32().unwrap_or(&[]), lb.as_f32().unwrap_or(&[]));
            // Per position: (max abs diff, relative diff, JS, same argmax).
            let per: Vec<(f64, f64, f64, bool)> = (0..n * s)
                .into_par_iter()
                .map(|p| {
                    let (ra, rb) = (&da[p * v..(p + 1) * v], &db[p * v..(p + 1) * v]);
                    let (d, r) = metrics::row_diff(ra, rb);
                    (
                        d,
                        r,
                        metrics::js_divergence(ra, rb),
                        metrics::argmax(ra) == metrics::argmax(rb),
                    )
                })
                .collect();
            for (d, r, js, same) in per {
                acc.max_abs = acc.max_abs.max(d);
                acc.max_rel = acc.max_rel.max(r);
                acc.js_sum += js;
                acc.js_max = acc.js_max.max(js);
                acc.agree += usize::from(same);
                acc.positions += 1;
            }
            let wins = &w.ids[first..first + n];
            let per_window = s.saturating_sub(1).max(1);
            if acc.pos_n.len() < per_window {
                acc.pos_a.resize(per_window, 0.0);
                acc.pos_b.resize(per_window, 0.0);
                acc.pos_n.resize(per_window, 0);
            }
            let nll = batch_nll(la, wins).into_iter().zip(batch_nll(lb, wins));
            // batch_nll lists each window's predictions in order, window after window.
            for (i, ((x, nfa), (y, nfb))) in nll.enumerate() {
                let t = i % per_window;
                acc.pos_a[t] += x;
                acc.pos_b[t] += y;
                acc.pos_n[t] += 1;
                acc.nll_a += x;
                acc.nll_b += y;
                acc.nf_a += nfa;
                acc.nf_b += nfb;
                acc.preds += 1;
            }
            Ok(())
        },
    )?;
    let forward_s = t1.elapsed().as_secs_f64();
    let located = if a.locate {
        let window = w.ids.get(..1).unwrap_or(&[]);
        let feeds = crate::lm::feeds(&pa.input_names(), window, "compare")?
            .into_iter()
            .map(|f| {
                let t = ortho_codegen::cpu::HostTensor::from_vec(f.shape, f.data)
                    .map_err(crate::run::run_error)?;
                Ok((f.name, t))
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let refs: Vec<(&str, ortho_codegen::cpu::HostTensor)> =
            feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        Some(crate::compare_locate::locate(
            &a.model_a,
            &a.model_b,
            &refs,
            a.locate_tol,
            g.threads,
        )?)
    } else {
        None
    };
    let nll_a = acc.nll_a / acc.preds.max(1) as f64;
    let nll_b = acc.nll_b / acc.preds.max(1) as f64;
    let (ppl_a, ppl_b) = (nll_a.exp(), nll_b.exp());
    let dppl = ppl_b - ppl_a;
    let js_mean = acc.js_sum / acc.positions.max(1) as f64;
    let agree = acc.agree as f64 / acc.positions.max(1) as f64;
    let mut err = String::new();
    if acc.nf_a + acc.nf_b > 0 {
        let _ = writeln!(
            err,
            "warning: non-finite logits: {} in A, {} in B",
            acc.nf_a, acc.nf_b
        );
    }
    let out = if a.json {
        let mut j = serde_json::json!({
            "model_a": a.model_a.display().to_string(),
            "model_b": a.model_b.display().to_string(),
            "max_abs_logit_diff": num(acc.max_abs),
            "max_rel_logit_diff": num(acc.max_rel),
            "ppl_a": num(ppl_a),
            "ppl_b": num(ppl_b),
            "nll_mean_a": num(nll_a),
            "nll_mean_b": num(nll_b),
            "delta_ppl": num(dppl),
            "delta_ppl_rel": num(dppl / ppl_a),
            "js_mean": num(js_mean),
            "js_max": num(acc.js_max),
            "argmax_agreement": num(agree),
            "positions": acc.positions,
            "tokens": acc.preds,
            "non_finite_a": acc.nf_a,
            "non_finite_b": acc.nf_b,
        });
        if let Some(l) = &located {
            j["locate"] = serde_json::to_value(l).map_err(CliError::Json)?;
        }
        Timings {
            compile: compile_s,
            forward: forward_s,
            start: t_all,
        }
        .json(j, &a.text, tokenizer, &w, pa.threads())
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "A: {}", a.model_a.display());
        let _ = writeln!(s, "B: {}", a.model_b.display());
        let _ = writeln!(
            s,
            "windows:            {} × {} ({} positions, {} predictions)",
            a.text.windows, a.text.seqlen, acc.positions, acc.preds
        );
        let _ = writeln!(
            s,
            "max |Δlogit|:       {:.6e} (relative {:.3e})",
            acc.max_abs, acc.max_rel
        );
        let _ = writeln!(
            s,
            "perplexity:         A {ppl_a:.5}, B {ppl_b:.5}, Δ {dppl:+.5} ({:+.3e} relative)",
            dppl / ppl_a
        );
        let _ = writeln!(
            s,
            "JS divergence:      mean {js_mean:.3e}, max {:.3e} nats",
            acc.js_max
        );
        let _ = writeln!(s, "argmax agreement:   {:.4} %", agree * 100.0);
        let _ = writeln!(
            s,
            "time:               compile {compile_s:.2} s, forward {forward_s:.2} s"
        );
        if let Some(l) = &located {
            s.push_str(&l.render());
        }
        s
    };
    if let Some(path) = &a.html {
        let rows = [
            ("model A", a.model_a.display().to_string()),
            ("model B", a.model_b.display().to_string()),
            ("text", a.text.text.display().to_string()),
            (
                "windows",
                format!("{} × {} tokens", a.text.windows, a.text.seqlen),
            ),
            ("perplexity A", format!("{ppl_a:.5}")),
            ("perplexity B", format!("{ppl_b:.5} (Δ {dppl:+.5})")),
            ("max |Δlogit|", format!("{:.6e}", acc.max_abs)),
            ("argmax agreement", format!("{:.4} %", agree * 100.0)),
        ];
        let html = crate::report_html::nll_report(&rows, &acc.pos_a, &acc.pos_b, &acc.pos_n)?;
        ortho_ir::output::write_file(path, html.as_bytes()).map_err(CliError::io(path))?;
    }
    let failed = failed_gates(a, dppl, acc.max_abs, agree);
    Ok((out, err, failed))
}
