//! What the optimizer's output may use, as a deployment target sets it: `--max-opset`,
//! `--max-ir-version` and `--allowed-domains`. The module is checked just before it is written
//! (after `ortho.*` ops are lowered for ONNX), and a module outside the limits is an error that
//! names what exceeds them; nothing is written.

use ortho_ir::Module;
use thiserror::Error;

/// The limits of the optimizer's output.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Output limits")]
pub struct OutputPolicyArgs {
    /// Refuse to write an output that imports the default ONNX domain (ai.onnx) above this
    /// opset version (the model itself or any of its functions).
    #[arg(long = "max-opset", value_name = "N")]
    pub max_opset: Option<i64>,
    /// Refuse to write an output whose ONNX IR version is above N.
    #[arg(long = "max-ir-version", value_name = "N")]
    pub max_ir_version: Option<i64>,
    /// Refuse to write an output with an op or opset import outside these domains
    /// (comma-separated; the default domain ai.onnx is always allowed), e.g. `com.microsoft`.
    #[arg(
        long = "allowed-domains",
        value_delimiter = ',',
        value_name = "DOMAINS"
    )]
    pub allowed_domains: Option<Vec<String>>,
}

/// Why an output is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the output imports opset {version} of ai.onnx{where_}, above --max-opset {max}; nothing was written")]
    Opset {
        version: i64,
        max: i64,
        /// ` (function NAME)` when a function's import exceeds it.
        where_: String,
    },
    #[error(
        "the output has IR version {version}, above --max-ir-version {max}; nothing was written"
    )]
    IrVersion { version: i64, max: i64 },
    #[error("node '{node}' ({op}) is in domain '{domain}', which --allowed-domains does not list; nothing was written")]
    NodeDomain {
        node: String,
        op: String,
        domain: String,
    },
    #[error("the output imports domain '{domain}'{where_}, which --allowed-domains does not list; nothing was written")]
    ImportDomain { domain: String, where_: String },
}

/// The default ONNX domain, however it is spelled.
fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

impl OutputPolicyArgs {
    /// Checks `m` against the limits; the first violation found is the error (a node outside
    /// the allowed domains before the import that declares its domain, to name the node).
    pub fn check(&self, m: &Module) -> Result<(), PolicyError> {
        let imports = std::iter::once((String::new(), &m.opsets)).chain(
            m.functions
                .iter()
                .map(|f| (format!(" (function {})", f.name), &f.opsets)),
        );
        let allowed = |d: &str| {
            is_default_domain(d)
                || self
                    .allowed_domains
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|a| a == d))
        };
        if self.allowed_domains.is_some() {
            for gid in m.reachable_graphs() {
                let g = m.graph(gid);
                for n in g.node_ids() {
                    let node = g.node(n);
                    if !allowed(node.op.domain()) {
                        return Err(PolicyError::NodeDomain {
                            node: if node.name.is_empty() {
                                "(unnamed)".to_string()
                            } else {
                                node.name.clone()
                            },
                            op: node.op.name().to_string(),
                            domain: node.op.domain().to_string(),
                        });
                    }
                }
            }
        }
        for (where_, opsets) in imports {
            for o in opsets {
                if let Some(max) = self.max_opset {
                    if is_default_domain(&o.domain) && o.version > max {
                        return Err(PolicyError::Opset {
                            version: o.version,
                            max,
                            where_,
                        });
                    }
                }
                if !allowed(&o.domain) {
                    return Err(PolicyError::ImportDomain {
                        domain: o.domain.clone(),
                        where_,
                    });
                }
            }
        }
        if let Some(max) = self.max_ir_version {
            if m.meta.ir_version > max {
                return Err(PolicyError::IrVersion {
                    version: m.meta.ir_version,
                    max,
                });
            }
        }
        Ok(())
    }
}
