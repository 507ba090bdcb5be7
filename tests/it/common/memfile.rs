//! In-memory `ImageFile`s: a plain one for fast model tests and corrupt inputs, and one
//! that logs every write and sync so a test can replay a power loss.

use island::image::ImageFile;
use std::io;
use std::sync::Mutex;

fn out_of_file(offset: u64, len: usize, size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} past end of {size}-byte file"),
    )
}

fn read_from(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| out_of_file(offset, buf.len(), data.len()))?;
    let end = start
        .checked_add(buf.len())
        .filter(|&e| e <= data.len())
        .ok_or_else(|| out_of_file(offset, buf.len(), data.len()))?;
    buf.copy_from_slice(&data[start..end]);
    Ok(())
}

fn write_into(data: &mut Vec<u8>, buf: &[u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    let end = start + buf.len();
    if end > 1 << 34 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "test file limited to 16 GiB",
        ));
    }
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(buf);
    Ok(())
}

/// A file held in memory; reads past the end fail like `read_exact_at`.
#[derive(Default)]
pub struct MemFile {
    data: Mutex<Vec<u8>>,
}

impl MemFile {
    pub fn new(bytes: Vec<u8>) -> MemFile {
        MemFile {
            data: Mutex::new(bytes),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl ImageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_from(&self.data.lock().unwrap(), buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_into(&mut self.data.lock().unwrap(), buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        self.data.lock().unwrap().resize(len, 0);
        Ok(())
    }
}

/// One storage operation as the engine issued it.
#[derive(Clone, Debug)]
pub enum LogOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

/// A storage that records every operation on top of an initial image, so any prefix of
/// the history can be replayed as "what the disk held when the power went out".
pub struct LogFile {
    inner: Mutex<(Vec<u8>, Vec<LogOp>)>,
}

impl LogFile {
    pub fn new(initial: Vec<u8>) -> LogFile {
        LogFile {
            inner: Mutex::new((initial, Vec::new())),
        }
    }

    /// Number of operations logged so far: a position in the history.
    pub fn position(&self) -> usize {
        self.inner.lock().unwrap().1.len()
    }

    pub fn log(&self) -> Vec<LogOp> {
        self.inner.lock().unwrap().1.clone()
    }
}

impl ImageFile for LogFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_from(&self.inner.lock().unwrap().0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap();
        write_into(&mut g.0, buf, offset)?;
        g.1.push(LogOp::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.lock().unwrap().1.push(LogOp::Sync);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.lock().unwrap().0.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let n = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        let mut g = self.inner.lock().unwrap();
        g.0.resize(n, 0);
        g.1.push(LogOp::SetLen(len));
        Ok(())
    }
}
