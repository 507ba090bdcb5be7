use crate::store::StoreErrorKind;
use thiserror::Error;

/// Errors from the repository format and protocol, naming the object, volume or snapshot
/// involved so an operator can find what is damaged without a debugger.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum RepoError {
    /// An object failed its magic, version, bounds or checksum check.
    #[error("{key}: corrupt object: {reason}")]
    Corrupt {
        /// Store key of the damaged object.
        key: String,
        /// Which check failed, in words.
        reason: String,
    },
    /// An object uses a format version or feature this build does not understand.
    #[error("{key}: unsupported: {reason}")]
    Unsupported {
        /// Store key of the object.
        key: String,
        /// The version or feature this build does not know.
        reason: String,
    },
    /// A blob's content does not hash to its id.
    #[error("{key}: blob {id} fails its BLAKE3 check")]
    HashMismatch {
        /// Store key of the pack (or object) the frame was read from.
        key: String,
        /// The blob id (hex) the content should hash to.
        id: String,
    },
    /// A blob a snapshot needs is not in the index.
    #[error("blob {id} (needed by {context}) is not in the repository index")]
    MissingBlob {
        /// The blob id (hex) no index segment locates.
        id: String,
        /// What needed it (a snapshot, a table level), for the operator.
        context: String,
    },
    /// `init` found an existing repository.
    #[error("{location}: a repository already exists here")]
    AlreadyInitialized {
        /// The store location (directory or bucket URL) that already holds a config.
        location: String,
    },
    /// `open` found no repository config.
    #[error("{location}: no repository here (config missing)")]
    NotInitialized {
        /// The store location that holds no repository config.
        location: String,
    },
    /// The named snapshot does not exist (or was deleted).
    #[error("snapshot {volume}/{id} not found")]
    SnapshotNotFound {
        /// The volume named.
        volume: String,
        /// The snapshot id named.
        id: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The writer's lease expired before it could commit; nothing was committed.
    #[error("lease {holder} expired before commit; operation aborted without committing")]
    LeaseExpired {
        /// The lease holder (a time id) whose lease ran out.
        holder: String,
    },
    /// The writer's lease is fenced: its chain broke, its next generation was created by
    /// someone else, or a re-run adopted it. It must stop writing; nothing was committed.
    #[error("lease {holder} fenced ({reason}); operation aborted without committing")]
    LeaseFenced {
        /// The lease holder (a time id) that was fenced.
        holder: String,
        /// Which fencing rule fired.
        reason: String,
    },
    /// Every attempt of a delete lost its tombstone generation to a concurrent delete whose
    /// tombstone turned out void (its deleter stalled past its lease); nothing was deleted.
    /// Temporary: a later retry succeeds once those deleters are gone.
    #[error("snapshot {volume}/{id}: delete lost {attempts} attempts to concurrent deletes whose tombstones were void; nothing was deleted (temporary, retry)")]
    DeleteContended {
        /// The snapshot's volume.
        volume: String,
        /// The snapshot id that was to be deleted.
        id: String,
        /// How many tombstone generations were tried.
        attempts: u32,
    },
    /// The repository's store times were re-stamped (a `cp -r`, `aws s3 sync`, replication
    /// or provider restore): markers without a recorded verdict look void, and a gc, repair
    /// or delete acting on that would destroy snapshots. Nothing was changed.
    #[error("the repository looks copied with its store times reset: {markers} commit marker(s) without a recorded verdict look void (e.g. {example}); refusing to gc, repair or delete. If this is a copy, run `island check --adopt-copy` to record them as valid")]
    CopiedRepository {
        /// How many commit markers look void without a recorded verdict.
        markers: u64,
        /// The key of one of them, for the message.
        example: String,
    },
    /// Damaged objects make what this operation would free or delete unknown: it stops
    /// before writing anything (format-spec §11). `check` names the objects and what they
    /// affect; `check --repair` rebuilds or quarantines what it safely can.
    #[error("damaged repository objects ({objects}): their records are unknown, so nothing is freed or deleted; run `check`, then `check --repair`")]
    Damaged {
        /// The damaged objects' keys (or a summary of them).
        objects: String,
    },
    /// Another gc committed first; this one stopped without deleting anything.
    #[error("another gc ({other}) is running or committed concurrently")]
    GcConflict {
        /// The key of the other gc's marker.
        other: String,
    },
    /// Reading the backup source or writing the restore target failed.
    #[error("{path}: {op} at offset {offset}: {source}")]
    Io {
        /// The source or target path (or a name such as "backup source").
        path: String,
        /// The operation that failed ("read", "write", …).
        op: &'static str,
        /// Byte offset in the source or target where it failed.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A background task of a pipeline failed to run to completion.
    #[error("pipeline task failed: {0}")]
    Task(String),
}

impl RepoError {
    /// Whether retrying the same operation later may succeed: the repository is fine, a
    /// race with other processes was lost.
    pub fn is_temporary(&self) -> bool {
        matches!(self, RepoError::DeleteContended { .. })
    }

    pub(crate) fn corrupt(key: &str, reason: impl Into<String>) -> Self {
        RepoError::Corrupt {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Errors that mean "this object is damaged" rather than "the store failed": a missing
/// blob or pack, a range past the end of a truncated pack, a corrupt frame or table.
pub(crate) fn is_damage(e: &crate::Error) -> bool {
    match e {
        crate::Error::Repo(
            RepoError::Corrupt { .. }
            | RepoError::HashMismatch { .. }
            | RepoError::MissingBlob { .. }
            | RepoError::Unsupported { .. },
        ) => true,
        crate::Error::Store(s) => matches!(
            s.kind(),
            StoreErrorKind::NotFound | StoreErrorKind::InvalidRange
        ),
        _ => false,
    }
}
