//! The waiter queue every primitive of [`crate::sync`] blocks on.
//!
//! # Shape
//!
//! Each primitive keeps its state and one or more [`WaitQueue`]s inside a
//! `std::sync::Mutex`. The critical sections are a handful of instructions:
//! check a counter, push or pop a `VecDeque`. No std lock is ever held across
//! a park, and no user code (a message's destructor, a closure) ever runs
//! under one.
//!
//! A waiter is a small shared node, a `notified` flag, queued beside the
//! [`Unparker`] of the fiber or thread that waits. The queue is FIFO.
//!
//! (The receiver of an `mpsc` channel, the only waiter of its kind, waits in
//! a slot of the channel instead of a queue node: the same protocol, with a
//! flag kept in the channel; see `chan.rs`.)
//!
//! # Protocol
//!
//! Waiting (the blocked side), all in [`Pending`]:
//!
//! 1. Under the primitive's lock, check the condition. If it holds, done.
//! 2. Still under the lock, push a node for the caller on the queue.
//! 3. Release the lock.
//! 4. Park until the node's `notified` flag is set or the deadline passes.
//!    Parking may return spuriously; the loop re-checks the flag.
//! 5. Re-take the lock and settle the node: if it was notified, the notifier
//!    already removed it; if not (timeout), remove it now. Then go back to 1.
//!
//! Notifying (the side that makes the condition true), under the same lock:
//! change the state, pop the first node, set its flag, and after releasing
//! the lock unpark it ([`Wakeups`] does that when dropped).
//!
//! # Why no wakeup is lost
//!
//! The condition is checked and the node pushed under one critical section
//! (steps 1-2), and the notifier changes the state and pops nodes under the
//! same lock. So a notifier either runs before step 1 (and the waiter sees the
//! condition true), or after step 2 (and finds the node). Between steps 3 and
//! 4 an unpark may arrive before the park: fibers and threads both keep it as
//! a token, so the park returns at once. And the flag, not the return of the
//! park, is what the waiter trusts.
//!
//! # Wakeups are never dropped on the floor
//!
//! A wakeup is a fact recorded in the node (`notified`) under the lock, not
//! just an unpark in flight. In step 5 a waiter whose deadline passed *after*
//! it was notified learns that it was notified, and must act on it. What
//! acting means depends on the queue:
//!
//! - **hand-off queues** (`Mutex`, `RwLock`, `Semaphore`): the notifier
//!   already gave the waiter what it asked for (the lock, a permit). A
//!   notified waiter owns it, even past its deadline.
//! - **hint queues** (channels, `Condvar`, `WaitGroup`, `Barrier`): the
//!   waiter re-checks the condition under the lock *before* looking at its
//!   deadline; a condition that still holds is taken, so the wakeup is used.
//!   If it no longer holds, someone else consumed what the wakeup announced
//!   and nothing is owed to the next waiter.
//!
//! The only way a waiter leaves without settling is unwinding (a runtime that
//! shuts down drops its parked fibers and unwinds their stacks). [`Pending`]'s
//! destructor settles the node then, and hands a wakeup it received on to the
//! next waiter (or releases what was handed to it), so an unwound fiber never
//! swallows a wakeup that other waiters, perhaps on another runtime, wait for.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::fiber::park_until;
use crate::fiber::raw::Unparker;

/// Locks one of the internal std mutexes. They guard no user invariant (no
/// user code runs under them), so poisoning is ignored.
pub(crate) fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One blocked fiber or thread: the flag its notifier sets. (Who to wake is
/// kept beside the node in the queue, so the notifier can move it out
/// instead of cloning it.)
#[derive(Debug)]
struct Node {
    /// Set (under the primitive's lock) by the notifier when it pops the node.
    notified: AtomicBool,
}

thread_local! {
    /// One spare node per thread: most waits on a thread are sequential, so
    /// reusing the last node saves an allocation and a free on every wait.
    static SPARE: Cell<Option<Arc<Node>>> = const { Cell::new(None) };
}

impl Node {
    /// A fresh (not notified) node: the thread's spare if there is one.
    fn take() -> Arc<Node> {
        if let Some(mut node) = SPARE.try_with(Cell::take).ok().flatten() {
            if let Some(n) = Arc::get_mut(&mut node) {
                *n.notified.get_mut() = false;
                return node;
            }
        }
        Arc::new(Node {
            notified: AtomicBool::new(false),
        })
    }
}

/// The waiter's own handle on its node.
#[derive(Debug)]
pub(crate) struct Waiter {
    node: Arc<Node>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Settled: the queue no longer holds the node, so this is normally
        // the last reference and the node can be kept for the next wait.
        if Arc::get_mut(&mut self.node).is_some() {
            let node = self.node.clone();
            // During thread teardown the spare is simply freed.
            let _ = SPARE.try_with(|s| s.set(Some(node)));
        }
    }
}

impl Waiter {
    /// Parks the caller until the node is notified or `deadline` passes.
    /// Returns without the primitive's lock held; the caller settles the node
    /// with [`WaitQueue::settle`] under the lock.
    fn park(&self, deadline: Option<Instant>) {
        while !self.node.notified.load(Ordering::Acquire) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            park_until(deadline);
        }
    }
}

/// Where a new waiter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pos {
    /// The back: a waiter arriving for the first time.
    Back,
    /// The front: a waiter that was woken but lost the race for what the
    /// wakeup announced, and goes back to the head of the line so that it is
    /// not starved by later arrivals.
    Front,
}

/// A FIFO of blocked fibers and threads. Always used under the lock of the
/// primitive that owns it.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    nodes: VecDeque<(Arc<Node>, Unparker)>,
}

impl WaitQueue {
    /// An empty queue.
    pub(crate) const fn new() -> WaitQueue {
        WaitQueue {
            nodes: VecDeque::new(),
        }
    }

    /// True when nobody waits (notified waiters are no longer counted).
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of waiters not yet notified.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Enqueues the caller.
    fn push(&mut self, pos: Pos) -> Waiter {
        let node = Node::take();
        let entry = (node.clone(), Unparker::current());
        match pos {
            Pos::Back => self.nodes.push_back(entry),
            Pos::Front => self.nodes.push_front(entry),
        }
        Waiter { node }
    }

    /// Pops the first waiter and marks it notified. Its unpark is queued on
    /// `wake`, to run once the caller released its lock.
    pub(crate) fn notify_one(&mut self, wake: &mut Wakeups) -> bool {
        match self.nodes.pop_front() {
            Some((node, unparker)) => {
                node.notified.store(true, Ordering::Release);
                wake.push(unparker);
                true
            }
            None => false,
        }
    }

    /// Notifies every waiter (see [`notify_one`](Self::notify_one)).
    pub(crate) fn notify_all(&mut self, wake: &mut Wakeups) {
        while self.notify_one(wake) {}
    }

    /// Settles the caller's node after a park: returns `true` if it was
    /// notified (the notifier already removed it), else removes it and
    /// returns `false`.
    fn settle(&mut self, w: &Waiter) -> bool {
        if w.node.notified.load(Ordering::Acquire) {
            return true;
        }
        if let Some(i) = self.nodes.iter().position(|(n, _)| Arc::ptr_eq(n, &w.node)) {
            self.nodes.remove(i);
        }
        false
    }
}

/// Unparks collected under a lock, delivered when this value drops: drop it
/// after the lock guard (or call [`wake`](Wakeups::wake)).
#[derive(Debug, Default)]
#[must_use = "dropping Wakeups unparks now; keep it until the lock is released"]
pub(crate) struct Wakeups {
    one: Option<Unparker>,
    more: Vec<Unparker>,
}

impl Wakeups {
    /// Nothing to wake yet.
    pub(crate) const fn new() -> Wakeups {
        Wakeups {
            one: None,
            more: Vec::new(),
        }
    }

    /// Adds one unpark.
    pub(crate) fn push(&mut self, u: Unparker) {
        if self.one.is_none() {
            self.one = Some(u);
        } else {
            self.more.push(u);
        }
    }

    /// Unparks everyone collected (same as dropping it).
    pub(crate) fn wake(self) {}
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if let Some(u) = self.one.take() {
            u.unpark_owned();
        }
        if !self.more.is_empty() {
            for u in self.more.drain(..) {
                u.unpark_owned();
            }
        }
    }
}

/// Fibers and threads in a [`Select`](crate::Select) that watch one
/// primitive: unlike a [`WaitQueue`], every watcher is told of every change
/// (they only look; a wakeup meant for a real waiter never goes to a
/// watcher, so a selector that then picks another arm loses nobody's
/// event). Notifying empties the list; a selector registers again before
/// each wait. Used under the primitive's lock.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    list: Vec<(u64, Unparker)>,
}

impl Watchers {
    /// An empty list.
    pub(crate) const fn new() -> Watchers {
        Watchers { list: Vec::new() }
    }

    /// Adds watcher `id`.
    pub(crate) fn add(&mut self, id: u64, u: &Unparker) {
        self.list.push((id, u.clone()));
    }

    /// Removes watcher `id`, if it is still there.
    pub(crate) fn remove(&mut self, id: u64) {
        self.list.retain(|(i, _)| *i != id);
    }

    /// Wakes and removes every watcher.
    #[inline]
    pub(crate) fn notify_all(&mut self, wake: &mut Wakeups) {
        if !self.list.is_empty() {
            for (_, u) in self.list.drain(..) {
                wake.push(u);
            }
        }
    }
}

/// Selects one queue inside a primitive's state.
pub(crate) type QueueOf<S> = fn(&mut S) -> &mut WaitQueue;

/// A waiter between "enqueued" (step 2) and "settled" (step 5). Created with
/// the primitive's lock held; the caller then releases the lock (and may
/// release other things, as `Condvar::wait` releases the user's mutex) and
/// calls [`wait`](Pending::wait).
///
/// If the waiting code unwinds, the destructor settles the node under the
/// lock and calls `on_unwind(state, notified)`, whose result is dropped after
/// the lock is released (so it may carry [`Wakeups`] and values whose
/// destructors must not run under the lock).
pub(crate) struct Pending<'a, S, F, R>
where
    F: FnOnce(&mut S, bool) -> R,
{
    lock: &'a Mutex<S>,
    queue: QueueOf<S>,
    waiter: Option<Waiter>,
    on_unwind: Option<F>,
}

impl<'a, S, F, R> Pending<'a, S, F, R>
where
    F: FnOnce(&mut S, bool) -> R,
{
    /// Enqueues the caller on `queue(state)`. `state` must be the content of
    /// `lock`, locked by the caller.
    pub(crate) fn new(
        lock: &'a Mutex<S>,
        state: &mut S,
        queue: QueueOf<S>,
        pos: Pos,
        on_unwind: F,
    ) -> Self {
        let waiter = queue(state).push(pos);
        Pending {
            lock,
            queue,
            waiter: Some(waiter),
            on_unwind: Some(on_unwind),
        }
    }

    /// Parks until notified or until `deadline`, then re-takes the lock and
    /// settles the node. Returns the lock guard and whether the waiter was
    /// notified. Must be called without the lock held.
    pub(crate) fn wait(mut self, deadline: Option<Instant>) -> (MutexGuard<'a, S>, bool) {
        self.waiter
            .as_ref()
            .expect("a pending waiter waits once")
            .park(deadline);
        let waiter = self.waiter.take().expect("a pending waiter waits once");
        let mut st = lock(self.lock);
        let notified = (self.queue)(&mut st).settle(&waiter);
        (st, notified)
    }
}

impl<S, F, R> Drop for Pending<'_, S, F, R>
where
    F: FnOnce(&mut S, bool) -> R,
{
    fn drop(&mut self) {
        let (Some(waiter), Some(on_unwind)) = (self.waiter.take(), self.on_unwind.take()) else {
            return;
        };
        let leftovers = {
            let mut st = lock(self.lock);
            let notified = (self.queue)(&mut st).settle(&waiter);
            on_unwind(&mut st, notified)
        };
        drop(leftovers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_settle() {
        let m = Mutex::new(WaitQueue::new());
        let mut q = lock(&m);
        let a = q.push(Pos::Back);
        let b = q.push(Pos::Back);
        let c = q.push(Pos::Front);
        assert_eq!(q.len(), 3);
        let mut wake = Wakeups::new();
        assert!(q.notify_one(&mut wake));
        // `c` went to the front.
        assert!(q.settle(&c));
        assert!(!q.settle(&a));
        assert_eq!(q.len(), 1);
        q.notify_all(&mut wake);
        assert!(q.settle(&b));
        assert!(q.is_empty());
        assert!(!q.notify_one(&mut wake));
        drop(q);
        wake.wake();
    }

    #[test]
    fn timed_out_waiter_is_removed() {
        let m = Mutex::new(WaitQueue::new());
        let mut g = lock(&m);
        let p = Pending::new(&m, &mut g, |q| q, Pos::Back, |_, _| ());
        drop(g);
        let (q, notified) = p.wait(Some(Instant::now()));
        assert!(!notified);
        assert!(q.is_empty());
    }

    #[test]
    fn unwinding_waiter_hands_its_wakeup_on() {
        let m = Mutex::new(WaitQueue::new());
        let mut g = lock(&m);
        let other = g.push(Pos::Back);
        let p = Pending::new(
            &m,
            &mut g,
            |q| q,
            Pos::Front,
            |q: &mut WaitQueue, notified| {
                let mut w = Wakeups::new();
                if notified {
                    q.notify_one(&mut w);
                }
                w
            },
        );
        let mut w = Wakeups::new();
        assert!(g.notify_one(&mut w)); // notifies the pending one (front)
        drop(g);
        drop(p); // as if its fiber were unwound before it settled
        let mut g = lock(&m);
        assert!(g.settle(&other), "the wakeup was passed on");
        drop(g);
        w.wake();
    }
}
