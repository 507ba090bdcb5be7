//! qcow2 L1/L2 entries and refcount blocks at every refcount order: the cluster-size
//! selector byte and the first 8 entries (64 bytes). Entries are decoded one by one and
//! position-independently, so longer inputs only repeat the same paths: a whole 12 KiB
//! seed took ~200,000 instrumented refcount iterations per execution and held the target
//! to a few hundred executions per second.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(65)];
    island_fuzz::run("tables", island::image::fuzzing::tables, data);
});
