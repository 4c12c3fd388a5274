//! Pipeline grammar: canonical printing, round trips, and error messages.

use crate::options::{OptionValue, PassOptions};
use crate::pipeline::{Pipeline, PipelineError, PipelineItem};
use crate::registry::{list_passes, Registry, FIXPOINT_OPTIONS};

fn canon(text: &str) -> String {
    match Pipeline::parse(text) {
        Ok(p) => p.canonical(),
        Err(e) => panic!("{}", e.render(text)),
    }
}

fn err(text: &str) -> PipelineError {
    match Pipeline::parse(text) {
        Ok(p) => panic!("'{text}' parsed as '{p}'"),
        Err(e) => e,
    }
}

#[test]
fn prints_every_option_explicitly() {
    assert_eq!(
        canon("canonicalize,cse,dce"),
        "canonicalize{fold=true max-fold-bytes=65536},cse,dce"
    );
    assert_eq!(
        canon("canonicalize{max-fold-bytes=1024}"),
        "canonicalize{fold=true max-fold-bytes=1024}"
    );
    assert_eq!(
        canon("fixpoint(cse,dce)"),
        "fixpoint{max-iterations=8}(cse,dce)"
    );
    assert_eq!(canon(""), "");
    assert_eq!(canon("infer-shapes"), "infer-shapes");
}

#[test]
fn whitespace_commas_and_nesting_round_trip() {
    let text = " canonicalize{ max-fold-bytes=1024 , fold=false } , fixpoint{max-iterations=3}( cse , fixpoint(dce) ) ";
    let c = canon(text);
    assert_eq!(
        c,
        "canonicalize{fold=false max-fold-bytes=1024},fixpoint{max-iterations=3}(cse,fixpoint{max-iterations=8}(dce))"
    );
    assert_eq!(
        canon(&c),
        c,
        "the canonical form is a fixed point of parse → print"
    );
}

#[test]
fn structure_is_typed() {
    let p = Pipeline::parse("canonicalize{fold=false},fixpoint{max-iterations=5}(cse)")
        .unwrap_or_default();
    assert_eq!(p.items.len(), 2);
    match &p.items[0] {
        PipelineItem::Pass(s) => {
            assert_eq!(s.info.name, "canonicalize");
            assert_eq!(s.options.get("fold"), Some(&OptionValue::Bool(false)));
            assert_eq!(s.options.uint("max-fold-bytes"), Ok(65536));
        }
        other => panic!("unexpected {other:?}"),
    }
    match &p.items[1] {
        PipelineItem::Fixpoint(f) => {
            assert_eq!(f.max_iterations, 5);
            assert_eq!(f.body.pass_names(), vec!["cse"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        p.prefix(1).canonical(),
        "canonicalize{fold=false max-fold-bytes=65536}"
    );
}

#[test]
fn unknown_pass_names_position_and_suggests() {
    let e = err("dce,foo");
    assert_eq!(e.pos, 4);
    assert!(e.message.starts_with("unknown pass 'foo'"), "{}", e.message);
    assert!(
        e.message
            .contains("known: canonicalize, cse, dce, denoise-prune, denoise-rotate, fold-norms, fuse-elementwise, gauge-verify, infer-shapes, lower-ortho, prune, rotate-heads, rotate-residual, fixpoint"),
        "{}",
        e.message
    );
    let e = err("cse,dcee");
    assert!(e.message.contains("did you mean 'dce'?"), "{}", e.message);
    assert_eq!(
        e.render("cse,dcee"),
        format!("error: {}\n  cse,dcee\n      ^", e.message)
    );
    assert!(
        e.to_string()
            .starts_with("pipeline error at column 5: unknown pass 'dcee'"),
        "{e}"
    );
}

#[test]
fn unknown_and_bad_options() {
    let e = err("canonicalize{fodl=true}");
    assert_eq!(e.pos, 13);
    assert!(
        e.message
            .contains("unknown option 'fodl' for pass 'canonicalize' (did you mean 'fold'?)"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("options: fold, max-fold-bytes"),
        "{}",
        e.message
    );

    let e = err("dce{x=1}");
    assert_eq!(e.message, "pass 'dce' takes no options (got 'x')");

    let e = err("canonicalize{fold=maybe}");
    assert_eq!(e.pos, 18);
    assert_eq!(
        e.message,
        "bad value 'maybe' for option 'fold' of pass 'canonicalize': expected true or false"
    );

    let e = err("canonicalize{max-fold-bytes=-1}");
    assert!(
        e.message.ends_with("expected an integer >= 0"),
        "{}",
        e.message
    );
    let e = err("canonicalize{max-fold-bytes=lots}");
    assert!(e.message.contains("bad value 'lots'"), "{}", e.message);

    let e = err("fixpoint{max-iterations=0}(cse)");
    assert!(
        e.message.ends_with("expected an integer in 1..=1000000"),
        "{}",
        e.message
    );
    let e = err("fixpoint{max-iteration=3}(cse)");
    assert!(
        e.message.contains("did you mean 'max-iterations'?"),
        "{}",
        e.message
    );

    let e = err("canonicalize{fold=true fold=false}");
    assert_eq!(
        e.message,
        "option 'fold' of pass 'canonicalize' is given twice"
    );
    let e = err("canonicalize{fold}");
    assert!(
        e.message.starts_with("expected '=' after option 'fold'"),
        "{}",
        e.message
    );
    let e = err("canonicalize{fold=}");
    assert!(e.message.starts_with("missing value"), "{}", e.message);
}

#[test]
fn unbalanced_and_misplaced_brackets() {
    let e = err("canonicalize{fold=true");
    assert_eq!(
        (e.pos, e.message.as_str()),
        (12, "unbalanced '{': missing '}'")
    );
    let e = err("fixpoint(cse,dce");
    assert_eq!(
        (e.pos, e.message.as_str()),
        (8, "unbalanced '(': missing ')'")
    );
    let e = err("cse)");
    assert_eq!((e.pos, e.message.as_str()), (3, "unbalanced ')'"));
    let e = err("cse}");
    assert_eq!((e.pos, e.message.as_str()), (3, "unbalanced '}'"));
    let e = err("fixpoint()");
    assert!(
        e.message.starts_with("empty nested pipeline"),
        "{}",
        e.message
    );
    let e = err("fixpoint{max-iterations=2}");
    assert!(
        e.message.starts_with("fixpoint needs a nested pipeline"),
        "{}",
        e.message
    );
    let e = err("cse(dce)");
    assert!(
        e.message
            .starts_with("pass 'cse' does not take a nested pipeline"),
        "{}",
        e.message
    );
    let e = err("cse dce");
    assert_eq!(
        (e.pos, e.message.as_str()),
        (4, "expected ',' between passes, found 'd'")
    );
    let e = err("cse,,dce");
    assert_eq!(
        (e.pos, e.message.as_str()),
        (4, "expected a pass name, found ','")
    );
    let e = err("fixpoint(cse dce)");
    assert!(
        e.message.starts_with("expected ',' or ')'"),
        "{}",
        e.message
    );
}

#[test]
fn quoted_values_print_back_quoted() {
    use crate::options::{OptionKind, OptionSpec};
    static SPECS: &[OptionSpec] = &[OptionSpec {
        name: "label",
        kind: OptionKind::Str,
        default: "plain",
        doc: "",
    }];
    let mut o = PassOptions::defaults(SPECS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.to_string(), "label=plain");
    assert!(o.set("label", "two words \"q\"").is_ok());
    assert_eq!(o.to_string(), r#"label="two words \"q\"""#);
}

#[test]
fn registry_lists_every_pass_and_defaults_parse() {
    let r = Registry::builtin();
    let listing = list_passes();
    for p in r.passes() {
        assert!(listing.contains(p.name), "{listing}");
        assert!(
            p.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{} is not kebab-case",
            p.name
        );
        let o = PassOptions::defaults(p.options).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(
            (p.build)(&o).is_ok(),
            "{} does not build from its defaults",
            p.name
        );
        for s in p.options {
            assert!(
                listing.contains(s.name) && listing.contains(s.doc),
                "{listing}"
            );
        }
    }
    assert!(PassOptions::defaults(FIXPOINT_OPTIONS).is_ok());
    assert!(listing.contains("max-fold-bytes=<uint>"), "{listing}");
    assert!(listing.contains("fixpoint"), "{listing}");
}
