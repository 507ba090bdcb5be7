//! Bounded write-back cache of metadata clusters (L2 tables and refcount blocks), keyed
//! by host offset. Dirty entries are written only by the engine's ordered flush (see
//! `Engine::flush_locked`), never by eviction on its own: eviction takes clean entries
//! only, and the engine flushes first when dirty entries push the cache over its bound.

use super::error::ImageError;
use super::file::ImageFile;
use super::overlap::{Region, Regions};
use std::collections::HashMap;
use std::path::Path;

/// Which metadata a cached cluster holds; the flush writes kinds in dependency order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    L2,
    Refblock,
}

struct Slot {
    data: Box<[u8]>,
    kind: Kind,
    dirty: bool,
    used: u64,
}

pub(crate) struct Cache {
    map: HashMap<u64, Slot>,
    capacity: usize,
    tick: u64,
    cluster_size: usize,
}

/// Read a whole metadata cluster; a cluster cut short by the end of the file reads as
/// zeros past the end (QEMU may leave the last cluster short).
pub(super) fn read_cluster(
    file: &dyn ImageFile,
    path: &Path,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ImageError> {
    read_tolerant(file, path, what, offset, buf)
}

/// Exact read that zero-fills past EOF.
pub(super) fn read_tolerant(
    file: &dyn ImageFile,
    path: &Path,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ImageError> {
    match file.read_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            let len = file.len().map_err(|source| ImageError::Io {
                path: path.to_path_buf(),
                op: what,
                offset,
                source,
            })?;
            let avail = len.saturating_sub(offset).min(buf.len() as u64) as usize;
            buf[avail..].fill(0);
            if avail > 0 {
                file.read_at(&mut buf[..avail], offset)
                    .map_err(|source| ImageError::Io {
                        path: path.to_path_buf(),
                        op: what,
                        offset,
                        source,
                    })?;
            }
            Ok(())
        }
        Err(source) => Err(ImageError::Io {
            path: path.to_path_buf(),
            op: what,
            offset,
            source,
        }),
    }
}

impl Cache {
    pub(crate) fn new(cluster_size: usize, budget_bytes: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            capacity: (budget_bytes / cluster_size).max(16),
            tick: 0,
            cluster_size,
        }
    }

    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn load(
        &mut self,
        file: &dyn ImageFile,
        path: &Path,
        offset: u64,
        kind: Kind,
    ) -> Result<(), ImageError> {
        if self.map.contains_key(&offset) {
            return Ok(());
        }
        let mut data = vec![0u8; self.cluster_size].into_boxed_slice();
        let what = match kind {
            Kind::L2 => "read L2 table",
            Kind::Refblock => "read refcount block",
        };
        read_cluster(file, path, what, offset, &mut data)?;
        self.evict_clean(1);
        let used = self.touch();
        self.map.insert(
            offset,
            Slot {
                data,
                kind,
                dirty: false,
                used,
            },
        );
        Ok(())
    }

    /// The cached cluster at `offset`, loaded from the file on a miss.
    pub(crate) fn get(
        &mut self,
        file: &dyn ImageFile,
        path: &Path,
        offset: u64,
        kind: Kind,
    ) -> Result<&[u8], ImageError> {
        self.load(file, path, offset, kind)?;
        let t = self.touch();
        match self.map.get_mut(&offset) {
            Some(s) => {
                s.used = t;
                Ok(&s.data)
            }
            None => Err(missing(path, offset)),
        }
    }

    /// Mutable access; marks the entry dirty.
    pub(crate) fn get_mut(
        &mut self,
        file: &dyn ImageFile,
        path: &Path,
        offset: u64,
        kind: Kind,
    ) -> Result<&mut [u8], ImageError> {
        self.load(file, path, offset, kind)?;
        let t = self.touch();
        match self.map.get_mut(&offset) {
            Some(s) => {
                s.used = t;
                s.dirty = true;
                Ok(&mut s.data)
            }
            None => Err(missing(path, offset)),
        }
    }

    /// A freshly allocated metadata cluster with the given contents, dirty.
    pub(crate) fn insert_new(&mut self, offset: u64, kind: Kind, data: Box<[u8]>) {
        let used = self.touch();
        self.map.insert(
            offset,
            Slot {
                data,
                kind,
                dirty: true,
                used,
            },
        );
    }

    /// Drop an entry whose cluster was freed so it is never written back over new data.
    pub(crate) fn forget(&mut self, offset: u64) {
        self.map.remove(&offset);
    }

    /// Write every dirty entry of `kind` (in offset order) and mark it clean. The caller
    /// issues the sync barrier. Each cluster must be recorded in `regions` as what it
    /// holds (the overlap check): an entry that is not is refused, nothing written.
    pub(crate) fn write_dirty(
        &mut self,
        file: &dyn ImageFile,
        path: &Path,
        kind: Kind,
        regions: &Regions,
    ) -> Result<bool, ImageError> {
        let mut offs: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.dirty && s.kind == kind)
            .map(|(o, _)| *o)
            .collect();
        offs.sort_unstable();
        let region = match kind {
            Kind::L2 => Region::L2,
            Kind::Refblock => Region::RefBlock,
        };
        let cb = self.cluster_size.trailing_zeros();
        for off in &offs {
            if let Some((c, r)) = regions.conflict(off >> cb, 1, Some(region)) {
                return Err(ImageError::Overlap {
                    path: path.to_path_buf(),
                    offset: *off,
                    reason: format!(
                        "writing {region} at cluster {c} would overwrite {}",
                        if r == region {
                            "a cluster not recorded as one".to_string()
                        } else {
                            r.to_string()
                        }
                    ),
                });
            }
        }
        for off in &offs {
            if let Some(s) = self.map.get_mut(off) {
                file.write_at(&s.data, *off)
                    .map_err(|source| ImageError::Io {
                        path: path.to_path_buf(),
                        op: match kind {
                            Kind::L2 => "write L2 table",
                            Kind::Refblock => "write refcount block",
                        },
                        offset: *off,
                        source,
                    })?;
                s.dirty = false;
            }
        }
        Ok(!offs.is_empty())
    }

    /// Whether the cache holds more than its bound.
    pub(crate) fn over_capacity(&self) -> bool {
        self.map.len() > self.capacity
    }

    /// Evict least-recently-used clean entries until `room` more fit. Evicts at least a
    /// sixteenth of the capacity at once so the O(entries) scan is amortized over misses.
    pub(crate) fn evict_clean(&mut self, room: usize) {
        if self.map.len() + room <= self.capacity {
            return;
        }
        let excess = (self.map.len() + room - self.capacity).max(self.capacity / 16);
        let mut clean: Vec<(u64, u64)> = self
            .map
            .iter()
            .filter(|(_, s)| !s.dirty)
            .map(|(o, s)| (s.used, *o))
            .collect();
        if clean.len() > excess {
            clean.select_nth_unstable(excess);
            clean.truncate(excess);
        }
        for (_, off) in clean {
            self.map.remove(&off);
        }
    }
}

fn missing(path: &Path, offset: u64) -> ImageError {
    ImageError::Corrupt {
        path: path.to_path_buf(),
        what: "metadata cache",
        offset,
        reason: "entry vanished after load".into(),
    }
}
