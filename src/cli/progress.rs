//! Progress of long repository jobs, shown three ways: bars on a terminal for people,
//! JSON status lines on stderr under `--json` so a volume service can poll a job's stage
//! and percent while stdout stays one clean result object, and nothing when stderr is not
//! a terminal (cron logs stay readable).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often, at most, a JSON status line is written while a stage advances.
const JSON_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Stages counted in objects rather than bytes (their bars show counts).
const OBJECT_STAGES: &[&str] = &["gc-delete"];

/// Which way progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProgressMode {
    Bars,
    Json,
    Off,
}

impl ProgressMode {
    /// JSON status when the caller asked for JSON, bars when stderr is a terminal.
    pub(super) fn choose(json: bool) -> ProgressMode {
        if json {
            ProgressMode::Json
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Off
        }
    }
}

/// One status line of `--json` mode (a stable interface: field names do not change).
#[derive(Debug, Serialize)]
struct StatusLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stage: &'a str,
    done: u64,
    total: u64,
    percent: f64,
}

struct State {
    stage: String,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    last_status: Option<Instant>,
}

/// The CLI's implementation of the library's progress callbacks.
pub(super) struct CliProgress {
    mode: ProgressMode,
    state: Mutex<State>,
}

impl CliProgress {
    pub(super) fn new(mode: ProgressMode) -> CliProgress {
        CliProgress {
            mode,
            state: Mutex::new(State {
                stage: String::new(),
                total: 0,
                done: 0,
                bar: None,
                last_status: None,
            }),
        }
    }

    /// Starts stage `name` of `total` bytes, closing the previous stage's bar.
    pub(super) fn start_stage(&self, name: &str, total: u64) {
        let mut st = self.lock();
        if let Some(bar) = st.bar.take() {
            bar.finish_and_clear();
        }
        st.stage = name.to_string();
        st.total = total;
        st.done = 0;
        match self.mode {
            ProgressMode::Bars => {
                let template = if OBJECT_STAGES.contains(&name) {
                    "{prefix:>10} [{wide_bar}] {pos}/{len} objects eta {eta}"
                } else {
                    "{prefix:>10} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}"
                };
                let style = ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                    .with_style(style)
                    .with_prefix(name.to_string());
                st.bar = Some(bar);
            }
            ProgressMode::Json => {
                st.last_status = Some(Instant::now());
                emit_status(&st);
            }
            ProgressMode::Off => {}
        }
    }

    /// Records `n` more bytes done in the current stage.
    pub(super) fn advance_by(&self, n: u64) {
        let mut st = self.lock();
        st.done = st.done.saturating_add(n);
        if let Some(bar) = &st.bar {
            bar.inc(n);
        }
        if self.mode == ProgressMode::Json {
            let due = st
                .last_status
                .is_none_or(|t| t.elapsed() >= JSON_STATUS_INTERVAL);
            if due || st.done >= st.total {
                st.last_status = Some(Instant::now());
                emit_status(&st);
            }
        }
    }

    /// Clears any bar so the final result prints on a clean line.
    pub(super) fn finish(&self) {
        let mut st = self.lock();
        if let Some(bar) = st.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another progress call panicked mid-update; the
        // counters are still usable for display.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn emit_status(st: &State) {
    let percent = if st.total == 0 {
        100.0
    } else {
        (st.done as f64 * 100.0 / st.total as f64).min(100.0)
    };
    let line = StatusLine {
        kind: "status",
        stage: &st.stage,
        done: st.done,
        total: st.total,
        percent: (percent * 10.0).round() / 10.0,
    };
    if let Ok(text) = serde_json::to_string(&line) {
        // Status is advisory: a closed stderr must not fail the job.
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}
