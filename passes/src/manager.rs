//! The pass manager: runs a [`Pipeline`] over a module with verification, IR dumps, timing,
//! statistics, bisection and crash reproducers.
//!
//! It never prints: IR dumps and bisection lines go to a caller-supplied sink as [`IrEvent`]s,
//! and everything else comes back in a [`RunReport`] (or, on failure, inside [`PassFailure`]).
//! Passes are counted from 1 in execution order, fixpoint iterations included; that count is what
//! `--opt-bisect-limit=N` compares with and what messages call "run #N".

use crate::options::OptionError;
use crate::pass::{Pass, PassContext, PassError, Statistics};
use crate::pipeline::{Pipeline, PipelineItem};
use crate::registry::{Registry, FIXPOINT_NAME};
use ortho_ir::text::{print_module, PrintOptions};
use ortho_ir::{Diagnostics, Module};
use std::fmt::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Checks a module's invariants; the default is `ortho_ir::verify::verify_module`.
pub type Verifier = fn(&Module) -> Result<(), Diagnostics>;

/// How the manager instruments a run. `Default` verifies after every pass and nothing else.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Verify the input before the first pass and the module after every pass.
    pub verify_each: bool,
    /// Dump the IR before each pass with one of these names.
    pub print_ir_before: Vec<String>,
    /// Dump the IR after each pass with one of these names.
    pub print_ir_after: Vec<String>,
    pub print_ir_after_all: bool,
    /// Dump the IR after a pass only when its printed form changed.
    pub print_ir_after_change: bool,
    /// Whether [`RunReport::render`] includes the timing table.
    pub timing: bool,
    /// Whether [`RunReport::render`] includes the statistics table.
    pub statistics: bool,
    /// Run only the first N pass executions; later ones are skipped and reported.
    pub bisect_limit: Option<usize>,
    /// How dumps print (tensor elision).
    pub print_options: PrintOptions,
    /// Calibration data handed to every pass (see `PassContext::calibration`).
    pub calibration: Option<std::sync::Arc<crate::calib::Calibration>>,
    /// Also send each pass's notes and a line per finished pass to the sink as they happen
    /// ([`IrEvent::Note`], [`IrEvent::PassDone`]), so a command line can stream them instead of
    /// printing them at exit. The notes stay in the report either way.
    pub progress_events: bool,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            verify_each: true,
            print_ir_before: Vec::new(),
            print_ir_after: Vec::new(),
            print_ir_after_all: false,
            print_ir_after_change: false,
            timing: false,
            statistics: false,
            bisect_limit: None,
            print_options: PrintOptions::default(),
            calibration: None,
            progress_events: false,
        }
    }
}

/// When a dump was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpWhen {
    Before,
    After,
    /// After a pass whose result failed verification (printed when an after-dump was requested).
    AfterFailure,
}

/// Something the caller may want to print while the pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrEvent {
    Dump {
        when: DumpWhen,
        pass: String,
        index: usize,
        ir: String,
    },
    /// One `--opt-bisect-limit` decision.
    Bisect {
        index: usize,
        pass: String,
        ran: bool,
    },
    /// A note of a pass (as in [`RunReport::notes`]), when `progress_events` is set.
    Note(String),
    /// A pass finished (successfully), when `progress_events` is set.
    PassDone {
        index: usize,
        pass: String,
        changed: bool,
        wall: Duration,
    },
}

impl IrEvent {
    /// The text to print, MLIR- and LLVM-style.
    pub fn render(&self) -> String {
        match self {
            IrEvent::Dump {
                when,
                pass,
                index,
                ir,
            } => {
                let w = match when {
                    DumpWhen::Before => "Before",
                    DumpWhen::After => "After",
                    DumpWhen::AfterFailure => "After Failed",
                };
                format!("// -----// IR Dump {w} {pass} (#{index}) //----- //\n{ir}")
            }
            IrEvent::Bisect { index, pass, ran } => {
                format!(
                    "BISECT: {} pass ({index}) {pass}",
                    if *ran { "running" } else { "NOT running" }
                )
            }
            IrEvent::Note(n) => format!("note: {n}"),
            IrEvent::PassDone {
                index,
                pass,
                changed,
                wall,
            } => format!(
                "pass #{index} {pass}: {:.3} ms, {}",
                wall.as_secs_f64() * 1e3,
                if *changed { "changed" } else { "no change" }
            ),
        }
    }
}

/// One pass execution (or skip).
#[derive(Debug, Clone, PartialEq)]
pub struct PassRun {
    /// 1-based execution number.
    pub index: usize,
    pub name: &'static str,
    /// Position in the pipeline: `cse`, `fixpoint/cse`, …
    pub path: String,
    /// Pre-order number of the pass in the pipeline, to aggregate runs of the same position.
    pub slot: usize,
    /// False when `--opt-bisect-limit` skipped it.
    pub ran: bool,
    pub changed: bool,
    pub wall: Duration,
    pub verify_wall: Duration,
}

/// Why a fixpoint loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The last iteration changed nothing.
    Converged { iterations: usize },
    /// Every iteration changed something, up to the bound.
    MaxIterations { limit: usize },
    /// `--opt-bisect-limit` ran out inside the loop.
    BisectLimit { iterations: usize },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Converged { iterations: 1 } => write!(f, "converged after 1 iteration"),
            StopReason::Converged { iterations } => {
                write!(f, "converged after {iterations} iterations")
            }
            StopReason::MaxIterations { limit } => write!(f, "hit max-iterations={limit}"),
            StopReason::BisectLimit { iterations } => {
                write!(f, "stopped by opt-bisect-limit in iteration {iterations}")
            }
        }
    }
}

/// One execution of a fixpoint loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixpointReport {
    pub path: String,
    pub iterations: usize,
    pub stop: StopReason,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// The canonical pipeline text.
    pub pipeline: String,
    pub runs: Vec<PassRun>,
    pub statistics: Statistics,
    pub fixpoints: Vec<FixpointReport>,
    /// `(index, pass)` of each execution skipped by `--opt-bisect-limit`.
    pub bisect_skipped: Vec<(usize, String)>,
    /// Remarks from passes, prefixed with the pass name, and manager warnings.
    pub notes: Vec<String>,
    pub changed: bool,
    /// Time spent verifying the input before the first pass.
    pub input_verify_wall: Duration,
    pub total_wall: Duration,
}

impl RunReport {
    /// Wall time per pipeline position (runs of the same position summed), verification and total.
    pub fn timing_table(&self) -> String {
        let total = self.total_wall.as_secs_f64().max(1e-12);
        let mut rows: Vec<(usize, String, usize, Duration)> = Vec::new();
        let mut verify = self.input_verify_wall;
        for r in self.runs.iter().filter(|r| r.ran) {
            verify += r.verify_wall;
            match rows.iter_mut().find(|(slot, ..)| *slot == r.slot) {
                Some(row) => {
                    row.2 += 1;
                    row.3 += r.wall;
                }
                None => rows.push((r.slot, r.path.clone(), 1, r.wall)),
            }
        }
        rows.sort_by_key(|r| r.0);
        let mut out = String::from("=== Pass execution timing ===\n");
        let _ = writeln!(
            out,
            "  {:>11}  {:>6}  {:>4}  name",
            "wall (ms)", "%", "runs"
        );
        let mut line = |name: &str, runs: String, d: Duration| {
            let s = d.as_secs_f64();
            let _ = writeln!(
                out,
                "  {:>11.3}  {:>5.1}%  {runs:>4}  {name}",
                s * 1e3,
                100.0 * s / total
            );
        };
        for (_, path, n, d) in &rows {
            line(path, n.to_string(), *d);
        }
        line("(verify)", String::new(), verify);
        line("total", String::new(), self.total_wall);
        out
    }

    /// Every counter, in the order first recorded.
    pub fn statistics_table(&self) -> String {
        let mut out = String::from("=== Pass statistics ===\n");
        let width = self
            .statistics
            .iter()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        for (k, v) in self.statistics.iter() {
            let _ = writeln!(out, "  {k:<width$}  {v:>10}");
        }
        out
    }

    /// Fixpoint stop reasons, bisection skips and notes: always worth showing when present.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for f in &self.fixpoints {
            let _ = writeln!(out, "{}: {}", f.path, f.stop);
        }
        if let Some((first, _)) = self.bisect_skipped.first() {
            let _ = writeln!(
                out,
                "opt-bisect-limit: skipped {} pass run(s) from #{first}",
                self.bisect_skipped.len()
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// The summary plus the tables the options ask for.
    pub fn render(&self, options: &ManagerOptions) -> String {
        let mut out = self.summary();
        if options.timing {
            out.push_str(&self.timing_table());
        }
        if options.statistics {
            out.push_str(&self.statistics_table());
        }
        out
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The input failed verification before any pass ran.
    InvalidInput(Diagnostics),
    /// The pass returned an error.
    Pass(PassError),
    /// The module failed verification after the pass.
    Verify(Diagnostics),
    /// The pass panicked; the module is in an undefined state.
    Panic(String),
}

/// A run that stopped at a failing pass, with a reproducer and the report up to that point.
#[derive(Debug, Clone, PartialEq)]
pub struct PassFailure {
    /// The failing pass's canonical text (empty for `InvalidInput`).
    pub pass: String,
    /// Its execution number (0 for `InvalidInput`).
    pub index: usize,
    pub kind: FailureKind,
    /// `ortho-opt INPUT --pass-pipeline='…'`, the pipeline cut after the failing pass's top-level item.
    pub reproducer: String,
    pub report: RunReport,
}

impl fmt::Display for PassFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("pass '{}' (run #{})", self.pass, self.index);
        match &self.kind {
            FailureKind::InvalidInput(d) => {
                write!(f, "the input failed verification before any pass ran: {d}")?
            }
            FailureKind::Pass(e) => writeln!(f, "{at} failed: {e}")?,
            FailureKind::Verify(d) => write!(f, "verification failed after {at}: {d}")?,
            FailureKind::Panic(m) => writeln!(f, "{at} panicked: {m}")?,
        }
        write!(f, "reproduce with: {}", self.reproducer)
    }
}

impl std::error::Error for PassFailure {}

/// Why a [`PassManager`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    #[error("--print-ir-before/after names unknown pass '{0}'")]
    UnknownPrintName(String),
    /// A pass refused its options (the pipeline parser normally catches this first).
    #[error("pass '{pass}': {error}")]
    Build { pass: String, error: OptionError },
}

/// A pass or loop ready to run.
enum Step {
    Pass {
        pass: Box<dyn Pass>,
        label: String,
        path: String,
        slot: usize,
        top: usize,
    },
    Fixpoint {
        max_iterations: usize,
        body: Vec<Step>,
        path: String,
    },
}

/// Runs a pipeline.
pub struct PassManager {
    pipeline: Pipeline,
    steps: Vec<Step>,
    options: ManagerOptions,
    verifier: Verifier,
}

impl PassManager {
    /// Builds every pass of `pipeline`. Fails when a name in `print_ir_before/after` is neither a
    /// builtin pass nor in the pipeline (a typo there would otherwise print nothing, silently).
    pub fn new(pipeline: Pipeline, options: ManagerOptions) -> Result<PassManager, ManagerError> {
        let registry = Registry::builtin();
        let in_pipeline = pipeline.pass_names();
        for n in options
            .print_ir_before
            .iter()
            .chain(&options.print_ir_after)
        {
            if !registry.knows(n) && !in_pipeline.contains(&n.as_str()) {
                return Err(ManagerError::UnknownPrintName(n.clone()));
            }
        }
        let mut slot = 0;
        let steps = build_steps(&pipeline, "", None, &mut slot)?;
        Ok(PassManager {
            pipeline,
            steps,
            options,
            verifier: default_verifier,
        })
    }

    /// Replaces the verifier (tests, or a stricter checker before export).
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.verifier = verifier;
        self
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.options
    }

    /// Runs the pipeline over `m`. `input` is the path the module came from, for the reproducer.
    pub fn run(
        &self,
        m: &mut Module,
        input: &str,
        sink: &mut dyn FnMut(IrEvent),
    ) -> Result<RunReport, Box<PassFailure>> {
        let start = Instant::now();
        let mut ex = Exec {
            mgr: self,
            m,
            sink,
            input,
            start,
            count: 0,
            report: RunReport {
                pipeline: self.pipeline.canonical(),
                ..Default::default()
            },
        };
        if self.options.verify_each {
            let t = Instant::now();
            let res = (self.verifier)(ex.m);
            ex.report.input_verify_wall = t.elapsed();
            if let Err(d) = res {
                return Err(ex.fail(String::new(), 0, 0, FailureKind::InvalidInput(d)));
            }
        }
        let result = ex.steps(&self.steps);
        ex.report.total_wall = start.elapsed();
        let changed = result?;
        ex.report.changed = changed;
        Ok(ex.report)
    }
}

fn default_verifier(m: &Module) -> Result<(), Diagnostics> {
    ortho_ir::verify::verify_module(m)
}

fn build_steps(
    p: &Pipeline,
    prefix: &str,
    top: Option<usize>,
    slot: &mut usize,
) -> Result<Vec<Step>, ManagerError> {
    let mut steps = Vec::new();
    for (i, item) in p.items.iter().enumerate() {
        let top = top.unwrap_or(i);
        match item {
            PipelineItem::Pass(spec) => {
                let pass =
                    (spec.info.build)(&spec.options).map_err(|error| ManagerError::Build {
                        pass: spec.info.name.to_string(),
                        error,
                    })?;
                *slot += 1;
                let path = format!("{prefix}{}", spec.info.name);
                steps.push(Step::Pass {
                    pass,
                    label: spec.to_string(),
                    path,
                    slot: *slot,
                    top,
                });
            }
            PipelineItem::Fixpoint(f) => {
                let path = format!("{prefix}{FIXPOINT_NAME}");
                let body = build_steps(&f.body, &format!("{path}/"), Some(top), slot)?;
                steps.push(Step::Fixpoint {
                    max_iterations: f.max_iterations,
                    body,
                    path,
                });
            }
        }
    }
    Ok(steps)
}

/// The state of one run.
struct Exec<'a> {
    mgr: &'a PassManager,
    m: &'a mut Module,
    sink: &'a mut dyn FnMut(IrEvent),
    input: &'a str,
    start: Instant,
    count: usize,
    report: RunReport,
}

impl Exec<'_> {
    fn steps(&mut self, steps: &[Step]) -> Result<bool, Box<PassFailure>> {
        let mut changed = false;
        for s in steps {
            changed |= match s {
                Step::Pass {
                    pass,
                    label,
                    path,
                    slot,
                    top,
                } => self.pass(pass.as_ref(), label, path, *slot, *top)?,
                Step::Fixpoint {
                    max_iterations,
                    body,
                    path,
                    ..
                } => self.fixpoint(*max_iterations, body, path)?,
            };
        }
        Ok(changed)
    }

    fn fixpoint(
        &mut self,
        max: usize,
        body: &[Step],
        path: &str,
    ) -> Result<bool, Box<PassFailure>> {
        let mut any = false;
        let mut stop = StopReason::MaxIterations { limit: max };
        let mut iterations = 0;
        // The bound makes termination independent of how honest the passes are about changes.
        for it in 1..=max {
            iterations = it;
            let skipped = self.report.bisect_skipped.len();
            let changed = self.steps(body)?;
            any |= changed;
            // An iteration cut short by bisection proves nothing about convergence.
            if self.report.bisect_skipped.len() > skipped {
                stop = StopReason::BisectLimit { iterations: it };
                break;
            }
            if !changed {
                stop = StopReason::Converged { iterations: it };
                break;
            }
        }
        self.report.fixpoints.push(FixpointReport {
            path: path.to_string(),
            iterations,
            stop,
        });
        Ok(any)
    }

    fn print(&self) -> String {
        print_module(self.m, self.mgr.options.print_options)
    }

    fn emit(&mut self, e: IrEvent) {
        (self.sink)(e);
    }

    fn pass(
        &mut self,
        pass: &dyn Pass,
        label: &str,
        path: &str,
        slot: usize,
        top: usize,
    ) -> Result<bool, Box<PassFailure>> {
        self.count += 1;
        let index = self.count;
        let name = pass.name();
        let mgr = self.mgr;
        let opts = &mgr.options;
        let mut run = PassRun {
            index,
            name,
            path: path.to_string(),
            slot,
            ran: true,
            changed: false,
            wall: Duration::ZERO,
            verify_wall: Duration::ZERO,
        };
        if let Some(limit) = opts.bisect_limit {
            let ran = index <= limit;
            self.emit(IrEvent::Bisect {
                index,
                pass: label.to_string(),
                ran,
            });
            if !ran {
                self.report.bisect_skipped.push((index, label.to_string()));
                run.ran = false;
                self.report.runs.push(run);
                return Ok(false);
            }
        }
        let listed = |list: &[String]| list.iter().any(|n| n == name);
        if listed(&opts.print_ir_before) {
            let ir = self.print();
            self.emit(IrEvent::Dump {
                when: DumpWhen::Before,
                pass: label.to_string(),
                index,
                ir,
            });
        }
        let before = opts.print_ir_after_change.then(|| self.print());

        let mut cx = PassContext::new(name).with_calibration(opts.calibration.clone());
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| pass.run(self.m, &mut cx)));
        run.wall = t.elapsed();
        self.report.statistics.merge(cx.statistics());
        let first_new = self.report.notes.len();
        self.report
            .notes
            .extend(cx.notes().iter().map(|n| format!("{name}: {n}")));
        self.stream_notes(first_new);
        let result = match outcome {
            Err(payload) => {
                self.report.runs.push(run);
                return Err(self.fail(
                    label.to_string(),
                    index,
                    top,
                    FailureKind::Panic(panic_message(payload.as_ref())),
                ));
            }
            Ok(Err(e)) => {
                self.report.runs.push(run);
                return Err(self.fail(label.to_string(), index, top, FailureKind::Pass(e)));
            }
            Ok(Ok(r)) => r,
        };
        run.changed = result.changed;

        let wants_after = opts.print_ir_after_all || listed(&opts.print_ir_after);
        let after = before.as_ref().map(|_| self.print());
        if let (Some(b), Some(a)) = (&before, &after) {
            if !result.changed && a != b {
                self.report.notes.push(format!(
                    "{name}: run #{index} reported no change but changed the IR"
                ));
                self.stream_notes(self.report.notes.len() - 1);
            }
        }
        if opts.verify_each {
            let t = Instant::now();
            let verified = (self.mgr.verifier)(self.m);
            run.verify_wall = t.elapsed();
            if let Err(d) = verified {
                if wants_after || opts.print_ir_after_change {
                    let ir = after.unwrap_or_else(|| self.print());
                    self.emit(IrEvent::Dump {
                        when: DumpWhen::AfterFailure,
                        pass: label.to_string(),
                        index,
                        ir,
                    });
                }
                self.report.runs.push(run);
                return Err(self.fail(label.to_string(), index, top, FailureKind::Verify(d)));
            }
        }
        let dump = match (&before, after) {
            (Some(b), Some(a)) if wants_after || a != *b => Some(a),
            (_, _) if wants_after => Some(self.print()),
            _ => None,
        };
        if let Some(ir) = dump {
            self.emit(IrEvent::Dump {
                when: DumpWhen::After,
                pass: label.to_string(),
                index,
                ir,
            });
        }
        if opts.progress_events {
            self.emit(IrEvent::PassDone {
                index,
                pass: label.to_string(),
                changed: result.changed,
                wall: run.wall,
            });
        }
        self.report.runs.push(run);
        Ok(result.changed)
    }

    /// Sends the notes from `first` on to the sink, when the caller asked for progress events.
    fn stream_notes(&mut self, first: usize) {
        if !self.mgr.options.progress_events {
            return;
        }
        let new: Vec<String> = self.report.notes[first..].to_vec();
        for n in new {
            self.emit(IrEvent::Note(n));
        }
    }

    fn fail(
        &mut self,
        pass: String,
        index: usize,
        top: usize,
        kind: FailureKind,
    ) -> Box<PassFailure> {
        let cut = if index == 0 { 0 } else { top + 1 };
        let pipeline = self.mgr.pipeline.prefix(cut).canonical();
        self.report.total_wall = self.start.elapsed();
        let reproducer = format!(
            "ortho-opt {} --pass-pipeline={}",
            shell_word(self.input),
            shell_quote(&pipeline)
        );
        Box::new(PassFailure {
            pass,
            index,
            kind,
            reproducer,
            report: std::mem::take(&mut self.report),
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Single-quotes a word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A word as a shell reads it: bare when that is safe, quoted otherwise.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./+:@%,=".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        shell_quote(s)
    }
}
