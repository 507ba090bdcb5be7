//! The `island` command line. Subcommand names and JSON fields are a stable interface:
//! scripts and the volume service depend on them (see README.md).

mod image;

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
enum Command {
    /// Local qcow2 images: create, snapshot, changed ranges, export/import.
    #[command(subcommand)]
    Image(image::ImageCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
