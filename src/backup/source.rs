//! What a backup reads: the [`BlockSource`] trait and the raw file/device source.

pub use crate::repo::BaseIdentity;
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A byte range of a source; `zero` when it is known to read as zeros (a hole or a
/// zero cluster) so the backup need not read it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct SourceRange {
    pub offset: u64,
    pub length: u64,
    pub zero: bool,
}

/// A volume to back up. Implemented here for raw files and block devices; the qcow2
/// engine implements it for internal snapshots (changed clusters from pointer tables).
pub trait BlockSource: Send + Sync {
    /// Volume size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset` (the range lies within `size`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Ranges that may differ from the state identified by `base`; `None` when the source
    /// cannot tell (the backup then reads everything, still uploading only new chunks).
    fn changed_since(&self, _base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        None
    }
    /// What to record so the next backup can be incremental (`None`, the default: nothing
    /// to record).
    fn identity(&self) -> Option<BaseIdentity> {
        None
    }
    /// Sparse map if cheaply known (ranges not listed read as zeros), else `None` (the
    /// default).
    fn allocated(&self) -> Option<Vec<SourceRange>> {
        None
    }
    /// Called after the last read and before the commit: an error aborts the backup
    /// without committing. A source whose data can vanish under the reader (an internal
    /// snapshot another process may delete, its clusters then reused) proves here that
    /// what it read was still valid at the end of the read.
    fn verify_unchanged(&self) -> crate::Result<()> {
        Ok(())
    }
    /// A string equal between two opens only if the content is the same, so a re-run of a
    /// killed backup may skip what the killed run already read (format-spec §12); `None`
    /// (the default) when that cannot be known: the re-run then reads everything again and
    /// only avoids re-uploading.
    fn resume_token(&self) -> Option<String> {
        None
    }
}

/// A raw image file or block device, sparse-aware through `SEEK_DATA`/`SEEK_HOLE`.
#[derive(Debug)]
pub struct RawSource {
    path: PathBuf,
    file: File,
    size: u64,
}

impl RawSource {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<RawSource> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // Block devices report 0 in metadata; seek to the end instead.
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0))?
        };
        Ok(RawSource {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    /// The path this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Regular files only: device, inode, size and modification and change times (any
    /// write moves them). A block device has no such stamp.
    fn resume_token(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata().ok()?;
        m.file_type().is_file().then(|| {
            format!(
                "raw:{}:{}:{}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
        })
    }

    fn allocated(&self) -> Option<Vec<SourceRange>> {
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos: i64 = 0;
        let end = i64::try_from(self.size).ok()?;
        while pos < end {
            // SAFETY: lseek on a file descriptor we own; no memory is passed.
            let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if data < 0 {
                let err = std::io::Error::last_os_error();
                // ENXIO: no data after pos (rest is a hole); anything else: not supported.
                return if err.raw_os_error() == Some(libc::ENXIO) {
                    Some(out)
                } else {
                    None
                };
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return None;
            }
            let hole = hole.min(end);
            if hole > data {
                out.push(SourceRange {
                    offset: data as u64,
                    length: (hole - data) as u64,
                    zero: false,
                });
            }
            pos = hole;
        }
        Some(out)
    }
}
