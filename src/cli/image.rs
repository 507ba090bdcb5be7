//! `island image …`: create, inspect, snapshot, diff, export and import qcow2 images.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use island::image::{CacheMode, CreateOptions, ExtentKind, Image, OpenMode};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Bytes moved per request by export/import/write.
const CHUNK: usize = 4 << 20;

/// `island image [--cache MODE] COMMAND`.
#[derive(Args)]
pub(super) struct ImageArgs {
    /// Host cache mode for the image file, like QEMU's `-t`: `writeback` (page cache) or
    /// `direct` (O_DIRECT, QEMU's `none`; refused on filesystems without O_DIRECT).
    #[arg(long, global = true, value_enum, default_value_t = Cache::Writeback)]
    cache: Cache,
    #[command(subcommand)]
    cmd: ImageCmd,
}

/// The `--cache` values.
#[derive(Clone, Copy, ValueEnum)]
enum Cache {
    Writeback,
    Direct,
}

impl From<Cache> for CacheMode {
    fn from(c: Cache) -> CacheMode {
        match c {
            Cache::Writeback => CacheMode::Writeback,
            Cache::Direct => CacheMode::Direct,
        }
    }
}

#[derive(Subcommand)]
pub(super) enum ImageCmd {
    /// Create a new qcow2 image.
    Create {
        path: PathBuf,
        /// Virtual size: bytes, or with a K/M/G/T suffix (binary units).
        #[arg(value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 65536, value_parser = parse_size_u32)]
        cluster_size: u32,
    },
    /// Show the image's header facts.
    Info {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        /// Read even if a VM is writing the image (QEMU's -U).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Manage internal snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// List guest ranges changed since a snapshot, from pointer tables only.
    Changed {
        path: PathBuf,
        #[arg(long)]
        since: String,
        /// Compare against this snapshot instead of the active layer.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Write the guest contents (or a snapshot's) to a sparse raw file.
    Export {
        path: PathBuf,
        out: PathBuf,
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Create an image from a raw file or device; all-zero clusters stay unallocated.
    Import {
        raw: PathBuf,
        path: PathBuf,
        #[arg(long, default_value_t = 65536, value_parser = parse_size_u32)]
        cluster_size: u32,
    },
    /// Write INPUT's bytes (`-` = stdin) at OFFSET.
    Write {
        path: PathBuf,
        #[arg(value_parser = parse_size)]
        offset: u64,
        input: PathBuf,
    },
}

#[derive(Subcommand)]
pub(super) enum SnapshotCmd {
    /// Take a snapshot of the active layer.
    Create(SnapArgs),
    /// Delete a snapshot (by id or name).
    Delete(SnapArgs),
    /// Revert the active layer to a snapshot.
    Revert(SnapArgs),
    /// List snapshots.
    List {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(short = 'U', long)]
        force_share: bool,
    },
}

#[derive(Args)]
pub(super) struct SnapArgs {
    path: PathBuf,
    name: String,
}

/// Parse a byte count with an optional binary K/M/G/T suffix ("64K", "10G", "512").
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected bytes or a number with K/M/G/T"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn parse_size_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_size(s)?).map_err(|_| format!("{s:?} too large"))
}

fn ro_mode(force_share: bool) -> OpenMode {
    if force_share {
        OpenMode::ReadOnlyShared
    } else {
        OpenMode::ReadOnly
    }
}

fn open(path: &PathBuf, mode: OpenMode, cache: CacheMode) -> Result<Image> {
    Ok(Image::open_with(path, mode, cache)?)
}

pub(super) fn run(args: ImageArgs) -> Result<()> {
    let cache = CacheMode::from(args.cache);
    match args.cmd {
        ImageCmd::Create {
            path,
            size,
            cluster_size,
        } => Image::create_with(&path, &CreateOptions { size, cluster_size }, cache)?.close()?,
        ImageCmd::Info {
            path,
            json,
            force_share,
        } => {
            let info = open(&path, ro_mode(force_share), cache)?.info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("image: {}", info.path);
                println!("virtual size: {} bytes", info.size);
                println!("file size: {} bytes", info.file_size);
                println!("cluster size: {}", info.cluster_size);
                println!("qcow2 version: {}", info.version);
                println!("refcount bits: {}", info.refcount_bits);
                println!("snapshots: {}", info.snapshots);
                println!("allocated clusters: {}", info.allocated_clusters);
                println!(
                    "features: incompatible {:#x}, compatible {:#x}, autoclear {:#x}",
                    info.incompatible_features, info.compatible_features, info.autoclear_features
                );
            }
        }
        ImageCmd::Snapshot(s) => snapshot(s, cache)?,
        ImageCmd::Changed {
            path,
            since,
            to,
            json,
            force_share,
        } => {
            let img = open(&path, ro_mode(force_share), cache)?;
            let ranges = img.changed_ranges(&since, to.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&ranges)?);
            } else {
                for r in &ranges {
                    println!(
                        "{}\t{}\t{}",
                        r.offset,
                        r.length,
                        if r.zero { "zero" } else { "data" }
                    );
                }
            }
        }
        ImageCmd::Export {
            path,
            out,
            snapshot,
            force_share,
        } => export(
            &path,
            &out,
            snapshot.as_deref(),
            ro_mode(force_share),
            cache,
        )?,
        ImageCmd::Import {
            raw,
            path,
            cluster_size,
        } => import(&raw, &path, cluster_size, cache)?,
        ImageCmd::Write {
            path,
            offset,
            input,
        } => write(&path, offset, &input, cache)?,
    }
    Ok(())
}

fn snapshot(cmd: SnapshotCmd, cache: CacheMode) -> Result<()> {
    match cmd {
        SnapshotCmd::Create(a) => {
            let img = open(&a.path, OpenMode::ReadWrite, cache)?;
            img.create_snapshot(&a.name)?;
            img.close()?;
        }
        SnapshotCmd::Delete(a) => {
            let img = open(&a.path, OpenMode::ReadWrite, cache)?;
            img.delete_snapshot(&a.name)?;
            img.close()?;
        }
        SnapshotCmd::Revert(a) => {
            let img = open(&a.path, OpenMode::ReadWrite, cache)?;
            img.revert_snapshot(&a.name)?;
            img.close()?;
        }
        SnapshotCmd::List {
            path,
            json,
            force_share,
        } => {
            let snaps = open(&path, ro_mode(force_share), cache)?.snapshots();
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                println!(
                    "{:<6} {:<24} {:>20} {:>16}",
                    "ID", "NAME", "DATE (unix)", "DISK SIZE"
                );
                for s in snaps {
                    println!(
                        "{:<6} {:<24} {:>20} {:>16}",
                        s.id, s.name, s.date_sec, s.disk_size
                    );
                }
            }
        }
    }
    Ok(())
}

/// Sparse raw export: the output is sized first, then only data extents are written.
fn export(
    path: &PathBuf,
    out: &PathBuf,
    snap: Option<&str>,
    mode: OpenMode,
    cache: CacheMode,
) -> Result<()> {
    let img = open(path, mode, cache)?;
    let size = match snap {
        Some(s) => {
            let info = img
                .snapshots()
                .into_iter()
                .find(|i| i.id == s || i.name == s);
            match info {
                Some(i) => i.disk_size,
                None => bail!("{}: no snapshot with id or name {s:?}", path.display()),
            }
        }
        None => img.size(),
    };
    let f = File::create(out).with_context(|| format!("create {}", out.display()))?;
    f.set_len(size)
        .with_context(|| format!("resize {}", out.display()))?;
    let mut buf = vec![0u8; CHUNK];
    for e in img.extents(snap, 0, size)? {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let mut pos = e.offset;
        let end = e.offset + e.length;
        while pos < end {
            let n = (CHUNK as u64).min(end - pos) as usize;
            match snap {
                Some(s) => img.read_snapshot_at(s, &mut buf[..n], pos)?,
                None => img.read_at(&mut buf[..n], pos)?,
            }
            f.write_all_at(&buf[..n], pos)
                .with_context(|| format!("write {} at {pos}", out.display()))?;
            pos += n as u64;
        }
    }
    f.sync_all()
        .with_context(|| format!("sync {}", out.display()))?;
    Ok(())
}

fn import(raw: &PathBuf, path: &PathBuf, cluster_size: u32, cache: CacheMode) -> Result<()> {
    let mut src = File::open(raw).with_context(|| format!("open {}", raw.display()))?;
    let size = src
        .seek(SeekFrom::End(0))
        .with_context(|| format!("size of {}", raw.display()))?;
    let img = Image::create_with(path, &CreateOptions { size, cluster_size }, cache)?;
    let cs = cluster_size as usize;
    let mut buf = vec![0u8; CHUNK.max(cs)];
    let mut pos = 0u64;
    while pos < size {
        let n = (buf.len() as u64).min(size - pos) as usize;
        src.read_exact_at(&mut buf[..n], pos)
            .with_context(|| format!("read {} at {pos}", raw.display()))?;
        for (k, c) in buf[..n].chunks(cs).enumerate() {
            if c.iter().any(|&b| b != 0) {
                img.write_at(c, pos + (k * cs) as u64)?;
            }
        }
        pos += n as u64;
    }
    img.close()?;
    Ok(())
}

fn write(path: &PathBuf, offset: u64, input: &PathBuf, cache: CacheMode) -> Result<()> {
    let img = open(path, OpenMode::ReadWrite, cache)?;
    let mut reader: Box<dyn Read> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(input).with_context(|| format!("open {}", input.display()))?)
    };
    let mut buf = vec![0u8; CHUNK];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = reader
                .read(&mut buf[n..])
                .with_context(|| format!("read {}", input.display()))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        img.write_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    img.close()?;
    std::io::stdout().flush().ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
