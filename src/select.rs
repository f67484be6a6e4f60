//! Select: wait in one fiber for the first of several events.
//!
//! # Shape
//!
//! [`Select`] is shaped like crossbeam-channel's: add operations (each call
//! returns the operation's index), then [`ready`](Select::ready) blocks
//! until one of them is ready and returns its index. The caller then
//! performs that operation itself, without blocking (`try_recv`,
//! `try_send`, a read, `accept`, `join`). Arms:
//!
//! | arm | ready when |
//! |---|---|
//! | [`recv`](Select::recv) | a message is there, or every sender is gone (`mpsc`, `mpmc`, `oneshot`, `broadcast` receivers) |
//! | [`send`](Select::send) | the channel has room, or every receiver is gone |
//! | [`readable`](Select::readable), [`writable`](Select::writable), [`acceptable`](Select::acceptable) | the socket is (`poll(2)` says so, or it hung up) |
//! | [`join`](Select::join) | the fiber finished |
//! | [`deadline`](Select::deadline), [`timeout`](Select::timeout) | the time has come |
//!
//! # No event is lost
//!
//! Selecting only *looks*. A selector does not take a message or a
//! connection, and a wakeup meant for a real receiver or sender never goes
//! to it: each primitive keeps selectors on a separate watcher list, and
//! tells every watcher of every change. So an arm that loses (or a
//! [`Select`] that is dropped, or a selecting fiber that is cancelled) costs
//! nobody anything. The flip side: with several consumers (an `mpmc`
//! receiver shared by fibers), another one may take the message between
//! `ready` and `try_recv`; the `try_` call then fails and the caller selects
//! again, as with crossbeam's `Select::ready`.
//!
//! # The wait
//!
//! 1. Look at every arm, starting from a random one: the first ready arm
//!    wins. With several ready, each wins about as often (fairness).
//! 2. If none is ready, register the fiber (or thread) as a watcher of every
//!    arm, then look again: a change between the two looks has already
//!    queued an unpark.
//! 3. Park until a watcher is woken or the earliest deadline arm is due;
//!    withdraw from every arm; go to 1.
//!
//! The park is a cancellation point, like every blocking call. On a plain
//! thread, socket arms cannot be watched (their readiness comes from a
//! worker's poller); a thread re-checks them every 10 ms.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fiber::raw::Unparker;
use crate::fiber::{park_until, JoinHandle};

pub(crate) mod imp {
    //! What every selectable primitive implements.

    use crate::fiber::raw::Unparker;

    /// One selector, as registered with a primitive.
    #[derive(Debug)]
    pub struct Watcher {
        pub(crate) id: u64,
        pub(crate) unparker: Unparker,
    }

    /// A primitive (with the operation chosen) that a [`Select`] can wait
    /// on.
    ///
    /// [`Select`]: crate::Select
    pub trait Source {
        /// True when the operation would not block now.
        fn is_ready(&self) -> bool;
        /// Registers `w`: the next change that may make the operation
        /// ready unparks it. Returns `false` if this source cannot watch
        /// for `w` (socket arms on a plain thread): the selector then polls.
        fn watch(&self, w: &Watcher) -> bool;
        /// Withdraws `w` if it is still registered.
        fn unwatch(&self, w: &Watcher);
    }

    /// Sealed halves of the public arm traits.
    pub trait RecvArm {
        /// The receive arm.
        fn recv_arm(&self) -> Box<dyn Source + '_>;
    }

    /// See [`RecvArm`].
    pub trait SendArm {
        /// The send arm.
        fn send_arm(&self) -> Box<dyn Source + '_>;
    }

    /// See [`RecvArm`].
    pub trait IoArm {
        /// The readiness arm for reading (`write == false`) or writing.
        fn io_arm(&self, write: bool) -> Box<dyn Source + '_>;
    }
}

use imp::{Source, Watcher};

/// Channel receivers a [`Select`] can wait on: `mpsc`, `mpmc`, `oneshot`
/// and `broadcast` receivers.
pub trait Receivable: imp::RecvArm {}

/// Channel senders a [`Select`] can wait on for room: `mpsc` (`Sender`,
/// `SyncSender`) and `mpmc` senders.
pub trait Sendable: imp::SendArm {}

/// Sockets a [`Select`] can wait on for readiness: every type of
/// [`crate::net`].
pub trait Pollable: imp::IoArm {}

enum Arm<'a> {
    Source(Box<dyn Source + 'a>),
    Deadline(Instant),
}

/// Waits for the first of several operations to become ready.
///
/// See the [module docs](crate::select) for the arms and the guarantees.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use weave::sync::mpsc;
///
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let (tx1, rx1) = mpsc::channel::<&str>();
///     let (_tx2, rx2) = mpsc::channel::<&str>();
///     weave::spawn(move || tx1.send("one").unwrap());
///
///     let mut sel = weave::Select::new();
///     let a = sel.recv(&rx1);
///     let b = sel.recv(&rx2);
///     let t = sel.timeout(Duration::from_secs(10));
///     match sel.ready() {
///         i if i == a => assert_eq!(rx1.try_recv(), Ok("one")),
///         i if i == b => unreachable!("nothing is sent on rx2"),
///         i if i == t => panic!("timed out"),
///         _ => unreachable!(),
///     }
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Select<'a> {
    arms: Vec<Option<Arm<'a>>>,
}

impl fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Select")
            .field("arms", &self.arms.iter().filter(|a| a.is_some()).count())
            .finish()
    }
}

impl Default for Select<'_> {
    fn default() -> Self {
        Select::new()
    }
}

/// The error of [`Select::ready_timeout`] and
/// [`Select::ready_deadline`]: no operation became ready in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyTimeoutError;

impl fmt::Display for ReadyTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting on select")
    }
}

impl std::error::Error for ReadyTimeoutError {}

impl<'a> Select<'a> {
    /// An empty selection.
    pub fn new() -> Select<'a> {
        Select { arms: Vec::new() }
    }

    fn push(&mut self, arm: Arm<'a>) -> usize {
        self.arms.push(Some(arm));
        self.arms.len() - 1
    }

    /// Adds a receive: ready when a message is there or the channel is
    /// disconnected (so `try_recv` returns at once).
    pub fn recv<R: Receivable + ?Sized>(&mut self, r: &'a R) -> usize {
        self.push(Arm::Source(r.recv_arm()))
    }

    /// Adds a send: ready when the channel has room or is disconnected (so
    /// `try_send` returns at once). A rendezvous channel has room while a
    /// receiver is blocked waiting.
    pub fn send<S: Sendable + ?Sized>(&mut self, s: &'a S) -> usize {
        self.push(Arm::Source(s.send_arm()))
    }

    /// Adds a readiness wait: ready when the socket is readable (data, end
    /// of file, an error), so a read returns at once.
    pub fn readable<P: Pollable + ?Sized>(&mut self, p: &'a P) -> usize {
        self.push(Arm::Source(p.io_arm(false)))
    }

    /// Adds a readiness wait: ready when the socket is writable (or failed).
    pub fn writable<P: Pollable + ?Sized>(&mut self, p: &'a P) -> usize {
        self.push(Arm::Source(p.io_arm(true)))
    }

    /// Adds a wait for a pending connection on a listener (its
    /// readability), so `accept` returns at once.
    pub fn acceptable<P: Pollable + ?Sized>(&mut self, p: &'a P) -> usize {
        self.readable(p)
    }

    /// Adds a wait for a fiber to finish, so `join` returns at once.
    pub fn join<T>(&mut self, h: &'a JoinHandle<T>) -> usize {
        self.push(Arm::Source(Box::new(h.join_arm())))
    }

    /// Adds a timer: ready from `at` on.
    pub fn deadline(&mut self, at: Instant) -> usize {
        self.push(Arm::Deadline(at))
    }

    /// Adds a timer: ready `after` from now on.
    pub fn timeout(&mut self, after: Duration) -> usize {
        match Instant::now().checked_add(after) {
            Some(at) => self.deadline(at),
            // Never: an arm that is never ready.
            None => self.push(Arm::Source(Box::new(Never))),
        }
    }

    /// Removes operation `index` from the selection. Other indices keep
    /// their meaning.
    ///
    /// # Panics
    ///
    /// If `index` was never returned by this selection or was removed.
    pub fn remove(&mut self, index: usize) {
        assert!(
            self.arms.get(index).is_some_and(Option::is_some),
            "weave::Select::remove: no operation {index}"
        );
        self.arms[index] = None;
    }

    /// The index of an operation that is ready now, if any (fairly chosen
    /// among the ready ones).
    pub fn try_ready(&mut self) -> Option<usize> {
        let start = next_rand() as usize;
        self.scan(start, Instant::now())
    }

    /// Blocks until an operation is ready and returns its index. A
    /// cancellation point.
    ///
    /// # Panics
    ///
    /// If the selection is empty (it would block forever).
    pub fn ready(&mut self) -> usize {
        assert!(
            self.arms.iter().any(Option::is_some),
            "weave::Select::ready on an empty selection would block forever"
        );
        self.wait(None)
            .expect("no deadline: only a ready arm returns")
    }

    /// [`ready`](Self::ready), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`ReadyTimeoutError`] if nothing became ready in time.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(d) => self.ready_deadline(d),
            None => Ok(self.ready()),
        }
    }

    /// [`ready`](Self::ready), giving up at `deadline`.
    ///
    /// # Errors
    ///
    /// [`ReadyTimeoutError`] if nothing became ready in time.
    pub fn ready_deadline(&mut self, deadline: Instant) -> Result<usize, ReadyTimeoutError> {
        self.wait(Some(deadline)).ok_or(ReadyTimeoutError)
    }

    /// The first ready arm, looking from `start` on.
    fn scan(&self, start: usize, now: Instant) -> Option<usize> {
        let n = self.arms.len();
        if n == 0 {
            return None;
        }
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| match &self.arms[i] {
                Some(Arm::Source(s)) => s.is_ready(),
                Some(Arm::Deadline(d)) => now >= *d,
                None => false,
            })
    }

    fn wait(&self, deadline: Option<Instant>) -> Option<usize> {
        let start = next_rand() as usize;
        let watcher = Watcher {
            id: next_watcher_id(),
            unparker: Unparker::current(),
        };
        // Deadlines: the caller's and every timer arm's.
        let mut until = deadline;
        for a in self.arms.iter().flatten() {
            if let Arm::Deadline(d) = a {
                until = Some(until.map_or(*d, |u| u.min(*d)));
            }
        }
        loop {
            if let Some(i) = self.scan(start, Instant::now()) {
                return Some(i);
            }
            let guard = Watching {
                sel: self,
                w: &watcher,
            };
            let mut polling = false;
            for a in self.arms.iter().flatten() {
                if let Arm::Source(s) = a {
                    polling |= !s.watch(&watcher);
                }
            }
            // Look again now that every change unparks us.
            let now = Instant::now();
            if let Some(i) = self.scan(start, now) {
                return Some(i);
            }
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            let mut park_to = until;
            if polling {
                let soon = now + Duration::from_millis(10);
                park_to = Some(park_to.map_or(soon, |u| u.min(soon)));
            }
            park_until(park_to);
            drop(guard);
        }
    }
}

/// Withdraws a selector from every arm, also when its park unwinds.
struct Watching<'s, 'a> {
    sel: &'s Select<'a>,
    w: &'s Watcher,
}

impl Drop for Watching<'_, '_> {
    fn drop(&mut self) {
        for a in self.sel.arms.iter().flatten() {
            if let Arm::Source(s) = a {
                s.unwatch(self.w);
            }
        }
    }
}

/// An arm that is never ready (a timeout too far away to represent).
struct Never;

impl Source for Never {
    fn is_ready(&self) -> bool {
        false
    }
    fn watch(&self, _: &Watcher) -> bool {
        true
    }
    fn unwatch(&self, _: &Watcher) {}
}

fn next_watcher_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A cheap per-thread random number: where a scan starts, for fairness.
fn next_rand() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static RNG: Cell<u32> = const { Cell::new(0) };
    }
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            // Seed from the address of a local and the clock.
            let seed = &x as *const u32 as usize as u64
                ^ Instant::now().elapsed().subsec_nanos() as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64);
            x = (seed as u32) | 1;
        }
        // xorshift32
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        r.set(x);
        x
    })
}
