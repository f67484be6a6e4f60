//! Internal I/O machinery (readiness, registration).
//! The reactor: how a fiber waits for a socket without blocking its worker.
//!
//! Sockets are always non-blocking. Every blocking-style operation goes
//! through one loop, [`IoSource::do_io`]: try the system call; on
//! `WouldBlock`, wait for readiness; try again.
//!
//! # Readiness without lost events
//!
//! mio is edge-triggered: the kernel reports a socket once when it becomes
//! ready, not while it stays ready. So each registration keeps a readiness
//! word ([`ScheduledIo`]): the poller sets bits when an event arrives, and a
//! fiber clears its bit only after the operation returned `WouldBlock`. The
//! word carries a tick, bumped by every event. A fiber reads the word *before*
//! its system call and clears the bit with a CAS against that snapshot, so an
//! event that lands between the `WouldBlock` and the clear changes the tick,
//! the CAS fails, and the fiber retries instead of sleeping through it.
//!
//! A read that returns fewer bytes than asked for (but more than zero)
//! drained the socket's receive queue, so [`IoSource::do_read`] clears the
//! read bit then too, with the same CAS, unless a hang-up or error was
//! already recorded (end-of-file stays readable forever but is reported
//! only once). The next read then parks at once instead of making a system
//! call only to hear `WouldBlock`. Anything that arrives after that read
//! raises a new event. (One exception: TCP urgent data stops a read at the
//! urgent mark with data still queued. Nothing in weave sends or expects
//! urgent data.)
//!
//! Waiting publishes the fiber, then checks the bit; the poller sets the
//! bit, then looks for waiters. Either the poller sees the waiter, or the
//! waiter sees the bit. The common case, one waiter per direction, takes no
//! lock: each direction has a lock-free slot (see [`waiters`], which the
//! loom model in `tests/loom_park` checks).
//!
//! Readers and writers wait on separate lists, so one fiber can read a socket
//! while another writes it.
//!
//! # Registration
//!
//! A socket is registered lazily, on its first `WouldBlock` on a fiber, with
//! the poller of the worker that fiber runs on. Started fibers never move, so
//! a connection's events arrive on the thread that handles it. The token is
//! the address of the `ScheduledIo`, kept alive by a reference owned by the
//! registration. When the socket drops, it is deregistered and that reference
//! is released by the poller's worker *between* two event batches, so an
//! event already fetched for it can never touch freed memory.
//!
//! # Outside a runtime
//!
//! On a plain thread there is no worker to park on: `do_io` waits with
//! `poll(2)` on the socket instead, so the net types block the calling thread
//! exactly like `std::net`. There the readiness word is not trusted (no
//! poller may be left to set it): every try makes the system call.
//!
//! A socket outlives the runtime it is registered with. Once the worker it
//! is registered with has left (its runtime was dropped), its poller reports
//! nothing more, so the socket behaves as on a plain thread wherever it is
//! used: try the call, wait in `poll(2)`. A fiber of another runtime that
//! waits on a socket registered elsewhere parks with a 50 ms re-check, since
//! that other poller could leave without waking it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use once_cell::sync::OnceCell;

use crate::fiber::raw::FiberRef;
use crate::runtime::{context, Shared};
use waiters::{Waiter, Waiters, HUP, READ, WRITE};

mod waiters;

/// What `waiters` is built on: std's atomics and mutex here, loom's in the
/// model crate `tests/loom_park`.
mod waiters_sync {
    pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
    pub(crate) use std::sync::{Mutex, MutexGuard};
}

/// The direction an operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    fn bit(self) -> usize {
        match self {
            Direction::Read => READ,
            Direction::Write => WRITE,
        }
    }

    fn poll_events(self) -> libc::c_short {
        match self {
            Direction::Read => libc::POLLIN,
            Direction::Write => libc::POLLOUT,
        }
    }
}

/// Told, once, that a socket it watches turned readable (see
/// [`IoSource::on_readable`]): the server's request mode, for its idle
/// connections.
pub(crate) trait ReadHook: Send + Sync {
    /// Runs on the poller's worker, outside any fiber; `token` is what was
    /// handed over with the hook.
    fn readable(&self, token: u64);
}

/// A hook and its token, held by a socket's waiters.
type HookRef = (std::sync::Weak<dyn ReadHook>, u64);

impl Waiter for FiberRef {
    fn into_raw(self) -> usize {
        FiberRef::into_raw(self) as usize
    }

    unsafe fn from_raw(raw: usize) -> FiberRef {
        // SAFETY: passed on from the caller: `raw` came from `into_raw`.
        unsafe { FiberRef::from_raw(raw as *const _) }
    }

    fn raw(&self) -> usize {
        self.as_ptr() as usize
    }
}

/// Readiness and waiters of one registered socket.
#[derive(Default)]
pub(crate) struct ScheduledIo(Waiters<FiberRef, HookRef>);

impl ScheduledIo {
    /// Called by the poller's worker for each event.
    pub(crate) fn dispatch(&self, event: &mio::event::Event) {
        let mut ready = 0;
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            ready |= READ;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            ready |= WRITE;
        }
        if ready == 0 {
            return;
        }
        if event.is_read_closed() || event.is_error() {
            ready |= HUP;
        }
        let hook = self.0.set(ready, FiberRef::unpark_owned);
        if let Some(hook) = hook.and_then(|(h, token)| Some((h.upgrade()?, token))) {
            // The hook is the server's code, run on the worker's own stack:
            // nothing it does may unwind into the worker loop.
            let run = || hook.0.readable(hook.1);
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                log::error!("weave: a readiness hook panicked; its connection is dropped");
                crate::fiber::drop_payload(payload);
            }
        }
    }

    /// Clears `dir`'s bit if no event arrived since `snapshot` was read.
    fn clear(&self, dir: Direction, snapshot: usize) {
        self.0.clear(dir.bit(), snapshot);
    }

    fn is_ready(&self, dir: Direction) -> bool {
        self.0.load() & dir.bit() != 0
    }

    /// Adds `fiber` to `dir`'s waiters unless the bit is already set.
    /// Returns whether the caller should park.
    fn add_waiter(&self, dir: Direction, fiber: &FiberRef) -> bool {
        self.0.add(dir.bit(), fiber)
    }

    fn remove_waiter(&self, dir: Direction, fiber: &FiberRef) {
        self.0.remove(dir.bit(), fiber);
    }
}

/// Withdraws a parked fiber from a socket's waiters if its park unwinds
/// (cancellation, an expired `timeout`).
struct Withdraw<'a>(&'a ScheduledIo, Direction, &'a FiberRef);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.0.remove_waiter(self.1, self.2);
    }
}

/// A socket's registration with one worker's poller.
struct Registration {
    io: Arc<ScheduledIo>,
    shared: Arc<Shared>,
    worker: usize,
}

impl Registration {
    /// The worker left for good: no event will be reported any more.
    fn poller_gone(&self) -> bool {
        self.shared.remotes[self.worker]
            .closed
            .load(Ordering::Acquire)
    }
}

/// How much `read_append` grows a buffer that has no spare capacity.
pub(crate) const READ_APPEND_GROW: usize = 4096;

/// How often a fiber waiting on a socket registered with another runtime
/// checks that runtime's poller is still there.
const FOREIGN_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// A non-blocking OS socket plus its (lazy) registration: the base of every
/// net type.
pub(crate) struct IoSource<S: mio::event::Source + AsRawFd> {
    source: S,
    reg: OnceCell<Registration>,
}

impl<S: mio::event::Source + AsRawFd> IoSource<S> {
    pub(crate) fn new(source: S) -> IoSource<S> {
        IoSource {
            source,
            reg: OnceCell::new(),
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.source
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.source.as_raw_fd()
    }

    /// What the reactor knows about pending input, without a system call:
    /// `None` if the socket was never registered (nothing is known),
    /// `Some(true)` if input, end-of-file or an error may be pending (the
    /// read bit is set, or a hang-up was reported), `Some(false)` if the
    /// last read drained the socket and no event has reported anything
    /// since.
    ///
    /// Only events the poller has already fetched count: one still queued
    /// in the kernel (the worker polls between fiber runs, at the latest
    /// every few dozen) is not seen yet.
    pub(crate) fn read_hint(&self) -> Option<bool> {
        let v = self.reg.get()?.io.0.load();
        Some(v & (READ | HUP) != 0)
    }

    /// Hands `hook` to the reactor, to be told once, with `token`, on the
    /// poller's worker (outside any fiber), when the socket is next
    /// reported readable: input, end of file or an error. Registers the
    /// socket first if needed, so it must be called on a fiber. Returns
    /// false, handing nothing over, when the reactor already knows of
    /// pending input (the read bit is set, or a hang-up was reported), or
    /// when no poller can report anything (not on a fiber, a registration
    /// error, the poller's runtime is gone). The hook is held weakly: one
    /// whose owner is gone is not called.
    ///
    /// The check and the hand-over happen under the lock the poller takes
    /// after setting the read bit, so an event is never missed: either the
    /// poller finds the hook, or the caller finds the bit. Input already
    /// queued in the kernel when the socket is first registered raises an
    /// event too. At most one hook per socket; it is dropped, untold, with
    /// the registration.
    pub(crate) fn on_readable(&self, hook: std::sync::Weak<dyn ReadHook>, token: u64) -> bool {
        if !context::in_fiber() {
            return false;
        }
        let reg = match self.registration() {
            Ok(r) if !r.poller_gone() => r,
            _ => return false,
        };
        reg.io.0.set_hook((hook, token))
    }

    /// Asks the kernel, with a zero-timeout `poll(2)`, whether input,
    /// end-of-file or an error is pending, so that [`read_hint`](Self::read_hint)
    /// can answer next time: called on a fiber, it registers the socket
    /// first (anything already pending is seen by this `poll`, anything
    /// later raises an event), and when nothing is pending it clears a
    /// stale read bit (with the CAS, so an event that lands meanwhile
    /// keeps it), as a `WouldBlock` would. A hang-up already reported
    /// answers `true` without the system call.
    pub(crate) fn poll_readable_now(&self) -> io::Result<bool> {
        self.ready_now(Direction::Read)
    }

    /// [`do_io`](Self::do_io) for a stream read of `want` bytes: as well as
    /// on `WouldBlock`, the read bit is cleared when `op` returns fewer
    /// than `want` bytes but more than zero (the receive queue was
    /// drained; see the module docs). Only for stream sockets whose `op`
    /// consumes what it returns (not `peek`).
    pub(crate) fn do_read(
        &self,
        deadline: Option<Instant>,
        want: usize,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let (n, snapshot) = self.io_loop(Direction::Read, deadline, op)?;
        if n > 0 && n < want && snapshot & (READ | HUP) == READ {
            if let Some(r) = self.reg.get() {
                r.io.clear(Direction::Read, snapshot);
            }
        }
        Ok(n)
    }

    /// [`do_read`](Self::do_read) into `buf` with a plain `recv(2)` (see
    /// [`sys::recv`](crate::sys::recv)): a stream socket's `read`.
    pub(crate) fn recv(&self, deadline: Option<Instant>, buf: &mut [u8]) -> io::Result<usize>
    where
        S: AsRawFd,
    {
        let want = buf.len();
        self.do_read(deadline, want, |s| {
            // SAFETY: `buf` is `want` writable bytes, borrowed mutably for
            // this call.
            unsafe { crate::sys::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), want) }
        })
    }

    /// [`do_io`](Self::do_io) of a plain `send(2)` of `buf` (see
    /// [`sys::send`](crate::sys::send)): a stream socket's `write`.
    pub(crate) fn send(&self, deadline: Option<Instant>, buf: &[u8]) -> io::Result<usize>
    where
        S: AsRawFd,
    {
        self.do_io(Direction::Write, deadline, |s| {
            crate::sys::send(s.as_raw_fd(), buf)
        })
    }

    /// [`do_read`](Self::do_read) of what is readable now into the spare
    /// capacity of `buf`, appended to its contents: `recv(2)` writes
    /// straight into the spare capacity, so it needs no zeroing first.
    /// With no spare capacity, `buf` first grows by [`READ_APPEND_GROW`].
    pub(crate) fn read_append(
        &self,
        deadline: Option<Instant>,
        buf: &mut Vec<u8>,
    ) -> io::Result<usize>
    where
        S: AsRawFd,
    {
        if buf.len() == buf.capacity() {
            buf.reserve(READ_APPEND_GROW);
        }
        let spare = buf.spare_capacity_mut();
        let (ptr, want) = (spare.as_mut_ptr().cast::<libc::c_void>(), spare.len());
        let n = self.do_read(deadline, want, |s| {
            // SAFETY: `ptr` is `want` bytes of `buf`'s spare capacity, which
            // this call holds `buf` mutably for; recv(2) writes at most
            // `want` bytes there and reads none of them.
            unsafe { crate::sys::recv(s.as_raw_fd(), ptr, want) }
        })?;
        // SAFETY: the kernel initialized the first `n <= want` bytes of the
        // spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// Runs `op` until it does not return `WouldBlock`, waiting for
    /// readiness in `dir` between tries, until `deadline` (then `TimedOut`).
    pub(crate) fn do_io<R>(
        &self,
        dir: Direction,
        deadline: Option<Instant>,
        op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        self.io_loop(dir, deadline, op).map(|(r, _)| r)
    }

    /// [`do_io`](Self::do_io), also returning the readiness word as it was
    /// just before the attempt that succeeded (0 if unregistered then).
    fn io_loop<R>(
        &self,
        dir: Direction,
        deadline: Option<Instant>,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<(R, usize)> {
        let mut polled = false;
        loop {
            let reg = self.reg.get();
            let snapshot = reg.map_or(0, |r| r.io.0.load());
            // A registered socket whose bit is clear would only say
            // `WouldBlock`: skip the system call and wait right away. Not
            // after a wait in poll(2), though: no poller sets the bit for
            // such a wait, so it must try the call each time.
            if reg.is_none() || snapshot & dir.bit() != 0 || polled {
                match op(&self.source) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Some(r) = reg {
                            r.io.clear(dir, snapshot);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    res => return res.map(|r| (r, snapshot)),
                }
            }
            polled = self.wait(dir, deadline)?;
        }
    }

    /// Waits once for readiness in `dir` (or a spurious wakeup). Returns
    /// true when it blocked the thread in poll(2) instead of parking a
    /// fiber: on a plain thread, or when the worker the socket is
    /// registered with has left (its runtime was dropped; its poller reports
    /// nothing any more, so the socket lives on in plain blocking mode, as
    /// on a plain thread).
    fn wait(&self, dir: Direction, deadline: Option<Instant>) -> io::Result<bool> {
        // The common case, a fiber of the socket's own runtime waiting with
        // no deadline, is kept apart from the rest: this frame lies between
        // the caller's and the switch on every resume, so each line of it
        // is read back from memory when a thousand other fibers ran since.
        if deadline.is_none() {
            if let Some(reg) = self.reg.get() {
                // SAFETY: `current` lives in this block only, on the fiber
                // it borrows.
                let current = unsafe { context::current_fiber_borrowed() };
                if let Some((fiber, runtime)) = current {
                    if std::ptr::eq(Arc::as_ptr(&reg.shared), runtime) && !reg.poller_gone() {
                        if reg.io.add_waiter(dir, &fiber) {
                            let withdraw = Withdraw(&reg.io, dir, &fiber);
                            // SAFETY: `fiber` is the fiber running on this
                            // thread: we run on it.
                            unsafe { crate::fiber::park_fiber_until(&fiber, None) };
                            std::mem::forget(withdraw);
                        }
                        return Ok(false);
                    }
                }
            }
        }
        self.wait_slow(dir, deadline)
    }

    /// [`wait`](Self::wait) in full: a plain thread, a socket not yet
    /// registered or registered with another runtime, a deadline.
    #[cold]
    #[inline(never)]
    fn wait_slow(&self, dir: Direction, deadline: Option<Instant>) -> io::Result<bool> {
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "operation timed out",
                ));
            }
        }
        // SAFETY: `current` lives in this frame only, on the fiber it
        // borrows (or on a plain thread, where it is `None`).
        let current = unsafe { context::current_fiber_borrowed() };
        let (fiber, runtime) = match current {
            Some(here) if !self.reg.get().is_some_and(Registration::poller_gone) => here,
            current => {
                // A plain thread, or a socket whose runtime is gone: block
                // the thread in poll(2), bounded by the caller's scoped
                // deadline (a `timeout` around this call). On a fiber of
                // another runtime, this blocks that fiber's worker for the
                // wait.
                let scope = match &current {
                    None => crate::fiber::cancel::check_thread(),
                    Some((f, _)) => crate::fiber::cancel::check_fiber(f),
                };
                let until = match (deadline, scope) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let timeout = until.map(|d| d.saturating_duration_since(Instant::now()));
                crate::sys::poll_fd(self.raw_fd(), dir.poll_events(), timeout)?;
                return Ok(true);
            }
        };
        let reg = self.registration()?;
        // Events for a socket registered with another runtime come from that
        // runtime's poller, which may leave meanwhile without waking anyone:
        // such a wait looks again now and then.
        let foreign = !std::ptr::eq(Arc::as_ptr(&reg.shared), runtime);
        if reg.io.add_waiter(dir, &fiber) {
            let until = match (foreign, deadline) {
                (false, d) => d,
                (true, d) => {
                    let check = Instant::now() + FOREIGN_RECHECK;
                    Some(d.map_or(check, |d| d.min(check)))
                }
            };
            let withdraw = Withdraw(&reg.io, dir, &fiber);
            // SAFETY: `fiber` is the fiber running on this thread: we run on it.
            unsafe { crate::fiber::park_fiber_until(&fiber, until) };
            std::mem::forget(withdraw);
            if until.is_some_and(|d| Instant::now() >= d) && !reg.io.is_ready(dir) {
                reg.io.remove_waiter(dir, &fiber);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "operation timed out",
                    ));
                }
            }
        }
        Ok(false)
    }

    /// Whether the socket is ready in `dir` now, asking the kernel with a
    /// zero-timeout `poll(2)`; when it is not, a stale readiness bit is
    /// cleared (with the snapshot CAS, so an event landing meanwhile keeps
    /// it). On a fiber, registers the socket first, so that a later change
    /// raises an event.
    pub(crate) fn ready_now(&self, dir: Direction) -> io::Result<bool> {
        let reg = self.reg.get().or_else(|| {
            context::in_fiber()
                .then(|| self.registration().ok())
                .flatten()
        });
        let snapshot = reg.map_or(0, |r| r.io.0.load());
        if dir == Direction::Read && snapshot & HUP != 0 {
            return Ok(true);
        }
        let ready = crate::sys::poll_fd(
            self.raw_fd(),
            dir.poll_events(),
            Some(std::time::Duration::ZERO),
        )?;
        if !ready {
            if let Some(r) = reg {
                r.io.clear(dir, snapshot);
            }
        }
        Ok(ready)
    }

    /// Blocks until the socket is ready in `dir` (a cancellation point).
    pub(crate) fn wait_ready(&self, dir: Direction) -> io::Result<()> {
        while !self.ready_now(dir)? {
            self.wait(dir, None)?;
        }
        Ok(())
    }

    fn registration(&self) -> io::Result<&Registration> {
        self.reg.get_or_try_init(|| {
            context::with_worker(|w| {
                let w = w.ok_or_else(|| io::Error::other("not on a weave worker"))?;
                let io = Arc::new(ScheduledIo::default());
                // mio needs `&mut S` to register; registration happens once,
                // guarded by the OnceCell, and only reads the fd.
                let mut fd = mio::unix::SourceFd(&self.raw_fd());
                w.register(&mut fd, &io)?;
                Ok(Registration {
                    io,
                    shared: w.shared.clone(),
                    worker: w.index,
                })
            })
        })
    }
}

impl<S: mio::event::Source + AsRawFd> IoSource<S> {
    /// Deregisters the socket and gives it back, open.
    pub(crate) fn into_source(self) -> S {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.deregister();
        // SAFETY: `this` is never used or dropped again; the registration
        // was taken out above, so the cell left behind owns nothing.
        unsafe { std::ptr::read(&this.source) }
    }
}

impl<S: mio::event::Source + AsRawFd> Drop for IoSource<S> {
    fn drop(&mut self) {
        self.deregister();
    }
}

impl<S: mio::event::Source + AsRawFd> IoSource<S> {
    /// Takes the socket out of its poller, if it was registered.
    fn deregister(&mut self) {
        let Some(reg) = self.reg.take() else {
            return;
        };
        let remote = &reg.shared.remotes[reg.worker];
        let mut fd = mio::unix::SourceFd(&self.source.as_raw_fd());
        if let Err(e) = remote.registry.deregister(&mut fd) {
            log::debug!("weave: deregistering fd {}: {e}", self.source.as_raw_fd());
        }
        // The poller's own reference (the token) is released between event
        // batches, on the poller's thread.
        let token = Arc::as_ptr(&reg.io);
        // SAFETY: `register` leaked exactly one strong reference as the token;
        // we take it back exactly once, here, after deregistering.
        let token_ref = unsafe { Arc::from_raw(token) };
        let handed = context::with_worker(|w| match w {
            Some(w) if w.index == reg.worker && Arc::ptr_eq(&w.shared, &reg.shared) => {
                w.release_local(token_ref.clone());
                true
            }
            _ => false,
        });
        if handed {
            drop(token_ref);
        } else {
            remote
                .released
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(token_ref);
            remote.any_released.store(true, Ordering::Release);
        }
    }
}

/// The readiness arm of a socket in a [`Select`](crate::Select).
pub(crate) struct IoArm<'a, S: mio::event::Source + AsRawFd> {
    pub(crate) io: &'a IoSource<S>,
    pub(crate) dir: Direction,
}

impl<S: mio::event::Source + AsRawFd> crate::select::imp::Source for IoArm<'_, S> {
    fn is_ready(&self) -> bool {
        // An error (a closed descriptor) is "ready": the operation the
        // caller performs next reports it at once.
        self.io.ready_now(self.dir).unwrap_or(true)
    }
    fn watch(&self, w: &crate::select::imp::Watcher) -> bool {
        let crate::fiber::raw::Unparker::Fiber(f) = &w.unparker else {
            return false;
        };
        let Ok(reg) = self.io.registration() else {
            return false;
        };
        reg.io.0.watch(self.dir.bit(), f);
        true
    }
    fn unwatch(&self, w: &crate::select::imp::Watcher) {
        if let (crate::fiber::raw::Unparker::Fiber(f), Some(reg)) = (&w.unparker, self.io.reg.get())
        {
            reg.io.remove_waiter(self.dir, f);
        }
    }
}
