//! One worker thread: its queues, poller and timers, and the loop
//! that ties them together.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corosensei::{Coroutine, CoroutineResult};
use crossbeam_deque::{Injector, Steal, Stealer};
use mio::{Events, Poll, Token};

use super::{context, Remote, Shared};
use crate::fiber::raw::{Body, FiberCoroutine, FiberRef, RawFiber, Switch};
use crate::fiber::stack::FiberStack;
use crate::fiber::{drop_payload, overflow};
use crate::io::ScheduledIo;
use crate::time::{TimerKey, Timers};

/// Token of each worker's `mio::Waker`. I/O tokens are addresses of
/// `ScheduledIo`s, which are never `usize::MAX`.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);

/// Scheduling ticks between two fairness checks (I/O, timers, injector).
const FAIRNESS_INTERVAL: u32 = 61;

/// How long a worker watches its queues before sleeping while other workers
/// are awake.
const SPIN_BUDGET: Duration = Duration::from_micros(20);

/// How far a successful watch raises a worker's spin score, and its cap:
/// a worker whose watches mostly pay keeps watching through a run of
/// misses.
const SPIN_SCORE_GAIN: u32 = 4;
const SPIN_SCORE_MAX: u32 = 32;

/// A worker whose spin score fell to zero still watches before one sleep
/// in this many.
const SPIN_PROBE_EVERY: u32 = 16;

/// Scheduling ticks between two turns in which a new fiber goes first.
const NEW_FIBER_INTERVAL: u32 = 4;

pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    /// Not-yet-started fibers; other workers steal from its `Stealer`.
    local: crossbeam_deque::Worker<FiberRef>,
    /// Started fibers ready to run; only this worker touches it.
    ready: RefCell<VecDeque<FiberRef>>,
    /// The fiber running now. Valid while set: `run_fiber` holds a reference.
    pub(crate) current: Cell<*const RawFiber>,
    timers: RefCell<Timers<FiberRef>>,
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    /// Every started, unfinished fiber of this worker, so shutdown can unwind
    /// the parked ones.
    fibers: RefCell<Slab>,
    /// I/O registrations dropped on this thread, freed after the event batch.
    released: RefCell<Vec<Arc<ScheduledIo>>>,
    pub(crate) shutting_down: Cell<bool>,
    /// Fibers of this worker suspended in the middle of an unwind (they
    /// parked in a destructor): while there are any, `thread::panicking()`
    /// does not tell whether the running fiber unwinds (see `fiber::cancel`).
    pub(crate) suspended_unwinders: Cell<usize>,
    rng: Cell<u32>,
    /// How recent watches before sleeping ended (see `spin_for_work`).
    spin_score: Cell<u32>,
    /// Sleeps without a watch since the score fell to zero.
    spin_skipped: Cell<u32>,
    /// The coarse clock when the last fiber run or I/O poll ended: the next
    /// run's start, for the hog check (one clock read per run, not two).
    clock: Cell<Duration>,
}

/// Entry point of a worker thread.
pub(crate) fn run(
    index: usize,
    shared: Arc<Shared>,
    poll: Poll,
    local: crossbeam_deque::Worker<FiberRef>,
) {
    let worker = Worker {
        index,
        shared,
        local,
        ready: RefCell::new(VecDeque::with_capacity(256)),
        current: Cell::new(std::ptr::null()),
        timers: RefCell::new(Timers::new()),
        poll: RefCell::new(poll),
        events: RefCell::new(Events::with_capacity(1024)),
        fibers: RefCell::new(Slab::default()),
        released: RefCell::new(Vec::new()),
        shutting_down: Cell::new(false),
        suspended_unwinders: Cell::new(0),
        rng: Cell::new((index as u32).wrapping_mul(0x9E37_79B9) | 1),
        spin_score: Cell::new(SPIN_SCORE_MAX),
        spin_skipped: Cell::new(0),
        clock: Cell::new(crate::sys::coarse_now()),
    };
    let _altstack = overflow::AltStack::ensure();
    let _enter = context::enter(&worker);
    // The worker boundary. User code runs under catches closer to it (the
    // fiber's body, fiber-local destructors, result and closure drops), so
    // a panic reaching this point is a bug in the runtime itself; the worker
    // still reports it and keeps serving, since the fibers pinned here
    // cannot move to another thread.
    while let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| worker.main_loop())) {
        worker.recover(payload);
    }
    for _ in 0..SHUTDOWN_TRIES {
        match panic::catch_unwind(AssertUnwindSafe(|| worker.shutdown())) {
            Ok(()) => break,
            Err(payload) => worker.recover(payload),
        }
    }
    worker.remote().closed.store(true, Ordering::Release);
}

/// How many times a worker restarts its shutdown after a panic escaped it.
const SHUTDOWN_TRIES: usize = 4;

impl Worker {
    fn remote(&self) -> &Remote {
        &self.shared.remotes[self.index]
    }

    /// A panic reached the worker loop: report it and reset what the loop
    /// sets while a fiber runs, so the worker can go on.
    fn recover(&self, payload: Box<dyn std::any::Any + Send>) {
        log::error!(
            "weave: worker {}: a panic reached the worker loop ({}); the worker keeps serving",
            self.index,
            payload_text(&*payload)
        );
        self.current.set(std::ptr::null());
        overflow::set_current_null();
        drop_payload(payload);
    }

    pub(crate) fn push_new(&self, fiber: FiberRef) {
        self.local.push(fiber);
    }

    pub(crate) fn push_ready(&self, fiber: FiberRef) {
        self.ready.borrow_mut().push_back(fiber);
    }

    fn main_loop(&self) {
        let mut tick: u32 = 0;
        while !self.shared.shutdown.load(Ordering::Acquire) {
            tick = tick.wrapping_add(1);
            let fiber = if tick % FAIRNESS_INTERVAL == 0 {
                self.poll_io(Some(Duration::ZERO), true);
                self.fire_timers();
                steal_one(&self.shared.injector).or_else(|| self.next_fiber())
            } else if tick % NEW_FIBER_INTERVAL == 0 {
                // Started fibers that keep yielding must not keep new ones
                // (fresh connections) from ever starting.
                self.local.pop().or_else(|| self.next_fiber())
            } else {
                self.next_fiber()
            };
            match fiber {
                Some(f) => self.run_fiber(f),
                None => self.sleep(),
            }
        }
    }

    /// The next fiber to run: started ones first (their wakeups are the
    /// latency that matters), then new ones from our queue, the injector, and
    /// other workers.
    fn next_fiber(&self) -> Option<FiberRef> {
        // Wakeups from other threads join the back of the run queue, so they
        // take their turn even when local fibers keep the queue non-empty.
        let remote = self.remote();
        for q in [&remote.inbox, &remote.pinned] {
            if !q.is_empty() {
                let mut ready = self.ready.borrow_mut();
                while let Some(f) = steal_one(q) {
                    ready.push_back(f);
                }
            }
        }
        if let Some(f) = self.ready.borrow_mut().pop_front() {
            return Some(f);
        }
        if let Some(f) = self.local.pop() {
            return Some(f);
        }
        self.steal_new()
    }

    fn steal_new(&self) -> Option<FiberRef> {
        loop {
            match self.shared.injector.steal_batch_and_pop(&self.local) {
                Steal::Success(f) => return Some(f),
                Steal::Empty => break,
                Steal::Retry => continue,
            }
        }
        let n = self.shared.remotes.len();
        let start = self.next_rand() as usize % n;
        for i in 0..n {
            let j = (start + i) % n;
            if j == self.index {
                continue;
            }
            if let Some(f) = steal_batch(&self.shared.remotes[j].stealer, &self.local) {
                return Some(f);
            }
        }
        None
    }

    fn next_rand(&self) -> u32 {
        // xorshift32: only spreads the starting victim of steals.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.set(x);
        x
    }

    fn has_visible_work(&self) -> bool {
        !self.ready.borrow().is_empty()
            || !self.local.is_empty()
            || self.has_handed_over_work()
            || self.shared.shutdown.load(Ordering::SeqCst)
    }

    /// Work other threads handed over: wakeups and pinned fibers for this
    /// worker, new fibers in the injector or in any worker's queue.
    fn has_handed_over_work(&self) -> bool {
        !self.remote().inbox.is_empty()
            || !self.remote().pinned.is_empty()
            || !self.shared.injector.is_empty()
            || self.shared.remotes.iter().any(|r| !r.stealer.is_empty())
    }

    /// Before sleeping, a worker watches its queues for up to 20 µs if
    /// another worker is awake: a wakeup handed over in that window costs
    /// no system call on either side (the waker sees no sleeping flag, so it
    /// skips the `eventfd` write). Returns true if work showed up.
    ///
    /// The watch sees only what other threads hand over (wakeups, new
    /// fibers), not this worker's own I/O, which only `epoll_wait` reports.
    /// So it pays when workers trade wakeups and is wasted when the work
    /// comes from the network: the worker keeps a score of how its recent
    /// watches ended (up on success, down on a timeout) and watches only
    /// while the score is positive, trying once in [`SPIN_PROBE_EVERY`]
    /// sleeps otherwise so it notices when trading starts again.
    fn spin_for_work(&self) -> bool {
        let n = self.shared.remotes.len();
        if n < 2 || self.shared.num_sleeping.load(Ordering::Relaxed) >= n - 1 {
            return false;
        }
        let score = self.spin_score.get();
        if score == 0 {
            let skipped = self.spin_skipped.get().wrapping_add(1);
            self.spin_skipped.set(skipped);
            if skipped % SPIN_PROBE_EVERY != 0 {
                return false;
            }
        }
        let found = self.watch_queues();
        self.spin_score.set(if found {
            (score + SPIN_SCORE_GAIN).min(SPIN_SCORE_MAX)
        } else {
            score.saturating_sub(1)
        });
        found
    }

    /// The watch of [`spin_for_work`](Self::spin_for_work): true if work
    /// showed up within [`SPIN_BUDGET`].
    fn watch_queues(&self) -> bool {
        let start = Instant::now();
        for round in 0u32.. {
            for _ in 0..8 {
                std::hint::spin_loop();
            }
            if self.has_handed_over_work() {
                return true;
            }
            if round % 16 == 15 && start.elapsed() >= SPIN_BUDGET {
                break;
            }
        }
        false
    }

    /// Nothing to run: sleep in the poller until I/O, a timer, or a wakeup.
    fn sleep(&self) {
        if self.spin_for_work() {
            return;
        }
        let timeout = self
            .timers
            .borrow_mut()
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let remote = self.remote();
        remote.sleeping.store(true, Ordering::SeqCst);
        self.shared.num_sleeping.fetch_add(1, Ordering::SeqCst);
        // Re-check after announcing sleep: whoever queued work before seeing
        // our flag made it visible by now (both sides use SeqCst).
        let timeout = if self.has_visible_work() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.poll_events(timeout);
        remote.sleeping.store(false, Ordering::SeqCst);
        self.shared.num_sleeping.fetch_sub(1, Ordering::SeqCst);
        // Awake again before any fiber runs: a wakeup meanwhile goes to the
        // inbox, with no eventfd write.
        self.dispatch_events(true);
        self.fire_timers();
    }

    /// Polls and dispatches the events (see `dispatch_events` for
    /// `interleave`).
    fn poll_io(&self, timeout: Option<Duration>, interleave: bool) {
        self.poll_events(timeout);
        self.dispatch_events(interleave);
    }

    /// Fetches the ready events into `self.events`, waiting up to `timeout`,
    /// and reads the clock: the wait ends here, so this is when the next
    /// fiber run starts (`run_fiber`'s hog check), whether it runs during
    /// the dispatch or after it.
    fn poll_events(&self, timeout: Option<Duration>) {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("weave: epoll_wait failed: {e}");
            }
        }
        self.clock.set(crate::sys::coarse_now());
    }

    /// Hands each fetched event to its socket's waiters. With `interleave`,
    /// a fiber that an event alone woke runs right after it, ahead of the
    /// fibers queued before and before the next event is looked at: the
    /// event just touched the socket's readiness record and the fiber's
    /// record, which are still in the cache then, where after a whole batch
    /// of events (dozens, up to hundreds at a thousand busy connections) the
    /// others' pushed them out and the resume read them from memory again.
    /// Only that one fiber runs: if it yields it goes to the back of the
    /// queue, so nothing holds the rest of the batch up.
    fn dispatch_events(&self, interleave: bool) {
        let events = self.events.borrow();
        for event in events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            // SAFETY: every token but the waker's is the address of a
            // `ScheduledIo` whose registration reference is alive: it is only
            // released through `release_io`, which runs after this loop
            // (registrations dropped on other threads are queued in
            // `Remote::released`, those dropped by fibers this loop runs in
            // `released`, and both are freed only below).
            let io = unsafe { &*(event.token().0 as *const ScheduledIo) };
            let queued = self.ready.borrow().len();
            io.dispatch(event);
            if interleave && self.ready.borrow().len() == queued + 1 {
                let woken = self.ready.borrow_mut().pop_back();
                if let Some(f) = woken {
                    self.run_fiber(f);
                }
            }
        }
        drop(events);
        self.release_io();
    }

    fn release_io(&self) {
        self.released.borrow_mut().clear();
        let remote = self.remote();
        if remote.any_released.swap(false, Ordering::Acquire) {
            remote
                .released
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    fn fire_timers(&self) {
        let now = Instant::now();
        loop {
            let due = self.timers.borrow_mut().pop_expired(now);
            match due {
                Some(f) => f.unpark_owned(),
                None => break,
            }
        }
    }

    /// Arms a timer that unparks `fiber` at `deadline`.
    pub(crate) fn add_timer(&self, deadline: Instant, fiber: FiberRef) -> TimerKey {
        self.timers.borrow_mut().insert(deadline, fiber)
    }

    pub(crate) fn cancel_timer(&self, key: TimerKey) {
        let f = self.timers.borrow_mut().cancel(key);
        drop(f);
    }

    /// Registers an I/O source with this worker's poller.
    pub(crate) fn register(
        &self,
        source: &mut impl mio::event::Source,
        io: &Arc<ScheduledIo>,
    ) -> std::io::Result<()> {
        let token = Arc::into_raw(io.clone()) as usize;
        let res = self.poll.borrow().registry().register(
            source,
            Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        );
        if res.is_err() {
            // SAFETY: `token` came from `Arc::into_raw` just above and was not
            // handed to the poller.
            drop(unsafe { Arc::from_raw(token as *const ScheduledIo) });
        }
        res
    }

    /// Queues the poller's reference of a deregistered source for release.
    pub(crate) fn release_local(&self, io: Arc<ScheduledIo>) {
        self.released.borrow_mut().push(io);
    }

    /// Runs (starts or resumes) `fiber` until it switches back.
    fn run_fiber(&self, fiber: FiberRef) {
        // SAFETY: we popped `fiber` from a queue, so by the state machine in
        // `fiber::raw` no other thread touches its body until we requeue it or
        // it parks, both of which happen after this borrow ends.
        let body = unsafe { &mut *fiber.body.get() };
        if let Body::New(..) = body {
            self.start(&fiber, body);
        }
        let Body::Running(co) = body else {
            return;
        };
        #[cfg(debug_assertions)]
        assert!(
            !fiber.on_cpu.swap(true, Ordering::AcqRel),
            "weave: fiber '{}' resumed twice at once",
            fiber.display_name()
        );
        // The count is how many of this worker's fibers carry the flag: when
        // none does (nearly always), the fiber's flag is not even read, which
        // spares a cache line of its record on every resume.
        if self.suspended_unwinders.get() != 0 && fiber.control.suspended_unwinding.replace(false) {
            self.suspended_unwinders
                .set(self.suspended_unwinders.get() - 1);
        }
        self.current.set(fiber.as_ptr());
        overflow::set_current(&fiber);
        // Since the last run or poll ended the worker only picked this
        // fiber (no waiting: a sleep ends in `poll_events`), so that is its start.
        let started = self.clock.get();
        // The fiber's root catches every panic (see `start`); should one
        // still escape, corosensei re-raises it here, with the coroutine
        // finished, and the fiber ends like any other.
        let result = panic::catch_unwind(AssertUnwindSafe(|| co.resume(())));
        let now = crate::sys::coarse_now();
        self.clock.set(now);
        let ran = now.saturating_sub(started);
        overflow::set_current_null();
        self.current.set(std::ptr::null());
        #[cfg(debug_assertions)]
        fiber.on_cpu.store(false, Ordering::Release);
        if ran >= self.shared.config.hog_threshold {
            super::report_hog(|| fiber.display_name(), ran, self.index);
        }
        if matches!(result, Ok(CoroutineResult::Yield(_))) && std::thread::panicking() {
            fiber.control.suspended_unwinding.set(true);
            self.suspended_unwinders
                .set(self.suspended_unwinders.get() + 1);
        }
        match result {
            Ok(CoroutineResult::Yield(Switch::Yield)) => self.push_ready(fiber),
            Ok(CoroutineResult::Yield(Switch::Park)) => {
                if !fiber.publish_parked() {
                    self.push_ready(fiber);
                }
            }
            Ok(CoroutineResult::Return(())) => self.finish(fiber),
            Err(payload) => {
                log::error!(
                    "weave: fiber '{}' ended with a panic outside its catch ({})",
                    fiber.display_name(),
                    payload_text(&*payload)
                );
                drop_payload(payload);
                self.finish(fiber);
            }
        }
    }

    /// First run: pin the fiber here and make its coroutine on the stack it
    /// was spawned with.
    fn start(&self, fiber: &FiberRef, body: &mut Body) {
        let Body::New(stack) = std::mem::replace(body, Body::Gone) else {
            unreachable!()
        };
        fiber.owner.store(self.index, Ordering::Release);
        let slot = self.fibers.borrow_mut().insert(fiber.clone());
        fiber.slot.store(slot, Ordering::Relaxed);
        // SAFETY: the first run, on the owner, with the body taken out of
        // `New` just above.
        *body = Body::Running(unsafe { fiber.start_coroutine(stack) });
    }

    fn finish(&self, fiber: FiberRef) {
        // SAFETY: the coroutine just returned on this thread; nothing else
        // touches the body of a finished fiber.
        let body = unsafe { &mut *fiber.body.get() };
        // The stack goes back to the pool as the coroutine drops.
        drop(std::mem::replace(body, Body::Gone));
        self.fibers
            .borrow_mut()
            .remove(fiber.slot.load(Ordering::Relaxed));
        self.retire(&fiber);
    }

    fn retire(&self, fiber: &RawFiber) {
        fiber.mark_done();
    }

    /// Runtime shutdown, on this worker's thread, with the cancellation
    /// mechanism (see `fiber::cancel`):
    ///
    /// 1. Fibers that never started are dropped (their join handles report
    ///    them cancelled); so is every new fiber that shows up later.
    /// 2. Every started fiber is cancelled, once: a parked one is requeued
    ///    and unwinds from its park point.
    /// 3. The worker keeps running its fibers, polling I/O, firing timers
    ///    and taking wakeups from other threads, until all have finished: a
    ///    destructor that waits (for a lock held on another worker, a
    ///    flush) waits for real, and nothing spins.
    /// 4. Fibers still parked after `SHUTDOWN_UNWIND_LIMIT` are abandoned:
    ///    their stacks are leaked, never resumed, and each is logged; their
    ///    join handles report them cancelled.
    fn shutdown(&self) {
        self.shutting_down.set(true);
        let fibers: Vec<FiberRef> = self.fibers.borrow().iter().cloned().collect();
        for f in &fibers {
            f.cancel();
        }
        drop(fibers);
        let limit = Instant::now() + super::SHUTDOWN_UNWIND_LIMIT;
        loop {
            while let Some(f) = self.local.pop() {
                drop_unstarted(f);
            }
            cancel_queued(&self.remote().pinned);
            let inbox = &self.remote().inbox;
            while let Some(f) = steal_one(inbox) {
                self.ready.borrow_mut().push_back(f);
            }
            let next = self.ready.borrow_mut().pop_front();
            if let Some(f) = next {
                // SAFETY: popped from a queue: this worker owns its body.
                if let Body::New(..) = unsafe { &*f.body.get() } {
                    drop_unstarted(f);
                } else {
                    self.run_fiber(f);
                }
                continue;
            }
            if self.fibers.borrow().is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= limit {
                self.abandon_parked();
                break;
            }
            // Wait for I/O, a timer or a wakeup, as `sleep` does.
            let timeout = self
                .timers
                .borrow_mut()
                .next_deadline()
                .map_or(limit, |d| d.min(limit))
                .saturating_duration_since(now);
            let remote = self.remote();
            remote.sleeping.store(true, Ordering::SeqCst);
            let timeout = if remote.inbox.is_empty() && remote.pinned.is_empty() {
                timeout
            } else {
                Duration::ZERO
            };
            self.poll_io(Some(timeout), false);
            remote.sleeping.store(false, Ordering::SeqCst);
            self.fire_timers();
        }
        *self.timers.borrow_mut() = Timers::new();
        self.release_io();
    }

    /// Gives up on fibers that did not finish unwinding in time.
    fn abandon_parked(&self) {
        let fibers = self.fibers.borrow_mut().drain();
        for fiber in fibers {
            log::error!(
                "weave: fiber '{}' was still parked {} s after its runtime began to shut down (a destructor waits for something that does not come); its stack is leaked",
                fiber.display_name(),
                super::SHUTDOWN_UNWIND_LIMIT.as_secs()
            );
            // SAFETY: the fiber is parked on this (its owner) worker, which
            // runs nothing else any more.
            let body = unsafe { &mut *fiber.body.get() };
            if let Body::Running(co) = std::mem::replace(body, Body::Gone) {
                // Never resumed nor unwound: resuming a stack that is in the
                // middle of an unwind with a second unwind would abort.
                std::mem::forget(co);
            }
            // Its completer (or a detached fiber's live count) sits on the
            // leaked stack: report it cancelled from here, so its join
            // handle still gets its one result, and count it ended.
            if fiber.abandon() {
                self.shared.live_fibers.fetch_sub(1, Ordering::SeqCst);
            }
            self.retire(&fiber);
        }
    }
}

/// Drops a fiber that never ran; its join handle reports it cancelled.
///
/// Any thread may call it for a fiber it took out of a queue that holds only
/// fibers that have not started (the injector, a worker's stealable or
/// pinned queue).
pub(crate) fn drop_unstarted(fiber: FiberRef) {
    // SAFETY: the fiber was just taken out of a queue and never started, so
    // no other thread can reach its body.
    let body = unsafe { &mut *fiber.body.get() };
    let old = std::mem::replace(body, Body::Gone);
    debug_assert!(!matches!(old, Body::Running(_)), "fiber already started");
    let Body::New(stack) = old else {
        // Already dropped: its closure is gone and its end was reported.
        fiber.mark_done();
        return;
    };
    // The stack goes back to its pool.
    drop(stack);
    // The closure's captures are user values, so their destructors run
    // under a catch; the fiber is reported cancelled to its join handle
    // after them, even when one panics.
    // SAFETY: the body was `New` (never started) and is `Gone` now.
    let dropped = panic::catch_unwind(AssertUnwindSafe(|| unsafe {
        fiber.drop_closure_unstarted()
    }));
    if let Err(payload) = dropped {
        log::error!(
            "weave: fiber '{}': dropping its unstarted closure panicked ({})",
            fiber.display_name(),
            payload_text(&*payload)
        );
        drop_payload(payload);
    }
    fiber.mark_done();
}

/// Makes the coroutine of the fiber at `fiber` that runs `body` on `stack`,
/// on the fiber's first run. The body catches the user's panics itself;
/// the catch here is the last line, so that nothing unwinds into the
/// worker.
pub(crate) fn make_coroutine(
    fiber: *const RawFiber,
    stack: FiberStack,
    body: impl FnOnce() + 'static,
) -> FiberCoroutine {
    let me = fiber as usize;
    Coroutine::with_stack(stack, move |yielder, ()| {
        let me = me as *const RawFiber;
        // SAFETY: the fiber is alive (the worker's table holds it until
        // the coroutine finishes) and only its own code reads `yielder`.
        unsafe { *(*me).yielder.get() = yielder as *const _ };
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(body)) {
            // SAFETY: as above.
            let name = unsafe { (*me).display_name() };
            log::error!(
                "weave: fiber '{name}': a panic escaped the fiber's body ({})",
                payload_text(&*payload)
            );
            drop_payload(payload);
        }
    })
}

/// Takes every fiber out of `q`, a queue of fibers that have not started,
/// and cancels it. Returns how many there were.
pub(crate) fn cancel_queued(q: &Injector<FiberRef>) -> usize {
    let mut n = 0;
    while let Some(f) = steal_one(q) {
        drop_unstarted(f);
        n += 1;
    }
    n
}

/// The message of a panic payload, for logs.
pub(crate) fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a non-string payload"
    }
}

pub(crate) fn steal_one(q: &Injector<FiberRef>) -> Option<FiberRef> {
    loop {
        match q.steal() {
            Steal::Success(f) => return Some(f),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

fn steal_batch(
    from: &Stealer<FiberRef>,
    into: &crossbeam_deque::Worker<FiberRef>,
) -> Option<FiberRef> {
    loop {
        match from.steal_batch_and_pop(into) {
            Steal::Success(f) => return Some(f),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

/// Started fibers of one worker, by slot.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<FiberRef>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, f: FiberRef) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(f);
                i
            }
            None => {
                self.entries.push(Some(f));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            if e.take().is_some() {
                self.free.push(i);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &FiberRef> {
        self.entries.iter().flatten()
    }

    fn is_empty(&self) -> bool {
        self.entries.len() == self.free.len()
    }

    fn drain(&mut self) -> Vec<FiberRef> {
        self.free.clear();
        self.entries.drain(..).flatten().collect()
    }
}
