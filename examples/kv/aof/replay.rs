//! Replay at start (see "Replay" in the module docs).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::store::Store;

use super::*;

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records applied.
    pub records: u64,
    /// Bytes cut off the end (a torn, zero-filled or corrupt tail).
    pub truncated: u64,
    /// File length after replay.
    pub len: u64,
}

/// The replayed log, still open and locked, ready for
/// [`Journal::start`](super::Journal::start).
#[derive(Debug)]
pub struct Replayed {
    /// The log, opened for appending, under its lock.
    pub file: File,
    /// What replay found.
    pub report: ReplayReport,
}

/// Locks the log at `path` (creating it if missing, see [`file::lock`]),
/// replays it into `store`, and cuts off a torn or zero-filled tail after
/// the last complete record.
///
/// A bad record followed by valid ones is corruption, not a torn write:
/// replay refuses, naming the offset, unless `cut_corrupt_at` is that
/// offset, in which case the log is cut there (everything from it on is
/// dropped, with a warning).
///
/// # Errors
///
/// I/O errors, a log locked by another process, a file that is not a log,
/// or corruption followed by valid records.
pub fn replay(path: &Path, store: &Store, cut_corrupt_at: Option<u64>) -> io::Result<Replayed> {
    let mut file = file::lock(path)?;
    let total = file.metadata()?.len();
    let mut report = ReplayReport::default();
    let mut header = [0u8; 8];
    let got = read_full(&mut &file, &mut header)?;
    if got < 8 || &header != MAGIC {
        // An empty file, a torn header (the file was being created) or a
        // file whose blocks never reached the disk: nothing to lose.
        if MAGIC.starts_with(&header[..got]) && total < 8 || all_zero(&file, total)? {
            if total > 0 {
                log::warn!(
                    "{}: {total} bytes of a log that was being created, started afresh",
                    path.display()
                );
            }
            if total > 0 {
                file.set_len(0)?;
            }
            Write::write_all(&mut file, MAGIC)?;
            file.sync_all()?;
            report.truncated = total;
            report.len = MAGIC.len() as u64;
            return Ok(Replayed { file, report });
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a kv append-only log (bad header)",
                path.display()
            ),
        ));
    }
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let mut pos = 8u64;
    let mut payload = Vec::new();
    let mut bad = false;
    while pos < total {
        let mut frame = [0u8; 8];
        let got = read_full(&mut r, &mut frame)?;
        let len = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        // Every payload has at least its opcode: a zero length (what a
        // zero-filled block reads as, and its CRC of nothing is 0) is bad.
        if got < 8 || len == 0 || len > MAX_RECORD || total - pos < 8 + len as u64 {
            bad = true;
            break;
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)?;
        let rec = (crc32(&payload) == crc)
            .then(|| Record::decode(&payload))
            .flatten();
        let Some(rec) = rec else {
            bad = true;
            break;
        };
        store.replay(rec);
        report.records += 1;
        pos += 8 + len as u64;
    }
    drop(r);
    if bad {
        if let Some(next) = next_valid_record(&file, pos + 1, total)? {
            if cut_corrupt_at != Some(pos) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: corrupt record at offset {pos}, followed by valid records \
                         (the first at offset {next}, {} bytes in all after the corruption); \
                         refusing to drop them. To cut the log at offset {pos}, losing \
                         everything after it, start once with --aof-truncate-corrupt {pos}; \
                         or move the file aside to start empty",
                        path.display(),
                        total - pos
                    ),
                ));
            }
            log::warn!(
                "{}: cutting the log at the corrupt record at offset {pos} as asked \
                 (--aof-truncate-corrupt): {} bytes dropped, valid records among them",
                path.display(),
                total - pos
            );
        } else {
            log::warn!(
                "{}: cut a {} tail of {} bytes after the last complete record, at offset {pos}",
                path.display(),
                if all_zero_from(&file, pos, total)? {
                    "zero-filled"
                } else {
                    "torn"
                },
                total - pos
            );
        }
        report.truncated = total - pos;
        file.set_len(pos)?;
        file.sync_all()?;
    } else if let Some(at) = cut_corrupt_at {
        log::warn!(
            "{}: --aof-truncate-corrupt {at}: no corrupt record there, nothing cut",
            path.display()
        );
    }
    report.len = pos;
    Ok(Replayed { file, report })
}

/// True if the whole file is zero bytes (and not empty).
fn all_zero(file: &File, total: u64) -> io::Result<bool> {
    Ok(total > 0 && all_zero_from(file, 0, total)?)
}

/// True if bytes `from..total` of the file are all zero.
fn all_zero_from(file: &File, from: u64, total: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < total {
        let n = ((total - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The offset of the first complete, valid record that starts at or after
/// `from`, if any: a frame whose length fits in the file, whose payload
/// passes its checksum and decodes. Linear in the bytes examined for zeros
/// and noise (most offsets fail the length or opcode check at once).
fn next_valid_record(file: &File, from: u64, total: u64) -> io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    let mut buf = vec![0u8; WINDOW];
    let mut payload = Vec::new();
    let mut base = from;
    while base + 9 <= total {
        let n = ((total - base) as usize).min(WINDOW);
        file.read_exact_at(&mut buf[..n], base)?;
        let mut i = 0;
        // Offsets whose frame and opcode lie within the window.
        while i + 9 <= n {
            let at = base + i as u64;
            let len = u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            let op = buf[i + 8];
            if len != 0
                && len <= MAX_RECORD
                && at + 8 + len as u64 <= total
                && record::is_opcode(op)
            {
                let crc = u32::from_le_bytes(buf[i + 4..i + 8].try_into().expect("4 bytes"));
                payload.resize(len as usize, 0);
                file.read_exact_at(&mut payload, at + 8)?;
                if crc32(&payload) == crc && Record::decode(&payload).is_some() {
                    return Ok(Some(at));
                }
            }
            i += 1;
        }
        if base + n as u64 >= total {
            break;
        }
        base += i as u64;
    }
    Ok(None)
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
