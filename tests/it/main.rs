//! Island's one integration-test binary; one module per area.

mod common;
mod image_cli;
mod image_corrupt;
mod image_crash;
mod image_lock;
mod image_model;
mod image_qemu;
mod image_qemu_reverse;
mod objstore_common;
mod objstore_s3;
mod objstore_swift;
mod repo_cli;
mod repo_faults;
mod repo_golden;
mod service_api;
mod service_bad_input;
mod service_common;
mod service_openapi;
mod service_resume;
mod store_conformance;
mod store_drivers;
mod store_wrappers;
