//! A client-side connection pool keyed by peer.
//!
//! [`Pool::get`] checks a connection out for a peer (a [`SocketAddr`], or
//! any key that implements [`Connect`]); the returned [`Pooled`] guard
//! dereferences to the connection and puts it back when dropped, if the
//! caller marked its exchange complete with [`Pooled::done`] (or never
//! used it). A connection left mid-exchange (a panic, an early return, a
//! timeout), one that saw an error through the guard's `Read`/`Write`, or
//! one that the caller [`discard`](Pooled::discard)s, is closed instead:
//! the next caller never reads someone else's reply.
//!
//! ```
//! use std::io::{Read, Write};
//! use weave::net::TcpListener;
//! use weave::pool::Pool;
//!
//! let rt = weave::Runtime::builder().workers(2).build()?;
//! rt.block_on(|| -> std::io::Result<()> {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     weave::spawn(move || -> std::io::Result<()> {
//!         let (mut conn, _) = listener.accept()?;
//!         let mut buf = [0u8; 4];
//!         loop {
//!             conn.read_exact(&mut buf)?;
//!             conn.write_all(&buf)?;
//!         }
//!     });
//!     let pool = Pool::new();
//!     for _ in 0..3 {
//!         let mut conn = pool.get(addr)?;
//!         conn.write_all(b"ping")?;
//!         let mut back = [0u8; 4];
//!         conn.read_exact(&mut back)?;
//!         assert_eq!(&back, b"ping");
//!         conn.done(); // the exchange is complete
//!     } // each guard goes back to the pool here
//!     let stats = pool.stats(&addr).unwrap();
//!     assert_eq!((stats.opened, stats.reused), (1, 2));
//!     Ok(())
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Limits
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | [`max_open`](Builder::max_open) | 64 | connections per peer, idle or checked out |
//! | [`max_idle`](Builder::max_idle) | 16 | idle connections kept per peer; more are closed on return |
//! | [`wait_timeout`](Builder::wait_timeout) | 1 s | how long `get` parks when `max_open` are out (then `TimedOut`) |
//! | [`connect_timeout`](Builder::connect_timeout) | 1 s | passed to [`Connect::connect`] |
//! | [`idle_timeout`](Builder::idle_timeout) | 60 s | idle connections older than this are closed, not handed out |
//! | [`check_after`](Builder::check_after) | 0 | idle connections younger than this skip the liveness check |
//!
//! Idle connections are handed out most recently used first, so a quiet
//! period lets the surplus age out from the other end. Before an idle
//! connection is handed out it is checked with [`Connect::is_reusable`]:
//! readable means end-of-file, an error, or bytes nobody asked for, and
//! none of those connections can be reused. For TCP the reactor usually
//! knows without a system call (the connection is registered with a
//! worker's poller, which records input and hang-ups as they are
//! reported); when it does not (never registered, or input may be
//! pending), a zero-timeout `poll(2)` decides. Expired and dead
//! connections are closed as `get` meets them, or all at once by
//! [`Pool::purge_idle`].
//!
//! # Locking
//!
//! Two levels, and neither lock is held across a park:
//!
//! 1. **The peer table**: a vector of `(key, peer)` sorted by key, behind a
//!    `std::sync::RwLock`. A lookup takes the read lock for one binary
//!    search and clones the peer's `Arc`; only the first `get` for a new
//!    peer (and [`Pool::remove`]) takes the write lock.
//! 2. **Each peer**: its idle list and open count under a
//!    [`weave::sync::Mutex`](crate::sync::Mutex) held for a few instructions;
//!    a fiber that has to wait for a free connection parks on the peer's
//!    [`sync::Condvar`](crate::sync::Condvar), which releases the mutex. Connecting
//!    and the liveness check happen outside the lock. Fibers working with
//!    different peers never touch the same lock.
//!
//! Why a sorted vector: peers are few (tens to hundreds) and rarely change,
//! and lookups dominate. Measured against a `HashMap` behind the same lock
//! (`cargo bench -p weave-bench --bench pool`), the vector is faster up to
//! tens of peers and a few nanoseconds slower at hundreds, and both are
//! small next to a whole checkout; the figures are in `docs/bench-pool.md`.
//!
//! # Counters
//!
//! [`Pool::stats`] reports, per peer: connections `opened`, checkouts
//! served from the idle list (`reused`), connections closed instead of
//! being kept (`discarded`: errors, [`Pooled::discard`], dead or expired
//! idle ones, surplus over `max_idle`), `get` calls that had to park
//! (`waits`) and those that gave up (`timeouts`), plus the current `open`
//! and `idle` counts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex, MutexGuard};

mod builder;
mod connect;
mod peer;
mod pooled;
#[cfg(test)]
mod tests;

pub use builder::Builder;
use builder::Config;
pub use connect::Connect;
pub use peer::PeerStats;
use peer::{Counters, Peer, PeerState};
pub use pooled::Pooled;

/// A connection pool keyed by peer; cheap to clone (clones share the
/// connections). See the [module docs](crate::pool).
pub struct Pool<K: Connect = SocketAddr> {
    inner: Arc<Inner<K>>,
}

struct Inner<K: Connect> {
    config: Config,
    /// Sorted by key.
    peers: RwLock<Vec<(K, Arc<Peer<K>>)>>,
}

/// The error inside the `TimedOut` [`io::Error`] that [`Pool::get`]
/// returns when no connection came free in time (as opposed to a connect
/// that timed out); see [`is_wait_timeout`].
#[derive(Debug, Clone)]
pub struct WaitTimedOut {
    /// The peer's key, as `Debug` prints it.
    pub peer: String,
    /// How long `get` waited.
    pub waited: Duration,
}

impl fmt::Display for WaitTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool: no connection to {} came free within {:?}",
            self.peer, self.waited
        )
    }
}

impl std::error::Error for WaitTimedOut {}

/// Whether `e` is [`Pool::get`] giving up on waiting for a free connection
/// (every one of `max_open` was checked out), rather than an error from
/// the peer.
///
/// # Examples
///
/// ```
/// use std::io;
/// assert!(!weave::pool::is_wait_timeout(&io::ErrorKind::TimedOut.into()));
/// ```
pub fn is_wait_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<WaitTimedOut>())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool never panics while holding a peer lock; if a caller's
    // panic poisoned it anyway, the state is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A builder for a pool with other limits; [`Builder::build`] picks the
    /// key type (a `SocketAddr` unless told otherwise).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<K: Connect> Pool<K> {
    /// A pool with the default limits.
    pub fn new() -> Pool<K> {
        Builder::default().build()
    }

    /// The peer for `key`, created on first use.
    fn peer(&self, key: &K) -> Arc<Peer<K>> {
        {
            let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
            if let Ok(i) = peers.binary_search_by(|(k, _)| k.cmp(key)) {
                return peers[i].1.clone();
            }
        }
        let mut peers = self.inner.peers.write().unwrap_or_else(|e| e.into_inner());
        match peers.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => peers[i].1.clone(),
            Err(i) => {
                let p = Arc::new(Peer {
                    key: key.clone(),
                    state: Mutex::new(PeerState {
                        idle: Vec::new(),
                        open: 0,
                        waiting: 0,
                        removed: false,
                    }),
                    freed: Condvar::new(),
                    counters: Counters::default(),
                });
                peers.insert(i, (key.clone(), p.clone()));
                p
            }
        }
    }

    fn find(&self, key: &K) -> Option<Arc<Peer<K>>> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| peers[i].1.clone())
    }

    /// Checks out a connection to `key`: a live idle one if there is one,
    /// else a new one if fewer than `max_open` are open, else it parks
    /// until one is returned or closed (at most `wait_timeout`).
    ///
    /// # Errors
    ///
    /// `TimedOut` when no connection came free in time; the connect error
    /// when a new connection could not be opened.
    pub fn get(&self, key: K) -> io::Result<Pooled<K>> {
        let peer = self.peer(&key);
        let cfg = &self.inner.config;
        let mut deadline = None;
        let mut st = lock(&peer.state);
        loop {
            if let Some(idle) = st.idle.pop() {
                drop(st);
                let age = idle.since.elapsed();
                let fresh = age < cfg.idle_timeout;
                if fresh && (age < cfg.check_after || key.is_reusable(&idle.conn)) {
                    peer.counters.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Pooled {
                        conn: Some(idle.conn),
                        peer,
                        config_max_idle: cfg.max_idle,
                        reused: true,
                        broken: false,
                        in_flight: AtomicBool::new(false),
                    });
                }
                drop(idle.conn);
                peer.close_one();
                st = lock(&peer.state);
                continue;
            }
            if st.open < cfg.max_open {
                st.open += 1;
                drop(st);
                return match key.connect(cfg.connect_timeout) {
                    Ok(conn) => {
                        peer.counters.opened.fetch_add(1, Ordering::Relaxed);
                        Ok(Pooled {
                            conn: Some(conn),
                            peer,
                            config_max_idle: cfg.max_idle,
                            reused: false,
                            broken: false,
                            in_flight: AtomicBool::new(false),
                        })
                    }
                    Err(e) => {
                        peer.release_slot();
                        Err(e)
                    }
                };
            }
            // All `max_open` are out: wait for one to come back or close.
            let now = Instant::now();
            let d = *deadline.get_or_insert_with(|| {
                peer.counters.waits.fetch_add(1, Ordering::Relaxed);
                now.checked_add(cfg.wait_timeout)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365))
            });
            if now >= d {
                drop(st);
                peer.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    WaitTimedOut {
                        peer: format!("{key:?}"),
                        waited: cfg.wait_timeout,
                    },
                ));
            }
            st.waiting += 1;
            let (g, _) = peer
                .freed
                .wait_timeout(st, d - now)
                .unwrap_or_else(|e| e.into_inner());
            st = g;
            st.waiting -= 1;
        }
    }

    /// Closes every idle connection that has expired or whose peer closed
    /// it, for all peers. Returns how many were closed. `get` does the same
    /// lazily; call this from a timer to release descriptors of quiet peers.
    pub fn purge_idle(&self) -> usize {
        let peers: Vec<_> = {
            let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
            peers.iter().map(|(_, p)| p.clone()).collect()
        };
        let limit = self.inner.config.idle_timeout;
        let mut closed = 0;
        for p in peers {
            let taken = std::mem::take(&mut lock(&p.state).idle);
            let (keep, drop_): (Vec<_>, Vec<_>) = taken
                .into_iter()
                .partition(|i| i.since.elapsed() < limit && p.key.is_reusable(&i.conn));
            for _ in drop_ {
                p.close_one();
                closed += 1;
            }
            // Put the survivors back under the ones returned meanwhile
            // (those are newer).
            if !keep.is_empty() {
                let mut st = lock(&p.state);
                let newer = std::mem::replace(&mut st.idle, keep);
                st.idle.extend(newer);
            }
        }
        closed
    }

    /// Forgets `key`: closes its idle connections now, and those checked
    /// out when they are returned. A later `get` starts afresh (with fresh
    /// counters). Returns whether the key was known.
    pub fn remove(&self, key: &K) -> bool {
        let removed = {
            let mut peers = self.inner.peers.write().unwrap_or_else(|e| e.into_inner());
            match peers.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => Some(peers.remove(i).1),
                Err(_) => None,
            }
        };
        let Some(p) = removed else {
            return false;
        };
        let idle = {
            let mut st = lock(&p.state);
            st.removed = true;
            std::mem::take(&mut st.idle)
        };
        for _ in idle {
            p.close_one();
        }
        true
    }

    /// The counters of `key`'s peer, if it was ever used.
    pub fn stats(&self, key: &K) -> Option<PeerStats> {
        self.find(key).map(|p| p.stats())
    }

    /// The counters of every peer, in key order.
    pub fn all_stats(&self) -> Vec<(K, PeerStats)> {
        let peers = self.inner.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.iter().map(|(k, p)| (k.clone(), p.stats())).collect()
    }
}

impl<K: Connect> Clone for Pool<K> {
    fn clone(&self) -> Pool<K> {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Connect> Default for Pool<K> {
    fn default() -> Pool<K> {
        Pool::new()
    }
}

impl<K: Connect> fmt::Debug for Pool<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .field("peers", &self.all_stats())
            .finish()
    }
}
