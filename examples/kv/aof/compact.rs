//! Compaction: rewriting the log from the live dataset while the writer
//! keeps appending (see "Compaction" in the module docs).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::store::Store;

use super::*;

pub(super) struct Rewrite {
    /// What was appended to the old file since the dump started.
    pub(super) tail: Vec<u8>,
}

impl Writer {
    pub(super) fn maybe_rewrite(&mut self) {
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
        self.compaction.running.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("kv-aof-rewrite".into())
            .spawn(move || {
                let r = dump(&store, &tmp).map_err(|e| e.to_string());
                let _ = tx.send(Msg::RewriteDone(r));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the log rewrite thread: {e}");
            self.rewriting = None;
            self.compaction.running.store(false, Ordering::Release);
            self.rewrite_at = self.len.saturating_mul(2);
        }
    }

    pub(super) fn finish_rewrite(&mut self, r: Result<File, String>) {
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
                self.compaction.done.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                log::error!("{}: compaction failed: {e}", self.cfg.path.display());
                let _ = std::fs::remove_file(&tmp);
                self.rewrite_at = self.len.saturating_mul(2);
            }
        }
        self.compaction.running.store(false, Ordering::Release);
    }
}

pub(super) fn rewrite_path(path: &Path) -> PathBuf {
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
