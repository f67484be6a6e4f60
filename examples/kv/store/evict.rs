//! Eviction: keeping the store within its memory limit (see "Memory limit
//! and eviction" in the module docs).

use std::sync::atomic::Ordering;

use super::*;

/// Shards whose CLOCK candidates are compared per eviction.
const EVICT_SAMPLES: usize = 8;

impl Store {
    /// Evicts items until the total is within the limit, never the item
    /// `keep` just stored. Each eviction asks up to [`EVICT_SAMPLES`]
    /// non-empty shards (starting with `first`, then rotating) for their
    /// CLOCK candidate ([`Shard::peek`]) and evicts from the shard whose
    /// candidate is oldest by [`shard::age`].
    pub(crate) fn evict(&self, first: usize, keep: Option<&[u8]>) {
        let limit = self.limit() as u64;
        let mut start = first;
        let n = self.shards.len();
        while self.charged() > limit {
            let mut best: Option<((u64, u64), usize)> = None;
            let mut seen = 0;
            for k in 0..n {
                let i = (start + k) & (n - 1);
                let sh = self.lock(i);
                if let Some(at) = sh.peek(keep) {
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
            if sh.evict(keep, &self.stats) {
                bump(&self.stats.evictions);
            }
            drop(sh);
            start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives free memory in the middle of the heap back to the system once
    /// items worth a quarter of the limit were removed or replaced since
    /// the last time; returns whether it did. Items come and go in every
    /// size, so their freed chunks leave holes that only a request of the
    /// same size fits: without this, a fill of small items followed by big
    /// ones keeps both sets of pages resident. glibc's `malloc_trim`
    /// releases every free whole page of every arena (elsewhere this does
    /// nothing). The server calls it from its sweeper thread.
    pub fn trim(&self) -> bool {
        let quarter = self.limit() as u64 / 4;
        if self.stats.freed.load(Ordering::Relaxed) < quarter.max(1 << 20) {
            return false;
        }
        self.stats.freed.store(0, Ordering::Relaxed);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only reorganises the allocator's own free
        // lists under its locks; it is safe to call at any time.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }
}
