//! Progress on stderr for the long commands (`eval`, `compare`, calibration): on a terminal an
//! `indicatif` bar with elapsed time and ETA, redrawn in place; otherwise (logs, CI, pipes) a few
//! plain lines, because a bar redrawn with `\r` is unreadable in a file. `-q` silences both.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a progress report is drawn.
enum Sink {
    Quiet,
    /// A terminal: one bar, redrawn by indicatif at a bounded rate.
    Bar(ProgressBar),
    /// Not a terminal: a line at each quarter of the work (and at the end).
    Lines {
        t0: Instant,
        last_quarter: usize,
    },
}

/// Progress over a known number of items (windows, layers).
pub(crate) struct Progress {
    label: String,
    unit: &'static str,
    total: usize,
    sink: Sink,
}

impl Progress {
    /// A report for `total` items of `unit` (e.g. "windows"), labelled `label`.
    pub fn new(label: &str, unit: &'static str, total: usize, quiet: bool) -> Progress {
        let sink = if quiet {
            Sink::Quiet
        } else if std::io::stderr().is_terminal() {
            Sink::Bar(bar(label, unit, total))
        } else {
            Sink::Lines {
                t0: Instant::now(),
                last_quarter: 0,
            }
        };
        Progress {
            label: label.to_string(),
            unit,
            total,
            sink,
        }
    }

    /// `done` of the items are finished; `what` says what is being done now (may be empty).
    pub fn update(&mut self, done: usize, what: &str) {
        match &mut self.sink {
            Sink::Quiet => {}
            Sink::Bar(b) => {
                b.set_position(done as u64);
                b.set_message(what.to_string());
                if done >= self.total {
                    b.finish();
                }
            }
            Sink::Lines { t0, last_quarter } => {
                let quarter = (done * 4).checked_div(self.total).unwrap_or(4);
                if quarter > *last_quarter || done >= self.total {
                    *last_quarter = quarter;
                    let sep = if what.is_empty() { "" } else { ": " };
                    eprintln!(
                        "{}: {done}/{} {}, {:.1} s{sep}{what}",
                        self.label,
                        self.total,
                        self.unit,
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

fn bar(label: &str, unit: &str, total: usize) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    // The template is a constant; a template error would be a bug here, and a plain bar is a
    // correct fallback for it.
    let style = ProgressStyle::with_template(&format!(
        "{label} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}}, eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("#>-");
    b.set_style(style);
    b
}

/// The calibration passes' progress sink: each event says which layer of how many is being
/// worked on. On a terminal it drives one bar (position = finished layers, message = the current
/// phase); otherwise each event is a line, as the passes send them (they are few: a handful per
/// layer).
pub(crate) fn calibration_sink(quiet: bool) -> Option<ortho_passes::calib::ProgressFn> {
    if quiet {
        return None;
    }
    if !std::io::stderr().is_terminal() {
        return Some(Arc::new(|e: &ortho_passes::calib::ProgressEvent| {
            eprintln!("calibration: {e}")
        }));
    }
    // The bar is made at the first event, when the number of layers is known; a pass run after
    // another one starts a new bar when the layer count goes back.
    let state: Mutex<Option<(ProgressBar, usize)>> = Mutex::new(None);
    Some(Arc::new(move |e: &ortho_passes::calib::ProgressEvent| {
        let Ok(mut s) = state.lock() else { return };
        let fresh = match &*s {
            Some((b, last)) => b.length() != Some(e.total as u64) || e.done < *last,
            None => true,
        };
        if fresh {
            if let Some((b, _)) = s.take() {
                b.finish();
            }
            *s = Some((bar("calibration", "layers", e.total), e.done));
        }
        if let Some((b, last)) = s.as_mut() {
            *last = e.done;
            b.set_position(e.done as u64);
            b.set_message(e.what.to_string());
        }
    }))
}

/// Plan compilation's progress sink (`label` is e.g. "compile"): nodes built of the graph, with
/// the op being built as the message. A chain of shards compiles several graphs: each starts a
/// new report (the count goes back to 0). `None` with `-q`.
pub(crate) fn compile_sink(
    label: &str,
    quiet: bool,
) -> Option<ortho_codegen::cpu::CompileProgress> {
    if quiet {
        return None;
    }
    let label = label.to_string();
    // The report is made at the first event, when the number of nodes is known.
    let state: Mutex<Option<(Progress, usize)>> = Mutex::new(None);
    Some(ortho_codegen::cpu::CompileProgress(Arc::new(
        move |done: usize, total: usize, op: &str| {
            let Ok(mut s) = state.lock() else { return };
            let fresh = match &*s {
                Some((p, last)) => p.total != total || done < *last,
                None => true,
            };
            if fresh {
                *s = Some((Progress::new(&label, "nodes", total, false), done));
            }
            if let Some((p, last)) = s.as_mut() {
                *last = done;
                p.update(done, op);
            }
        },
    )))
}
