//! Cancellation and scoped deadlines: how a blocked fiber is told to stop.
//!
//! # The model: deferred cancellation, unwinding from the blocking point
//!
//! Blocking-style code has two honest ways to be stopped from outside.
//! Go's is an error: every blocking call fails once a deadline passed, and
//! the code returns that error up its own stack. POSIX's is deferred
//! cancellation: a cancelled thread unwinds from its next *cancellation
//! point* (a call that may block), running its cleanup handlers.
//!
//! weave takes the POSIX model, with Rust unwinding as the cleanup handlers.
//! [`JoinHandle::cancel`](super::JoinHandle::cancel) and an expired
//! [`timeout`](crate::time::timeout) make the fiber's next blocking point
//! unwind with [`std::panic::resume_unwind`]: destructors run (locks are
//! released, sockets closed, channel slots withdrawn), and the unwind is
//! caught at the fiber's boundary ([`JoinHandle::join`](super::JoinHandle::join)
//! returns `Err` holding [`Cancelled`]) or by the `timeout` call that set the
//! deadline (which returns [`Elapsed`](crate::time::Elapsed)). Why this model
//! and not errors:
//!
//! - **It works through code weave does not own.** A parser or client
//!   library that loops over `read_exact` or `write_all`, or a sync library
//!   that retries on `ErrorKind::Interrupted`, would turn an error into a
//!   retry loop. An unwind cannot be retried by accident: it leaves every
//!   frame between the blocking point and the catcher, whatever they do with
//!   `io::Error`s.
//! - **No API changes.** `Mutex::lock`, `recv`, `sleep` and `park` have no
//!   error to return; with errors each would need a new fallible twin.
//! - **Resources are released by the code that owns them**, in destructors,
//!   exactly as when the function returns early with `?`.
//!
//! # Cancellation points
//!
//! Every place a fiber parks is one: socket I/O, `accept`, `connect`,
//! [`sleep`](crate::sleep), [`park`](crate::park) and `park_timeout`,
//! [`yield_now`](crate::yield_now), every wait in [`crate::sync`],
//! [`JoinHandle::join`](super::JoinHandle::join) and
//! [`blocking::unblock`](crate::blocking::unblock). They all go through one
//! function (`fiber::park_deadline`), which checks the fiber's cancellation
//! word and its scoped deadline on entry and again after the fiber is
//! switched back in. A cancel sets the word and then unparks the fiber, so a
//! fiber parked right now is requeued at once and unwinds as soon as its
//! worker runs it (the protocol is model-checked in `tests/loom_park`).
//! [`cancellation_point`] is an explicit one, for a loop that computes for
//! long without blocking; a fiber that never reaches a cancellation point
//! cannot be stopped. A request stays pending: a fiber that caught the
//! unwind and carried on meets it again at its next blocking point.
//!
//! # Catching panics
//!
//! Code that catches panics must not swallow a cancellation: test the
//! payload with [`is_cancellation`] and re-raise it with
//! `std::panic::resume_unwind`, or use [`catch_unwind`], which does that.
//! weave's own server does so (a connection cut by cancellation or shutdown
//! is not logged as a handler panic).
//!
//! A lock held across the unwind is released by its guard's destructor and,
//! as with a panic, poisoned (a `weave::sync::Mutex` or a std one): the
//! cancellation may have cut a critical section short at a blocking point
//! inside it.
//!
//! # While unwinding
//!
//! Cancellation is not raised again while the fiber is already unwinding:
//! a destructor that blocks (a `BufWriter` flushing to a socket, say) waits
//! normally, and a scoped deadline is not observed there either (raising a
//! second panic from a destructor would abort the process). Nor is it raised
//! inside [`without_cancellation`].
//!
//! # `extern "C"` frames
//!
//! An unwind cannot cross an `extern "C"` function: Rust aborts the process
//! when one tries. If C code calls back into Rust and the callback blocks on
//! weave, either declare the callback `extern "C-unwind"` (only if the C
//! code between is built to be unwound through, for example with
//! `-fexceptions`, and holds nothing that needs cleanup), or run the
//! callback's body inside [`without_cancellation`] and let the cancellation
//! take effect at the next blocking point after the C code returned.
//!
//! # Runtime shutdown
//!
//! Dropping a [`Runtime`](crate::Runtime) cancels every started fiber and
//! lets each worker keep running its fibers (I/O, timers, wakeups from
//! other workers) until they have all unwound, so a destructor that waits for
//! something (a lock held by a fiber on another worker, a flush) waits for
//! real instead of spinning, and a fiber joining another fiber is unwound
//! from its join. A fiber still parked after
//! [`SHUTDOWN_UNWIND_LIMIT`](crate::runtime::SHUTDOWN_UNWIND_LIMIT) (its
//! destructor waits for something that never comes) is abandoned: its stack
//! is leaked, not resumed, the event is logged, and its join handle reports
//! it [`Cancelled`].

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::Instant;

use super::raw::RawFiber;

/// The panic payload of a cancelled fiber: [`JoinHandle::join`] returns it
/// in `Err` after [`JoinHandle::cancel`], after its runtime shut down before
/// it finished, or when it never got to run.
///
/// [`JoinHandle::join`]: super::JoinHandle::join
/// [`JoinHandle::cancel`]: super::JoinHandle::cancel
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let h = weave::spawn(|| weave::park());
///     h.cancel();
///     let payload = h.join().unwrap_err();
///     assert!(payload.is::<weave::fiber::Cancelled>());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fiber cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The unwind payload of an expired scoped deadline: the id of the
/// `timeout` scope whose deadline it is. Only that scope catches it.
#[derive(Debug)]
pub(crate) struct DeadlineUnwind(pub(crate) u64);

/// Per-fiber (or per-thread) control state: the scoped deadline and the
/// suppression counters. Touched only by code running on its fiber (or
/// thread), so plain `Cell`s.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// The earliest deadline of the enclosing `timeout` scopes and the id of
    /// the scope it belongs to.
    scope: Cell<Option<(Instant, u64)>>,
    /// Depth of `without_cancellation` calls.
    no_cancel: Cell<u32>,
    /// Set when weave raised an unwind on this fiber or it panicked; cleared
    /// when a weave catch site took it, or found stale (the thread is not
    /// panicking).
    pub(crate) unwinding: Cell<bool>,
    /// The fiber switched out while its thread was panicking: it is
    /// suspended in the middle of an unwind. Maintained by the worker.
    pub(crate) suspended_unwinding: Cell<bool>,
}

thread_local! {
    /// The control state of a plain thread (scoped deadlines also work on
    /// threads that call weave's blocking functions).
    static THREAD: Control = Control::default();
}

/// Runs `f` with the control state of the caller: its fiber's, or its
/// thread's.
fn with_control<R>(f: impl FnOnce(&Control) -> R) -> R {
    let p = super::running();
    // SAFETY: non-null `running()` is the live fiber running on this thread
    // (its worker holds a reference while it runs); `f` does not park.
    match unsafe { p.as_ref() } {
        Some(fiber) => f(&fiber.control),
        None => THREAD.with(|c| f(c)),
    }
}

/// The checks of a park point on a fiber: raises a pending cancellation, or
/// the scope's expired deadline, unless suppressed. Returns the scoped
/// deadline the park must also wake up for (`None` when there is none or it
/// is suppressed).
#[inline]
pub(crate) fn check_fiber(fiber: &RawFiber) -> Option<Instant> {
    let cancel = fiber.state.cancel_requested();
    let scope = fiber.control.scope.get();
    if !cancel && scope.is_none() {
        return None;
    }
    check_slow(&fiber.control, cancel, scope)
}

/// [`check_fiber`] for a plain thread (no cancellation, only deadlines).
#[inline]
pub(crate) fn check_thread() -> Option<Instant> {
    THREAD.with(|c| {
        let scope = c.scope.get();
        scope?;
        check_slow(c, false, scope)
    })
}

#[cold]
fn check_slow(c: &Control, cancel: bool, scope: Option<(Instant, u64)>) -> Option<Instant> {
    if suppressed(c) {
        return None;
    }
    if cancel {
        c.unwinding.set(true);
        panic::resume_unwind(Box::new(Cancelled));
    }
    let (deadline, id) = scope?;
    if Instant::now() >= deadline {
        c.unwinding.set(true);
        panic::resume_unwind(Box::new(DeadlineUnwind(id)));
    }
    Some(deadline)
}

/// True when raising now is not allowed: inside `without_cancellation`, or
/// while this fiber is unwinding already.
///
/// `thread::panicking()` alone cannot say the latter: the panic count is
/// per thread, and a fiber suspended in the middle of an unwind (a
/// destructor that blocks) leaves it raised while other fibers of the
/// thread run. So when some fiber of this worker is suspended mid-unwind,
/// the fiber's own flag decides; when none is, a panicking thread means
/// this fiber is the one unwinding.
fn suppressed(c: &Control) -> bool {
    if c.no_cancel.get() > 0 {
        return true;
    }
    if !thread::panicking() {
        // Not unwinding, whatever the flag says (the unwind it recorded was
        // caught and dropped by the program).
        c.unwinding.set(false);
        return false;
    }
    c.unwinding.get()
        || crate::runtime::context::with_worker(|w| {
            w.is_none_or(|w| w.suspended_unwinders.get() == 0)
        })
}

/// Allocates the id of a new `timeout` scope.
pub(crate) fn next_scope_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Opens a scope with `deadline` (the earlier of it and the enclosing one
/// wins, with the id of its own scope). Returns the enclosing scope, for
/// [`restore_scope`].
pub(crate) fn enter_scope(deadline: Instant, id: u64) -> Option<(Instant, u64)> {
    with_control(|c| {
        let prev = c.scope.get();
        match prev {
            Some((d, _)) if d <= deadline => {}
            _ => c.scope.set(Some((deadline, id))),
        }
        prev
    })
}

/// Closes a scope opened by [`enter_scope`].
pub(crate) fn restore_scope(prev: Option<(Instant, u64)>) {
    with_control(|c| c.scope.set(prev));
}

/// The caller caught the unwind weave raised on it.
pub(crate) fn caught() {
    with_control(|c| c.unwinding.set(false));
}

/// Marks the running fiber as unwinding (called by the panic hook).
pub(crate) fn mark_panicking() {
    with_control(|c| c.unwinding.set(true));
}

/// True if `payload` is a cancellation ([`Cancelled`]) or the unwind of an
/// expired [`timeout`](crate::time::timeout): the payloads that code which
/// catches panics must pass on with `std::panic::resume_unwind` instead of
/// handling.
///
/// # Examples
///
/// ```
/// let payload: Box<dyn std::any::Any + Send> = Box::new(weave::fiber::Cancelled);
/// assert!(weave::fiber::is_cancellation(&*payload));
/// let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
/// assert!(!weave::fiber::is_cancellation(&*payload));
/// ```
pub fn is_cancellation(payload: &(dyn Any + Send)) -> bool {
    payload.is::<Cancelled>() || payload.is::<DeadlineUnwind>()
}

/// `std::panic::catch_unwind` that lets cancellations through: a panic is
/// returned as `Err`, a cancellation or an expired
/// [`timeout`](crate::time::timeout) keeps unwinding.
///
/// # Errors
///
/// The payload of a panic of `f` that is not a cancellation.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     assert!(weave::fiber::catch_unwind(|| panic!("boom")).is_err());
///     let h = weave::spawn(|| {
///         // The cancellation is not caught here: the fiber ends cancelled.
///         let _ = weave::fiber::catch_unwind(|| weave::park());
///         "not reached"
///     });
///     h.cancel();
///     assert!(h.join().unwrap_err().is::<weave::fiber::Cancelled>());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn catch_unwind<F: FnOnce() -> R, R>(f: F) -> thread::Result<R> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Err(p) if is_cancellation(&*p) => panic::resume_unwind(p),
        other => other,
    }
}

/// An explicit cancellation point: unwinds if the caller's fiber was
/// cancelled or its [`timeout`](crate::time::timeout) expired; otherwise
/// returns at once. For loops that compute for long without blocking.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let r = weave::time::timeout(std::time::Duration::from_millis(1), || loop {
///         weave::fiber::cancellation_point();
///         std::hint::spin_loop();
///     });
///     assert!(r.is_err());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn cancellation_point() {
    let p = super::running();
    // SAFETY: as in `with_control`.
    match unsafe { p.as_ref() } {
        Some(fiber) => {
            check_fiber(fiber);
        }
        None => {
            check_thread();
        }
    }
}

/// Runs `f` with cancellation and scoped deadlines held back: blocking
/// calls inside `f` wait as if neither existed, and a pending cancellation
/// (or an expired deadline) takes effect at the first blocking point after
/// `f` returned. Like `pthread_setcancelstate(PTHREAD_CANCEL_DISABLE)`; use
/// it around code that must not be unwound through, such as a callback
/// called from C (see the module docs on `extern "C"` frames).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let r = weave::time::timeout(Duration::from_millis(1), || {
///         weave::fiber::without_cancellation(|| weave::sleep(Duration::from_millis(20)));
///         "the sleep finished"
///     });
///     assert_eq!(r.unwrap(), "the sleep finished");
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn without_cancellation<F: FnOnce() -> R, R>(f: F) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            with_control(|c| c.no_cancel.set(c.no_cancel.get() - 1));
        }
    }
    with_control(|c| c.no_cancel.set(c.no_cancel.get() + 1));
    let _restore = Restore;
    f()
}
