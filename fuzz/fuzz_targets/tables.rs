//! qcow2 L1/L2 entries and refcount blocks at every refcount order.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    island_fuzz::run("tables", island::image::fuzzing::tables, data);
});
