//! Stage "open" of a restore: inspect OUT, begin or continue its resume record
//! (format-spec §12.3), create what is missing, and choose the tree walk.

use super::state::{RestoreMarker, Resume, Target};
use super::{create_zeroed, io_err, RestoreTarget, Sink};
use crate::image::{CreateOptions, Image, OpenMode};
use crate::repo::format::table::Geometry;
use crate::repo::tree::PairWalk;
use crate::repo::{BlobId, RepoError, Repository, SnapshotManifest};
use crate::Result;
use std::path::{Path, PathBuf};

/// The target, opened (or created) for the restore.
pub(super) struct Opened {
    pub(super) path: PathBuf,
    pub(super) sink: Sink,
    /// The tree walk: the snapshot alone, or paired with the base OUT already holds.
    pub(super) walk: PairWalk,
    /// OUT's old contents are unknown where the snapshot is zero (a device), so zero
    /// chunks are written too.
    pub(super) zero_unknown: bool,
    /// The resume marker of a raw or `--into` restore.
    pub(super) resume: Option<Resume>,
    /// A killed run's work is continued: chunks OUT already holds are read back first.
    pub(super) resumed: bool,
}

/// Stage "open": inspect OUT, begin or continue its resume record, create what is missing.
pub(super) async fn open_target(
    repo: &Repository,
    m: &SnapshotManifest,
    target: &RestoreTarget,
    state_dir: Option<&Path>,
) -> Result<Opened> {
    let geo = Geometry::new(m.size, m.chunk_size);
    let top = m.top_ids()?;
    match target {
        RestoreTarget::Raw(path) => {
            let t = Target::inspect(path)?;
            t.check_capacity(m.size)?;
            let mut r = Resume::begin(&t, state_dir, want(m, None, t.identity), false)?;
            let f = if r.resumed || t.device {
                t.open()?
            } else {
                let f = create_zeroed(path, m.size)?;
                r.set_identity(Target::inspect(path)?.identity);
                f
            };
            if !r.resumed {
                r.start()?;
            }
            if !r.tracked() {
                tracing::warn!(
                    "{}: a block device restore without --state-dir is not resumable",
                    path.display()
                );
            }
            Ok(Opened {
                path: path.clone(),
                sink: Sink::File(f),
                walk: PairWalk::single(geo, &top),
                zero_unknown: t.device,
                resumed: r.resumed,
                resume: Some(r),
            })
        }
        RestoreTarget::Into { path, base } => {
            open_into(repo, m, path, base, state_dir, geo, &top).await
        }
        RestoreTarget::Qcow2 { path, cluster_size } => {
            let (img, resumed) = open_image(m, path, *cluster_size)?;
            Ok(Opened {
                path: path.clone(),
                sink: Sink::Image(Box::new(img)),
                walk: PairWalk::single(geo, &top),
                zero_unknown: false,
                resume: None,
                resumed,
            })
        }
    }
}

/// The marker a raw or `--into` restore of `m` records.
fn want(m: &SnapshotManifest, from: Option<String>, identity: Option<[u64; 2]>) -> RestoreMarker {
    RestoreMarker {
        volume: m.volume.clone(),
        id: m.id.clone(),
        size: m.size,
        from,
        target: identity,
        done_below: 0,
    }
}

/// Open OUT, which holds snapshot `base`, for an `--into` restore: the two trees are
/// walked together when they have the same shape, else OUT is rewritten whole.
async fn open_into(
    repo: &Repository,
    m: &SnapshotManifest,
    path: &Path,
    base: &str,
    state_dir: Option<&Path>,
    geo: Geometry,
    top: &[BlobId],
) -> Result<Opened> {
    let b = repo.snapshot(&m.volume, base).await?;
    let t = Target::inspect(path)?;
    t.check_capacity(m.size)?;
    if t.device && state_dir.is_none() {
        return Err(RepoError::InvalidArgument(format!(
            "{}: restore --into a block device needs --state-dir (where a killed \
             run is recorded, so OUT is never mistaken for {base} afterwards)",
            path.display()
        ))
        .into());
    }
    let mut r = Resume::begin(&t, state_dir, want(m, Some(base.into()), t.identity), true)?;
    let f = t.open()?;
    if !r.resumed {
        r.start()?;
    }
    let same = b.size == m.size && b.chunk_size == m.chunk_size;
    let walk = if same {
        PairWalk::new(geo, &b.top_ids()?, top)
    } else {
        if !t.device && !r.resumed {
            f.set_len(0).map_err(io_err(path, "set_len", 0))?;
            f.set_len(m.size).map_err(io_err(path, "set_len", m.size))?;
        }
        PairWalk::single(geo, top)
    };
    Ok(Opened {
        path: path.to_path_buf(),
        sink: Sink::File(f),
        walk,
        zero_unknown: t.device && !same,
        resumed: r.resumed,
        resume: Some(r),
    })
}

/// Create the temporary qcow2 image, or continue our own left by a killed run (named
/// after the snapshot id); one that does not open (killed while being created) is
/// redone. True when continued.
fn open_image(m: &SnapshotManifest, path: &Path, cluster_size: u32) -> Result<(Image, bool)> {
    if m.size % 512 != 0 {
        return Err(RepoError::InvalidArgument(format!(
            "{}/{} is {} bytes, not a multiple of 512: qcow2 cannot hold it \
             exactly; restore it as raw",
            m.volume, m.id, m.size
        ))
        .into());
    }
    let opts = CreateOptions {
        size: m.size,
        cluster_size,
    };
    Ok(
        match path
            .exists()
            .then(|| Image::open(path, OpenMode::ReadWrite))
        {
            Some(Ok(img))
                if img.info().size == m.size && img.info().cluster_size == cluster_size =>
            {
                (img, true)
            }
            Some(Err(e @ crate::image::ImageError::Locked { .. })) => return Err(e.into()),
            Some(Ok(img)) => {
                img.close()?;
                (Image::create(path, &opts)?, false)
            }
            _ => (Image::create(path, &opts)?, false),
        },
    )
}
