//! One shard: a hash map from key to a slot in a slab, and an intrusive
//! LRU list through the slots (see "Layout" in the parent module).

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

pub(super) const NIL: u32 = u32::MAX;

/// One item's share of a full index: its slab entry, its links and its
/// hash map entry at hashbrown's full load (7/8).
pub(super) const SLOT_BYTES: usize =
    size_of::<Option<Entry>>() + size_of::<Link>() + (size_of::<(Arc<[u8]>, u32)>() + 1) * 8 / 7;

#[derive(Debug)]
pub(crate) struct Entry {
    pub(super) key: Arc<[u8]>,
    pub(super) value: Value,
    pub(super) flags: u32,
    pub(super) exptime: u64,
    /// When the item was stored (Unix seconds), for delayed flushes.
    pub(super) stored: u64,
    pub(super) cas: u64,
    /// Last use, in `Store::tick` units, to compare LRU tails across
    /// shards.
    pub(super) atime: u64,
    /// What the meta protocol reports and acts on.
    pub(super) meta: MetaBits,
}

/// Per-item state of the meta protocol (memcached's `ITEM_FETCHED`,
/// `ITEM_STALE`, `ITEM_TOKEN_SENT` and last-access time).
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
    pub(super) fn new(now: u64) -> MetaBits {
        MetaBits {
            fetched: false,
            stale: false,
            token_sent: false,
            access: now,
            binary_key: false,
        }
    }
}

impl Entry {
    /// What the item's own allocations cost (its slot in the index is
    /// charged with the index).
    fn size(&self) -> usize {
        arc_bytes(self.key.len()) + arc_bytes(self.value.len())
    }

    pub(super) fn item(&self) -> Item {
        Item {
            value: self.value.clone(),
            flags: self.flags,
            exptime: self.exptime,
            cas: self.cas,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) prev: u32,
    next: u32,
}

/// One shard: map, slab of entries, LRU list (head = most recent).
#[derive(Debug)]
pub(crate) struct Shard {
    pub(super) map: HashMap<Arc<[u8]>, u32>,
    pub(super) slots: Vec<Option<Entry>>,
    pub(super) links: Vec<Link>,
    free: Vec<u32>,
    head: u32,
    pub(super) tail: u32,
    pub(super) sweep_cursor: usize,
    /// What [`Shard::index_bytes`] was when last charged to the stats.
    index_charged: usize,
    /// The hash map's largest capacity (see [`Shard::index_bytes`]).
    map_cap: usize,
}

/// Why a lookup found nothing usable.
pub(crate) enum Dead {
    Expired,
    Flushed,
}

impl Shard {
    pub(super) fn new() -> Shard {
        Shard {
            map: HashMap::new(),
            slots: Vec::new(),
            links: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            sweep_cursor: 0,
            index_charged: 0,
            map_cap: 0,
        }
    }

    /// Bytes the shard's index holds: the slab, its links and free list
    /// and the hash map, at their capacity (slots freed by deletes and
    /// evictions stay allocated and stay charged).
    pub(super) fn index_bytes(&self) -> usize {
        // `capacity()` drops as removals leave tombstones; the table never
        // shrinks, so its largest value is the table's.
        let cap = self.map_cap.max(self.map.capacity());
        // hashbrown keeps 7/8 of a power-of-two bucket count usable (all
        // but one bucket below 8), plus one control byte per bucket and
        // a group's worth more.
        let buckets = match cap {
            0 => 0,
            1..=7 => cap + 1,
            _ => cap / 7 * 8,
        };
        let map = if buckets == 0 {
            0
        } else {
            malloc_bytes(buckets * (size_of::<(Arc<[u8]>, u32)>() + 1) + 16)
        };
        let vec = |bytes: usize| if bytes == 0 { 0 } else { malloc_bytes(bytes) };
        map + vec(self.slots.capacity() * size_of::<Option<Entry>>())
            + vec(self.links.capacity() * size_of::<Link>())
            + vec(self.free.capacity() * size_of::<u32>())
    }

    /// Brings the charged index size up to date.
    fn recharge(&mut self, stats: &Stats) {
        self.map_cap = self.map_cap.max(self.map.capacity());
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

    pub(super) fn entry(&self, idx: u32) -> &Entry {
        self.slots[idx as usize]
            .as_ref()
            .expect("LRU index points at a live slot")
    }

    pub(super) fn entry_mut(&mut self, idx: u32) -> &mut Entry {
        self.slots[idx as usize]
            .as_mut()
            .expect("LRU index points at a live slot")
    }

    fn unlink(&mut self, idx: u32) {
        let Link { prev, next } = self.links[idx as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, idx: u32) {
        self.links[idx as usize] = Link {
            prev: NIL,
            next: self.head,
        };
        if self.head != NIL {
            self.links[self.head as usize].prev = idx;
        }
        self.head = idx;
        if self.tail == NIL {
            self.tail = idx;
        }
    }

    /// Marks the entry used at `atime` and moves it to the LRU front.
    pub(super) fn bump(&mut self, idx: u32, atime: u64) {
        self.entry_mut(idx).atime = atime;
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    /// Inserts a new entry (the key must not be present) at the LRU front.
    pub(super) fn insert(&mut self, e: Entry, stats: &Stats) -> u32 {
        stats.bytes.fetch_add(e.size() as u64, Ordering::Relaxed);
        bump(&stats.curr_items);
        let key = e.key.clone();
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(e);
                i
            }
            None => {
                // Grow by a quarter, not double: the slack is charged.
                if self.slots.len() == self.slots.capacity() {
                    let more = (self.slots.len() / 4).max(16);
                    self.slots.reserve_exact(more);
                    self.links.reserve_exact(more);
                }
                self.slots.push(Some(e));
                self.links.push(Link {
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.push_front(idx);
        self.map.insert(key, idx);
        self.recharge(stats);
        idx
    }

    /// Removes the entry at `idx` from map, list and slab.
    pub(super) fn remove(&mut self, idx: u32, stats: &Stats) -> Entry {
        self.unlink(idx);
        let e = self.slots[idx as usize]
            .take()
            .expect("removing a live slot");
        self.map.remove(&e.key[..]);
        let cap = self.free.capacity();
        self.free.push(idx);
        if self.free.capacity() != cap {
            self.recharge(stats);
        }
        stats.bytes.fetch_sub(e.size() as u64, Ordering::Relaxed);
        stats.curr_items.fetch_sub(1, Ordering::Relaxed);
        e
    }

    /// Replaces the value/flags/expiry of a live entry in place, keeping
    /// the byte count right (the caller bumps it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replace(
        &mut self,
        idx: u32,
        value: Value,
        flags: u32,
        exptime: u64,
        now: u64,
        cas: u64,
        stats: &Stats,
    ) {
        let e = self.entry_mut(idx);
        let old = e.size();
        e.value = value;
        e.flags = flags;
        e.exptime = exptime;
        e.stored = now;
        e.cas = cas;
        e.meta = MetaBits::new(now);
        let new = e.size();
        if new >= old {
            stats.bytes.fetch_add((new - old) as u64, Ordering::Relaxed);
        } else {
            stats.bytes.fetch_sub((old - new) as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn clear(&mut self, stats: &Stats) {
        let charged = self.index_charged;
        let mut n = 0u64;
        let mut bytes = 0u64;
        for e in self.slots.iter().flatten() {
            n += 1;
            bytes += e.size() as u64;
        }
        stats.curr_items.fetch_sub(n, Ordering::Relaxed);
        stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
        *self = Shard::new();
        stats
            .index_bytes
            .fetch_sub(charged as u64, Ordering::Relaxed);
    }
}
