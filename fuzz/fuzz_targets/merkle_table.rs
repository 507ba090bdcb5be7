//! Merkle table plain bytes ("ISTT", format-spec §3.4; no checksum of their own: the frame
//! around them carries it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    island_fuzz::run("merkle_table", island::repo::fuzzing::merkle_table, data);
});
