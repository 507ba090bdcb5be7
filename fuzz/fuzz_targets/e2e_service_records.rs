//! The service's shared records that every server sharing a repository reads: operation
//! records (`service/operations/<id>`, envelope "ISOP") and the last check
//! (`service/check/last`, "ISCK"). A fuzzed record must make polling, listing, pruning
//! and fix validation fail cleanly, never panic.
#![no_main]
use island::service::{last_check, OpTiming, Operations};
use island_fuzz::e2e::{envelope_object, memory_store, replace, runtime};
use libfuzzer_sys::fuzz_target;

const ID: &str = "6f1c0e8e-2b7a-4a53-9d55-6c1f3f0f6d2a";

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let store = memory_store();
        let key = format!("service/operations/{ID}");
        replace(&store, &key, envelope_object(b"ISOP", data)).await;
        replace(
            &store,
            last_check::LAST_CHECK,
            envelope_object(b"ISCK", data),
        )
        .await;
        let dir = std::env::temp_dir().join(format!("island-fuzz-ops-{}", std::process::id()));
        let ops = Operations::open(dir, store.clone(), "fuzz".into(), OpTiming::default())
            .expect("an empty journal opens");
        let _ = ops.get(ID).await;
        let _ = ops.list(|_| true).await;
        let _ = ops.prune().await;
        let _ = last_check::get(&store).await;
    });
});
