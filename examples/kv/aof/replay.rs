//! Replay at start (see "Replay" in the module docs).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::store::Store;

use super::*;

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records applied.
    pub records: u64,
    /// Bytes cut off the end (a torn or corrupt last record).
    pub truncated: u64,
    /// File length after replay.
    pub len: u64,
}

/// Replays the log at `path` into `store` (creating the file if missing),
/// cutting off a torn or corrupt last record.
///
/// # Errors
///
/// I/O errors, a file that is not a log, or a bad record in the middle.
pub fn replay(path: &Path, store: &Store) -> io::Result<ReplayReport> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let total = file.metadata()?.len();
    if total == 0 {
        file.write_all(MAGIC)?;
        file.sync_all()?;
        return Ok(ReplayReport {
            len: MAGIC.len() as u64,
            ..Default::default()
        });
    }
    let mut r = BufReader::with_capacity(1 << 20, &mut file);
    let mut header = [0u8; 8];
    if total < 8 || r.read_exact(&mut header).is_err() || &header != MAGIC {
        if total < 8 && MAGIC.starts_with(&read_prefix(path, total as usize)?) {
            // Torn header: the file was being created.
            drop(r);
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            return Ok(ReplayReport {
                len: 8,
                truncated: total,
                ..Default::default()
            });
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a kv append-only log (bad header)",
                path.display()
            ),
        ));
    }
    let mut pos = 8u64;
    let mut report = ReplayReport::default();
    let mut payload = Vec::new();
    loop {
        let mut frame = [0u8; 8];
        let got = read_full(&mut r, &mut frame)?;
        if got == 0 {
            break;
        }
        let len = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        let rest = total - pos;
        if got < 8 || len > MAX_RECORD || rest < 8 + len as u64 {
            // Torn: the record runs past the end of the file.
            break;
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)?;
        let rec = if crc32(&payload) == crc {
            Record::decode(&payload)
        } else {
            None
        };
        match rec {
            Some(rec) => {
                store.replay(rec);
                report.records += 1;
                pos += 8 + len as u64;
            }
            None if rest == 8 + len as u64 => break,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: corrupt record at offset {pos} followed by {} more bytes; \
                         refusing to drop them (move the file aside to start empty)",
                        path.display(),
                        rest - 8 - len as u64
                    ),
                ))
            }
        }
    }
    drop(r);
    if pos < total {
        report.truncated = total - pos;
        log::warn!(
            "{}: cut {} bytes of a torn or corrupt last record at offset {pos}",
            path.display(),
            report.truncated
        );
        file.set_len(pos)?;
        file.sync_all()?;
    }
    report.len = pos;
    Ok(report)
}

fn read_prefix(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    File::open(path)?.read_exact(&mut v)?;
    Ok(v)
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
