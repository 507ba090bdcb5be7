//! The repository config (`config`, envelope "ISCF"): parsed by every command on open.
#![no_main]
use island_fuzz::e2e::{envelope_object, memory_store, replace, runtime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let store = memory_store();
        replace(&store, "config", envelope_object(b"ISCF", data)).await;
        let _ = island::repo::Repository::open(store).await;
    });
});
