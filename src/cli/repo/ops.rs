//! `copy`, `forget` and `check --repair`: the many-hosts operations (issue 4). Kept apart
//! from the basic repository subcommands; flags and JSON fields are documented in README.md.

use super::{human_bytes, open_repo, print_json, CheckArgs, ProgressAdapter, RepoArg, StoreArgs};
use crate::cli::progress::{CliProgress, ProgressMode};
use crate::cli::EXIT_PROBLEMS;
use anyhow::{bail, Context};
use clap::Args;
use island::repo::{copy, CopyOptions, ForgetOptions, ForgetPolicy};
use std::sync::Arc;

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// Source repository: directory path, file://, s3:// or swift:// URL.
    #[arg(long, value_name = "REPO")]
    from: String,
    /// Target repository (must already be initialized; its chunk size may differ).
    #[arg(long, value_name = "REPO")]
    to: String,
    /// Volume to copy.
    #[arg(long, value_name = "NAME")]
    volume: String,
    /// Copy only this snapshot (default: the volume's whole history, oldest first).
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
    /// Seconds between checkpoints within a snapshot, which a re-run after a crash takes
    /// over (0: after every 16 MiB data pack; default 300).
    #[arg(long, value_name = "SECS")]
    checkpoint_interval: Option<u64>,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Apply the policy to this volume only (default: each volume separately).
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days (UTC) that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent ISO weeks that have one.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent months that have one.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Show what would be kept and removed; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) async fn copy_cmd(a: CopyArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    let from = open_repo(&a.from, store_args).await?;
    let to = open_repo(&a.to, store_args).await?;
    let progress = Arc::new(ProgressAdapter(CliProgress::new(ProgressMode::choose(
        a.json,
    ))));
    let opts = CopyOptions {
        volume: a.volume.clone(),
        snapshot: a.snapshot.clone(),
        progress: Some(progress.clone()),
        checkpoint_interval: a.checkpoint_interval.map(std::time::Duration::from_secs),
    };
    let result = copy(&from, &to, &opts).await;
    progress.0.finish();
    let report = result
        .with_context(|| format!("copying volume {} from {} to {}", a.volume, a.from, a.to))?;
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    if report.rechunked {
        println!(
            "re-chunked from {} to {} chunks",
            human_bytes(u64::from(report.source_chunk_size)),
            human_bytes(u64::from(report.target_chunk_size))
        );
    }
    for id in &report.copied {
        println!("copied {}/{id}", report.volume);
    }
    for id in &report.skipped {
        println!("skipped {}/{id} (already in the target)", report.volume);
    }
    println!(
        "  read {}, uploaded {} in {} requests; chunks: {} new, {} reused; {} subtrees skipped",
        human_bytes(report.bytes_read),
        human_bytes(report.bytes_uploaded),
        report.requests,
        report.chunks_new,
        report.chunks_reused,
        report.subtrees_skipped
    );
    Ok(0)
}

pub(super) async fn forget_cmd(a: ForgetArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    if a.keep_last.is_none()
        && a.keep_daily.is_none()
        && a.keep_weekly.is_none()
        && a.keep_monthly.is_none()
    {
        bail!(
            "forget needs at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly"
        );
    }
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let opts = ForgetOptions {
        volume: a.volume.clone(),
        policy: ForgetPolicy {
            keep_last: a.keep_last.unwrap_or(0),
            keep_daily: a.keep_daily.unwrap_or(0),
            keep_weekly: a.keep_weekly.unwrap_or(0),
            keep_monthly: a.keep_monthly.unwrap_or(0),
        },
        dry_run: a.dry_run,
    };
    let progress = ProgressAdapter(CliProgress::new(ProgressMode::choose(a.json)));
    let report = repo.forget_with_progress(&opts, Some(&progress)).await;
    progress.0.finish();
    let report = report.context("applying the retention policy")?;
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    for k in &report.kept {
        println!(
            "keep   {}/{} {} ({})",
            k.volume,
            k.id,
            k.created,
            k.reasons.join(", ")
        );
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "remove"
    };
    for r in &report.removed {
        println!(
            "{verb} {}/{} {} (frees {})",
            r.volume,
            r.id,
            r.created,
            human_bytes(r.freed_bytes)
        );
    }
    println!(
        "{} kept, {} {}; {} freed{}",
        report.kept.len(),
        report.removed.len(),
        if report.dry_run {
            "would be removed"
        } else {
            "removed"
        },
        human_bytes(report.bytes_freed),
        if report.dry_run {
            " (dry run: nothing deleted)"
        } else {
            " (reclaimed by the next gc)"
        }
    );
    Ok(0)
}

pub(super) async fn repair_cmd(a: CheckArgs, store_args: &StoreArgs) -> anyhow::Result<u8> {
    if a.read_data {
        bail!("check --repair rebuilds counts and reclaims leaks; run --read-data separately");
    }
    let repo = open_repo(&a.repo.repo, store_args).await?;
    let report = repo.repair().await.context("repairing the repository")?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} snapshots: {} refcount problems found",
            report.check.snapshots_checked, report.check.refcount_mismatches
        );
        println!(
            "fixed {} refcounts, revived {} tables, released {} unreferenced blobs to gc",
            report.refcounts_fixed, report.tables_revived, report.blobs_released
        );
        println!(
            "quarantined {} stray packs, {} stray segments, {} stray intents ({}); {} objects of leased writers left alone",
            report.stray_packs_deleted,
            report.stray_segments_deleted,
            report.stray_intents_deleted,
            human_bytes(report.stray_bytes_deleted),
            report.objects_of_leased_writers
        );
        if report.index_records_rebuilt > 0 {
            println!(
                "rebuilt {} index records from {} packs no index named",
                report.index_records_rebuilt, report.packs_reindexed
            );
        }
        for u in &report.unknown {
            println!("unknown, nothing lowered or released: {u}");
        }
        for k in &report.quarantined {
            println!("quarantined: {k} -> quarantine/{k}");
        }
        for issue in &report.damaged {
            println!(
                "damaged: {}: {} (damages {})",
                issue.object,
                issue.problem,
                issue.snapshots.join(", ")
            );
        }
    }
    Ok(if report.damaged.is_empty() && report.complete {
        0
    } else {
        EXIT_PROBLEMS
    })
}
