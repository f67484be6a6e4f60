//! Fibers: spawn, join, park, yield, and the handle of the running fiber.
//!
//! The API mirrors `std::thread`: [`spawn`] returns a [`JoinHandle`] whose
//! [`join`](JoinHandle::join) gives the fiber's value, or its panic as `Err`;
//! [`park`] and [`Fiber::unpark`] follow `std::thread::park`'s token rule (an
//! unpark that comes first makes the next park return at once).
//!
//! Called on a plain thread (not a fiber), the blocking functions here block
//! that thread: [`park`] is `std::thread::park`, [`yield_now`] is
//! `std::thread::yield_now`, [`JoinHandle::join`] waits on the thread.

pub mod cancel;
pub(crate) mod local;
pub(crate) mod overflow;
pub(crate) mod raw;
mod scope;
pub(crate) mod stack;
pub(crate) mod state;

/// The atomics [`state`] is written against: std's here; the loom model in
/// `tests/loom_park` compiles the same file against loom's.
mod state_atomic {
    pub(crate) use std::sync::atomic::{AtomicU8, Ordering};
}

use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::num::NonZeroU64;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

pub use cancel::{
    cancellation_point, catch_unwind, is_cancellation, without_cancellation, Cancelled,
};
pub use local::LocalKey;
use raw::{FiberCoroutine, FiberRef, RawFiber, Switch, Tail, Unparker};
pub(crate) use scope::scope_on;
pub use scope::{scope, Scope, ScopedJoinHandle};

use crate::runtime::{context, schedule_spawned, Handle, Shared};

/// A fiber's unique identifier (unique for the life of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiberId(NonZeroU64);

impl FiberId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for FiberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A handle to a fiber: its id, its name, and a way to unpark it.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let me = weave::current();
///     let waker = weave::spawn(move || me.unpark());
///     weave::park(); // returns once the other fiber unparked us
///     waker.join().unwrap();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Fiber {
    inner: FiberRef,
}

impl Fiber {
    /// The fiber's id.
    pub fn id(&self) -> FiberId {
        FiberId(self.inner.id)
    }

    /// The fiber's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Makes the fiber's token available: if it is parked it resumes;
    /// otherwise its next [`park`] returns at once. Callable from any thread
    /// or fiber.
    pub fn unpark(&self) {
        self.inner.unpark();
    }
}

impl fmt::Debug for Fiber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fiber")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish()
    }
}

/// The fiber the caller runs on.
///
/// # Panics
///
/// Panics when called outside a fiber; see [`try_current`].
pub fn current() -> Fiber {
    try_current().expect("weave::current() called outside a fiber (use weave::fiber::try_current)")
}

/// The fiber the caller runs on, or `None` on a plain thread.
pub fn try_current() -> Option<Fiber> {
    context::current_fiber().map(|inner| Fiber { inner })
}

/// Switches the running fiber out to its worker. Returns after the worker
/// resumes it.
fn switch_out(fiber: *const RawFiber, why: Switch) {
    // SAFETY: `fiber` is the fiber running on this thread (the worker holds a
    // reference while it runs), and its yielder was set when its body started;
    // the yielder lives on the fiber's own stack, on which we run.
    unsafe {
        let yielder = &**(*fiber).yielder.get();
        yielder.suspend(why);
    }
}

pub(crate) fn running() -> *const RawFiber {
    context::with_worker(|w| w.map_or(std::ptr::null(), |w| w.current.get()))
}

/// Blocks the caller until its token is available, then consumes it.
///
/// On a fiber, the fiber parks and its worker runs others; on a plain thread
/// this is `std::thread::park`. Like `std::thread::park`, it may return
/// spuriously: check the condition you wait for in a loop.
///
/// A cancellation point (see [`JoinHandle::cancel`]).
pub fn park() {
    park_deadline(None);
}

/// Like [`park`], but returns after `timeout` at the latest.
pub fn park_timeout(timeout: Duration) {
    // A timeout too far away to represent is no timeout.
    park_deadline(Instant::now().checked_add(timeout));
}

/// Parks the caller (fiber or thread) until `deadline`, or forever when
/// `None`. Used by every blocking primitive; may return early.
pub(crate) fn park_until(deadline: Option<Instant>) {
    park_deadline(deadline);
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The one park of the crate: every blocking call ends up here, so this is
/// where cancellation and scoped deadlines are observed (see
/// [`cancel`](self::cancel)): on entry, and after the switch back.
fn park_deadline(deadline: Option<Instant>) {
    let f = running();
    if f.is_null() {
        return park_thread(deadline);
    }
    // SAFETY: non-null `running()` is the live fiber running on this thread,
    // and we run on it.
    unsafe { park_fiber_until(&*f, deadline) }
}

/// [`park_until`] for a caller that already holds its running fiber (a
/// socket wait): saves looking it up again.
///
/// # Safety
///
/// `fiber` is the fiber running on this thread: the caller runs on it.
pub(crate) unsafe fn park_fiber_until(fiber: &RawFiber, deadline: Option<Instant>) {
    let scope = cancel::check_fiber(fiber);
    if fiber.try_consume_token() {
        return;
    }
    match earliest(deadline, scope) {
        None => switch_out(fiber, Switch::Park),
        Some(deadline) => park_with_timer(fiber, deadline),
    }
    cancel::check_fiber(fiber);
}

/// The switch of [`park_fiber_until`] with a timer that unparks the fiber
/// at `deadline`. Kept out of line: its frame would otherwise sit, unused,
/// between every socket wait and the switch, one more stack line to read
/// back on each resume.
#[cold]
#[inline(never)]
fn park_with_timer(fiber: &RawFiber, deadline: Instant) {
    let f: *const RawFiber = fiber;
    let key = context::with_worker(|w| {
        let w = w.expect("a fiber runs on a worker");
        // SAFETY: `f` is alive (the caller runs on it); we take a new strong
        // reference.
        let me = unsafe { FiberRef::clone_from_ptr(f) };
        w.add_timer(deadline, me)
    });
    switch_out(f, Switch::Park);
    context::with_worker(|w| {
        if let Some(w) = w {
            w.cancel_timer(key);
        }
    });
}

/// [`park_deadline`] on a plain thread: `std::thread::park`, with the
/// thread's scoped deadline.
fn park_thread(deadline: Option<Instant>) {
    let scope = cancel::check_thread();
    match earliest(deadline, scope) {
        None => thread::park(),
        Some(d) => thread::park_timeout(d.saturating_duration_since(Instant::now())),
    }
    cancel::check_thread();
}

/// Lets the worker run other ready fibers, then continues. On a plain thread
/// this is `std::thread::yield_now`.
///
/// A cancellation point (see [`JoinHandle::cancel`]).
pub fn yield_now() {
    let f = running();
    if f.is_null() {
        cancel::check_thread();
        return thread::yield_now();
    }
    // SAFETY: non-null `running()` is the live fiber running on this thread.
    let fiber = unsafe { &*f };
    cancel::check_fiber(fiber);
    switch_out(f, Switch::Yield);
    cancel::check_fiber(fiber);
}

/// Configures a fiber before spawning it.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// let h = rt.block_on(|| {
///     weave::fiber::Builder::new()
///         .name("worker-7")
///         .stack_size(64 * 1024)
///         .spawn(|| weave::current().name().map(str::to_owned))
///         .unwrap()
///         .join()
///         .unwrap()
/// });
/// assert_eq!(h.as_deref(), Some("worker-7"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<Arc<str>>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with no name and the runtime's default stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the fiber; the name shows in panic and overflow messages. An
    /// `Arc<str>` is shared as it is, so fibers spawned often under one name
    /// do not each copy it.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Stack size in bytes (rounded up to pages; a guard page is added).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns the fiber on the caller's runtime (or the default runtime when
    /// called outside one).
    ///
    /// # Errors
    ///
    /// Fails if the stack size is outside 4 KiB..1 TiB, or if no stack can be
    /// had: the address space is exhausted, or, on a kernel without
    /// `MADV_GUARD_INSTALL` (before Linux 6.13), the process reached
    /// `vm.max_map_count` mappings (about half that many fibers; see
    /// [`spawn`]). The stack is taken here, before the fiber is queued, so a
    /// fiber that spawned successfully never fails to start.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_on(&Handle::current().shared, f)
    }

    pub(crate) fn spawn_on<F, T>(self, shared: &Arc<Shared>, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_inner(shared, None, f, ())
    }

    /// Spawns a joinable fiber, on worker `worker` of the runtime (where it
    /// stays) if one is named. The fiber drops `guard` once it is over:
    /// after its result is delivered and it stopped counting as live (or,
    /// if it never starts, after its closure is dropped and it is reported
    /// cancelled); a scope counts its fibers out with it.
    pub(crate) fn spawn_inner<F, T, G>(
        self,
        shared: &Arc<Shared>,
        worker: Option<usize>,
        f: F,
        guard: G,
    ) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
        G: Send + 'static,
    {
        let (stack_size, stack) = match self.stack(shared) {
            Ok(s) => s,
            Err(e) => {
                // The closure's captures go before the guard, as on every
                // other path.
                drop(f);
                drop(guard);
                return Err(e);
            }
        };
        let tail = JoinTail {
            packet: Packet {
                state: Mutex::new(PacketState {
                    result: None,
                    waiter: None,
                    detached: false,
                    delivered: false,
                }),
            },
            func: UnsafeCell::new(Some((f, guard))),
        };
        let fiber = self.launch(shared, worker, stack_size, stack, tail);
        // SAFETY: made just above with a `JoinTail<F, T, G>`.
        let packet = NonNull::from(&unsafe { fiber.tail::<JoinTail<F, T, G>>() }.packet);
        Ok(JoinHandle { fiber, packet })
    }

    /// Spawns a fiber nobody joins (the server's connection and request
    /// fibers): there is no join packet, and the fiber's value, or its
    /// panic (already reported by the panic hook), is dropped when it ends.
    pub(crate) fn spawn_detached<F>(
        self,
        shared: &Arc<Shared>,
        worker: Option<usize>,
        f: F,
    ) -> io::Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let (stack_size, stack) = self.stack(shared)?;
        let tail = DetachedTail {
            func: UnsafeCell::new(Some(f)),
        };
        self.launch(shared, worker, stack_size, stack, tail);
        Ok(())
    }

    /// Checks the stack size and takes a stack of it.
    fn stack(&self, shared: &Shared) -> io::Result<(usize, stack::FiberStack)> {
        let stack_size = self.stack_size.unwrap_or(shared.config.stack_size);
        if !(4096..=(1 << 40)).contains(&stack_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fiber stack size {stack_size} is outside 4 KiB..1 TiB"),
            ));
        }
        Ok((stack_size, stack::FiberStack::new(stack_size)?))
    }

    /// Makes the fiber, counts it live and queues it.
    fn launch<P: Tail>(
        self,
        shared: &Arc<Shared>,
        worker: Option<usize>,
        stack_size: usize,
        stack: stack::FiberStack,
        tail: P,
    ) -> FiberRef {
        install_panic_hook();
        let fiber = FiberRef::new(shared.clone(), self.name, stack_size, stack, tail);
        shared
            .live_fibers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        schedule_spawned(fiber.clone(), worker);
        fiber
    }
}

/// A joinable fiber's tail: its join packet, and its closure and guard
/// (see [`Builder::spawn_inner`]) until it starts.
struct JoinTail<F, T, G> {
    packet: Packet<T>,
    func: UnsafeCell<Option<(F, G)>>,
}

// SAFETY: `func` is only touched by the one thread that owns the fiber's
// body (the `Tail` contract); the packet is behind its mutex.
unsafe impl<F: Send, T: Send, G: Send> Sync for JoinTail<F, T, G> {}

// SAFETY: `start` and `drop_unstarted` take the closure out at most once
// between them (the `Tail` contract), and the completer they make only
// reaches the packet and the header of this same allocation, which lives
// as long as the fiber's body: the worker's table holds the fiber while
// it runs, and the thread that drops an unstarted body holds a reference.
unsafe impl<F, T, G> Tail for JoinTail<F, T, G>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
    G: Send + 'static,
{
    unsafe fn start(&self, fiber: *const RawFiber, stack: stack::FiberStack) -> FiberCoroutine {
        // SAFETY: passed on from the caller.
        let (f, guard) = unsafe { take_closure(&self.func) }.expect("a fiber starts once");
        let completer = Completer {
            packet: Some(NonNull::from(&self.packet)),
            fiber,
        };
        crate::runtime::worker::make_coroutine(fiber, stack, move || {
            // `f` is mentioned first so that it is captured, and so dropped,
            // first: a coroutine dropped before it ran drops the user's
            // closure before its completer reports the fiber cancelled, so
            // a joiner that sees `Cancelled` also sees the captures gone.
            // A tuple drops in field order, so the guard goes after the
            // completer on every path: run, unwound, or dropped unrun.
            let f = f;
            let mut end = (completer, guard);
            let completer = &mut end.0;
            let mut result = run_body(f);
            if let Err(p) = &result {
                if is_cancellation(&**p) {
                    // A deadline unwind can only get here if the program
                    // moved it out of its scope; either way, the fiber was
                    // stopped from outside.
                    result = Err(Box::new(Cancelled));
                }
            }
            // Fiber-local destructors are user code too: a panic in one
            // becomes the fiber's result (as a panic in the drop of a local
            // of `f` would have), and never reaches the worker.
            if let Err(payload) = local::clear_current() {
                if result.is_ok() {
                    result = Err(payload);
                } else {
                    drop_payload(payload);
                }
            }
            completer.complete(result);
            drop(end);
        })
    }

    unsafe fn drop_unstarted(&self, fiber: &RawFiber) {
        // SAFETY: passed on from the caller.
        let (f, guard) = unsafe { take_closure(&self.func) }.unzip();
        // Locals drop in reverse: the closure's captures first, then the
        // report that the fiber was cancelled, then the guard; also when
        // one of the captures' destructors panics.
        let _guard = guard;
        let _report = Completer {
            packet: Some(NonNull::from(&self.packet)),
            fiber,
        };
        drop(f);
    }

    fn abandon(&self) -> bool {
        self.packet.abandon()
    }
}

/// Takes a fiber's closure out of its tail.
///
/// # Safety
///
/// The caller owns the fiber's body (see [`Tail`]'s contract).
unsafe fn take_closure<F>(slot: &UnsafeCell<Option<F>>) -> Option<F> {
    // SAFETY: only the body's owner touches the slot, so this is the one
    // access.
    unsafe { (*slot.get()).take() }
}

/// A detached fiber's tail: its closure until it starts.
struct DetachedTail<F> {
    func: UnsafeCell<Option<F>>,
}

// SAFETY: as for `JoinTail`.
unsafe impl<F: Send> Sync for DetachedTail<F> {}

// SAFETY: as for `JoinTail`; the live count it keeps is in the runtime the
// header names.
unsafe impl<F> Tail for DetachedTail<F>
where
    F: FnOnce() + Send + 'static,
{
    unsafe fn start(&self, fiber: *const RawFiber, stack: stack::FiberStack) -> FiberCoroutine {
        // SAFETY: passed on from the caller.
        let f = unsafe { take_closure(&self.func) }.expect("a fiber starts once");
        let count = LiveCount(fiber);
        crate::runtime::worker::make_coroutine(fiber, stack, move || {
            // `f` first, as in `JoinTail::start`: dropped unstarted, the
            // closure goes before the fiber stops being counted live.
            let f = f;
            let count = count;
            if let Err(payload) = run_body(f) {
                drop_payload(payload);
            }
            if let Err(payload) = local::clear_current() {
                drop_payload(payload);
            }
            drop(count);
        })
    }

    unsafe fn drop_unstarted(&self, fiber: &RawFiber) {
        let _count = LiveCount(fiber);
        // SAFETY: passed on from the caller.
        drop(unsafe { take_closure(&self.func) });
    }

    fn abandon(&self) -> bool {
        true
    }
}

/// Runs a fiber's closure, unless the fiber was cancelled before it
/// started, and catches its panic.
fn run_body<T>(f: impl FnOnce() -> T) -> thread::Result<T> {
    // SAFETY: the body runs on its fiber, which is the running one.
    let cancelled_early = unsafe { &*running() }.state.cancel_requested();
    let result = if cancelled_early {
        Err(Box::new(Cancelled) as Box<dyn std::any::Any + Send>)
    } else {
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    cancel::caught();
    result
}

/// A detached fiber's place in [`Shared::live_fibers`]: taken when it ends,
/// or when its unstarted closure is dropped. Holds the fiber's header,
/// which outlives the fiber's body (see `JoinTail`'s `Tail` impl).
struct LiveCount(*const RawFiber);

impl Drop for LiveCount {
    fn drop(&mut self) {
        // SAFETY: see the type's docs.
        let fiber = unsafe { &*self.0 };
        fiber
            .shared
            .live_fibers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Spawns a fiber running `f` and returns its [`JoinHandle`].
///
/// Called from a fiber, it spawns on that fiber's runtime; elsewhere on the
/// default runtime, started on first use with one worker per core (set
/// `WEAVE_WORKERS` to change that).
///
/// Each fiber holds a stack from spawn to finish: the runtime's stack size
/// of address space (256 KiB by default), of which only the pages it
/// touches are resident (one page for a fiber that parks at a shallow call
/// depth). Stacks come from large shared mappings, so the number of live
/// fibers is bounded by memory, not by the kernel's mapping count. On the
/// heap a spawn makes one allocation, which holds the fiber's record, the
/// closure until it starts and the slot for its result.
///
/// # Panics
///
/// Like `std::thread::spawn`, panics if the fiber cannot be created: no
/// stack could be had (address space exhausted, or, on a kernel before
/// Linux 6.13, `vm.max_map_count` reached; the message says which). A
/// program that must survive that, such as a server accepting
/// connections, uses [`Builder::spawn`], which returns the error instead.
///
/// # Examples
///
/// ```
/// let h = weave::spawn(|| 1 + 1);
/// assert_eq!(h.join().unwrap(), 2);
/// ```
#[track_caller]
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match Builder::new().spawn(f) {
        Ok(h) => h,
        Err(e) => panic!("weave::spawn: {e}"),
    }
}

/// Spawns a fiber on the caller's worker, where it stays: it is never
/// stolen by another worker, even before it starts. For per-worker services
/// (one backend connection per worker, a per-worker cache) whose placement
/// must not depend on which worker happens to steal the fiber.
///
/// # Panics
///
/// Panics when called outside a fiber or worker thread (there is no current
/// worker); see [`runtime::current_worker`](crate::runtime::current_worker).
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(4).build()?;
/// rt.block_on(|| {
///     let here = weave::runtime::current_worker();
///     let there = weave::spawn_local(weave::runtime::current_worker).join().unwrap();
///     assert_eq!(here, there);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn_local<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (shared, index) = context::with_worker(|w| w.map(|w| (w.shared.clone(), w.index)))
        .expect("weave::spawn_local called outside a weave worker (use weave::spawn)");
    Builder::new()
        .spawn_inner(&shared, Some(index), f, ())
        .expect("spawning a fiber with default settings cannot fail")
}

struct PacketState<T> {
    result: Option<thread::Result<T>>,
    waiter: Option<Unparker>,
    /// The handle is gone: a result that arrives now is dropped at once.
    detached: bool,
    /// The fiber's one result was delivered (whether or not it was kept).
    delivered: bool,
}

/// Where a fiber leaves its result for its [`JoinHandle`]; it sits in the
/// fiber's allocation (see `JoinTail`).
struct Packet<T> {
    state: Mutex<PacketState<T>>,
}

impl<T> Packet<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PacketState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports the fiber cancelled to its handle, for a fiber abandoned at
    /// runtime shutdown whose completer will never run. Returns whether it
    /// did (false: the fiber had already delivered its result).
    fn abandon(&self) -> bool {
        let waiter = {
            let mut st = self.lock();
            if st.delivered {
                return false;
            }
            st.delivered = true;
            st.result = Some(Err(Box::new(Cancelled)));
            st.waiter.take()
        };
        if let Some(w) = waiter {
            w.unpark();
        }
        true
    }
}

/// Owned by the fiber's body: completes the packet, or on drop (the body
/// never ran, or was unwound at runtime shutdown) reports it cancelled.
/// Its pointers are into the fiber's own allocation, which outlives the
/// body (see `JoinTail`'s `Tail` impl).
struct Completer<T> {
    packet: Option<NonNull<Packet<T>>>,
    fiber: *const RawFiber,
}

impl<T> Completer<T> {
    /// Delivers the fiber's one result. Runs at most once (the packet is
    /// taken), and runs no user code where a panic could escape: when the
    /// handle was already dropped, the result (a user value, or a panic
    /// payload, either with a destructor of its own) is dropped here under a
    /// catch.
    fn complete(&mut self, result: thread::Result<T>) {
        let Some(packet) = self.packet.take() else {
            return;
        };
        // SAFETY: see the type's docs.
        let (fiber, packet) = unsafe { (&*self.fiber, packet.as_ref()) };
        // Counted finished before the joiner can see the result.
        fiber
            .shared
            .live_fibers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let (waiter, unwanted) = {
            let mut st = packet.lock();
            st.delivered = true;
            if st.detached {
                (None, Some(result))
            } else {
                st.result = Some(result);
                (st.waiter.take(), None)
            }
        };
        if let Some(w) = waiter {
            w.unpark();
        }
        if let Some(result) = unwanted {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(result))) {
                log::error!("weave: dropping a detached fiber's result panicked");
                drop_payload(payload);
            }
        }
    }
}

/// Drops a panic payload whose own destructor may panic: the second panic
/// is caught, and its payload leaked rather than risk a third.
pub(crate) fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        log::error!("weave: dropping a panic payload panicked; leaking it");
        std::mem::forget(again);
    }
}

impl<T> Drop for Completer<T> {
    /// A body dropped before it ran, or unwound at runtime shutdown.
    fn drop(&mut self) {
        self.complete(Err(Box::new(Cancelled)));
    }
}

/// An owned permission to join a fiber: wait for it and take its result.
///
/// Dropping the handle detaches the fiber; it keeps running.
pub struct JoinHandle<T> {
    fiber: FiberRef,
    /// Into the fiber's allocation, which `fiber` keeps alive.
    packet: NonNull<Packet<T>>,
}

// SAFETY: the handle reaches the packet only through its mutex, and the
// result crosses threads once, as `std::thread::JoinHandle`'s does.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> JoinHandle<T> {
    fn packet(&self) -> &Packet<T> {
        // SAFETY: `self.fiber` keeps the allocation the packet is in alive.
        unsafe { self.packet.as_ref() }
    }
}

impl<T> Drop for JoinHandle<T> {
    /// Detaches the fiber: a result already delivered is dropped now, one
    /// delivered later is dropped by the fiber as it ends.
    fn drop(&mut self) {
        let result = {
            let mut st = self.packet().lock();
            st.detached = true;
            st.waiter = None;
            st.result.take()
        };
        drop(result);
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("fiber", &self.fiber.id)
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the fiber to finish and returns its value, or `Err` with the
    /// panic payload if it panicked ([`Cancelled`] if it was cancelled, or
    /// its runtime shut down first). From a fiber this parks (a cancellation
    /// point); from a thread it blocks the thread.
    ///
    /// # Errors
    ///
    /// The fiber's panic payload.
    pub fn join(self) -> thread::Result<T> {
        loop {
            {
                let mut st = self.packet().lock();
                if let Some(r) = st.result.take() {
                    return r;
                }
                st.waiter = Some(Unparker::current());
            }
            park();
        }
    }

    /// Asks the fiber to stop: it unwinds from its next cancellation point
    /// (any call that may block: socket I/O, `accept`, `connect`,
    /// [`sleep`](crate::sleep), [`park`], [`yield_now`], every wait in
    /// [`crate::sync`], [`join`](Self::join),
    /// [`blocking::unblock`](crate::blocking::unblock)), or at once if it is
    /// parked in one now. Its destructors run as the stack unwinds, and
    /// [`join`](Self::join) returns `Err` with a [`Cancelled`] payload. A
    /// fiber that has not started yet never runs its closure. Cancelling a
    /// finished fiber, or cancelling twice, does nothing; the call never
    /// blocks.
    ///
    /// See [`fiber::cancel`](crate::fiber::cancel) for the model and its
    /// rules (catching panics, `extern "C"` frames).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Read;
    /// let rt = weave::Runtime::builder().workers(2).build()?;
    /// rt.block_on(|| {
    ///     let listener = weave::net::TcpListener::bind("127.0.0.1:0")?;
    ///     let addr = listener.local_addr()?;
    ///     let _client = weave::net::TcpStream::connect(addr)?;
    ///     let (mut conn, _) = listener.accept()?;
    ///     let reader = weave::spawn(move || {
    ///         let mut buf = [0u8; 16];
    ///         conn.read_exact(&mut buf) // nothing ever arrives
    ///     });
    ///     reader.cancel();
    ///     assert!(reader.join().unwrap_err().is::<weave::fiber::Cancelled>());
    ///     Ok::<(), std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&self) {
        self.fiber.cancel();
    }

    /// True once the fiber has finished (its result is ready).
    pub fn is_finished(&self) -> bool {
        self.packet().lock().result.is_some()
    }

    /// The fiber's handle.
    pub fn fiber(&self) -> Fiber {
        Fiber {
            inner: self.fiber.clone(),
        }
    }
}

/// Adds the fiber's name and id to panic reports from fibers, then hands the
/// report to the hook that was installed before.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let f = running();
            // SAFETY: non-null is the fiber running on this thread.
            if let Some(f) = unsafe { f.as_ref() } {
                cancel::mark_panicking();
                eprintln!(
                    "weave: fiber '{}' (id {}) panicked:",
                    f.display_name(),
                    f.id
                );
            }
            prev(info);
        }));
    });
}

/// The arm of a [`JoinHandle`] in a [`Select`](crate::Select): ready once the
/// fiber finished. A handle has one owner, so the packet's single waiter
/// slot is the selector's while it selects.
pub(crate) struct JoinArm<'a, T>(&'a Packet<T>);

impl<T> JoinHandle<T> {
    pub(crate) fn join_arm(&self) -> JoinArm<'_, T> {
        JoinArm(self.packet())
    }
}

impl<T> crate::select::imp::Source for JoinArm<'_, T> {
    fn is_ready(&self) -> bool {
        self.0.lock().result.is_some()
    }
    fn watch(&self, w: &crate::select::imp::Watcher) -> bool {
        self.0.lock().waiter = Some(w.unparker.clone());
        true
    }
    fn unwatch(&self, _: &crate::select::imp::Watcher) {
        self.0.lock().waiter = None;
    }
}
