//! loom model of a socket's waiters (`src/io/waiters.rs`), with the fibers
//! of the state-machine model (`tests::Fiber`: its park/unpark state word
//! and its owner's run queue) as the waiters.
//!
//! The waiting side does what `IoSource::io_loop` and `IoSource::wait` do:
//! read the readiness word, try the "system call" (a flag standing for the
//! kernel's receive queue) when the bit is set or the socket is not yet
//! registered, clear the bit on `WouldBlock`, then add itself and park.
//! The poller side does what the kernel and `ScheduledIo::dispatch` do: the
//! data arrives, then the event sets the bit and wakes the waiters.
//!
//! A lost wakeup leaves a fiber parked for good, which loom reports as a
//! deadlock. Every test also checks, after every thread joined and the
//! waiters were dropped, that no count of a fiber is left over or released
//! twice (loom's `Arc` checks the latter itself).

use crate::tests::Fiber;
use crate::waiters::{Waiter, Waiters, READ, WRITE};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

impl Waiter for Arc<Fiber> {
    fn into_raw(self) -> usize {
        Arc::into_raw(self) as usize
    }

    unsafe fn from_raw(raw: usize) -> Self {
        unsafe { Arc::from_raw(raw as *const Fiber) }
    }

    fn raw(&self) -> usize {
        Arc::as_ptr(self) as usize
    }
}

/// The hook of the model: a number.
type Io = Waiters<Arc<Fiber>, usize>;

/// `ScheduledIo::dispatch`'s wakeup: `unpark_owned`.
fn wake(f: Arc<Fiber>) {
    f.unpark();
}

/// A fiber waiting for `bit` as `IoSource::io_loop` does, until the
/// "system call" finds `data` set.
fn wait_for(io: &Io, me: &Arc<Fiber>, bit: usize, data: &AtomicBool) {
    // Unregistered at first: the first try always makes the call.
    let mut registered = false;
    loop {
        let snapshot = io.load();
        if !registered || snapshot & bit != 0 {
            if data.load(Ordering::SeqCst) {
                return;
            }
            io.clear(bit, snapshot);
        }
        registered = true;
        if io.add(bit, me) {
            me.park();
        }
    }
}

/// The kernel queues data for the socket, then the poller reports `bits`.
fn event(io: &Arc<Io>, data: &[&Arc<AtomicBool>], bits: usize) -> thread::JoinHandle<()> {
    let io = io.clone();
    let data: Vec<_> = data.iter().map(|d| Arc::clone(d)).collect();
    thread::spawn(move || {
        for d in &data {
            d.store(true, Ordering::SeqCst);
        }
        assert!(io.set(bits, wake).is_none());
    })
}

/// Three threads (two fibers and the poller) at loom's full depth take
/// hours; three preemptions take under a minute and cover every order of
/// the protocol's few steps.
fn model_three(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Drops the waiters, then checks each fiber's count is back to the
/// test's own.
fn check_counts(io: Arc<Io>, fibers: &[&Arc<Fiber>]) {
    drop(Arc::try_unwrap(io).ok().expect("waiters still shared"));
    for f in fibers {
        assert_eq!(Arc::strong_count(f), 1, "a waiter's count was left over");
    }
}

/// One reader, one event: the reader is woken, through the slot or by
/// seeing the bit.
#[test]
fn one_reader_is_never_lost() {
    loom::model(|| {
        let io = Arc::new(Io::default());
        let data = Arc::new(AtomicBool::new(false));
        let reader = Fiber::new();
        let t = event(&io, &[&data], READ);
        wait_for(&io, &reader, READ, &data);
        reader.finish();
        t.join().unwrap();
        reader.check_end();
        check_counts(io, &[&reader]);
    });
}

/// Two fibers wait on one socket, one on this thread for `a_bit` and one on
/// another for `b_bit`, each for its own "kernel" flag unless `same_data`;
/// one event reports both bits. Both must be woken.
fn two_waiters(a_bit: usize, b_bit: usize, same_data: bool) {
    let io = Arc::new(Io::default());
    let data_a = Arc::new(AtomicBool::new(false));
    let data_b = match same_data {
        true => data_a.clone(),
        false => Arc::new(AtomicBool::new(false)),
    };
    let (a, b) = (Fiber::new(), Fiber::new());
    let t = event(&io, &[&data_a, &data_b], a_bit | b_bit);
    let other = {
        let (io, b, data_b) = (io.clone(), b.clone(), data_b.clone());
        thread::spawn(move || {
            wait_for(&io, &b, b_bit, &data_b);
            b.finish();
        })
    };
    wait_for(&io, &a, a_bit, &data_a);
    a.finish();
    t.join().unwrap();
    other.join().unwrap();
    a.check_end();
    b.check_end();
    check_counts(io, &[&a, &b]);
}

/// A reader and a writer on one socket, one event for both: each is
/// woken from its own slot.
#[test]
fn reader_and_writer_are_both_woken() {
    model_three(|| two_waiters(READ, WRITE, false));
}

/// Two readers of one socket: one takes the slot, the other the locked
/// list; one event wakes both.
#[test]
fn a_crowded_reader_is_never_lost() {
    model_three(|| two_waiters(READ, READ, true));
}

/// A waiter that withdraws (its timeout expired) while the poller wakes
/// it: the slot's count is released exactly once, by one or the other.
#[test]
fn withdrawal_races_the_poller() {
    loom::model(|| {
        let io = Arc::new(Io::default());
        let data = Arc::new(AtomicBool::new(false));
        let f = Fiber::new();
        let t = event(&io, &[&data], READ);
        if io.add(READ, &f) {
            // The timer fired instead of the event: withdraw, as the
            // `Withdraw` guard of `IoSource::wait` does.
            io.remove(READ, &f);
        }
        t.join().unwrap();
        check_counts(io, &[&f]);
    });
}

/// A fiber whose wait ended otherwise (a timer) stays in the slot and
/// waits again: the second wait keeps the slot's count instead of taking
/// another, and the event still wakes it.
#[test]
fn a_second_wait_from_the_slot_is_never_lost() {
    loom::model(|| {
        let io = Arc::new(Io::default());
        let data = Arc::new(AtomicBool::new(false));
        let f = Fiber::new();
        // First wait, ended by something else than the event.
        assert!(io.add(READ, &f));
        let t = event(&io, &[&data], READ);
        wait_for(&io, &f, READ, &data);
        f.finish();
        t.join().unwrap();
        check_counts(io, &[&f]);
    });
}

/// A select watches the socket unconditionally, then asks the kernel; it
/// parks only if the kernel said "not ready", and the event wakes it.
#[test]
fn a_watch_is_never_lost() {
    loom::model(|| {
        let io = Arc::new(Io::default());
        let data = Arc::new(AtomicBool::new(false));
        let f = Fiber::new();
        let t = event(&io, &[&data], READ);
        io.watch(READ, &f);
        while !data.load(Ordering::SeqCst) {
            f.park();
        }
        io.remove(READ, &f);
        f.finish();
        t.join().unwrap();
        check_counts(io, &[&f]);
    });
}

/// Request mode's readability hook: handed over while the socket is not
/// readable, it comes back from the event's `set`; refused if the event
/// was already recorded. Never both, never neither.
#[test]
fn a_hook_is_delivered_or_refused() {
    loom::model(|| {
        let io = Arc::new(Io::default());
        let delivered = Arc::new(AtomicUsize::new(0));
        let t = {
            let (io, delivered) = (io.clone(), delivered.clone());
            thread::spawn(move || {
                if let Some(h) = io.set(READ, wake) {
                    delivered.store(h, Ordering::SeqCst);
                }
            })
        };
        let accepted = io.set_hook(7);
        t.join().unwrap();
        let delivered = delivered.load(Ordering::SeqCst);
        assert_eq!(
            accepted,
            delivered == 7,
            "hook lost or delivered after refusal"
        );
    });
}
