//! Metadata overlap checks (format-spec/image.md, "Metadata overlap checks").
//!
//! Every host cluster that holds metadata — the header, the active L1 table, every L2
//! table reachable from the active or a snapshot L1 table, the refcount table and
//! blocks, the snapshot table and the snapshots' L1 tables — is kept in one ordered map
//! from cluster to [`Region`], built when the image is opened and updated as metadata is
//! allocated and freed (a cluster leaves the map when its refcount drops to 0). Then:
//! - a guest data mapping (L2 entry) into any region, or an L1 entry pointing at a
//!   region that is not an L2 table, is corruption, refused on read and write alike;
//! - every host write names what it writes, and is refused unless each cluster it
//!   touches is that region (metadata) or no region at all (guest data);
//! - a cluster the allocator finds free (refcount 0) but the map holds is a damaged
//!   refcount structure: never handed out.
//!
//! A refused write sets the qcow2 corrupt bit (incompatible feature bit 1), as QEMU does,
//! so neither Island nor QEMU writes to the image again until `qemu-img check -r all`.
//! Each check is an O(log n) map lookup (n = metadata clusters), never a scan of the image.

use super::error::ImageError;
use super::header::INCOMPAT_CORRUPT;
use super::mapping::{self, Mapping};
use super::state::State;
use std::collections::BTreeMap;
use std::fmt;

/// What a metadata cluster holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Region {
    Header,
    ActiveL1,
    L2,
    RefTable,
    RefBlock,
    SnapTable,
    SnapL1,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::Header => "the header",
            Region::ActiveL1 => "the active L1 table",
            Region::L2 => "an L2 table",
            Region::RefTable => "the refcount table",
            Region::RefBlock => "a refcount block",
            Region::SnapTable => "the snapshot table",
            Region::SnapL1 => "a snapshot L1 table",
        })
    }
}

/// The metadata clusters of an image.
#[derive(Default, Debug)]
pub(crate) struct Regions {
    map: BTreeMap<u64, Region>,
}

impl Regions {
    /// The region host cluster `c` belongs to, if any.
    pub(crate) fn get(&self, c: u64) -> Option<Region> {
        self.map.get(&c).copied()
    }

    /// Record clusters `first..first + n` as `r`. An L2 table may be shared by several L1
    /// tables; any other second claim on a cluster is an overlap: `Err((cluster, holder))`.
    pub(crate) fn insert(&mut self, first: u64, n: u64, r: Region) -> Result<(), (u64, Region)> {
        for c in first..first + n {
            match self.map.get(&c) {
                None => {
                    self.map.insert(c, r);
                }
                Some(Region::L2) if r == Region::L2 => {}
                Some(&other) => return Err((c, other)),
            }
        }
        Ok(())
    }

    /// Forget cluster `c` (its refcount reached 0: it is free space now).
    pub(crate) fn remove(&mut self, c: u64) {
        self.map.remove(&c);
    }

    /// The first region in clusters `first..first + n` other than `allowed`.
    pub(crate) fn conflict(
        &self,
        first: u64,
        n: u64,
        allowed: Option<Region>,
    ) -> Option<(u64, Region)> {
        match allowed {
            None => self
                .map
                .range(first..first.saturating_add(n))
                .next()
                .map(|(&c, &r)| (c, r)),
            Some(want) => (first..first + n).find_map(|c| match self.get(c) {
                Some(r) if r == want => None,
                Some(r) => Some((c, r)),
                // Not recorded: a write of `want` there would turn free space or guest
                // data into metadata nothing accounts for.
                None => Some((c, want)),
            }),
        }
    }
}

impl State {
    pub(crate) fn overlap(&self, offset: u64, reason: String) -> ImageError {
        ImageError::Overlap {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    /// The overlap check of a host write of `len` bytes at `offset` (see the module
    /// comment): all `region`, or for guest data (`None`) no metadata at all.
    pub(crate) fn check_write(
        &self,
        offset: u64,
        len: u64,
        region: Option<Region>,
    ) -> Result<(), ImageError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.cb;
        let n = ((offset + len - 1) >> self.cb) - first + 1;
        match self.regions.conflict(first, n, region) {
            None => Ok(()),
            Some((c, r)) => Err(self.overlap(
                offset,
                match region {
                    None => format!("guest data write would overwrite {r} (cluster {c})"),
                    Some(want) if want == r => {
                        format!("write of {want} to cluster {c}, which is not recorded as one")
                    }
                    Some(want) => format!("write of {want} would overwrite {r} (cluster {c})"),
                },
            )),
        }
    }

    /// Record freshly allocated clusters at host offset `offset` as `region`.
    pub(crate) fn claim(&mut self, offset: u64, n: u64, region: Region) -> Result<(), ImageError> {
        let r = self.regions.insert(offset >> self.cb, n, region);
        r.map_err(|(c, other)| {
            let e = self.overlap(
                c << self.cb,
                format!("new {region} would overwrite {other}"),
            );
            self.refuse(e)
        })
    }

    /// Pass `e` on; an overlap (a write refused because it would land on metadata) first
    /// marks the image corrupt, as QEMU does, so no one writes to it again before a repair.
    pub(crate) fn refuse(&mut self, e: ImageError) -> ImageError {
        if matches!(e, ImageError::Overlap { .. })
            && self.header.incompatible & INCOMPAT_CORRUPT == 0
        {
            tracing::error!("{e}; marking the image corrupt");
            self.header.incompatible |= INCOMPAT_CORRUPT;
            if let Err(w) = self.write_header() {
                tracing::error!(
                    "{}: could not set the corrupt bit: {w}",
                    self.path.display()
                );
            }
        }
        e
    }

    /// Whether the image is marked corrupt (then nothing may be written).
    pub(crate) fn marked_corrupt(&self) -> bool {
        self.header.incompatible & INCOMPAT_CORRUPT != 0
    }

    /// Decode and validate an L2 entry (at host offset `at`): inside the image, and not
    /// mapping guest data onto metadata.
    pub(crate) fn classify(&self, e: u64, at: u64) -> Result<Mapping, ImageError> {
        let m = mapping::classify(e, self.cs, u64::MAX, &self.path, at)?;
        if let Some(h) = m.owned().map(|h| h.0) {
            self.check_in_file(h, "L2 entry", at)?;
            if let Some(r) = self.regions.get(h >> self.cb) {
                return Err(self.overlap(
                    at,
                    format!("L2 entry {e:#x} maps guest data onto {r} at {h:#x}"),
                ));
            }
        }
        Ok(m)
    }

    /// Validate an L1 entry (at host offset `at`) and return its L2 table offset (0 =
    /// none): inside the image, and not pointing at metadata other than an L2 table.
    pub(crate) fn l1_target(&self, e: u64, at: u64) -> Result<u64, ImageError> {
        let off = mapping::l1_target(e, self.cs, u64::MAX, &self.path, at)?;
        if off != 0 {
            self.check_in_file(off, "L1 entry", at)?;
        }
        match self.regions.get(off >> self.cb) {
            Some(r) if off != 0 && r != Region::L2 => {
                Err(self.overlap(at, format!("L1 entry {e:#x} uses {r} as an L2 table")))
            }
            _ => Ok(off),
        }
    }

    /// Record every metadata structure the header, the refcount table and the L1 tables
    /// locate (the active L1's tables only when `active`: a shared open does not trust
    /// it), refusing any two that overlap or an L1 entry outside the image.
    pub(crate) fn build_regions(&mut self, active: bool) -> Result<(), ImageError> {
        let cb = self.cb;
        let clusters = |bytes: u64| bytes.div_ceil(self.cs);
        let h = &self.header;
        let mut claims = vec![
            (0, 1, Region::Header),
            (
                h.refcount_table_offset >> cb,
                u64::from(h.refcount_table_clusters),
                Region::RefTable,
            ),
            (
                h.l1_table_offset >> cb,
                clusters(u64::from(h.l1_size) * 8),
                Region::ActiveL1,
            ),
        ];
        for &e in &self.reftable {
            let off = e & super::refcount::REFT_OFFSET_MASK;
            if off != 0 {
                claims.push((off >> cb, 1, Region::RefBlock));
            }
        }
        if h.nb_snapshots > 0 {
            let bytes = super::snapshot::serialize_table(&self.snapshots).len() as u64;
            claims.push((h.snapshots_offset >> cb, clusters(bytes), Region::SnapTable));
        }
        let mut tables = Vec::new();
        for sn in &self.snapshots {
            claims.push((
                sn.l1_table_offset >> cb,
                clusters(u64::from(sn.l1_size) * 8),
                Region::SnapL1,
            ));
            tables.push((
                self.read_l1(sn.l1_table_offset, sn.l1_size)?,
                sn.l1_table_offset,
            ));
        }
        if active {
            tables.push((self.l1.clone(), self.header.l1_table_offset));
        }
        for (l1, at) in &tables {
            for (i, &e) in l1.iter().enumerate() {
                let at = at + i as u64 * 8;
                let l2 = mapping::l1_target(e, self.cs, self.host_end_bytes(), &self.path, at)?;
                if l2 != 0 {
                    claims.push((l2 >> cb, 1, Region::L2));
                }
            }
        }
        for (first, n, r) in claims {
            if let Err((c, other)) = self.regions.insert(first, n, r) {
                return Err(self.overlap(c << cb, format!("{r} overlaps {other} at cluster {c}")));
            }
        }
        Ok(())
    }

    /// Refuse a pointer to host offset `host` (at `at`, a `what`) that lies past the end
    /// the file had at open, unless this open allocated that cluster: a truncated image
    /// must not read as zeros there, nor become "valid" because an allocation moved the
    /// end of the image past it.
    pub(crate) fn check_in_file(
        &self,
        host: u64,
        what: &'static str,
        at: u64,
    ) -> Result<(), ImageError> {
        let c = host >> self.cb;
        if c < self.open_end || self.grown.contains(c) {
            return Ok(());
        }
        Err(self.corrupt(
            what,
            at,
            format!(
                "host offset {host:#x} is past the end of the file ({} bytes at open): the image is truncated or damaged",
                self.open_end << self.cb
            ),
        ))
    }
}

/// Clusters past the end the file had at open that this open allocated, as ranges.
#[derive(Default, Debug)]
pub(crate) struct Grown {
    ranges: BTreeMap<u64, u64>,
}

impl Grown {
    pub(crate) fn contains(&self, c: u64) -> bool {
        self.ranges
            .range(..=c)
            .next_back()
            .is_some_and(|(_, &end)| end > c)
    }

    /// Add clusters `start..end`, merging with adjacent or overlapping ranges.
    pub(crate) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let next: Vec<(u64, u64)> = self
            .ranges
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in next {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_conflicts() {
        let mut r = Regions::default();
        r.insert(0, 1, Region::Header).unwrap();
        r.insert(3, 2, Region::ActiveL1).unwrap();
        r.insert(7, 1, Region::L2).unwrap();
        r.insert(7, 1, Region::L2).unwrap();
        assert_eq!(r.insert(4, 1, Region::L2), Err((4, Region::ActiveL1)));
        assert_eq!(r.conflict(5, 2, None), None);
        assert_eq!(r.conflict(2, 3, None), Some((3, Region::ActiveL1)));
        assert_eq!(r.conflict(3, 2, Some(Region::ActiveL1)), None);
        assert_eq!(
            r.conflict(7, 1, Some(Region::RefBlock)),
            Some((7, Region::L2))
        );
        r.remove(7);
        assert_eq!(r.get(7), None);
    }

    #[test]
    fn grown_ranges_merge() {
        let mut g = Grown::default();
        g.insert(10, 12);
        g.insert(12, 13);
        g.insert(20, 21);
        g.insert(5, 11);
        assert!(g.contains(5) && g.contains(12) && g.contains(20));
        assert!(!g.contains(13) && !g.contains(4) && !g.contains(21));
        assert_eq!(g.ranges.len(), 2);
    }
}
