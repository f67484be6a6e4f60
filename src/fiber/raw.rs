//! The fiber object shared between its handles, its queues and its stack.
//!
//! # State word
//!
//! `state` is one of four values. Every transition is a CAS, so a fiber sits
//! in at most one run queue at any moment, which is what rules out a double
//! resume:
//!
//! | state      | meaning                                                      |
//! |------------|--------------------------------------------------------------|
//! | `RUNNING`  | running now, or queued to run; no unpark token pending       |
//! | `NOTIFIED` | as `RUNNING`, with an unpark token pending                   |
//! | `PARKED`   | switched out and in no queue: only an unpark can requeue it |
//! | `DONE`     | finished; unparks are ignored                                |
//!
//! Parking is two-phase. The fiber first tries to consume a token
//! (`NOTIFIED -> RUNNING`); failing that it switches out, and only *after* the
//! switch, on the scheduler's stack, the worker publishes `RUNNING -> PARKED`.
//! Publishing after the switch means no other thread can requeue the fiber
//! while its registers are still live. If an unpark slipped in between, the
//! CAS fails on `NOTIFIED`, the worker consumes the token and requeues the
//! fiber at once: the wakeup is never lost.
//!
//! `unpark` is the mirror image: `PARKED -> RUNNING` (and the unparker pushes
//! the fiber to its owner's queue), or `RUNNING -> NOTIFIED` (the token waits
//! for the next park).
//!
//! The word and its transitions live in [`state`](super::state), a file with
//! no other dependency, which the loom model in `tests/loom_park` compiles
//! against loom's atomics: it checks every interleaving of a parking fiber,
//! its worker and one or two unparkers for lost wakeups, double requeues and
//! unparks after `DONE`. Run it with
//! `CARGO_TARGET_DIR=target/loom cargo test --release --manifest-path tests/loom_park/Cargo.toml`.

use std::any::Any;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use corosensei::{Coroutine, Yielder};

use super::cancel::Control;
use super::stack::FiberStack;
use super::state::ParkState;
use crate::runtime::Shared;

/// Owner value of a fiber that has not run yet (any worker may steal it).
pub(crate) const NO_OWNER: usize = usize::MAX;

/// Why a fiber switched back to its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switch {
    /// Requeue at the back of the local run queue.
    Yield,
    /// Park: publish `PARKED` unless a token arrived meanwhile.
    Park,
}

pub(crate) type FiberCoroutine = Coroutine<(), Switch, (), FiberStack>;
pub(crate) type FiberYielder = Yielder<(), Switch>;

/// What the fiber's body is at this point of its life.
pub(crate) enum Body {
    /// Not started: the closure, and the stack it will run on (taken at
    /// spawn, so that running out of stacks is the spawner's error).
    New(Box<dyn FnOnce() + Send>, FiberStack),
    /// Started: the coroutine (suspended, or running on its owner).
    Running(FiberCoroutine),
    /// Finished, or dropped at runtime shutdown.
    Gone,
}

/// A fiber, shared by `Arc` between its [`Fiber`](crate::Fiber) handles, the
/// queue it sits in, and the waiter lists it is registered on.
#[repr(C)]
pub(crate) struct RawFiber {
    // The fields every wakeup and resume touches come first, in declaration
    // order (`repr(C)`), so that they share two or three cache lines: with
    // a thousand fibers taking turns, each turn finds its fiber's record
    // out of the cache.
    /// The park/unpark state word (see the module docs).
    pub(crate) state: ParkState,
    /// Index of the worker that runs it; `NO_OWNER` until its first run.
    pub(crate) owner: AtomicUsize,
    /// Touched only by the worker that currently runs or resumes the fiber
    /// (see the `Send` contract below).
    pub(crate) body: UnsafeCell<Body>,
    /// The coroutine's yielder, set when the body starts. Read only by the
    /// fiber itself, on its own stack.
    pub(crate) yielder: UnsafeCell<*const FiberYielder>,
    /// Scoped deadline and cancellation suppression (see
    /// [`cancel`](super::cancel)). Touched only by the fiber's own code and,
    /// for `suspended_unwinding`, its owner worker.
    pub(crate) control: Control,
    /// Lowest and highest address of the stack's guard page, for the stack
    /// overflow report.
    pub(crate) guard: (AtomicUsize, AtomicUsize),
    pub(crate) id: NonZeroU64,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) stack_size: usize,
    pub(crate) shared: Arc<Shared>,
    /// Fiber-local values, keyed by the address of their `LocalKey`, made
    /// on first use (most fibers have none). Touched only by code running
    /// on the fiber.
    pub(crate) locals: UnsafeCell<Option<Box<LocalMap>>>,
    /// Slot in the owner worker's table of started fibers.
    pub(crate) slot: AtomicUsize,
    /// The join handle's packet, without its result type: a fiber abandoned
    /// at runtime shutdown (its stack, and the completer on it, never run
    /// again) still reports to its handle through it. Weak, so the result
    /// lives no longer than the handle and the completer. `None` for a
    /// detached fiber (spawned without a handle).
    pub(crate) packet: Option<std::sync::Weak<dyn super::Abandon>>,
    /// Debug builds check that no two threads ever run the fiber at once.
    #[cfg(debug_assertions)]
    pub(crate) on_cpu: std::sync::atomic::AtomicBool,
}

// SAFETY: this is the crate's single `unsafe impl Send`/`Sync` for fibers, and
// the contract that makes it hold is the migration rule:
//
// 1. `body` is only touched by one thread at a time: the worker that popped the
//    fiber from a run queue. The state machine above puts a fiber in at most
//    one queue, and a fiber is only queued while it is not running.
// 2. A fiber moves between threads only while its body is `Body::New`: a boxed
//    `FnOnce + Send` closure and a stack nothing has run on, both `Send`. Once the body is a coroutine
//    (`Body::Running`), `owner` is fixed and every wakeup routes the fiber back
//    to that owner's queue. So a suspended stack, which may hold `Rc`, a
//    `RefCell` borrow or a thread-local address cached by the compiler, is only
//    ever resumed on the thread it started on.
// 3. `yielder`, `locals` and `control` are only touched by the fiber's own
//    code, which by (2) always runs on the owner thread, and by that owner
//    worker between two runs of the fiber.
// 4. All other fields are atomics or immutable after construction.
unsafe impl Send for RawFiber {}
// SAFETY: see the `Send` impl above; shared access (`&RawFiber`) from other
// threads only reads immutable fields or uses the atomics.
unsafe impl Sync for RawFiber {}

pub(crate) type FiberRef = Arc<RawFiber>;

/// A fiber's fiber-local values, keyed by the address of their `LocalKey`.
pub(crate) type LocalMap = HashMap<usize, Box<dyn Any>>;

impl RawFiber {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: Option<Arc<str>>,
        stack_size: usize,
        body: Box<dyn FnOnce() + Send>,
        stack: FiberStack,
        packet: Option<std::sync::Weak<dyn super::Abandon>>,
    ) -> FiberRef {
        let (guard_lo, guard_hi) = stack.guard();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Arc::new(RawFiber {
            id: NonZeroU64::new(id).expect("fiber id counter overflowed"),
            name,
            stack_size,
            state: ParkState::new(),
            owner: AtomicUsize::new(NO_OWNER),
            shared,
            body: UnsafeCell::new(Body::New(body, stack)),
            yielder: UnsafeCell::new(std::ptr::null()),
            locals: UnsafeCell::new(None),
            control: Control::default(),
            slot: AtomicUsize::new(usize::MAX),
            guard: (AtomicUsize::new(guard_lo), AtomicUsize::new(guard_hi)),
            packet,
            #[cfg(debug_assertions)]
            on_cpu: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Name for messages: the given name, or `fiber-<id>`.
    pub(crate) fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.to_string(),
            None => format!("fiber-{}", self.id),
        }
    }

    /// Consumes a pending token, if any. Called by the fiber before it
    /// switches out to park.
    #[inline]
    pub(crate) fn try_consume_token(&self) -> bool {
        self.state.try_consume_token()
    }

    /// Second phase of parking, run by the worker after the fiber switched
    /// out. Returns `true` if the fiber is now parked, `false` if a token
    /// arrived and the fiber must be requeued.
    #[inline]
    pub(crate) fn publish_parked(&self) -> bool {
        self.state.publish_parked()
    }

    /// Gives the fiber a token, requeueing it if it was parked.
    #[inline]
    pub(crate) fn unpark(self: &Arc<Self>) {
        if self.state.unpark() {
            crate::runtime::schedule_started(self.clone());
        }
    }

    /// Asks the fiber to stop at its next cancellation point: records the
    /// request, then unparks it so a parked fiber sees it at once.
    pub(crate) fn cancel(self: &Arc<Self>) {
        if self.state.request_cancel() {
            self.unpark();
        }
    }

    #[inline]
    pub(crate) fn mark_done(&self) {
        self.state.mark_done();
    }
}

/// Something that can be woken: a fiber, or a plain OS thread blocked in a
/// weave primitive. Lets every blocking primitive serve both.
#[derive(Clone)]
pub(crate) enum Unparker {
    Fiber(FiberRef),
    Thread(std::thread::Thread),
}

impl Unparker {
    /// The unparker of the caller: its fiber, or its thread.
    pub(crate) fn current() -> Unparker {
        match crate::runtime::context::current_fiber() {
            Some(f) => Unparker::Fiber(f),
            None => Unparker::Thread(std::thread::current()),
        }
    }

    pub(crate) fn unpark(&self) {
        match self {
            Unparker::Fiber(f) => f.unpark(),
            Unparker::Thread(t) => t.unpark(),
        }
    }
}

impl std::fmt::Debug for Unparker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unparker::Fiber(r) => write!(f, "Unparker::Fiber({})", r.id),
            Unparker::Thread(t) => write!(f, "Unparker::Thread({:?})", t.id()),
        }
    }
}
