//! The qcow2 header and its extensions (format-spec/image.md §2).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    island_fuzz::run("header", island::image::fuzzing::header, data);
});
