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
mod error;
mod eval;
mod input;
mod lm;
mod opt;
mod passes_glue;
mod run;

pub use cli::{Driver, GlobalArgs};
pub use error::CliError;

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl DriverOutput {
    pub fn ok(stdout: String, stderr: String) -> Self {
        DriverOutput {
            code: 0,
            stdout,
            stderr,
        }
    }
    pub fn error(stderr: String) -> Self {
        DriverOutput {
            code: 1,
            stdout: String::new(),
            stderr,
        }
    }
    /// A command that failed before printing anything: `error: …` and the error's status.
    pub(crate) fn failed(e: CliError) -> Self {
        DriverOutput {
            code: e.exit_code(),
            stdout: String::new(),
            stderr: format!("error: {e}\n"),
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
