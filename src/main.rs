//! The `island` binary: the command line (`src/cli/`) over the library, built with the
//! `cli` feature (and `server` for `island serve`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
