//! Regressions of `check --repair` running alongside writers with damaged objects (the
//! runner's repairer, issue 13).

use super::fixtures::{
    assert_clean_and_nothing_to_repair, back_up, backup_paused_before_root, random, restored,
    setup,
};
use crate::repo::lease::SKEW;
use crate::repo::pack_key_of;

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
