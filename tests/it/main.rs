//! The one integration-test binary: one module per area.

mod common;
mod repo_cli;
mod repo_golden;
mod store_conformance;
mod store_drivers;
mod store_wrappers;
