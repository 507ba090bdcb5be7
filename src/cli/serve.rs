//! `island serve`: the volume service's HTTP API (see README.md, "island serve").

use super::repo::{open_repo, StoreArgs};
use anyhow::{bail, Context};
use clap::Args;
use island::api::{ApiState, Users, DEFAULT_MAX_SIZE_GIB};
use island::service::{
    OpTiming, Service, ServiceConfig, DEFAULT_CATALOG_GRACE, DEFAULT_USER_LIMIT, MAX_VOLUME_SIZE,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Repository: directory path, file://, s3:// or swift:// URL (holds the catalog too).
    #[arg(long, value_name = "REPO", env = "ISLAND_REPO")]
    repo: String,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on
    /// stdout as `listening on ADDR`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// TOML file with a `[tokens]` table mapping bearer token = "user name".
    #[arg(long, value_name = "FILE")]
    users: PathBuf,
    /// Where this host keeps attached local images and operation records.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// This server's name in attachment records; unique among the servers sharing the
    /// repository (default: the host name).
    #[arg(long, value_name = "NAME")]
    server_id: Option<String>,
    /// Largest size (GiB) `POST /api/create` accepts.
    #[arg(long, value_name = "GIB", default_value_t = DEFAULT_MAX_SIZE_GIB)]
    max_size_gib: u64,
    /// User limit (simultaneous attachments) of volumes created without one.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_USER_LIMIT)]
    user_limit: u32,
    /// A peer repository (repeatable; the allow-list), used both ways: `POST /api/copy`
    /// copies to it, `POST /api/create` with `source_repository` creates from its
    /// snapshots, and the `mend` fix re-copies damaged objects from it. Opened at start,
    /// with the same store flags as --repo.
    #[arg(long, value_name = "URL", alias = "peer")]
    copy_target: Vec<String>,
    /// Seconds a superseded catalog generation's successor must exist before the
    /// `clean:catalog` fix deletes it; more than any server's list-then-write plus clock
    /// skew.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CATALOG_GRACE.as_secs())]
    catalog_grace_secs: u64,
    /// Seconds between the heartbeats this server writes into the shared record of each
    /// operation it runs (progress is written at most every min(5, this) seconds).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    operation_heartbeat_secs: f64,
    /// Seconds without a heartbeat after which an unfinished operation's owner counts as
    /// gone (the record is shown `failed`); at least twice the heartbeat, plus clock skew.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    operation_expiry_secs: f64,
    /// Seconds a finished operation's record (or an abandoned one's) is kept in the
    /// store before any server prunes it; at least the expiry.
    #[arg(long, value_name = "SECS", default_value_t = 7.0 * 24.0 * 3600.0)]
    operation_retention_secs: f64,
}

/// A positive, finite number of seconds.
fn seconds(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} {v}: a positive number of seconds"))
}

/// The host name, as the default server id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(super) fn run(a: ServeArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let max_gib = MAX_VOLUME_SIZE >> 30;
    if !(1..=max_gib).contains(&a.max_size_gib) {
        bail!("--max-size-gib {} is outside 1..={max_gib}", a.max_size_gib);
    }
    let text = std::fs::read_to_string(&a.users)
        .with_context(|| format!("reading users file {}", a.users.display()))?;
    let users = Users::parse(&text)
        .map_err(|e| anyhow::anyhow!("users file {}: {e}", a.users.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let repo = open_repo(&a.repo, store_args).await?;
        let mut cfg = ServiceConfig::new(&a.data_dir, a.server_id.unwrap_or_else(host_name));
        cfg.default_user_limit = a.user_limit;
        cfg.admins = users.admins.clone();
        cfg.catalog_grace = std::time::Duration::from_secs(a.catalog_grace_secs);
        let heartbeat = seconds("operation-heartbeat-secs", a.operation_heartbeat_secs)?;
        cfg.operations = OpTiming {
            progress: heartbeat.min(OpTiming::default().progress),
            heartbeat,
            expiry: seconds("operation-expiry-secs", a.operation_expiry_secs)?,
            retention: seconds("operation-retention-secs", a.operation_retention_secs)?,
        };
        let mut service = Service::new(repo, cfg)
            .with_context(|| format!("starting the service in {}", a.data_dir.display()))?;
        for url in &a.copy_target {
            let target = open_repo(url, store_args)
                .await
                .with_context(|| format!("opening copy target {url}"))?;
            service.add_copy_target(url.clone(), target);
        }
        let service = Arc::new(service);
        let resumed = service.start();
        if resumed > 0 {
            eprintln!("resuming {resumed} interrupted operation(s)");
        }
        let state = Arc::new(ApiState {
            service,
            users,
            max_size_gib: a.max_size_gib,
        });
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        println!("listening on {addr}");
        let shutdown = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!("cannot wait for ctrl-c: {e}");
                std::future::pending::<()>().await;
            }
        };
        island::api::serve(listener, state, shutdown)
            .await
            .context("serving HTTP")?;
        Ok(0)
    })
}
