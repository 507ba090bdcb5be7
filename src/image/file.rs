//! The storage under the engine. The engine only does positional I/O through
//! [`ImageFile`], so tests can substitute a storage that records writes and sync barriers
//! (power-loss simulation), and O_DIRECT ([`super::direct::DirectFile`]) slots in.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Positional byte storage for an image. Implementations must be safe for concurrent
/// calls at different offsets.
// `len` is the storage size, not a collection length: an `is_empty` would mean nothing.
#[allow(clippy::len_without_is_empty)]
pub trait ImageFile: Send + Sync {
    /// Read exactly `buf.len()` bytes at `offset` (UnexpectedEof past the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Write all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Durability barrier: every write completed before the call is durable after it.
    fn sync(&self) -> std::io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> std::io::Result<u64>;
    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> std::io::Result<()>;
}

impl ImageFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        // fdatasync also persists the file size, which appended clusters need.
        self.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}
