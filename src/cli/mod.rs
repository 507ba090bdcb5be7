//! The `island` command line. Subcommand names and JSON fields are a stable interface:
//! scripts and the volume service depend on them (see README.md).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "island",
    version,
    about = "Incremental block snapshots to object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
