//! ortho-opt's driver: the one code path shared by the CLI and the in-process file tests.
//!
//! `Driver::run(args)` parses a command line, does the work, and returns what the CLI would
//! print and its exit status, so `tests/filetests.rs` can run RUN lines without spawning processes.

mod analyze;
pub mod calib;
mod cli;
mod compare;
mod eval;
mod opt;
mod passes_glue;
mod run;

pub use cli::Driver;

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
}
