//! Objects a view leaves out (format-spec §11.1, "Damage containment"): names the format
//! does not define, and markers or segment heads that fail their checks. One bad object
//! must not block the repository, and what it makes unknown must not be taken for absent.

use super::format::ids::is_time_id;
use super::repository::{check_names, SegmentSet};
use super::RepoError;

/// An object under a marker or segment prefix the view cannot use. It is left out so the
/// rest of the repository keeps working; `check` reports it, repair decides what is safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unusable {
    pub key: String,
    pub problem: String,
    /// The key is not one the format defines: nothing can commit, name or count it.
    pub stray: bool,
}

impl Unusable {
    pub(crate) fn stray(key: &str) -> Unusable {
        Unusable {
            key: key.to_string(),
            problem: "not an object name the format defines".into(),
            stray: true,
        }
    }

    pub(crate) fn damaged(key: &str, e: impl std::fmt::Display) -> Unusable {
        Unusable {
            key: key.to_string(),
            problem: e.to_string(),
            stray: false,
        }
    }
}

impl SegmentSet {
    /// Every unusable object of the view, markers first.
    pub(crate) fn unusable(&self) -> impl Iterator<Item = &Unusable> {
        self.markers.unusable.iter().chain(self.unusable.iter())
    }

    /// Is `key` a damaged root whose snapshot is deleted (a delete of a damaged root wrote
    /// its tombstone and released nothing, format-spec §9.1 "Deleting a damaged root")?
    /// No live snapshot reaches anything through it and its segments count whatever
    /// their writer (the leak direction), so it leaves gc free to run and a recount
    /// complete: the counts only it held are what a complete recount lowers.
    pub(crate) fn deleted_damaged_root(&self, key: &str) -> bool {
        let Some((volume, id)) = key
            .strip_prefix("snapshots/")
            .and_then(|r| r.split_once('/'))
        else {
            return false;
        };
        self.markers.damaged_commits.contains(key) && self.markers.is_deleted(volume, id)
    }

    /// Refuse to go on when any object of the view is damaged (gc: its compaction would
    /// bake a guess about a damaged marker into the segments it writes), except a damaged
    /// root whose snapshot is deleted ([`SegmentSet::deleted_damaged_root`]).
    pub(crate) fn ensure_no_damage(&self) -> Result<(), RepoError> {
        let damaged: Vec<&str> = (self.unusable())
            .filter(|u| !u.stray && !self.deleted_damaged_root(&u.key))
            .map(|u| u.key.as_str())
            .collect();
        if damaged.is_empty() {
            return Ok(());
        }
        Err(RepoError::Damaged {
            objects: damaged.join(", "),
        })
    }

    /// Refuse to go on when a segment is damaged: its records (locations, counts) are
    /// unknown, and an operation that frees or deletes would take unknown for zero.
    pub(crate) fn ensure_segments_whole(&self) -> Result<(), RepoError> {
        let damaged: Vec<&str> = (self.unusable.iter())
            .filter(|u| !u.stray)
            .map(|u| u.key.as_str())
            .collect();
        if damaged.is_empty() {
            return Ok(());
        }
        Err(RepoError::Damaged {
            objects: damaged.join(", "),
        })
    }
}

/// Is `key` a segment key `index|refs/<holder>-<seq>` (4 or more digits)?
pub(crate) fn valid_segment_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or("");
    let (Some(holder), Some(seq)) = (name.get(..40), name.get(41..)) else {
        return false;
    };
    is_time_id(holder)
        && name.as_bytes()[40] == b'-'
        && seq.len() >= 4
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// Is `key` a root key `snapshots/<volume>/<id>`?
pub(crate) fn valid_root_key(key: &str) -> bool {
    let Some((volume, id)) = key
        .strip_prefix("snapshots/")
        .and_then(|r| r.split_once('/'))
    else {
        return false;
    };
    check_names(volume, id).is_ok()
}
