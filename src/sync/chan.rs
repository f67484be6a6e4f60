//! The channel core shared by [`mpsc`](super::mpsc) and
//! [`mpmc`](super::mpmc): a `VecDeque` of messages and three waiter queues
//! behind one std mutex.
//!
//! # State and invariants
//!
//! - `queue` holds at most `slots()` messages: unlimited for an unbounded
//!   channel, `n` for `sync_channel(n)`, and **one** for a rendezvous channel
//!   (`n == 0`), whose single slot is only ever filled by a sender that then
//!   waits for the message to be taken (or by `try_send` when a receiver is
//!   already blocked).
//! - `recv_q`: receivers waiting for a message or for the last sender to go.
//!   Every push notifies one; the last sender's drop notifies all.
//! - `send_q`: senders waiting for a free slot. Every message taken notifies
//!   one; the last receiver's drop notifies all.
//! - `ack_q`: rendezvous only: the sender whose message sits in the slot,
//!   waiting for `taken` to pass its message's sequence number.
//! - `recv_q`, `send_q`, `ack_q` and the selectors' watcher lists live in
//!   `State::waits`, made on the first wait or watch that needs them:
//!   notifiers skip them while they do not exist (nobody to notify).
//! - `pushed`/`taken` count messages in and out; a rendezvous sender's message
//!   is taken once `taken > seq`, where `seq` was `pushed` before its push.
//! - `owned_slot`: rendezvous only: the message in the slot belongs to a
//!   sender still blocked in `send`, who takes it back (as `SendError`) if the
//!   last receiver goes first.
//!
//! - `rx` (with `Chan::rx_waiting`): `mpsc` only: the receiver slot, a
//!   single waiter without a queue node (below).
//!
//! All queues are hint queues (see [`waiter`](super::waiter)): a woken waiter
//! re-checks the condition under the lock before it looks at its deadline,
//! and a waiter that was woken but lost the race goes back to the *front*.
//!
//! # The receiver slot
//!
//! An `mpsc` channel has one receiver, so its waits need no queue: the
//! receiver finds the channel empty, stores its unparker in `rx` and sets
//! `rx_waiting`, under the lock (the same critical section as the check, so
//! no wakeup is lost); a push that finds `rx_waiting` set clears it and
//! unparks a clone of `rx` after releasing the lock. `rx_waiting` is the
//! waiter's `notified` flag: the receiver parks until it is cleared (or its
//! deadline passes), then re-takes the lock, clears it (withdrawing if it was
//! not woken) and re-checks the queue before its deadline, as every hint
//! queue does. `rx` stays set after the wait, so a fiber that receives in a
//! loop registers without cloning its unparker each time; the receiver's
//! drop clears it. A wait that unwinds withdraws from the slot; there is no
//! other receiver to hand a wakeup on to.
//!
//! The receiver is `!Sync`, but fibers of one thread may still block on it
//! together (through a thread-local, say). Only the first takes the slot;
//! the others queue on `recv_q`, and a push wakes the slot first, then the
//! queue. A woken receiver also looks at the receiver's private batch buffer
//! (unbounded channels), where another waiter may have put its message.
//!
//! # Disconnection
//!
//! The last sender's drop wakes every receiver; receivers drain what is left
//! and then get `Disconnected`. The last receiver's drop wakes every sender
//! (who get their value back in the error) and drops the buffered messages,
//! outside the lock, at once: a message never outlives the last receiver
//! (except a rendezvous sender's, which goes back to that sender).

use std::collections::VecDeque;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::error::{RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups, Watchers};
use crate::fiber::park_until;
use crate::fiber::raw::Unparker;

pub(crate) struct State<T> {
    pub(crate) queue: VecDeque<T>,
    senders: usize,
    receivers: usize,
    /// Single-receiver channels: who waits in the receiver slot (kept after
    /// the wait, so that the next wait of the same fiber reuses it).
    rx: Option<Unparker>,
    pushed: u64,
    taken: u64,
    owned_slot: bool,
    /// The waits only some channels see, made on first use (see [`Waits`]).
    waits: Option<Box<Waits>>,
}

/// Waiters that only some channels see: queued receivers (an `mpsc`
/// receiver waits in the slot instead), senders of bounded channels,
/// rendezvous senders and selectors. Kept out of line, so that an `mpsc`
/// channel nobody selects on (most of them) takes 144 bytes instead of 280
/// (`tests/alloc.rs`).
struct Waits {
    recv_q: WaitQueue,
    send_q: WaitQueue,
    ack_q: WaitQueue,
    /// Selectors waiting for a message (or disconnection).
    recv_watchers: Watchers,
    /// Selectors waiting for room (or disconnection).
    send_watchers: Watchers,
}

impl<T> State<T> {
    /// The out-of-line waiters, made now if need be: for a caller about to
    /// wait or watch.
    fn waits(&mut self) -> &mut Waits {
        self.waits.get_or_insert_with(|| {
            Box::new(Waits {
                recv_q: WaitQueue::new(),
                send_q: WaitQueue::new(),
                ack_q: WaitQueue::new(),
                recv_watchers: Watchers::new(),
                send_watchers: Watchers::new(),
            })
        })
    }

    /// The out-of-line waiters if any were ever made: for a caller about to
    /// notify (nobody to notify otherwise).
    fn waits_made(&mut self) -> Option<&mut Waits> {
        self.waits.as_deref_mut()
    }
}

/// A channel shared by its senders and receivers (through an `Arc`).
pub(crate) struct Chan<T> {
    /// `None`: unbounded; `Some(0)`: rendezvous; `Some(n)`: `n` slots.
    cap: Option<usize>,
    /// One receiver only (`mpsc`): its waits use the receiver slot.
    single_rx: bool,
    /// The receiver slot is taken: `State::rx` waits for a message. Written
    /// only under the lock; read without it by the waiting receiver, as its
    /// `notified` flag (cleared = woken, or withdrawn).
    rx_waiting: AtomicBool,
    state: Mutex<State<T>>,
}

/// True when `u` is the fiber running on this thread.
fn is_current(u: &Unparker) -> bool {
    match u {
        Unparker::Fiber(f) => crate::runtime::context::with_worker(|w| {
            w.is_some_and(|w| std::ptr::eq(w.current.get(), f.as_ptr()))
        }),
        Unparker::Thread(_) => false,
    }
}

/// Withdraws the receiver from the slot if its wait unwinds (a runtime that
/// shuts down unwinds its parked fibers). There is no other receiver to hand
/// a wakeup on to: the channel has only this one.
struct SlotGuard<'a, T> {
    chan: &'a Chan<T>,
}

impl<T> Drop for SlotGuard<'_, T> {
    fn drop(&mut self) {
        let _st = lock(&self.chan.state);
        self.chan.rx_waiting.store(false, Ordering::Relaxed);
    }
}

/// Passes a wakeup on to the next waiter of the same queue (the unwinding
/// waiter cannot use it).
fn pass_on<T>(
    q: fn(&mut State<T>) -> &mut WaitQueue,
) -> impl FnOnce(&mut State<T>, bool) -> Wakeups {
    move |st, notified| {
        let mut wake = Wakeups::new();
        if notified {
            q(st).notify_one(&mut wake);
        }
        wake
    }
}

impl<T> Chan<T> {
    /// A channel with one sender and one receiver counted. `single_rx`: the
    /// receiver cannot be cloned (`mpsc`).
    pub(crate) fn new(cap: Option<usize>, single_rx: bool) -> Chan<T> {
        Chan {
            cap,
            single_rx,
            rx_waiting: AtomicBool::new(false),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                senders: 1,
                receivers: 1,
                rx: None,
                pushed: 0,
                taken: 0,
                owned_slot: false,
                waits: None,
            }),
        }
    }

    pub(crate) fn is_unbounded(&self) -> bool {
        self.cap.is_none()
    }

    /// The capacity given at creation (`None` when unbounded).
    pub(crate) fn capacity(&self) -> Option<usize> {
        self.cap
    }

    fn has_room(&self, st: &State<T>) -> bool {
        match self.cap {
            None => true,
            Some(n) => st.queue.len() < n.max(1),
        }
    }

    pub(crate) fn add_sender(&self) {
        lock(&self.state).senders += 1;
    }

    pub(crate) fn add_receiver(&self) {
        lock(&self.state).receivers += 1;
    }

    /// The last sender's drop wakes every blocked receiver.
    pub(crate) fn drop_sender(&self) {
        let mut st = lock(&self.state);
        st.senders -= 1;
        let mut wake = Wakeups::new();
        if st.senders == 0 {
            self.notify_receiver(&mut st, &mut wake);
            if let Some(w) = st.waits_made() {
                w.recv_q.notify_all(&mut wake);
                w.recv_watchers.notify_all(&mut wake);
            }
        }
        drop(st);
        drop(wake);
    }

    /// The last receiver's drop wakes every blocked sender and drops the
    /// buffered messages (after the lock is released).
    pub(crate) fn drop_receiver(&self) {
        let mut st = lock(&self.state);
        st.receivers -= 1;
        let mut wake = Wakeups::new();
        let mut garbage = VecDeque::new();
        let mut rx = None;
        if st.receivers == 0 {
            if !st.owned_slot {
                garbage = mem::take(&mut st.queue);
            }
            rx = st.rx.take();
            if let Some(w) = st.waits_made() {
                w.send_q.notify_all(&mut wake);
                w.ack_q.notify_all(&mut wake);
                w.send_watchers.notify_all(&mut wake);
            }
        }
        drop(st);
        drop(wake);
        drop(garbage);
        drop(rx);
    }

    /// Wakes one blocked receiver: the one in the slot if it waits, else the
    /// first of `recv_q`.
    fn notify_receiver(&self, st: &mut State<T>, wake: &mut Wakeups) {
        if self.rx_waiting.load(Ordering::Relaxed) {
            self.rx_waiting.store(false, Ordering::Release);
            let who = st.rx.clone().expect("a waiting receiver left its unparker");
            wake.push(who);
        } else {
            if let Some(w) = st.waits_made() {
                w.recv_q.notify_one(wake);
            }
        }
    }

    /// True when a receiver is blocked waiting.
    fn receiver_waits(&self, st: &State<T>) -> bool {
        self.rx_waiting.load(Ordering::Relaxed)
            || st.waits.as_ref().is_some_and(|w| !w.recv_q.is_empty())
    }

    /// Pushes `v` and notifies a receiver. Caller checked receivers and room.
    fn push(&self, st: &mut State<T>, v: T, wake: &mut Wakeups) -> u64 {
        let seq = st.pushed;
        st.pushed += 1;
        st.queue.push_back(v);
        self.notify_receiver(st, wake);
        if let Some(w) = st.waits_made() {
            w.recv_watchers.notify_all(wake);
        }
        seq
    }

    /// Sends, blocking while the channel is full (and, for a rendezvous
    /// channel, until a receiver took the message).
    pub(crate) fn send(&self, v: T) -> Result<(), SendError<T>> {
        self.send_deadline(v, None)
            .map_err(|e| SendError(e.into_inner()))
    }

    /// [`send`](Self::send), giving up at `deadline`: the value comes back
    /// with `Timeout` if no slot came free (for a rendezvous channel: no
    /// receiver took it) in time.
    pub(crate) fn send_deadline(
        &self,
        v: T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        let mut st = lock(&self.state);
        let mut pos = Pos::Back;
        loop {
            if st.receivers == 0 {
                return Err(SendTimeoutError::Disconnected(v));
            }
            if self.has_room(&st) {
                break;
            }
            // A hint queue: the condition is re-checked above, before the
            // deadline, so a wakeup that came with the timeout is used.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SendTimeoutError::Timeout(v));
            }
            let p = Pending::new(
                &self.state,
                &mut st,
                |s| &mut s.waits().send_q,
                pos,
                pass_on(|s| &mut s.waits().send_q),
            );
            drop(st);
            let (g, notified) = p.wait(deadline);
            st = g;
            if notified {
                pos = Pos::Front;
            } else if deadline.is_some_and(|d| Instant::now() >= d)
                && st.receivers != 0
                && !self.has_room(&st)
            {
                return Err(SendTimeoutError::Timeout(v));
            }
        }
        let mut wake = Wakeups::new();
        let seq = self.push(&mut st, v, &mut wake);
        if self.cap != Some(0) {
            drop(st);
            drop(wake);
            return Ok(());
        }
        // Rendezvous: wait until a receiver took it.
        st.owned_slot = true;
        loop {
            if st.taken > seq {
                return Ok(());
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if st.receivers == 0 || timed_out {
                // Take the message back and free the slot; it was never
                // delivered, so it gives its number back too.
                st.owned_slot = false;
                st.pushed -= 1;
                let v = st
                    .queue
                    .pop_back()
                    .expect("a rendezvous message not taken is still in its slot");
                let mut wake = Wakeups::new();
                st.waits().send_q.notify_one(&mut wake);
                drop(st);
                drop(wake);
                return Err(if timed_out {
                    SendTimeoutError::Timeout(v)
                } else {
                    SendTimeoutError::Disconnected(v)
                });
            }
            let p = Pending::new(
                &self.state,
                &mut st,
                |s| &mut s.waits().ack_q,
                Pos::Back,
                move |s: &mut State<T>, _| {
                    // Unwinding before the message was taken: take it back
                    // (dropped after the lock) and free the slot.
                    let mut wake = Wakeups::new();
                    let mut back = None;
                    if s.taken <= seq {
                        back = s.queue.pop_back();
                        s.pushed -= 1;
                        s.owned_slot = false;
                        s.waits().send_q.notify_one(&mut wake);
                    }
                    (wake, back)
                },
            );
            drop(st);
            mem::take(&mut wake).wake();
            st = p.wait(deadline).0;
        }
    }

    /// Sends without blocking.
    pub(crate) fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        let mut st = lock(&self.state);
        if st.receivers == 0 {
            return Err(TrySendError::Disconnected(v));
        }
        let room = match self.cap {
            // Rendezvous: only into the hands of a receiver already waiting.
            Some(0) => st.queue.is_empty() && self.receiver_waits(&st),
            _ => self.has_room(&st),
        };
        if !room {
            return Err(TrySendError::Full(v));
        }
        let mut wake = Wakeups::new();
        self.push(&mut st, v, &mut wake);
        drop(st);
        drop(wake);
        Ok(())
    }

    /// Books `n` messages as taken: frees slots for blocked senders and
    /// tells a rendezvous sender its message was taken.
    fn taken(&self, st: &mut State<T>, n: usize, wake: &mut Wakeups) {
        st.taken += n as u64;
        if self.cap.is_some() {
            let owned_slot = mem::replace(&mut st.owned_slot, false);
            let Some(w) = st.waits_made() else {
                return;
            };
            if n > 0 {
                w.send_watchers.notify_all(wake);
            }
            for _ in 0..n {
                if !w.send_q.notify_one(wake) {
                    break;
                }
            }
            if owned_slot {
                w.ack_q.notify_all(wake);
            }
        }
    }

    /// Receives with `take`, which takes a message if there is one (from the
    /// queue, or from where the receiver keeps a batch it took earlier) and
    /// returns it with how many messages it removed from the queue, or `None`
    /// when there is none. Blocks until there is a message, every sender is
    /// gone, or `deadline` passes.
    pub(crate) fn recv_with<R>(
        &self,
        deadline: Option<Instant>,
        mut take: impl FnMut(&mut State<T>) -> Option<(R, usize)>,
    ) -> Result<R, RecvTimeoutError> {
        let mut st = lock(&self.state);
        let mut pos = Pos::Back;
        loop {
            if let Some((r, n)) = take(&mut st) {
                let mut wake = Wakeups::new();
                self.taken(&mut st, n, &mut wake);
                drop(st);
                drop(wake);
                return Ok(r);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            if self.single_rx && !self.rx_waiting.load(Ordering::Relaxed) {
                st = self.wait_in_slot(st, deadline);
                continue;
            }
            let p = Pending::new(
                &self.state,
                &mut st,
                |s| &mut s.waits().recv_q,
                pos,
                pass_on(|s| &mut s.waits().recv_q),
            );
            let wake = self.receiver_blocks(&mut st);
            drop(st);
            drop(wake);
            let (g, notified) = p.wait(deadline);
            st = g;
            if notified {
                pos = Pos::Front;
            }
        }
    }

    /// Waits in the receiver slot (the receiver of an `mpsc` channel; the
    /// slot is free). Takes the lock guard of a channel found empty, returns
    /// one re-taken after the wait, with the slot free again.
    fn wait_in_slot<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, State<T>>,
        deadline: Option<Instant>,
    ) -> std::sync::MutexGuard<'a, State<T>> {
        let old = match &st.rx {
            Some(u) if is_current(u) => None,
            _ => st.rx.replace(Unparker::current()),
        };
        self.rx_waiting.store(true, Ordering::Relaxed);
        let guard = SlotGuard { chan: self };
        let wake = self.receiver_blocks(&mut st);
        drop(st);
        drop(wake);
        drop(old);
        while self.rx_waiting.load(Ordering::Acquire) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            park_until(deadline);
        }
        st = lock(&self.state);
        mem::forget(guard);
        // Settle: a notifier already cleared the flag; else withdraw.
        self.rx_waiting.store(false, Ordering::Relaxed);
        st
    }

    /// Receives one message, blocking (see [`recv_with`](Self::recv_with)).
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        self.recv_with(deadline, |st| st.queue.pop_front().map(|v| (v, 1)))
    }

    /// Receives with `take` if a message is there, without blocking.
    pub(crate) fn try_recv_with<R>(
        &self,
        take: impl FnOnce(&mut State<T>) -> (R, usize),
    ) -> Result<R, TryRecvError> {
        let mut st = lock(&self.state);
        if st.queue.is_empty() {
            return Err(if st.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        let (r, n) = take(&mut st);
        let mut wake = Wakeups::new();
        self.taken(&mut st, n, &mut wake);
        drop(st);
        drop(wake);
        Ok(r)
    }

    /// Receives one message if there is one.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.try_recv_with(|st| (st.queue.pop_front().expect("checked non-empty"), 1))
    }

    /// A receiver is now registered as blocked: on a rendezvous channel
    /// that is room for a selecting sender, so tell the send watchers.
    fn receiver_blocks(&self, st: &mut State<T>) -> Wakeups {
        let mut wake = Wakeups::new();
        if self.cap == Some(0) {
            if let Some(w) = st.waits_made() {
                w.send_watchers.notify_all(&mut wake);
            }
        }
        wake
    }

    /// Select: a receive would not block (a message, or no sender left).
    pub(crate) fn recv_ready(&self) -> bool {
        let st = lock(&self.state);
        !st.queue.is_empty() || st.senders == 0
    }

    /// Select: a send would not block (room, or no receiver left).
    pub(crate) fn send_ready(&self) -> bool {
        let st = lock(&self.state);
        st.receivers == 0
            || match self.cap {
                Some(0) => st.queue.is_empty() && self.receiver_waits(&st),
                _ => self.has_room(&st),
            }
    }

    /// Select: registers or withdraws a watcher of receives (`recv`) or of
    /// sends.
    pub(crate) fn watch(&self, recv: bool, w: &crate::select::imp::Watcher) {
        let mut st = lock(&self.state);
        let waits = st.waits();
        let list = if recv {
            &mut waits.recv_watchers
        } else {
            &mut waits.send_watchers
        };
        list.add(w.id, &w.unparker);
    }

    /// See [`watch`](Self::watch).
    pub(crate) fn unwatch(&self, recv: bool, w: &crate::select::imp::Watcher) {
        let mut st = lock(&self.state);
        let Some(waits) = st.waits_made() else {
            return;
        };
        let list = if recv {
            &mut waits.recv_watchers
        } else {
            &mut waits.send_watchers
        };
        list.remove(w.id);
    }

    /// Messages buffered now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).queue.len()
    }
}

/// The receive or send arm of a channel in a [`Select`](crate::Select).
pub(crate) struct ChanArm<'a, T> {
    chan: &'a Chan<T>,
    recv: bool,
    /// `mpsc` receivers: messages the receiver took in a batch earlier.
    local: Option<&'a std::cell::RefCell<VecDeque<T>>>,
}

impl<'a, T> ChanArm<'a, T> {
    /// A receive arm; `local` is an `mpsc` receiver's batch buffer.
    pub(crate) fn recv(
        chan: &'a Chan<T>,
        local: Option<&'a std::cell::RefCell<VecDeque<T>>>,
    ) -> Box<dyn crate::select::imp::Source + 'a> {
        Box::new(ChanArm {
            chan,
            recv: true,
            local,
        })
    }

    /// A send arm: ready when the channel has room.
    pub(crate) fn send(chan: &'a Chan<T>) -> Box<dyn crate::select::imp::Source + 'a> {
        Box::new(ChanArm {
            chan,
            recv: false,
            local: None,
        })
    }
}

impl<T> crate::select::imp::Source for ChanArm<'_, T> {
    fn is_ready(&self) -> bool {
        if self.recv {
            self.local.is_some_and(|b| !b.borrow().is_empty()) || self.chan.recv_ready()
        } else {
            self.chan.send_ready()
        }
    }
    fn watch(&self, w: &crate::select::imp::Watcher) -> bool {
        self.chan.watch(self.recv, w);
        true
    }
    fn unwatch(&self, w: &crate::select::imp::Watcher) {
        self.chan.unwatch(self.recv, w);
    }
}
