//! The one integration-test binary: one module per area.

mod common;
mod objstore_common;
mod objstore_s3;
mod objstore_swift;
mod repo_cli;
mod repo_faults;
mod repo_golden;
mod store_conformance;
mod store_drivers;
mod store_wrappers;
