//! The store's side of the append-only log: submitting mutations, replaying
//! records, and walking live items for compaction.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use crate::aof::{Journal, Record};

use super::*;

impl Store {
    /// Starts journaling every mutation to `journal` (after replay).
    pub fn attach_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// The journal, if one is attached.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.get()
    }

    /// Sends a record to the journal while the shard lock is held (so the
    /// log order of one key matches the order its mutations were applied).
    pub(crate) fn journal_submit(
        &self,
        rec: impl FnOnce() -> Record,
    ) -> Option<crate::aof::Ticket> {
        self.journal.get().map(|j| j.submit(rec()))
    }

    /// Refuses a mutation up front while the journal refuses writes (after
    /// a failed fsync, until one succeeds), before anything changes.
    pub(crate) fn journal_check(&self) -> Persisted<()> {
        match self.journal.get() {
            Some(j) => j.check(),
            None => Ok(()),
        }
    }

    /// Logs that a command found `key` absent (a delete, or a touch,
    /// incr/decr, cas, replace, append or prepend that missed), with the
    /// shard lock held: the log may still hold an older value of the key
    /// (it was evicted, or expired, or its last write failed), and the
    /// client has been told it is gone, so replay must not bring it back.
    pub(crate) fn journal_absent(&self, key: &[u8]) -> Option<crate::aof::Ticket> {
        self.journal_submit(|| Record::Delete { key: key.into() })
    }

    /// The highest CAS unique handed out so far.
    pub(crate) fn cas_high(&self) -> u64 {
        self.cas.load(Ordering::Relaxed)
    }

    /// Makes every unique handed out from now on larger than `floor`.
    /// Values from 2^63 up are left alone: the counter cannot have reached
    /// them, so only a client gave them (meta `E`), and following one would
    /// wrap the counter.
    pub(crate) fn raise_cas(&self, floor: u64) {
        if floor < 1 << 63 {
            self.cas.fetch_max(floor, Ordering::Relaxed);
        }
    }

    /// Waits for the journal's verdict; on failure the key is dropped from
    /// memory so no unlogged value is served any longer.
    pub(crate) fn journal_wait(
        &self,
        ticket: Option<crate::aof::Ticket>,
        key: &[u8],
    ) -> Persisted<()> {
        match ticket {
            None => Ok(()),
            Some(t) => t.wait().inspect_err(|_| self.forget(key)),
        }
    }

    /// Calls `f` with every live item (key, item, last stored or used),
    /// a few hundred slots at a time: each batch is copied out (pointer
    /// copies) under its shard's lock, and `f` runs without locks, so
    /// compaction never holds a shard for longer than one batch, however
    /// big the shard.
    ///
    /// The walk is not a snapshot: an item stored, changed or removed
    /// during it may be seen in either state, twice, or not at all.
    /// Compaction copes: every mutation made during the walk is also in
    /// the log tail it replays over the walk's output, and a set seen
    /// twice writes the same record twice. What it must not do is miss an
    /// item nobody touched; two rules make sure:
    ///
    /// 1. A batch ends just after an empty slot (or at the table's end).
    ///    Deletion only moves an item back towards its home, never across
    ///    an empty slot, and every item after that empty slot has its home
    ///    after it too; so no untouched item moves from the unvisited part
    ///    into the visited one (only an item inserted during the walk could
    ///    fill the gap, and it is in the log tail).
    /// 2. If the table grew between two batches (all positions change),
    ///    the shard's walk starts over. Tables only double, so this
    ///    happens a bounded number of times.
    pub fn for_each_live(&self, mut f: impl FnMut(&[u8], &Item, u64)) {
        const BATCH: usize = 256;
        let now = self.now();
        let mut items: Vec<(Value, u64)> = Vec::with_capacity(BATCH);
        for i in 0..self.shards.len() {
            let mut from = 0;
            let mut cap = None;
            loop {
                let more = {
                    let sh = self.lock(i);
                    let n = sh.capacity();
                    if cap.is_some_and(|c| c != n) {
                        from = 0;
                    }
                    cap = Some(n);
                    let mut at = from;
                    while at < n && (at < from + BATCH || sh.slot(at - 1).is_some()) {
                        if let Some(e) = sh.slot(at) {
                            if self.dead(e, now).is_none() {
                                items.push((e.clone(), e.time()));
                            }
                        }
                        at += 1;
                    }
                    from = at;
                    from < n
                };
                for (e, stored) in items.drain(..) {
                    f(e.key(), &item_of(&e), stored);
                }
                if !more {
                    break;
                }
            }
        }
    }

    /// Applies a journal record during replay (nothing is journaled).
    pub fn replay(&self, rec: Record) {
        match rec {
            Record::Set {
                key,
                value,
                flags,
                exptime,
                stored,
                cas,
            } => {
                if key.len() > super::item::KEY_LEN_MAX || value.len() > super::item::VALUE_MAX {
                    log::warn!("replay: skipping a set whose key or value is too long for an item");
                    return;
                }
                let item = Value::build(&key, &[&value], flags, exptime, stored, 0);
                let i = self.shard_of(&key);
                let mut sh = self.lock(i);
                let (found, _) = self.find(&mut sh, &key, self.now());
                let cas = if cas == 0 {
                    self.next_cas()
                } else {
                    self.raise_cas(cas);
                    cas
                };
                item.set_cas(cas);
                self.put(&mut sh, found, item);
                drop(sh);
                self.evict(i, Some(&key));
            }
            Record::Delete { key } => self.forget(&key),
            Record::Touch { key, exptime } => {
                let sh = self.lock(self.shard_of(&key));
                if let Some(idx) = sh.find(&key) {
                    sh.entry(idx).set_exptime(exptime);
                }
            }
            Record::Flush { at } => {
                let mut guards: Vec<MutexGuard<'_, Shard>> =
                    (0..self.shards.len()).map(|i| self.lock(i)).collect();
                self.apply_flush(&mut guards, at);
            }
            Record::CasFloor { floor } => self.raise_cas(floor),
        }
    }
}
