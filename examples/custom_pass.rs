//! Write a pass outside the crate, register it, and run it in a pipeline beside the builtin ones.
//!
//!     cargo run --release --example custom_pass [MODEL.oir|MODEL.onnx]
//!
//! The pass, `strip-docs`, clears the documentation strings of nodes (they can be large in
//! exported models). Its option is declared once with `pass_options!`, the pass with
//! `declare_pass!`; a `Registry` holding the builtin passes plus this one parses the pipeline,
//! so `strip-docs{keep-short=16},cse,dce` works like any other.

use ortho_ir::Module;
use ortho_passes::pass::{PassContext, PassError, PassResult};
use ortho_passes::pipeline::parse_pipeline;
use ortho_passes::registry::Registry;
use ortho_passes::{ManagerOptions, PassManager};
use std::path::{Path, PathBuf};

ortho_passes::pass_options! {
    /// Options of `strip-docs`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StripDocsOptions {
        /// Docs of at most this many bytes are kept.
        pub keep_short: u64 = {
            name: "keep-short",
            default: 0,
            doc: "Keep documentation strings of at most this many bytes.",
        },
    }
}

ortho_passes::declare_pass! {
    name: "strip-docs",
    summary: "Clears the doc strings of nodes (an example of a pass written outside the crate).",
    options: StripDocsOptions,
    run: strip_docs,
}

fn strip_docs(
    m: &mut Module,
    o: &StripDocsOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    // Collect first, mutate after: the graphs are listed before any node changes.
    let graphs = m.reachable_graphs();
    let mut cleared = 0usize;
    for gid in graphs {
        let g = m.graph_mut(gid);
        for n in g.node_ids() {
            let node = g.node_mut(n);
            if !node.doc.is_empty() && node.doc.len() as u64 > o.keep_short {
                node.doc.clear();
                cleared += 1;
            }
        }
    }
    cx.stats(&[("cleared", cleared)]);
    if cleared > 0 {
        cx.note(format!("cleared {cleared} doc string(s)"));
    }
    Ok(PassResult::changed(cleared > 0))
}

fn load(path: &Path) -> Result<Module, Box<dyn std::error::Error>> {
    if path.extension().is_some_and(|e| e == "oir") {
        Ok(ortho_ir::text::parse_module(&std::fs::read_to_string(
            path,
        )?)?)
    } else {
        Ok(ortho_frontends::import_file(path)?)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filecheck/analyze/json.oir")
        });
    let mut m = load(&path)?;
    // Give the default model something to strip.
    let main = m.main;
    let g = m.graph_mut(main);
    for n in g.node_ids() {
        g.node_mut(n).doc = "exported by a tool that documents every node".to_string();
    }

    let mut registry = Registry::builtin();
    registry.register(&INFO)?;
    let text = "strip-docs{keep-short=16},cse,dce";
    let pipeline = parse_pipeline(text, &registry).map_err(|e| e.render(text))?;
    println!("pipeline: {}", pipeline.canonical());
    let opts = ManagerOptions {
        statistics: true,
        ..Default::default()
    };
    let pm = PassManager::new(pipeline, opts.clone())?;
    let report = pm.run(&mut m, &path.display().to_string(), &mut |_| {})?;
    print!("{}", report.render(&opts));
    let left = m
        .main_graph()
        .node_ids()
        .into_iter()
        .filter(|n| !m.main_graph().node(*n).doc.is_empty())
        .count();
    if left != 0 {
        return Err(format!("{left} doc strings left").into());
    }
    Ok(())
}
