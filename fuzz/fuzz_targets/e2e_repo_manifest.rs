//! Root manifests (`snapshots/<volume>/<id>`, envelope "ISRT"): listed by `snapshots`,
//! walked by `check`. A fuzzed root sits next to a real snapshot so listing also has to
//! survive one bad object among good ones.
#![no_main]
use island_fuzz::e2e::{envelope_object, exercise, replace, repo_with_snapshot, runtime};
use libfuzzer_sys::fuzz_target;

const FUZZED_ID: &str = "20260101T000000.000000Z-00000000000000f0";

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (store, _) = repo_with_snapshot().await;
        let key = format!("snapshots/vol/{FUZZED_ID}");
        replace(&store, &key, envelope_object(b"ISRT", data)).await;
        exercise(store, FUZZED_ID, false).await;
    });
});
