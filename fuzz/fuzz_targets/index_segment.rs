//! Index segments ("ISIX", format-spec §3.3): first byte bit 0 clear = bucket and head crcs
//! recomputed, the rest is the segment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut seg = rest.to_vec();
    if mode & 1 == 0 {
        island_fuzz::fix_segment(&mut seg);
    }
    island_fuzz::run("index_segment", island::repo::fuzzing::index_segment, &seg);
});
