//! The writer thread, the journal that feeds it and the tickets that
//! acknowledge its writes (see "Writing" in the module docs).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::store::{PersistError, Store};

use super::*;

/// Most bytes the writer encodes per batch before writing.
const MAX_BATCH_BYTES: usize = 8 << 20;

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
pub(super) struct Slot {
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

pub(super) enum Msg {
    Record(Record, Arc<Slot>),
    RewriteDone(Result<File, String>),
    Sync(Arc<Slot>),
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

/// The sending side of the log: cheap to use under a shard lock.
#[derive(Debug)]
pub struct Journal {
    tx: Mutex<Sender<Msg>>,
    /// Read by the tests, which wait for compactions to finish.
    #[cfg_attr(not(test), allow(dead_code))]
    compaction: Arc<Compaction>,
}

/// Where compaction stands, as the writer reports it.
#[derive(Debug, Default)]
pub(super) struct Compaction {
    /// A rewrite has started and not finished.
    pub(super) running: AtomicBool,
    /// Rewrites that replaced the log.
    pub(super) done: AtomicU64,
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
        let compaction = Arc::new(Compaction::default());
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
            compaction: compaction.clone(),
            cfg,
        };
        std::thread::Builder::new()
            .name("kv-aof".into())
            .spawn(move || writer.run(rx))?;
        Ok(Journal {
            tx: Mutex::new(tx),
            compaction,
        })
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

    /// Whether a compaction is under way, and how many have replaced the
    /// log so far. Exact once [`sync`](Self::sync) has returned twice in a
    /// row with nothing else logged: the writer decides whether to compact
    /// right after the batch it just acknowledged.
    #[cfg(test)]
    pub fn compaction(&self) -> (bool, u64) {
        (
            self.compaction.running.load(Ordering::Acquire),
            self.compaction.done.load(Ordering::Acquire),
        )
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

pub(super) struct Writer {
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) base: u64,
    pub(super) rewrite_at: u64,
    pub(super) rewriting: Option<Rewrite>,
    last_sync: Instant,
    pub(super) dirty: bool,
    pub(super) store: Weak<Store>,
    pub(super) tx: Sender<Msg>,
    pub(super) compaction: Arc<Compaction>,
    pub(super) cfg: Config,
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
}
