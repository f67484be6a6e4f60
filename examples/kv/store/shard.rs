//! One shard: an open-addressing index of items and the CLOCK hand that
//! picks evictions in it (see "Layout" in the parent module).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use super::item::bit;
use super::table::Table;
use super::*;

/// Per-item state of the meta protocol (memcached's `ITEM_FETCHED`,
/// `ITEM_STALE`, `ITEM_TOKEN_SENT` and last-access time), as read from an
/// item's header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaBits {
    /// Read since it was stored.
    pub(super) fetched: bool,
    /// Invalidated (`md ... I`): still served, marked stale.
    pub(super) stale: bool,
    /// A client was told it won the right to recache it.
    pub(super) token_sent: bool,
    /// Last access, Unix seconds.
    pub(super) access: u64,
    /// The key was stored in base64 (`ms ... b`).
    pub(super) binary_key: bool,
}

impl MetaBits {
    pub(super) fn of(v: &Value) -> MetaBits {
        MetaBits {
            fetched: v.has(bit::FETCHED),
            stale: v.has(bit::STALE),
            token_sent: v.has(bit::TOKEN_SENT),
            access: v.time(),
            binary_key: v.has(bit::BINARY_KEY),
        }
    }
}

/// A copy of the item in `v` as a read returns it.
pub(super) fn item_of(v: &Value) -> Item {
    Item {
        value: v.clone(),
        flags: v.flags(),
        exptime: v.exptime(),
        cas: v.cas(),
    }
}

/// Unreferenced items CLOCK compares per pick.
const CLOCK_WINDOW: usize = 4;
/// Slots [`Shard::peek`] looks at, at most.
const PEEK_SLOTS: usize = 64;

/// How old an item is, for eviction: last stored or used (seconds), then
/// its CAS unique (which grows with every store, so it orders the items of
/// one second).
pub(super) fn age(v: &Value) -> (u64, u64) {
    (v.time(), v.cas())
}

/// One shard: the index and the CLOCK hand.
#[derive(Debug)]
pub(crate) struct Shard {
    table: Table,
    hasher: RandomState,
    /// CLOCK's hand: the next slot it examines.
    hand: usize,
    pub(super) sweep_cursor: usize,
    /// What [`Shard::index_bytes`] was when last charged to the stats.
    index_charged: usize,
}

/// Why a lookup found nothing usable.
pub(crate) enum Dead {
    Expired,
    Flushed,
}

impl Shard {
    pub(super) fn new(hasher: RandomState) -> Shard {
        Shard {
            table: Table::default(),
            hasher,
            hand: 0,
            sweep_cursor: 0,
            index_charged: 0,
        }
    }

    /// Bytes the shard's index holds: its slot array at capacity (slots
    /// freed by deletes and evictions stay allocated and stay charged).
    pub(super) fn index_bytes(&self) -> usize {
        self.table.bytes()
    }

    /// Brings the charged index size up to date.
    fn recharge(&mut self, stats: &Stats) {
        let now = self.index_bytes();
        if now >= self.index_charged {
            stats
                .index_bytes
                .fetch_add((now - self.index_charged) as u64, Ordering::Relaxed);
        } else {
            stats
                .index_bytes
                .fetch_sub((self.index_charged - now) as u64, Ordering::Relaxed);
        }
        self.index_charged = now;
    }

    /// The hash of `key`, as the store's (same keys).
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`, if present.
    pub(super) fn find(&self, key: &[u8]) -> Option<usize> {
        self.table.find(self.hash(key), key)
    }

    /// The slot of `key`, whose hash is `h`, if present.
    pub(super) fn find_hashed(&self, h: u64, key: &[u8]) -> Option<usize> {
        debug_assert_eq!(h, self.hash(key), "the store and its shards hash alike");
        self.table.find(h, key)
    }

    /// The item in an occupied slot.
    pub(super) fn entry(&self, i: usize) -> &Value {
        self.table.get(i)
    }

    /// The item in slot `i`, if any (for walks over the slots).
    pub(super) fn slot(&self, i: usize) -> Option<&Value> {
        self.table.slot(i)
    }

    /// Slots in the index.
    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Items held.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Marks the item in slot `i` used (CLOCK's reference bit).
    pub(super) fn bump(&mut self, i: usize) {
        self.table.get(i).set_bits(bit::REFERENCED, true);
    }

    /// Inserts a new item (its key must not be present); returns its slot.
    pub(super) fn insert(&mut self, v: Value, stats: &Stats) -> usize {
        stats.bytes.fetch_add(v.charge() as u64, Ordering::Relaxed);
        stats.curr_items.fetch_add(1, Ordering::Relaxed);
        let h = self.hash(v.key());
        let hasher = &self.hasher;
        let i = self.table.insert(h, v, |k| hasher.hash_one(k));
        self.recharge(stats);
        i
    }

    /// Removes the item in slot `i`.
    pub(super) fn remove(&mut self, i: usize, stats: &Stats) -> Value {
        let hasher = &self.hasher;
        let v = self.table.remove(i, |k| hasher.hash_one(k));
        stats.bytes.fetch_sub(v.charge() as u64, Ordering::Relaxed);
        stats.freed.fetch_add(v.charge() as u64, Ordering::Relaxed);
        stats.curr_items.fetch_sub(1, Ordering::Relaxed);
        v
    }

    /// Puts a new item with the same key in slot `i`, keeping the byte
    /// count right.
    pub(super) fn replace(&mut self, i: usize, v: Value, stats: &Stats) {
        let new = v.charge();
        let old = self.table.replace(i, v).charge();
        stats.freed.fetch_add(old as u64, Ordering::Relaxed);
        if new >= old {
            stats.bytes.fetch_add((new - old) as u64, Ordering::Relaxed);
        } else {
            stats.bytes.fetch_sub((old - new) as u64, Ordering::Relaxed);
        }
    }

    /// The age ([`age`]) of the item [`Shard::evict`] would take now, for
    /// comparing shards; changes nothing. It looks at most
    /// [`PEEK_SLOTS`] slots ahead of the hand; a shard whose items there
    /// are all recently used (or that has items only further on) answers
    /// "newest possible", so it is chosen only when no other shard has a
    /// candidate. `None`: nothing but `keep` to evict.
    pub(super) fn peek(&self, keep: Option<&[u8]>) -> Option<(u64, u64)> {
        let held = self.table.len();
        let keep_here = keep.is_some_and(|k| self.find(k).is_some());
        if held == 0 || (held == 1 && keep_here) {
            return None;
        }
        let cap = self.table.capacity();
        let mut i = self.hand & (cap - 1);
        let mut best: Option<(u64, u64)> = None;
        let mut seen = 0;
        for _ in 0..cap.min(PEEK_SLOTS) {
            if let Some(v) = self.table.slot(i) {
                if !v.has(bit::REFERENCED) && keep.is_none_or(|k| k != v.key()) {
                    best = Some(best.map_or(age(v), |b| b.min(age(v))));
                    seen += 1;
                    if seen == CLOCK_WINDOW {
                        break;
                    }
                }
            }
            i = (i + 1) & (cap - 1);
        }
        Some(best.unwrap_or((u64::MAX, u64::MAX)))
    }

    /// CLOCK: evicts one item, never the one whose key is `keep`; returns
    /// whether it did. The hand passes over empty slots and items whose
    /// reference bit is set (clearing it: a second chance) until it has
    /// seen [`CLOCK_WINDOW`] unreferenced items, takes the oldest of them
    /// by [`age`] (slots follow the hash, not the order of arrival, so the
    /// window is what makes an old item go before a new neighbour), and
    /// moves past the window: the others wait for the next turn. Two turns
    /// at most: after one, every bit is clear.
    pub(super) fn evict(&mut self, keep: Option<&[u8]>, stats: &Stats) -> bool {
        let cap = self.table.capacity();
        if self.table.len() == 0 {
            return false;
        }
        let mut i = self.hand & (cap - 1);
        let mut best: Option<((u64, u64), usize)> = None;
        let mut seen = 0;
        for _ in 0..2 * cap {
            if let Some(v) = self.table.slot(i) {
                if keep.is_some_and(|k| k == v.key()) {
                } else if v.has(bit::REFERENCED) {
                    v.set_bits(bit::REFERENCED, false);
                } else {
                    if best.is_none_or(|(a, _)| age(v) < a) {
                        best = Some((age(v), i));
                    }
                    seen += 1;
                    if seen == CLOCK_WINDOW {
                        break;
                    }
                }
            }
            i = (i + 1) & (cap - 1);
        }
        let Some((_, pick)) = best else {
            return false;
        };
        // Past the window; the removal below shifts entries back only
        // within the pick's cluster, which the hand has passed or will
        // pass: nothing is skipped for long.
        self.hand = (i + 1) & (cap - 1);
        self.remove(pick, stats);
        true
    }

    /// Drops every item and the index.
    pub(super) fn clear(&mut self, stats: &Stats) {
        let mut n = 0u64;
        let mut bytes = 0u64;
        for i in 0..self.table.capacity() {
            if let Some(v) = self.table.slot(i) {
                n += 1;
                bytes += v.charge() as u64;
            }
        }
        stats.curr_items.fetch_sub(n, Ordering::Relaxed);
        stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.table.clear();
        self.hand = 0;
        self.sweep_cursor = 0;
        self.recharge(stats);
    }
}
