//! Optional persistence: an append-only log of every mutation, replayed at
//! start, compacted in the background.
//!
//! # File format
//!
//! An 8-byte header (`WKVAOF1\n`), then records:
//!
//! ```text
//! len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! ```
//!
//! Payloads start with an opcode byte: `1` set (flags u32, expiry u64,
//! stored-at u64, key length u16, key, value), `2` delete (key), `3` touch
//! (expiry u64, key), `4` flush (time u64, 0 = immediate). Numbers are
//! little-endian; times are absolute Unix seconds. Every storage command
//! (set, add, replace, append, prepend, cas, incr, decr) is logged as a `set`
//! of the resulting item, so replay never depends on earlier values.
//!
//! # Writing
//!
//! One dedicated writer thread owns the file. A connection applies its
//! mutation to the store and, still under the shard lock, queues the record
//! (so records of one key are in the order the store applied them); then it
//! releases the lock and waits for its [`Ticket`]. The writer takes every
//! queued record at once, writes them with one `write`, and with
//! `--fsync always` makes them durable with one `fdatasync` before
//! acknowledging any of them (group commit). With `everysec` it acknowledges
//! after the write and syncs once a second; with `no` it leaves syncing to
//! the kernel. A failed write or sync truncates the file back to the last
//! good record and fails every ticket of the batch: those clients get
//! `SERVER_ERROR`, never an acknowledgement, and the keys are dropped from
//! memory.
//!
//! # Compaction
//!
//! When the file is larger than twice its size after the last rewrite and
//! than a minimum (64 MiB by default), the writer starts a rewrite thread
//! that dumps the live dataset to `PATH.rewrite` and syncs it. Meanwhile the
//! writer keeps appending to the old file and also keeps a copy of what it
//! appended. When the dump is done, the writer appends that copy to the new
//! file, syncs it, renames it over the old one and syncs the directory.
//! Replaying the copied tail over the dump is correct because every record
//! sets a key's complete state.
//!
//! # Replay
//!
//! A torn or corrupt *last* record (a crash during a write) is cut off with a
//! warning. A bad record followed by more data is corruption in the middle of
//! the file: the server refuses to start rather than silently drop the rest.
//!
//! Evictions are not logged: after a restart the same memory limit evicts
//! again, possibly other items (it is a cache).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::store::{PersistError, Store, Value};

/// The file header.
pub const MAGIC: &[u8; 8] = b"WKVAOF1\n";
/// Largest payload replay accepts; anything bigger is corruption.
const MAX_RECORD: u32 = 1 << 30;
/// Most bytes the writer encodes per batch before writing.
const MAX_BATCH_BYTES: usize = 8 << 20;

const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_TOUCH: u8 = 3;
const OP_FLUSH: u8 = 4;

/// A logged mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The complete new state of a key.
    Set {
        /// Key.
        key: Box<[u8]>,
        /// Value.
        value: Value,
        /// Client flags.
        flags: u32,
        /// Absolute expiry (0 = never).
        exptime: u64,
        /// When it was stored (for delayed flushes).
        stored: u64,
    },
    /// A key removed.
    Delete {
        /// Key.
        key: Box<[u8]>,
    },
    /// A key's new expiry.
    Touch {
        /// Key.
        key: Box<[u8]>,
        /// Absolute expiry (0 = never).
        exptime: u64,
    },
    /// `flush_all`: at `at` (0 = immediately).
    Flush {
        /// Absolute time, 0 for now.
        at: u64,
    },
}

impl Record {
    /// Appends the framed record (length, checksum, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Set {
                key,
                value,
                flags,
                exptime,
                stored,
            } => {
                out.push(OP_SET);
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&exptime.to_le_bytes());
                out.extend_from_slice(&stored.to_le_bytes());
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
            Record::Delete { key } => {
                out.push(OP_DELETE);
                out.extend_from_slice(key);
            }
            Record::Touch { key, exptime } => {
                out.push(OP_TOUCH);
                out.extend_from_slice(&exptime.to_le_bytes());
                out.extend_from_slice(key);
            }
            Record::Flush { at } => {
                out.push(OP_FLUSH);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        let payload_len = (out.len() - start - 8) as u32;
        let crc = crc32(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a payload (without its frame).
    pub fn decode(p: &[u8]) -> Option<Record> {
        let (&op, rest) = p.split_first()?;
        let u64_at = |b: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        match op {
            OP_SET => {
                let flags = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
                let exptime = u64_at(rest, 4)?;
                let stored = u64_at(rest, 12)?;
                let klen = u16::from_le_bytes(rest.get(20..22)?.try_into().ok()?) as usize;
                let key = rest.get(22..22 + klen)?;
                let value = &rest[22 + klen..];
                Some(Record::Set {
                    key: key.into(),
                    value: Value::from(value),
                    flags,
                    exptime,
                    stored,
                })
            }
            OP_DELETE => Some(Record::Delete { key: rest.into() }),
            OP_TOUCH => Some(Record::Touch {
                exptime: u64_at(rest, 0)?,
                key: rest[8..].into(),
            }),
            OP_FLUSH if rest.len() == 8 => Some(Record::Flush {
                at: u64_at(rest, 0)?,
            }),
            _ => None,
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// When the log is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// `fdatasync` before every acknowledgement (grouped across clients).
    Always,
    /// Acknowledge after the write; `fdatasync` once a second.
    Everysec,
    /// Never sync explicitly.
    No,
}

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

/// Who to wake when a ticket completes: a fiber or a plain thread.
#[derive(Debug)]
enum Waker {
    Fiber(weave::Fiber),
    Thread(std::thread::Thread),
}

impl Waker {
    fn current() -> Waker {
        match weave::fiber::try_current() {
            Some(f) => Waker::Fiber(f),
            None => Waker::Thread(std::thread::current()),
        }
    }

    fn wake(&self) {
        match self {
            Waker::Fiber(f) => f.unpark(),
            Waker::Thread(t) => t.unpark(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    done: AtomicBool,
    result: Mutex<Option<Result<(), String>>>,
    waker: Waker,
}

impl Slot {
    fn complete(&self, r: Result<(), String>) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.done.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A pending acknowledgement from the log writer.
#[derive(Debug)]
pub struct Ticket(Arc<Slot>);

impl Ticket {
    fn new() -> Ticket {
        Ticket(Arc::new(Slot {
            done: AtomicBool::new(false),
            result: Mutex::new(None),
            waker: Waker::current(),
        }))
    }

    /// Waits until the writer has logged (and, with `--fsync always`,
    /// synced) the record.
    ///
    /// # Errors
    ///
    /// The write or sync failed; the mutation must not be acknowledged.
    pub fn wait(self) -> Result<(), PersistError> {
        // WAIT: the one place a connection waits for the log writer. On a
        // fiber this parks only the fiber (weave::park; the writer thread
        // unparks it), on a plain thread it parks the thread. If weave grows
        // a oneshot channel, it can replace Slot/Waker here unchanged for
        // callers.
        while !self.0.done.load(Ordering::Acquire) {
            weave::park();
        }
        self.0
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Ok(()))
            .map_err(PersistError)
    }
}

enum Msg {
    Record(Record, Arc<Slot>),
    RewriteDone(Result<File, String>),
    Sync(Arc<Slot>),
}

/// Settings of the log writer.
#[derive(Debug, Clone)]
pub struct Config {
    /// The log file.
    pub path: PathBuf,
    /// Sync policy.
    pub fsync: Fsync,
    /// No compaction below this size.
    pub rewrite_min: u64,
}

/// The sending side of the log: cheap to use under a shard lock.
#[derive(Debug)]
pub struct Journal {
    tx: Mutex<Sender<Msg>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Record(r, _) => f.debug_tuple("Record").field(r).finish(),
            Msg::RewriteDone(r) => f.debug_tuple("RewriteDone").field(&r.is_ok()).finish(),
            Msg::Sync(_) => f.write_str("Sync"),
        }
    }
}

impl Journal {
    /// Opens the log (already replayed, `len` bytes long) for appending and
    /// starts the writer thread.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or the thread cannot start.
    pub fn start(cfg: Config, len: u64, store: &Arc<Store>) -> io::Result<Journal> {
        let file = OpenOptions::new().append(true).open(&cfg.path)?;
        // A compaction cut short by a crash leaves its temp file; the log
        // itself is complete without it.
        match std::fs::remove_file(rewrite_path(&cfg.path)) {
            Ok(()) => log::info!("{}: removed an unfinished compaction", cfg.path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "{}: cannot remove an unfinished compaction: {e}",
                cfg.path.display()
            ),
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            file,
            len,
            base: len,
            rewrite_at: cfg.rewrite_min.max(2 * len),
            rewriting: None,
            last_sync: Instant::now(),
            dirty: false,
            store: Arc::downgrade(store),
            tx: tx.clone(),
            cfg,
        };
        std::thread::Builder::new()
            .name("kv-aof".into())
            .spawn(move || writer.run(rx))?;
        Ok(Journal { tx: Mutex::new(tx) })
    }

    /// Queues a record; the returned ticket says when it is logged.
    pub fn submit(&self, rec: Record) -> Ticket {
        let t = Ticket::new();
        self.send(Msg::Record(rec, t.0.clone()), &t);
        t
    }

    /// Syncs everything written so far (used at shutdown).
    ///
    /// # Errors
    ///
    /// The sync failed.
    pub fn sync(&self) -> Result<(), PersistError> {
        let t = Ticket::new();
        self.send(Msg::Sync(t.0.clone()), &t);
        t.wait()
    }

    fn send(&self, msg: Msg, t: &Ticket) {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
            .is_ok();
        if !sent {
            t.0.complete(Err("log writer is gone".into()));
        }
    }
}

struct Rewrite {
    /// What was appended to the old file since the dump started.
    tail: Vec<u8>,
}

struct Writer {
    file: File,
    len: u64,
    base: u64,
    rewrite_at: u64,
    rewriting: Option<Rewrite>,
    last_sync: Instant,
    dirty: bool,
    store: Weak<Store>,
    tx: Sender<Msg>,
    cfg: Config,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::with_capacity(1 << 16);
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        loop {
            let first = if self.cfg.fsync == Fsync::Everysec && self.dirty {
                let wait = Duration::from_secs(1).saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            };
            let mut syncs = Vec::new();
            let mut next = first;
            while let Some(m) = next {
                match m {
                    Msg::Record(rec, slot) => {
                        rec.encode(&mut buf);
                        slots.push(slot);
                    }
                    Msg::Sync(slot) => syncs.push(slot),
                    Msg::RewriteDone(r) => self.finish_rewrite(r),
                }
                next = if buf.len() < MAX_BATCH_BYTES {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !slots.is_empty() {
                let r = self.append(&buf);
                for s in slots.drain(..) {
                    s.complete(r.clone());
                }
                buf.clear();
                if buf.capacity() > MAX_BATCH_BYTES {
                    buf.shrink_to(1 << 16);
                }
            }
            if self.dirty
                && (!syncs.is_empty()
                    || (self.cfg.fsync == Fsync::Everysec
                        && self.last_sync.elapsed() >= Duration::from_secs(1)))
            {
                if let Err(e) = self.file.sync_data() {
                    log::error!("{}: fdatasync failed: {e}", self.cfg.path.display());
                }
                self.dirty = false;
                self.last_sync = Instant::now();
            }
            for s in syncs {
                s.complete(Ok(()));
            }
            self.maybe_rewrite();
        }
    }

    /// Writes a batch (and syncs it with `always`); on failure cuts the
    /// file back to its last good length.
    fn append(&mut self, buf: &[u8]) -> Result<(), String> {
        let r = self.file.write_all(buf).and_then(|()| {
            if self.cfg.fsync == Fsync::Always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.dirty = self.cfg.fsync != Fsync::Always;
                if let Some(rw) = &mut self.rewriting {
                    rw.tail.extend_from_slice(buf);
                }
                Ok(())
            }
            Err(e) => {
                log::error!("{}: write failed: {e}", self.cfg.path.display());
                if let Err(e2) = self.file.set_len(self.len) {
                    log::error!(
                        "{}: cannot cut back a failed write: {e2}",
                        self.cfg.path.display()
                    );
                }
                Err(e.to_string())
            }
        }
    }

    fn maybe_rewrite(&mut self) {
        if self.rewriting.is_some() || self.len < self.rewrite_at {
            return;
        }
        let Some(store) = self.store.upgrade() else {
            return;
        };
        let tmp = rewrite_path(&self.cfg.path);
        let tx = self.tx.clone();
        log::info!(
            "{}: compacting ({} bytes, {} after the last rewrite)",
            self.cfg.path.display(),
            self.len,
            self.base
        );
        self.rewriting = Some(Rewrite { tail: Vec::new() });
        let spawned = std::thread::Builder::new()
            .name("kv-aof-rewrite".into())
            .spawn(move || {
                let r = dump(&store, &tmp).map_err(|e| e.to_string());
                let _ = tx.send(Msg::RewriteDone(r));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the log rewrite thread: {e}");
            self.rewriting = None;
            self.rewrite_at = self.len.saturating_mul(2);
        }
    }

    fn finish_rewrite(&mut self, r: Result<File, String>) {
        let Some(rw) = self.rewriting.take() else {
            return;
        };
        let tmp = rewrite_path(&self.cfg.path);
        let done = r.and_then(|mut f| {
            f.write_all(&rw.tail)
                .and_then(|()| f.sync_data())
                .and_then(|()| std::fs::rename(&tmp, &self.cfg.path))
                .and_then(|()| sync_dir(&self.cfg.path))
                .and_then(|()| f.metadata())
                .map(|m| (f, m.len()))
                .map_err(|e| e.to_string())
        });
        match done {
            Ok((f, len)) => {
                log::info!(
                    "{}: compacted {} -> {len} bytes",
                    self.cfg.path.display(),
                    self.len
                );
                self.file = f;
                self.len = len;
                self.base = len;
                self.rewrite_at = self.cfg.rewrite_min.max(2 * len);
                self.dirty = false;
            }
            Err(e) => {
                log::error!("{}: compaction failed: {e}", self.cfg.path.display());
                let _ = std::fs::remove_file(&tmp);
                self.rewrite_at = self.len.saturating_mul(2);
            }
        }
    }
}

fn rewrite_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".rewrite");
    PathBuf::from(p)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes the live dataset to a fresh log at `tmp`, synced, and returns it
/// opened for appending.
fn dump(store: &Store, tmp: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(MAGIC)?;
    let mut buf = Vec::new();
    let pending = store.pending_flush();
    if pending != 0 {
        Record::Flush { at: pending }.encode(&mut buf);
    }
    let mut err = None;
    store.for_each_live(|key, item, stored| {
        if err.is_some() {
            return;
        }
        Record::Set {
            key: key.into(),
            value: item.value.clone(),
            flags: item.flags,
            exptime: item.exptime,
            stored,
        }
        .encode(&mut buf);
        if buf.len() > 1 << 20 {
            if let Err(e) = w.write_all(&buf) {
                err = Some(e);
            }
            buf.clear();
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    w.write_all(&buf)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    drop(f);
    OpenOptions::new().append(true).open(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Clock, Mode};
    use std::sync::atomic::AtomicU64;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kv-aof-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn store() -> Arc<Store> {
        Arc::new(Store::with_clock(
            64 << 20,
            Clock::Manual(AtomicU64::new(1_700_000_000)),
        ))
    }

    fn cfg(path: &Path, fsync: Fsync) -> Config {
        Config {
            path: path.to_owned(),
            fsync,
            rewrite_min: 64 << 20,
        }
    }

    fn open(path: &Path, fsync: Fsync) -> Arc<Store> {
        let st = store();
        let rep = replay(path, &st).unwrap();
        st.attach_journal(Journal::start(cfg(path, fsync), rep.len, &st).unwrap());
        st
    }

    fn get(st: &Store, k: &str) -> Option<Vec<u8>> {
        st.get(k.as_bytes()).map(|i| i.value.to_vec())
    }

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn records_round_trip() {
        let recs = vec![
            Record::Set {
                key: b"k"[..].into(),
                value: Value::from(&b"v\r\n\0"[..]),
                flags: 9,
                exptime: 77,
                stored: 5,
            },
            Record::Delete {
                key: b"k"[..].into(),
            },
            Record::Touch {
                key: b"kk"[..].into(),
                exptime: 3,
            },
            Record::Flush { at: 0 },
        ];
        for r in recs {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert_eq!(len, buf.len() - 8);
            assert_eq!(Record::decode(&buf[8..]), Some(r));
        }
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[99]), None);
        assert_eq!(Record::decode(&[OP_SET, 1, 2]), None);
    }

    #[test]
    fn mutations_survive_restart() {
        let d = tmpdir("restart");
        let p = d.join("a.aof");
        {
            let st = open(&p, Fsync::Always);
            st.store(Mode::Set, b"a", Value::from(&b"1"[..]), 3, 0)
                .unwrap();
            st.store(Mode::Set, b"b", Value::from(&b"2"[..]), 0, 0)
                .unwrap();
            st.store(Mode::Append, b"a", Value::from(&b"x"[..]), 0, 0)
                .unwrap();
            st.store(Mode::Set, b"n", Value::from(&b"41"[..]), 0, 0)
                .unwrap();
            st.delta(b"n", true, 1, None, 0).unwrap();
            st.delete(b"b", 0).unwrap();
            st.touch(b"a", 100).unwrap();
        }
        let st = open(&p, Fsync::Always);
        assert_eq!(get(&st, "a").as_deref(), Some(&b"1x"[..]));
        assert_eq!(st.get(b"a").unwrap().flags, 3);
        assert_eq!(st.get(b"a").unwrap().exptime, st.now() + 100);
        assert_eq!(get(&st, "b"), None);
        assert_eq!(get(&st, "n").as_deref(), Some(&b"42"[..]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn flush_is_replayed_in_order() {
        let d = tmpdir("flush");
        let p = d.join("f.aof");
        {
            let st = open(&p, Fsync::No);
            st.store(Mode::Set, b"old", Value::from(&b"1"[..]), 0, 0)
                .unwrap();
            st.flush(0).unwrap();
            st.store(Mode::Set, b"new", Value::from(&b"2"[..]), 0, 0)
                .unwrap();
            st.journal().unwrap().sync().unwrap();
        }
        let st = open(&p, Fsync::No);
        assert_eq!(get(&st, "old"), None);
        assert_eq!(get(&st, "new").as_deref(), Some(&b"2"[..]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_last_record_is_cut() {
        let d = tmpdir("torn");
        let p = d.join("t.aof");
        {
            let st = open(&p, Fsync::Always);
            for i in 0..10 {
                st.store(
                    Mode::Set,
                    format!("k{i}").as_bytes(),
                    Value::from(&b"value"[..]),
                    0,
                    0,
                )
                .unwrap();
            }
        }
        let full = std::fs::metadata(&p).unwrap().len();
        // A half-written record: a frame promising more than follows.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        let mut rec = Vec::new();
        Record::Set {
            key: b"torn"[..].into(),
            value: Value::from(vec![7u8; 100]),
            flags: 0,
            exptime: 0,
            stored: 0,
        }
        .encode(&mut rec);
        f.write_all(&rec[..rec.len() / 2]).unwrap();
        drop(f);
        let st = store();
        let rep = replay(&p, &st).unwrap();
        assert_eq!(rep.records, 10);
        assert_eq!(rep.truncated, (rec.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), full);
        assert_eq!(get(&st, "k9").as_deref(), Some(&b"value"[..]));
        assert_eq!(get(&st, "torn"), None);

        // A complete last record with a bad checksum is cut too.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 0xff;
        f.write_all(&rec).unwrap();
        drop(f);
        let st = store();
        let rep = replay(&p, &st).unwrap();
        assert_eq!(rep.records, 10);
        assert_eq!(rep.truncated, rec.len() as u64);
        assert_eq!(get(&st, "torn"), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_in_the_middle_refuses_to_start() {
        let d = tmpdir("mid");
        let p = d.join("m.aof");
        {
            let st = open(&p, Fsync::Always);
            for i in 0..3 {
                st.store(
                    Mode::Set,
                    format!("k{i}").as_bytes(),
                    Value::from(&b"v"[..]),
                    0,
                    0,
                )
                .unwrap();
            }
        }
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[8 + 8 + 2] ^= 0x55; // inside the first record's payload
        std::fs::write(&p, &bytes).unwrap();
        let err = replay(&p, &store()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::write(&p, b"not a log at all").unwrap();
        assert!(replay(&p, &store()).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn compaction_keeps_live_data_and_shrinks() {
        let d = tmpdir("compact");
        let p = d.join("c.aof");
        let st = store();
        let rep = replay(&p, &st).unwrap();
        let mut c = cfg(&p, Fsync::Always);
        c.rewrite_min = 64 << 10;
        st.attach_journal(Journal::start(c, rep.len, &st).unwrap());
        let big = Value::from(vec![b'x'; 1000]);
        for round in 0..20 {
            for i in 0..50 {
                st.store(Mode::Set, format!("k{i}").as_bytes(), big.clone(), round, 0)
                    .unwrap();
            }
        }
        st.delete(b"k0", 0).unwrap();
        // ~1 MB was written; compactions keep the file near the live size.
        st.journal().unwrap().sync().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len < 400_000, "log not compacted: {len} bytes");
        drop(st);
        let st2 = store();
        replay(&p, &st2).unwrap();
        assert_eq!(get(&st2, "k0"), None);
        for i in 1..50 {
            let it = st2.get(format!("k{i}").as_bytes()).unwrap();
            assert_eq!(it.flags, 19);
            assert_eq!(it.value.len(), 1000);
        }
        // A compaction may still be running on its own thread; its temp file
        // is renamed over the log when it finishes (bounded wait).
        let tmp = rewrite_path(&p);
        for _ in 0..1000 {
            if !tmp.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!tmp.exists(), "a compaction left its temp file behind");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn start_removes_an_unfinished_compaction() {
        let d = tmpdir("stale-rewrite");
        let p = d.join("s.aof");
        let st = store();
        let rep = replay(&p, &st).unwrap();
        std::fs::write(rewrite_path(&p), b"half a compaction").unwrap();
        st.attach_journal(Journal::start(cfg(&p, Fsync::Always), rep.len, &st).unwrap());
        assert!(!rewrite_path(&p).exists());
        drop(st);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn write_failure_is_reported_and_not_acknowledged() {
        // /dev/full accepts opens and fails every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let st = store();
        st.attach_journal(Journal::start(cfg(full, Fsync::Always), 0, &st).unwrap());
        let r = st.store(Mode::Set, b"k", Value::from(&b"v"[..]), 0, 0);
        assert!(r.is_err(), "a failed log write must not be acknowledged");
        assert_eq!(get(&st, "k"), None, "the unlogged value is not served");
        assert!(
            st.delete(b"nothing", 0).is_ok(),
            "a no-op delete logs nothing"
        );
    }
}
