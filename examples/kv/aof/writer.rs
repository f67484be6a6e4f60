//! The writer thread, the journal that feeds it and the tickets that
//! acknowledge its writes (see "Writing" in the module docs).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{PersistError, Store};

use super::*;

/// Most bytes the writer encodes per batch before writing.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// How far the CAS uniques jump at each start: uniques handed out just
/// before a crash may not have reached the disk (`everysec`, `no`), and must
/// not be handed out again. Far more than kv can hand out in the writes a
/// crash can lose.
const CAS_RESTART_GAP: u64 = 1 << 32;

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
    pub(super) fn complete(&self, r: Result<(), String>) {
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
    RewriteDone(Result<Box<dyn LogFile>, String>),
    Sync(Arc<Slot>),
    /// Compact now (unless a compaction runs); the slot completes when it
    /// is done.
    #[cfg_attr(not(test), allow(dead_code))]
    Compact(Arc<Slot>),
    Shutdown,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Record(r, _) => f.debug_tuple("Record").field(r).finish(),
            Msg::RewriteDone(r) => f.debug_tuple("RewriteDone").field(&r.is_ok()).finish(),
            Msg::Sync(_) => f.write_str("Sync"),
            Msg::Compact(_) => f.write_str("Compact"),
            Msg::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The writer's health, shared with the journal (and shown by `stats`).
#[derive(Debug, Default)]
pub struct Health {
    /// An fsync failed in `everysec` mode and none has succeeded since:
    /// writes are refused.
    pub sync_failed: AtomicBool,
    /// Failed fsyncs.
    pub fsync_errors: AtomicU64,
    /// Failed writes.
    pub write_errors: AtomicU64,
    /// Mutations refused because the last fsync failed.
    pub refused: AtomicU64,
    /// A compaction has started and not finished.
    pub rewriting: AtomicBool,
    /// Compactions that replaced the log.
    pub rewrites: AtomicU64,
}

/// The sending side of the log: cheap to use under a shard lock (a send on
/// a lock-free channel; no process-wide lock).
#[derive(Debug)]
pub struct Journal {
    tx: Sender<Msg>,
    health: Arc<Health>,
    writer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Takes over the log (replayed, still locked, `len` bytes long) and
    /// starts the writer thread. First it logs (and syncs) a CAS floor
    /// above every unique the store may have handed out before, see
    /// [`Record::CasFloor`].
    ///
    /// # Errors
    ///
    /// The floor cannot be written or the thread cannot start.
    pub fn start(cfg: Config, file: File, len: u64, store: &Arc<Store>) -> io::Result<Journal> {
        let mut file = cfg.fs.adopt(&cfg.path, file);
        let floor = store.cas_high().saturating_add(CAS_RESTART_GAP);
        let mut buf = Vec::new();
        Record::CasFloor { floor }.encode(&mut buf);
        file.append(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                io::Error::new(e.kind(), format!("writing {}: {e}", cfg.path.display()))
            })?;
        store.raise_cas(floor);
        let len = len + buf.len() as u64;
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
        let health = Arc::new(Health::default());
        let writer = Writer {
            file,
            len,
            base: len,
            rewrite_at: cfg.rewrite_min.max(2 * len),
            rewriting: None,
            compact_waiters: Vec::new(),
            last_sync: Instant::now(),
            dirty: false,
            store: Arc::downgrade(store),
            tx: tx.clone(),
            health: health.clone(),
            cfg,
        };
        let writer = std::thread::Builder::new()
            .name("kv-aof".into())
            .spawn(move || writer.run(rx))?;
        Ok(Journal {
            tx,
            health,
            writer: Some(writer),
        })
    }

    /// Refuses writes while the last fsync failed (`everysec`): like Redis,
    /// a log that cannot be synced must not keep acknowledging writes.
    ///
    /// # Errors
    ///
    /// Writes are refused; the client gets `SERVER_ERROR`.
    pub fn check(&self) -> Result<(), PersistError> {
        if self.health.sync_failed.load(Ordering::Acquire) {
            self.health.refused.fetch_add(1, Ordering::Relaxed);
            return Err(PersistError(
                "refused: the last fsync of the log failed, writes resume once one succeeds".into(),
            ));
        }
        Ok(())
    }

    /// The writer's health and counters.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether a compaction is under way, and how many have replaced the
    /// log so far. Exact once [`sync`](Self::sync) has returned twice in a
    /// row with nothing else logged: the writer decides whether to compact
    /// right after the batch it just acknowledged.
    #[cfg(test)]
    pub fn compaction(&self) -> (bool, u64) {
        (
            self.health.rewriting.load(Ordering::Acquire),
            self.health.rewrites.load(Ordering::Acquire),
        )
    }

    /// Compacts the log now (unless a compaction is running) and waits
    /// until the running or new compaction is done.
    ///
    /// # Errors
    ///
    /// The compaction failed.
    #[cfg(test)]
    pub fn compact(&self) -> Result<(), PersistError> {
        let t = Ticket::new();
        self.send(Msg::Compact(t.0.clone()), &t);
        t.wait()
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
        if self.tx.send(msg).is_err() {
            t.0.complete(Err("log writer is gone".into()));
        }
    }
}

impl Drop for Journal {
    /// Stops the writer (after it wrote, and with `everysec` synced, what
    /// was queued) and waits for it, so its file and lock are released.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(w) = self.writer.take() {
            // The writer itself may drop the last store reference (and so
            // this journal) if it cannot start a compaction thread.
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

pub(super) struct Writer {
    pub(super) file: Box<dyn LogFile>,
    pub(super) len: u64,
    pub(super) base: u64,
    pub(super) rewrite_at: u64,
    pub(super) rewriting: Option<Rewrite>,
    /// Who waits for the running compaction (`Journal::compact`).
    pub(super) compact_waiters: Vec<Arc<Slot>>,
    last_sync: Instant,
    /// Bytes written and not yet synced (`everysec`, `no`).
    pub(super) dirty: bool,
    pub(super) store: Weak<Store>,
    pub(super) tx: Sender<Msg>,
    pub(super) health: Arc<Health>,
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
            let mut shutdown = false;
            let mut next = first;
            while let Some(m) = next {
                match m {
                    Msg::Record(rec, slot) => {
                        rec.encode(&mut buf);
                        slots.push(slot);
                    }
                    Msg::Sync(slot) => syncs.push(slot),
                    Msg::RewriteDone(r) => self.finish_rewrite(r),
                    Msg::Compact(slot) => {
                        self.compact_waiters.push(slot);
                        self.start_rewrite();
                    }
                    Msg::Shutdown => shutdown = true,
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
            let mut synced = Ok(());
            if self.dirty
                && (!syncs.is_empty()
                    || shutdown
                    || (self.cfg.fsync == Fsync::Everysec
                        && self.last_sync.elapsed() >= Duration::from_secs(1)))
            {
                synced = self.sync();
            }
            for s in syncs {
                s.complete(synced.clone());
            }
            if shutdown {
                for s in self.compact_waiters.drain(..) {
                    s.complete(Err("the log was closed during the compaction".into()));
                }
                return;
            }
            self.maybe_rewrite();
        }
    }

    /// Syncs what was written. After a failure the data stays "dirty" (the
    /// next second retries) and, with `everysec`, writes are refused until
    /// a sync succeeds: the kernel may have dropped the pages that failed,
    /// so acknowledging more writes would promise what it cannot keep.
    fn sync(&mut self) -> Result<(), String> {
        self.last_sync = Instant::now();
        match self.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                if self.health.sync_failed.swap(false, Ordering::AcqRel) {
                    log::warn!(
                        "{}: fdatasync succeeds again; accepting writes",
                        self.cfg.path.display()
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.health.fsync_errors.fetch_add(1, Ordering::Relaxed);
                if self.cfg.fsync == Fsync::Everysec
                    && !self.health.sync_failed.swap(true, Ordering::AcqRel)
                {
                    log::error!(
                        "{}: fdatasync failed: {e}; refusing writes until it succeeds",
                        self.cfg.path.display()
                    );
                } else {
                    log::error!("{}: fdatasync failed: {e}", self.cfg.path.display());
                }
                Err(format!("fdatasync failed: {e}"))
            }
        }
    }

    /// Writes a batch (and syncs it with `always`); on failure cuts the
    /// file back to its last good length.
    fn append(&mut self, buf: &[u8]) -> Result<(), String> {
        let r = match self.file.append(buf) {
            Err(e) => {
                self.health.write_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("{}: write failed: {e}", self.cfg.path.display());
                Err(e.to_string())
            }
            Ok(()) if self.cfg.fsync == Fsync::Always => self.sync(),
            Ok(()) => {
                self.dirty = true;
                Ok(())
            }
        };
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                if let Some(rw) = &mut self.rewriting {
                    rw.tail.extend_from_slice(buf);
                }
                Ok(())
            }
            Err(e) => {
                if let Err(e2) = self.file.set_len(self.len) {
                    log::error!(
                        "{}: cannot cut back a failed write: {e2}",
                        self.cfg.path.display()
                    );
                }
                Err(e)
            }
        }
    }
}
