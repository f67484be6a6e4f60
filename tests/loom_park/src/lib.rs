//! loom model of weave's fiber park/unpark state machine.
//!
//! The state machine is not copied here: `state` below is weave's own
//! `src/fiber/state.rs`, compiled against loom's atomics through the
//! `state_atomic` module (weave's maps the same names to std's). The tests
//! drive it the way the runtime does and let loom explore the interleavings:
//!
//! * the fiber parks in two phases, as `weave::park` and the worker's
//!   `run_fiber` do: `try_consume_token`, else switch out; then, on the
//!   worker, `publish_parked`, and an immediate requeue if a token raced in;
//! * unparkers call `unpark` and requeue the fiber when it says so, as
//!   `RawFiber::unpark` does;
//! * the fiber's owner worker waits on a run queue (a loom mutex and condvar)
//!   until the fiber is pushed back, then runs it again.
//!
//! A lost wakeup leaves the owner waiting on an empty queue for good, which
//! loom reports as a deadlock. The queue also checks that the fiber is only
//! pushed while switched out and never while already queued, and every test
//! checks at the end that each switch-out got exactly one requeue and that
//! `DONE` ignores unparks.
//!
//! `lock_free_flags_from_two_unparkers` checks the `std::thread::park`
//! promise that every unpark publishes the unparker's earlier writes to the
//! park that returns because of it, with two unparkers that each set a
//! lock-free flag. It found two lost wakeups that are fixed in `state.rs`:
//! an unpark that found a token already pending returned after a plain load
//! (so its writes were never released to the fiber), and the worker consumed
//! a token that raced with parking by a plain store (which could overwrite a
//! second unparker's token without acquiring its writes). Both are
//! read-modify-writes now.
//!
//! `waiters_model` checks a socket's readiness word and waiter slots
//! (`src/io/waiters.rs`, compiled here against loom's atomics and mutex the
//! same way) with these fibers as the waiters: no wakeup lost between a
//! waiter and the poller, through the lock-free slot or the locked list, and
//! no fiber count left over or released twice.
//!
//! Run with `cargo test --release --manifest-path tests/loom_park/Cargo.toml`
//! (no `--cfg loom` needed; `LOOM_MAX_PREEMPTIONS` bounds the search if set).

/// The atomics `state` is written against: loom's here, std's in weave.
mod state_atomic {
    pub(crate) use loom::sync::atomic::{AtomicU8, Ordering};
}

// Only part of the file's items are used by the models.
#[allow(dead_code)]
#[path = "../../../src/fiber/state.rs"]
mod state;

/// The atomics and the mutex `waiters` is written against: loom's here,
/// std's in weave.
mod waiters_sync {
    pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Mutex, MutexGuard};
}

/// weave's `src/io/waiters.rs`: a socket's readiness word and waiter slots.
#[allow(dead_code)]
#[path = "../../../src/io/waiters.rs"]
mod waiters;

#[cfg(test)]
mod waiters_model;

#[cfg(test)]
pub(crate) mod tests {
    use crate::state::ParkState;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// The owner worker's view of the one fiber in the model.
    #[derive(Default)]
    struct Queue {
        /// The fiber switched out and has not been popped since.
        switched_out: bool,
        /// The fiber sits in the run queue.
        queued: bool,
        /// Switch-outs (parks that did not consume a token at once).
        switch_outs: usize,
        /// Pushes back to the run queue, by the worker or an unparker.
        requeues: usize,
    }

    /// A fiber with its state word and its owner's run queue.
    pub(crate) struct Fiber {
        state: ParkState,
        queue: Mutex<Queue>,
        ready: Condvar,
    }

    impl Fiber {
        pub(crate) fn new() -> Arc<Fiber> {
            Arc::new(Fiber {
                state: ParkState::new(),
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
            })
        }

        /// Pushes the fiber to its owner's run queue.
        fn requeue(&self) {
            let mut q = self.queue.lock().unwrap();
            assert!(q.switched_out, "fiber requeued while running");
            assert!(!q.queued, "fiber requeued twice for one park");
            q.queued = true;
            q.requeues += 1;
            self.ready.notify_one();
        }

        /// `RawFiber::unpark`.
        pub(crate) fn unpark(&self) {
            if self.state.unpark() {
                self.requeue();
            }
        }

        /// `weave::park` on the fiber, with the worker's half of it: returns
        /// once the fiber runs again.
        pub(crate) fn park(&self) {
            if self.state.try_consume_token() {
                return;
            }
            // Switched out (`Switch::Park`); now on the worker's stack.
            {
                let mut q = self.queue.lock().unwrap();
                q.switched_out = true;
                q.switch_outs += 1;
            }
            if !self.state.publish_parked() {
                self.requeue();
            }
            // The worker runs other fibers until this one is popped again.
            let mut q = self.queue.lock().unwrap();
            while !q.queued {
                q = self.ready.wait(q).unwrap();
            }
            q.queued = false;
            q.switched_out = false;
        }

        /// The fiber returned: the worker retires it.
        pub(crate) fn finish(&self) {
            self.state.mark_done();
        }

        /// After every thread joined: each switch-out was followed by exactly
        /// one requeue, and `DONE` is terminal.
        pub(crate) fn check_end(&self) {
            {
                let q = self.queue.lock().unwrap();
                assert!(!q.queued && !q.switched_out);
                assert_eq!(q.requeues, q.switch_outs, "requeues != switch-outs");
            }
            assert_eq!(format!("{:?}", self.state), "Done");
            assert!(!self.state.unpark(), "unpark requeued a finished fiber");
            assert!(!self.state.try_consume_token());
            assert_eq!(format!("{:?}", self.state), "Done");
        }
    }

    /// Sets `flag` and unparks, from a new thread.
    fn waker(fiber: &Arc<Fiber>, flag: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
        let (fiber, flag) = (fiber.clone(), flag.clone());
        thread::spawn(move || {
            flag.store(true, Ordering::Release);
            fiber.unpark();
        })
    }

    /// One fiber parks until a flag is set; one thread sets it and unparks.
    #[test]
    fn park_unpark() {
        loom::model(|| {
            let fiber = Fiber::new();
            let flag = Arc::new(AtomicBool::new(false));
            let t = waker(&fiber, &flag);
            while !flag.load(Ordering::Acquire) {
                fiber.park();
            }
            fiber.finish();
            t.join().unwrap();
            fiber.check_end();
        });
    }

    /// An unpark that comes before the park makes the park return at once,
    /// without a switch; the next park waits for a new unpark.
    #[test]
    fn unpark_before_park() {
        loom::model(|| {
            let fiber = Fiber::new();
            fiber.unpark();
            fiber.park();
            assert_eq!(fiber.queue.lock().unwrap().switch_outs, 0);
            let flag = Arc::new(AtomicBool::new(false));
            let t = waker(&fiber, &flag);
            while !flag.load(Ordering::Acquire) {
                fiber.park();
            }
            fiber.finish();
            t.join().unwrap();
            fiber.check_end();
        });
    }

    /// Two unparks in a row leave one token, never two requeues.
    #[test]
    fn unpark_twice() {
        loom::model(|| {
            let fiber = Fiber::new();
            let flag = Arc::new(AtomicBool::new(false));
            let t = {
                let (fiber, flag) = (fiber.clone(), flag.clone());
                thread::spawn(move || {
                    flag.store(true, Ordering::Release);
                    fiber.unpark();
                    fiber.unpark();
                })
            };
            while !flag.load(Ordering::Acquire) {
                fiber.park();
            }
            fiber.finish();
            t.join().unwrap();
            fiber.check_end();
        });
    }

    /// Two threads unpark at once; the condition is kept under a lock, as in
    /// weave's `sync` primitives (a waiter checks and registers under the
    /// lock, a waker updates and takes the waiter under it, then unparks).
    ///
    /// Three threads with a lock and a condvar: the search is bounded to
    /// three preemptions (a few seconds; unbounded takes minutes), unless
    /// `LOOM_MAX_PREEMPTIONS` says otherwise.
    #[test]
    fn concurrent_unparkers() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound.get_or_insert(3);
        model.check(|| {
            let fiber = Fiber::new();
            let done = Arc::new(Mutex::new(0));
            let wakers: Vec<_> = (0..2)
                .map(|_| {
                    let (fiber, done) = (fiber.clone(), done.clone());
                    thread::spawn(move || {
                        *done.lock().unwrap() += 1;
                        fiber.unpark();
                    })
                })
                .collect();
            while *done.lock().unwrap() < 2 {
                fiber.park();
            }
            fiber.finish();
            for t in wakers {
                t.join().unwrap();
            }
            fiber.check_end();
        });
    }

    /// Two unparkers that each publish a lock-free flag: the fiber must see
    /// both flags eventually. An unpark that finds a token already pending
    /// still has to publish its own writes to the park that consumes it,
    /// so `unpark` writes the state (a compare-exchange) even then.
    #[test]
    fn lock_free_flags_from_two_unparkers() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound.get_or_insert(3);
        model.check(|| {
            let fiber = Fiber::new();
            let flags = [
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            ];
            let wakers: Vec<_> = flags.iter().map(|f| waker(&fiber, f)).collect();
            while !flags.iter().all(|f| f.load(Ordering::Acquire)) {
                fiber.park();
            }
            fiber.finish();
            for t in wakers {
                t.join().unwrap();
            }
            fiber.check_end();
        });
    }

    /// Unparks that race with the fiber finishing never requeue it, and the
    /// state stays `DONE`.
    #[test]
    fn unpark_races_done() {
        loom::model(|| {
            let fiber = Fiber::new();
            let unparkers: Vec<_> = (0..2)
                .map(|_| {
                    let fiber = fiber.clone();
                    thread::spawn(move || {
                        assert!(!fiber.state.unpark(), "requeue of a running fiber");
                    })
                })
                .collect();
            fiber.finish();
            for t in unparkers {
                t.join().unwrap();
            }
            fiber.check_end();
        });
    }

    /// A park, then finish, while an unparker unparks twice: the fiber is
    /// parked at most once, requeued once, and later unparks see `DONE`.
    #[test]
    fn park_once_then_done() {
        loom::model(|| {
            let fiber = Fiber::new();
            let t = {
                let fiber = fiber.clone();
                thread::spawn(move || {
                    fiber.unpark();
                    fiber.unpark();
                })
            };
            fiber.park();
            fiber.finish();
            t.join().unwrap();
            fiber.check_end();
        });
    }

    /// A canceller sets the cancellation word and unparks while the fiber
    /// checks the word and parks in a loop, as `weave::park` does on entry
    /// and after each switch back: the fiber always sees the request (a lost
    /// one leaves it parked for good, which loom reports as a deadlock), and
    /// only the first request asks for an unpark.
    #[test]
    fn cancel_is_never_lost() {
        loom::model(|| {
            let fiber = Fiber::new();
            let t = {
                let fiber = fiber.clone();
                thread::spawn(move || {
                    if fiber.state.request_cancel() {
                        fiber.unpark();
                    }
                    assert!(!fiber.state.request_cancel(), "second request");
                })
            };
            while !fiber.state.cancel_requested() {
                fiber.park();
            }
            fiber.finish();
            t.join().unwrap();
            fiber.check_end();
        });
    }

    /// A cancellation racing an ordinary unpark and the fiber's own park:
    /// both wakeups' writes are seen, and the fiber is requeued once per
    /// switch-out.
    #[test]
    fn cancel_races_unpark() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound.get_or_insert(3);
        model.check(|| {
            let fiber = Fiber::new();
            let flag = Arc::new(AtomicBool::new(false));
            let w = waker(&fiber, &flag);
            let c = {
                let fiber = fiber.clone();
                thread::spawn(move || {
                    if fiber.state.request_cancel() {
                        fiber.unpark();
                    }
                })
            };
            while !(fiber.state.cancel_requested() && flag.load(Ordering::Acquire)) {
                fiber.park();
            }
            fiber.finish();
            w.join().unwrap();
            c.join().unwrap();
            fiber.check_end();
        });
    }
}
