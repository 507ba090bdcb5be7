//! The gc marker `gc/<seq>` (format-spec/repository.md §5, §7): the commit point of a gc
//! run, and of `check --repair`'s corrections (§11). Its sequence number orders gc runs;
//! segments written under it count once it exists.

use super::envelope::{self, MAGIC_GC};
use crate::repo::RepoError;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Commit marker of a gc run (`gc/<seq>`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GcMarker {
    pub holder: String,
    pub seq: u64,
    pub lease_time_ms: u64,
    /// Written by `check --repair`: this run's refs segments carry FREED flags for blobs it
    /// found unreferenced; gc collects them like a delete's once the marker is older than
    /// its cutoff. Absent (false) in markers of older builds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freed: bool,
    /// Store time of the marker object (filled in when markers are listed).
    #[serde(skip)]
    pub stored: Option<SystemTime>,
}

impl GcMarker {
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<GcMarker, RepoError> {
        envelope::open(MAGIC_GC, key, bytes)
    }
}
