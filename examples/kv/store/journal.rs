//! The store's side of the append-only log: submitting mutations, replaying
//! records, and walking live items for compaction.

use std::sync::{Arc, MutexGuard};

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

    /// Calls `f` with every live item, one shard at a time (the shard's
    /// items are copied out under its lock; `f` runs without locks). Used
    /// by log compaction.
    pub fn for_each_live(&self, mut f: impl FnMut(&[u8], &Item, u64)) {
        let now = self.now();
        for i in 0..SHARDS {
            let items: Vec<(Arc<[u8]>, Item, u64)> = {
                let sh = self.lock(i);
                sh.slots
                    .iter()
                    .flatten()
                    .filter(|e| self.dead(e, now).is_none())
                    .map(|e| (e.key.clone(), e.item(), e.stored))
                    .collect()
            };
            for (k, it, stored) in &items {
                f(k, it, *stored);
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
            } => {
                let i = self.shard_of(&key);
                let mut sh = self.lock(i);
                let (found, _) = self.find(&mut sh, &key, self.now());
                let cas = self.next_cas();
                self.put(&mut sh, found, &key, value, flags, exptime, stored, cas);
                drop(sh);
                self.evict(i, Some(&key));
            }
            Record::Delete { key } => self.forget(&key),
            Record::Touch { key, exptime } => {
                let mut sh = self.lock(self.shard_of(&key));
                if let Some(&idx) = sh.map.get(&key[..]) {
                    sh.entry_mut(idx).exptime = exptime;
                }
            }
            Record::Flush { at } => {
                let mut guards: Vec<MutexGuard<'_, Shard>> =
                    (0..SHARDS).map(|i| self.lock(i)).collect();
                self.apply_flush(&mut guards, at);
            }
        }
    }
}
