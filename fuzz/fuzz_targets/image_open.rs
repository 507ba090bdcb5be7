//! Fuzz the qcow2 header and table parsers: arbitrary bytes opened read-only must yield
//! an image or an error, never a panic, whatever is read from it afterwards.
#![no_main]

use island::image::{Image, ImageFile};
use libfuzzer_sys::fuzz_target;
use std::io;
use std::sync::Arc;

/// The fuzz input as a read-only image file.
struct Bytes(Vec<u8>);

impl ImageFile for Bytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.0.len());
        let src = start
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past end of input"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "fuzz input is read-only",
        ))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "fuzz input is read-only",
        ))
    }
}

/// Reads a few guest ranges of one view: start, middle and end, clipped to the size.
fn probe(img: &Image, snapshot: Option<&str>, size: u64) {
    let mut buf = vec![0u8; 65536];
    for at in [0, size / 2, size.saturating_sub(4096)] {
        let len = (size - at.min(size)).min(buf.len() as u64) as usize;
        let buf = &mut buf[..len];
        let _ = match snapshot {
            None => img.read_at(buf, at),
            Some(s) => img.read_snapshot_at(s, buf, at),
        };
    }
    let _ = img.extents(snapshot, 0, size.min(1 << 30));
}

fuzz_target!(|data: &[u8]| {
    let Ok(img) = Image::open_on(Arc::new(Bytes(data.to_vec())), "fuzz.qcow2", false) else {
        return;
    };
    let _ = img.info();
    probe(&img, None, img.size());
    for s in img.snapshots().iter().take(4) {
        probe(&img, Some(&s.id), s.disk_size);
        let _ = img.changed_ranges(&s.id, None);
    }
});
