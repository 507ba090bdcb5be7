//! The concurrency protocol (format-spec/repository.md §5 write order, §6 concurrency,
//! §12 resuming): leases and fencing, the one create-if-absent policy, the commit points of
//! writers and gc-kind runs, backup checkpoints and their adoption, recorded verdicts,
//! readers that race gc, and the cleaning of what dead writers left.

pub(crate) mod checkpoint;
pub(crate) mod commit;
pub(crate) mod exclusive;
pub(crate) mod follow;
pub(crate) mod lease;
pub(crate) mod stale;
pub(crate) mod verdict;
