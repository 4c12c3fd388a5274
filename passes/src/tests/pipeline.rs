//! Pipeline grammar: canonical printing, round trips, and error messages.

use crate::options::{OptionValue, PassOptions};
use crate::pipeline::{Pipeline, PipelineError, PipelineErrorKind, PipelineItem};
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
            assert_eq!(s.options.typed::<u64>("max-fold-bytes"), Ok(65536));
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
    assert_eq!(e.kind, PipelineErrorKind::UnknownPass);
    assert_eq!(e.pos, 4);
    assert!(e.message.starts_with("unknown pass 'foo'"), "{}", e.message);
    assert!(
        e.message
            .contains("known: autodiff, canonicalize, cse, dce, denoise-prune, denoise-rotate, fold-norms, fuse-elementwise, gauge-verify, infer-shapes, joint-basis, kron-factorize, kv-cache, lora, lora-merge, lower-ortho, lowrank-factorize, poet-merge, poet-reparam, prune, rotate-heads, rotate-residual, sparsify, fixpoint"),
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
    assert_eq!(e.kind, PipelineErrorKind::UnknownOption);
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
    assert_eq!(e.kind, PipelineErrorKind::UnknownOption);
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
    assert_eq!(e.kind, PipelineErrorKind::BadValue);
    assert_eq!(e.pos, 28);

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
    assert_eq!(e.kind, PipelineErrorKind::DuplicateOption);
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
    assert_eq!(e.kind, PipelineErrorKind::Syntax);
    assert!(e.message.starts_with("missing value"), "{}", e.message);

    // Values of the right type that the pass refuses when it is built.
    let e = err("prune{sparsity=1.5}");
    assert_eq!(e.kind, PipelineErrorKind::Refused);
    assert_eq!(
        e.message,
        "pass 'prune': sparsity must lie in (0, 1), got 1.5"
    );
    let e = err("prune{layers=3-1}");
    assert_eq!(e.kind, PipelineErrorKind::Refused);
    assert_eq!(
        e.message,
        "pass 'prune': layers: '3-1' is not an index or a range a-b"
    );
    let e = err("denoise-rotate{lr=-1.0}");
    assert_eq!(e.kind, PipelineErrorKind::Refused);
    assert_eq!(
        e.message,
        "pass 'denoise-rotate': lr must be positive, got -1"
    );
    let e = err("denoise-prune{nm-weight=-0.5}");
    assert_eq!(e.kind, PipelineErrorKind::Refused);
    assert_eq!(
        e.message,
        "pass 'denoise-prune': nm-weight must be a finite number ≥ 0, got -0.5"
    );
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
        default: || OptionValue::Str("plain".into()),
        doc: "",
    }];
    let mut o = PassOptions::defaults(SPECS);
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
        let o = PassOptions::defaults(p.options);
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
    assert!(listing.contains("max-fold-bytes=<uint>"), "{listing}");
    assert!(listing.contains("fixpoint"), "{listing}");
}

/// Every spec's default, printed as pipeline text, parses back to the same value and fits the
/// option's declared type and range (integer bounds, enum words).
#[test]
fn spec_defaults_parse_as_pipeline_text() {
    let r = Registry::builtin();
    let specs = r
        .passes()
        .iter()
        .map(|p| (p.name, p.options))
        .chain([("fixpoint", FIXPOINT_OPTIONS)]);
    for (pass, options) in specs {
        for s in options {
            let value = (s.default)();
            assert_eq!(value.check(s.kind), Ok(()), "{pass} {}", s.name);
            assert_eq!(
                OptionValue::parse(s.kind, &s.default_text()),
                Ok(value),
                "{pass} {}",
                s.name
            );
        }
    }
}

/// Declares, for each builtin pass with options, the round trip of its options struct:
/// `Default` → pipeline values → printed pipeline text → parsed pipeline → struct again, and
/// that the struct's `Default` is what the specs' defaults parse to.
macro_rules! round_trips {
    ($($module:ident :: $opts:ident),* $(,)?) => {
        #[test]
        fn every_pass_round_trips_its_defaults() {
            let mut checked = Vec::new();
            $({
                let info = &crate::transforms::$module::INFO;
                type O = crate::transforms::$module::$opts;
                let defaults = O::default();
                assert_eq!(
                    O::from_options(&PassOptions::defaults(info.options)),
                    Ok(defaults.clone()),
                    "{}: Default disagrees with the spec defaults",
                    info.name
                );
                let values = defaults
                    .to_options()
                    .unwrap_or_else(|e| panic!("{}: {e}", info.name));
                let text = format!("{}{{{values}}}", info.name);
                let parsed = Pipeline::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let [PipelineItem::Pass(spec)] = parsed.items.as_slice() else {
                    panic!("{text} parsed as {parsed:?}");
                };
                assert_eq!(spec.options, values, "{text}");
                assert_eq!(O::from_options(&spec.options), Ok(defaults), "{text}");
                checked.push(info.name);
            })*
            // Every builtin pass with options is listed above.
            let with_options: Vec<&str> = Registry::builtin()
                .passes()
                .iter()
                .filter(|p| !p.options.is_empty())
                .map(|p| p.name)
                .collect();
            checked.sort_unstable();
            assert_eq!(checked, with_options);
        }
    };
}

round_trips!(
    autodiff::AutodiffOptions,
    canonicalize::CanonicalizeOptions,
    denoise_prune::DenoisePruneOptions,
    denoise_rotate::DenoiseRotateOptions,
    fuse_elementwise::FuseElementwiseOptions,
    gauge_verify::GaugeVerifyOptions,
    joint_basis::JointBasisOptions,
    kron_factorize::KronFactorizeOptions,
    lora::LoraOptions,
    lowrank_factorize::LowrankFactorizeOptions,
    poet_reparam::PoetReparamOptions,
    prune::PruneOptions,
    rotate_heads::RotateHeadsOptions,
    rotate_residual::RotateResidualOptions,
    sparsify::SparsifyOptions,
);

/// A non-default value round-trips too, and one outside its declared range is refused by name.
#[test]
fn options_structs_print_and_refuse_by_option() {
    use crate::selection::{BlockSelection, RoleSelection};
    use crate::transforms::prune::PruneOptions;
    use crate::transforms::rotate_residual::{RotateResidualOptions, RotationKind};
    let o = PruneOptions {
        layers: BlockSelection(Some(vec![0, 2, 3])),
        linears: RoleSelection(vec!["q", "down"]),
        ..PruneOptions::default()
    };
    let values = o.to_options().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        values.to_string().contains("layers=0+2+3 linears=q+down"),
        "{values}"
    );
    assert_eq!(PruneOptions::from_options(&values), Ok(o));
    let r = RotateResidualOptions {
        kind: RotationKind::SignedPermutation,
        seed: 7,
    };
    let values = r.to_options().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(values.to_string(), "kind=signed-permutation seed=7");
    let f = crate::transforms::FuseElementwiseOptions { min_ops: 0 };
    assert!(matches!(
        f.to_options(),
        Err(crate::options::OptionError::Value {
            name: "min-ops",
            ..
        })
    ));
}

/// `--list-passes` is generated from the declarations; its text is pinned byte for byte (the
/// listing of main before passes were declared with `pass_options!`).
#[test]
fn listing_text_is_pinned() {
    assert_eq!(list_passes(), include_str!("list_passes.txt"));
}
