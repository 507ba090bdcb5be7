//! Island's one integration-test binary; one module per area.

mod common;
mod image_cli;
mod image_corrupt;
mod image_crash;
mod image_lock;
mod image_model;
mod image_qemu;
mod image_qemu_reverse;
