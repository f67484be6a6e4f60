//! The `stats` subcommands beyond the general counters: `settings`,
//! `items`, `slabs`, `sizes` and `conns`, in memcached 1.6's names, order
//! and line format, which monitoring tools (the Prometheus memcached
//! exporter, `memcached-tool`) parse.
//!
//! # Settings
//!
//! `stats settings` prints every name memcached 1.6.18 prints, in its
//! order. Settings kv has report kv's values; those of features kv does not
//! have (slab rebalancing, the LRU crawler, extstore, UDP) report what
//! memcached reports with the feature off.
//!
//! # Items and slabs without a slab allocator
//!
//! kv allocates each item on its own, so it has no slab classes. `stats
//! items` and `stats slabs` group the live items by the class memcached
//! would put them in (its default geometry: 96-byte smallest chunk, growth
//! factor 1.25, 8-byte alignment, 512 KiB largest chunk, 1 MiB pages, and
//! its item size: a 48-byte header, 8 bytes of CAS, the key and a NUL, the
//! value with its `\r\n`, and 4 bytes of flags when they are not 0). Per
//! class, the item count, the bytes requested and the age of the oldest
//! item are exact, and the page figures are those memcached would need for
//! these items (an item bigger than the largest chunk is counted as
//! memcached splits it: a header chunk, whole largest chunks and one chunk
//! for the rest); the per-class hit, eviction and
//! LRU-movement counters are
//! not kept by kv and read 0 (the server-wide ones are in plain `stats`).
//! Walking the items costs one pass over the table, shard by shard.
//!
//! # Connections
//!
//! `stats conns` lists the listening address (id 0, state
//! `conn_listening`) and every open connection under its socket number,
//! with its peer, its listening address, `conn_waiting` while it waits
//! for input (`conn_parse_cmd` otherwise) and the seconds since it last
//! received bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::conn::Ctx;

/// memcached's item header size on a 64-bit build (`sizeof(item)`).
const ITEM_HEADER: usize = 48;
/// Smallest chunk memcached adds to the header (`-n`, default 48).
const CHUNK_SIZE: usize = 48;
/// Growth factor between classes (`-f`, default 1.25).
const GROWTH: f64 = 1.25;
/// Largest chunk (`slab_chunk_max`, default half a page).
const CHUNK_MAX: usize = 512 * 1024;
/// Page size (`-I` default, 1 MiB).
const PAGE: usize = 1024 * 1024;
/// Chunk alignment.
const ALIGN: usize = 8;
/// Header of one chunk of an item bigger than the largest chunk.
const CHUNK_HEADER: usize = 48;

/// The open connections, for `stats conns`.
#[derive(Debug, Default)]
pub struct ConnTable {
    /// By (socket number, registration number): a socket number is reused
    /// as soon as its connection closes, possibly before the closed
    /// connection's fiber has removed its entry.
    open: Mutex<BTreeMap<(u64, u64), Arc<ConnStat>>>,
    /// Registrations so far.
    seq: AtomicU64,
    /// The listening address (`tcp:HOST:PORT`), once known.
    pub listen: Mutex<String>,
    /// Unix second of the last accepted connection.
    last_accept: AtomicU64,
}

/// What `stats conns` shows of one connection; the connection updates it.
#[derive(Debug)]
pub struct ConnStat {
    peer: String,
    /// Unix second of the last bytes received.
    last_read: AtomicU64,
    /// True while the connection waits for input.
    waiting: AtomicBool,
}

impl ConnStat {
    /// The connection is about to wait for input.
    pub fn waiting(&self) {
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// The connection received bytes at Unix second `now`.
    pub fn read_at(&self, now: u64) {
        self.waiting.store(false, Ordering::Relaxed);
        self.last_read.store(now, Ordering::Relaxed);
    }
}

/// Removes a connection from the table when it ends.
#[derive(Debug)]
pub struct Registered<'a> {
    table: &'a ConnTable,
    id: (u64, u64),
    /// The entry the connection updates.
    pub stat: Arc<ConnStat>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.table.open.lock().unwrap().remove(&self.id);
    }
}

impl ConnTable {
    /// Adds connection `id` (its socket number) from `peer` at Unix second
    /// `now`, until [`remove`](Self::remove): the owned form of
    /// [`register`](Self::register), for connections that outlive a call.
    /// Returns the entry's key and the entry.
    pub fn insert(&self, id: u64, peer: String, now: u64) -> ((u64, u64), Arc<ConnStat>) {
        let stat = Arc::new(ConnStat {
            peer,
            last_read: AtomicU64::new(now),
            waiting: AtomicBool::new(false),
        });
        self.last_accept.store(now, Ordering::Relaxed);
        let id = (id, self.seq.fetch_add(1, Ordering::Relaxed));
        self.open.lock().unwrap().insert(id, stat.clone());
        (id, stat)
    }

    /// Removes the entry under `id` (a key [`insert`](Self::insert) gave).
    pub fn remove(&self, id: (u64, u64)) {
        self.open.lock().unwrap().remove(&id);
    }

    /// Adds connection `id` (its socket number) from `peer` at Unix second
    /// `now`.
    pub fn register(&self, id: u64, peer: String, now: u64) -> Registered<'_> {
        let (id, stat) = self.insert(id, peer, now);
        Registered {
            table: self,
            id,
            stat,
        }
    }
}

type List = Vec<(String, String)>;

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// `stats settings`.
pub fn settings(ctx: &Ctx) -> List {
    let threads = s(ctx.threads);
    let listen = ctx.conns.listen.lock().unwrap().clone();
    let (inter, port) = match listen.strip_prefix("tcp:").and_then(|a| a.rsplit_once(':')) {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => ("NULL".to_string(), "0".to_string()),
    };
    let v: Vec<(&str, String)> = vec![
        ("maxbytes", s(ctx.store.limit())),
        ("maxconns", s(ctx.max_conns)),
        ("tcpport", port),
        ("udpport", s(0)),
        ("inter", inter),
        ("verbosity", s(ctx.verbosity.load(Ordering::Relaxed))),
        ("oldest", s(0)),
        ("evictions", s("on")),
        ("domain_socket", s("NULL")),
        ("umask", s(700)),
        ("shutdown_command", s("no")),
        ("growth_factor", s("1.25")),
        ("chunk_size", s(CHUNK_SIZE)),
        ("num_threads", threads.clone()),
        ("num_threads_per_udp", threads),
        ("stat_key_prefix", s(":")),
        ("detail_enabled", s("no")),
        // A connection yields to its worker's other fibers after about
        // this many requests (conn.rs, YIELD_EVERY).
        ("reqs_per_event", s(1024)),
        ("cas_enabled", s("yes")),
        ("tcp_backlog", s(1024)),
        ("binding_protocol", s("auto-negotiate")),
        ("auth_enabled_sasl", s("no")),
        (
            "auth_enabled_ascii",
            ctx.auth_file.clone().unwrap_or_else(|| s("no")),
        ),
        ("item_size_max", s(ctx.item_max)),
        ("maxconns_fast", s("yes")),
        ("hashpower_init", s(0)),
        ("slab_reassign", s("no")),
        ("slab_automove", s(0)),
        ("slab_automove_ratio", s("0.00")),
        ("slab_automove_window", s(0)),
        ("slab_chunk_max", s(CHUNK_MAX)),
        ("lru_crawler", s("no")),
        ("lru_crawler_sleep", s(0)),
        ("lru_crawler_tocrawl", s(0)),
        ("tail_repair_time", s(0)),
        ("flush_enabled", s("yes")),
        ("dump_enabled", s("no")),
        ("hash_algorithm", s("siphash")),
        ("lru_maintainer_thread", s("no")),
        ("lru_segmented", s("no")),
        ("hot_lru_pct", s(0)),
        ("warm_lru_pct", s(0)),
        ("hot_max_factor", s("0.00")),
        ("warm_max_factor", s("0.00")),
        ("temp_lru", s("no")),
        ("temporary_ttl", s(0)),
        ("idle_timeout", s(ctx.idle_timeout)),
        ("watcher_logbuf_size", s(0)),
        ("worker_logbuf_size", s(0)),
        ("read_buf_mem_limit", s(ctx.buffers.limit() >> 20)),
        ("track_sizes", s("no")),
        ("inline_ascii_response", s("no")),
        ("ext_item_size", s(0)),
        ("ext_item_age", s(0)),
        ("ext_low_ttl", s(0)),
        ("ext_recache_rate", s(0)),
        ("ext_wbuf_size", s(0)),
        ("ext_compact_under", s(0)),
        ("ext_drop_under", s(0)),
        ("ext_max_sleep", s(0)),
        ("ext_max_frag", s("0.00")),
        ("slab_automove_freeratio", s("0.000")),
        ("ext_drop_unread", s("no")),
        (
            "ssl_enabled",
            s(if ctx.tls_files.is_some() { "yes" } else { "no" }),
        ),
        (
            "ssl_chain_cert",
            ctx.tls_files
                .as_ref()
                .map_or_else(|| s("(null)"), |f| f.0.clone()),
        ),
        (
            "ssl_key",
            ctx.tls_files
                .as_ref()
                .map_or_else(|| s("(null)"), |f| f.1.clone()),
        ),
        ("ssl_verify_mode", s(0)),
        ("ssl_keyformat", s(1)),
        ("ssl_ciphers", s("NULL")),
        ("ssl_ca_cert", s("NULL")),
        ("ssl_wbuf_size", s(16384)),
        ("ssl_session_cache", s("no")),
        ("ssl_kernel_tls", s("no")),
        ("ssl_min_version", s("tlsv1.2")),
        ("num_napi_ids", s("(null)")),
        ("memory_file", s("(null)")),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// memcached's chunk sizes, class 1 first.
pub fn class_sizes() -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut size = ITEM_HEADER + CHUNK_SIZE;
    // memcached stops one short of its 64 classes, or below the largest.
    while sizes.len() < 62 && (size as f64) < CHUNK_MAX as f64 / GROWTH {
        if size % ALIGN != 0 {
            size += ALIGN - size % ALIGN;
        }
        sizes.push(size);
        size = (size as f64 * GROWTH) as usize;
    }
    sizes.push(CHUNK_MAX);
    sizes
}

/// The class (1-based) memcached would store an item of `size` bytes in.
pub fn class_of(size: usize) -> usize {
    let sizes = class_sizes();
    sizes.partition_point(|&c| c < size).min(sizes.len() - 1) + 1
}

/// The bytes memcached's item would take for this key, value and flags.
pub fn item_size(key: usize, value: usize, flags: u32) -> usize {
    ITEM_HEADER + 8 + key + 1 + value + 2 + if flags != 0 { 4 } else { 0 }
}

#[derive(Default, Clone, Copy)]
struct Class {
    /// Items whose class this is.
    count: u64,
    /// Their bytes.
    requested: u64,
    /// The oldest one's store time.
    oldest: u64,
    /// Chunks of this class in use (an item bigger than the largest chunk
    /// takes several: whole largest chunks and one for the rest).
    chunks: u64,
}

/// The live items by class: (class id, chunk size, figures), for the
/// classes with chunks in use.
fn classes(ctx: &Ctx) -> Vec<(usize, usize, Class)> {
    let sizes = class_sizes();
    let class_of = |n: usize| sizes.partition_point(|&c| c < n).min(sizes.len() - 1);
    let last = sizes.len() - 1;
    let mut by: Vec<Class> = vec![Class::default(); sizes.len()];
    ctx.store.for_each_live(|k, it, stored| {
        let n = item_size(k.len(), it.value.len(), it.flags);
        let i = class_of(n);
        let c = &mut by[i];
        c.oldest = if c.count == 0 {
            stored
        } else {
            c.oldest.min(stored)
        };
        c.count += 1;
        c.requested += n as u64;
        if n <= CHUNK_MAX {
            c.chunks += 1;
        } else {
            // A header item that points at chunks, each with a header of
            // its own: whole largest chunks, and one sized for the rest.
            let head = item_size(k.len(), 0, it.flags) - 2 + CHUNK_HEADER;
            by[class_of(head)].chunks += 1;
            let data = it.value.len() + 2;
            let per_chunk = CHUNK_MAX - CHUNK_HEADER;
            by[last].chunks += (data / per_chunk) as u64;
            if data % per_chunk != 0 {
                by[class_of(data % per_chunk + CHUNK_HEADER)].chunks += 1;
            }
        }
    });
    by.into_iter()
        .enumerate()
        .filter(|(_, c)| c.count > 0 || c.chunks > 0)
        .map(|(i, c)| (i + 1, sizes[i], c))
        .collect()
}

/// `stats items`.
pub fn items(ctx: &Ctx) -> List {
    let now = ctx.store.now();
    let mut out = Vec::new();
    for (id, _, c) in classes(ctx).into_iter().filter(|(_, _, c)| c.count > 0) {
        let fields: [(&str, u64); 28] = [
            ("number", c.count),
            ("number_hot", 0),
            ("number_warm", 0),
            ("number_cold", c.count),
            ("age_hot", 0),
            ("age_warm", 0),
            ("age", now.saturating_sub(c.oldest)),
            ("mem_requested", c.requested),
            ("evicted", 0),
            ("evicted_nonzero", 0),
            ("evicted_time", 0),
            ("outofmemory", 0),
            ("tailrepairs", 0),
            ("reclaimed", 0),
            ("expired_unfetched", 0),
            ("evicted_unfetched", 0),
            ("evicted_active", 0),
            ("crawler_reclaimed", 0),
            ("crawler_items_checked", 0),
            ("lrutail_reflocked", 0),
            ("moves_to_cold", 0),
            ("moves_to_warm", 0),
            ("moves_within_lru", 0),
            ("direct_reclaims", 0),
            ("hits_to_hot", 0),
            ("hits_to_warm", 0),
            ("hits_to_cold", 0),
            ("hits_to_temp", 0),
        ];
        for (k, v) in fields {
            out.push((format!("items:{id}:{k}"), s(v)));
        }
    }
    out
}

/// `stats slabs`.
pub fn slabs(ctx: &Ctx) -> List {
    let mut out = Vec::new();
    let mut pages_total = 0;
    let classes = classes(ctx);
    for &(id, size, c) in &classes {
        let per_page = (PAGE / size) as u64;
        let pages = c.chunks.div_ceil(per_page);
        pages_total += pages;
        let fields: [(&str, u64); 15] = [
            ("chunk_size", size as u64),
            ("chunks_per_page", per_page),
            ("total_pages", pages),
            ("total_chunks", pages * per_page),
            ("used_chunks", c.chunks),
            ("free_chunks", pages * per_page - c.chunks),
            ("free_chunks_end", 0),
            ("get_hits", 0),
            ("cmd_set", 0),
            ("delete_hits", 0),
            ("incr_hits", 0),
            ("decr_hits", 0),
            ("cas_hits", 0),
            ("cas_badval", 0),
            ("touch_hits", 0),
        ];
        for (k, v) in fields {
            out.push((format!("{id}:{k}"), s(v)));
        }
    }
    out.push(("active_slabs".into(), s(classes.len())));
    out.push(("total_malloced".into(), s(pages_total * PAGE as u64)));
    out
}

/// `stats sizes`: memcached's size histogram is off unless started with
/// `-o track_sizes`, and kv has none.
pub fn sizes() -> List {
    vec![("sizes_status".into(), s("disabled"))]
}

/// `stats conns`.
pub fn conns(ctx: &Ctx) -> List {
    let now = ctx.store.now();
    let listen = ctx.conns.listen.lock().unwrap().clone();
    let mut out = Vec::new();
    if !listen.is_empty() {
        let last = ctx.conns.last_accept.load(Ordering::Relaxed);
        out.push(("0:addr".into(), listen.clone()));
        out.push(("0:state".into(), s("conn_listening")));
        out.push(("0:secs_since_last_cmd".into(), s(now.saturating_sub(last))));
    }
    let open: Vec<(u64, Arc<ConnStat>)> = ctx
        .conns
        .open
        .lock()
        .unwrap()
        .iter()
        .map(|(&(id, _), c)| (id, c.clone()))
        .collect();
    for (id, c) in open {
        let state = if c.waiting.load(Ordering::Relaxed) {
            "conn_waiting"
        } else {
            "conn_parse_cmd"
        };
        out.push((format!("{id}:addr"), c.peer.clone()));
        if !listen.is_empty() {
            out.push((format!("{id}:listen_addr"), listen.clone()));
        }
        out.push((format!("{id}:state"), s(state)));
        let last = c.last_read.load(Ordering::Relaxed);
        out.push((
            format!("{id}:secs_since_last_cmd"),
            s(now.saturating_sub(last)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_sizes_are_memcacheds() {
        // Chunk sizes memcached 1.6.18 reports with its defaults.
        let sizes = class_sizes();
        assert_eq!(sizes[0], 96);
        assert_eq!(sizes[14], 2320);
        assert_eq!(*sizes.last().unwrap(), CHUNK_MAX);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        // The item sizes memcached reported as mem_requested.
        assert_eq!(item_size(1, 1, 0), 61);
        assert_eq!(item_size(1, 2000, 5), 2064);
    }

    #[test]
    fn a_reused_socket_number_keeps_its_new_entry() {
        let t = ConnTable::default();
        let old = t.register(7, "tcp:127.0.0.1:1".into(), 0);
        // The socket closed and was reused before the old fiber ended.
        let new = t.register(7, "tcp:127.0.0.1:2".into(), 0);
        drop(old);
        let open = t.open.lock().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open.values().next().unwrap().peer, "tcp:127.0.0.1:2");
        drop(open);
        drop(new);
        assert!(t.open.lock().unwrap().is_empty());
    }
}
