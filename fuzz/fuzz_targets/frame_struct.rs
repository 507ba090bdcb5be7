//! Structure-aware blob frames: fields, then edits, then crc/id/length recomputed as chosen.
#![no_main]
use island_fuzz::structured::FrameInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: FrameInput| {
    island_fuzz::run("frame", island::repo::fuzzing::frame, &input.build());
});
