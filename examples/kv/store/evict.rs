//! Eviction: keeping the store within its memory limit (see "Memory limit
//! and eviction" in the module docs).

use std::sync::atomic::Ordering;

use super::*;

/// Shards whose LRU tails are compared per eviction.
const EVICT_SAMPLES: usize = 8;

/// The LRU tail of a shard unless it is the item being stored (then the
/// one before it).
fn evictable(sh: &Shard, keep: Option<&[u8]>) -> Option<u32> {
    let mut v = sh.tail;
    if v != NIL && keep.is_some_and(|k| &sh.entry(v).key[..] == k) {
        v = sh.links[v as usize].prev;
    }
    (v != NIL).then_some(v)
}

impl Store {
    /// Monotonic use counter for LRU comparisons (nanoseconds since the
    /// store was made).
    pub(crate) fn tick(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Evicts least-recently-used items until the total is within the
    /// limit, never the item `keep` just stored. Each eviction looks at the
    /// LRU tails of up to [`EVICT_SAMPLES`] non-empty shards (starting with
    /// `first`, then rotating) and removes the oldest of them.
    pub(crate) fn evict(&self, first: usize, keep: Option<&[u8]>) {
        let limit = self.limit() as u64;
        let mut start = first;
        let n = self.shards.len();
        while self.charged() > limit {
            let mut best: Option<(u64, usize)> = None;
            let mut seen = 0;
            for k in 0..n {
                let i = (start + k) & (n - 1);
                let sh = self.lock(i);
                if let Some(v) = evictable(&sh, keep) {
                    let at = sh.entry(v).atime;
                    if best.is_none_or(|(b, _)| at < b) {
                        best = Some((at, i));
                    }
                    seen += 1;
                    if seen == EVICT_SAMPLES {
                        break;
                    }
                }
            }
            let Some((_, i)) = best else {
                return;
            };
            let mut sh = self.lock(i);
            if let Some(v) = evictable(&sh, keep) {
                sh.remove(v, &self.stats);
                bump(&self.stats.evictions);
            }
            drop(sh);
            start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        }
    }
}
