//! Property test against a model: random write/backup/delete/gc sequences over several
//! volumes; afterwards (and after every gc) every live snapshot restores bit-exact and
//! `check --read-data` is clean.

use super::tests::MemSource;
use super::*;
use crate::repo::tests::testing::MemStore;
use crate::repo::{CheckOptions, InitOptions};
use crate::restore::{restore, RestoreTarget};
use proptest::prelude::*;

const CS: usize = 4096;
const CHUNKS: usize = 24;
const VOLUMES: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Write chunk `chunk` of volume `vol`: 0 = fresh pattern `seed`, 1 = zeros,
    /// 2 = a pattern shared by all volumes (cross-volume dedup).
    Write {
        vol: usize,
        chunk: usize,
        kind: u8,
        seed: u8,
    },
    Backup {
        vol: usize,
    },
    Delete {
        vol: usize,
        pick: usize,
    },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..VOLUMES, 0..CHUNKS, 0..3u8, any::<u8>()).prop_map(|(vol, chunk, kind, seed)| Op::Write { vol, chunk, kind, seed }),
        3 => (0..VOLUMES).prop_map(|vol| Op::Backup { vol }),
        2 => (0..VOLUMES, any::<usize>()).prop_map(|(vol, pick)| Op::Delete { vol, pick }),
        1 => Just(Op::Gc),
    ]
}

async fn verify(repo: &Repository, live: &[Vec<(String, Vec<u8>)>]) {
    let dir = tempfile::tempdir().unwrap();
    for (v, snaps) in live.iter().enumerate() {
        for (id, data) in snaps {
            let p = dir.path().join("r.raw");
            restore(
                repo,
                &format!("vol{v}"),
                id,
                &RestoreTarget::Raw(p.clone()),
                None,
            )
            .await
            .unwrap();
            assert_eq!(&std::fs::read(&p).unwrap(), data, "vol{v}/{id}");
        }
    }
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
    let listed = repo.snapshots(None).await.unwrap();
    assert_eq!(listed.len(), live.iter().map(Vec::len).sum::<usize>());
}

async fn run(ops: Vec<Op>) {
    let store = Arc::new(MemStore::default());
    let repo = Repository::init(
        store.clone(),
        &InitOptions {
            chunk_size: CS as u32,
        },
    )
    .await
    .unwrap();
    let sources: Vec<Arc<MemSource>> = (0..VOLUMES)
        .map(|_| MemSource::new(vec![0u8; CS * CHUNKS]))
        .collect();
    let mut live: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); VOLUMES];
    for op in ops {
        match op {
            Op::Write {
                vol,
                chunk,
                kind,
                seed,
            } => {
                let buf: Vec<u8> = match kind {
                    0 => (0..CS)
                        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
                        .collect(),
                    1 => vec![0u8; CS],
                    _ => vec![0xA5; CS],
                };
                sources[vol].write(chunk * CS, &buf);
            }
            Op::Backup { vol } => {
                let r = backup(
                    &repo,
                    sources[vol].clone(),
                    &BackupOptions {
                        volume: format!("vol{vol}"),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                sources[vol].mark();
                live[vol].push((r.id, sources[vol].data.lock().unwrap().clone()));
            }
            Op::Delete { vol, pick } => {
                if !live[vol].is_empty() {
                    let n = live[vol].len();
                    let (id, _) = live[vol].remove(pick % n);
                    repo.delete_snapshot(&format!("vol{vol}"), &id)
                        .await
                        .unwrap();
                }
            }
            Op::Gc => {
                store.advance(crate::repo::lease_skew() * 2);
                repo.gc().await.unwrap();
                verify(&repo, &live).await;
            }
        }
    }
    verify(&repo, &live).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn backup_delete_gc_sequences_match_model(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(run(ops));
    }
}
