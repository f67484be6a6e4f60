//! The item store: sharded open-addressing tables of single-allocation
//! items with CLOCK eviction, lazy and swept expiry, CAS uniques, memory-limited eviction and the statistics the
//! `stats` command reports.
//!
//! # Layout
//!
//! Keys hash to one of up to [`SHARDS`] shards (fewer under a small limit),
//! each a `Mutex` around an open-addressing index. An item is one
//! allocation ([`item`]): a 32-byte header (CAS unique, flags, expiry, last
//! access, key and value lengths, a byte of bits), then the key, then the
//! value; a 14-byte key and a 10-byte value fit one 64-byte malloc chunk.
//! The index ([`table`]) is an array of 8-byte thin pointers to items,
//! probed linearly from the key's hash, with no tombstones (a delete
//! shifts the rest of its cluster back), doubled past 13/16 full. Locks are
//! held only for the table operation itself; an item is reference counted
//! ([`Value`], 4-byte count), so a read clones a pointer under the lock and
//! copies the value bytes to the socket after the lock is gone.
//!
//! # Memory limit and eviction
//!
//! The limit bounds what the store really holds: each item is charged its
//! one allocation as glibc's malloc rounds it ([`item_bytes`], tested
//! against `malloc_usable_size`), and each shard charges its index at its
//! capacity, so slots left behind by deletes and evictions, and the slack
//! of a doubled table, count too. `stats` reports the first as `bytes` and
//! the second as `hash_bytes`; both sum to at most `limit_maxbytes`, apart
//! from the overshoot below. Both totals are global atomic counters. After
//! heavy churn the server hands free pages in the middle of the heap back
//! to the system ([`Store::trim`]), so items of one size replaced by items
//! of another do not keep both resident.
//!
//! A store that pushes the total past the limit evicts until it is back
//! under, by CLOCK: a hit sets the item's reference bit; each shard's hand
//! sweeps its table, clearing set bits (a second chance) and stopping at
//! unreferenced items, of which it takes the oldest in a window of four
//! (last access in seconds, then CAS unique, which orders the items of one
//! second). Across shards each eviction compares the candidates of up to 8
//! non-empty shards, its own first, and evicts from the one whose
//! candidate is oldest, never the item just stored; shards are locked one
//! at a time. Concurrent stores may overshoot the limit by at most one
//! item per storing thread until their eviction passes run.
//!
//! # Expiry and flush
//!
//! Expiry times are absolute Unix seconds (0 = never). Expired items are
//! removed when touched by a command and by [`Store::sweep_expired`], which
//! the server calls from a timer with a budget of slots to examine.
//! `flush_all` without delay empties every shard at once; with a delay it
//! records the flush time, and from then on items last stored or used
//! before that time read as absent (and are reclaimed lazily or by the
//! sweep), as memcached decides it on the item's last-access time.
//!
//! # Files
//!
//! This file holds the commands; [`item`] the item block, [`table`] the
//! index, [`shard`] a shard and its CLOCK hand, [`evict`] the memory
//! limit, [`expiry`] the clock, expiry and flush, [`stats`] the counters,
//! [`journal`] the link to the append-only log.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::aof::{Journal, Record};

mod evict;
mod expiry;
mod item;
mod journal;
mod meta;
mod shard;
mod stats;
mod table;
#[cfg(test)]
mod tests;

pub use expiry::Clock;
use item::bit;
pub use item::{item_bytes, Value};
pub use meta::{MetaGetOpts, SetOpts};
use shard::{item_of, Dead, MetaBits, Shard};
use stats::bump;
pub use stats::{Counter, Stats};

/// Most shards; a power of two.
pub const SHARDS: usize = 64;
/// A store gets one shard per this many bytes of limit (up to
/// [`SHARDS`]): each shard's index has a fixed base cost, which a small
/// limit should not be spent on.
const BYTES_PER_SHARD: usize = 256 * 1024;

fn shard_count(limit: usize) -> usize {
    (limit / BYTES_PER_SHARD)
        .clamp(1, SHARDS)
        .next_power_of_two()
        .min(SHARDS)
}
/// Longest key, in bytes (memcached's limit).
pub const KEY_MAX: usize = 250;
/// glibc's malloc threshold above which it maps whole pages.
const MMAP_THRESHOLD: usize = 128 * 1024;

/// Bytes glibc's malloc takes from memory for a request of `n` bytes: the
/// request plus an 8-byte header, rounded up to 16, at least 32; above the
/// mmap threshold, whole pages. (A test checks this against
/// `malloc_usable_size`.)
pub fn malloc_bytes(n: usize) -> usize {
    if n >= MMAP_THRESHOLD {
        (n + 16 + 4095) & !4095
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// What one more item costs at least: its allocation plus its share of a
/// full index (one 8-byte slot at the table's highest load).
pub fn item_cost(key_len: usize, value_len: usize) -> usize {
    item_bytes(key_len, value_len) + INDEX_SLOT_BYTES
}

/// One item's share of a full index: an 8-byte slot at 13/16 load.
const INDEX_SLOT_BYTES: usize = 8 * 16 / 13 + 1;
/// Expiry values up to this many seconds are relative to now; larger ones
/// are absolute Unix times.
pub const REL_EXPIRY_MAX: i64 = 60 * 60 * 24 * 30;

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
        let hasher = std::collections::hash_map::RandomState::new();
        Store {
            shards: (0..shard_count(limit_bytes))
                .map(|_| Mutex::new(Shard::new(hasher.clone())))
                .collect(),
            hasher,
            cas: AtomicU64::new(0),
            limit: AtomicUsize::new(limit_bytes),
            item_max: AtomicUsize::new(usize::MAX),
            flush_at: AtomicU64::new(0),
            sweep_shard: AtomicUsize::new(0),
            evict_cursor: AtomicUsize::new(0),
            clock,
            journal: OnceLock::new(),
            stats: Stats::default(),
        }
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

    fn shard_of(&self, key: &[u8]) -> usize {
        self.locate(key).0
    }

    /// The shard of `key` and its hash, hashed once: the high half picks
    /// the shard, the low half the slot in the shard's table (the shards
    /// hash with the same keys).
    fn locate(&self, key: &[u8]) -> (usize, u64) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        ((h >> 32) as usize & (self.shards.len() - 1), h)
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

    /// Why the item `e` is dead, if it is. A delayed flush kills what was
    /// last stored or used before its time (as memcached, which compares
    /// the item's last-access time): an item used after the flush time was
    /// found alive then, so it was stored after it.
    fn dead(&self, e: &Value, now: u64) -> Option<Dead> {
        let exptime = e.exptime();
        if exptime != 0 && exptime <= now {
            return Some(Dead::Expired);
        }
        let f = self.flush_at.load(Ordering::Relaxed);
        if f != 0 && f <= now && e.time() < f {
            return Some(Dead::Flushed);
        }
        None
    }

    /// Finds a live entry, reclaiming a dead one on the way.
    fn find(&self, sh: &mut Shard, key: &[u8], now: u64) -> (Option<usize>, Option<Dead>) {
        let h = sh.hash(key);
        self.find_hashed(sh, key, h, now)
    }

    /// [`Store::find`] for a key hashed already ([`Store::locate`]).
    fn find_hashed(
        &self,
        sh: &mut Shard,
        key: &[u8],
        h: u64,
        now: u64,
    ) -> (Option<usize>, Option<Dead>) {
        let Some(idx) = sh.find_hashed(h, key) else {
            return (None, None);
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

    /// Removes a key without journaling it.
    fn forget(&self, key: &[u8]) {
        let mut sh = self.lock(self.shard_of(key));
        if let Some(idx) = sh.find(key) {
            sh.remove(idx, &self.stats);
        }
    }

    /// Looks a key up (get/gets), counting hits and misses.
    pub fn get(&self, key: &[u8]) -> Option<Item> {
        bump(&self.stats.cmd_get);
        let now = self.now();
        let (i, h) = self.locate(key);
        let mut sh = self.lock(i);
        let (found, dead) = self.find_hashed(&mut sh, key, h, now);
        let out = found.map(|idx| {
            sh.bump(idx);
            let e = sh.entry(idx);
            e.set_bits(bit::FETCHED, true);
            e.set_time(now);
            item_of(e)
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
        self.journal_check()?;
        let now = self.now();
        let exp = self.abs_expiry(exptime);
        let mut sh = self.lock(self.shard_of(key));
        let (found, _) = self.find(&mut sh, key, now);
        let Some(idx) = found else {
            let ticket = self.journal_absent(key);
            drop(sh);
            self.journal_wait(ticket, key)?;
            return Ok(None);
        };
        sh.bump(idx);
        let e = sh.entry(idx);
        e.set_exptime(exp);
        e.set_bits(bit::FETCHED, true);
        e.set_time(now);
        let item = item_of(e);
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
        data: impl AsRef<[u8]>,
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
        data: impl AsRef<[u8]>,
        flags: u32,
        exp: u64,
    ) -> Persisted<StoreStatus> {
        self.store_with(mode, key, data, flags, exp, SetOpts::default())
    }

    /// [`Store::store_abs`] with the meta protocol's options.
    pub fn store_with(
        &self,
        mode: Mode,
        key: &[u8],
        data: impl AsRef<[u8]>,
        flags: u32,
        exp: u64,
        opts: SetOpts,
    ) -> Persisted<StoreStatus> {
        let data = data.as_ref();
        if key.len() > item::KEY_LEN_MAX {
            return Ok(StoreStatus::NotStored);
        }
        if item_cost(key.len(), data.len()) > self.limit() {
            return Ok(StoreStatus::NoMemory);
        }
        let item_max = self.item_max.load(Ordering::Relaxed).min(item::VALUE_MAX);
        if data.len() > item_max {
            return Ok(StoreStatus::TooLarge);
        }
        self.journal_check()?;
        let now = self.now();
        // Everything but append and prepend stores `data` as it is: build
        // the item before taking the lock (its CAS unique is set under it).
        let fresh = match mode {
            Mode::Append | Mode::Prepend => None,
            _ => Some(Value::build(key, &[data], flags, exp, now, 0)),
        };
        let (i, h) = self.locate(key);
        let mut sh = self.lock(i);
        let (found, _) = self.find_hashed(&mut sh, key, h, now);
        let item = match (mode, found, fresh) {
            (Mode::Add, Some(idx), _) => {
                // memcached refreshes the existing item's LRU position.
                sh.bump(idx);
                return Ok(StoreStatus::NotStored);
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None, _) => {
                let ticket = self.journal_absent(key);
                drop(sh);
                self.journal_wait(ticket, key)?;
                return Ok(StoreStatus::NotStored);
            }
            (Mode::Cas(_), None, _) => {
                bump(&self.stats.cas_misses);
                let ticket = self.journal_absent(key);
                drop(sh);
                self.journal_wait(ticket, key)?;
                return Ok(StoreStatus::NotFound);
            }
            // Invalidation mode: an older CAS still stores, as a stale
            // item (the write of a client that lost a race is kept until
            // the winner's).
            (Mode::Cas(c), Some(idx), _)
                if !(opts.invalidate && c < sh.entry(idx).cas()) && sh.entry(idx).cas() != c =>
            {
                bump(&self.stats.cas_badval);
                return Ok(StoreStatus::Exists);
            }
            (Mode::Append | Mode::Prepend, Some(idx), _) => {
                let e = sh.entry(idx);
                if e.len() + data.len() > item_max {
                    return Ok(StoreStatus::TooLarge);
                }
                let parts: [&[u8]; 2] = if mode == Mode::Append {
                    [e, data]
                } else {
                    [data, e]
                };
                Value::build(key, &parts, e.flags(), e.exptime(), now, 0)
            }
            (_, _, Some(fresh)) => fresh,
            (_, _, None) => unreachable!("only append and prepend build under the lock"),
        };
        if opts.invalidate {
            if let (Mode::Cas(c), Some(idx)) = (mode, found) {
                item.set_bits(bit::STALE, c < sh.entry(idx).cas());
            }
        }
        item.set_bits(bit::BINARY_KEY, opts.binary_key);
        if let Mode::Cas(_) = mode {
            bump(&self.stats.cas_hits);
        }
        let cas = opts.new_cas.unwrap_or_else(|| self.next_cas());
        item.set_cas(cas);
        let ticket = self.journal_submit(|| Record::Set {
            key: key.into(),
            value: item.clone(),
            flags: item.flags(),
            exptime: item.exptime(),
            stored: now,
            cas,
        });
        self.put(&mut sh, found, item);
        drop(sh);
        self.journal_wait(ticket, key)?;
        self.evict(i, Some(key));
        Ok(StoreStatus::Stored(cas))
    }

    /// Puts a built item into the shard, replacing the one in slot `found`
    /// (same key) or inserting it; returns its slot.
    fn put(&self, sh: &mut Shard, found: Option<usize>, item: Value) -> usize {
        bump(&self.stats.total_items);
        match found {
            Some(idx) => {
                sh.replace(idx, item, &self.stats);
                sh.bump(idx);
                idx
            }
            None => sh.insert(item, &self.stats),
        }
    }

    /// Deletes a key; with `cas != 0` only if the CAS unique matches.
    ///
    /// A delete that finds nothing is logged too: the key may still be in
    /// the log (evicted, expired, or lost to a failed write), and the
    /// client was told it is gone.
    pub fn delete(&self, key: &[u8], cas: u64) -> Persisted<DeleteStatus> {
        self.journal_check()?;
        let now = self.now();
        let (i, h) = self.locate(key);
        let mut sh = self.lock(i);
        let (found, _) = self.find_hashed(&mut sh, key, h, now);
        let status = match found {
            None => DeleteStatus::NotFound,
            Some(idx) if cas != 0 && sh.entry(idx).cas() != cas => DeleteStatus::Exists,
            Some(idx) => {
                sh.remove(idx, &self.stats);
                DeleteStatus::Deleted
            }
        };
        let ticket = match status {
            DeleteStatus::Deleted | DeleteStatus::NotFound => self.journal_absent(key),
            DeleteStatus::Exists => None,
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
    /// `cas != 0` the item's CAS unique must match. A miss is logged as a
    /// delete (see [`Store::delete`]).
    pub fn delta(
        &self,
        key: &[u8],
        incr: bool,
        by: u64,
        initial: Option<(u64, i64)>,
        cas: u64,
    ) -> Persisted<DeltaStatus> {
        self.delta_with(key, incr, by, initial, cas, None)
    }

    /// [`Store::delta`] giving the changed item the CAS unique `new_cas`
    /// instead of the next one (the meta protocol's `E`).
    pub fn delta_with(
        &self,
        key: &[u8],
        incr: bool,
        by: u64,
        initial: Option<(u64, i64)>,
        cas: u64,
        new_cas: Option<u64>,
    ) -> Persisted<DeltaStatus> {
        if key.len() > item::KEY_LEN_MAX {
            return Ok(DeltaStatus::NotFound);
        }
        self.journal_check()?;
        let now = self.now();
        let (i, h) = self.locate(key);
        let mut sh = self.lock(i);
        let (found, _) = self.find_hashed(&mut sh, key, h, now);
        let (hits, misses) = if incr {
            (&self.stats.incr_hits, &self.stats.incr_misses)
        } else {
            (&self.stats.decr_hits, &self.stats.decr_misses)
        };
        let (n, flags, exp, old_len) = match found {
            None => match initial {
                None => {
                    bump(misses);
                    let ticket = self.journal_absent(key);
                    drop(sh);
                    self.journal_wait(ticket, key)?;
                    return Ok(DeltaStatus::NotFound);
                }
                Some((init, exptime)) => {
                    bump(misses);
                    (init, 0, self.abs_expiry(exptime), 0)
                }
            },
            Some(idx) => {
                let e = sh.entry(idx);
                if cas != 0 && e.cas() != cas {
                    return Ok(DeltaStatus::Exists);
                }
                let Some(cur) = parse_decimal(e) else {
                    return Ok(DeltaStatus::NonNumeric);
                };
                bump(hits);
                let n = if incr {
                    cur.wrapping_add(by)
                } else {
                    cur.saturating_sub(by)
                };
                (n, e.flags(), e.exptime(), e.len())
            }
        };
        // As memcached, which rewrites a shorter number in place: the
        // digits are padded with spaces to the old length.
        let mut digits = n.to_string().into_bytes();
        if digits.len() < old_len {
            digits.resize(old_len, b' ');
        }
        let c = new_cas.unwrap_or_else(|| self.next_cas());
        let item = Value::build(key, &[&digits], flags, exp, now, c);
        let ticket = self.journal_submit(|| Record::Set {
            key: key.into(),
            value: item.clone(),
            flags,
            exptime: item.exptime(),
            stored: now,
            cas: c,
        });
        self.put(&mut sh, found, item);
        drop(sh);
        self.journal_wait(ticket, key)?;
        if found.is_none() {
            self.evict(i, Some(key));
        }
        Ok(DeltaStatus::Value(n, c))
    }

    /// Bytes charged against the limit: items and index.
    pub fn charged(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed) + self.stats.index_bytes.load(Ordering::Relaxed)
    }

    /// Number of items currently held (expired ones until reclaimed).
    pub fn len(&self) -> usize {
        self.stats.curr_items.load(Ordering::Relaxed) as usize
    }
}

/// Parses a stored value as an unsigned decimal below 2^64, as incr/decr
/// need it, by memcached's rule (C's `strtoull`): leading white space, an
/// optional sign, digits, then the end or white space and anything after
/// it. A minus sign is refused unless the result, as memcached computes it,
/// is not negative as a signed number (`-0`).
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r');
    let start = v.iter().position(|b| !space(b))?;
    let mut rest = &v[start..];
    let neg = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'-' | b'+')) {
        rest = &rest[1..];
    }
    let ndigits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if ndigits == 0 || !(ndigits == rest.len() || space(&rest[ndigits])) {
        return None;
    }
    let n: u64 = std::str::from_utf8(&rest[..ndigits]).ok()?.parse().ok()?;
    let n = if neg { n.wrapping_neg() } else { n };
    if neg && (n as i64) < 0 {
        return None;
    }
    Some(n)
}
