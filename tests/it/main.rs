//! Island's one integration-test binary; one module per area.

// Helpers are `pub` for their sibling modules; Cargo.toml's lint table is meant for the
// library's API.
#![allow(unreachable_pub)]

mod backup_live;
mod backup_qcow2;
mod common;
mod fuzz_regressions;
mod image_cli;
mod image_corrupt;
mod image_crash;
mod image_damage;
mod image_direct;
mod image_lock;
mod image_model;
mod image_qemu;
mod image_qemu_reverse;
mod image_safety;
mod objstore_common;
mod objstore_conformance;
mod objstore_faults;
mod objstore_repo;
mod objstore_s3;
mod objstore_swift;
mod objstore_swift_ranges;
mod repo_check;
mod repo_cli;
mod repo_copy;
mod repo_damage;
mod repo_faults;
mod repo_forget;
mod repo_gc_plan;
mod repo_golden;
mod repo_kill;
mod repo_kill_tail;
mod repo_ops_util;
mod repo_repair;
mod restore_resume;
mod service_api;
mod service_bad_input;
mod service_check;
mod service_common;
mod service_mend;
mod service_openapi;
mod service_ops_shared;
mod service_peer;
mod service_peer_resume;
mod service_preamble;
mod service_resume;
mod service_revert_copy;
mod service_routes;
mod service_size;
mod service_visibility;
mod store_conformance;
mod store_drivers;
mod store_wrappers;
