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
//! worker, a table of connections. An idle connection is its socket, its
//! tracking record and the handler's per-connection state `S`, in a slot of
//! that table; the reactor holds a *read hook* for it, handed over with
//! the socket's waiter list (`IoSource::on_readable`), where a blocked
//! reader would have put its fiber.
//!
//! 1. When the socket becomes readable (data, end of file, an error), the
//!    reactor runs the hook on its worker: the hook takes the connection
//!    out of its slot and hands it to a *runner*, a request fiber of that
//!    same worker (not stealable, so the request runs where its socket's
//!    events arrive): an idle runner if the worker has one parked, else a
//!    new one, spawned with a stack from the pool like any fiber.
//! 2. The runner calls the handler with a [`Request`]: the connection, the
//!    state and the runner's read buffer (16 KiB, empty;
//!    [`Conn::read_append`](crate::server::Conn::read_append) reads into it
//!    without zeroing it first). Inside, the
//!    handler is ordinary blocking-style code: it may read more, write,
//!    wait on a channel or a backend; the runner parks as usual.
//! 3. The handler returns [`Next::Idle`] at a request boundary. If the
//!    reactor already knows of more input the handler is called again at
//!    once; otherwise the connection goes back to its slot with a new hook
//!    for the reactor. Handing over the hook checks the socket's read bit
//!    under the same lock the reactor takes after setting it, so input
//!    that arrived meanwhile is never missed: either the reactor finds the
//!    hook, or the handover finds the bit and the handler is called again
//!    (after a `poll(2)` if the bit may be stale).
//! 4. [`Next::Close`], an error or a panic closes the connection (errors and
//!    panics are counted and logged as in the default mode).
//! 5. Between two requests the runner drops the fiber-local values the
//!    handler made, and parks among its worker's idle runners, of which a
//!    worker keeps 64; one past that ends, its stack going back to the
//!    pool. A burst of requests in flight at once spawns as many runners
//!    as it needs.
//!
//! A request costs a hand-over to a parked fiber (a fiber spawn when the
//! worker has no idle runner) and no system call beyond the handler's own:
//! the socket stays in the worker's one `epoll` set, registered once,
//! edge-triggered. Runners are named `request` in panic and stack overflow
//! reports; the handler's errors and panics are logged with the client's
//! address.
//!
//! # The handler's contract
//!
//! - Whatever the handler wants to keep across requests lives in `S` (or in
//!   shared state): the next request of the connection may run on another
//!   runner, its fiber-local values are dropped between requests, and the
//!   buffer handed to the next call is empty.
//! - Return `Next::Idle` only when no input that was read belongs to a later
//!   request: input still unread in the socket is fine (it wakes the
//!   connection again at once), input read into the buffer and not handled
//!   is lost.
//! - A read that returns end of file means the client is gone: return
//!   `Next::Close`. A handler that returns `Idle` with input or end of file
//!   pending and nothing read in that call would be called again forever;
//!   the server closes such a connection instead (and logs a warning).
//!
//! # Timeouts and shutdown
//!
//! The server's idle timeout applies to reads and writes inside a request,
//! as in the default mode, and to idle connections: a sweeper fiber per
//! worker closes those that stayed idle longer, checking every half
//! timeout. A graceful
//! shutdown shuts down the read side of idle connections, which wakes them
//! to end of file, so their handlers see the close.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sys::coarse_now;

use super::{account, ActiveGuard, Conn, State};

/// Capacity of a runner's read buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;
/// A buffer that grew past this is dropped after its request instead of
/// kept for the next one.
const BUFFER_KEEP_MAX: usize = 64 * 1024;
/// Idle runners a worker keeps at most; a burst of requests in flight at
/// once beyond that spawns runners that end with their request.
const RUNNERS_KEPT: usize = 64;
/// The name of request fibers, in panic and stack overflow reports (the
/// handler's errors and panics are also logged with the client's address).
const RUNNER_NAME: &str = "request";

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
/// state, and the runner's read buffer (empty, 16 KiB of capacity; the
/// handler may grow it). Read into the buffer with
/// [`Conn::read_append`](crate::server::Conn::read_append), which fills its
/// spare capacity directly: resizing it with zeros to `read` into it costs
/// a 16 KiB `memset` on every request.
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

    /// The runner's read buffer, empty at the start of each call.
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

/// An idle connection.
struct Entry<S> {
    /// Dropped before the connection closes its descriptor.
    state: S,
    conn: Conn,
    /// Counts the connection open until it drops.
    _guard: ActiveGuard,
    /// When it went idle, on the coarse monotonic clock (a few ms of
    /// resolution is plenty for an idle timeout, and the precise clock
    /// cost tens of ns per request on a virtual machine).
    since: Duration,
}

enum Slot<S> {
    Free,
    /// Idle: its read hook is with the reactor. Boxed, so that handing a
    /// connection between its slot, the reactor's hook and a runner moves
    /// a pointer, not the connection (a few hundred bytes, several times
    /// per request).
    Idle(Box<Entry<S>>),
    /// Taken by a request fiber.
    Busy,
}

/// A worker's table of connections, idle or in a request. Each use of a
/// slot gets a new generation, so a hook left behind by a connection that
/// was closed never takes the slot's next tenant.
struct Table<S> {
    slots: Vec<(u64, Slot<S>)>,
    free: Vec<usize>,
    next_gen: u64,
    /// The worker's idle runners, parked until handed a request.
    runners: Vec<Arc<Runner<S>>>,
}

/// A request fiber between two requests, on its worker: parked, with a
/// mailbox the dispatcher fills before it unparks the fiber.
struct Runner<S> {
    fiber: crate::Fiber,
    job: Mutex<Option<Job<S>>>,
}

/// A connection with input waiting, for a runner.
struct Job<S> {
    slot: usize,
    entry: Box<Entry<S>>,
}

/// An idle connection taken for a request, and an idle runner to serve it
/// if its worker had one.
type Taken<S> = (Box<Entry<S>>, Option<Arc<Runner<S>>>);

/// One worker's share of the connections of a request-mode server.
struct Dispatcher<S> {
    table: Mutex<Table<S>>,
}

impl<S> Dispatcher<S> {
    fn new() -> Dispatcher<S> {
        Dispatcher {
            table: Mutex::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
                next_gen: 0,
                runners: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<S>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the idle connection of `slot` for a request, if the slot is
    /// still in the generation whose low bits are `gen` (see `Token`), and
    /// with it one of the worker's idle runners if it has one (one lock
    /// for both).
    fn take(&self, slot: usize, gen: u64) -> Option<Taken<S>> {
        let mut t = self.lock();
        let mask = (1 << Token::GEN_BITS) - 1;
        let entry = match t.slots.get_mut(slot) {
            Some((g, s @ Slot::Idle(_))) if *g & mask == gen => {
                match std::mem::replace(s, Slot::Busy) {
                    Slot::Idle(e) => e,
                    _ => unreachable!(),
                }
            }
            _ => return None,
        };
        Some((entry, t.runners.pop()))
    }

    /// Frees `slot`, returning its idle entry if it had one. The caller
    /// drops that (closing the connection) outside the lock.
    fn release(&self, slot: usize) -> Option<Box<Entry<S>>> {
        let mut t = self.lock();
        let t = &mut *t;
        let old = std::mem::replace(&mut t.slots[slot].1, Slot::Free);
        t.free.push(slot);
        match old {
            Slot::Idle(e) => Some(e),
            _ => None,
        }
    }

    /// Closes the connections idle since before `cutoff`.
    fn sweep(&self, cutoff: Duration) -> usize {
        let stale: Vec<usize> = {
            let t = self.lock();
            t.slots
                .iter()
                .enumerate()
                .filter_map(|(i, (_, s))| match s {
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
}

type Handler<S> = dyn Fn(&mut Request<'_, S>) -> io::Result<Next> + Send + Sync;
type NewState<S> = dyn Fn(&Conn) -> S + Send + Sync;

/// A server's request mode: its dispatchers and handler.
pub(crate) struct Mode<S> {
    dispatchers: Vec<Dispatcher<S>>,
    state: Arc<State>,
    new_state: Box<NewState<S>>,
    handler: Box<Handler<S>>,
    /// The runtime request fibers are spawned on (set by `start`).
    rt: std::sync::OnceLock<crate::Handle>,
    done: AtomicBool,
    /// Itself, for the hooks it hands to the reactor.
    me: std::sync::Weak<Mode<S>>,
}

/// What the reactor hands back with a read hook: the worker's table (12
/// bits), the slot (28 bits) and the low 24 bits of the slot's generation.
/// A hook left behind by a closed connection whose slot was reused since
/// (2^24 reuses apart it would not be told from the new tenant's, but a
/// stale hook can only fire from an event fetched before its socket was
/// closed) finds another generation and does nothing.
struct Token;

impl Token {
    const GEN_BITS: u32 = 24;
    const SLOT_BITS: u32 = 28;
    const TABLE_BITS: u32 = 12;

    fn pack(table: usize, slot: usize, gen: u64) -> Option<u64> {
        if table >> Self::TABLE_BITS != 0 || slot >> Self::SLOT_BITS != 0 {
            return None;
        }
        let gen = gen & ((1 << Self::GEN_BITS) - 1);
        Some(
            ((table as u64) << (Self::SLOT_BITS + Self::GEN_BITS))
                | ((slot as u64) << Self::GEN_BITS)
                | gen,
        )
    }

    fn unpack(token: u64) -> (usize, usize, u64) {
        let gen = token & ((1 << Self::GEN_BITS) - 1);
        let slot = (token >> Self::GEN_BITS) & ((1 << Self::SLOT_BITS) - 1);
        let table = token >> (Self::SLOT_BITS + Self::GEN_BITS);
        (table as usize, slot as usize, gen)
    }
}

impl<S: Send + 'static> crate::io::ReadHook for Mode<S> {
    /// An idle connection is readable: start its request.
    fn readable(&self, token: u64) {
        let (i, slot, gen) = Token::unpack(token);
        if let Some((entry, runner)) = self.dispatchers.get(i).and_then(|d| d.take(slot, gen)) {
            self.spawn_request(i, slot, entry, runner);
        }
    }
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
        Ok(Arc::new_cyclic(|me| Mode {
            dispatchers: (0..workers.max(1)).map(|_| Dispatcher::new()).collect(),
            state,
            new_state: Box::new(new_state),
            handler: Box::new(handler),
            rt: std::sync::OnceLock::new(),
            done: AtomicBool::new(false),
            me: me.clone(),
        }))
    }

    /// A new connection: idle until it sends something. Called on the
    /// acceptor's fiber, whose worker's reactor then watches it.
    pub(crate) fn admit(&self, conn: Conn) -> io::Result<()> {
        let i = crate::runtime::current_worker().unwrap_or(0) % self.dispatchers.len();
        let entry = Box::new(Entry {
            state: (self.new_state)(&conn),
            conn,
            _guard: ActiveGuard(self.state.clone()),
            since: coarse_now(),
        });
        let slot = {
            let mut t = self.dispatchers[i].lock();
            let t = &mut *t;
            let gen = t.next_gen;
            t.next_gen += 1;
            let slot = t.free.pop().unwrap_or_else(|| {
                t.slots.push((0, Slot::Free));
                t.slots.len() - 1
            });
            t.slots[slot] = (gen, Slot::Busy);
            slot
        };
        if let Err(entry) = self.idle(i, slot, entry, None) {
            // Input came with the connection: serve it now.
            let runner = self.dispatchers[i].lock().runners.pop();
            self.spawn_request(i, slot, entry, runner);
        }
        Ok(())
    }

    /// Parks the connection of `slot` (taken, `Busy`) idle and hands the
    /// reactor a hook that starts a request when it is next readable. Gives
    /// the entry back when input is already known to be pending, or when
    /// no reactor can report it. Once the connection is parked, queues
    /// `runner` (the fiber that served it) among the worker's idle
    /// runners under the same lock, unless the server is stopping or
    /// enough runners are idle; returns whether it did.
    fn idle(
        &self,
        i: usize,
        slot: usize,
        entry: Box<Entry<S>>,
        runner: Option<&Arc<Runner<S>>>,
    ) -> Result<bool, Box<Entry<S>>> {
        let d = &self.dispatchers[i];
        let mut t = d.lock();
        let gen = t.slots[slot].0;
        let Some(token) = Token::pack(i, slot, gen) else {
            // Past what a token names: served without going idle.
            return Err(entry);
        };
        t.slots[slot].1 = Slot::Idle(entry);
        let Slot::Idle(e) = &t.slots[slot].1 else {
            unreachable!()
        };
        let hook: std::sync::Weak<dyn crate::io::ReadHook> = self.me.clone();
        // Under the table's lock: a hook that fires at once waits for it,
        // and then finds the entry in its slot.
        if e.conn.on_readable(hook, token) {
            return Ok(runner.is_some_and(|r| Self::queue_runner(&self.done, &mut t, r)));
        }
        match std::mem::replace(&mut t.slots[slot].1, Slot::Busy) {
            Slot::Idle(e) => Err(e),
            _ => unreachable!(),
        }
    }

    /// Queues `runner` among its worker's idle runners (`t`, locked) unless
    /// the server is stopping or enough runners are idle; returns whether
    /// it did. Checked under the table's lock: `start`'s stop sets `done`
    /// and then takes the lock to unpark the runners queued, so a runner
    /// queued here is among them.
    fn queue_runner(done: &AtomicBool, t: &mut Table<S>, runner: &Arc<Runner<S>>) -> bool {
        if done.load(Ordering::SeqCst) || t.runners.len() >= RUNNERS_KEPT {
            return false;
        }
        t.runners.push(runner.clone());
        true
    }

    /// Spawns the sweeper fibers, one pinned on each worker, which close
    /// connections idle past the server's idle timeout; returns what stops
    /// them and closes the connections still idle.
    pub(crate) fn start(self: Arc<Self>, rt: &crate::Handle) -> Box<dyn FnOnce() + Send> {
        let _ = self.rt.set(rt.clone());
        let fibers: Vec<_> = (0..self.dispatchers.len())
            .map(|i| {
                let mode = self.clone();
                rt.spawn_on_worker(i, move || mode.sweep_idle(i))
            })
            .collect();
        Box::new(move || {
            self.done.store(true, Ordering::SeqCst);
            for f in &fibers {
                f.fiber().unpark();
            }
            for f in fibers {
                let _ = f.join();
            }
            // Idle runners see `done` and end.
            for d in &self.dispatchers {
                for r in std::mem::take(&mut d.lock().runners) {
                    r.fiber.unpark();
                }
            }
            // Connections still idle close here.
            for d in &self.dispatchers {
                let n = d.lock().slots.len();
                for i in 0..n {
                    drop(d.release(i));
                }
            }
        })
    }

    /// Closes, every half idle timeout, the connections of worker `i`'s
    /// table idle longer than the timeout; returns at shutdown.
    fn sweep_idle(self: Arc<Self>, i: usize) {
        let idle_timeout = self.state.config.idle_timeout;
        while !self.done.load(Ordering::SeqCst) {
            let Some(t) = idle_timeout else {
                crate::park();
                continue;
            };
            crate::fiber::park_timeout(t / 2);
            let cutoff = coarse_now().checked_sub(t);
            let n = cutoff.map_or(0, |c| self.dispatchers[i].sweep(c));
            if n > 0 {
                log::debug!("request mode: closed {n} connections idle for {t:?}");
            }
        }
    }

    /// Starts a request for the connection of `slot`: hands it to `idle`,
    /// a runner of worker `i` taken from its idle list, or spawns a runner
    /// for it.
    fn spawn_request(
        &self,
        i: usize,
        slot: usize,
        entry: Box<Entry<S>>,
        idle: Option<Arc<Runner<S>>>,
    ) {
        let stopping = self.done.load(Ordering::SeqCst);
        let (Some(mode), Some(rt), false) = (self.me.upgrade(), self.rt.get(), stopping) else {
            drop(self.dispatchers[i].release(slot));
            if let Some(runner) = idle {
                // Taken from the list that the stop unparks: unpark it
                // here, and it sees `done` and ends.
                runner.fiber.unpark();
            }
            return;
        };
        let job = Job { slot, entry };
        if let Some(runner) = idle {
            *runner.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
            runner.fiber.unpark();
            return;
        }
        let spawned = crate::fiber::Builder::new()
            .name(RUNNER_NAME)
            // On the worker whose reactor watches the socket, and not
            // stealable: the request runs where its events arrive.
            .spawn_detached(&rt.shared, crate::runtime::current_worker(), move || {
                mode.run_requests(i, job)
            });
        if let Err(e) = spawned {
            // The closure, and with it the connection, was dropped: closed.
            self.state.spawn_failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("request mode: cannot spawn a fiber: {e}; closed the connection");
            drop(self.dispatchers[i].release(slot));
        }
    }

    /// A runner's life: serves its first request, then, parked among the
    /// worker's idle runners, each request it is handed, until the
    /// server stops or enough runners are idle already.
    fn run_requests(&self, i: usize, first: Job<S>) {
        let me = Arc::new(Runner {
            fiber: crate::current(),
            job: Mutex::new(None),
        });
        let mut buf = Vec::with_capacity(BUFFER_CAPACITY);
        let mut job = first;
        loop {
            let queued = self.serve(i, job.slot, job.entry, &mut buf, &me);
            // Nothing of one connection's request reaches the next one's:
            // its fiber-local values are dropped, a buffer it grew too.
            if let Err(payload) = crate::fiber::local::clear_current() {
                crate::fiber::drop_payload(payload);
            }
            crate::fiber::cancel::caught();
            if buf.capacity() > BUFFER_KEEP_MAX {
                buf = Vec::with_capacity(BUFFER_CAPACITY);
            }
            // Queued already when the connection went idle (a request
            // handed over meanwhile waits in the mailbox); else now.
            if !queued && !Self::queue_runner(&self.done, &mut self.dispatchers[i].lock(), &me) {
                return;
            }
            job = loop {
                // Unparked by `spawn_request` with a job, by `start`'s
                // stop or a stopping `spawn_request` without one, or
                // spuriously (a handler kept this fiber's handle).
                crate::park();
                if let Some(job) = me.job.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    break job;
                }
                if self.done.load(Ordering::SeqCst) {
                    return;
                }
            };
        }
    }

    /// Runs the handler for as long as input is known to be waiting, then
    /// parks the connection idle again, or closes it. Returns whether
    /// `runner` was queued among the idle runners as the connection went
    /// idle.
    fn serve(
        &self,
        i: usize,
        slot: usize,
        mut entry: Box<Entry<S>>,
        buf: &mut Vec<u8>,
        runner: &Arc<Runner<S>>,
    ) -> bool {
        let d = &self.dispatchers[i];
        loop {
            let keep = loop {
                let read_before = entry.conn.bytes_read();
                buf.clear();
                let mut req = Request {
                    conn: &entry.conn,
                    state: &mut entry.state,
                    buf: &mut *buf,
                };
                let result = panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(&mut req)));
                match account(&self.state, entry.conn.peer_addr(), result) {
                    Some(Next::Idle) if entry.conn.read_hint() == Some(true) => {
                        if entry.conn.bytes_read() == read_before {
                            // Input or end of file is pending and the
                            // handler read none of it: calling it again
                            // would loop forever on this worker.
                            log::warn!(
                                "request mode: the handler for {} returned Idle with input or end of file pending and nothing read; closed",
                                entry.conn.peer_addr()
                            );
                            break false;
                        }
                        continue;
                    }
                    Some(Next::Idle) => break true,
                    Some(Next::Close) | None => break false,
                }
            };
            if !keep || self.done.load(Ordering::SeqCst) {
                break;
            }
            entry.since = coarse_now();
            match self.idle(i, slot, entry, Some(runner)) {
                Ok(queued) => return queued,
                Err(back) => entry = back,
            }
            // The reactor's read bit is set, or nothing can watch the
            // socket. Ask the kernel: a stale bit is cleared, so the next
            // try parks it; a socket nothing watches is served in place.
            if let Ok(false) = entry.conn.poll_read_ready() {
                match self.idle(i, slot, entry, Some(runner)) {
                    Ok(queued) => return queued,
                    Err(back) => entry = back,
                }
            }
        }
        drop(d.release(slot));
        drop(entry);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens_round_trip_and_refuse_what_they_cannot_name() {
        for (table, slot, gen) in [
            (0, 0, 0),
            (3, 12_345, 77),
            (4095, (1 << 28) - 1, (1 << 24) - 1),
        ] {
            let t = Token::pack(table, slot, gen).unwrap();
            assert_eq!(Token::unpack(t), (table, slot, gen));
        }
        // Only the generation's low bits travel.
        let t = Token::pack(1, 2, (5 << 24) | 9).unwrap();
        assert_eq!(Token::unpack(t), (1, 2, 9));
        assert!(Token::pack(4096, 0, 0).is_none());
        assert!(Token::pack(0, 1 << 28, 0).is_none());
    }
}
