//! The pass registry: one line per pass, naming the `INFO` constant its file exports.
//!
//! A [`PassInfo`] is plain static data (name, summary, option specs, constructor), so the listing
//! (`--list-passes`), the pipeline parser and the manager all read the same source of truth.
//! Tests and embedders may add their own passes to a [`Registry`] built from the builtin one.

use crate::options::{OptionKind, OptionSpec};
use crate::pass::PassInfo;
use crate::transforms;
use std::fmt::Write;

/// The builtin passes, one line each, sorted by name.
static BUILTIN: &[&PassInfo] = &[
    &transforms::autodiff::INFO,
    &transforms::canonicalize::INFO,
    &transforms::cse::INFO,
    &transforms::dce::INFO,
    &transforms::denoise_prune::INFO,
    &transforms::denoise_rotate::INFO,
    &transforms::fold_norms::INFO,
    &transforms::fuse_elementwise::INFO,
    &transforms::gauge_verify::INFO,
    &transforms::infer_shapes::INFO,
    &transforms::joint_basis::INFO,
    &transforms::kron_factorize::INFO,
    &crate::kv_cache::INFO,
    &transforms::lora::INFO,
    &transforms::lora_merge::INFO,
    &transforms::lower_ortho::INFO,
    &transforms::lowrank_factorize::INFO,
    &transforms::poet_merge::INFO,
    &transforms::poet_reparam::INFO,
    &transforms::prune::INFO,
    &transforms::rotate_heads::INFO,
    &transforms::rotate_residual::INFO,
    &transforms::sparsify::INFO,
];

/// The pipeline construct `fixpoint{max-iterations=N}(…)`; not a pass, but listed and parsed
/// with the same option machinery.
pub const FIXPOINT_NAME: &str = "fixpoint";
pub const FIXPOINT_SUMMARY: &str =
    "Repeats the nested pipeline until an iteration changes nothing, at most max-iterations times.";

crate::pass_options! {
    /// Options of the `fixpoint` construct.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FixpointOptions {
        pub max_iterations: usize = {
            name: "max-iterations",
            default: 8,
            doc: "Upper bound on iterations; the report says whether the loop converged or hit it.",
            kind: OptionKind::Int { min: 1, max: 1_000_000 },
        },
    }
}

/// The option specs of `fixpoint`.
pub static FIXPOINT_OPTIONS: &[OptionSpec] = FixpointOptions::SPECS;

/// Why [`Registry::register`] refused a pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a pass named '{0}' is already registered")]
    Taken(&'static str),
}

/// A set of passes addressable by name.
#[derive(Debug, Clone)]
pub struct Registry {
    passes: Vec<&'static PassInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// The passes this crate provides.
    pub fn builtin() -> Registry {
        Registry {
            passes: BUILTIN.to_vec(),
        }
    }

    /// Adds a pass; a name that is taken (or is `fixpoint`) is refused.
    pub fn register(&mut self, info: &'static PassInfo) -> Result<(), RegistryError> {
        if info.name == FIXPOINT_NAME || self.get(info.name).is_some() {
            return Err(RegistryError::Taken(info.name));
        }
        self.passes.push(info);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&'static PassInfo> {
        self.passes.iter().copied().find(|p| p.name == name)
    }

    pub fn passes(&self) -> &[&'static PassInfo] {
        &self.passes
    }

    /// Whether `name` is a registered pass or the fixpoint construct.
    pub fn knows(&self, name: &str) -> bool {
        name == FIXPOINT_NAME || self.get(name).is_some()
    }

    /// The text of `--list-passes`: each pass with its summary and options (type, default, doc).
    pub fn listing(&self) -> String {
        let mut out = String::from("Passes:\n");
        for p in &self.passes {
            write_entry(&mut out, p.name, p.summary, p.options);
        }
        out.push_str("\nPipeline constructs:\n");
        write_entry(
            &mut out,
            "fixpoint{…}(PIPELINE)",
            FIXPOINT_SUMMARY,
            FIXPOINT_OPTIONS,
        );
        out
    }
}

fn write_entry(out: &mut String, name: &str, summary: &str, options: &[OptionSpec]) {
    let _ = writeln!(out, "  {name:<16} {summary}");
    for o in options {
        let lhs = format!("{}=<{}>", o.name, o.kind.describe());
        let _ = writeln!(
            out,
            "      {lhs:<28} {} (default: {})",
            o.doc,
            o.default_text()
        );
    }
}

/// `--list-passes` for the builtin registry.
pub fn list_passes() -> String {
    Registry::builtin().listing()
}
