//! Island's one integration-test binary; one module per area.

mod backup_live;
mod backup_qcow2;
mod common;
mod image_cli;
mod image_corrupt;
mod image_crash;
mod image_lock;
mod image_model;
mod image_qemu;
mod image_qemu_reverse;
mod objstore_common;
mod objstore_conformance;
mod objstore_faults;
mod objstore_repo;
mod objstore_s3;
mod objstore_swift;
mod repo_cli;
mod repo_copy;
mod repo_faults;
mod repo_forget;
mod repo_golden;
mod repo_ops_util;
mod repo_repair;
mod store_conformance;
mod store_drivers;
mod store_wrappers;
