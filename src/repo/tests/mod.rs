//! The repository's test harness and the tests that cross files: the test stores and
//! helpers every unit test builds on ([`testing`]), the schedule runner (`schedule/`: random
//! interleavings of writers, deleters, gc, repair and copies, with its regressions), and
//! the scenario tests of delete, verdicts, heal, repair, fetch and readers racing gc. Kept
//! out of `format/`, `protocol/` and `ops/`, which hold production code only.

mod delete;
mod fetch;
mod follow;
mod heal;
mod repair;
mod repair_damage;
mod schedule;
pub(crate) mod testing;
mod verdict;
