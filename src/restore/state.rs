//! Resume state of a raw restore (format-spec §12.3): the target's kind (regular file or
//! block device), the marker that says which restore a target is in the middle of, and
//! how far that restore durably got.
//!
//! The marker is `{volume, id, size, from, target, done_below}`: `from` is the snapshot an
//! `--into` restore started from (`None`: the target was zero-filled, or is a device whose
//! every chunk is written), `target` the identity of the file (device and inode) or block
//! device (its device number), `done_below` a byte offset below which every chunk is
//! restored and fsynced. It lives next to a regular file (`.NAME.island-restore`) or, with
//! `--state-dir`, in that directory (the only place for a block device's: `/dev` is no
//! place for files).

use super::io_err;
use crate::repo::RepoError;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Contents of a restore marker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct RestoreMarker {
    pub(super) volume: String,
    pub(super) id: String,
    pub(super) size: u64,
    /// Snapshot the target held when an `--into` restore began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<String>,
    /// `[device, inode]` of a regular file, `[rdev, 0]` of a block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<[u64; 2]>,
    /// Every chunk below this byte offset is restored and durable.
    #[serde(default)]
    pub(super) done_below: u64,
}

impl RestoreMarker {
    /// The same restore into the same target (progress aside)?
    fn same_job(&self, other: &RestoreMarker) -> bool {
        self.volume == other.volume
            && self.id == other.id
            && self.size == other.size
            && self.from == other.from
            && (self.target.is_none() || self.target == other.target)
    }
}

/// What OUT is.
pub(super) struct Target {
    pub(super) path: PathBuf,
    /// A block device: never truncated or resized; its bytes beyond the snapshot are left
    /// alone, and every zero chunk is written (its old contents are unknown).
    pub(super) device: bool,
    pub(super) identity: Option<[u64; 2]>,
    /// Current length (a device's capacity), 0 if OUT does not exist.
    pub(super) len: u64,
}

impl Target {
    /// Inspect OUT (following symlinks, so `/dev/disk/by-id/...` names work). A device's
    /// capacity is its seek-to-end length (what BLKGETSIZE64 reports).
    pub(super) fn inspect(path: &Path) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target {
                    path: path.to_path_buf(),
                    device: false,
                    identity: None,
                    len: 0,
                })
            }
            Err(e) => return Err(io_err(path, "stat", 0)(e).into()),
        };
        let ft = meta.file_type();
        if ft.is_block_device() {
            let len = File::open(path)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(io_err(path, "size of device", 0))?;
            return Ok(Target {
                path: path.to_path_buf(),
                device: true,
                identity: Some([meta.rdev(), 0]),
                len,
            });
        }
        if !ft.is_file() {
            return Err(RepoError::InvalidArgument(format!(
                "{}: not a regular file or block device",
                path.display()
            ))
            .into());
        }
        Ok(Target {
            path: path.to_path_buf(),
            device: false,
            identity: Some([meta.dev(), meta.ino()]),
            len: meta.len(),
        })
    }

    /// Refuse a device smaller than the snapshot.
    pub(super) fn check_capacity(&self, size: u64) -> Result<()> {
        if self.device && self.len < size {
            return Err(RepoError::InvalidArgument(format!(
                "{}: device holds {} bytes, the snapshot is {size} bytes",
                self.path.display(),
                self.len
            ))
            .into());
        }
        Ok(())
    }

    /// Open OUT for reading and writing, never truncating.
    pub(super) fn open(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_err(&self.path, "open", 0))
            .map_err(Into::into)
    }
}

/// Where OUT's marker lives: next to a regular file, in `state_dir` when given (named after
/// OUT's file name and a hash of its canonical path), nowhere for a device without one.
pub(super) fn marker_path(target: &Target, state_dir: Option<&Path>) -> Result<Option<PathBuf>> {
    let name = target
        .path
        .file_name()
        .ok_or_else(|| {
            RepoError::InvalidArgument(format!("{}: not a file name", target.path.display()))
        })?
        .to_string_lossy()
        .into_owned();
    match state_dir {
        Some(dir) => {
            let canon = std::fs::canonicalize(&target.path).unwrap_or_else(|_| target.path.clone());
            let h = blake3::hash(canon.as_os_str().as_encoded_bytes());
            let tag = &h.to_hex()[..16];
            Ok(Some(dir.join(format!("{name}-{tag}.island-restore"))))
        }
        None if target.device => Ok(None),
        None => super::sidecar(&target.path, "island-restore").map(Some),
    }
}

/// The marker at `path`, if any and readable.
pub(super) fn read_marker(path: &Path) -> Option<RestoreMarker> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Write the marker durably: temporary file, fsync, rename, fsync of the directory.
pub(super) fn write_marker(path: &Path, m: &RestoreMarker) -> Result<()> {
    let tmp = path.with_extension("island-restore-tmp");
    let body = serde_json::to_vec(m).map_err(|e| RepoError::Task(format!("marker: {e}")))?;
    File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &body)?;
            f.sync_all()
        })
        .map_err(io_err(&tmp, "write", 0))?;
    std::fs::rename(&tmp, path).map_err(io_err(path, "rename", 0))?;
    sync_dir(path)
}

/// Remove the marker durably (the restore is complete and fsynced).
pub(super) fn remove_marker(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove", 0)(e).into()),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = super::parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir, "fsync directory", 0))?;
    Ok(())
}

/// A raw restore's resume bookkeeping.
pub(super) struct Resume {
    marker_path: Option<PathBuf>,
    marker: RestoreMarker,
    /// This run continues a killed one.
    pub(super) resumed: bool,
}

impl Resume {
    /// Decide whether OUT continues a killed restore of the same job (`want`); `into` says
    /// whether this is an `--into` restore, which refuses any other unfinished restore in
    /// OUT (OUT would not hold `want.from`). Returns the state and the marker found (so
    /// the caller knows where a resumed job got to).
    pub(super) fn begin(
        target: &Target,
        state_dir: Option<&Path>,
        want: RestoreMarker,
        into: bool,
    ) -> Result<Resume> {
        let marker_path = marker_path(target, state_dir)?;
        let found = marker_path.as_deref().and_then(read_marker);
        let size_ok = if target.device {
            target.len >= want.size
        } else {
            target.len == want.size
        };
        match found {
            Some(m) if m.same_job(&want) && size_ok => Ok(Resume {
                marker_path,
                marker: RestoreMarker {
                    done_below: m.done_below.min(want.size),
                    ..want
                },
                resumed: true,
            }),
            Some(m) if into => {
                let marker = marker_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let why = if m.same_job(&RestoreMarker {
                    target: m.target,
                    size: m.size,
                    ..want.clone()
                }) {
                    "OUT was replaced or resized since that run was killed".to_string()
                } else {
                    format!(
                        "OUT holds part of {}{}/{}, not {}",
                        m.from.map(|f| format!("{f} -> ")).unwrap_or_default(),
                        m.volume,
                        m.id,
                        want.from.as_deref().unwrap_or("the base"),
                    )
                };
                Err(RepoError::InvalidArgument(format!(
                    "{}: an unfinished restore is recorded in {marker} and {why}: re-run that \
                     restore, or restore OUT whole without --into",
                    target.path.display(),
                ))
                .into())
            }
            _ => Ok(Resume {
                marker_path,
                marker: want,
                resumed: false,
            }),
        }
    }

    /// OUT was (re)created: record its new identity.
    pub(super) fn set_identity(&mut self, identity: Option<[u64; 2]>) {
        self.marker.target = identity;
    }

    /// Resumable at all (a device restore without `--state-dir` is not).
    pub(super) fn tracked(&self) -> bool {
        self.marker_path.is_some()
    }

    /// Byte offset below which a resumed restore has nothing left to do.
    pub(super) fn done_below(&self) -> u64 {
        if self.resumed {
            self.marker.done_below
        } else {
            0
        }
    }

    /// Record that the job is under way (before the first write to OUT).
    pub(super) fn start(&mut self) -> Result<()> {
        match &self.marker_path {
            Some(p) => write_marker(p, &self.marker),
            None => Ok(()),
        }
    }

    /// Everything below `done` is written: make it durable, then record it.
    pub(super) fn progress(&mut self, file: &File, path: &Path, done: u64) -> Result<()> {
        let Some(p) = &self.marker_path else {
            return Ok(());
        };
        if done <= self.marker.done_below {
            return Ok(());
        }
        file.sync_all().map_err(io_err(path, "fsync", 0))?;
        self.marker.done_below = done;
        write_marker(p, &self.marker)
    }

    /// The restore is complete and OUT fsynced: drop the marker.
    pub(super) fn finish(&self) -> Result<()> {
        match &self.marker_path {
            Some(p) => remove_marker(p),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(from: Option<&str>, target: Option<[u64; 2]>) -> RestoreMarker {
        RestoreMarker {
            volume: "vm".into(),
            id: "b".into(),
            size: 4096,
            from: from.map(str::to_string),
            target,
            done_below: 0,
        }
    }

    /// A killed run's recorded progress is what a re-run of the same job starts from; an
    /// `--into` of another job, or into a replaced OUT, is refused with the reason; a plain
    /// restore of another job starts afresh.
    #[test]
    fn marker_progress_resume_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.raw");
        std::fs::write(&out, vec![0u8; 4096]).unwrap();
        let t = Target::inspect(&out).unwrap();
        assert!(!t.device && t.len == 4096 && t.identity.is_some());
        let mut r = Resume::begin(&t, None, job(Some("a"), t.identity), true).unwrap();
        assert!(!r.resumed && r.tracked());
        r.start().unwrap();
        let f = t.open().unwrap();
        r.progress(&f, &out, 2048).unwrap();
        // Killed here. The same job resumes from the recorded progress.
        let again = Resume::begin(&t, None, job(Some("a"), t.identity), true).unwrap();
        assert!(again.resumed);
        assert_eq!(again.done_below(), 2048);
        // Another --into job is refused: OUT holds neither snapshot.
        let err = Resume::begin(&t, None, job(Some("c"), t.identity), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds part of a -> vm/b, not c"), "{err}");
        // OUT replaced (another inode): refused with that reason.
        let other = Some([t.identity.unwrap()[0], t.identity.unwrap()[1] + 1]);
        let err = Resume::begin(&t, None, job(Some("a"), other), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("replaced or resized"), "{err}");
        // A whole restore of anything is allowed and starts afresh.
        let whole = Resume::begin(&t, None, job(None, t.identity), false).unwrap();
        assert!(!whole.resumed);
        again.finish().unwrap();
        assert!(read_marker(&dir.path().join(".out.raw.island-restore")).is_none());
    }

    /// With a state directory the marker lives there (named after OUT and a hash of its
    /// canonical path), never next to OUT.
    #[test]
    fn state_dir_holds_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let out = dir.path().join("disk");
        std::fs::write(&out, vec![0u8; 4096]).unwrap();
        let t = Target::inspect(&out).unwrap();
        let mut r = Resume::begin(&t, Some(&state), job(None, t.identity), false).unwrap();
        r.start().unwrap();
        let names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("disk-") && names[0].ends_with(".island-restore"));
        assert!(!dir.path().join(".disk.island-restore").exists());
        // A character device is neither a file nor a block device: refused.
        let err = Target::inspect(Path::new("/dev/null")).err().unwrap();
        assert!(err
            .to_string()
            .contains("not a regular file or block device"));
    }
}
