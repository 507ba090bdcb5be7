//! Blob frames ("ISBF", format-spec §3.1): first byte = mode of `island_fuzz::fix_frame`
//! (bit 0 stored length, bit 1 BLAKE3 id, bit 2 crc recomputed), the rest is the frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut frame = rest.to_vec();
    island_fuzz::fix_frame(mode, &mut frame);
    island_fuzz::run("frame", island::repo::fuzzing::frame, &frame);
});
