//! The `ortho-opt` command: a thin shell around `ortho_opt::Driver`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // A mapped input truncated by another process becomes an error naming it, not a bus error.
    let _ = ortho_ir::output_sigbus::install();
    // Notes, IR dumps and per-pass lines go to stderr while the command runs.
    let out = ortho_opt::Driver::run_streaming(&args, Box::new(std::io::stderr()));
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    std::process::exit(out.code);
}
