//! ortho-opt's driver: the one code path shared by the CLI and the in-process file tests.
//!
//! `Driver::run(args)` parses a command line, does the work, and returns what the CLI would
//! print and its exit status, so `tests/filetests.rs` can run RUN lines without spawning processes.
//!
//! Each command is one module with its clap arguments and a `run` function; `cli.rs` lists them
//! as subcommands beside the optimizer's own (default) command line.

mod analyze;
pub mod calib;
mod cli;
mod compare;
mod compare_locate;
mod error;
mod eval;
pub mod generate;
mod input;
mod lm;
pub mod new_model;
mod opt;
mod output_policy;
mod passes_glue;
pub mod poet_train;
mod progress;
mod report;
mod report_calib;
mod report_html;
mod run;
mod shard;
pub mod train;
pub mod train_ckpt;
mod train_cmd;
pub mod train_prefix;

pub use cli::{Driver, GlobalArgs};
pub use error::CliError;
use std::sync::Arc;

/// What a command produced.
#[derive(Debug, Clone, Default)]
pub struct DriverOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The failure, for callers that branch on its kind; `None` on success and where one run
    /// reports several failures (the cases of `--split-input-file`).
    pub error: Option<Arc<CliError>>,
}

/// Two outputs are equal when they print the same, exit the same and fail the same way.
impl PartialEq for DriverOutput {
    fn eq(&self, other: &Self) -> bool {
        let kind = |o: &DriverOutput| o.error.as_deref().map(std::mem::discriminant);
        self.code == other.code
            && self.stdout == other.stdout
            && self.stderr == other.stderr
            && kind(self) == kind(other)
    }
}

impl Eq for DriverOutput {}

impl DriverOutput {
    pub fn ok(stdout: String, stderr: String) -> Self {
        DriverOutput {
            code: 0,
            stdout,
            stderr,
            error: None,
        }
    }
    pub fn error(stderr: String) -> Self {
        DriverOutput {
            code: 1,
            stdout: String::new(),
            stderr,
            error: None,
        }
    }
    /// A command that failed before printing anything: `error: …` and the error's status.
    pub(crate) fn failed(e: CliError) -> Self {
        DriverOutput {
            code: e.exit_code(),
            stdout: String::new(),
            stderr: format!("error: {e}\n"),
            error: Some(Arc::new(e)),
        }
    }
    /// A command that failed after printing `stderr` (which ends with its report of `e`).
    pub(crate) fn failed_with(e: CliError, stderr: String) -> Self {
        DriverOutput {
            code: e.exit_code(),
            stdout: String::new(),
            stderr,
            error: Some(Arc::new(e)),
        }
    }
    /// The output of a command that returns (stdout, stderr) or an error.
    pub(crate) fn from_result(r: Result<(String, String), CliError>) -> Self {
        match r {
            Ok((out, err)) => DriverOutput::ok(out, err),
            Err(e) => DriverOutput::failed(e),
        }
    }
}
