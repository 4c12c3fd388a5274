//! `gauge-verify{require=none|permutation|signed-permutation|orthogonal list-tensors=false}`:
//! reports, for the residual stream and every other basis class, the largest group of
//! transforms it admits (O(d), signed permutations, permutations, positive diagonal, none) and
//! the node that blocks each stronger group; also the per-head spaces of attention (q/k and
//! v/o). The invariance verifier of ALGORITHMS.md §5.3.
//!
//! Needs: nothing. Leaves: the module unchanged. With `require=K`, fails (naming the blocking
//! node and the strongest admitted group) unless the residual stream admits K — a guard to put
//! in front of a transform in a pipeline.

use crate::options::{OptionKind, OptionType, OptionValue, ValueError};
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::analysis::transformer::Structure;
use ortho_ir::analysis::{analyze_transformer, head_spaces, Kind};
use ortho_ir::Module;

crate::pass_options! {
    /// Options of [`gauge_verify`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GaugeVerifyOptions {
        /// Fail unless the residual stream admits this group.
        pub require: Option<Kind> = {
            name: "require",
            default: None,
            doc: "Fail unless the residual stream admits this group.",
        },
        pub list_tensors: bool = {
            name: "list-tensors",
            default: false,
            doc: "Also list every tensor of each class.",
        },
    }
}

crate::declare_pass! {
    name: "gauge-verify",
    summary: "Reports the transform group each residual-stream tensor admits and what blocks more.",
    options: GaugeVerifyOptions,
    run: run_pass,
}

/// `require`: `none` (no requirement) or a group the stream must admit.
impl OptionType for Option<Kind> {
    const KIND: OptionKind =
        OptionKind::Enum(&["none", "permutation", "signed-permutation", "orthogonal"]);
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Str(s) => match s.as_str() {
                "none" => Ok(None),
                "permutation" => Ok(Some(Kind::Permutation)),
                "signed-permutation" => Ok(Some(Kind::SignedPermutation)),
                "orthogonal" => Ok(Some(Kind::Orthogonal)),
                _ => Err(ValueError::Expected(Self::KIND)),
            },
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(self.map_or("none", Kind::key).to_string())
    }
}

/// The report: readable lines, and the structure they describe.
pub struct GaugeReport {
    pub lines: Vec<String>,
    pub structure: Structure,
}

/// Analyzes the main graph; fails only when `require` is not met.
pub fn gauge_verify(m: &Module, opts: &GaugeVerifyOptions) -> Result<GaugeReport, PassError> {
    let s = analyze_transformer(m, m.main);
    let g = m.main_graph();
    let mut lines = Vec::new();
    if s.gauge.classes.is_empty() {
        lines.push(
            "no residual stream: no embedding lookup (Gather of a constant [vocab, d] table)"
                .to_string(),
        );
    }
    for (k, c) in s.gauge.classes.iter().enumerate() {
        let name = if k == 0 {
            "residual stream".to_string()
        } else {
            format!("class {k}")
        };
        let first = c
            .values
            .first()
            .map(|v| format!("%{}", g.value_name(*v)))
            .unwrap_or_default();
        let last = c
            .values
            .last()
            .map(|v| format!("%{}", g.value_name(*v)))
            .unwrap_or_default();
        lines.push(format!(
            "{name}: {} tensors of width {} ({first} … {last}) admit {} [{}]",
            c.values.len(),
            c.width,
            c.admits.strongest(),
            c.admits.families().join(", ")
        ));
        lines.extend(c.blocker_lines(g));
        if opts.list_tensors {
            for v in &c.values {
                lines.push(format!("  %{}: {}", g.value_name(*v), c.admits.strongest()));
            }
        }
    }
    let spaces = head_spaces(&s);
    for space in ["q/k", "v/o"] {
        let of: Vec<_> = spaces.iter().filter(|h| h.space == space).collect();
        let Some(h) = of.first() else { continue };
        let what = match (space, h.admits) {
            ("v/o", Kind::Orthogonal) => {
                "O(head_dim) per KV head (repeated over its GQA group)".to_string()
            }
            ("q/k", Kind::Orthogonal) => "O(head_dim) per head, shared by q and k".to_string(),
            (_, k) => k.to_string(),
        };
        let why = h
            .blocker
            .as_ref()
            .map(|(n, r)| format!(": {r} (first at {})", g.describe(*n)))
            .unwrap_or_default();
        lines.push(format!(
            "attention {space} head spaces ({} branches): {what}{why}",
            of.len()
        ));
    }
    if let Some(req) = opts.require {
        let Some(main) = s.gauge.main() else {
            return Err(PassError::new(format!(
                "require={}: no residual stream found",
                req.key()
            )));
        };
        if !main.admits.contains(req.group()) {
            let msg = format!(
                "the residual stream does not admit {req}; it admits {}",
                main.admits.strongest()
            );
            return Err(match main.blocker_for(req.group()) {
                Some(b) => PassError::at_main(m, b.node, format!("{msg}: {}", b.reason())),
                None => PassError::new(msg),
            });
        }
    }
    Ok(GaugeReport {
        lines,
        structure: s,
    })
}

fn run_pass(
    m: &mut Module,
    opts: &GaugeVerifyOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let r = gauge_verify(m, opts)?;
    let s = &r.structure;
    cx.stat("classes", s.gauge.classes.len() as u64);
    cx.stat(
        "stream-tensors",
        s.gauge.main().map_or(0, |c| c.values.len()) as u64,
    );
    cx.stat(
        "blockers",
        s.gauge
            .classes
            .iter()
            .map(|c| c.blockers.len())
            .sum::<usize>() as u64,
    );
    for l in r.lines {
        cx.note(l);
    }
    Ok(PassResult::changed(false))
}
