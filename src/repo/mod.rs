//! Repository format and protocol (see `format-spec/repository.md`).

mod error;
pub use error::RepoError;
