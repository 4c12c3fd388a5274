//! The pass manager: fixpoint bounds, bisection, dumps, verify-each, failures and reproducers.

use super::{parse, print, run, run_with};
use crate::manager::{DumpWhen, FailureKind, IrEvent, ManagerOptions, PassManager, StopReason};
use crate::options::PassOptions;
use crate::pass::PassInfo;
use crate::pass::{Pass, PassContext, PassError, PassResult};
use crate::pipeline::{parse_pipeline, Pipeline};
use crate::registry::Registry;
use ortho_ir::types::TensorType;
use ortho_ir::{DType, Module, Op, Output, Type, ValueId};

/// Claims a change on every run without making one (exercises the iteration bound).
struct AlwaysChange;
impl Pass for AlwaysChange {
    fn name(&self) -> &'static str {
        "test-always-change"
    }
    fn run(&self, _: &mut Module, _: &mut PassContext) -> Result<PassResult, PassError> {
        Ok(PassResult::changed(true))
    }
}

/// Removes one `Identity` per run.
struct StripOne;
impl Pass for StripOne {
    fn name(&self) -> &'static str {
        "test-strip-one"
    }
    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
        let g = m.main_graph_mut();
        let found = g
            .toposort()
            .unwrap_or_default()
            .into_iter()
            .find(|&n| matches!(g.node(n).op, Op::Identity));
        let Some(n) = found else {
            return Ok(PassResult::changed(false));
        };
        let Some(x) = g.node(n).operand(0) else {
            return Err(PassError::at(g, n, "Identity without operand"));
        };
        g.replace_all_uses(ValueId { node: n, output: 0 }, x);
        g.remove_node(n);
        cx.stat("stripped", 1);
        Ok(PassResult::changed(true))
    }
}

/// Adds a `Neg` without operands, which the verifier rejects.
struct Break;
impl Pass for Break {
    fn name(&self) -> &'static str {
        "test-break"
    }
    fn run(&self, m: &mut Module, _: &mut PassContext) -> Result<PassResult, PassError> {
        let ty = Type::Tensor(TensorType::fixed(DType::F32, &[2]));
        m.main_graph_mut()
            .add_node(Op::Neg, vec![], vec![Output::new("broken", ty)]);
        Ok(PassResult::changed(true))
    }
}

/// Returns an error naming the first node of the main graph.
struct Fail;
impl Pass for Fail {
    fn name(&self) -> &'static str {
        "test-fail"
    }
    fn run(&self, m: &mut Module, _: &mut PassContext) -> Result<PassResult, PassError> {
        let g = m.main_graph();
        match g
            .toposort()
            .unwrap_or_default()
            .into_iter()
            .find(|&n| !g.inputs().contains(&n))
        {
            Some(n) => Err(PassError::at(g, n, "cannot handle this node")),
            None => Err(PassError::new("empty graph")),
        }
    }
}

struct Panics;
impl Pass for Panics {
    fn name(&self) -> &'static str {
        "test-panic"
    }
    fn run(&self, _: &mut Module, _: &mut PassContext) -> Result<PassResult, PassError> {
        panic!("boom")
    }
}

/// Changes the IR but says it did not.
struct Silent;
impl Pass for Silent {
    fn name(&self) -> &'static str {
        "test-silent-change"
    }
    fn run(&self, m: &mut Module, _: &mut PassContext) -> Result<PassResult, PassError> {
        m.main_graph_mut().doc = "touched".into();
        Ok(PassResult::changed(false))
    }
}

macro_rules! test_pass {
    ($stat:ident, $ty:ident, $name:literal) => {
        static $stat: PassInfo = PassInfo {
            name: $name,
            summary: "test pass",
            options: &[],
            build: |_: &PassOptions| -> Result<Box<dyn Pass>, crate::options::OptionError> {
                Ok(Box::new($ty))
            },
        };
    };
}
test_pass!(ALWAYS, AlwaysChange, "test-always-change");
test_pass!(STRIP, StripOne, "test-strip-one");
test_pass!(BREAK, Break, "test-break");
test_pass!(FAIL, Fail, "test-fail");
test_pass!(PANIC, Panics, "test-panic");
test_pass!(SILENT, Silent, "test-silent-change");

fn registry() -> Registry {
    let mut r = Registry::builtin();
    for p in [&ALWAYS, &STRIP, &BREAK, &FAIL, &PANIC, &SILENT] {
        assert!(r.register(p).is_ok());
    }
    assert_eq!(
        r.register(&ALWAYS),
        Err(crate::registry::RegistryError::Taken("test-always-change")),
        "names are unique"
    );
    r
}

const SIMPLE: &str = r#"module {}
graph @main(%x: tensor<4xf32>) -> (%y, %z) {
  %a = onnx.Identity(%x) : tensor<4xf32>
  %c1 = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %c2 = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %y = onnx.Add(%a, %c1) : tensor<4xf32>
  %z = onnx.Add(%a, %c2) : tensor<4xf32>
}
"#;

const CHAIN: &str = r#"module {}
graph @main(%x: tensor<4xf32>) -> (%y) {
  %a = onnx.Identity(%x) : tensor<4xf32>
  %b = onnx.Identity(%a) : tensor<4xf32>
  %c = onnx.Identity(%b) : tensor<4xf32>
  %y = onnx.Neg(%c) : tensor<4xf32>
}
"#;

#[test]
fn fixpoint_converges_and_says_so() {
    let mut m = parse(SIMPLE);
    let r = run("fixpoint{max-iterations=8}(canonicalize,cse,dce)", &mut m);
    assert_eq!(r.fixpoints.len(), 1);
    assert_eq!(r.fixpoints[0].stop, StopReason::Converged { iterations: 2 });
    assert_eq!(
        r.fixpoints[0].stop.to_string(),
        "converged after 2 iterations"
    );
    assert!(
        r.summary()
            .contains("fixpoint: converged after 2 iterations"),
        "{}",
        r.summary()
    );
    assert_eq!(r.runs.len(), 6);
    assert!(r.changed);
    assert_eq!(r.statistics.get("cse.merged"), Some(2));
    assert_eq!(r.statistics.get("canonicalize.removed-noops"), Some(1));
    assert_eq!(r.statistics.get("dce.removed"), Some(0));
}

#[test]
fn fixpoint_bound_stops_a_pass_that_never_settles() {
    let mut m = parse(SIMPLE);
    let r = run_with(
        &registry(),
        "fixpoint{max-iterations=8}(test-always-change)",
        &mut m,
        ManagerOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.fixpoints[0].stop, StopReason::MaxIterations { limit: 8 });
    assert_eq!(r.fixpoints[0].stop.to_string(), "hit max-iterations=8");
    assert_eq!(r.runs.len(), 8);

    let mut m = parse(CHAIN);
    let r = run_with(
        &registry(),
        "fixpoint{max-iterations=2}(test-strip-one)",
        &mut m,
        ManagerOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.fixpoints[0].stop, StopReason::MaxIterations { limit: 2 });
    assert_eq!(r.statistics.get("test-strip-one.stripped"), Some(2));

    let mut m = parse(CHAIN);
    let r = run_with(
        &registry(),
        "fixpoint(test-strip-one)",
        &mut m,
        ManagerOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.fixpoints[0].stop.to_string(),
        "converged after 4 iterations"
    );
}

#[test]
fn bisect_limit_skips_later_passes() {
    let mut m = parse(SIMPLE);
    let opts = ManagerOptions {
        bisect_limit: Some(1),
        ..Default::default()
    };
    let p = Pipeline::parse("canonicalize,cse,dce").unwrap_or_default();
    let pm = PassManager::new(p, opts).unwrap_or_else(|e| panic!("{e}"));
    let mut events = Vec::new();
    let r = pm
        .run(&mut m, "model.oir", &mut |e| events.push(e))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = events.iter().map(IrEvent::render).collect();
    assert_eq!(
        lines,
        vec![
            "BISECT: running pass (1) canonicalize{fold=true max-fold-bytes=65536}",
            "BISECT: NOT running pass (2) cse",
            "BISECT: NOT running pass (3) dce",
        ]
    );
    assert_eq!(
        r.bisect_skipped,
        vec![(2, "cse".to_string()), (3, "dce".to_string())]
    );
    assert_eq!(r.runs.iter().filter(|r| r.ran).count(), 1);
    let text = print(&m);
    assert!(
        !text.contains("Identity") && text.contains("%c2 = const"),
        "canonicalize ran, cse did not:\n{text}"
    );
    assert!(
        r.summary()
            .contains("opt-bisect-limit: skipped 2 pass run(s) from #2"),
        "{}",
        r.summary()
    );
}

#[test]
fn bisect_limit_inside_a_fixpoint() {
    let mut m = parse(SIMPLE);
    let opts = ManagerOptions {
        bisect_limit: Some(3),
        ..Default::default()
    };
    let r = run_with(
        &registry(),
        "fixpoint{max-iterations=8}(test-always-change)",
        &mut m,
        opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.fixpoints[0].stop,
        StopReason::BisectLimit { iterations: 4 }
    );
    assert_eq!(r.runs.iter().filter(|r| r.ran).count(), 3);
}

#[test]
fn verify_each_names_the_broken_pass_and_node() {
    let mut m = parse(SIMPLE);
    let e = run_with(
        &registry(),
        "dce,test-break,cse",
        &mut m,
        ManagerOptions::default(),
    )
    .err();
    let Some(e) = e else {
        panic!("the broken pass was not caught")
    };
    assert_eq!((e.pass.as_str(), e.index), ("test-break", 2));
    let FailureKind::Verify(d) = &e.kind else {
        panic!("{e}")
    };
    assert!(d.0.iter().any(|d| d.node.contains("broken")), "{d}");
    let text = e.to_string();
    assert!(
        text.starts_with("verification failed after pass 'test-break' (run #2)"),
        "{text}"
    );
    assert!(text.contains("broken"), "{text}");
    assert_eq!(
        e.reproducer,
        "ortho-opt model.oir --pass-pipeline='dce,test-break'"
    );
    assert!(
        text.ends_with("reproduce with: ortho-opt model.oir --pass-pipeline='dce,test-break'"),
        "{text}"
    );
    assert_eq!(
        e.report.runs.len(),
        2,
        "the partial report covers the passes that ran"
    );

    // Inside a loop the reproducer keeps the whole loop: earlier iterations lead to the failure.
    let mut m = parse(SIMPLE);
    let e = run_with(
        &registry(),
        "cse,fixpoint{max-iterations=2}(dce,test-break),dce",
        &mut m,
        ManagerOptions::default(),
    )
    .err();
    let Some(e) = e else {
        panic!("the broken pass was not caught")
    };
    assert_eq!(
        e.reproducer,
        "ortho-opt model.oir --pass-pipeline='cse,fixpoint{max-iterations=2}(dce,test-break)'"
    );

    // Without verify-each the same pipeline "succeeds".
    let mut m = parse(SIMPLE);
    let opts = ManagerOptions {
        verify_each: false,
        ..Default::default()
    };
    assert!(run_with(&registry(), "dce,test-break", &mut m, opts).is_ok());
}

#[test]
fn pass_errors_and_panics_become_failures_with_reproducers() {
    let mut m = parse(SIMPLE);
    let e = run_with(
        &registry(),
        "cse,test-fail",
        &mut m,
        ManagerOptions::default(),
    )
    .err();
    let Some(e) = e else { panic!("no failure") };
    let FailureKind::Pass(pe) = &e.kind else {
        panic!("{e}")
    };
    assert_eq!(pe.node, "Identity producing '%a'");
    assert!(e.to_string().starts_with("pass 'test-fail' (run #2) failed: graph @main: Identity producing '%a': cannot handle this node"), "{e}");

    let mut m = parse(SIMPLE);
    let e = run_with(&registry(), "test-panic", &mut m, ManagerOptions::default()).err();
    let Some(e) = e else { panic!("no failure") };
    assert_eq!(e.kind, FailureKind::Panic("boom".into()));
    assert_eq!(
        e.reproducer,
        "ortho-opt model.oir --pass-pipeline='test-panic'"
    );
}

#[test]
fn an_invalid_input_is_not_blamed_on_the_first_pass() {
    let mut m = parse("module {}\ngraph @main(%x: tensor<2xf32>) -> (%y) {\n  %y = onnx.Neg() : tensor<2xf32>\n}\n");
    let e = run_with(&registry(), "dce", &mut m, ManagerOptions::default()).err();
    let Some(e) = e else { panic!("no failure") };
    assert!(matches!(e.kind, FailureKind::InvalidInput(_)), "{e}");
    assert_eq!(e.index, 0);
}

#[test]
fn dumps_go_to_the_sink() {
    let opts = ManagerOptions {
        print_ir_before: vec!["cse".into()],
        print_ir_after: vec!["dce".into()],
        ..Default::default()
    };
    let pm = PassManager::new(
        Pipeline::parse("canonicalize,cse,dce").unwrap_or_default(),
        opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut m = parse(SIMPLE);
    let mut events = Vec::new();
    assert!(pm.run(&mut m, "m.oir", &mut |e| events.push(e)).is_ok());
    let heads: Vec<(DumpWhen, String, usize)> = events
        .iter()
        .map(|e| match e {
            IrEvent::Dump {
                when, pass, index, ..
            } => (*when, pass.clone(), *index),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        heads,
        vec![
            (DumpWhen::Before, "cse".into(), 2),
            (DumpWhen::After, "dce".into(), 3)
        ]
    );
    let first = events[0].render();
    assert!(
        first.starts_with("// -----// IR Dump Before cse (#2) //----- //\nmodule {"),
        "{first}"
    );
    assert!(
        first.contains("%z = onnx.Add"),
        "before cse the duplicate is there:\n{first}"
    );

    // After-change prints only passes whose output differs; after-all prints every pass.
    for (all, expected) in [(false, 2), (true, 3)] {
        let opts = ManagerOptions {
            print_ir_after_change: !all,
            print_ir_after_all: all,
            ..Default::default()
        };
        let pm = PassManager::new(
            Pipeline::parse("canonicalize,cse,dce").unwrap_or_default(),
            opts,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut m = parse(SIMPLE);
        let mut n = 0;
        assert!(pm.run(&mut m, "m.oir", &mut |_| n += 1).is_ok());
        assert_eq!(n, expected, "after_all = {all}");
    }
}

#[test]
fn after_change_catches_a_pass_that_hides_a_change() {
    let opts = ManagerOptions {
        print_ir_after_change: true,
        ..Default::default()
    };
    let mut m = parse(SIMPLE);
    let r =
        run_with(&registry(), "test-silent-change", &mut m, opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.notes,
        vec!["test-silent-change: run #1 reported no change but changed the IR".to_string()]
    );
}

#[test]
fn print_names_are_checked() {
    let opts = ManagerOptions {
        print_ir_after: vec!["csee".into()],
        ..Default::default()
    };
    let e = PassManager::new(Pipeline::parse("cse").unwrap_or_default(), opts).err();
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some("--print-ir-before/after names unknown pass 'csee'")
    );
    // A registered test pass in the pipeline is a valid name too.
    let p = parse_pipeline("test-strip-one", &registry()).unwrap_or_default();
    let opts = ManagerOptions {
        print_ir_before: vec!["test-strip-one".into()],
        ..Default::default()
    };
    assert!(PassManager::new(p, opts).is_ok());
}

#[test]
fn timing_and_statistics_tables() {
    let mut m = parse(SIMPLE);
    let r = run("canonicalize,fixpoint{max-iterations=4}(cse,dce)", &mut m);
    let t = r.timing_table();
    for row in [
        "canonicalize",
        "fixpoint/cse",
        "fixpoint/dce",
        "(verify)",
        "total",
    ] {
        assert!(t.contains(row), "{t}");
    }
    let s = r.statistics_table();
    for key in [
        "canonicalize.folded",
        "canonicalize.removed-noops",
        "cse.merged",
        "dce.removed",
    ] {
        assert!(s.contains(key), "{s}");
    }
    let opts = ManagerOptions {
        timing: true,
        statistics: true,
        ..Default::default()
    };
    let all = r.render(&opts);
    assert!(
        all.contains("=== Pass execution timing ===") && all.contains("=== Pass statistics ==="),
        "{all}"
    );
    assert!(!r.render(&ManagerOptions::default()).contains("==="));
    assert_eq!(
        r.pipeline,
        "canonicalize{fold=true max-fold-bytes=65536},fixpoint{max-iterations=4}(cse,dce)"
    );
}
