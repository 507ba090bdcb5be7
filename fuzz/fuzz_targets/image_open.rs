//! A whole qcow2 image from raw bytes, opened read-only on memory and read: header, refcount
//! table, L1, snapshot table, L2 tables through reads, extents and diffs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    island_fuzz::run("image_open", island::image::fuzzing::open, data);
});
