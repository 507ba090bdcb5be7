//! The service's shared records as pure decoders of bytes, for the fuzz targets (`fuzz/`)
//! and their regression tests; round trip as in [`crate::repo::fuzzing`].

use super::catalog::{self, MAGIC_VOLUME};
use super::last_check::{LAST_CHECK, MAGIC_CHECK};
use super::ops_shared::{self, MAGIC_OPERATION};
use super::CheckResult;
use crate::repo::format::envelope;
use crate::repo::fuzzing::envelope_round_trip;

/// The JSON string field `field` of an envelope's body, if any (the key a keyed decoder
/// expects is derived from it, so the fuzzer gets past the key check).
fn body_str(bytes: &[u8], field: &str) -> Option<serde_json::Value> {
    let body = bytes.get(12..bytes.len().saturating_sub(4))?;
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get(field)
        .cloned()
}

/// An operation record (`service/operations/<id>`, "ISOP").
pub fn operation(bytes: &[u8]) {
    let id = body_str(bytes, "id")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    envelope_round_trip(MAGIC_OPERATION, bytes, |b| ops_shared::decode(&id, b));
}

/// A volume generation (`service/volumes/<uuid>/<generation>`, "ISVO").
pub fn volume(bytes: &[u8]) {
    let uuid = body_str(bytes, "uuid")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let gen = body_str(bytes, "generation")
        .and_then(|v| v.as_u64())
        .unwrap_or_default();
    let key = catalog::generation_key(&uuid, gen);
    envelope_round_trip(MAGIC_VOLUME, bytes, |b| catalog::decode_generation(&key, b));
}

/// The last check's result (`service/check/last`, "ISCK").
pub fn last_check(bytes: &[u8]) {
    envelope_round_trip(MAGIC_CHECK, bytes, |b| {
        envelope::open::<CheckResult>(MAGIC_CHECK, LAST_CHECK, b)
    });
}
