//! Validation of the joint-basis certificate (issue 20) on synthetic ground truth
//! (`ortho_passes::linalg::joint_basis::synthetic`): for each structure, d, N and ε, the
//! fraction of trials in the first-order regime (certified), the coverage inside it (bound ≥ true
//! distance to the nearest exact joint basis, columns aligned as the synthetic module says), the
//! median tightness ratio bound/distance, the median bound, and per (structure, d, N) the
//! log-log slope of the median bound against ε. Each figure is given for the spec's bound
//! `(√L + noise)/σ_min` and for the sharper `‖𝒜⁺r‖ + noise/σ_min` (`bound_lsq`).
//!
//! Run with `cargo bench --bench joint_basis`. Environment: `BENCH_TRIALS` (default 5),
//! `BENCH_DIMS` (default `16,32,64`); filters to iterate on one cell, each a comma list:
//! `BENCH_KINDS` (`sym`/`symmetric`, `gen`/`general`; default both), `BENCH_NS` (default
//! `2,4,8`), `BENCH_EPS` (default `1e-6,1e-5,1e-4,1e-3,1e-2`) — a filtered run draws the same
//! problems as the full grid (the generator is seeded per d, N and ε); `BENCH_VERBOSE=1` prints
//! one line per trial (regime, loss, distance, seconds); `BENCH_FLAG=SC,C,S` and
//! `BENCH_RESTARTS=K` set the general case's start search (`JointOptions::flag`: screening
//! steps, candidates, steps; `0,0,0` is the unrefined greedy start) and restarts. `BENCH_NO_PROBE=1` (general case: no ambiguity probe,
//! as before issue 20's second round). Trials excluded as ambiguous or inconsistent (module doc
//! of `joint_basis`) are counted (`amb/inc`), and
//! every certified trial whose bound misses is printed with its loss, the loss at the true
//! basis V (noisy data, unpolished), and η². `BENCH_PLOT=FILE.svg` also draws every certified
//! trial's true distance, bound and sharper bound against ε (log-log), one panel per structure.
//!
//! Every trial at ε ≤ 1e-3 that is not certified prints an `excluded:` line telling an
//! optimizer failure from an inherent one: the reason, `L(U)` against η², `‖U − V‖` (V the true
//! basis), and the *oracle* — V polished by Gauss–Newton / Jacobi on the noisy data
//! (`joint_basis_from`): its loss, bound and whether it is certified. An exclusion whose oracle
//! is certified is the optimizer's (it missed a flag the certificate would accept); one whose
//! oracle is not certified is inherent at that ε. The summary counts both.

use ortho_passes::linalg::joint_basis::synthetic::{distance_to_exact, generate};
use ortho_passes::linalg::joint_basis::{
    certify, joint_basis, joint_basis_from, FlagSearch, JointOptions, JointProblem, NotCertified,
    Regime, Stop, Structure,
};
use ortho_passes::linalg::orthogonal::Rng;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dims: Vec<usize> = std::env::var("BENCH_DIMS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32, 64]);
    let list = |name: &str| -> Option<Vec<String>> {
        std::env::var(name)
            .ok()
            .map(|s| s.split(',').map(|x| x.trim().to_lowercase()).collect())
    };
    let epsilons: Vec<f64> = list("BENCH_EPS")
        .map(|v| v.iter().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2]);
    let ns: Vec<usize> = list("BENCH_NS")
        .map(|v| v.iter().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 4, 8]);
    let kinds = list("BENCH_KINDS");
    let want = |short: &str, long: &str| {
        kinds
            .as_ref()
            .is_none_or(|k| k.iter().any(|x| x == short || x == long))
    };
    // BENCH_FLAG=SC,C,S and BENCH_RESTARTS=K (general case): `JointOptions::flag` (screening
    // steps, candidates, steps) and `restarts`, for experiments on the start.
    let flag_search: Option<FlagSearch> = list("BENCH_FLAG").and_then(|v| {
        Some(FlagSearch {
            screen_steps: v.first()?.parse().ok()?,
            candidates: v.get(1)?.parse().ok()?,
            steps: v.get(2)?.parse().ok()?,
        })
    });
    let restarts: Option<usize> = std::env::var("BENCH_RESTARTS")
        .ok()
        .and_then(|s| s.parse().ok());
    let verbose = std::env::var("BENCH_VERBOSE").is_ok_and(|v| v == "1");
    // Exclusions at ε ≤ 1e-3: (all, the oracle start is certified, the oracle is not).
    let mut excl = (0usize, 0usize, 0usize);
    let no_probe = std::env::var("BENCH_NO_PROBE").is_ok_and(|v| v == "1");
    println!(
        "{:<5} {:>3} {:>2} {:>7} {:>6} {:>10} {:>7} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>7}",
        "kind",
        "d",
        "N",
        "eps",
        "trials",
        "certified",
        "amb/inc",
        "covered",
        "med tight",
        "max tight",
        "med bound",
        "cov lsq",
        "tight lsq",
        "min tight",
        "s/trial"
    );
    let mut slopes = Vec::new();
    let mut all_cert = 0;
    let mut all_cov = 0;
    let mut excluded_small = (0usize, 0usize);
    let mut tight_all = Vec::new();
    let mut all_cov_lsq = 0;
    let mut tight_all_lsq = Vec::new();
    // (structure index, ε, true distance, bound, sharper bound) of every certified trial.
    let mut plotted: Vec<(usize, f64, f64, f64, f64)> = Vec::new();
    for structure in [Structure::Symmetric, Structure::General] {
        let kind = match structure {
            Structure::Symmetric => "sym",
            Structure::General => "gen",
        };
        let long = match structure {
            Structure::Symmetric => "symmetric",
            Structure::General => "general",
        };
        if !want(kind, long) {
            continue;
        }
        for &d in &dims {
            for &n in &ns {
                let mut med_bounds = Vec::new();
                for &eps in &epsilons {
                    let mut rng = Rng::new(1000 + d as u64 * 7 + n as u64);
                    let (mut cert, mut cov, mut cov_lsq, mut ambig, mut incons) = (0, 0, 0, 0, 0);
                    let mut ratios_lsq = Vec::new();
                    let (mut ratios, mut bounds) = (Vec::new(), Vec::new());
                    let start = Instant::now();
                    // Time spent on the oracle diagnostic, left out of s/trial.
                    let mut oracle_secs = 0.0;
                    for t in 0..trials {
                        let s = generate(d, n, structure, eps, &mut rng);
                        let trial_start = Instant::now();
                        let opts = JointOptions {
                            structure,
                            seed: t as u64,
                            probe_factor: if no_probe { 0.0 } else { 25.0 },
                            flag: flag_search.unwrap_or(JointOptions::default().flag),
                            restarts: restarts.unwrap_or(JointOptions::default().restarts),
                            ..JointOptions::default()
                        };
                        let problem = JointProblem::new(s.noisy.clone(), s.noise);
                        let result = joint_basis(&problem, &opts);
                        let jb = match result {
                            Ok(jb) => jb,
                            Err(e) => {
                                println!("  error: {e}");
                                continue;
                            }
                        };
                        let dist = distance_to_exact(&jb.u, &s, structure);
                        let secs = trial_start.elapsed().as_secs_f64();
                        bounds.push(jb.bound);
                        if verbose {
                            let why = match &jb.regime {
                                Regime::Certified => "certified".to_string(),
                                Regime::NotCertified(w) => w.to_string(),
                            };
                            println!(
                                "  trial {t}: {why}; L(U) {:.3e}, η² {:.3e}, ‖U − V‖ {dist:.3e}, bound {:.3e}, {:?}, {secs:.1} s",
                                jb.loss,
                                s.noise * s.noise,
                                jb.bound,
                                jb.stop
                            );
                        }
                        if let (Regime::NotCertified(why), true) = (&jb.regime, eps <= 1e-3) {
                            let oracle_start = Instant::now();
                            let oracle = joint_basis_from(
                                &JointProblem::new(s.noisy.clone(), s.noise),
                                s.basis.clone(),
                                &opts,
                            );
                            oracle_secs += oracle_start.elapsed().as_secs_f64();
                            excl.0 += 1;
                            let text = match oracle {
                                Ok(o) => {
                                    let ok = o.regime == Regime::Certified;
                                    if ok {
                                        excl.1 += 1;
                                    } else {
                                        excl.2 += 1;
                                    }
                                    format!(
                                        "oracle (V polished): L {:.3e}, bound {:.3e}, ‖U_or − V‖ {:.3e}, {}",
                                        o.loss,
                                        o.bound,
                                        distance_to_exact(&o.u, &s, structure),
                                        match &o.regime {
                                            Regime::Certified => "certified (optimizer's miss)".into(),
                                            Regime::NotCertified(w) => format!("not certified, inherent ({w})"),
                                        }
                                    )
                                }
                                Err(e) => format!("oracle failed: {e}"),
                            };
                            println!(
                                "  excluded: {kind} d={d} N={n} ε={eps:.0e} trial {t}: {why}; L(U) {:.3e} vs η² {:.3e}; ‖U − V‖ {dist:.3e}; {text}",
                                jb.loss,
                                s.noise * s.noise
                            );
                        }
                        match jb.regime {
                            Regime::NotCertified(NotCertified::Ambiguous { .. }) => ambig += 1,
                            Regime::NotCertified(NotCertified::Inconsistent { .. }) => incons += 1,
                            _ => {}
                        }
                        if jb.regime == Regime::Certified && jb.bound < dist {
                            // The loss of the true basis on the noisy data, for comparison.
                            let at_v = certify(
                                &s.noisy,
                                s.basis.clone(),
                                Stop::Converged { sweeps: 0 },
                                ortho_passes::linalg::joint_basis::Noise::Given(s.noise),
                                &opts,
                            )
                            .map(|c| c.loss)
                            .unwrap_or(f64::NAN);
                            println!(
                                "  miss: trial {t}: distance {dist:.3e} > bound {:.3e}; L(U) {:.3e}, L(V) {at_v:.3e}, η² {:.3e}",
                                jb.bound,
                                jb.loss,
                                s.noise * s.noise
                            );
                        }
                        if jb.regime == Regime::Certified {
                            plotted.push((
                                (structure == Structure::General) as usize,
                                eps,
                                dist,
                                jb.bound,
                                jb.bound_lsq,
                            ));
                            cert += 1;
                            if jb.bound >= dist {
                                cov += 1;
                            }
                            ratios.push(jb.bound / dist);
                            if jb.bound_lsq >= dist {
                                cov_lsq += 1;
                            }
                            ratios_lsq.push(jb.bound_lsq / dist);
                        }
                    }
                    let per = (start.elapsed().as_secs_f64() - oracle_secs) / trials as f64;
                    if eps <= 1e-3 {
                        excluded_small.0 += trials - cert;
                        excluded_small.1 += trials;
                    }
                    all_cert += cert;
                    all_cov += cov;
                    tight_all.extend(ratios.iter().copied());
                    all_cov_lsq += cov_lsq;
                    tight_all_lsq.extend(ratios_lsq.iter().copied());
                    let mb = median(bounds);
                    med_bounds.push((eps, mb));
                    println!(
                        "{:<5} {:>3} {:>2} {:>7.0e} {:>6} {:>10} {:>7} {:>9} {:>10.2} {:>10.2} {:>10.2e} {:>9} {:>10.2} {:>10.2} {:>7.2}",
                        kind,
                        d,
                        n,
                        eps,
                        trials,
                        format!("{cert}/{trials}"),
                        format!("{ambig}/{incons}"),
                        format!("{cov}/{cert}"),
                        median(ratios.clone()),
                        ratios.iter().copied().fold(f64::NAN, f64::max),
                        mb,
                        format!("{cov_lsq}/{cert}"),
                        median(ratios_lsq.clone()),
                        ratios_lsq.iter().copied().fold(f64::NAN, f64::min),
                        per
                    );
                }
                // Slope over ε ≤ 1e-3 (where the bound is first order).
                let pts: Vec<(f64, f64)> = med_bounds
                    .iter()
                    .filter(|(e, b)| *e <= 1e-3 && b.is_finite() && *b > 0.0)
                    .map(|(e, b)| (e.log10(), b.log10()))
                    .collect();
                if pts.len() >= 2 {
                    let k = pts.len() as f64;
                    let mx = pts.iter().map(|p| p.0).sum::<f64>() / k;
                    let my = pts.iter().map(|p| p.1).sum::<f64>() / k;
                    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
                    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
                    slopes.push((kind, d, n, sxy / sxx));
                }
            }
        }
    }
    println!();
    println!("log-log slope of the median bound vs ε (ε ≤ 1e-3):");
    for (kind, d, n, s) in &slopes {
        println!("  {kind} d={d:<3} N={n}: {s:.3}");
    }
    println!();
    println!(
        "overall: coverage {all_cov}/{all_cert} certified trials; excluded at ε ≤ 1e-3: {}/{} ({:.1} %); median tightness {:.2}",
        excluded_small.0,
        excluded_small.1,
        100.0 * excluded_small.0 as f64 / excluded_small.1.max(1) as f64,
        median(tight_all)
    );
    println!(
        "exclusions at ε ≤ 1e-3: {} — the optimizer's (oracle start certified) {}, inherent (oracle not certified) {}",
        excl.0, excl.1, excl.2
    );
    println!(
        "sharper bound (‖𝒜⁺r‖ + noise/σ_min): coverage {all_cov_lsq}/{all_cert}; median tightness {:.2}",
        median(tight_all_lsq)
    );
    if let Ok(path) = std::env::var("BENCH_PLOT") {
        match plot(&path, &plotted) {
            Ok(()) => println!("plot: {path}"),
            Err(e) => println!("plot not written: {e}"),
        }
    }
}

/// Log-log scatter of the certified trials: true distance (grey), the spec's bound (blue), the
/// sharper bound (red) against ε; a bound point above its distance point is a covered trial.
fn plot(path: &str, pts: &[(usize, f64, f64, f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let ys: Vec<f64> = pts
        .iter()
        .flat_map(|p| [p.2, p.3, p.4])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-12) / 2.0;
    let hi = ys.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 2.0;
    for (k, (panel, title)) in panels
        .iter()
        .zip([
            "symmetric (joint diagonalization)",
            "general (joint triangularization)",
        ])
        .enumerate()
    {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((3e-7f64..3e-2f64).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("noise level ε")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .y_desc("‖U − U_o‖_F")
            .draw()?;
        // Jitter the three series apart along ε so that they do not hide each other.
        let series = [
            (2usize, 0.85, RGBColor(120, 120, 120), "true distance"),
            (3, 1.0, RGBColor(31, 119, 180), "bound (√L + ε‖W‖) / σ_min"),
            (
                4,
                1.18,
                RGBColor(214, 39, 40),
                "sharper bound ‖𝒜⁺r‖ + ε‖W‖ / σ_min",
            ),
        ];
        for (field, shift, color, label) in series {
            let val = |p: &(usize, f64, f64, f64, f64)| match field {
                2 => p.2,
                3 => p.3,
                _ => p.4,
            };
            chart
                .draw_series(
                    pts.iter()
                        .filter(|p| p.0 == k && val(p).is_finite() && val(p) > 0.0)
                        .map(|p| Circle::new((p.1 * shift, val(p)), 2, color.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
