//! The qcow2 damage suite (issue 13): cases are generated from a real image's own layout
//! (parsed from its header, refcount table, L1/L2 tables and snapshot table), so every
//! metadata structure it has is damaged at several offsets — flip a bit of a pointer,
//! zero an entry, zero the structure, truncate the file inside it, swap an entry with the
//! next structure's — and then `island image info/export/changed/write` and
//! `island backup` run against it. The oracle, with qemu-img as the reader of record:
//! - nothing panics or dies by a signal;
//! - read-only commands never change the file;
//! - `export` exits 0 only with exactly the bytes `qemu-img convert` reads;
//! - `backup` exits 0 only if its restore is exactly what qemu reads, and a refused
//!   backup leaves the image as it was (bar the corrupt bit a refused write sets);
//! - `write` exits 0 only if qemu then reads the old contents with the write applied; a
//!   refused write leaves the image as it was (bar the corrupt bit).

use crate::common::cli::island;
use crate::common::qemu::{self, qemu_img, qemu_io, run};
use crate::common::tempdir;
use std::path::Path;
use std::process::Output;

fn be16(b: &[u8], off: usize) -> u64 {
    u64::from(u16::from_be_bytes(b[off..off + 2].try_into().unwrap()))
}
fn be32(b: &[u8], off: usize) -> u64 {
    u64::from(u32::from_be_bytes(b[off..off + 4].try_into().unwrap()))
}
fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}
const MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// One metadata structure (or data cluster) of the image: what, where, used bytes.
#[derive(Clone, Debug)]
struct Structure {
    what: String,
    offset: usize,
    len: usize,
}

/// Every structure the image's own metadata locates.
fn layout(b: &[u8]) -> Vec<Structure> {
    let cs = 1usize << be32(b, 20);
    let mut out = vec![Structure {
        what: "header".into(),
        offset: 0,
        len: be32(b, 100) as usize,
    }];
    let mut push = |what: String, offset: u64, len: usize| {
        if offset != 0 && len >= 8 && !out.iter().any(|s| s.offset == offset as usize) {
            out.push(Structure {
                what,
                offset: offset as usize,
                len,
            });
        }
    };
    let l1 = be64(b, 40);
    let l1_size = be32(b, 36) as usize;
    push("active L1".into(), l1, l1_size * 8);
    let rt = be64(b, 48) as usize;
    let rt_entries = (0..be32(b, 56) as usize * cs / 8)
        .take_while(|i| be64(b, rt + 8 * i) != 0)
        .count();
    push("refcount table".into(), rt as u64, rt_entries * 8);
    let file_clusters = b.len().div_ceil(cs);
    let refbits = 1usize << be32(b, 96);
    for i in 0..rt_entries {
        let used = (file_clusters * refbits / 8).clamp(8, cs);
        push(
            format!("refcount block {i}"),
            be64(b, rt + 8 * i) & MASK,
            used,
        );
    }
    let size = be64(b, 24) as usize;
    let l2_used = (size.div_ceil(cs) * 8).min(cs);
    let mut l1s = vec![("active".to_string(), l1 as usize, l1_size)];
    let (nb, mut at) = (be32(b, 60), be64(b, 64) as usize);
    let table = at;
    for _ in 0..nb {
        let (id_len, name_len) = (be16(b, at + 12) as usize, be16(b, at + 14) as usize);
        let extra = be32(b, at + 36) as usize;
        let name_at = at + 40 + extra + id_len;
        let name = String::from_utf8_lossy(&b[name_at..name_at + name_len]).into_owned();
        push(
            format!("snapshot {name} L1"),
            be64(b, at),
            be32(b, at + 8) as usize * 8,
        );
        l1s.push((
            format!("snapshot {name}"),
            be64(b, at) as usize,
            be32(b, at + 8) as usize,
        ));
        at = (name_at + name_len + 7) & !7;
    }
    push("snapshot table".into(), table as u64, at - table);
    for (view, off, n) in l1s {
        for i in 0..n {
            let l2 = be64(b, off + 8 * i) & MASK;
            push(format!("{view} L2 {i}"), l2, l2_used);
            if view == "active" && l2 != 0 {
                let data: Vec<u64> = (0..l2_used / 8)
                    .map(|j| be64(b, l2 as usize + 8 * j) & MASK)
                    .filter(|&d| d != 0)
                    .collect();
                if let (Some(&first), Some(&last)) = (data.first(), data.last()) {
                    push("first data cluster".into(), first, cs);
                    push("last data cluster".into(), last, cs);
                }
            }
        }
    }
    out
}

/// A qemu-made image with data, two internal snapshots and writes after each.
fn base(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("base.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("4M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 320k".into()]));
    run(qemu_img(["snapshot", "-c", "s1"]).arg(&p));
    run(&mut qemu_io(
        &p,
        &[
            "write -q -P 0x42 64k 64k".into(),
            "write -q -P 0x43 2M 128k".into(),
        ],
    ));
    run(qemu_img(["snapshot", "-c", "s2"]).arg(&p));
    run(&mut qemu_io(&p, &["write -q -P 0x44 0 64k".into()]));
    p
}

/// The damaged images for one structure: (case name, bytes).
fn damages(b: &[u8], s: &Structure, next: &Structure) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let last = (s.len - 8) & !7;
    for (pos_name, pos) in [("start", 0), ("middle", (s.len / 2) & !7), ("end", last)] {
        let p = s.offset + pos;
        for (bit_name, byte, bit) in [("cluster bit", 5, 0), ("low bit", 7, 0), ("high bit", 1, 7)]
        {
            let mut d = b.to_vec();
            d[p + byte] ^= 1 << bit;
            out.push((format!("flip {bit_name} at {pos_name}"), d));
        }
        let mut d = b.to_vec();
        d[p..p + 8].fill(0);
        out.push((format!("zero entry at {pos_name}"), d));
        let q = next.offset + pos.min(next.len - 8);
        let mut d = b.to_vec();
        let (x, y) = (d[p..p + 8].to_vec(), d[q..q + 8].to_vec());
        d[p..p + 8].copy_from_slice(&y);
        d[q..q + 8].copy_from_slice(&x);
        out.push((format!("swap {pos_name} with {}", next.what), d));
    }
    let mut d = b.to_vec();
    d[s.offset..s.offset + s.len].fill(0);
    out.push(("zero all".into(), d));
    out.push(("truncate inside".into(), b[..s.offset + s.len / 2].to_vec()));
    out.retain(|(_, d)| d != b);
    out
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn same_but_features(a: &[u8], b: &[u8]) -> bool {
    if a.len() < 80 || a.len() != b.len() {
        return a == b;
    }
    a[..72] == b[..72] && a[80..] == b[80..]
}

/// What qemu reads from the active layer (or snapshot `snap`), if it reads it.
fn qemu_read_view(img: &Path, snap: Option<&str>, out: &Path) -> Option<Vec<u8>> {
    let mut c = qemu_img(["convert", "-f", "qcow2", "-O", "raw"]);
    if let Some(s) = snap {
        c.arg("-l").arg(format!("snapshot.name={s}"));
    }
    let o = qemu::output_unlocked(c.arg(img).arg(out));
    let r = o.status.success().then(|| std::fs::read(out).unwrap());
    let _ = std::fs::remove_file(out);
    r
}

fn qemu_read(img: &Path, out: &Path) -> Option<Vec<u8>> {
    qemu_read_view(img, None, out)
}

/// What qemu reads from the user's snapshots s1 and s2.
fn snapshots_read(img: &Path, dir: &Path) -> Vec<Option<Vec<u8>>> {
    ["s1", "s2"]
        .iter()
        .map(|s| qemu_read_view(img, Some(s), &dir.join(format!("snap-{s}.raw"))))
        .collect()
}

/// Runs one case; returns the oracle violations found.
fn run_case(dir: &Path, repo: &str, n: usize, case: &str, bytes: &[u8]) -> Vec<String> {
    let mut bad = Vec::new();
    let img = dir.join(format!("c{n}.qcow2"));
    std::fs::write(&img, bytes).unwrap();
    let s = img.display().to_string();
    let raw = dir.join(format!("c{n}.raw"));
    // Without the qcow2 magic the file is a raw volume: backup reads it as such.
    let is_qcow2 = bytes.starts_with(b"QFI\xfb");
    let qemu_says = if is_qcow2 {
        qemu_read(&img, &dir.join(format!("q{n}.raw")))
    } else {
        Some(bytes.to_vec())
    };
    let snaps = snapshots_read(&img, dir);
    let died = |bad: &mut Vec<String>, what: &str, o: &Output| {
        if matches!(code(o), None | Some(101)) {
            bad.push(format!("{case}: {what} died: {o:?}"));
        }
    };

    let raw_s = raw.display().to_string();
    for args in [
        vec!["image", "info", &s, "--json"],
        vec!["image", "changed", &s, "--since", "s1", "--json"],
        vec!["image", "export", &s, &raw_s],
    ] {
        let o = island(&args);
        died(&mut bad, args[1], &o);
        if std::fs::read(&img).unwrap() != bytes {
            bad.push(format!("{case}: read-only `{}` changed the image", args[1]));
        }
        if args[1] == "export" && o.status.success() {
            let got = std::fs::read(&raw).unwrap();
            if qemu_says.as_deref() != Some(&got[..]) {
                bad.push(format!(
                    "{case}: export exited 0 with bytes qemu does not read"
                ));
            }
        }
    }

    let vol = format!("c{n}");
    let o = island(&["backup", "--repo", repo, "--volume", &vol, &s, "--json"]);
    died(&mut bad, "backup", &o);
    if o.status.success() {
        let id = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = dir.join(format!("r{n}.raw"));
        let out_s = out.display().to_string();
        let r = island(&[
            "restore",
            "--repo",
            repo,
            "--volume",
            &vol,
            "--snapshot",
            &id,
            &out_s,
        ]);
        let restored = r.status.success().then(|| std::fs::read(&out).unwrap());
        if restored.is_none() || restored != qemu_says {
            bad.push(format!(
                "{case}: backup exited 0 but its restore is not what qemu reads"
            ));
        }
        if snapshots_read(&img, dir) != snaps {
            bad.push(format!(
                "{case}: backup exited 0 but changed the user's snapshots"
            ));
        }
    } else if !same_but_features(&std::fs::read(&img).unwrap(), bytes) {
        bad.push(format!("{case}: a refused backup changed the image"));
    }

    std::fs::write(&img, bytes).unwrap();
    let input = dir.join("in.bin");
    std::fs::write(&input, vec![0x5au8; 4096]).unwrap();
    let o = island(&["image", "write", &s, "4096", &input.display().to_string()]);
    died(&mut bad, "write", &o);
    if o.status.success() {
        let want = qemu_says.map(|mut v| {
            v[4096..8192].fill(0x5a);
            v
        });
        let now = qemu_read(&img, &dir.join(format!("w{n}.raw")));
        // Where qemu cannot read the whole image (damage elsewhere), it must still read
        // the written range back.
        let written = || {
            let o =
                qemu::output_unlocked(&mut qemu_io(&img, &["read -q -P 0x5a 4096 4096".into()]));
            o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed")
        };
        let ok = match &want {
            Some(_) => now == want,
            None => written(),
        };
        if !ok {
            bad.push(format!(
                "{case}: write exited 0 but qemu then reads something else"
            ));
        }
        if snapshots_read(&img, dir) != snaps {
            bad.push(format!(
                "{case}: write exited 0 but changed the user's snapshots"
            ));
        }
    } else if !same_but_features(&std::fs::read(&img).unwrap(), bytes) {
        bad.push(format!("{case}: a refused write changed the image"));
    }
    for f in [img, raw] {
        let _ = std::fs::remove_file(f);
    }
    bad
}

/// Every structure of the image, every kind of damage at several offsets.
#[test]
fn damaged_qcow2_metadata_is_never_trusted() {
    let dir = tempdir();
    let good = std::fs::read(base(dir.path())).unwrap();
    let structures = layout(&good);
    for kind in [
        "header",
        "active L1",
        "refcount table",
        "refcount block 0",
        "snapshot table",
    ] {
        assert!(
            structures.iter().any(|s| s.what == kind),
            "layout misses {kind}: {structures:?}"
        );
    }
    assert!(
        structures
            .iter()
            .filter(|s| s.what.ends_with(" L1"))
            .count()
            >= 3
    );
    assert!(structures.iter().any(|s| s.what.contains("data cluster")));
    let repo = dir.path().join("repo").display().to_string();
    assert!(island(&["init", &repo]).status.success());
    let mut bad = Vec::new();
    let mut n = 0;
    for (i, s) in structures.iter().enumerate() {
        let next = &structures[(i + 1) % structures.len()];
        for (case, bytes) in damages(&good, s, next) {
            n += 1;
            let case = format!("{} ({:#x}): {case}", s.what, s.offset);
            bad.extend(run_case(dir.path(), &repo, n, &case, &bytes));
        }
    }
    eprintln!(
        "MEASURED damage suite: {n} cases over {} structures",
        structures.len()
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
