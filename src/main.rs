//! The `ortho-opt` command: a thin shell around `ortho_opt::Driver`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = ortho_opt::Driver::run(&args);
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    std::process::exit(out.code);
}
