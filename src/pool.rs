//! A client-side connection pool keyed by peer.
//!
//! [`Pool::get`] checks a connection out for a peer (a [`SocketAddr`], or
//! any key that implements [`Connect`]); the returned [`Pooled`] guard
//! dereferences to the connection and puts it back when dropped. A
//! connection that saw an error through the guard's `Read`/`Write`, or
//! that the caller [`discard`](Pooled::discard)s, is closed instead.
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
//! and lookups dominate. `cargo bench --bench pool` (group `lookup`)
//! compares it with a `HashMap` behind the same lock; one thread, a
//! `SocketAddr` key, on a shared 2-core machine:
//!
//! | peers | sorted vector, binary search | `HashMap` (SipHash) |
//! |---|---|---|
//! | 1 | 13 ns | 48 ns |
//! | 16 | 39 ns | 49 ns |
//! | 200 | 66 ns | 50 ns |
//!
//! The vector wins clearly for a few peers and still at 16; at 200 the map
//! is about 15 ns faster. Both are small next to a whole checkout (group
//! `cycle`: 256 fibers on all workers, 0.6 to 1.5 µs per get and return,
//! the same with or without [`check_after`](Builder::check_after) now that
//! the liveness check reads the reactor's readiness word instead of
//! calling `poll(2)` (it was 1.3 to 1.8 µs with the system call), against
//! 0.1 to 0.2 µs for a bare `Mutex<HashMap<SocketAddr, Vec<TcpStream>>>`
//! that pops and pushes with no bounds, waiting, expiry or check). What is
//! left is the bookkeeping: the peer lock shared by fibers on both
//! workers, the clock read on return and on checkout, the counters.
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
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::net::TcpStream;
use crate::sync::{Condvar, Mutex, MutexGuard};

/// A key the pool can open connections for: a peer address, or anything
/// that knows how to reach its peer.
///
/// Keys are kept sorted (`Ord`) and compared on every lookup, so they
/// should be cheap to compare.
///
/// # Examples
///
/// A key that names a server and connects with `TCP_NODELAY` off:
///
/// ```
/// use std::io;
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use weave::net::TcpStream;
/// use weave::pool::Connect;
///
/// #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
/// struct Nagle(SocketAddr);
///
/// impl Connect for Nagle {
///     type Conn = TcpStream;
///     fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
///         TcpStream::connect_timeout(&self.0, timeout)
///     }
///     fn is_reusable(&self, conn: &TcpStream) -> bool {
///         self.0.is_reusable(conn)
///     }
/// }
/// let pool = weave::pool::Pool::<Nagle>::new();
/// # let _ = pool;
/// ```
pub trait Connect: Clone + Ord + fmt::Debug + Send + Sync + 'static {
    /// The connection type.
    type Conn: Send + 'static;

    /// Opens a new connection, giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// Whatever stopped the connection (refused, timed out, ...).
    fn connect(&self, timeout: Duration) -> io::Result<Self::Conn>;

    /// Whether an idle connection can be handed out again: false if the
    /// peer closed it, reset it, or sent bytes nobody asked for. Must not
    /// block.
    fn is_reusable(&self, conn: &Self::Conn) -> bool;
}

impl Connect for SocketAddr {
    type Conn = TcpStream;

    /// Connects with [`TcpStream::connect_timeout`] and sets `TCP_NODELAY`
    /// (pooled connections carry requests and replies).
    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(self, timeout)?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// An idle connection should have no input pending: readable means
    /// end-of-file (the peer closed), an error, or stray bytes, and all
    /// three make the connection unusable.
    ///
    /// First the reactor's readiness word is read (no system call): if the
    /// connection is registered, its last read drained it and no event
    /// since reported input, a hang-up or an error, it is reusable.
    /// Otherwise (never registered, or input may be pending) a
    /// zero-timeout `poll(2)` decides, which also registers the connection
    /// and clears a stale read bit so that the next check can skip the
    /// system call. Never parks.
    fn is_reusable(&self, conn: &TcpStream) -> bool {
        conn.read_ready_hint() == Some(false) || matches!(conn.poll_read_ready(), Ok(false))
    }
}

/// Configures a [`Pool`]; see the [module docs](self) for the defaults.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let pool: weave::pool::Pool = weave::pool::Pool::builder()
///     .max_open(8)
///     .max_idle(4)
///     .wait_timeout(Duration::from_millis(200))
///     .build();
/// # let _ = pool;
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    max_open: usize,
    max_idle: usize,
    wait_timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    check_after: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            config: Config {
                max_open: 64,
                max_idle: 16,
                wait_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                check_after: Duration::ZERO,
            },
        }
    }
}

impl Builder {
    /// Most connections open per peer, idle and checked out together
    /// (at least 1).
    pub fn max_open(mut self, n: usize) -> Builder {
        self.config.max_open = n.max(1);
        self
    }

    /// Most idle connections kept per peer; a connection returned past this
    /// closes the oldest idle one.
    pub fn max_idle(mut self, n: usize) -> Builder {
        self.config.max_idle = n;
        self
    }

    /// How long [`Pool::get`] waits for a connection when `max_open` are
    /// checked out, before it fails with `TimedOut`.
    pub fn wait_timeout(mut self, d: Duration) -> Builder {
        self.config.wait_timeout = d;
        self
    }

    /// Timeout for opening a connection (a zero duration is taken as 1 ms).
    pub fn connect_timeout(mut self, d: Duration) -> Builder {
        self.config.connect_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Idle connections older than this are closed instead of handed out.
    pub fn idle_timeout(mut self, d: Duration) -> Builder {
        self.config.idle_timeout = d;
        self
    }

    /// Hands out connections idle for less than `d` without the liveness
    /// check (default zero: always check). For TCP the check seldom needs
    /// a system call (see [`Connect::is_reusable`] for `SocketAddr`), so
    /// this mostly matters for keys whose check is expensive; skipping it
    /// trades that cost for the rare request that meets a peer which
    /// closed in the meantime (it sees the error through the guard
    /// instead).
    pub fn check_after(mut self, d: Duration) -> Builder {
        self.config.check_after = d;
        self
    }

    /// Builds the pool.
    pub fn build<K: Connect>(self) -> Pool<K> {
        Pool {
            inner: Arc::new(Inner {
                config: self.config,
                peers: RwLock::new(Vec::new()),
            }),
        }
    }
}

/// A connection pool keyed by peer; cheap to clone (clones share the
/// connections). See the [module docs](self).
pub struct Pool<K: Connect = SocketAddr> {
    inner: Arc<Inner<K>>,
}

struct Inner<K: Connect> {
    config: Config,
    /// Sorted by key.
    peers: RwLock<Vec<(K, Arc<Peer<K>>)>>,
}

/// One peer: its connections and counters.
struct Peer<K: Connect> {
    key: K,
    state: Mutex<PeerState<K::Conn>>,
    freed: Condvar,
    counters: Counters,
}

struct PeerState<C> {
    /// Most recently returned last.
    idle: Vec<Idle<C>>,
    /// Connections open: idle, checked out, or being opened.
    open: usize,
    /// Fibers or threads parked in `get`.
    waiting: usize,
    /// Set by `Pool::remove`: returned connections are closed.
    removed: bool,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    reused: AtomicU64,
    discarded: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
}

/// A snapshot of one peer's counters, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Connections opened.
    pub opened: u64,
    /// Checkouts served by an idle connection.
    pub reused: u64,
    /// Connections closed instead of kept: errors, [`Pooled::discard`],
    /// dead or expired idle ones, surplus over `max_idle`.
    pub discarded: u64,
    /// `get` calls that had to wait for a connection.
    pub waits: u64,
    /// `get` calls that gave up waiting (`TimedOut`).
    pub timeouts: u64,
    /// Connections open now (idle or checked out).
    pub open: usize,
    /// Idle connections now.
    pub idle: usize,
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

/// A checked-out connection: dereferences to it, and returns it to the
/// pool when dropped, unless it was [discarded](Self::discard) or saw an
/// error through this guard's `Read`/`Write`.
pub struct Pooled<K: Connect> {
    conn: Option<K::Conn>,
    peer: Arc<Peer<K>>,
    config_max_idle: usize,
    reused: bool,
    broken: bool,
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

impl<K: Connect> Peer<K> {
    fn stats(&self) -> PeerStats {
        let (open, idle) = {
            let st = lock(&self.state);
            (st.open, st.idle.len())
        };
        let c = &self.counters;
        PeerStats {
            opened: c.opened.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            open,
            idle,
        }
    }

    /// Frees the open slot of a connection that was never opened.
    fn release_slot(&self) {
        let mut st = lock(&self.state);
        st.open -= 1;
        let notify = st.waiting > 0;
        drop(st);
        if notify {
            self.freed.notify_one();
        }
    }

    /// Counts a connection closed (already dropped by the caller) and frees
    /// its slot.
    fn close_one(&self) {
        self.counters.discarded.fetch_add(1, Ordering::Relaxed);
        self.release_slot();
    }

    /// Takes a connection back: into the idle list, or closed.
    fn put_back(&self, conn: K::Conn, max_idle: usize) {
        let mut st = lock(&self.state);
        if st.removed || max_idle == 0 {
            drop(st);
            drop(conn);
            self.close_one();
            return;
        }
        let surplus = if st.idle.len() >= max_idle {
            Some(st.idle.remove(0))
        } else {
            None
        };
        st.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        let notify = st.waiting > 0;
        drop(st);
        if notify {
            self.freed.notify_one();
        }
        if let Some(old) = surplus {
            drop(old);
            self.close_one();
        }
    }
}

impl<K: Connect> Pooled<K> {
    /// Closes the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.broken = true;
    }

    /// Marks the connection broken: it will be closed, not returned, when
    /// the guard drops. Use it after an error seen outside this guard's
    /// `Read`/`Write` (say, a reply that made no sense).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the connection is marked broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether this connection came from the idle list (rather than being
    /// opened for this checkout). A request that fails on a reused
    /// connection before any reply arrived may deserve one retry on a new
    /// one: the peer may have closed it just as it was handed out.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The key this connection belongs to.
    pub fn key(&self) -> &K {
        &self.peer.key
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::Interrupted {
                self.broken = true;
            }
        }
        r
    }
}

impl<K: Connect> Deref for Pooled<K> {
    type Target = K::Conn;
    fn deref(&self) -> &K::Conn {
        self.conn
            .as_ref()
            .expect("a Pooled guard holds its connection until dropped")
    }
}

impl<K: Connect> DerefMut for Pooled<K> {
    fn deref_mut(&mut self) -> &mut K::Conn {
        self.conn
            .as_mut()
            .expect("a Pooled guard holds its connection until dropped")
    }
}

/// Reads through the connection; an error, or end-of-file on a non-empty
/// buffer, marks it broken.
impl<K: Connect> Read for Pooled<K>
where
    K::Conn: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.deref_mut().read(buf);
        if matches!(r, Ok(0)) && !buf.is_empty() {
            self.broken = true;
        }
        self.note(r)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let want = bufs.iter().any(|b| !b.is_empty());
        let r = self.deref_mut().read_vectored(bufs);
        if matches!(r, Ok(0)) && want {
            self.broken = true;
        }
        self.note(r)
    }
}

/// Writes through the connection; an error marks it broken.
impl<K: Connect> Write for Pooled<K>
where
    K::Conn: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.deref_mut().write(buf);
        self.note(r)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = self.deref_mut().write_vectored(bufs);
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.deref_mut().flush();
        self.note(r)
    }
}

impl<K: Connect> Drop for Pooled<K> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.broken {
            drop(conn);
            self.peer.close_one();
        } else {
            self.peer.put_back(conn, self.config_max_idle);
        }
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

impl<K: Connect> fmt::Debug for Pooled<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("key", &self.peer.key)
            .field("reused", &self.reused)
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key whose "connections" are numbers; connecting fails when asked.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Fake(u32, bool);

    impl Connect for Fake {
        type Conn = u32;
        fn connect(&self, _: Duration) -> io::Result<u32> {
            if self.1 {
                Ok(self.0)
            } else {
                Err(io::ErrorKind::ConnectionRefused.into())
            }
        }
        fn is_reusable(&self, _: &u32) -> bool {
            true
        }
    }

    #[test]
    fn table_stays_sorted() {
        let pool = Pool::<Fake>::new();
        for k in [5, 1, 9, 3, 7, 1, 5] {
            drop(pool.get(Fake(k, true)).unwrap());
        }
        let keys: Vec<u32> = pool.all_stats().iter().map(|(k, _)| k.0).collect();
        assert_eq!(keys, [1, 3, 5, 7, 9]);
        assert_eq!(pool.stats(&Fake(5, true)).unwrap().reused, 1);
        assert!(pool.remove(&Fake(5, true)));
        assert!(!pool.remove(&Fake(5, true)));
        assert!(pool.stats(&Fake(5, true)).is_none());
    }

    #[test]
    fn failed_connect_frees_its_slot() {
        let pool = Pool::builder()
            .max_open(1)
            .wait_timeout(Duration::ZERO)
            .build();
        for _ in 0..3 {
            let e = pool.get(Fake(1, false)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        }
        let s = pool.stats(&Fake(1, false)).unwrap();
        assert_eq!((s.open, s.opened, s.timeouts), (0, 0, 0));
    }

    #[test]
    fn surplus_over_max_idle_is_closed() {
        let pool = Pool::builder().max_idle(2).build::<Fake>();
        let guards: Vec<_> = (0..5).map(|_| pool.get(Fake(1, true)).unwrap()).collect();
        drop(guards);
        let s = pool.stats(&Fake(1, true)).unwrap();
        assert_eq!((s.opened, s.idle, s.open, s.discarded), (5, 2, 2, 3));
    }

    /// An echo server for 4-byte messages on a fiber; `"bye!"` closes the
    /// connection.
    fn echo4() -> SocketAddr {
        let l = crate::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        crate::spawn(move || {
            while let Ok((mut c, _)) = l.accept() {
                crate::spawn(move || -> io::Result<()> {
                    let mut buf = [0u8; 4];
                    loop {
                        c.read_exact(&mut buf)?;
                        if &buf == b"bye!" {
                            return Ok(());
                        }
                        c.write_all(&buf)?;
                    }
                });
            }
        });
        addr
    }

    /// Sends a ping and reads the 4-byte echo into a larger buffer, so the
    /// last read is short and drains the socket.
    fn ping_drained(c: &mut TcpStream) {
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 4 {
            let n = c.read(&mut buf[got..]).unwrap();
            assert!(n > 0);
            got += n;
        }
        assert_eq!(&buf[..got], b"ping");
    }

    /// Waits (bounded) until the reactor has reported input on `c`.
    fn until_reported(c: &TcpStream) {
        for _ in 0..5000 {
            if c.read_ready_hint() == Some(true) {
                return;
            }
            crate::time::sleep(Duration::from_millis(1));
        }
        panic!("the reactor never reported input");
    }

    #[test]
    fn readiness_hint_decides_without_poll_and_sees_closes() {
        let rt = crate::Runtime::builder().workers(2).build().unwrap();
        rt.block_on(|| {
            let addr = echo4();
            let pool: Pool = Pool::new();
            {
                let mut c = pool.get(addr).unwrap();
                assert_eq!(c.read_ready_hint(), None, "never registered yet");
                ping_drained(&mut c);
                assert_eq!(c.read_ready_hint(), Some(false), "drained by a short read");
            }
            {
                // Handed out on the hint alone.
                let mut c = pool.get(addr).unwrap();
                assert!(c.is_reused());
                assert_eq!(c.read_ready_hint(), Some(false));
                ping_drained(&mut c);
                c.write_all(b"bye!").unwrap();
                until_reported(&c);
            } // returned: the guard saw no error
            let c = pool.get(addr).unwrap();
            assert!(!c.is_reused(), "a close the reactor reported is not reused");
            let s = pool.stats(&addr).unwrap();
            assert_eq!((s.opened, s.reused, s.discarded), (2, 1, 1));
        });
    }

    #[test]
    fn readiness_hint_sees_stray_bytes() {
        let rt = crate::Runtime::builder().workers(2).build().unwrap();
        rt.block_on(|| {
            let addr = echo4();
            let pool: Pool = Pool::new();
            {
                let mut c = pool.get(addr).unwrap();
                ping_drained(&mut c);
                assert_eq!(c.read_ready_hint(), Some(false));
                // A request whose reply is never read.
                c.write_all(b"ping").unwrap();
                until_reported(&c);
            }
            assert!(!pool.get(addr).unwrap().is_reused());
            assert_eq!(pool.stats(&addr).unwrap().discarded, 1);
        });
    }

    #[test]
    fn poll_check_clears_a_stale_read_bit() {
        let rt = crate::Runtime::builder().workers(2).build().unwrap();
        rt.block_on(|| {
            let addr = echo4();
            let pool: Pool = Pool::new();
            {
                let mut c = pool.get(addr).unwrap();
                c.write_all(b"ping").unwrap();
                // Exactly the reply's size: the read is not short, so the
                // reactor cannot know the socket is drained.
                let mut back = [0u8; 4];
                c.read_exact(&mut back).unwrap();
                // (`None` if the reply came before the first read, which
                // then never parked: unregistered, nothing known.)
                assert_ne!(c.read_ready_hint(), Some(false));
            }
            // The checkout falls back to poll(2), finds nothing pending and
            // clears the bit, so the next check needs no system call.
            let c = pool.get(addr).unwrap();
            assert!(c.is_reused());
            assert_eq!(c.read_ready_hint(), Some(false));
        });
    }

    #[test]
    fn zero_wait_times_out_at_once() {
        let pool = Pool::builder()
            .max_open(1)
            .wait_timeout(Duration::ZERO)
            .build();
        let held = pool.get(Fake(1, true)).unwrap();
        let e = pool.get(Fake(1, true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(is_wait_timeout(&e));
        drop(held);
        assert!(pool.get(Fake(1, true)).unwrap().is_reused());
        let s = pool.stats(&Fake(1, true)).unwrap();
        assert_eq!((s.waits, s.timeouts, s.reused), (1, 1, 1));
    }
}
