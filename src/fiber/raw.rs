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
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
use std::ptr::NonNull;
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
    /// Not started: the stack it will run on (taken at spawn, so that
    /// running out of stacks is the spawner's error). The closure waits in
    /// the fiber's allocation (see [`Tail`]).
    New(FiberStack),
    /// Started: the coroutine (suspended, or running on its owner).
    Running(FiberCoroutine),
    /// Finished, or dropped at runtime shutdown.
    Gone,
}

/// A fiber: its header, shared by [`FiberRef`] between its
/// [`Fiber`](crate::Fiber) handles, the queue it sits in, and the waiter
/// lists it is registered on.
///
/// The header is the first field of one allocation that also holds what
/// depends on the closure's and the result's types (a [`Tail`]: the closure
/// until the first run, the join packet), so a spawn allocates once.
#[repr(C)]
pub(crate) struct RawFiber {
    // The fields a wakeup or a resume touches come first, in declaration
    // order (`repr(C)`), within the first 128 bytes: with a thousand fibers
    // taking turns, each turn finds its fiber's record out of the cache, and
    // every further line is one more miss per message. A wakeup reads
    // `state`, `owner` and `shared`; a resume `body` and `control`; a park
    // `state`, `control` and `yielder`.
    /// The park/unpark state word (see the module docs).
    pub(crate) state: ParkState,
    /// Strong references ([`FiberRef`]s) to the allocation.
    refs: AtomicUsize,
    /// Index of the worker that runs it; `NO_OWNER` until its first run.
    pub(crate) owner: AtomicUsize,
    pub(crate) shared: Arc<Shared>,
    /// Touched only by the worker that currently runs or resumes the fiber
    /// (see the `Send` contract below).
    pub(crate) body: UnsafeCell<Body>,
    /// Scoped deadline and cancellation suppression (see
    /// [`cancel`](super::cancel)). Touched only by the fiber's own code and,
    /// for `suspended_unwinding`, its owner worker.
    pub(crate) control: Control,
    /// The coroutine's yielder, set when the body starts. Read only by the
    /// fiber itself, on its own stack.
    pub(crate) yielder: UnsafeCell<*const FiberYielder>,
    /// The operations of the allocation's [`Tail`].
    vtable: &'static Vtable,
    /// Lowest and highest address of the stack's guard page, for the stack
    /// overflow report.
    pub(crate) guard: (AtomicUsize, AtomicUsize),
    pub(crate) id: NonZeroU64,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) stack_size: usize,
    /// Fiber-local values, keyed by the address of their `LocalKey`, made
    /// on first use (most fibers have none). Touched only by code running
    /// on the fiber.
    pub(crate) locals: UnsafeCell<Option<Box<LocalMap>>>,
    /// Slot in the owner worker's table of started fibers.
    pub(crate) slot: AtomicUsize,
    /// Debug builds check that no two threads ever run the fiber at once.
    #[cfg(debug_assertions)]
    pub(crate) on_cpu: std::sync::atomic::AtomicBool,
}

// SAFETY: this is the crate's single `unsafe impl Send`/`Sync` for fibers, and
// the contract that makes it hold is the migration rule:
//
// 1. `body`, and the closure in the tail, are only touched by one thread at a
//    time: the worker that popped the fiber from a run queue (or the thread
//    that drops an unstarted fiber it took out of a queue). The state machine
//    above puts a fiber in at most one queue, and a fiber is only queued
//    while it is not running.
// 2. A fiber moves between threads only while its body is `Body::New`: a
//    stack nothing has run on, and a closure that is `Send` (every `Tail`
//    requires it). Once the body is a coroutine (`Body::Running`), `owner` is
//    fixed and every wakeup routes the fiber back to that owner's queue. So a
//    suspended stack, which may hold `Rc`, a `RefCell` borrow or a
//    thread-local address cached by the compiler, is only ever resumed on the
//    thread it started on.
// 3. `yielder`, `locals` and `control` are only touched by the fiber's own
//    code, which by (2) always runs on the owner thread, and by that owner
//    worker between two runs of the fiber.
// 4. All other fields are atomics or immutable after construction; the join
//    packet in the tail is behind a mutex.
unsafe impl Send for RawFiber {}
// SAFETY: see the `Send` impl above; shared access (`&RawFiber`) from other
// threads only reads immutable fields or uses the atomics.
unsafe impl Sync for RawFiber {}

/// A fiber's fiber-local values, keyed by the address of their `LocalKey`.
pub(crate) type LocalMap = HashMap<usize, Box<dyn Any>>;

/// What a fiber's allocation holds besides its header: the closure until
/// the first run, and, for a joinable fiber, its join packet.
///
/// # Safety
///
/// Implementations are only used through [`FiberRef::new`], which places
/// them behind the header. `start` and `drop_unstarted` are each called at
/// most once, and never both; only by the thread that owns the body (see
/// the `Send` contract above), with `fiber` the header of this tail's
/// allocation.
pub(crate) unsafe trait Tail: Send + Sync + Sized + 'static {
    /// Moves the closure onto `stack` and makes the coroutine that runs it:
    /// the first run, on the owner worker.
    ///
    /// # Safety
    ///
    /// See the trait.
    unsafe fn start(&self, fiber: *const RawFiber, stack: FiberStack) -> FiberCoroutine;

    /// Drops the closure of a fiber that will never run, then reports the
    /// fiber ended (to its handle, and in the live count). A panic from the
    /// closure's captures propagates after the report.
    ///
    /// # Safety
    ///
    /// See the trait.
    unsafe fn drop_unstarted(&self, fiber: &RawFiber);

    /// Reports an abandoned fiber (its stack leaked at runtime shutdown,
    /// whatever was on it never dropped) ended to its handle. Returns
    /// whether the fiber still counted as live (false: it had already
    /// delivered its result).
    fn abandon(&self) -> bool;
}

/// The header and its tail, in one allocation.
#[repr(C)]
struct FiberCell<P> {
    header: RawFiber,
    tail: P,
}

/// [`Tail`]'s operations without its type, so that the header stays one
/// type for every fiber.
struct Vtable {
    start: unsafe fn(*const RawFiber, FiberStack) -> FiberCoroutine,
    drop_unstarted: unsafe fn(*const RawFiber),
    abandon: unsafe fn(*const RawFiber) -> bool,
    dealloc: unsafe fn(*const RawFiber),
}

impl<P: Tail> FiberCell<P> {
    const VTABLE: Vtable = Vtable {
        start: Self::start,
        drop_unstarted: Self::drop_unstarted,
        abandon: Self::abandon,
        dealloc: Self::dealloc,
    };

    /// # Safety
    ///
    /// `fiber` is the header of a live `FiberCell<P>`, as a pointer to the whole
    /// cell (a `FiberRef`'s; not one made from a `&RawFiber`, which covers
    /// the header only). The cast is sound because `FiberCell` is `repr(C)` with
    /// the header first.
    unsafe fn tail<'a>(fiber: *const RawFiber) -> &'a P {
        // SAFETY: see the function's contract.
        unsafe { &(*fiber.cast::<FiberCell<P>>()).tail }
    }

    /// # Safety
    ///
    /// As for [`Tail::start`], with `fiber` as in [`FiberCell::tail`].
    unsafe fn start(fiber: *const RawFiber, stack: FiberStack) -> FiberCoroutine {
        // SAFETY: passed on from the caller.
        unsafe { Self::tail(fiber).start(fiber, stack) }
    }

    /// # Safety
    ///
    /// As for [`Tail::drop_unstarted`], with `fiber` as in
    /// [`FiberCell::tail`].
    unsafe fn drop_unstarted(fiber: *const RawFiber) {
        // SAFETY: passed on from the caller.
        unsafe { Self::tail(fiber).drop_unstarted(&*fiber) }
    }

    /// # Safety
    ///
    /// `fiber` as in [`FiberCell::tail`].
    unsafe fn abandon(fiber: *const RawFiber) -> bool {
        // SAFETY: passed on from the caller.
        unsafe { Self::tail(fiber).abandon() }
    }

    /// # Safety
    ///
    /// `fiber` as in [`FiberCell::tail`], and its last reference is gone.
    unsafe fn dealloc(fiber: *const RawFiber) {
        // SAFETY: the cell was made by `Box::new` in `FiberRef::new`, and
        // nothing refers to it any more.
        drop(unsafe { Box::from_raw(fiber.cast::<FiberCell<P>>().cast_mut()) });
    }
}

impl RawFiber {
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

    #[inline]
    pub(crate) fn mark_done(&self) {
        self.state.mark_done();
    }
}

/// A strong reference to a fiber: what `Arc<RawFiber>` would be, for an
/// allocation whose tail type the header does not name.
pub(crate) struct FiberRef(NonNull<RawFiber>);

// SAFETY: a `FiberRef` only hands out `&RawFiber`, which is `Send + Sync`,
// and its count is atomic.
unsafe impl Send for FiberRef {}
// SAFETY: as above.
unsafe impl Sync for FiberRef {}

impl FiberRef {
    /// Makes a fiber in one allocation with `tail`, its body not started.
    pub(crate) fn new<P: Tail>(
        shared: Arc<Shared>,
        name: Option<Arc<str>>,
        stack_size: usize,
        stack: FiberStack,
        tail: P,
    ) -> FiberRef {
        let (guard_lo, guard_hi) = stack.guard();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let cell = Box::new(FiberCell {
            header: RawFiber {
                id: NonZeroU64::new(id).expect("fiber id counter overflowed"),
                name,
                stack_size,
                state: ParkState::new(),
                refs: AtomicUsize::new(1),
                owner: AtomicUsize::new(NO_OWNER),
                shared,
                body: UnsafeCell::new(Body::New(stack)),
                yielder: UnsafeCell::new(std::ptr::null()),
                vtable: &FiberCell::<P>::VTABLE,
                locals: UnsafeCell::new(None),
                control: Control::default(),
                slot: AtomicUsize::new(usize::MAX),
                guard: (AtomicUsize::new(guard_lo), AtomicUsize::new(guard_hi)),
                #[cfg(debug_assertions)]
                on_cpu: std::sync::atomic::AtomicBool::new(false),
            },
            tail,
        });
        // The pointer to the whole cell, not to its header field: the tail
        // is reached through it (see `FiberCell::tail`).
        // SAFETY: `Box::into_raw` is never null.
        FiberRef(unsafe { NonNull::new_unchecked(Box::into_raw(cell).cast::<RawFiber>()) })
    }

    /// The header's address, for comparisons and for the worker's
    /// `current` pointer.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *const RawFiber {
        self.0.as_ptr()
    }

    /// A new strong reference to the fiber at `fiber`.
    ///
    /// # Safety
    ///
    /// `fiber` is the header of a live fiber, kept alive by a reference
    /// held elsewhere for the duration of the call.
    pub(crate) unsafe fn clone_from_ptr(fiber: *const RawFiber) -> FiberRef {
        // SAFETY: the caller vouches for `fiber` (so it is not null).
        let r = FiberRef(unsafe { NonNull::new_unchecked(fiber.cast_mut()) });
        // One more reference, for `r`, leaving the caller's.
        std::mem::forget(r.clone());
        r
    }

    /// Gives up the reference for the header's address, which owns its
    /// count until [`from_raw`](Self::from_raw) takes it back.
    #[inline]
    pub(crate) fn into_raw(self) -> *const RawFiber {
        ManuallyDrop::new(self).as_ptr()
    }

    /// Takes back a reference given up by [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `fiber` came from `into_raw`, and is taken back only once.
    #[inline]
    pub(crate) unsafe fn from_raw(fiber: *const RawFiber) -> FiberRef {
        // SAFETY: `into_raw` gave a live header's address, which is not null;
        // the caller takes it back once, so its count is this reference's.
        FiberRef(unsafe { NonNull::new_unchecked(fiber.cast_mut()) })
    }

    /// A `FiberRef` to `fiber` that owns no count (cloning it takes one as
    /// usual).
    ///
    /// # Safety
    ///
    /// `fiber` is a live fiber that stays alive while the result is used.
    pub(crate) unsafe fn borrow_from_ptr(fiber: *const RawFiber) -> BorrowedFiberRef {
        // SAFETY: the caller vouches for `fiber` (so it is not null).
        let r = FiberRef(unsafe { NonNull::new_unchecked(fiber.cast_mut()) });
        BorrowedFiberRef(ManuallyDrop::new(r), std::marker::PhantomData)
    }

    /// The tail as its concrete type.
    ///
    /// # Safety
    ///
    /// The fiber was made by [`FiberRef::new`] with a tail of type `P`.
    pub(crate) unsafe fn tail<P: Tail>(&self) -> &P {
        debug_assert!(std::ptr::eq(self.vtable, &FiberCell::<P>::VTABLE));
        // SAFETY: the caller names the tail's type; a `FiberRef`'s pointer
        // covers the whole cell.
        unsafe { FiberCell::<P>::tail(self.as_ptr()) }
    }

    /// First run: moves the closure onto the fiber's stack and makes its
    /// coroutine.
    ///
    /// # Safety
    ///
    /// Called once, by the owner worker, with the body taken out of `New`.
    pub(crate) unsafe fn start_coroutine(&self, stack: FiberStack) -> FiberCoroutine {
        // SAFETY: passed on from the caller.
        unsafe { (self.vtable.start)(self.as_ptr(), stack) }
    }

    /// Drops the closure of a fiber that never started and reports it ended.
    ///
    /// # Safety
    ///
    /// The caller took the fiber out of a queue of unstarted fibers and set
    /// its body from `New` to `Gone`; the closure was never started.
    pub(crate) unsafe fn drop_closure_unstarted(&self) {
        // SAFETY: passed on from the caller.
        unsafe { (self.vtable.drop_unstarted)(self.as_ptr()) }
    }

    /// See [`Tail::abandon`].
    pub(crate) fn abandon(&self) -> bool {
        // SAFETY: the vtable was made for this allocation's tail.
        unsafe { (self.vtable.abandon)(self.as_ptr()) }
    }

    /// Gives the fiber a token, requeueing it if it was parked.
    #[inline]
    pub(crate) fn unpark(&self) {
        if self.state.unpark() {
            crate::runtime::schedule_started(self.clone());
        }
    }

    /// [`unpark`](Self::unpark) for a reference the caller is done with:
    /// it goes to the run queue itself, instead of a clone of it going
    /// there while it is dropped (two atomic writes to the fiber's count
    /// saved per wakeup: a waiter list's reference, a timer's).
    pub(crate) fn unpark_owned(self) {
        if self.state.unpark() {
            crate::runtime::schedule_started(self);
        }
    }

    /// Asks the fiber to stop at its next cancellation point: records the
    /// request, then unparks it so a parked fiber sees it at once.
    pub(crate) fn cancel(&self) {
        if self.state.request_cancel() {
            self.unpark();
        }
    }
}

/// A [`FiberRef`] that owns no count, made by
/// [`FiberRef::borrow_from_ptr`]: it derefs to the `FiberRef`, is never
/// dropped as one, and stays on its thread.
pub(crate) struct BorrowedFiberRef(ManuallyDrop<FiberRef>, std::marker::PhantomData<*const ()>);

impl std::ops::Deref for BorrowedFiberRef {
    type Target = FiberRef;

    fn deref(&self) -> &FiberRef {
        &self.0
    }
}

impl std::ops::Deref for FiberRef {
    type Target = RawFiber;

    #[inline]
    fn deref(&self) -> &RawFiber {
        // SAFETY: a `FiberRef` keeps its allocation alive.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for FiberRef {
    #[inline]
    fn clone(&self) -> FiberRef {
        // Relaxed, as `Arc` does: a new reference can only be made from an
        // existing one, which keeps the allocation alive meanwhile.
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        // Like `Arc`, refuse to let the count wrap (it would free the
        // fiber under its other references): only leaked references could
        // get it there.
        if old > isize::MAX as usize {
            std::process::abort();
        }
        FiberRef(self.0)
    }
}

impl Drop for FiberRef {
    #[inline]
    fn drop(&mut self) {
        // Release, then Acquire before freeing, as `Arc` does: every use
        // through another reference happens before the free.
        if self.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        let dealloc = self.vtable.dealloc;
        // SAFETY: that was the last reference.
        unsafe { dealloc(self.0.as_ptr()) }
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

    /// [`unpark`](Self::unpark), handing a fiber's reference to the run
    /// queue instead of a clone of it (see [`FiberRef::unpark_owned`]).
    pub(crate) fn unpark_owned(self) {
        match self {
            Unparker::Fiber(f) => f.unpark_owned(),
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

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// The size of the field `_field` picks out (the closure is never called).
    fn field_size<F>(_field: impl Fn(&RawFiber) -> &F) -> usize {
        size_of::<F>()
    }

    /// What a wakeup, a resume and a park read stays within the record's
    /// first 128 bytes (see the comment on [`RawFiber`]).
    #[test]
    fn hot_fields_sit_in_the_first_128_bytes() {
        let ends = [
            (
                "state",
                offset_of!(RawFiber, state) + field_size(|f| &f.state),
            ),
            ("refs", offset_of!(RawFiber, refs) + field_size(|f| &f.refs)),
            (
                "owner",
                offset_of!(RawFiber, owner) + field_size(|f| &f.owner),
            ),
            (
                "shared",
                offset_of!(RawFiber, shared) + field_size(|f| &f.shared),
            ),
            ("body", offset_of!(RawFiber, body) + field_size(|f| &f.body)),
            (
                "control",
                offset_of!(RawFiber, control) + field_size(|f| &f.control),
            ),
            (
                "yielder",
                offset_of!(RawFiber, yielder) + field_size(|f| &f.yielder),
            ),
        ];
        for (field, end) in ends {
            assert!(end <= 128, "RawFiber::{field} ends at byte {end}");
        }
    }
}
