//! Compaction: rewriting the log from the live dataset while the writer
//! keeps appending (see "Compaction" in the module docs).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::store::Store;

use super::*;

pub(super) struct Rewrite {
    /// What was appended to the old file since the dump started.
    pub(super) tail: Vec<u8>,
}

impl Writer {
    /// Starts a compaction if the log has grown enough.
    pub(super) fn maybe_rewrite(&mut self) {
        if self.len >= self.rewrite_at {
            self.start_rewrite();
        }
    }

    /// Starts a compaction unless one is running.
    pub(super) fn start_rewrite(&mut self) {
        if self.rewriting.is_some() {
            return;
        }
        let Some(store) = self.store.upgrade() else {
            self.fail_waiters("the store is gone");
            return;
        };
        let tmp = rewrite_path(&self.cfg.path);
        let tx = self.tx.clone();
        let fs = self.cfg.fs.clone();
        log::info!(
            "{}: compacting ({} bytes, {} after the last rewrite)",
            self.cfg.path.display(),
            self.len,
            self.base
        );
        self.rewriting = Some(Rewrite { tail: Vec::new() });
        self.health.rewriting.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("kv-aof-rewrite".into())
            .spawn(move || {
                let r = dump(&store, &*fs, &tmp).map_err(|e| e.to_string());
                drop(store);
                let _ = tx.send(Msg::RewriteDone(r));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the log rewrite thread: {e}");
            self.rewriting = None;
            self.health.rewriting.store(false, Ordering::Release);
            self.rewrite_at = self.len.saturating_mul(2);
            self.fail_waiters("cannot start the compaction thread");
        }
    }

    fn fail_waiters(&mut self, why: &str) {
        for s in self.compact_waiters.drain(..) {
            s.complete(Err(why.to_string()));
        }
    }

    pub(super) fn finish_rewrite(&mut self, r: Result<Box<dyn LogFile>, String>) {
        let Some(rw) = self.rewriting.take() else {
            return;
        };
        let tmp = rewrite_path(&self.cfg.path);
        let fs = self.cfg.fs.clone();
        let done = r.and_then(|mut f| {
            f.append(&rw.tail)
                .and_then(|()| f.sync_data())
                .and_then(|()| fs.rename(&tmp, &self.cfg.path))
                .and_then(|()| fs.sync_dir(&self.cfg.path))
                .and_then(|()| f.len())
                .map(|len| (f, len))
                .map_err(|e| e.to_string())
        });
        let result = match done {
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
                self.health.rewrites.fetch_add(1, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                log::error!("{}: compaction failed: {e}", self.cfg.path.display());
                let _ = std::fs::remove_file(&tmp);
                self.rewrite_at = self.len.saturating_mul(2);
                Err(format!("compaction failed: {e}"))
            }
        };
        // Counted, then no longer running, then the waiters: whoever sees
        // "not running" sees the count, and a waiter sees both.
        self.health.rewriting.store(false, Ordering::Release);
        for s in self.compact_waiters.drain(..) {
            s.complete(result.clone());
        }
    }
}

pub(super) fn rewrite_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".rewrite");
    PathBuf::from(p)
}

/// Writes the live dataset to a fresh log at `tmp` (created locked, see
/// [`file::lock`]), synced, and returns it open for appending. It starts
/// with the CAS floor (the highest unique handed out so far) and a pending
/// delayed flush, then one set per live item, uniques included.
fn dump(store: &Store, fs: &dyn LogFs, tmp: &Path) -> io::Result<Box<dyn LogFile>> {
    let mut f = fs.create(tmp)?;
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(MAGIC);
    Record::CasFloor {
        floor: store.cas_high(),
    }
    .encode(&mut buf);
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
            cas: item.cas,
        }
        .encode(&mut buf);
        if buf.len() >= 1 << 20 {
            if let Err(e) = f.append(&buf) {
                err = Some(e);
            }
            buf.clear();
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    f.append(&buf)?;
    f.sync_data()?;
    Ok(f)
}
