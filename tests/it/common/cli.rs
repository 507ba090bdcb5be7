//! Running the built `island` binary the way scripts do: a clean environment (no
//! `ISLAND_REPO`, quiet logs), exit status checked, stdout returned or parsed as JSON.

use serde_json::Value;
use std::process::{Command, Output};

/// A command line for `island ARGS`, for tests that spawn, feed or kill it.
pub fn island_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_island"));
    c.args(args)
        .env_remove("ISLAND_REPO")
        .env("RUST_LOG", "warn");
    c
}

/// Runs `island ARGS` to completion.
pub fn island(args: &[&str]) -> Output {
    island_cmd(args).output().expect("the island binary runs")
}

/// Runs `island ARGS`, requires exit 0 and returns stdout.
#[track_caller]
pub fn ok(args: &[&str]) -> String {
    let out = island(args);
    assert!(
        out.status.success(),
        "island {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs `island ARGS` expecting JSON on stdout.
#[track_caller]
pub fn ok_json(args: &[&str]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("island {args:?}: bad JSON ({e}): {text}"))
}
