//! Checkpoints of a running backup and the resume of a killed one (format-spec §12): the
//! glue between the pipeline in `mod.rs` and the protocol in `repo::checkpoint`.

use super::{BlockSource, SnapshotManifest};
use crate::repo::protocol::checkpoint::{self, Checkpoint, Counters, JobIdentity};
use crate::repo::tree::{TreeState, TreeWriter};
use crate::repo::writer::Writer;
use crate::repo::Repository;
use crate::Result;
use std::time::{Duration, Instant};

/// What the job is, for matching a checkpoint.
pub(super) fn job_identity(
    source: &dyn BlockSource,
    parent: Option<&SnapshotManifest>,
    size: u64,
    cs: u64,
) -> JobIdentity {
    JobIdentity {
        size,
        chunk_size: cs as u32,
        parent: parent.map(|p| p.id.clone()),
        source: source.resume_token(),
    }
}

/// Where a resumed job continues.
pub(super) struct Position {
    pub next_chunk: u64,
    pub tree: TreeState,
    pub counters: Counters,
}

/// A checkpoint this run adopted.
pub(super) struct Resumed {
    pub from: String,
    pub blobs: u64,
    /// Packs the killed run sealed after its checkpoint, taken over from their footers.
    pub tail_packs: u64,
    /// Set when the job is the same: continue the old tree from the old position.
    pub position: Option<Position>,
}

/// Adopt the newest checkpoint of a killed run of `volume`, preferring one of the same job.
pub(super) async fn resume(
    repo: &Repository,
    w: &mut Writer,
    volume: &str,
    job: &JobIdentity,
) -> Result<Option<Resumed>> {
    let mut found = checkpoint::find(repo, volume, w.holder()).await?;
    // Same job first (stable: newest first within each group).
    found.sort_by_key(|c| !c.job.resumable_by(job));
    let now = w.lease.store_time()?;
    for ck in found {
        let Some(claim) = checkpoint::claim(repo, &ck, w.holder(), now).await? else {
            continue;
        };
        let whole = ck.job.resumable_by(job);
        let tail_packs = claim.tail_packs();
        let blobs = checkpoint::take_over(repo, w, &ck, claim, whole).await?;
        tracing::info!(
            "resuming {} (blobs taken over: {blobs}, packs after its checkpoint: \
             {tail_packs}, position kept: {whole})",
            ck.holder
        );
        return Ok(Some(Resumed {
            from: ck.holder.clone(),
            blobs,
            tail_packs,
            position: whole.then_some(Position {
                next_chunk: ck.next_chunk,
                tree: ck.tree,
                counters: ck.counters,
            }),
        }));
    }
    Ok(None)
}

/// The runs still to do from chunk `start` on.
pub(super) fn runs_from(runs: Vec<(u64, u64, bool)>, start: u64) -> Vec<(u64, u64, bool)> {
    runs.into_iter()
        .filter(|r| r.1 > start)
        .map(|(a, b, zero)| (a.max(start), b, zero))
        .collect()
}

/// Bytes the pipeline will visit (and advance the progress by) for `runs`.
pub(super) fn bytes_to_read(runs: &[(u64, u64, bool)], cs: u64, size: u64, skip_zero: bool) -> u64 {
    runs.iter()
        .filter(|r| !r.2 || !skip_zero)
        .map(|r| ((r.1 * cs).min(size)).saturating_sub(r.0 * cs))
        .sum()
}

/// Decides when to checkpoint and writes checkpoints.
pub(super) struct Checkpointer {
    interval: Duration,
    last: Instant,
    packs_at_last: u64,
    seq: u64,
    job: JobIdentity,
    volume: String,
}

impl Checkpointer {
    pub fn new(interval: Duration, job: JobIdentity, volume: String, seq: u64) -> Checkpointer {
        Checkpointer {
            interval,
            last: Instant::now(),
            packs_at_last: 0,
            seq,
            job,
            volume,
        }
    }

    /// A new data pack was sealed since the last checkpoint and the interval has passed,
    /// or this is the run's first data pack: one checkpoint is enough to make a killed run
    /// adoptable, and the packs sealed after it are adopted from their footers
    /// (format-spec §12.2), so a long interval no longer means re-uploading all of it.
    pub fn due(&self, w: &Writer) -> bool {
        w.data_packs_sealed > self.packs_at_last
            && (self.packs_at_last == 0 || self.last.elapsed() >= self.interval)
    }

    /// Flush `w` (packs and uncommitted segments durable), then record the position: every
    /// chunk below `next_chunk` is done.
    pub async fn write(
        &mut self,
        repo: &Repository,
        w: &mut Writer,
        tree: &TreeWriter,
        next_chunk: u64,
        counters: &Counters,
    ) -> Result<()> {
        w.flush().await?;
        let ck = Checkpoint {
            holder: w.holder().to_string(),
            volume: self.volume.clone(),
            seq: self.seq,
            job: self.job.clone(),
            next_chunk,
            tree: tree.state(),
            segments: w.segment_keys(),
            packs: w.packs.clone(),
            adopted: w.adopted.clone(),
            counters: counters.clone(),
        };
        let key = ck.write(repo).await?;
        w.checkpoint_keys.push(key);
        w.lease.watch_adoption();
        self.seq += 1;
        self.last = Instant::now();
        self.packs_at_last = w.data_packs_sealed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_cuts_at_the_position() {
        let runs = vec![(0, 4, false), (4, 8, true), (8, 10, false)];
        assert_eq!(runs_from(runs.clone(), 0), runs);
        assert_eq!(
            runs_from(runs.clone(), 5),
            vec![(5, 8, true), (8, 10, false)]
        );
        assert_eq!(runs_from(runs.clone(), 10), vec![]);
        // The last chunk may be short: bytes stop at the size.
        assert_eq!(bytes_to_read(&runs, 10, 95, false), 95);
        assert_eq!(bytes_to_read(&runs, 10, 95, true), 55);
    }
}
