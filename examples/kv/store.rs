//! The item store: a sharded hash table with a per-shard LRU list, lazy and
//! swept expiry, CAS uniques, memory-limited eviction and the statistics the
//! `stats` command reports.
//!
//! # Layout
//!
//! Keys hash to one of [`SHARDS`] shards, each a `Mutex` around a hash map
//! from key to a slot in a slab. Slots hold the item and the links of an
//! intrusive doubly linked LRU list (indices, not pointers), so a hit moves an
//! item to the front in O(1) and eviction pops the tail in O(1). Locks are
//! held only for the map operation itself; values are `Arc<[u8]>`, so a read
//! clones a pointer under the lock and copies the bytes to the socket after
//! the lock is gone.
//!
//! # Memory limit and eviction
//!
//! An item costs `key + value + ITEM_OVERHEAD` bytes against the limit, which
//! is global (one atomic counter). A store that pushes the total past the
//! limit evicts until it is back under: each eviction compares the LRU tails
//! (last-use timestamps) of up to 8 non-empty shards, its own first, and
//! removes the oldest, never the item just stored; shards are locked one at
//! a time. Each shard's list is exact LRU; across shards this is a sampled
//! approximation in the spirit of Redis's, over whole shard tails: an item
//! is evicted only when it is the least recently used of its shard and older
//! than the tails of the other sampled shards. Concurrent stores may
//! overshoot the limit by at most one item per storing thread until their
//! eviction passes run.
//!
//! # Expiry and flush
//!
//! Expiry times are absolute Unix seconds (0 = never). Expired items are
//! removed when touched by a command and by [`Store::sweep_expired`], which
//! the server calls from a timer with a budget of slots to examine.
//! `flush_all` without delay empties every shard at once; with a delay it
//! records the flush time, and from then on items stored before that time
//! read as absent (and are reclaimed lazily or by the sweep).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::aof::{Journal, Record};

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;
/// Shards whose LRU tails are compared per eviction.
const EVICT_SAMPLES: usize = 8;
/// Longest key, in bytes (memcached's limit).
pub const KEY_MAX: usize = 250;
/// Bytes charged per item on top of key and value.
pub const ITEM_OVERHEAD: usize = 50;
/// Expiry values up to this many seconds are relative to now; larger ones
/// are absolute Unix times.
pub const REL_EXPIRY_MAX: i64 = 60 * 60 * 24 * 30;

/// An item's value bytes, shared so reads can copy them outside the lock.
pub type Value = Arc<[u8]>;

const NIL: u32 = u32::MAX;

/// A copy of an item as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The value bytes.
    pub value: Value,
    /// The client's opaque flags.
    pub flags: u32,
    /// Absolute expiry in Unix seconds, 0 for never.
    pub exptime: u64,
    /// The item's CAS unique.
    pub cas: u64,
}

/// How a storage command treats an existing (or missing) item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Add the data after the existing value (flags and expiry kept).
    Append,
    /// Add the data before the existing value (flags and expiry kept).
    Prepend,
    /// Store only if the item's CAS unique equals this one.
    Cas(u64),
}

/// Outcome of a storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatus {
    /// Stored; carries the new CAS unique.
    Stored(u64),
    /// The mode's condition failed (add on present, replace/append on absent).
    NotStored,
    /// CAS mismatch.
    Exists,
    /// CAS on a missing key.
    NotFound,
    /// The resulting value (after append/prepend) exceeds the item size
    /// limit.
    TooLarge,
    /// The item alone is bigger than the whole memory limit.
    NoMemory,
}

/// Outcome of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteStatus {
    /// Removed.
    Deleted,
    /// No such key.
    NotFound,
    /// A CAS unique was given and did not match.
    Exists,
}

/// Outcome of incr/decr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaStatus {
    /// The new value and the item's new CAS unique.
    Value(u64, u64),
    /// No such key (and no initial value to create it with).
    NotFound,
    /// The stored value is not a decimal number below 2^64.
    NonNumeric,
    /// A CAS unique was given and did not match.
    Exists,
}

/// The journal could not record a mutation: the client must get an error,
/// never an acknowledgement.
#[derive(Debug, Clone)]
pub struct PersistError(pub String);

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "append-only log write failed: {}", self.0)
    }
}

/// Where the store gets "now" from.
#[derive(Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A settable clock for tests, in Unix seconds.
    #[cfg(test)]
    Manual(AtomicU64),
}

impl Clock {
    /// Now, in Unix seconds.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    #[cfg(test)]
    pub fn advance(&self, secs: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}

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
    /// Bytes currently charged (key + value + overhead per item).
    pub bytes: AtomicU64,
}

/// The LRU tail of a shard unless it is the item being stored (then the
/// one before it).
fn evictable(sh: &Shard, keep: Option<&[u8]>) -> Option<u32> {
    let mut v = sh.tail;
    if v != NIL && keep.is_some_and(|k| &sh.entry(v).key[..] == k) {
        v = sh.links[v as usize].prev;
    }
    (v != NIL).then_some(v)
}

/// Shorthand for a relaxed increment.
fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct Entry {
    key: Arc<[u8]>,
    value: Value,
    flags: u32,
    exptime: u64,
    /// When the item was stored (Unix seconds), for delayed flushes.
    stored: u64,
    cas: u64,
    /// Last use, in `Store::tick` units, to compare LRU tails across
    /// shards.
    atime: u64,
}

impl Entry {
    fn size(&self) -> usize {
        self.key.len() + self.value.len() + ITEM_OVERHEAD
    }

    fn item(&self) -> Item {
        Item {
            value: self.value.clone(),
            flags: self.flags,
            exptime: self.exptime,
            cas: self.cas,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// One shard: map, slab of entries, LRU list (head = most recent).
#[derive(Debug)]
struct Shard {
    map: HashMap<Arc<[u8]>, u32>,
    slots: Vec<Option<Entry>>,
    links: Vec<Link>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    sweep_cursor: usize,
}

/// Why a lookup found nothing usable.
enum Dead {
    Expired,
    Flushed,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            map: HashMap::new(),
            slots: Vec::new(),
            links: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            sweep_cursor: 0,
        }
    }

    fn entry(&self, idx: u32) -> &Entry {
        self.slots[idx as usize]
            .as_ref()
            .expect("LRU index points at a live slot")
    }

    fn entry_mut(&mut self, idx: u32) -> &mut Entry {
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
    fn bump(&mut self, idx: u32, atime: u64) {
        self.entry_mut(idx).atime = atime;
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    /// Inserts a new entry (the key must not be present) at the LRU front.
    fn insert(&mut self, e: Entry, stats: &Stats) -> u32 {
        stats.bytes.fetch_add(e.size() as u64, Ordering::Relaxed);
        bump(&stats.curr_items);
        let key = e.key.clone();
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(e);
                i
            }
            None => {
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
        idx
    }

    /// Removes the entry at `idx` from map, list and slab.
    fn remove(&mut self, idx: u32, stats: &Stats) -> Entry {
        self.unlink(idx);
        let e = self.slots[idx as usize]
            .take()
            .expect("removing a live slot");
        self.map.remove(&e.key[..]);
        self.free.push(idx);
        stats.bytes.fetch_sub(e.size() as u64, Ordering::Relaxed);
        stats.curr_items.fetch_sub(1, Ordering::Relaxed);
        e
    }

    /// Replaces the value/flags/expiry of a live entry in place, keeping
    /// the byte count right (the caller bumps it).
    #[allow(clippy::too_many_arguments)]
    fn replace(
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
        let new = e.size();
        if new >= old {
            stats.bytes.fetch_add((new - old) as u64, Ordering::Relaxed);
        } else {
            stats.bytes.fetch_sub((old - new) as u64, Ordering::Relaxed);
        }
    }

    fn clear(&mut self, stats: &Stats) {
        let mut n = 0u64;
        let mut bytes = 0u64;
        for e in self.slots.iter().flatten() {
            n += 1;
            bytes += e.size() as u64;
        }
        stats.curr_items.fetch_sub(n, Ordering::Relaxed);
        stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
        *self = Shard::new();
    }
}

/// The store. Shared by all connections (`Arc<Store>`).
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    cas: AtomicU64,
    limit: AtomicUsize,
    item_max: AtomicUsize,
    /// Pending or past delayed flush: Unix seconds, 0 for none.
    flush_at: AtomicU64,
    sweep_shard: AtomicUsize,
    evict_cursor: AtomicUsize,
    epoch: std::time::Instant,
    clock: Clock,
    journal: OnceLock<Journal>,
    /// Statistics.
    pub stats: Stats,
}

/// The result of a mutation plus the journal's verdict on it.
type Persisted<T> = Result<T, PersistError>;

impl Store {
    /// A store with a memory limit in bytes, on the system clock.
    pub fn new(limit_bytes: usize) -> Store {
        Store::with_clock(limit_bytes, Clock::System)
    }

    /// A store with a memory limit in bytes and the given clock.
    pub fn with_clock(limit_bytes: usize, clock: Clock) -> Store {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: Default::default(),
            cas: AtomicU64::new(0),
            limit: AtomicUsize::new(limit_bytes),
            item_max: AtomicUsize::new(usize::MAX),
            flush_at: AtomicU64::new(0),
            sweep_shard: AtomicUsize::new(0),
            evict_cursor: AtomicUsize::new(0),
            epoch: std::time::Instant::now(),
            clock,
            journal: OnceLock::new(),
            stats: Stats::default(),
        }
    }

    /// Starts journaling every mutation to `journal` (after replay).
    pub fn attach_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// The journal, if one is attached.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.get()
    }

    /// The clock this store reads.
    #[cfg(test)]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The memory limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the largest value append/prepend may build (the protocol
    /// layer checks plain stores before reading their data).
    pub fn set_item_max(&self, bytes: usize) {
        self.item_max.store(bytes, Ordering::Relaxed);
    }

    /// Changes the memory limit (evicting if now over it).
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
        self.evict(0, None);
    }

    /// Converts a protocol expiry (0 = never, negative = already expired,
    /// up to 30 days = relative, beyond = absolute Unix time) to an absolute
    /// Unix time (0 = never).
    pub fn abs_expiry(&self, exptime: i64) -> u64 {
        if exptime == 0 {
            0
        } else if exptime < 0 {
            1
        } else if exptime <= REL_EXPIRY_MAX {
            self.now() + exptime as u64
        } else {
            exptime as u64
        }
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) >> 32) as usize & (SHARDS - 1)
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock cannot leave the shard
        // half-updated in a way later operations trip on more than they
        // would anyway; keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Why the entry at `idx` is dead, if it is.
    fn dead(&self, e: &Entry, now: u64) -> Option<Dead> {
        if e.exptime != 0 && e.exptime <= now {
            return Some(Dead::Expired);
        }
        let f = self.flush_at.load(Ordering::Relaxed);
        if f != 0 && f <= now && e.stored < f {
            return Some(Dead::Flushed);
        }
        None
    }

    /// Finds a live entry, reclaiming a dead one on the way.
    fn find(&self, sh: &mut Shard, key: &[u8], now: u64) -> (Option<u32>, Option<Dead>) {
        let idx = match sh.map.get(key) {
            Some(&i) => i,
            None => return (None, None),
        };
        match self.dead(sh.entry(idx), now) {
            None => (Some(idx), None),
            Some(d) => {
                sh.remove(idx, &self.stats);
                bump(&self.stats.reclaimed);
                (None, Some(d))
            }
        }
    }

    /// Sends a record to the journal while the shard lock is held (so the
    /// log order of one key matches the order its mutations were applied).
    fn journal_submit(&self, rec: impl FnOnce() -> Record) -> Option<crate::aof::Ticket> {
        self.journal.get().map(|j| j.submit(rec()))
    }

    /// Waits for the journal's verdict; on failure the key is dropped from
    /// memory so no unlogged value is served any longer.
    fn journal_wait(&self, ticket: Option<crate::aof::Ticket>, key: &[u8]) -> Persisted<()> {
        match ticket {
            None => Ok(()),
            Some(t) => t.wait().inspect_err(|_| self.forget(key)),
        }
    }

    /// Removes a key without journaling it.
    fn forget(&self, key: &[u8]) {
        let mut sh = self.lock(self.shard_of(key));
        if let Some(&idx) = sh.map.get(key) {
            sh.remove(idx, &self.stats);
        }
    }

    /// Looks a key up (get/gets), counting hits and misses.
    pub fn get(&self, key: &[u8]) -> Option<Item> {
        bump(&self.stats.cmd_get);
        let now = self.now();
        let i = self.shard_of(key);
        let mut sh = self.lock(i);
        let (found, dead) = self.find(&mut sh, key, now);
        let out = found.map(|idx| {
            sh.bump(idx, self.tick());
            sh.entry(idx).item()
        });
        drop(sh);
        self.count_get(&out, dead);
        out
    }

    fn count_get(&self, out: &Option<Item>, dead: Option<Dead>) {
        match (out, dead) {
            (Some(_), _) => bump(&self.stats.get_hits),
            (None, d) => {
                bump(&self.stats.get_misses);
                match d {
                    Some(Dead::Expired) => bump(&self.stats.get_expired),
                    Some(Dead::Flushed) => bump(&self.stats.get_flushed),
                    None => {}
                }
            }
        }
    }

    /// Looks a key up and sets its expiry (gat/gats).
    pub fn get_and_touch(&self, key: &[u8], exptime: i64) -> Persisted<Option<Item>> {
        bump(&self.stats.cmd_get);
        bump(&self.stats.cmd_touch);
        let r = self.touch_inner(key, exptime)?;
        match r {
            Some(_) => bump(&self.stats.touch_hits),
            None => bump(&self.stats.touch_misses),
        }
        self.count_get(&r, None);
        Ok(r)
    }

    /// Sets a key's expiry; true if it existed.
    pub fn touch(&self, key: &[u8], exptime: i64) -> Persisted<bool> {
        bump(&self.stats.cmd_touch);
        let r = self.touch_inner(key, exptime)?.is_some();
        if r {
            bump(&self.stats.touch_hits);
        } else {
            bump(&self.stats.touch_misses);
        }
        Ok(r)
    }

    fn touch_inner(&self, key: &[u8], exptime: i64) -> Persisted<Option<Item>> {
        let now = self.now();
        let exp = self.abs_expiry(exptime);
        let mut sh = self.lock(self.shard_of(key));
        let (found, _) = self.find(&mut sh, key, now);
        let Some(idx) = found else {
            return Ok(None);
        };
        sh.bump(idx, self.tick());
        let e = sh.entry_mut(idx);
        e.exptime = exp;
        let item = e.item();
        let ticket = self.journal_submit(|| Record::Touch {
            key: key.into(),
            exptime: exp,
        });
        drop(sh);
        self.journal_wait(ticket, key)?;
        Ok(Some(item))
    }

    /// A storage command: set, add, replace, append, prepend or cas.
    /// `exptime` is the protocol's value (see [`Store::abs_expiry`]).
    pub fn store(
        &self,
        mode: Mode,
        key: &[u8],
        data: Value,
        flags: u32,
        exptime: i64,
    ) -> Persisted<StoreStatus> {
        bump(&self.stats.cmd_set);
        let exp = self.abs_expiry(exptime);
        self.store_abs(mode, key, data, flags, exp)
    }

    /// [`Store::store`] with an absolute expiry.
    pub fn store_abs(
        &self,
        mode: Mode,
        key: &[u8],
        data: Value,
        flags: u32,
        exp: u64,
    ) -> Persisted<StoreStatus> {
        let size = key.len() + data.len() + ITEM_OVERHEAD;
        if size > self.limit() {
            return Ok(StoreStatus::NoMemory);
        }
        let now = self.now();
        let i = self.shard_of(key);
        let mut sh = self.lock(i);
        let (found, _) = self.find(&mut sh, key, now);
        let (value, flags, exp) = match (mode, found) {
            (Mode::Set, _) => (data, flags, exp),
            (Mode::Add, None) => (data, flags, exp),
            (Mode::Add, Some(idx)) => {
                // memcached refreshes the existing item's LRU position.
                sh.bump(idx, self.tick());
                return Ok(StoreStatus::NotStored);
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None) => {
                return Ok(StoreStatus::NotStored);
            }
            (Mode::Cas(_), None) => {
                bump(&self.stats.cas_misses);
                return Ok(StoreStatus::NotFound);
            }
            (Mode::Cas(c), Some(idx)) if sh.entry(idx).cas != c => {
                bump(&self.stats.cas_badval);
                return Ok(StoreStatus::Exists);
            }
            (Mode::Cas(_) | Mode::Replace, Some(_)) => (data, flags, exp),
            (Mode::Append, Some(idx)) => {
                let e = sh.entry(idx);
                let mut v = Vec::with_capacity(e.value.len() + data.len());
                v.extend_from_slice(&e.value);
                v.extend_from_slice(&data);
                (Value::from(v), e.flags, e.exptime)
            }
            (Mode::Prepend, Some(idx)) => {
                let e = sh.entry(idx);
                let mut v = Vec::with_capacity(e.value.len() + data.len());
                v.extend_from_slice(&data);
                v.extend_from_slice(&e.value);
                (Value::from(v), e.flags, e.exptime)
            }
        };
        if value.len() > self.item_max.load(Ordering::Relaxed) {
            return Ok(StoreStatus::TooLarge);
        }
        if let Mode::Cas(_) = mode {
            bump(&self.stats.cas_hits);
        }
        let cas = self.next_cas();
        let ticket = self.journal_submit(|| Record::Set {
            key: key.into(),
            value: value.clone(),
            flags,
            exptime: exp,
            stored: now,
        });
        self.put(&mut sh, found, key, value, flags, exp, now, cas);
        drop(sh);
        self.journal_wait(ticket, key)?;
        self.evict(i, Some(key));
        Ok(StoreStatus::Stored(cas))
    }

    /// Writes a value into the shard (replacing or inserting).
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        sh: &mut Shard,
        found: Option<u32>,
        key: &[u8],
        value: Value,
        flags: u32,
        exp: u64,
        now: u64,
        cas: u64,
    ) {
        bump(&self.stats.total_items);
        let atime = self.tick();
        match found {
            Some(idx) => {
                sh.replace(idx, value, flags, exp, now, cas, &self.stats);
                sh.bump(idx, atime);
            }
            None => {
                sh.insert(
                    Entry {
                        key: key.into(),
                        value,
                        flags,
                        exptime: exp,
                        stored: now,
                        cas,
                        atime,
                    },
                    &self.stats,
                );
            }
        }
    }

    /// Monotonic use counter for LRU comparisons (nanoseconds since the
    /// store was made).
    fn tick(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Evicts least-recently-used items until the total is within the
    /// limit, never the item `keep` just stored. Each eviction looks at the
    /// LRU tails of up to [`EVICT_SAMPLES`] non-empty shards (starting with
    /// `first`, then rotating) and removes the oldest of them.
    fn evict(&self, first: usize, keep: Option<&[u8]>) {
        let limit = self.limit() as u64;
        let mut start = first;
        while self.stats.bytes.load(Ordering::Relaxed) > limit {
            let mut best: Option<(u64, usize)> = None;
            let mut seen = 0;
            for k in 0..SHARDS {
                let i = (start + k) & (SHARDS - 1);
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

    /// Deletes a key; with `cas != 0` only if the CAS unique matches.
    pub fn delete(&self, key: &[u8], cas: u64) -> Persisted<DeleteStatus> {
        let now = self.now();
        let mut sh = self.lock(self.shard_of(key));
        let (found, _) = self.find(&mut sh, key, now);
        let status = match found {
            None => DeleteStatus::NotFound,
            Some(idx) if cas != 0 && sh.entry(idx).cas != cas => DeleteStatus::Exists,
            Some(idx) => {
                sh.remove(idx, &self.stats);
                DeleteStatus::Deleted
            }
        };
        let ticket = if status == DeleteStatus::Deleted {
            self.journal_submit(|| Record::Delete { key: key.into() })
        } else {
            None
        };
        drop(sh);
        match status {
            DeleteStatus::Deleted => bump(&self.stats.delete_hits),
            _ => bump(&self.stats.delete_misses),
        }
        self.journal_wait(ticket, key)?;
        Ok(status)
    }

    /// Increments (`incr`) or decrements a decimal value. Increments wrap at
    /// 2^64, decrements stop at 0. With `initial = Some((value, exptime))` a
    /// missing key is created with that value (binary protocol). With
    /// `cas != 0` the item's CAS unique must match.
    pub fn delta(
        &self,
        key: &[u8],
        incr: bool,
        by: u64,
        initial: Option<(u64, i64)>,
        cas: u64,
    ) -> Persisted<DeltaStatus> {
        let now = self.now();
        let i = self.shard_of(key);
        let mut sh = self.lock(i);
        let (found, _) = self.find(&mut sh, key, now);
        let (hits, misses) = if incr {
            (&self.stats.incr_hits, &self.stats.incr_misses)
        } else {
            (&self.stats.decr_hits, &self.stats.decr_misses)
        };
        let (n, flags, exp) = match found {
            None => match initial {
                None => {
                    bump(misses);
                    return Ok(DeltaStatus::NotFound);
                }
                Some((init, exptime)) => {
                    bump(misses);
                    (init, 0, self.abs_expiry(exptime))
                }
            },
            Some(idx) => {
                let e = sh.entry(idx);
                if cas != 0 && e.cas != cas {
                    return Ok(DeltaStatus::Exists);
                }
                let Some(cur) = parse_decimal(&e.value) else {
                    return Ok(DeltaStatus::NonNumeric);
                };
                bump(hits);
                let n = if incr {
                    cur.wrapping_add(by)
                } else {
                    cur.saturating_sub(by)
                };
                (n, e.flags, e.exptime)
            }
        };
        let value: Value = Value::from(n.to_string().into_bytes());
        let c = self.next_cas();
        let ticket = self.journal_submit(|| Record::Set {
            key: key.into(),
            value: value.clone(),
            flags,
            exptime: exp,
            stored: now,
        });
        self.put(&mut sh, found, key, value, flags, exp, now, c);
        drop(sh);
        self.journal_wait(ticket, key)?;
        if found.is_none() {
            self.evict(i, Some(key));
        }
        Ok(DeltaStatus::Value(n, c))
    }

    /// `flush_all`: with `delay <= 0` everything goes now; otherwise items
    /// stored before now + delay become invalid at that time.
    pub fn flush(&self, delay: i64) -> Persisted<()> {
        bump(&self.stats.cmd_flush);
        let at = if delay > 0 { self.abs_expiry(delay) } else { 0 };
        // All shard locks, in order, so the flush is one point in every
        // key's history and in the journal.
        let mut guards: Vec<MutexGuard<'_, Shard>> = (0..SHARDS).map(|i| self.lock(i)).collect();
        self.apply_flush(&mut guards, at);
        let ticket = self.journal_submit(|| Record::Flush { at });
        drop(guards);
        match ticket {
            None => Ok(()),
            Some(t) => t.wait(),
        }
    }

    fn apply_flush(&self, guards: &mut [MutexGuard<'_, Shard>], at: u64) {
        if at == 0 {
            self.flush_at.store(0, Ordering::Relaxed);
            for g in guards.iter_mut() {
                g.clear(&self.stats);
            }
        } else {
            self.flush_at.store(at, Ordering::Relaxed);
        }
    }

    /// Removes expired and flushed items, examining at most `budget` slots
    /// (spread over the shards in turn). Returns how many were removed.
    pub fn sweep_expired(&self, budget: usize) -> usize {
        let now = self.now();
        let per_shard = budget.div_ceil(SHARDS).max(1);
        let mut removed = 0;
        let mut examined = 0;
        while examined < budget {
            let i = self.sweep_shard.fetch_add(1, Ordering::Relaxed) & (SHARDS - 1);
            let mut sh = self.lock(i);
            let len = sh.slots.len();
            if len == 0 {
                examined += per_shard;
                continue;
            }
            let mut cursor = sh.sweep_cursor % len;
            for _ in 0..per_shard.min(len) {
                let dead = matches!(&sh.slots[cursor], Some(e) if self.dead(e, now).is_some());
                if dead {
                    sh.remove(cursor as u32, &self.stats);
                    bump(&self.stats.reclaimed);
                    removed += 1;
                }
                cursor = (cursor + 1) % len;
            }
            sh.sweep_cursor = cursor;
            examined += per_shard;
        }
        removed
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

    /// A pending delayed flush (Unix seconds), if one is set.
    pub fn pending_flush(&self) -> u64 {
        self.flush_at.load(Ordering::Relaxed)
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

    /// Number of items currently held (expired ones until reclaimed).
    pub fn len(&self) -> usize {
        self.stats.curr_items.load(Ordering::Relaxed) as usize
    }
}

/// Parses a stored value as an unsigned decimal below 2^64, as incr/decr
/// need it: digits, optionally followed by spaces.
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    let end = v.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    let digits = &v[..end];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::with_clock(64 << 20, Clock::Manual(AtomicU64::new(1_700_000_000)))
    }

    fn v(s: &str) -> Value {
        Value::from(s.as_bytes())
    }

    fn val(st: &Store, k: &str) -> Option<String> {
        st.get(k.as_bytes())
            .map(|i| String::from_utf8(i.value.to_vec()).unwrap())
    }

    #[test]
    fn set_get_delete() {
        let st = store();
        assert!(matches!(
            st.store(Mode::Set, b"a", v("1"), 5, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
        let it = st.get(b"a").unwrap();
        assert_eq!(&it.value[..], b"1");
        assert_eq!(it.flags, 5);
        assert_eq!(st.delete(b"a", 0).unwrap(), DeleteStatus::Deleted);
        assert_eq!(st.delete(b"a", 0).unwrap(), DeleteStatus::NotFound);
        assert!(st.get(b"a").is_none());
        assert_eq!(st.stats.get_hits.load(Ordering::Relaxed), 1);
        assert_eq!(st.stats.get_misses.load(Ordering::Relaxed), 1);
        assert_eq!(st.len(), 0);
        assert_eq!(st.stats.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn add_replace_append_prepend() {
        let st = store();
        assert_eq!(
            st.store(Mode::Replace, b"k", v("x"), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert_eq!(
            st.store(Mode::Append, b"k", v("x"), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert_eq!(
            st.store(Mode::Prepend, b"k", v("x"), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert!(matches!(
            st.store(Mode::Add, b"k", v("b"), 7, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
        assert_eq!(
            st.store(Mode::Add, b"k", v("z"), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert!(matches!(
            st.store(Mode::Append, b"k", v("c"), 1, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
        assert!(matches!(
            st.store(Mode::Prepend, b"k", v("a"), 1, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
        let it = st.get(b"k").unwrap();
        assert_eq!(&it.value[..], b"abc");
        assert_eq!(it.flags, 7, "append/prepend keep flags");
        assert!(matches!(
            st.store(Mode::Replace, b"k", v("r"), 2, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
        assert_eq!(val(&st, "k").as_deref(), Some("r"));
    }

    #[test]
    fn cas_rules() {
        let st = store();
        assert_eq!(
            st.store(Mode::Cas(1), b"k", v("x"), 0, 0).unwrap(),
            StoreStatus::NotFound
        );
        let StoreStatus::Stored(c1) = st.store(Mode::Set, b"k", v("a"), 0, 0).unwrap() else {
            panic!("set failed")
        };
        assert_eq!(st.get(b"k").unwrap().cas, c1);
        assert_eq!(
            st.store(Mode::Cas(c1 + 100), b"k", v("b"), 0, 0).unwrap(),
            StoreStatus::Exists
        );
        let StoreStatus::Stored(c2) = st.store(Mode::Cas(c1), b"k", v("b"), 0, 0).unwrap() else {
            panic!("cas failed")
        };
        assert!(c2 > c1);
        assert_eq!(
            st.store(Mode::Cas(c1), b"k", v("c"), 0, 0).unwrap(),
            StoreStatus::Exists
        );
        assert_eq!(st.delete(b"k", c1).unwrap(), DeleteStatus::Exists);
        assert_eq!(st.delete(b"k", c2).unwrap(), DeleteStatus::Deleted);
        assert_eq!(st.stats.cas_hits.load(Ordering::Relaxed), 1);
        assert_eq!(st.stats.cas_badval.load(Ordering::Relaxed), 2);
        assert_eq!(st.stats.cas_misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn incr_decr_rules() {
        let st = store();
        assert_eq!(
            st.delta(b"n", true, 1, None, 0).unwrap(),
            DeltaStatus::NotFound
        );
        st.store(Mode::Set, b"n", v("18446744073709551614"), 3, 0)
            .unwrap();
        assert!(matches!(
            st.delta(b"n", true, 1, None, 0).unwrap(),
            DeltaStatus::Value(u64::MAX, _)
        ));
        assert!(
            matches!(
                st.delta(b"n", true, 2, None, 0).unwrap(),
                DeltaStatus::Value(1, _)
            ),
            "incr wraps at 2^64"
        );
        assert!(
            matches!(
                st.delta(b"n", false, 5, None, 0).unwrap(),
                DeltaStatus::Value(0, _)
            ),
            "decr floors at 0"
        );
        assert_eq!(st.get(b"n").unwrap().flags, 3);
        st.store(Mode::Set, b"t", v("abc"), 0, 0).unwrap();
        assert_eq!(
            st.delta(b"t", true, 1, None, 0).unwrap(),
            DeltaStatus::NonNumeric
        );
        st.store(Mode::Set, b"t", v("18446744073709551616"), 0, 0)
            .unwrap();
        assert_eq!(
            st.delta(b"t", true, 1, None, 0).unwrap(),
            DeltaStatus::NonNumeric,
            "2^64 is not a u64"
        );
        st.store(Mode::Set, b"t", v("12 "), 0, 0).unwrap();
        assert!(matches!(
            st.delta(b"t", false, 3, None, 0).unwrap(),
            DeltaStatus::Value(9, _)
        ));
        assert_eq!(val(&st, "t").as_deref(), Some("9"));
        // Binary protocol: create with initial value.
        assert!(matches!(
            st.delta(b"new", true, 5, Some((10, 0)), 0).unwrap(),
            DeltaStatus::Value(10, _)
        ));
        assert!(matches!(
            st.delta(b"new", true, 5, Some((10, 0)), 0).unwrap(),
            DeltaStatus::Value(15, _)
        ));
        assert_eq!(
            st.delta(b"new", true, 5, None, 12345678).unwrap(),
            DeltaStatus::Exists
        );
    }

    #[test]
    fn parse_decimal_cases() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"1 2"), None);
        assert_eq!(parse_decimal(b"7   "), Some(7));
    }

    #[test]
    fn expiry_relative_absolute_negative() {
        let st = store();
        let now = st.now();
        st.store(Mode::Set, b"rel", v("x"), 0, 10).unwrap();
        st.store(Mode::Set, b"abs", v("x"), 0, (now + 20) as i64)
            .unwrap();
        st.store(Mode::Set, b"neg", v("x"), 0, -1).unwrap();
        st.store(Mode::Set, b"past", v("x"), 0, REL_EXPIRY_MAX + 1)
            .unwrap();
        st.store(Mode::Set, b"forever", v("x"), 0, 0).unwrap();
        assert!(st.get(b"neg").is_none());
        assert!(
            st.get(b"past").is_none(),
            "absolute time in 1970 is expired"
        );
        assert!(st.get(b"rel").is_some());
        st.clock().advance(10);
        assert!(st.get(b"rel").is_none());
        assert!(st.get(b"abs").is_some());
        st.clock().advance(10);
        assert!(st.get(b"abs").is_none());
        assert!(st.get(b"forever").is_some());
        assert!(st.stats.get_expired.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn touch_and_gat() {
        let st = store();
        assert!(!st.touch(b"k", 10).unwrap());
        st.store(Mode::Set, b"k", v("x"), 0, 5).unwrap();
        assert!(st.touch(b"k", 100).unwrap());
        st.clock().advance(50);
        let it = st.get_and_touch(b"k", 10).unwrap().unwrap();
        assert_eq!(&it.value[..], b"x");
        st.clock().advance(11);
        assert!(st.get(b"k").is_none());
        assert_eq!(st.get_and_touch(b"k", 10).unwrap(), None);
    }

    #[test]
    fn expired_items_do_not_satisfy_add_or_replace() {
        let st = store();
        st.store(Mode::Set, b"k", v("x"), 0, 1).unwrap();
        st.clock().advance(2);
        assert_eq!(
            st.store(Mode::Replace, b"k", v("y"), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert!(matches!(
            st.store(Mode::Add, b"k", v("y"), 0, 0).unwrap(),
            StoreStatus::Stored(_)
        ));
    }

    #[test]
    fn flush_now_and_delayed() {
        let st = store();
        st.store(Mode::Set, b"a", v("1"), 0, 0).unwrap();
        st.flush(0).unwrap();
        assert!(st.get(b"a").is_none());
        assert_eq!(st.len(), 0);
        st.store(Mode::Set, b"a", v("1"), 0, 0).unwrap();
        assert!(st.get(b"a").is_some(), "items stored after a flush live");
        st.flush(10).unwrap();
        assert!(st.get(b"a").is_some(), "delayed flush has not happened yet");
        st.clock().advance(10);
        assert!(st.get(b"a").is_none());
        st.store(Mode::Set, b"b", v("2"), 0, 0).unwrap();
        assert!(st.get(b"b").is_some(), "stored after the flush time");
    }

    #[test]
    fn sweep_reclaims_expired() {
        let st = store();
        for i in 0..1000 {
            st.store(
                Mode::Set,
                format!("k{i}").as_bytes(),
                v("x"),
                0,
                if i % 2 == 0 { 5 } else { 0 },
            )
            .unwrap();
        }
        st.clock().advance(6);
        let mut removed = 0;
        for _ in 0..20 {
            removed += st.sweep_expired(1000);
        }
        assert_eq!(removed, 500);
        assert_eq!(st.len(), 500);
    }

    #[test]
    fn lru_eviction_respects_limit_and_recency() {
        // Room for about 100 items of 100 bytes.
        let item = 100 + 3 + ITEM_OVERHEAD;
        let st = Store::with_clock(item * 100, Clock::Manual(AtomicU64::new(1_700_000_000)));
        let big = Value::from(vec![b'x'; 100]);
        st.store(Mode::Set, b"hot", big.clone(), 0, 0).unwrap();
        for i in 0..1000 {
            st.store(Mode::Set, format!("{i:03}").as_bytes(), big.clone(), 0, 0)
                .unwrap();
            // Keep "hot" recently used.
            assert!(st.get(b"hot").is_some(), "hot key evicted at {i}");
            assert!(st.stats.bytes.load(Ordering::Relaxed) as usize <= st.limit());
        }
        assert!(st.stats.evictions.load(Ordering::Relaxed) >= 900);
        assert!(st.get(b"999").is_some(), "the newest item survives");
        assert!(st.get(b"000").is_none(), "an old item was evicted");
    }

    #[test]
    fn item_bigger_than_memory_is_refused() {
        let st = Store::with_clock(1000, Clock::Manual(AtomicU64::new(0)));
        let r = st
            .store(Mode::Set, b"k", Value::from(vec![0u8; 2000]), 0, 0)
            .unwrap();
        assert_eq!(r, StoreStatus::NoMemory);
    }

    #[test]
    fn stats_bytes_follow_replacements() {
        let st = store();
        st.store(Mode::Set, b"k", v("1234567890"), 0, 0).unwrap();
        st.store(Mode::Set, b"k", v("1"), 0, 0).unwrap();
        assert_eq!(
            st.stats.bytes.load(Ordering::Relaxed) as usize,
            1 + 1 + ITEM_OVERHEAD
        );
        st.store(Mode::Append, b"k", v("23"), 0, 0).unwrap();
        assert_eq!(
            st.stats.bytes.load(Ordering::Relaxed) as usize,
            1 + 3 + ITEM_OVERHEAD
        );
    }

    #[test]
    fn concurrent_incr_is_exact() {
        let st = Arc::new(store());
        st.store(Mode::Set, b"c", v("0"), 0, 0).unwrap();
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let st = st.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        st.delta(b"c", true, 1, None, 0).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(val(&st, "c").as_deref(), Some("4000"));
    }
}
