//! Reading the model a command names: `.oir` text or `.onnx` (with its external data), and the
//! cases of a `--split-input-file` input. Every command reads models through here, so they all
//! print the same errors for the same broken file.

use crate::{CliError, DriverOutput};
use ortho_ir::Module;
use std::path::Path;

/// Whether `path` names textual IR (by its extension); anything else is read as ONNX.
pub(crate) fn is_oir(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "oir")
}

/// Reads a model without verifying it (the optimizer verifies with its own message layout).
pub(crate) fn read_module(path: &Path) -> Result<Module, CliError> {
    if is_oir(path) {
        let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
        ortho_ir::text::parse_module(&text).map_err(|e| CliError::Parse {
            path: path.to_path_buf(),
            source: e.into(),
        })
    } else {
        // Only a file protobuf cannot decode is described by what it looks like; every other
        // import error (a valid model with a missing initializer, say) keeps its own message.
        ortho_frontends::import_file(path).map_err(|e| match (&e, sniff(path)) {
            (ortho_frontends::OnnxError::Wire { .. }, Some(kind)) => CliError::NotOnnx {
                path: path.to_path_buf(),
                kind,
            },
            _ => CliError::Import { source: e.into() },
        })
    }
}

/// What a file that failed to import as ONNX looks like instead, from its first bytes: a GGUF
/// model (llama.cpp's format), JSON (a tokenizer or config given by mistake) or plain text
/// (`.oir` without its extension). `None` when it looks like none of them, and the importer's
/// own error is the better message.
fn sniff(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    if head.starts_with(b"GGUF") {
        return Some("a GGUF model (llama.cpp's format), not ONNX; export the model to ONNX first (e.g. with optimum)");
    }
    let text = std::str::from_utf8(&head).ok()?;
    if text.contains('\0') {
        return None;
    }
    let t = text.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        return Some(
            "JSON, not an ONNX model (a tokenizer.json or config.json given as the model?)",
        );
    }
    if t.starts_with("module") || t.starts_with("graph") || t.starts_with("//") {
        return Some("textual IR without the .oir extension; name it FILE.oir");
    }
    Some("text, not an ONNX model")
}

/// Reads a model and verifies it.
pub(crate) fn load_module(path: &Path) -> Result<Module, CliError> {
    let m = read_module(path)?;
    ortho_ir::verify::verify_module(&m).map_err(|d| CliError::Verify {
        path: path.to_path_buf(),
        source: d.into(),
    })?;
    Ok(m)
}

/// One module of a `--split-input-file` input.
pub(crate) struct Case<'a> {
    /// 0-based position among the cases.
    pub index: usize,
    /// The case's text as it stands in the file.
    pub text: &'a str,
    /// Lines of the file before the case.
    pub line_offset: usize,
}

impl Case<'_> {
    /// The text padded with the newlines of the cases before, so parse errors give file lines.
    pub fn padded(&self) -> String {
        format!("{}{}", "\n".repeat(self.line_offset), self.text)
    }
}

/// Runs `each` on every case of the `.oir` file `path` (modules separated by `// -----`, as
/// mlir-opt's -split-input-file). `each` returns the case's output and whether it failed; a
/// failing case does not stop the others, so one file can hold valid and invalid cases. The
/// outputs are joined with `// -----` lines, so chunks map to cases; the status is 1 when any
/// case failed.
pub(crate) fn for_each_case(
    path: &Path,
    mut each: impl FnMut(Case<'_>) -> (String, bool),
) -> DriverOutput {
    if !is_oir(path) {
        return DriverOutput::failed(CliError::Usage("--split-input-file needs a .oir input"));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return DriverOutput::failed(CliError::io(path)(e)),
    };
    let mut outs = Vec::new();
    let mut code = 0;
    let mut line_offset = 0;
    for (index, case) in text.split("\n// -----").enumerate() {
        let (out, failed) = each(Case {
            index,
            text: case,
            line_offset,
        });
        line_offset += case.matches('\n').count() + 1;
        if failed {
            code = 1;
        }
        outs.push(out);
    }
    DriverOutput {
        code,
        stdout: outs.join("// -----\n"),
        stderr: String::new(),
        error: None,
    }
}
