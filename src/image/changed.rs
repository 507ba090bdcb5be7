//! Changed-block tracking and allocation maps from the pointer tables alone.
//!
//! Two views (a snapshot and the active layer, or two snapshots) share L2 tables and
//! data clusters until one of them is written (copy-on-write). So an L1 entry pointing at
//! the same L2 table in both views means the whole range it maps is unchanged, without
//! reading that table; otherwise L2 entries are compared one by one: the same host
//! cluster, or "reads as zero" in both, means unchanged. Guest data is never read, so the
//! cost is O(L1 size + changed L2 tables).

use super::cache::Kind;
use super::error::ImageError;
use super::mapping::Mapping;
use super::state::State;
use super::{ChangedRange, Extent, ExtentKind};

type View = (std::sync::Arc<Vec<u64>>, u64, u64);
/// An L2 table's offset and entries, or None where the L1 entry is empty.
type L2Table = Option<(u64, Vec<u64>)>;

/// Append a range, merging with the previous one when adjacent with the same `zero`.
fn push(out: &mut Vec<ChangedRange>, offset: u64, length: u64, zero: bool) {
    if let Some(last) = out.last_mut() {
        if last.offset + last.length == offset && last.zero == zero {
            last.length += length;
            return;
        }
    }
    out.push(ChangedRange {
        offset,
        length,
        zero,
    });
}

impl State {
    /// L2 table entries behind one L1 entry (None when there is no table).
    fn l2_entries(&self, l1: &[u64], l1_off: u64, i: usize) -> Result<L2Table, ImageError> {
        let Some(&e) = l1.get(i) else {
            return Ok(None);
        };
        let l2 = self.l1_target(e, l1_off + i as u64 * 8)?;
        if l2 == 0 {
            return Ok(None);
        }
        let mut cache = self.cache();
        let t = cache.get(&*self.file, &self.path, l2, Kind::L2)?;
        Ok(Some((
            l2,
            t.chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        )))
    }

    fn mapping_at(&self, table: &L2Table, j: usize) -> Result<Mapping, ImageError> {
        match table {
            None => Ok(Mapping::Unallocated),
            Some((l2, t)) => self.classify(t[j], l2 + j as u64 * 8),
        }
    }

    /// See [`super::Image::changed_ranges`].
    pub(crate) fn changed_ranges(
        &self,
        from: &View,
        to: &View,
    ) -> Result<Vec<ChangedRange>, ImageError> {
        let (fl1, foff, fsize) = from;
        let (tl1, toff, tsize) = to;
        let cs = self.cs;
        let per_l2 = cs / 8;
        let span = cs * per_l2;
        let mut out = Vec::new();
        let l1_count = tsize.div_ceil(span);
        for i in 0..l1_count as usize {
            let base = i as u64 * span;
            let fe = fl1.get(i).copied().unwrap_or(0) & super::mapping::OFFSET_MASK;
            let te = tl1.get(i).copied().unwrap_or(0) & super::mapping::OFFSET_MASK;
            if fe == te && base + span <= *fsize {
                if fe != 0 {
                    self.l1_target(tl1[i], toff + i as u64 * 8)?;
                }
                continue;
            }
            let ft = if fe == 0 {
                None
            } else {
                self.l2_entries(fl1, *foff, i)?
            };
            let tt = if te == 0 {
                None
            } else {
                self.l2_entries(tl1, *toff, i)?
            };
            for j in 0..per_l2 as usize {
                let g = base + j as u64 * cs;
                if g >= *tsize {
                    break;
                }
                let tm = self.mapping_at(&tt, j)?;
                let changed = if g + cs > *fsize {
                    true
                } else {
                    let fm = self.mapping_at(&ft, j)?;
                    match (fm, tm) {
                        (Mapping::Data { host: a, .. }, Mapping::Data { host: b, .. }) => a != b,
                        (Mapping::Compressed, _) | (_, Mapping::Compressed) => {
                            return Err(ImageError::Unsupported {
                                path: self.path.clone(),
                                feature: format!("compressed cluster at guest offset {g}"),
                            })
                        }
                        (a, b) => a.reads_zero() != b.reads_zero(),
                    }
                };
                if changed {
                    let len = cs.min(tsize - g);
                    push(&mut out, g, len, tm.reads_zero());
                }
            }
        }
        Ok(out)
    }

    /// See [`super::Image::extents`].
    pub(crate) fn extents(
        &self,
        l1: &[u64],
        l1_off: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, ImageError> {
        let cs = self.cs;
        let per_l2 = cs / 8;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let mut table: Option<(usize, L2Table)> = None;
        while pos < end {
            let gc = pos / cs;
            let i = (gc / per_l2) as usize;
            let j = (gc % per_l2) as usize;
            if table.as_ref().is_none_or(|(ti, _)| *ti != i) {
                table = Some((i, self.l2_entries(l1, l1_off, i)?));
            }
            let m = match &table {
                Some((_, t)) => self.mapping_at(t, j)?,
                None => Mapping::Unallocated,
            };
            let kind = match m {
                Mapping::Data { .. } | Mapping::Compressed => ExtentKind::Data,
                Mapping::Zero { .. } => ExtentKind::Zero,
                Mapping::Unallocated => ExtentKind::Unallocated,
            };
            let n = (cs - pos % cs).min(end - pos);
            match out.last_mut() {
                Some(last) if last.kind == kind && last.offset + last.length == pos => {
                    last.length += n
                }
                _ => out.push(Extent {
                    offset: pos,
                    length: n,
                    kind,
                }),
            }
            pos += n;
        }
        Ok(out)
    }
}
