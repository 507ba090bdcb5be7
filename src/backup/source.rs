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
    /// Start, in bytes from the source's beginning.
    pub offset: u64,
    /// Length in bytes (clipped at the source's size).
    pub length: u64,
    /// The range reads as zeros.
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

/// Filesystems whose files are generated on read (their size says nothing about their
/// content): a "backup" of one would be a 0-byte or arbitrary snapshot.
const PSEUDO_FILESYSTEMS: [(i64, &str); 9] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x6367_7270, "cgroup2"),
    (0x0027_e0eb, "cgroup"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "bpf"),
];

/// Refuse a backup source that is not a regular file or a block device, before anything
/// opens it for reading: a FIFO would block the open (or the read) forever, and a
/// character device or a `/proc` file reports size 0 and would back up as an empty
/// volume with exit status 0. `stat` and `statfs` never block on such files.
pub fn check_source_kind(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let ft = std::fs::metadata(path)?.file_type();
    let kind = if ft.is_file() || ft.is_block_device() {
        None
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file or block device")
    };
    if let Some(kind) = kind {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is {kind}: only regular files and block devices can be backed up",
                path.display()
            ),
        ));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as i64;
    if let Some((_, name)) = PSEUDO_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is on {name}, a pseudo filesystem whose files are generated on read: not a volume to back up", path.display()),
        ));
    }
    Ok(())
}

impl RawSource {
    /// Open `path` read-only; only a regular file or a block device (see
    /// [`check_source_kind`]).
    pub fn open(path: &Path) -> std::io::Result<RawSource> {
        check_source_kind(path)?;
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
