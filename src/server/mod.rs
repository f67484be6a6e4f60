//! The server framework: bind, give a plain function per connection, run.
//!
//! ```no_run
//! use std::io::{self, Read, Write};
//! use weave::server::{Conn, Server};
//!
//! fn echo(mut conn: Conn) -> io::Result<()> {
//!     let mut buf = [0u8; 4096];
//!     loop {
//!         let n = conn.read(&mut buf)?;
//!         if n == 0 {
//!             return Ok(());
//!         }
//!         conn.write_all(&buf[..n])?;
//!     }
//! }
//!
//! fn main() -> io::Result<()> {
//!     let summary = Server::builder()
//!         .bind("127.0.0.1:7000")
//!         .workers(4)
//!         .idle_timeout(std::time::Duration::from_secs(60))
//!         .build()?
//!         .serve(echo)?;
//!     println!("served {} connections", summary.counters.closed);
//!     Ok(())
//! }
//! ```
//!
//! # Cheap idle connections: request mode
//!
//! A connection fiber parked in `read` between requests holds a stack page
//! and its buffers. [`Server::serve_requests`] is the one-step change for
//! servers with many idle clients: the handler takes a [`Request`] and
//! returns [`Next::Idle`] at each request boundary; between requests the
//! connection holds no fiber and no buffer. See [`request`].
//!
//! # Around the handler
//!
//! - **Accept.** By default each worker has its own listener on the shared
//!   port (`SO_REUSEPORT`) and its own acceptor fiber; the kernel spreads new
//!   connections over them, so there is no single accept bottleneck and no
//!   thundering herd. `reuseport(false)` uses one listener and one
//!   acceptor, and idle workers steal the new connection fibers. The two are
//!   measured against each other in `docs/bench-accept.md`.
//! - **Descriptor exhaustion.** When `accept` fails with `EMFILE`, `ENFILE`,
//!   `ENOBUFS` or `ENOMEM`, the acceptor logs once per burst and backs off
//!   (1 ms doubling to 1 s) instead of spinning; open connections keep
//!   being served. A connection that closes frees a descriptor and wakes the
//!   acceptor at once, so accepting resumes without waiting out the backoff.
//! - **Fiber exhaustion.** When no fiber can be spawned for a new connection
//!   (no stack to be had: address space, or `vm.max_map_count` on kernels
//!   before 6.13), that connection is closed, counted in
//!   [`Counters::spawn_failed`], and the acceptor backs off exactly as for
//!   `EMFILE`, so later connections wait in the listen backlog instead of
//!   being accepted and dropped.
//! - **Connection limit.** Past `max_connections`, a new connection is
//!   accepted and closed at once (counted in `rejected`); existing ones are
//!   unaffected.
//! - **Idle timeout.** Each connection's reads and writes time out after the
//!   idle timeout, which ends the handler with `TimedOut` and closes it.
//! - **Errors and panics.** A handler's `Err` or panic is logged with the peer
//!   address and fiber name and counted; the connection closes, the server
//!   goes on.
//! - **Signals.** `SIGPIPE` is ignored. With `handle_signals(true)` (the
//!   default), SIGINT and SIGTERM start a graceful shutdown. The program's
//!   own handlers for them keep working: the server's handler calls the one
//!   installed before it, preserves `errno`, and the earlier handlers are put
//!   back when the last server returns. Several servers can run at once;
//!   a signal stops all of them.
//!
//! # Graceful shutdown, step by step
//!
//! 1. [`ServerHandle::stop`] (or a signal) marks the server stopping.
//! 2. The listeners are shut down: acceptors wake up and return, and new
//!    connection attempts are refused.
//! 3. Connections waiting for their next request (their last I/O was a write,
//!    or they have sent nothing yet) get their read side shut down, so the
//!    handler reads end-of-file after any request already in flight. A
//!    connection in the middle of a request (its last I/O was a read) is
//!    left alone to finish its reply; it is checked again every 10 ms.
//! 4. When the grace period ends, every remaining connection is shut down in
//!    both directions; their handlers see errors and return.
//! 5. `serve` returns a [`Summary`] once all connection fibers have ended (or
//!    one more second has passed; those still running are reported).

mod accept;
mod conn;
pub mod request;
mod signals;

pub use conn::{Conn, PeerAddr};
pub use request::{Next, Request};

use accept::accept_loop;

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fiber::Fiber;
use crate::net::{TcpListener, UnixListener};
use crate::Runtime;

#[derive(Debug, Clone)]
enum BindSpec {
    Tcp(String),
    TcpAddrs(Vec<SocketAddr>),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
}

/// Configures a [`Server`].
#[derive(Debug, Clone)]
pub struct Builder {
    binds: Vec<BindSpec>,
    workers: Option<usize>,
    stack_size: Option<usize>,
    reuseport: bool,
    handle_signals: bool,
    runtime: Option<crate::Handle>,
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// A builder with the defaults: one worker per core, 10,000 connections,
    /// no idle timeout, 5 s shutdown grace, per-worker listeners, signals
    /// handled.
    pub fn new() -> Builder {
        Builder {
            binds: Vec::new(),
            workers: None,
            stack_size: None,
            reuseport: true,
            handle_signals: true,
            runtime: None,
            config: Config {
                max_connections: 10_000,
                idle_timeout: None,
                shutdown_grace: Duration::from_secs(5),
            },
        }
    }

    /// Listens on a TCP address (`"127.0.0.1:11211"`, `"[::1]:0"`, ...).
    /// May be called several times.
    pub fn bind(mut self, addr: impl Into<String>) -> Builder {
        self.binds.push(BindSpec::Tcp(addr.into()));
        self
    }

    /// Listens on these TCP addresses.
    pub fn bind_addrs(mut self, addrs: impl ToSocketAddrs) -> io::Result<Builder> {
        self.binds
            .push(BindSpec::TcpAddrs(addrs.to_socket_addrs()?.collect()));
        Ok(self)
    }

    /// Listens on a Unix socket at `path` (which must not exist).
    pub fn bind_unix(mut self, path: impl Into<PathBuf>) -> Builder {
        self.binds.push(BindSpec::Unix(path.into()));
        self
    }

    /// Worker threads (default: one per core).
    pub fn workers(mut self, n: usize) -> Builder {
        self.workers = Some(n.max(1));
        self
    }

    /// Stack size of connection fibers, in bytes (default 256 KiB).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Most connections open at once; more are closed on arrival.
    pub fn max_connections(mut self, n: usize) -> Builder {
        self.config.max_connections = n;
        self
    }

    /// Closes a connection whose read or write waits longer than `d`.
    pub fn idle_timeout(mut self, d: Duration) -> Builder {
        self.config.idle_timeout = Some(d).filter(|d| !d.is_zero());
        self
    }

    /// How long a graceful shutdown waits for connections to finish.
    pub fn shutdown_grace(mut self, d: Duration) -> Builder {
        self.config.shutdown_grace = d;
        self
    }

    /// One listener per worker with `SO_REUSEPORT` (default `true`), or a
    /// single listener and acceptor.
    pub fn reuseport(mut self, on: bool) -> Builder {
        self.reuseport = on;
        self
    }

    /// Runs the server on the runtime of `handle`, one the caller built
    /// (with its own worker count, stack size, names) and keeps running
    /// other fibers on, instead of starting a runtime of its own.
    /// `workers` and `stack_size` are then ignored. The runtime is the
    /// caller's: it outlives the server, which only stops its own fibers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let rt = weave::Runtime::builder().workers(2).build()?;
    /// let ticker = rt.spawn(|| loop {
    ///     weave::sleep(std::time::Duration::from_secs(1));
    /// });
    /// let server = weave::Server::builder()
    ///     .bind("127.0.0.1:7000")
    ///     .runtime(rt.handle())
    ///     .build()?;
    /// server.serve(|_conn| Ok(()))?;
    /// # drop(ticker);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn runtime(mut self, handle: crate::Handle) -> Builder {
        self.runtime = Some(handle);
        self
    }

    /// Turn SIGINT/SIGTERM into a graceful shutdown (default `true`). A
    /// handler installed before (a function, not a default or ignore
    /// disposition) is still called for each signal, and is put back when
    /// the server returns.
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.handle_signals = on;
        self
    }

    /// Binds the listeners and starts the workers.
    ///
    /// # Errors
    ///
    /// No address given, an address that does not resolve or cannot be
    /// bound (in use, permission), or a runtime that cannot start.
    pub fn build(self) -> io::Result<Server> {
        if self.binds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "server has no address to listen on (call bind)",
            ));
        }
        let (runtime, rt) = match self.runtime {
            Some(handle) => (None, handle),
            None => {
                let mut rt = Runtime::builder().thread_name("weave-server");
                if let Some(n) = self.workers {
                    rt = rt.workers(n);
                }
                if let Some(s) = self.stack_size {
                    rt = rt.stack_size(s);
                }
                let rt = rt.build()?;
                let handle = rt.handle();
                (Some(rt), handle)
            }
        };
        let workers = rt.workers();
        let mut listeners = Vec::new();
        for spec in &self.binds {
            match spec {
                BindSpec::Tcp(s) => bind_tcp(s.as_str(), self.reuseport, workers, &mut listeners)?,
                BindSpec::TcpAddrs(a) => bind_tcp(&a[..], self.reuseport, workers, &mut listeners)?,
                BindSpec::Unix(p) => {
                    listeners.push(Listener::Unix(UnixListener::bind(p)?, p.clone()))
                }
            }
        }
        let state = Arc::new(State::new(self.config));
        Ok(Server {
            runtime,
            rt,
            listeners,
            state,
            handle_signals: self.handle_signals,
        })
    }
}

fn bind_tcp(
    addrs: impl ToSocketAddrs,
    reuseport: bool,
    workers: usize,
    out: &mut Vec<Listener>,
) -> io::Result<()> {
    let addrs: Vec<SocketAddr> = addrs.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "address resolved to nothing",
        ));
    }
    for addr in addrs {
        if !reuseport {
            out.push(Listener::Tcp(TcpListener::bind(addr)?, None));
            continue;
        }
        // `SO_REUSEPORT` would let us join a port that another process
        // holds with the same option, silently sharing its traffic. A plain
        // bind first fails with `AddrInUse` in that case (and picks the port
        // when it is 0); the window between the probe and the real binds is
        // the only gap. A port the kernel picked can be taken in that window
        // (by another socket's `connect`, from the same range): then the
        // whole set is bound again on a new pick.
        let mut tries = 0;
        let set = loop {
            tries += 1;
            match bind_reuseport_set(addr, workers) {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && addr.port() == 0
                        && tries < PICKED_PORT_TRIES =>
                {
                    continue
                }
                r => break r?,
            }
        };
        out.extend(set);
    }
    Ok(())
}

/// How many times a set of reuseport listeners on a port the kernel picks
/// is bound again after losing its port to another socket.
const PICKED_PORT_TRIES: u32 = 8;

/// One listener per worker on `addr`'s port (picked by a probe bind when 0),
/// all with `SO_REUSEPORT`.
fn bind_reuseport_set(addr: SocketAddr, workers: usize) -> io::Result<Vec<Listener>> {
    let port_addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    let mut set = Vec::with_capacity(workers);
    for w in 0..workers.max(1) {
        set.push(Listener::Tcp(
            TcpListener::bind_reuseport(port_addr)?,
            Some(w),
        ));
    }
    Ok(set)
}

#[derive(Debug)]
enum Listener {
    /// A TCP listener, pinned to a worker when it is one of a reuseport set.
    Tcp(TcpListener, Option<usize>),
    /// A Unix listener and its path.
    Unix(UnixListener, PathBuf),
}

/// How the shutdown wakes an acceptor blocked in `accept`.
enum Wake {
    /// `shutdown(2)` on a listening TCP socket fails the pending `accept`.
    Shutdown(i32),
    /// Unix listeners ignore that, so the shutdown connects once instead.
    Connect(PathBuf),
}

impl Listener {
    fn waker(&self) -> Wake {
        match self {
            Listener::Tcp(l, _) => Wake::Shutdown(l.as_raw_fd()),
            Listener::Unix(_, p) => Wake::Connect(p.clone()),
        }
    }
}

/// Live connections, so shutdown can reach them.
#[derive(Debug, Default)]
struct Registry {
    slots: Vec<Option<Arc<conn::Tracked>>>,
    free: Vec<usize>,
    closed_bytes_in: u64,
    closed_bytes_out: u64,
}

/// State shared by the server's fibers and handles.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: Config,
    registry: Mutex<Registry>,
    accepted: AtomicU64,
    active: AtomicUsize,
    closed: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    spawn_failed: AtomicU64,
    stopping: AtomicBool,
    controller: Mutex<Option<Fiber>>,
    /// Acceptors backing off after running out of descriptors; a closing
    /// connection wakes them, since it just freed one.
    paused: Mutex<Vec<Fiber>>,
    any_paused: AtomicBool,
}

impl State {
    fn new(config: Config) -> State {
        State {
            config,
            registry: Mutex::new(Registry::default()),
            accepted: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            spawn_failed: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            controller: Mutex::new(None),
            paused: Mutex::new(Vec::new()),
            any_paused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(&self, t: Arc<conn::Tracked>) -> usize {
        let mut r = self.lock();
        match r.free.pop() {
            Some(i) => {
                r.slots[i] = Some(t);
                i
            }
            None => {
                r.slots.push(Some(t));
                r.slots.len() - 1
            }
        }
    }

    pub(crate) fn unregister(&self, slot: usize, t: &conn::Tracked) {
        let mut r = self.lock();
        if let Some(s) = r.slots.get_mut(slot) {
            if s.take().is_some() {
                r.free.push(slot);
            }
        }
        r.closed_bytes_in += t.bytes_in.load(Ordering::Relaxed);
        r.closed_bytes_out += t.bytes_out.load(Ordering::Relaxed);
    }

    /// Parks the calling acceptor for up to `d`, or until a connection
    /// closes.
    fn pause_acceptor(&self, d: Duration) {
        {
            let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
            p.push(crate::current());
            self.any_paused.store(true, Ordering::SeqCst);
        }
        crate::park_timeout(d);
        let me = crate::current().id();
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|f| f.id() != me);
        self.any_paused.store(!p.is_empty(), Ordering::SeqCst);
    }

    fn wake_paused_acceptors(&self) {
        if self.any_paused.load(Ordering::SeqCst) {
            for f in self.paused.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                f.unpark();
            }
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.wake_controller();
        }
    }

    fn wake_controller(&self) {
        if let Some(f) = &*self.controller.lock().unwrap_or_else(|e| e.into_inner()) {
            f.unpark();
        }
    }

    /// Shuts down connections: with `all`, every one in both directions;
    /// otherwise the read side of those between requests. Runs under the
    /// registry lock, which connections leave before closing, so each
    /// descriptor is still theirs.
    fn cut(&self, all: bool) -> usize {
        let r = self.lock();
        let mut n = 0;
        for t in r.slots.iter().flatten() {
            let (how, level) = if all {
                (libc::SHUT_RDWR, 2)
            } else if t.last_io.load(Ordering::Relaxed) != conn::READ {
                (libc::SHUT_RD, 1)
            } else {
                continue;
            };
            if t.cut.load(Ordering::Relaxed) >= level {
                continue;
            }
            t.cut.store(level, Ordering::Relaxed);
            // SAFETY: the descriptor belongs to a live connection (it leaves
            // the registry before it closes, under the lock we hold).
            unsafe {
                libc::shutdown(t.fd, how);
            }
            n += 1;
        }
        n
    }

    fn counters(&self) -> Counters {
        let (bytes_in, bytes_out) = {
            let r = self.lock();
            let live = r.slots.iter().flatten();
            let (i, o) = live.fold((0, 0), |(i, o), t| {
                (
                    i + t.bytes_in.load(Ordering::Relaxed),
                    o + t.bytes_out.load(Ordering::Relaxed),
                )
            });
            (r.closed_bytes_in + i, r.closed_bytes_out + o)
        };
        Counters {
            accepted: self.accepted.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed) as u64,
            closed: self.closed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            spawn_failed: self.spawn_failed.load(Ordering::Relaxed),
            bytes_in,
            bytes_out,
        }
    }
}

/// A snapshot of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted and handed to the handler.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections whose handler has ended.
    pub closed: u64,
    /// Connections closed on arrival because of `max_connections`.
    pub rejected: u64,
    /// Handlers that returned `Err`.
    pub errors: u64,
    /// Handlers that panicked.
    pub panics: u64,
    /// Connections closed on arrival because no fiber could be spawned for
    /// them (the acceptor then backs off as for `EMFILE`); they are also
    /// counted in `accepted` and `closed`.
    pub spawn_failed: u64,
    /// Bytes read from connections.
    pub bytes_in: u64,
    /// Bytes written to connections.
    pub bytes_out: u64,
}

/// What [`Server::serve`] returns after shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The counters at the end.
    pub counters: Counters,
    /// Connections cut at the end of the grace period.
    pub cut_at_grace: u64,
    /// Connection fibers still running when `serve` returned (their handlers
    /// ignored the shutdown); normally zero.
    pub still_open: u64,
}

/// Stops a server and reads its counters, from any thread or fiber.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<State>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("stopping", &self.state.is_stopping())
            .finish()
    }
}

impl ServerHandle {
    /// Starts a graceful shutdown (see the module docs); `serve` returns
    /// when it is over.
    pub fn stop(&self) {
        self.state.stop();
    }

    /// True once a shutdown has started.
    pub fn is_stopping(&self) -> bool {
        self.state.is_stopping()
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.state.counters()
    }
}

/// A bound server, ready to [`serve`](Server::serve).
pub struct Server {
    /// The runtime the server started, if it did not get one.
    runtime: Option<Runtime>,
    /// The runtime it runs on.
    rt: crate::Handle,
    listeners: Vec<Listener>,
    state: Arc<State>,
    handle_signals: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("workers", &self.rt.workers())
            .finish()
    }
}

impl Server {
    /// A [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The TCP addresses the server listens on (one per bind, with the port
    /// the system chose for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t, _) => t.local_addr().ok(),
                Listener::Unix(..) => None,
            })
            .collect();
        v.dedup();
        v
    }

    /// A handle to stop the server and read its counters.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            state: self.state.clone(),
        }
    }

    /// A handle to the runtime the server will run on, to start background
    /// fibers there (a hub, a ticker, per-worker services with
    /// [`Handle::spawn_on_worker`](crate::Handle::spawn_on_worker)) before
    /// or while it serves, instead of starting a second runtime by accident.
    /// Those fibers are cancelled when the server returns and its runtime
    /// shuts down.
    pub fn runtime_handle(&self) -> crate::Handle {
        self.rt.clone()
    }

    /// Serves connections with `handler`, one fiber per connection, until a
    /// stop (handle or signal); then shuts down gracefully and returns.
    ///
    /// # Errors
    ///
    /// Fails only if signal handling cannot be set up.
    pub fn serve<H>(self, handler: H) -> io::Result<Summary>
    where
        H: Fn(Conn) -> io::Result<()> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let admit: Admit = Arc::new(move |c, st| spawn_connection(c, st, &handler));
        self.run(admit, None)
    }

    /// Serves connections in *request mode* until a stop, then shuts down
    /// gracefully and returns: a connection between two requests holds no
    /// fiber and no buffer, only its socket and `new_state(&conn)`'s value.
    /// The server waits for it to become readable, then runs `handler` on a
    /// request fiber kept parked between requests, with that fiber's read
    /// buffer; the handler serves
    /// the request (blocking-style reads, writes and waits are fine) and
    /// returns [`Next::Idle`] at a request boundary, or [`Next::Close`].
    /// See [`request`] for the contract and the costs.
    ///
    /// # Errors
    ///
    /// Fails if signal handling or the readiness queues cannot be set up.
    ///
    /// # Examples
    ///
    /// An echo server whose idle connections cost well under a kilobyte:
    ///
    /// ```no_run
    /// use std::io::{self, Write};
    /// use weave::server::{Next, Request, Server};
    ///
    /// fn echo(req: &mut Request<'_, ()>) -> io::Result<Next> {
    ///     let (conn, (), buf) = req.parts();
    ///     // Into the runner's buffer (empty, 16 KiB), without zeroing it.
    ///     let n = conn.read_append(buf)?;
    ///     if n == 0 {
    ///         return Ok(Next::Close);
    ///     }
    ///     (&*conn).write_all(buf)?;
    ///     Ok(Next::Idle)
    /// }
    ///
    /// let server = Server::builder().bind("127.0.0.1:7000").build()?;
    /// server.serve_requests(|_conn| (), echo)?;
    /// # Ok::<(), io::Error>(())
    /// ```
    pub fn serve_requests<S, N, H>(self, new_state: N, handler: H) -> io::Result<Summary>
    where
        S: Send + 'static,
        N: Fn(&Conn) -> S + Send + Sync + 'static,
        H: Fn(&mut Request<'_, S>) -> io::Result<Next> + Send + Sync + 'static,
    {
        let workers = self.rt.workers();
        let mode = request::Mode::new(workers, self.state.clone(), new_state, handler)?;
        let admit_mode = mode.clone();
        let admit: Admit = Arc::new(move |c, _| admit_mode.admit(c));
        let start = Box::new(move |rt: &crate::Handle| mode.start(rt));
        self.run(admit, Some(start))
    }

    /// The accept loops, the signal fiber and the graceful shutdown around
    /// `admit`. `start`, run on the runtime before accepting, returns what
    /// stops its fibers after the shutdown.
    fn run(self, admit: Admit, start: Option<Start>) -> io::Result<Summary> {
        let Server {
            runtime,
            rt,
            listeners,
            state,
            handle_signals,
        } = self;
        let (signal_stream, installation) = if handle_signals {
            let (stream, installation) = signals::install()?;
            (Some(stream), Some(installation))
        } else {
            (None, None)
        };
        let rt_handle = rt.clone();
        let served = rt.spawn(move || {
            *state.controller.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::current());
            let finish = start.map(|s| s(&rt_handle));
            let wakers: Vec<Wake> = listeners.iter().map(Listener::waker).collect();
            let mut acceptors = Vec::new();
            for l in listeners {
                let pinned = match &l {
                    Listener::Tcp(_, w) => *w,
                    Listener::Unix(..) => None,
                };
                let st = state.clone();
                let admit = admit.clone();
                let acceptor = move || accept_loop(l, st, move |c, st: &Arc<State>| admit(c, st));
                acceptors.push(match pinned {
                    Some(w) => rt_handle.spawn_on_worker(w, acceptor),
                    None => crate::spawn(acceptor),
                });
            }
            let signal_fiber = signal_stream.map(|mut s| {
                let st = state.clone();
                let fd = s.as_raw_fd();
                let f = crate::spawn(move || {
                    if let Some(sig) = signals::wait(&mut s) {
                        log::info!("received signal {sig}; shutting down gracefully");
                        st.stop();
                    }
                });
                (f, fd)
            });
            while !state.is_stopping() {
                crate::park();
            }
            let summary = shutdown(&state, &wakers, acceptors, signal_fiber);
            if let Some(finish) = finish {
                finish();
            }
            summary
        });
        let summary = match served.join() {
            Ok(summary) => summary,
            Err(payload) => std::panic::resume_unwind(payload),
        };
        // A runtime the server started goes with it (the caller's stays).
        drop(runtime);
        if let Some(installation) = installation {
            signals::uninstall(installation);
        }
        Ok(summary)
    }
}

/// What the acceptor does with a new connection.
type Admit = Arc<dyn Fn(Conn, &Arc<State>) -> io::Result<()> + Send + Sync>;
/// Starts a serving mode's own fibers; returns what stops them.
type Start = Box<dyn FnOnce(&crate::Handle) -> Box<dyn FnOnce() + Send> + Send>;

fn shutdown(
    state: &Arc<State>,
    wakers: &[Wake],
    acceptors: Vec<crate::JoinHandle<()>>,
    signal_fiber: Option<(crate::JoinHandle<()>, i32)>,
) -> Summary {
    // 2. Wake the acceptors; they see `stopping` and return.
    for w in wakers {
        match w {
            // SAFETY: the acceptors own these listeners until they return,
            // which they only do after `stopping` is set (it is).
            Wake::Shutdown(fd) => unsafe {
                libc::shutdown(*fd, libc::SHUT_RDWR);
            },
            Wake::Connect(path) => {
                let _ = crate::net::UnixStream::connect(path);
            }
        }
    }
    for a in acceptors {
        let _ = a.join();
    }
    if let Some((f, fd)) = signal_fiber {
        // SAFETY: the signal fiber owns this socket until it returns.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
        let _ = f.join();
    }
    // 3. Close connections between requests; re-check every 10 ms.
    let grace_end = Instant::now() + state.config.shutdown_grace;
    while state.active.load(Ordering::Acquire) > 0 && Instant::now() < grace_end {
        state.cut(false);
        crate::park_timeout(Duration::from_millis(10).min(grace_end - Instant::now()));
    }
    // 4. Grace is over: cut everything left.
    let cut_at_grace = if state.active.load(Ordering::Acquire) > 0 {
        state.cut(true) as u64
    } else {
        0
    };
    // 5. Wait (bounded) for the handlers to notice.
    let end = Instant::now() + Duration::from_secs(1);
    while state.active.load(Ordering::Acquire) > 0 && Instant::now() < end {
        crate::park_timeout(Duration::from_millis(10));
    }
    let counters = state.counters();
    Summary {
        counters,
        cut_at_grace,
        still_open: counters.active,
    }
}

/// Decrements `active` and counts the close however the fiber ends (even
/// if it never ran because the runtime shut down, or could not be spawned).
struct ActiveGuard(Arc<State>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
        self.0.wake_paused_acceptors();
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 && self.0.is_stopping() {
            self.0.wake_controller();
        }
    }
}

/// Spawns the connection's fiber; on failure the connection is closed.
fn spawn_connection<H>(conn: Conn, state: &Arc<State>, handler: &Arc<H>) -> io::Result<()>
where
    H: Fn(Conn) -> io::Result<()> + Send + Sync + 'static,
{
    let guard = ActiveGuard(state.clone());
    let handler = handler.clone();
    let state = state.clone();
    let peer = conn.peer_addr().clone();
    let name = format!("conn {peer}");
    crate::fiber::Builder::new().name(name).spawn_detached(
        &crate::Handle::current().shared,
        None,
        move || {
            let _guard = guard;
            let result = panic::catch_unwind(AssertUnwindSafe(|| handler(conn)));
            let _ = account(&state, &peer, result);
        },
    )
}

/// Counts and logs how a handler call ended; re-raises a cancellation.
/// Returns the handler's value when it returned one.
pub(crate) fn account<T>(
    state: &State,
    peer: &conn::PeerAddr,
    result: std::thread::Result<io::Result<T>>,
) -> Option<T> {
    match result {
        Ok(Ok(v)) => return Some(v),
        Ok(Err(e)) => {
            state.errors.fetch_add(1, Ordering::Relaxed);
            let quiet = matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::NotConnected
            );
            if quiet {
                log::debug!("connection {peer}: {e}");
            } else {
                log::warn!("connection {peer}: handler error: {e}");
            }
        }
        // Cut by a cancellation (the fiber was cancelled, or the runtime
        // shuts down): not a handler failure. Let it finish unwinding
        // the fiber.
        Err(payload) if crate::fiber::is_cancellation(&*payload) => {
            log::debug!("connection {peer}: cancelled");
            panic::resume_unwind(payload);
        }
        Err(payload) => {
            state.panics.fetch_add(1, Ordering::Relaxed);
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            log::error!("connection {peer}: handler panicked: {msg}");
        }
    }
    None
}
