//! Packs (`packs/<2hex>/<id>`): frames ‖ footer ‖ trailer "ISPK". The fuzz input replaces
//! the snapshot's data pack whole. Mode byte: bit 0 recomputes the trailer's footer crc
//! over the range the trailer names, bit 1 the trailer's own crc (per the spec's layout:
//! trailer = magic 4 ‖ version 2 ‖ 0 2 ‖ entries 4 ‖ footer offset 4 ‖ footer crc 4 ‖
//! trailer crc 4).
#![no_main]
use island_fuzz::e2e::{exercise, keys, replace, repo_with_snapshot, runtime};
use libfuzzer_sys::fuzz_target;

const TRAILER: usize = 24;

fn fix_pack(mode: u8, mut pack: Vec<u8>) -> Vec<u8> {
    if pack.len() < TRAILER {
        return pack;
    }
    let t = pack.len() - TRAILER;
    if mode & 1 != 0 {
        let footer_at =
            u32::from_le_bytes([pack[t + 12], pack[t + 13], pack[t + 14], pack[t + 15]]) as usize;
        if footer_at <= t {
            let crc = crc32c::crc32c(&pack[footer_at..t]);
            pack[t + 16..t + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if mode & 2 != 0 {
        let crc = crc32c::crc32c(&pack[t..t + 20]);
        pack[t + 20..t + 24].copy_from_slice(&crc.to_le_bytes());
    }
    pack
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let (store, id) = repo_with_snapshot().await;
        let packs = keys(&store, "packs/").await;
        // Packs of one backup: pick by the mode's high bits (data or table pack).
        let Some(key) = packs.get(usize::from(mode >> 4) % packs.len().max(1)) else {
            return;
        };
        replace(&store, key, fix_pack(mode, rest.to_vec())).await;
        exercise(store, &id, true).await;
    });
});
