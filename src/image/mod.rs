//! qcow2 version 3 image engine (see `format-spec/image.md`).

mod error;
pub use error::ImageError;
