//! Repository operations, one file or folder each (format-spec/repository.md §7, §9–§11):
//! each takes its lease, loads a view and writes through the protocol's commit points.

pub(crate) mod check;
pub(crate) mod copy;
pub(crate) mod delete;
pub(crate) mod diff;
pub(crate) mod forget;
pub(crate) mod gc;
pub(crate) mod gc_select;
pub(crate) mod repair;
pub(crate) mod revert;
