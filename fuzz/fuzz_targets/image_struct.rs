//! Structure-aware qcow2 images: pointer tables, snapshots and refcounts chosen, then edits.
#![no_main]
use island_fuzz::qcow2::ImageInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ImageInput| {
    island_fuzz::run("image_open", island::image::fuzzing::open, &input.build());
});
