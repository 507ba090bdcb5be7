//! Repository config (`config`), written once at init with create-if-absent.
//! Feature bits follow qcow2's model: an unknown incompatible bit refuses to open.

use super::envelope::{self, MAGIC_CONFIG};
use crate::repo::RepoError;
use serde::{Deserialize, Serialize};

pub(crate) const CONFIG_KEY: &str = "config";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Incompatible feature bits this build understands (none defined yet).
const KNOWN_INCOMPATIBLE: u64 = 0;

/// Options for `Repository::init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Chunk size in bytes: a power of two from 4 KiB to 4 MiB (default 64 KiB, qcow2's
    /// default cluster, so changed-block tracking and chunks line up).
    pub chunk_size: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { chunk_size: 65536 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Config {
    pub format: u32,
    pub repo_id: String,
    pub chunk_size: u32,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    /// "none" until the encryption issue lands.
    pub encryption: String,
    pub created: String,
}

impl Config {
    pub(crate) fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC_CONFIG, self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Config, RepoError> {
        let c: Config = envelope::open(MAGIC_CONFIG, CONFIG_KEY, bytes)?;
        let unsupported = |reason: String| RepoError::Unsupported {
            key: CONFIG_KEY.into(),
            reason,
        };
        if c.format != FORMAT_VERSION {
            return Err(unsupported(format!("repository format {}", c.format)));
        }
        if c.incompatible_features & !KNOWN_INCOMPATIBLE != 0 {
            return Err(unsupported(format!(
                "incompatible features {:#x}",
                c.incompatible_features
            )));
        }
        if c.encryption != "none" {
            return Err(unsupported(format!("encryption {:?}", c.encryption)));
        }
        check_chunk_size(c.chunk_size)
            .map_err(|_| RepoError::corrupt(CONFIG_KEY, format!("chunk size {}", c.chunk_size)))?;
        Ok(c)
    }
}

pub(crate) fn check_chunk_size(cs: u32) -> Result<(), RepoError> {
    if !cs.is_power_of_two() || !(4096..=(4 << 20)).contains(&cs) {
        return Err(RepoError::InvalidArgument(format!(
            "chunk size {cs} must be a power of two between 4096 and 4194304"
        )));
    }
    Ok(())
}
