//! A broadcast channel: every receiver gets every message.
//!
//! # Shape
//!
//! A ring of the last `capacity` messages, each numbered in send order,
//! behind one std mutex. Each [`Receiver`] keeps the number of the next
//! message it will read. Sending never blocks: when the ring is full the
//! oldest message is overwritten, so a slow receiver cannot freeze the
//! sender (or the other receivers). A receiver that fell behind by more
//! than the capacity learns how many messages it missed
//! ([`RecvError::Lagged`]) and continues from the oldest one still kept.
//! Messages are cloned out to each receiver.
//!
//! Blocked receivers wait on a hint queue that every send notifies whole
//! (each receiver wants every message); selectors watch on their own list
//! (see [`Select`](crate::Select)).
//!
//! # Examples
//!
//! ```
//! use weave::sync::broadcast::{self, RecvError};
//! let (tx, mut a) = broadcast::channel(2);
//! let mut b = tx.subscribe();
//! tx.send(1).unwrap();
//! assert_eq!(a.recv(), Ok(1));
//! tx.send(2).unwrap();
//! tx.send(3).unwrap();
//! assert_eq!(a.recv(), Ok(2));
//! // `b` read nothing yet and the ring holds two: it missed message 1.
//! assert_eq!(b.recv(), Err(RecvError::Lagged(1)));
//! assert_eq!(b.recv(), Ok(2));
//! assert_eq!(b.recv(), Ok(3));
//! ```

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::SendError;
use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups, Watchers};

struct State<T> {
    /// The last `cap` messages; the back one is number `head - 1`.
    buf: VecDeque<T>,
    /// Number of the next message sent.
    head: u64,
    senders: usize,
    receivers: usize,
    waiters: WaitQueue,
    watchers: Watchers,
}

struct Shared<T> {
    cap: usize,
    state: Mutex<State<T>>,
}

/// Creates a broadcast channel that keeps the last `capacity` messages.
///
/// # Panics
///
/// If `capacity` is zero.
pub fn channel<T: Clone>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(
        capacity > 0,
        "a broadcast channel needs a capacity of at least 1"
    );
    let shared = Arc::new(Shared {
        cap: capacity,
        state: Mutex::new(State {
            buf: VecDeque::with_capacity(capacity.min(1024)),
            head: 0,
            senders: 1,
            receivers: 1,
            waiters: WaitQueue::new(),
            watchers: Watchers::new(),
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, next: 0 },
    )
}

/// The sending half; cloneable.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Clone> Sender<T> {
    /// Sends `t` to every receiver. Never blocks: if the ring is full the
    /// oldest message is dropped, and receivers that had not read it yet
    /// will be told they lagged. Returns how many receivers there are.
    ///
    /// # Errors
    ///
    /// Gives the value back if there is no receiver.
    pub fn send(&self, t: T) -> Result<usize, SendError<T>> {
        let mut st = lock(&self.shared.state);
        if st.receivers == 0 {
            return Err(SendError(t));
        }
        let old = if st.buf.len() == self.shared.cap {
            st.buf.pop_front()
        } else {
            None
        };
        st.buf.push_back(t);
        st.head += 1;
        let n = st.receivers;
        let mut wake = Wakeups::new();
        st.waiters.notify_all(&mut wake);
        st.watchers.notify_all(&mut wake);
        drop(st);
        drop(wake);
        drop(old);
        Ok(n)
    }

    /// A new receiver, which gets the messages sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut st = lock(&self.shared.state);
        st.receivers += 1;
        Receiver {
            shared: self.shared.clone(),
            next: st.head,
        }
    }

    /// How many receivers there are now.
    pub fn receiver_count(&self) -> usize {
        lock(&self.shared.state).receivers
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.shared.state).senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        st.senders -= 1;
        let mut wake = Wakeups::new();
        if st.senders == 0 {
            st.waiters.notify_all(&mut wake);
            st.watchers.notify_all(&mut wake);
        }
        drop(st);
        drop(wake);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("broadcast::Sender { .. }")
    }
}

/// The receiving half. Cloning it gives a receiver at the same position.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Number of the next message to read.
    next: u64,
}

/// The error of [`Receiver::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The receiver fell behind: this many messages were overwritten before
    /// it read them. The next receive returns the oldest one still kept.
    Lagged(u64),
    /// Every sender is gone and every message was read.
    Disconnected,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "receiver lagged behind by {n} messages"),
            RecvError::Disconnected => f.write_str("channel is empty and closed"),
        }
    }
}

impl Error for RecvError {}

/// The error of [`Receiver::try_recv`] and [`Receiver::recv_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// No new message (for `recv_timeout`: none came in time).
    Empty,
    /// See [`RecvError::Lagged`].
    Lagged(u64),
    /// See [`RecvError::Disconnected`].
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no new message"),
            TryRecvError::Lagged(n) => write!(f, "receiver lagged behind by {n} messages"),
            TryRecvError::Disconnected => f.write_str("channel is empty and closed"),
        }
    }
}

impl Error for TryRecvError {}

impl<T: Clone> Receiver<T> {
    /// Takes the next message for this receiver under the lock, if any.
    fn take(&mut self, st: &State<T>) -> Option<Result<T, TryRecvError>> {
        let oldest = st.head - st.buf.len() as u64;
        if self.next < oldest {
            let missed = oldest - self.next;
            self.next = oldest;
            return Some(Err(TryRecvError::Lagged(missed)));
        }
        if self.next < st.head {
            let v = st.buf[(self.next - oldest) as usize].clone();
            self.next += 1;
            return Some(Ok(v));
        }
        if st.senders == 0 {
            return Some(Err(TryRecvError::Disconnected));
        }
        None
    }

    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<T, TryRecvError> {
        let shared = self.shared.clone();
        let mut st = lock(&shared.state);
        loop {
            if let Some(r) = self.take(&st) {
                return r;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TryRecvError::Empty);
            }
            // Every send notifies all waiters: an unwinding one owes nothing.
            let p = Pending::new(
                &shared.state,
                &mut st,
                |s| &mut s.waiters,
                Pos::Back,
                |_, _| (),
            );
            drop(st);
            st = p.wait(deadline).0;
        }
    }

    /// Waits for the next message (a cancellation point).
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] if messages were overwritten before this
    /// receiver read them (it then continues from the oldest kept);
    /// [`RecvError::Disconnected`] when every sender is gone and nothing is
    /// left to read.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|e| match e {
            TryRecvError::Lagged(n) => RecvError::Lagged(n),
            _ => RecvError::Disconnected,
        })
    }

    /// The next message if there is one.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if there is none yet; otherwise as
    /// [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let shared = self.shared.clone();
        let st = lock(&shared.state);
        self.take(&st).unwrap_or(Err(TryRecvError::Empty))
    }

    /// [`recv`](Self::recv), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if nothing came in time; otherwise as
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, TryRecvError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        lock(&self.shared.state).receivers += 1;
        Receiver {
            shared: self.shared.clone(),
            next: self.next,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        lock(&self.shared.state).receivers -= 1;
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("broadcast::Receiver")
            .field("next", &self.next)
            .finish()
    }
}

struct BroadcastArm<'a, T>(&'a Receiver<T>);

impl<T> crate::select::imp::Source for BroadcastArm<'_, T> {
    fn is_ready(&self) -> bool {
        let st = lock(&self.0.shared.state);
        self.0.next < st.head || st.senders == 0
    }
    fn watch(&self, w: &crate::select::imp::Watcher) -> bool {
        lock(&self.0.shared.state).watchers.add(w.id, &w.unparker);
        true
    }
    fn unwatch(&self, w: &crate::select::imp::Watcher) {
        lock(&self.0.shared.state).watchers.remove(w.id);
    }
}

impl<T> crate::select::imp::RecvArm for Receiver<T> {
    fn recv_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        Box::new(BroadcastArm(self))
    }
}
impl<T> crate::select::Receivable for Receiver<T> {}
