//! The `island` command line. Subcommand names and JSON fields are a stable interface:
//! scripts and the volume service depend on them (see README.md).
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (bad flags; clap's own code), 3 `check`
//! found problems, 13 the repository looks copied with reset store times (gc, repair,
//! delete and check refuse until `check --adopt-copy`).

mod image;
mod progress;
mod repo;
#[cfg(feature = "server")]
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit code for an operation that failed.
const EXIT_FAILURE: u8 = 1;
/// Exit code for `check` finding problems in the repository.
const EXIT_PROBLEMS: u8 = 3;
/// Exit code for a repository that looks copied with its store times reset.
const EXIT_COPIED: u8 = 13;

#[derive(Parser)]
#[command(
    name = "island",
    version,
    about = "Incremental block snapshots to object storage",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 3 check found problems,\n\
                  13 repository copied with reset times (run check --adopt-copy).\n\
                  Logs go to stderr, filtered by RUST_LOG (default: warn)."
)]
struct Cli {
    #[command(flatten)]
    store: repo::StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Local qcow2 images: create, snapshot, changed ranges, export/import.
    Image(image::ImageArgs),
    #[command(flatten)]
    Repo(repo::RepoCommand),
    /// Run the volume service's HTTP API.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd).map(|()| 0),
        Command::Repo(cmd) => repo::run(cmd, &cli.store),
        #[cfg(feature = "server")]
        Command::Serve(a) => serve::run(a, &cli.store),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// The exit code of a failed command: specific where a script must react differently.
fn exit_code_of(err: &anyhow::Error) -> u8 {
    let copied = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<island::Error>(),
            Some(island::Error::Repo(
                island::repo::RepoError::CopiedRepository { .. }
            ))
        ) || matches!(
            e.downcast_ref::<island::repo::RepoError>(),
            Some(island::repo::RepoError::CopiedRepository { .. })
        )
    });
    if copied {
        EXIT_COPIED
    } else {
        EXIT_FAILURE
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings and errors only), so
/// stdout carries nothing but results.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
