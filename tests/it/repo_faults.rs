//! Backups through the fault-injecting store: whatever fails (permanent request errors,
//! lost acknowledgements, a crash after N operations), every snapshot that was committed
//! before still restores bit-exact, `check --read-data` finds nothing that damages a
//! snapshot, and re-running the failed backup on a healthy store succeeds.

use island::backup::{backup, BackupOptions, RawSource};
use island::repo::{CheckOptions, InitOptions, Repository};
use island::restore::{restore, RestoreTarget};
use island::store::faults::{FaultConfig, FaultOp, FaultStore};
use island::store::{MemoryStore, ObjectStore};
use rand::{Rng, RngCore, SeedableRng};
use std::path::Path;
use std::sync::Arc;

const CHUNK: usize = 4096;
/// 1 MiB volume of 256 chunks.
const SIZE: usize = 256 * CHUNK;
const ROUNDS: u64 = 15;

async fn backup_file(
    store: Arc<dyn ObjectStore>,
    path: &Path,
) -> island::Result<island::backup::BackupReport> {
    let repo = Repository::open(store).await?;
    let source = RawSource::open(path).expect("open the volume");
    let opts = BackupOptions {
        volume: "vol".to_string(),
        ..BackupOptions::default()
    };
    backup(&repo, Arc::new(source), &opts).await
}

async fn restored(repo: &Repository, id: &str, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    restore(
        repo,
        "vol",
        id,
        &RestoreTarget::Raw(out.to_path_buf()),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("restore of committed snapshot {id}: {e}"));
    std::fs::read(out).expect("read the restored file")
}

fn fault_config(round: u64, rng: &mut rand::rngs::StdRng) -> FaultConfig {
    match round % 3 {
        // Permanent request failures anywhere (retries cannot hide them).
        0 => FaultConfig {
            seed: round,
            error_probability: 0.08,
            temporary: false,
            ..FaultConfig::default()
        },
        // A crash after a random number of operations: later writes are lost.
        1 => FaultConfig {
            seed: round,
            crash_after: Some(rng.random_range(2..40)),
            ..FaultConfig::default()
        },
        // Writes applied but reported failed (lost responses), plus some failed writes.
        _ => FaultConfig {
            seed: round,
            ack_loss_probability: 0.15,
            error_probability: 0.05,
            temporary: false,
            ops: FaultOp::ALL
                .into_iter()
                .filter(|op| op.is_write())
                .collect(),
            ..FaultConfig::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backups_never_damage_committed_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.raw");
    let out = dir.path().join("restore.raw");
    let base: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    Repository::init(
        base.clone(),
        &InitOptions {
            chunk_size: CHUNK as u32,
        },
    )
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut data = vec![0u8; SIZE];
    rng.fill_bytes(&mut data[..SIZE / 2]);
    std::fs::write(&vol, &data).unwrap();
    let first = backup_file(base.clone(), &vol).await.expect("first backup");
    // Every volume state a backup was attempted on, and the committed snapshots.
    let mut versions: Vec<Vec<u8>> = vec![data.clone()];
    let mut committed: Vec<(String, Vec<u8>)> = vec![(first.id, data.clone())];
    let mut failures = 0;

    for round in 0..ROUNDS {
        for _ in 0..8 {
            let c = rng.random_range(0..SIZE / CHUNK) * CHUNK;
            rng.fill_bytes(&mut data[c..c + CHUNK]);
        }
        std::fs::write(&vol, &data).unwrap();
        versions.push(data.clone());

        let faulty = Arc::new(FaultStore::new(base.clone(), fault_config(round, &mut rng)));
        let failed = match backup_file(faulty.clone(), &vol).await {
            Ok(r) => {
                committed.push((r.id, data.clone()));
                false
            }
            Err(_) => {
                failures += 1;
                true
            }
        };

        // The healthy store, as a fresh process sees it after the failure.
        let repo = Repository::open(base.clone())
            .await
            .expect("open after a failed backup");
        let listed: Vec<String> = repo
            .snapshots(Some("vol"))
            .await
            .expect("snapshots")
            .into_iter()
            .map(|s| s.id)
            .collect();
        for (id, expected) in &committed {
            assert!(
                listed.contains(id),
                "round {round}: committed snapshot {id} vanished"
            );
            assert!(
                restored(&repo, id, &out).await == *expected,
                "round {round}: committed snapshot {id} does not restore bit-exact"
            );
        }
        // A backup whose commit landed but whose answer was lost is a real snapshot: it
        // must restore to the state it was taken from.
        let unknown: Vec<&String> = listed
            .iter()
            .filter(|id| !committed.iter().any(|(c, _)| c == *id))
            .collect();
        for id in unknown {
            let got = restored(&repo, id, &out).await;
            let v = versions.iter().find(|v| **v == got).unwrap_or_else(|| {
                panic!("round {round}: snapshot {id} restores to no volume state")
            });
            committed.push((id.clone(), v.clone()));
        }
        let report = repo
            .check(&CheckOptions {
                read_data: true,
                sample_pct: None,
            })
            .await
            .expect("check");
        let damaging: Vec<_> = report
            .issues
            .iter()
            .filter(|i| !i.snapshots.is_empty())
            .collect();
        assert!(
            damaging.is_empty(),
            "round {round}: check found damage: {damaging:?}"
        );

        if failed {
            let r = backup_file(base.clone(), &vol)
                .await
                .unwrap_or_else(|e| panic!("round {round}: re-run on a healthy store: {e}"));
            let repo = Repository::open(base.clone())
                .await
                .expect("open after the re-run");
            assert!(
                restored(&repo, &r.id, &out).await == data,
                "round {round}: re-run restores"
            );
            committed.push((r.id, data.clone()));
        }
    }
    assert!(
        failures >= ROUNDS / 3,
        "only {failures} of {ROUNDS} faulty backups failed"
    );
}
