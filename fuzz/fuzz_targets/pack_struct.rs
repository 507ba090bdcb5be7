//! Structure-aware packs: frames, footer and trailer laid out per spec, edits, crcs recomputed as chosen.
#![no_main]
use island_fuzz::structured::PackInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: PackInput| {
    island_fuzz::run("pack", island::repo::fuzzing::pack, &input.build());
});
