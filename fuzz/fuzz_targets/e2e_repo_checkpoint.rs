//! Backup checkpoints (`checkpoints/<holder>/<seq>`, envelope "ISCP", format-spec §12):
//! read by a re-run that may adopt a dead run's work, and swept by `check --repair`. The
//! fuzzed checkpoint belongs to a holder with a fresh lease generation, so a re-run of the
//! backup decodes it and tries to adopt it.
#![no_main]
use island_fuzz::e2e::{
    backup_again_and_repair, envelope, envelope_object, replace, repo_with_snapshot, runtime,
};
use libfuzzer_sys::fuzz_target;

const HOLDER: &str = "20260101T000000.000000Z-00000000000000c1";

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (store, _) = repo_with_snapshot().await;
        let lease =
            format!(r#"{{"holder":"{HOLDER}","op":"backup","volume":"vol","generation":0}}"#);
        let lease_key = format!("leases/{HOLDER}/0000000000");
        replace(&store, &lease_key, envelope(b"ISLS", lease.as_bytes())).await;
        let key = format!("checkpoints/{HOLDER}/000000");
        replace(&store, &key, envelope_object(b"ISCP", data)).await;
        backup_again_and_repair(store).await;
    });
});
