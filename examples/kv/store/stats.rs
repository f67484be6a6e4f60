//! The counters `stats` reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shown by `stats`. All relaxed atomics: they are statistics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Keys requested by get-type commands.
    pub cmd_get: AtomicU64,
    /// Storage commands.
    pub cmd_set: AtomicU64,
    /// touch/gat commands (per key).
    pub cmd_touch: AtomicU64,
    /// flush_all commands.
    pub cmd_flush: AtomicU64,
    /// Keys found by get-type commands.
    pub get_hits: AtomicU64,
    /// Keys not found by get-type commands.
    pub get_misses: AtomicU64,
    /// Gets that found only an expired item.
    pub get_expired: AtomicU64,
    /// Gets that found only a flushed item.
    pub get_flushed: AtomicU64,
    /// Deletes that removed an item.
    pub delete_hits: AtomicU64,
    /// Deletes of missing keys.
    pub delete_misses: AtomicU64,
    /// Increments of present keys.
    pub incr_hits: AtomicU64,
    /// Increments of missing keys.
    pub incr_misses: AtomicU64,
    /// Decrements of present keys.
    pub decr_hits: AtomicU64,
    /// Decrements of missing keys.
    pub decr_misses: AtomicU64,
    /// CAS commands that stored.
    pub cas_hits: AtomicU64,
    /// CAS commands on missing keys.
    pub cas_misses: AtomicU64,
    /// CAS commands with a stale unique.
    pub cas_badval: AtomicU64,
    /// Touches of present keys.
    pub touch_hits: AtomicU64,
    /// Touches of missing keys.
    pub touch_misses: AtomicU64,
    /// Items ever stored.
    pub total_items: AtomicU64,
    /// Items evicted to make room.
    pub evictions: AtomicU64,
    /// Expired or flushed items reclaimed.
    pub reclaimed: AtomicU64,
    /// Items currently stored (expired ones included until reclaimed).
    pub curr_items: AtomicU64,
    /// Bytes the items' own allocations take, as the allocator rounds
    /// them (see [`super::arc_bytes`]).
    pub bytes: AtomicU64,
    /// Bytes the index takes (the shards' slot arrays, at capacity).
    pub index_bytes: AtomicU64,
    /// Bytes of items removed or replaced since free memory was last given
    /// back to the system (see [`super::Store::trim`]).
    pub freed: AtomicU64,
}

/// Shorthand for a relaxed increment.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
