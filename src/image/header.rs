//! The qcow2 header (version 3) and its extensions: parse, validate, serialize.
//!
//! Island keeps the header bytes it read (including fields past the ones it knows and
//! the extension area) and patches only the fields it changes, so rewriting the header
//! never drops information QEMU put there.

use super::error::ImageError;
use std::path::Path;

/// Header bytes 0–3: `QFI\xfb` (qcow2.rst "Header"; image.md §1).
pub(super) const MAGIC: u32 = 0x5146_49fb;
/// Length of the fixed v3 header Island writes (incl. compression type + padding).
pub(super) const HEADER_LEN_WRITTEN: u32 = 112;
/// A version 3 header is at least 104 bytes (up to and including `header_length`).
const V3_MIN_HEADER_LEN: u32 = 104;

/// Incompatible feature bit 0: refcounts may be stale (lazy refcounts left by a writer
/// that did not close); Island refuses such an image for writing (image.md §2).
pub(super) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: metadata is known to be corrupt; no writes until
/// `qemu-img check -r` (image.md §2 "Damage"). Island sets it as QEMU does.
pub(super) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible bit 2: guest data lives in an external data file (refused).
pub(super) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible bit 3: header byte 104 names a compression type other than zlib.
pub(super) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible bit 4: extended L2 entries with subclusters (refused).
pub(super) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// The incompatible bits Island knows; any other set bit is refused as unsupported.
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension type 0: end of the extension area (qcow2.rst "Header extensions").
pub(super) const EXT_END: u32 = 0;
/// Extension "Full disk encryption header pointer" (refused: encryption).
pub(super) const EXT_CRYPTO: u32 = 0x0537_be77;
/// Extension "External data file name" (refused).
pub(super) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Largest L1 table QEMU accepts (QCOW_MAX_L1_SIZE).
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts (QCOW_MAX_REFTABLE_SIZE).
pub(super) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Host offsets are 56-bit in L1/L2 entries.
pub(super) const MAX_HOST_OFFSET: u64 = 1 << 56;

/// The parsed header fields Island uses, plus the raw bytes for faithful rewriting.
/// Offsets in the field docs are byte offsets in the header (qcow2.rst "Header";
/// the values Island writes: image.md §1, what it accepts: image.md §2). Host offsets
/// are byte offsets in the image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Bytes 4–7: format version; only 3 is accepted (2 is refused with a conversion
    /// hint, image.md §2).
    pub version: u32,
    /// Bytes 20–23: log2 of the cluster size, 9..=21 (512 B to 2 MiB); every table and
    /// data cluster is this size.
    pub cluster_bits: u32,
    /// Bytes 24–31: virtual disk size in bytes (a multiple of 512 when Island writes it).
    pub size: u64,
    /// Bytes 36–39: number of 8-byte entries in the active L1 table; must cover `size`
    /// and stay under QEMU's 32 MiB limit.
    pub l1_size: u32,
    /// Bytes 40–47: host offset of the active L1 table (cluster aligned; image.md §1
    /// "Mapping tables").
    pub l1_table_offset: u64,
    /// Bytes 48–55: host offset of the refcount table (cluster aligned; image.md §1
    /// "Refcounts").
    pub refcount_table_offset: u64,
    /// Bytes 56–59: length of the refcount table in clusters (≥ 1, ≤ 8 MiB in bytes).
    pub refcount_table_clusters: u32,
    /// Bytes 60–63: number of internal snapshots in the snapshot table.
    pub nb_snapshots: u32,
    /// Bytes 64–71: host offset of the snapshot table (cluster aligned; 0 when there are
    /// no snapshots; image.md §1 "Snapshot table entries").
    pub snapshots_offset: u64,
    /// Bytes 72–79: incompatible feature bits (`INCOMPAT_*`): a reader that does not
    /// know a set bit must refuse the image.
    pub incompatible: u64,
    /// Bytes 80–87: compatible feature bits (bit 0 lazy refcounts): safe to ignore, kept
    /// as read.
    pub compatible: u64,
    /// Bytes 88–95: autoclear feature bits (bit 0 bitmaps, bit 1 raw external data): a
    /// writer that does not maintain what a bit stands for clears it (image.md §2).
    pub autoclear: u64,
    /// Bytes 96–99: log2 of the refcount width in bits, 0..=6 (1 to 64-bit refcounts;
    /// Island creates 4, i.e. 16-bit).
    pub refcount_order: u32,
    /// Bytes 100–103: length of the header in bytes (≥ 104, multiple of 8, within the
    /// first cluster); header extensions start right after it.
    pub header_length: u32,
    /// Header extensions as (type, data), in file order, the end marker excluded
    /// (qcow2.rst "Header extensions"; kept byte for byte, never rewritten).
    pub extensions: Vec<(u32, Vec<u8>)>,
    /// The first `header_length` bytes as read (or as built on create).
    raw: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// A fresh v3 header (16-bit refcounts, zlib, no extensions) for `create`.
    pub(crate) fn new(cluster_bits: u32, refcount_table_offset: u64) -> Header {
        let mut h = Header {
            version: 3,
            cluster_bits,
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: HEADER_LEN_WRITTEN,
            extensions: Vec::new(),
            raw: vec![0u8; HEADER_LEN_WRITTEN as usize],
        };
        h.sync_raw();
        h
    }

    /// Parse and validate a header from the start of the file. `buf` holds the first
    /// cluster (or the whole file if shorter); `file_len` bounds every offset.
    ///
    /// Stages, each refusing with the first problem it finds: the version and layout
    /// fields ([`fixed_fields`]), the feature bits ([`check_features`]), the tables the
    /// header points at ([`Header::check_tables`]), then the extension area
    /// ([`extensions`]).
    pub(crate) fn parse(path: &Path, buf: &[u8], file_len: u64) -> Result<Header, ImageError> {
        let errs = Errs { path };
        let f = fixed_fields(&errs, buf)?;
        check_features(&errs, buf, &f)?;
        let h = Header {
            version: 3,
            cluster_bits: f.cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible: f.incompatible,
            compatible: be64(buf, 80),
            autoclear: be64(buf, 88),
            refcount_order: f.refcount_order,
            header_length: f.header_length,
            extensions: Vec::new(),
            raw: buf[..f.header_length as usize].to_vec(),
        };
        h.check_tables(&errs, file_len)?;
        Ok(Header {
            extensions: extensions(&errs, buf, f.header_length as usize)?,
            ..h
        })
    }

    /// The L1 table, refcount table and snapshot table offsets and sizes: within QEMU's
    /// limits, cluster aligned and inside the file.
    fn check_tables(&self, errs: &Errs<'_>, file_len: u64) -> Result<(), ImageError> {
        let (path, cs) = (errs.path, 1u64 << self.cluster_bits);
        let (size, l1_size) = (self.size, self.l1_size);
        // L1 must cover the virtual size and stay within QEMU's limit.
        let l2_entries = cs / 8;
        let needed_l1 = size.div_ceil(cs).div_ceil(l2_entries);
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(errs.corrupt(36, format!("L1 size {l1_size} exceeds the 32 MiB limit")));
        }
        if u64::from(l1_size) < needed_l1 {
            return Err(errs.corrupt(
                36,
                format!("L1 size {l1_size} too small for virtual size {size}"),
            ));
        }
        check_table(
            path,
            "L1 table",
            self.l1_table_offset,
            u64::from(l1_size) * 8,
            cs,
            file_len,
        )?;
        if self.refcount_table_clusters == 0 {
            return Err(errs.corrupt(56, "refcount table has zero clusters".into()));
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(errs.corrupt(
                56,
                format!("refcount table of {rt_bytes} bytes exceeds the 8 MiB limit"),
            ));
        }
        check_table(
            path,
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        let (nb_snapshots, snapshots_offset) = (self.nb_snapshots, self.snapshots_offset);
        if nb_snapshots > super::snapshot::MAX_SNAPSHOTS {
            return Err(errs.corrupt(60, format!("{nb_snapshots} snapshots exceed the limit")));
        }
        if nb_snapshots > 0
            && (snapshots_offset % cs != 0 || snapshots_offset == 0 || snapshots_offset >= file_len)
        {
            return Err(errs.corrupt(
                64,
                format!("snapshot table offset {snapshots_offset:#x} invalid"),
            ));
        }
        Ok(())
    }

    /// Copy the typed fields into the raw header bytes.
    fn sync_raw(&mut self) {
        let r = &mut self.raw;
        r[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        r[4..8].copy_from_slice(&self.version.to_be_bytes());
        r[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        r[24..32].copy_from_slice(&self.size.to_be_bytes());
        r[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        r[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        r[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        r[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        r[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        r[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        r[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
        r[80..88].copy_from_slice(&self.compatible.to_be_bytes());
        r[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
        r[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        r[100..104].copy_from_slice(&self.header_length.to_be_bytes());
    }

    /// The fixed header bytes to write at offset 0 (extensions are left as they are on
    /// disk: Island never changes them, and on create it writes the end marker itself).
    pub(crate) fn encode(&mut self) -> Vec<u8> {
        self.sync_raw();
        self.raw.clone()
    }
}

/// The error constructors of [`Header::parse`]: every refusal names the image.
struct Errs<'a> {
    path: &'a Path,
}

impl Errs<'_> {
    fn corrupt(&self, offset: u64, reason: String) -> ImageError {
        ImageError::Corrupt {
            path: self.path.to_path_buf(),
            what: "header",
            offset,
            reason,
        }
    }

    fn unsupported(&self, feature: String) -> ImageError {
        ImageError::Unsupported {
            path: self.path.to_path_buf(),
            feature,
        }
    }
}

/// The fields the later stages depend on, checked by [`fixed_fields`].
struct Fixed {
    cluster_bits: u32,
    header_length: u32,
    incompatible: u64,
    refcount_order: u32,
}

/// Magic, version, length, backing file, cluster size, encryption, header length and
/// refcount order: what decides whether (and how) the rest can be read at all.
fn fixed_fields(errs: &Errs<'_>, buf: &[u8]) -> Result<Fixed, ImageError> {
    if buf.len() < 72 {
        return Err(errs.corrupt(
            0,
            format!("file too short for a qcow2 header ({} bytes)", buf.len()),
        ));
    }
    let magic = be32(buf, 0);
    if magic != MAGIC {
        return Err(errs.corrupt(0, format!("bad magic {magic:#010x}, not a qcow2 image")));
    }
    let version = be32(buf, 4);
    if version == 2 {
        return Err(errs.unsupported(
            "qcow2 version 2 (convert with `qemu-img amend -f qcow2 -o compat=1.1`)".into(),
        ));
    }
    if version != 3 {
        return Err(errs.unsupported(format!("qcow2 version {version}")));
    }
    if buf.len() < V3_MIN_HEADER_LEN as usize {
        return Err(errs.corrupt(0, "file too short for a version 3 header".into()));
    }
    let backing_file_offset = be64(buf, 8);
    if backing_file_offset != 0 {
        return Err(errs.unsupported("backing file".into()));
    }
    let cluster_bits = be32(buf, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(errs.corrupt(20, format!("cluster_bits {cluster_bits} outside 9..=21")));
    }
    let cs = 1u64 << cluster_bits;
    let crypt = be32(buf, 32);
    if crypt != 0 {
        return Err(errs.unsupported(format!("encryption (crypt_method {crypt})")));
    }
    let header_length = be32(buf, 100);
    if header_length < V3_MIN_HEADER_LEN || u64::from(header_length) > cs || header_length % 8 != 0
    {
        return Err(errs.corrupt(100, format!("header_length {header_length} invalid")));
    }
    if buf.len() < header_length as usize {
        return Err(errs.corrupt(100, "file shorter than header_length".into()));
    }
    Ok(Fixed {
        cluster_bits,
        header_length,
        incompatible: be64(buf, 72),
        refcount_order: be32(buf, 96),
    })
}

/// Incompatible feature bits, the compression type and the refcount order: unknown or
/// unsupported features are refused, never misread (image.md §2).
fn check_features(errs: &Errs<'_>, buf: &[u8], f: &Fixed) -> Result<(), ImageError> {
    let incompatible = f.incompatible;
    if incompatible & !INCOMPAT_KNOWN != 0 {
        return Err(errs.unsupported(format!(
            "unknown incompatible feature bits {:#x}",
            incompatible & !INCOMPAT_KNOWN
        )));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(errs.unsupported("external data file".into()));
    }
    if incompatible & INCOMPAT_EXTL2 != 0 {
        return Err(errs.unsupported("extended L2 entries (subclusters)".into()));
    }
    let compression_type = if f.header_length > 104 { buf[104] } else { 0 };
    if compression_type != 0 {
        return Err(errs.unsupported(format!(
            "compression type {compression_type} (only zlib is known)"
        )));
    }
    if incompatible & INCOMPAT_COMPRESSION != 0 {
        return Err(errs.corrupt(
            72,
            "compression-type bit set with zlib compression type".into(),
        ));
    }
    let refcount_order = f.refcount_order;
    if refcount_order > 6 {
        return Err(errs.corrupt(96, format!("refcount_order {refcount_order} > 6")));
    }
    Ok(())
}

/// The header extensions from `header_length` to the end marker, each 8-byte aligned
/// (qcow2.rst "Header extensions"); encryption and external data file are refused.
fn extensions(
    errs: &Errs<'_>,
    buf: &[u8],
    header_length: usize,
) -> Result<Vec<(u32, Vec<u8>)>, ImageError> {
    let mut extensions = Vec::new();
    let mut at = header_length;
    loop {
        if at + 8 > buf.len() {
            return Err(errs.corrupt(
                at as u64,
                "header extension runs past the first cluster".into(),
            ));
        }
        let ty = be32(buf, at);
        let len = be32(buf, at + 4) as usize;
        if ty == EXT_END {
            return Ok(extensions);
        }
        let data_end = at
            .checked_add(8)
            .and_then(|x| x.checked_add(len))
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| {
                errs.corrupt(
                    at as u64,
                    format!("header extension {ty:#x} length {len} too long"),
                )
            })?;
        match ty {
            EXT_CRYPTO => return Err(errs.unsupported("encryption header extension".into())),
            EXT_DATA_FILE => return Err(errs.unsupported("external data file extension".into())),
            _ => {}
        }
        extensions.push((ty, buf[at + 8..data_end].to_vec()));
        at = (data_end + 7) & !7;
    }
}

/// A table must be cluster aligned and lie inside the file.
pub(super) fn check_table(
    path: &Path,
    what: &'static str,
    offset: u64,
    bytes: u64,
    cs: u64,
    file_len: u64,
) -> Result<(), ImageError> {
    if bytes == 0 {
        return Ok(());
    }
    let bad = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        what,
        offset,
        reason,
    };
    if offset == 0 || offset % cs != 0 {
        return Err(bad("offset not cluster aligned or zero".into()));
    }
    let end = offset
        .checked_add(bytes)
        .ok_or_else(|| bad("size overflows".into()))?;
    if end > file_len.div_ceil(cs) * cs {
        return Err(bad(format!(
            "table of {bytes} bytes ends past the end of the file ({file_len})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut h = Header::new(16, 65536);
        h.size = 1 << 30;
        h.l1_size = 2;
        h.l1_table_offset = 3 * 65536;
        let mut bytes = h.encode();
        bytes.resize(65536, 0); // end-of-extensions marker is zeros
        let p = Path::new("t.qcow2");
        let back = Header::parse(p, &bytes, 4 * 65536).unwrap();
        assert_eq!(back, h);
        assert_eq!(&bytes[0..4], b"QFI\xfb");
        assert_eq!(be32(&bytes, 100), 112);
    }

    #[test]
    fn refuses_bad_inputs() {
        let mut h = Header::new(16, 65536);
        let mut bytes = h.encode();
        bytes.resize(65536, 0);
        let p = Path::new("t.qcow2");
        let mut v2 = bytes.clone();
        v2[7] = 2;
        assert!(matches!(
            Header::parse(p, &v2, 1 << 20),
            Err(ImageError::Unsupported { .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(
            Header::parse(p, &magic, 1 << 20),
            Err(ImageError::Corrupt { .. })
        ));
        let mut backing = bytes.clone();
        backing[15] = 1;
        assert!(matches!(
            Header::parse(p, &backing, 1 << 20),
            Err(ImageError::Unsupported { .. })
        ));
        let mut unknown = bytes.clone();
        unknown[72] = 0x80;
        assert!(matches!(
            Header::parse(p, &unknown, 1 << 20),
            Err(ImageError::Unsupported { .. })
        ));
        let mut rt_past_eof = bytes.clone();
        rt_past_eof[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            Header::parse(p, &rt_past_eof, 1 << 20),
            Err(ImageError::Corrupt { .. })
        ));
        assert!(Header::parse(p, &bytes[..50], 50).is_err());
    }
}
