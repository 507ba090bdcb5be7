//! The qcow2 snapshot table: entry count (u16 BE) ‖ table bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    island_fuzz::run(
        "snapshot_table",
        island::image::fuzzing::snapshot_table,
        data,
    );
});
