//! Repository subcommands: `init`, `backup`, `snapshots`, `restore`, `delete`, `gc`,
//! `check`, `diff`. Their names, flags and JSON fields are what nightly scripts and the
//! volume service call, so they are documented in README.md and change only compatibly.

mod ops;

use super::progress::{CliProgress, ProgressMode};
use super::EXIT_PROBLEMS;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use island::backup::{backup_image, backup_image_snapshot, BackupOptions, RawSource};
use island::repo::{CheckOptions, GcOptions, InitOptions, Progress, Repository};
use island::restore::RestoreTarget;
use island::store::{open_store as open_store_url, ObjectStore, StoreOptions};
use std::path::PathBuf;
use std::sync::Arc;

/// Subcommands that act on a repository.
#[derive(Debug, Subcommand)]
pub(super) enum RepoCommand {
    /// Create a new, empty repository.
    Init(InitArgs),
    /// Back up a raw file, block device or qcow2 image as a new snapshot of a volume.
    Backup(BackupArgs),
    /// List snapshots with their logical, new and exclusive sizes.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot to a raw file (sparse), or into a target that holds another snapshot.
    Restore(RestoreArgs),
    /// Delete a snapshot; its exclusive data is freed by the next `gc`.
    Delete(DeleteArgs),
    /// Reclaim the space of deleted snapshots and of crashed writers.
    Gc(GcArgs),
    /// Verify the repository's structure and refcounts, optionally re-hashing data.
    Check(CheckArgs),
    /// List the byte ranges that differ between two snapshots of a volume.
    Diff(DiffArgs),
    /// Copy a snapshot or a volume's whole history to another repository, keeping ids.
    Copy(ops::CopyArgs),
    /// Delete the snapshots a retention policy does not keep.
    Forget(ops::ForgetArgs),
}

/// How to reach the repository's store; global flags, valid with every repository
/// subcommand. Credentials come from the environment only (`AWS_*`, `ST_*`, `OS_*`), never
/// from flags, so they stay out of process listings.
#[derive(Debug, Args)]
pub(super) struct StoreArgs {
    /// Upload bandwidth limit in bytes per second (suffixes K, M, G = KiB, MiB, GiB).
    #[arg(long, global = true, value_name = "BYTES_PER_SEC", value_parser = parse_size)]
    pub limit_upload: Option<u64>,
    /// Download bandwidth limit in bytes per second (suffixes K, M, G = KiB, MiB, GiB).
    #[arg(long, global = true, value_name = "BYTES_PER_SEC", value_parser = parse_size)]
    pub limit_download: Option<u64>,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION).
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Address S3 buckets path-style (http://endpoint/bucket), as most non-AWS servers need.
    #[arg(long, global = true)]
    pub s3_path_style: bool,
    /// Requests in flight at once against the store.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
    /// Swift only: seconds a create-if-absent (lease, snapshot root, tombstone, gc marker)
    /// settles before it is read back to decide the one winner, since Swift's
    /// If-None-Match is not atomic. 0 trusts If-None-Match alone: then only one Island
    /// process may write to the repository at a time.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "ISLAND_SWIFT_CREATE_SETTLE"
    )]
    pub swift_create_settle: Option<f64>,
}

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Repository: directory path, file://, s3:// or swift:// URL.
    #[arg(value_name = "REPO")]
    repo: String,
    /// Chunk size of the repository (power of two, 4 KiB to 4 MiB; suffixes K, M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "65536")]
    chunk_size: u64,
}

/// `--repo REPO`, also taken from `ISLAND_REPO`.
#[derive(Debug, Args)]
pub(super) struct RepoArg {
    /// Repository: directory path, file://, s3:// or swift:// URL.
    #[arg(long, value_name = "REPO", env = "ISLAND_REPO")]
    repo: String,
}

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Volume the snapshot belongs to.
    #[arg(long, value_name = "NAME")]
    volume: String,
    /// Raw file, block device or qcow2 image to back up.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// Back up this existing internal snapshot of a qcow2 image (read-only, shared open).
    #[arg(long, value_name = "NAME")]
    image_snapshot: Option<String>,
    /// Seconds between checkpoints a re-run after a crash resumes from (0: after every
    /// 16 MiB data pack; default 300).
    #[arg(long, value_name = "SECS")]
    checkpoint_interval: Option<u64>,
    /// Print one JSON object with the result on stdout (status lines go to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Only this volume's snapshots.
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    /// Print a JSON list.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum RestoreFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[arg(long, value_name = "NAME")]
    volume: String,
    /// Snapshot to restore.
    #[arg(long, value_name = "ID")]
    snapshot: String,
    /// Output file or block device.
    #[arg(value_name = "OUT")]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "raw")]
    format: RestoreFormat,
    /// Cluster size of a qcow2 output image (4 KiB to 2 MiB, a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    cluster_size: u32,
    /// OUT already holds snapshot `--base`: write only the blocks that differ.
    #[arg(long, requires = "base")]
    into: bool,
    /// Snapshot OUT currently holds (with `--into`).
    #[arg(long, value_name = "ID", requires = "into")]
    base: Option<String>,
    /// Directory for the resume marker of a raw restore (default: next to OUT). Needed to
    /// resume a restore to a block device, and for `--into` a block device.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct DeleteArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[arg(long, value_name = "NAME")]
    volume: String,
    #[arg(long, value_name = "ID")]
    snapshot: String,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct GcArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Report what a gc would free, repack and keep now, without writing or deleting
    /// anything (only gc's own lease is taken, for the store's time, and removed).
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Also read every chunk back and verify its hash.
    #[arg(long)]
    read_data: bool,
    /// With --read-data: verify a random PCT % of the chunks only.
    #[arg(long, value_name = "PCT", requires = "read_data", value_parser = parse_percent)]
    sample: Option<f64>,
    /// Rebuild refcounts from the snapshots and reclaim leaked objects.
    #[arg(long)]
    repair: bool,
    /// This repository is a copy whose store times were reset (`cp -r`, `aws s3 sync`,
    /// replication): record every commit marker without a verdict as valid, so gc,
    /// repair and delete can run again (format-spec §6 "Verdicts").
    #[arg(long, conflicts_with_all = ["repair", "read_data"])]
    adopt_copy: bool,
    /// Print one JSON object with the report on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[arg(long, value_name = "NAME")]
    volume: String,
    /// Older snapshot.
    #[arg(long, value_name = "ID")]
    from: String,
    /// Newer snapshot.
    #[arg(long, value_name = "ID")]
    to: String,
    /// Print a JSON list of ranges.
    #[arg(long)]
    json: bool,
}

/// Parses a byte count: a plain integer or one with a binary suffix (K, M, G, T, with an
/// optional `iB`/`B`), so `--chunk-size 64K` and `--limit-upload 10M` read naturally.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a byte count (e.g. 65536, 64K, 10M)"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown size suffix {suffix:?} (use K, M, G, T)"
            ))
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let pct: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(format!("{text:?}: the sample must be in (0, 100]"));
    }
    Ok(pct)
}

/// Runs one repository subcommand to completion and returns the process exit code.
pub(super) fn run(cmd: RepoCommand, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dispatch(cmd, store_args))
}

async fn dispatch(cmd: RepoCommand, store_args: &StoreArgs) -> anyhow::Result<u8> {
    match cmd {
        RepoCommand::Init(a) => init(a, store_args).await,
        RepoCommand::Backup(a) => backup(a, store_args).await,
        RepoCommand::Snapshots(a) => snapshots(a, store_args).await,
        RepoCommand::Restore(a) => restore(a, store_args).await,
        RepoCommand::Delete(a) => delete(a, store_args).await,
        RepoCommand::Gc(a) => gc(a, store_args).await,
        RepoCommand::Check(a) => check(a, store_args).await,
        RepoCommand::Diff(a) => diff(a, store_args).await,
        RepoCommand::Copy(a) => ops::copy_cmd(a, store_args).await,
        RepoCommand::Forget(a) => ops::forget_cmd(a, store_args).await,
    }
}

/// Opens the object store named by `url` with the global store flags applied.
async fn open_store(url: &str, args: &StoreArgs) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let defaults = StoreOptions::default();
    let opts = StoreOptions {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        path_style: args.s3_path_style.then_some(true),
        concurrency: args.concurrency.map_or(defaults.concurrency, usize::from),
        limit_upload: args.limit_upload,
        limit_download: args.limit_download,
        swift_create_settle: args
            .swift_create_settle
            .map(|s| {
                std::time::Duration::try_from_secs_f64(s)
                    .map_err(|e| anyhow!("--swift-create-settle {s}: {e}"))
            })
            .transpose()?,
        ..defaults
    };
    open_store_url(url, &opts)
        .await
        .with_context(|| format!("opening repository store {url}"))
}

pub(super) async fn open_repo(url: &str, args: &StoreArgs) -> anyhow::Result<Repository> {
    let store = open_store(url, args).await?;
    Repository::open(store)
        .await
        .with_context(|| format!("opening repository {url}"))
}

async fn init(a: InitArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let chunk_size = u32::try_from(a.chunk_size)
        .map_err(|_| anyhow!("--chunk-size {} is larger than 4 MiB", a.chunk_size))?;
    if let Some(dir) = local_dir(&a.repo)? {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating repository directory {}", dir.display()))?;
    }
    let store = open_store(&a.repo, store_args).await?;
    let repo = Repository::init(store, &InitOptions { chunk_size })
        .await
        .with_context(|| format!("initializing repository {}", a.repo))?;
    println!(
        "initialized repository {} (chunk size {})",
        a.repo,
        human_bytes(u64::from(repo.chunk_size()))
    );
    Ok(0)
}

/// The directory of a local repository location (plain path or `file://` URL), which
/// `init` creates; `None` for remote stores.
fn local_dir(location: &str) -> anyhow::Result<Option<PathBuf>> {
    if location.starts_with("file:") {
        let url = url::Url::parse(location).with_context(|| format!("bad file URL {location}"))?;
        let path = url
            .to_file_path()
            .map_err(|()| anyhow!("{location}: not an absolute local path"))?;
        Ok(Some(path))
    } else if location.contains("://") || location.is_empty() {
        Ok(None)
    } else {
        Ok(Some(PathBuf::from(location)))
    }
}

/// qcow2's header magic; a backup of a qcow2 file as raw bytes would be silently useless.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

fn is_qcow2(path: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Read;
    // Before the open: opening a FIFO for reading blocks until a writer appears.
    island::backup::check_source_kind(path)
        .with_context(|| format!("backup source {}", path.display()))?;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn backup(a: BackupArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let qcow2 = is_qcow2(&a.image)?;
    if a.image_snapshot.is_some() && !qcow2 {
        bail!(
            "{}: --image-snapshot needs a qcow2 image (this is not one)",
            a.image.display()
        );
    }
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let progress = Arc::new(ProgressAdapter(CliProgress::new(ProgressMode::choose(
        a.json,
    ))));
    let opts = BackupOptions {
        volume: a.volume.clone(),
        parent: None,
        user_data: serde_json::Value::Null,
        progress: Some(progress.clone()),
        id: None,
        checkpoint_interval: a.checkpoint_interval.map(std::time::Duration::from_secs),
    };
    let result = match (&a.image_snapshot, qcow2) {
        (Some(snap), _) => backup_image_snapshot(&repo, &a.image, snap, &opts).await,
        (None, true) => backup_image(&repo, &a.image, &opts).await,
        (None, false) => {
            let source = RawSource::open(&a.image)
                .with_context(|| format!("opening backup source {}", a.image.display()))?;
            island::backup::backup(&repo, Arc::new(source), &opts).await
        }
    };
    progress.0.finish();
    let report = result
        .with_context(|| format!("backing up {} as volume {}", a.image.display(), a.volume))?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "snapshot {} of volume {}{}",
            report.id,
            report.volume,
            match &report.parent {
                Some(p) => format!(" (incremental from {p})"),
                None => " (full)".to_string(),
            }
        );
        println!(
            "  read {}, uploaded {} in {} requests; chunks: {} new, {} reused, {} zero",
            human_bytes(report.bytes_read),
            human_bytes(report.bytes_uploaded),
            report.requests,
            report.chunks_new,
            report.chunks_reused,
            report.chunks_zero
        );
    }
    Ok(0)
}

async fn snapshots(a: SnapshotsArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let list = repo
        .snapshots(a.volume.as_deref())
        .await
        .context("listing snapshots")?;
    if a.json {
        print_json(&list)?;
        return Ok(0);
    }
    println!(
        "{:<40} {:<16} {:<30} {:>10} {:>10} {:>10}  PARENT",
        "ID", "VOLUME", "CREATED", "SIZE", "NEW", "EXCLUSIVE"
    );
    for s in &list {
        println!(
            "{:<40} {:<16} {:<30} {:>10} {:>10} {:>10}  {}",
            s.id,
            s.volume,
            s.created,
            human_bytes(s.size),
            human_bytes(s.new_bytes),
            human_bytes(s.exclusive_bytes),
            s.parent.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
}

async fn restore(a: RestoreArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let target = match (a.format, a.into, a.base) {
        (RestoreFormat::Qcow2, true, _) => {
            bail!("restore --into writes raw files; it cannot be combined with --format qcow2")
        }
        (RestoreFormat::Qcow2, _, _) => RestoreTarget::Qcow2 {
            path: a.out.clone(),
            cluster_size: a.cluster_size,
        },
        (RestoreFormat::Raw, true, Some(base)) => RestoreTarget::Into {
            path: a.out.clone(),
            base,
        },
        _ => RestoreTarget::Raw(a.out.clone()),
    };
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let progress = Arc::new(ProgressAdapter(CliProgress::new(ProgressMode::choose(
        a.json,
    ))));
    let opts = island::restore::RestoreOptions {
        progress: Some(progress.clone()),
        state_dir: a.state_dir.clone(),
    };
    let result = island::restore::restore_with(&repo, &a.volume, &a.snapshot, &target, &opts).await;
    progress.0.finish();
    let report = result.with_context(|| {
        format!(
            "restoring {}/{} to {}",
            a.volume,
            a.snapshot,
            a.out.display()
        )
    })?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "restored {}/{} to {}: wrote {}, downloaded {} in {} requests, {} chunks verified",
            a.volume,
            a.snapshot,
            a.out.display(),
            human_bytes(report.bytes_written),
            human_bytes(report.bytes_downloaded),
            report.requests,
            report.chunks_verified
        );
        if report.resumed {
            println!(
                "  resumed a killed restore: {} already in place (checked by hash)",
                human_bytes(report.bytes_kept)
            );
        }
    }
    Ok(0)
}

async fn delete(a: DeleteArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let progress = ProgressAdapter(CliProgress::new(ProgressMode::choose(a.json)));
    let opts = island::repo::DeleteOptions {
        progress: Some(&progress),
        ..Default::default()
    };
    let report = repo
        .delete_snapshot_with(&a.volume, &a.snapshot, opts)
        .await;
    progress.0.finish();
    let report =
        report.with_context(|| format!("deleting snapshot {}/{}", a.volume, a.snapshot))?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "deleted snapshot {}/{}: {} of blobs freed (reclaimed by the next gc)",
            a.volume,
            a.snapshot,
            human_bytes(report.freed_bytes)
        );
    }
    Ok(0)
}

async fn gc(a: GcArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let progress = ProgressAdapter(CliProgress::new(ProgressMode::choose(a.json)));
    let opts = GcOptions { dry_run: a.dry_run };
    let report = repo.gc_with(&opts, Some(&progress)).await;
    progress.0.finish();
    let report = report.context("garbage collection")?;
    if a.json {
        print_json(&report)?;
    } else {
        print_fields(if a.dry_run { "gc (dry run)" } else { "gc" }, &report)?;
    }
    // Damaged packs were skipped (kept whole): a problem `check` attributes to snapshots;
    // a lost root's segments and packs were kept: a problem `check --repair` reports.
    Ok(
        if report.damaged_packs.is_empty() && report.roots_missing.is_empty() {
            0
        } else {
            EXIT_PROBLEMS
        },
    )
}

async fn check(a: CheckArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    if a.repair {
        return ops::repair_cmd(a, store_args).await;
    }
    let repo = open_repo(&a.repo.repo, store_args).await?;
    if a.adopt_copy {
        let n = repo
            .adopt_copy()
            .await
            .context("adopting a copied repository")?;
        if a.json {
            print_json(&serde_json::json!({ "verdicts_recorded": n }))?;
        } else {
            println!("recorded {n} commit marker(s) as valid");
        }
        return Ok(0);
    }
    // A copy with reset times would make check report "no problems" over an empty set.
    repo.refuse_if_copied_now()
        .await
        .context("checking the repository")?;
    let opts = CheckOptions {
        read_data: a.read_data,
        sample_pct: a.sample,
    };
    let progress = ProgressAdapter(CliProgress::new(ProgressMode::choose(a.json)));
    let report = repo.check_with_progress(&opts, Some(&progress)).await;
    progress.0.finish();
    let report = report.context("checking the repository")?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} snapshots, {} tables, {} chunks referenced, {} chunks read",
            report.snapshots_checked,
            report.tables_checked,
            report.chunks_referenced,
            report.chunks_read
        );
        for issue in &report.issues {
            let damaged = if issue.snapshots.is_empty() {
                "no snapshot damaged".to_string()
            } else {
                format!("damages {}", issue.snapshots.join(", "))
            };
            println!("problem: {}: {} ({damaged})", issue.object, issue.problem);
        }
        if report.is_clean() {
            println!("no problems found");
        } else {
            println!("{} problems found", report.issues.len());
        }
    }
    Ok(if report.is_clean() { 0 } else { EXIT_PROBLEMS })
}

async fn diff(a: DiffArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let ranges = repo
        .diff(&a.volume, &a.from, &a.to)
        .await
        .with_context(|| format!("diffing {}/{} against {}", a.volume, a.from, a.to))?;
    if a.json {
        print_json(&ranges)?;
    } else {
        for r in &ranges {
            println!(
                "{:>16} {:>12} {}",
                r.offset,
                r.length,
                if r.zero { "zero" } else { "data" }
            );
        }
    }
    Ok(0)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    println!("{text}");
    Ok(())
}

/// Prints a report's top-level fields as `name: value` lines, for reports whose fields are
/// all counters.
fn print_fields<T: serde::Serialize>(title: &str, value: &T) -> anyhow::Result<()> {
    let v = serde_json::to_value(value).context("encoding report")?;
    println!("{title}:");
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            println!("  {k}: {v}");
        }
    }
    Ok(())
}

/// Formats a byte count with a binary unit for people (JSON output keeps exact integers).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Feeds the library's progress callbacks into the CLI's bars / JSON status lines.
struct ProgressAdapter(CliProgress);

impl Progress for ProgressAdapter {
    fn stage(&self, name: &str, total: u64) {
        self.0.start_stage(name, total);
    }
    fn advance(&self, n: u64) {
        self.0.advance_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("20000000000T").is_err());
    }

    #[test]
    fn percentages_are_bounded() {
        assert_eq!(parse_percent("10"), Ok(10.0));
        assert_eq!(parse_percent("2.5%"), Ok(2.5));
        assert!(parse_percent("0").is_err());
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("nan").is_err());
    }

    #[test]
    fn human_bytes_picks_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }
}
