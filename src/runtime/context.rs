//! The runtime's `thread_local!`: which worker (if any) runs on this thread.
//!
//! # Thread-locals across a context switch
//!
//! LLVM may compute a thread-local's address once and reuse it after a call it
//! believes returns on the same thread (llvm issue 98479). A fiber's switch is
//! such a call. Two things keep the runtime's own lookups sound:
//!
//! 1. A started fiber never changes thread (see [`crate::runtime`]), so an
//!    address cached before a switch is still this thread's after it.
//! 2. Independently of (1), the accessor below is `#[inline(never)]`: the
//!    address is computed inside a real call made *after* the switch returns,
//!    never hoisted into the code before it.
//!
//! The crate's other thread-locals (fiber-local storage, the overflow
//! handler's current fiber, the sync waiter node cache) rely on (1) alone.

use std::cell::Cell;
use std::ptr;
use std::sync::Arc;

use super::worker::Worker;
use super::Shared;
use crate::fiber::raw::{BorrowedFiberRef, FiberRef};

thread_local! {
    static WORKER: Cell<*const Worker> = const { Cell::new(ptr::null()) };
}

/// Runs `f` with the worker of this thread, or `None` on a plain thread.
#[inline(never)]
pub(crate) fn with_worker<R>(f: impl FnOnce(Option<&Worker>) -> R) -> R {
    let p = WORKER.with(|w| w.get());
    // SAFETY: a non-null pointer was stored by `enter` from a `&Worker` that
    // lives on this thread's stack for the whole time it stays stored (the
    // guard returned by `enter` clears it before the worker is dropped).
    f(unsafe { p.as_ref() })
}

/// The fiber running on this thread, if any.
pub(crate) fn current_fiber() -> Option<FiberRef> {
    with_worker(|w| {
        let p = w?.current.get();
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null `current` is the fiber running on this thread;
        // the worker holds a strong reference while it runs, so adding one
        // more and wrapping it is sound.
        unsafe { Some(FiberRef::clone_from_ptr(p)) }
    })
}

/// The fiber running on this thread, if any, borrowed, with the runtime its
/// worker belongs to (for comparisons only). No count is taken or dropped
/// (a count per call is two atomic writes to the fiber's record).
///
/// # Safety
///
/// The fiber is used only by code running on that fiber, which keeps the
/// fiber's record alive: the record owns the stack that code runs on.
pub(crate) unsafe fn current_fiber_borrowed() -> Option<(BorrowedFiberRef, *const Shared)> {
    with_worker(|w| {
        let w = w?;
        let p = w.current.get();
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null `current` is the fiber running on this thread;
        // the caller uses the result only while running on it.
        Some((
            unsafe { FiberRef::borrow_from_ptr(p) },
            Arc::as_ptr(&w.shared),
        ))
    })
}

/// True when the caller runs on a fiber.
pub(crate) fn in_fiber() -> bool {
    with_worker(|w| w.is_some_and(|w| !w.current.get().is_null()))
}

/// Marks this thread as running `worker` until the guard drops.
pub(crate) fn enter(worker: &Worker) -> EnterGuard {
    WORKER.with(|w| {
        assert!(
            w.get().is_null(),
            "a weave worker is already running on this thread"
        );
        w.set(worker);
    });
    EnterGuard(())
}

/// Clears the thread's worker on drop.
pub(crate) struct EnterGuard(());

impl Drop for EnterGuard {
    fn drop(&mut self) {
        WORKER.with(|w| w.set(ptr::null()));
    }
}
