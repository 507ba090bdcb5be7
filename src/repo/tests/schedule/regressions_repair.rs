//! Regressions of `check --repair` running alongside writers with damaged objects (the
//! runner's repairer, issue 13).

use super::fixtures::{
    assert_clean_and_nothing_to_repair, back_up, backup_paused_before_root, cat, random, restored,
    setup,
};
use crate::repo::protocol::lease::{LEASE_TTL, SKEW};
use crate::repo::protocol::stale::ORPHAN_SWEEP_PERIOD;
use crate::repo::{pack_key_of, Repository};

/// Runner seed 2871 (repairer, pack damage): backup S2 keeps its parent S1's table T
/// while S1 is deleted, so T is live with its children released (a revival gc owes).
/// Repair then runs while T's frame is damaged: it marked T REVIVED (children counted on
/// its behalf again) although, T being unreadable, it raised none of the children. Once
/// the damage was put back, gc saw nothing to revive and collected T's children from
/// under S2. Repair now leaves an unreadable table's revival to a later run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_does_not_revive_a_table_it_cannot_read() {
    let (mem, repo) = setup().await;
    let data = random(1, 8);
    let s1 = back_up(&repo, "a", data.clone()).await;
    let (paused, running) = backup_paused_before_root(&mem, "a", data.clone()).await;
    repo.delete_snapshot("a", &s1).await.unwrap();
    paused.resume.notify_one();
    let s2 = running.await.unwrap().unwrap();
    assert_eq!(s2.chunks_new, 0, "S2 kept S1's table");

    let top = repo.snapshot("a", &s2.id).await.unwrap().top_ids().unwrap();
    let set = repo.load_segments().await.unwrap();
    let loc = repo.locate(&set, &top[0]).await.unwrap().unwrap();
    let key = pack_key_of(&loc.pack);
    let good = mem.objects.lock().unwrap()[&key].clone();
    let mut bad = good.0.to_vec();
    bad[loc.offset as usize + 60] ^= 0x40;
    mem.objects
        .lock()
        .unwrap()
        .insert(key.clone(), (bad.into(), good.1));
    let r = repo.repair().await.unwrap();
    assert!(!r.complete, "T is unreadable: {r:#?}");
    mem.objects.lock().unwrap().insert(key, good);

    // S1's delete becomes processable: gc revives T now that it reads it.
    mem.advance(SKEW * 2);
    let g = repo.gc().await.unwrap();
    assert!(restored(&repo, "a", &s2.id).await.unwrap() == data, "{g:?}");
    assert_eq!(g.tables_revived, 1, "{g:?}");
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// A backup whose view predates the damage reuses chunk X of S1; S1 is deleted; then
/// S1's index segment (the only one locating X) is damaged and repair rebuilds the
/// index from S1's pack before quarantining the segment. No live root reached X in
/// repair's view, so repair left X unindexed, and the backup committed a snapshot whose
/// chunk no index located; the orphan sweep then deleted S1's pack (named by nothing).
/// A frame of a blob the counts know is now indexed again, whatever root reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_keeps_the_location_of_a_blob_a_running_backup_reused() {
    let (mem, repo) = setup().await;
    let x = random(1, 1);
    let s1 = back_up(&repo, "a", cat(&[&x, &random(2, 1)])).await;
    let want = cat(&[&x, &random(3, 1)]);
    let (paused, running) = backup_paused_before_root(&mem, "c", want.clone()).await;
    repo.delete_snapshot("a", &s1).await.unwrap();
    let segment = format!("index/{s1}-0000");
    let good = mem.objects.lock().unwrap()[&segment].clone();
    let mut bad = good.0.to_vec();
    bad[0] ^= 0x01;
    mem.objects
        .lock()
        .unwrap()
        .insert(segment.clone(), (bad.into(), good.1));
    let r = Repository::open(mem.clone())
        .await
        .unwrap()
        .repair()
        .await
        .unwrap();
    assert_eq!(r.quarantined, vec![segment], "{r:#?}");
    paused.resume.notify_one();
    let b = running.await.unwrap().unwrap();
    assert!(b.chunks_reused >= 1, "the backup reused X: {b:?}");
    let repo = Repository::open(mem.clone()).await.unwrap();
    assert!(restored(&repo, "c", &b.id).await.unwrap() == want);
    // The orphan sweep (once every lease and the sweep period expired) keeps S1's pack:
    // the rebuilt index names it.
    mem.advance(LEASE_TTL + SKEW + ORPHAN_SWEEP_PERIOD);
    let g = repo.gc().await.unwrap();
    assert!(restored(&repo, "c", &b.id).await.unwrap() == want, "{g:?}");
    assert_clean_and_nothing_to_repair(&repo).await;
}
