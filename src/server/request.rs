//! Request mode: idle connections that hold no fiber and no buffer.
//!
//! # Why
//!
//! In the default mode each connection is a fiber running the handler from
//! accept to close. Between two requests that fiber is parked in `read`: it
//! holds at least one page of stack, and whatever buffer the handler
//! allocated. With tens of thousands of mostly idle clients (the usual
//! shape of a cache server's traffic) that is most of the server's memory;
//! memcached, for comparison, keeps no stack and returns an idle
//! connection's read buffer to a per-thread cache.
//!
//! # How
//!
//! [`Server::serve_requests`](super::Server::serve_requests) keeps, per
//! worker, a *dispatcher*: an `epoll` set of the idle connections of that
//! worker, itself waited on by one fiber through the reactor. An idle
//! connection is its socket, its tracking record and the handler's
//! per-connection state `S`, in a slot of the dispatcher's table, armed in
//! the set with `EPOLLONESHOT`.
//!
//! 1. When the socket becomes readable (data, end of file, an error), the
//!    dispatcher takes the connection out of its slot and spawns a fiber
//!    for it: a stack from the pool, like any fiber.
//! 2. That fiber takes a read buffer from the server's pool (16 KiB, empty)
//!    and calls the handler with a [`Request`]: the connection, the state
//!    and the buffer. Inside, the handler is ordinary blocking-style code: it
//!    may read more, write, wait on a channel or a backend; its fiber parks
//!    as usual.
//! 3. The handler returns [`Next::Idle`] at a request boundary. If the
//!    reactor already knows of more input the handler is called again at
//!    once; otherwise the buffer goes back to the pool, the connection back
//!    to its slot, the socket is re-armed (`EPOLL_CTL_MOD`, which reports
//!    input that arrived meanwhile, so none is missed), and the fiber ends,
//!    its stack going back to the pool.
//! 4. [`Next::Close`], an error or a panic closes the connection (errors and
//!    panics are counted and logged as in the default mode).
//!
//! Spawning a fiber per request costs a little time (the stack comes warm
//! from the pool) and one more system call per request (the re-arm).
//!
//! # The handler's contract
//!
//! - Whatever the handler wants to keep across requests lives in `S` (or in
//!   shared state): the fiber, its stack and the buffer are gone between
//!   requests. The buffer handed to the next call is empty.
//! - Return `Next::Idle` only when no input that was read belongs to a later
//!   request: input still unread in the socket is fine (it wakes the
//!   connection again at once), input read into the buffer and not handled
//!   is lost.
//! - A read that returns end of file means the client is gone: return
//!   `Next::Close` (returning `Idle` would only be woken again by the same
//!   end of file).
//!
//! # Timeouts and shutdown
//!
//! The server's idle timeout applies to reads and writes inside a request,
//! as in the default mode, and to idle connections: the dispatcher closes
//! those that stayed idle longer, checking every half timeout. A graceful
//! shutdown shuts down the read side of idle connections, which wakes them
//! to end of file, so their handlers see the close.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{account, ActiveGuard, Conn, State};
use crate::io::{Direction, IoSource};

/// Capacity of a pooled read buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;
/// A buffer that grew past this is dropped instead of pooled.
const BUFFER_KEEP_MAX: usize = 64 * 1024;
/// Pooled buffers kept at most (one per request in flight is the need).
const BUFFER_POOL_MAX: usize = 1024;
/// Events fetched per `epoll_wait`.
const EVENTS: usize = 256;
/// Token of a dispatcher's own wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// What a request-mode handler asks for when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The request is done and nothing read is left over: keep the
    /// connection, idle, until it is readable again.
    Idle,
    /// Close the connection.
    Close,
}

/// One turn of a request-mode handler: the connection, its per-connection
/// state, and a pooled read buffer (empty, 16 KiB of capacity; the handler
/// may grow it).
pub struct Request<'a, S> {
    conn: &'a Conn,
    state: &'a mut S,
    buf: &'a mut Vec<u8>,
}

impl<'a, S> Request<'a, S> {
    /// The connection (`&Conn` implements `Read` and `Write`).
    pub fn conn(&self) -> &'a Conn {
        self.conn
    }

    /// The state kept for this connection between requests.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The pooled read buffer, empty at the start of each call.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    /// The connection, the state and the buffer at once.
    pub fn parts(&mut self) -> (&'a Conn, &mut S, &mut Vec<u8>) {
        (self.conn, self.state, self.buf)
    }
}

impl<S> fmt::Debug for Request<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("conn", &self.conn)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// An epoll descriptor, waited on through the reactor like a socket.
struct EpollFd(OwnedFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl mio::event::Source for EpollFd {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).deregister(registry)
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An idle connection.
struct Entry<S> {
    /// Dropped before the connection closes its descriptor.
    state: S,
    conn: Conn,
    /// Counts the connection open until it drops.
    _guard: ActiveGuard,
    /// When it went idle.
    since: Instant,
}

enum Slot<S> {
    Free,
    /// Idle, armed in the epoll set.
    Idle(Entry<S>),
    /// Taken by a request fiber.
    Busy,
}

/// One worker's set of idle connections.
struct Dispatcher<S> {
    epoll: IoSource<EpollFd>,
    wake: OwnedFd,
    slots: Mutex<(Vec<Slot<S>>, Vec<usize>)>,
}

impl<S> Dispatcher<S> {
    fn new() -> io::Result<Dispatcher<S>> {
        // SAFETY: plain system calls; each returned descriptor is owned
        // right away.
        let (epoll, wake) = unsafe {
            let ep = OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let ev = OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?);
            (ep, ev)
        };
        let d = Dispatcher {
            epoll: IoSource::new(EpollFd(epoll)),
            wake,
            slots: Mutex::new((Vec::new(), Vec::new())),
        };
        d.ctl(
            libc::EPOLL_CTL_ADD,
            d.wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        Ok(d)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid event; the descriptors are open.
        cvt(unsafe { libc::epoll_ctl(self.epoll.raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    fn arm(&self, op: libc::c_int, fd: RawFd, slot: usize) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
        self.ctl(op, fd, events, slot as u64)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Slot<S>>, Vec<usize>)> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks `entry` idle: in slot `slot` (or a new one), then armed.
    /// On failure the connection is dropped (closed).
    fn park(&self, slot: Option<usize>, entry: Entry<S>) -> io::Result<()> {
        let fd = entry.conn.as_raw_fd();
        let (slot, op) = {
            let mut g = self.lock();
            let (slots, free) = &mut *g;
            match slot {
                Some(i) => {
                    slots[i] = Slot::Idle(entry);
                    (i, libc::EPOLL_CTL_MOD)
                }
                None => {
                    let i = free.pop().unwrap_or_else(|| {
                        slots.push(Slot::Free);
                        slots.len() - 1
                    });
                    slots[i] = Slot::Idle(entry);
                    (i, libc::EPOLL_CTL_ADD)
                }
            }
        };
        // The entry is in its slot before it is armed: an event that fires
        // at once finds it.
        if let Err(e) = self.arm(op, fd, slot) {
            drop(self.release(slot));
            return Err(e);
        }
        Ok(())
    }

    /// Takes the idle connection of `slot` for a request.
    fn take(&self, slot: usize) -> Option<Entry<S>> {
        let mut g = self.lock();
        match g.0.get_mut(slot) {
            Some(s @ Slot::Idle(_)) => match std::mem::replace(s, Slot::Busy) {
                Slot::Idle(e) => Some(e),
                _ => unreachable!(),
            },
            _ => None,
        }
    }

    /// Frees `slot`, returning its idle entry if it had one. The caller
    /// drops that (closing the connection) outside the lock.
    fn release(&self, slot: usize) -> Option<Entry<S>> {
        let mut g = self.lock();
        let (slots, free) = &mut *g;
        let old = std::mem::replace(&mut slots[slot], Slot::Free);
        free.push(slot);
        match old {
            Slot::Idle(e) => {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, e.conn.as_raw_fd(), 0, 0);
                Some(e)
            }
            _ => None,
        }
    }

    /// Closes the connections idle since before `cutoff`.
    fn sweep(&self, cutoff: Instant) -> usize {
        let stale: Vec<usize> = {
            let g = self.lock();
            g.0.iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Slot::Idle(e) if e.since < cutoff => Some(i),
                    _ => None,
                })
                .collect()
        };
        let n = stale.len();
        for i in stale {
            drop(self.release(i));
        }
        n
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

/// The buffers lent to requests.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        let pooled = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY))
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() > BUFFER_KEEP_MAX {
            return;
        }
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < BUFFER_POOL_MAX {
            pool.push(buf);
        }
    }
}

type Handler<S> = dyn Fn(&mut Request<'_, S>) -> io::Result<Next> + Send + Sync;
type NewState<S> = dyn Fn(&Conn) -> S + Send + Sync;

/// A server's request mode: its dispatchers, buffers and handler.
pub(crate) struct Mode<S> {
    dispatchers: Vec<Dispatcher<S>>,
    buffers: Buffers,
    state: Arc<State>,
    new_state: Box<NewState<S>>,
    handler: Box<Handler<S>>,
    next: AtomicUsize,
    done: AtomicBool,
}

impl<S: Send + 'static> Mode<S> {
    pub(crate) fn new<N, H>(
        workers: usize,
        state: Arc<State>,
        new_state: N,
        handler: H,
    ) -> io::Result<Arc<Mode<S>>>
    where
        N: Fn(&Conn) -> S + Send + Sync + 'static,
        H: Fn(&mut Request<'_, S>) -> io::Result<Next> + Send + Sync + 'static,
    {
        let dispatchers = (0..workers.max(1))
            .map(|_| Dispatcher::new())
            .collect::<io::Result<_>>()?;
        Ok(Arc::new(Mode {
            dispatchers,
            buffers: Buffers::default(),
            state,
            new_state: Box::new(new_state),
            handler: Box::new(handler),
            next: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }))
    }

    /// A new connection: idle until it sends something.
    pub(crate) fn admit(&self, conn: Conn) -> io::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.dispatchers.len();
        let entry = Entry {
            state: (self.new_state)(&conn),
            conn,
            _guard: ActiveGuard(self.state.clone()),
            since: Instant::now(),
        };
        self.dispatchers[i].park(None, entry)
    }

    /// Spawns the dispatcher fibers, one pinned on each worker; returns
    /// what stops them.
    pub(crate) fn start(self: Arc<Self>, rt: &crate::Handle) -> Box<dyn FnOnce() + Send> {
        let fibers: Vec<_> = (0..self.dispatchers.len())
            .map(|i| {
                let mode = self.clone();
                rt.spawn_on_worker(i, move || mode.dispatch(i))
            })
            .collect();
        Box::new(move || {
            self.done.store(true, Ordering::SeqCst);
            for d in &self.dispatchers {
                d.wake();
            }
            for f in fibers {
                let _ = f.join();
            }
            // Connections still idle close here.
            for d in &self.dispatchers {
                let n = d.lock().0.len();
                for i in 0..n {
                    drop(d.release(i));
                }
            }
        })
    }

    /// The dispatcher loop of worker `i`.
    fn dispatch(self: Arc<Self>, i: usize) {
        let d = &self.dispatchers[i];
        let idle_timeout = self.state.config.idle_timeout;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut next_sweep = idle_timeout.map(|t| Instant::now() + t / 2);
        loop {
            let got = d.epoll.do_io(Direction::Read, next_sweep, |ep| {
                // SAFETY: `events` has room for `EVENTS` entries.
                let n = unsafe {
                    libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, 0)
                };
                match cvt(n)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n as usize),
                }
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.done.load(Ordering::SeqCst) {
                        return;
                    }
                    log::error!("request mode: waiting for idle connections: {e}");
                    crate::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for ev in &events[..n] {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    let mut sink = 0u64;
                    // SAFETY: reads 8 bytes into a valid u64 from our eventfd.
                    unsafe {
                        libc::read(d.wake.as_raw_fd(), (&mut sink as *mut u64).cast(), 8);
                    }
                    continue;
                }
                let slot = token as usize;
                if let Some(entry) = d.take(slot) {
                    self.spawn_request(i, slot, entry);
                }
            }
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            if let (Some(t), Some(at)) = (idle_timeout, next_sweep) {
                let now = Instant::now();
                if now >= at {
                    let n = now.checked_sub(t).map_or(0, |cutoff| d.sweep(cutoff));
                    if n > 0 {
                        log::debug!("request mode: closed {n} connections idle for {t:?}");
                    }
                    next_sweep = Some(now + t / 2);
                }
            }
        }
    }

    fn spawn_request(self: &Arc<Self>, i: usize, slot: usize, entry: Entry<S>) {
        let mode = self.clone();
        let peer = entry.conn.peer_addr().clone();
        let spawned = crate::fiber::Builder::new()
            .name(format!("conn {peer}"))
            .spawn(move || mode.serve(i, slot, entry));
        if let Err(e) = spawned {
            // The closure, and with it the connection, was dropped: closed.
            self.state.spawn_failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("request mode: cannot spawn a fiber for {peer}: {e}; closed it");
            drop(self.dispatchers[i].release(slot));
        }
    }

    /// Runs the handler for as long as input is known to be waiting, then
    /// parks the connection idle again, or closes it.
    fn serve(&self, i: usize, slot: usize, mut entry: Entry<S>) {
        let d = &self.dispatchers[i];
        let mut buf = self.buffers.take();
        let keep = loop {
            buf.clear();
            let mut req = Request {
                conn: &entry.conn,
                state: &mut entry.state,
                buf: &mut buf,
            };
            let result = panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(&mut req)));
            match account(&self.state, entry.conn.peer_addr(), result) {
                Some(Next::Idle) if entry.conn.read_hint() == Some(true) => continue,
                Some(Next::Idle) => break true,
                Some(Next::Close) | None => break false,
            }
        };
        self.buffers.give(buf);
        if keep && !self.done.load(Ordering::SeqCst) {
            entry.since = Instant::now();
            if let Err(e) = d.park(Some(slot), entry) {
                log::warn!("request mode: cannot re-arm a connection: {e}; closed it");
            }
        } else {
            drop(d.release(slot));
            drop(entry);
        }
    }
}
