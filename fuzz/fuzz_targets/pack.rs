//! Whole packs (format-spec §3.2): first byte = mode of `island_fuzz::fix_pack` (bit 0
//! footer crc, bit 1 trailer crc recomputed), the rest is the pack.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut pack = rest.to_vec();
    island_fuzz::fix_pack(mode, &mut pack);
    island_fuzz::run("pack", island::repo::fuzzing::pack, &pack);
});
