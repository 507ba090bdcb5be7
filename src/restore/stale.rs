//! Temporary images of killed qcow2 restores of *other* snapshots to the same OUT
//! (`.NAME.<other id>.island-tmp`). Only a restore of that very snapshot could resume one,
//! and a restore to NAME means NAME is now wanted with another snapshot: they are removed
//! (format-spec §12.3). One still open by a live restore holds the image lock and is left.

use super::{io_err, parent_dir};
use crate::image::{Image, ImageError, OpenMode};
use crate::Result;
use std::path::Path;

/// Remove the temporary images of other snapshot ids next to `out`; returns how many.
pub(super) fn remove_other_temps(out: &Path, id: &str) -> Result<u64> {
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(0);
    };
    let dir = parent_dir(out);
    let prefix = format!(".{name}.");
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) => return Err(io_err(&dir, "list", 0)(e).into()),
    };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(other) = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".island-tmp"))
        else {
            continue;
        };
        if other == id || !crate::repo::format::ids::is_time_id(other) {
            continue;
        }
        let path = e.path();
        match Image::open(&path, OpenMode::ReadWrite) {
            Err(ImageError::Locked { .. }) => {
                tracing::warn!("{}: in use by a running restore, left", path.display());
                continue;
            }
            Ok(img) => img.close()?,
            // Killed while being created: not an image yet, ours by its name.
            Err(_) => {}
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!("removed {} (a killed restore of {other})", path.display());
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "remove", 0)(e).into()),
        }
    }
    Ok(removed)
}
