//! Structure-aware index and refs segments: records and meta, edits, crcs recomputed as chosen.
#![no_main]
use island_fuzz::structured::SegmentInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: SegmentInput| {
    let (decoder, decode) = input.decoder();
    island_fuzz::run(decoder, decode, &input.build());
});
