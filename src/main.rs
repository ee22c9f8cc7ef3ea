//! The `hearth` binary: everything lives in `cli/`; this only hands over the exit status.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
