//! What a Swift store is opened from.

use std::time::Duration;

use super::{HttpTimeouts, SwiftCredentials};

/// Where and how to reach a Swift container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwiftConfig {
    /// Container name (the host part of `swift://CONTAINER/PREFIX`).
    pub container: String,
    /// Object name prefix inside the container, without leading or trailing `/`.
    pub prefix: String,
    /// Login; `None` reads `ST_AUTH`/`ST_USER`/`ST_KEY` or the `OS_*` variables.
    pub credentials: Option<SwiftCredentials>,
    /// Network timeouts.
    pub timeouts: HttpTimeouts,
    /// Settle time of a create-if-absent, reported as `Capabilities::create_settle`
    /// (Swift's `If-None-Match` is not atomic; see [`DEFAULT_CREATE_SETTLE`]).
    pub create_settle: Duration,
}

/// Default [`SwiftConfig::create_settle`]: far longer than a small object's PUT takes on
/// any healthy link (milliseconds), so every racing create has landed before the winner is
/// read back, yet short next to a backup job.
pub const DEFAULT_CREATE_SETTLE: Duration = Duration::from_secs(10);
