//! Many-producer, single-consumer channels, shaped like `std::sync::mpsc`.
//!
//! [`channel`] is unbounded: `send` never blocks. [`sync_channel(n)`](sync_channel)
//! holds at most `n` messages: `send` blocks while it is full,
//! and with `n == 0` every `send` waits until the receiver took its message
//! (a rendezvous). A blocked fiber parks and its worker runs other fibers; a
//! blocked plain thread blocks. Fibers and threads may share a channel in
//! either direction.
//!
//! Messages from one sender arrive in the order they were sent. When every
//! sender is gone, the receiver drains what is left and then gets
//! [`RecvError`]; when the receiver is gone, `send` gives the value back in a
//! [`SendError`] and buffered messages are dropped at once.
//!
//! The receiver of an unbounded channel takes the whole buffer in one lock
//! and serves the next `recv`s from a private buffer, so a busy consumer
//! costs the producers one lock acquisition per batch, not per message.
//!
//! See [`crate::sync`] for the wakeup protocol.
//!
//! # Examples
//!
//! ```
//! use weave::sync::mpsc;
//! let rt = weave::Runtime::builder().workers(2).build()?;
//! let total = rt.block_on(|| {
//!     let (tx, rx) = mpsc::channel();
//!     for i in 0..4u64 {
//!         let tx = tx.clone();
//!         weave::spawn(move || tx.send(i).unwrap());
//!     }
//!     drop(tx);
//!     rx.iter().sum::<u64>()
//! });
//! assert_eq!(total, 6);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chan::Chan;
use super::error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};

/// Creates an unbounded channel: [`Sender::send`] never blocks.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::channel();
/// let h = weave::spawn(move || tx.send("hi").unwrap());
/// assert_eq!(rx.recv(), Ok("hi"));
/// h.join().unwrap();
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new(None, true));
    (
        Sender { chan: chan.clone() },
        Receiver {
            chan,
            buf: RefCell::new(VecDeque::new()),
        },
    )
}

/// Creates a channel that holds at most `bound` messages; with `bound == 0`
/// each send waits for the receiver to take its message.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::sync_channel(0);
/// let h = weave::spawn(move || tx.send(5).unwrap()); // returns once received
/// assert_eq!(rx.recv(), Ok(5));
/// h.join().unwrap();
/// ```
pub fn sync_channel<T>(bound: usize) -> (SyncSender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new(Some(bound), true));
    (
        SyncSender { chan: chan.clone() },
        Receiver {
            chan,
            buf: RefCell::new(VecDeque::new()),
        },
    )
}

/// The sending half of an unbounded channel. Clone it for more producers.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::channel();
/// let tx2 = tx.clone();
/// tx.send(1).unwrap();
/// tx2.send(2).unwrap();
/// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
/// ```
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends a value; never blocks.
    ///
    /// # Errors
    ///
    /// Gives the value back if the receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::channel();
    /// assert!(tx.send(1).is_ok());
    /// drop(rx);
    /// assert!(tx.send(2).is_err());
    /// ```
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan.send(t)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.add_sender();
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender { .. }")
    }
}

/// The sending half of a bounded channel. Clone it for more producers.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::sync_channel(2);
/// tx.send(1).unwrap();
/// tx.try_send(2).unwrap();
/// assert!(tx.try_send(3).is_err()); // full
/// assert_eq!(rx.recv(), Ok(1));
/// ```
pub struct SyncSender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> SyncSender<T> {
    /// Sends a value, blocking while the channel is full; on a rendezvous
    /// channel, until the receiver took it.
    ///
    /// # Errors
    ///
    /// Gives the value back if the receiver is gone (also when it goes while
    /// this call waits).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::sync_channel(1);
    /// tx.send(1).unwrap();
    /// let h = weave::spawn(move || tx.send(2)); // blocks until a slot frees
    /// assert_eq!(rx.recv(), Ok(1));
    /// assert_eq!(rx.recv(), Ok(2));
    /// assert!(h.join().unwrap().is_ok());
    /// ```
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan.send(t)
    }

    /// Like [`send`](Self::send), but gives up after `timeout`: a hub that
    /// feeds many consumers can drop (or count) a message for a slow one
    /// instead of freezing. On a rendezvous channel the value must also be
    /// taken within the timeout; if not, it comes back.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] with the value if no slot came free in
    /// time, [`SendTimeoutError::Disconnected`] if the receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (tx, rx) = weave::sync::sync_channel(1);
    /// tx.send_timeout(1, Duration::from_millis(5)).unwrap();
    /// // Full, and nobody receives: the value comes back.
    /// assert_eq!(tx.send_timeout(2, Duration::from_millis(5)).unwrap_err().into_inner(), 2);
    /// assert_eq!(rx.recv(), Ok(1));
    /// ```
    pub fn send_timeout(&self, t: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.chan
            .send_deadline(t, Instant::now().checked_add(timeout))
    }

    /// Sends a value if there is room now (on a rendezvous channel: if the
    /// receiver is blocked waiting).
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`], with the
    /// value.
    ///
    /// # Examples
    ///
    /// ```
    /// use weave::sync::TrySendError;
    /// let (tx, _rx) = weave::sync::sync_channel(0);
    /// assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));
    /// ```
    pub fn try_send(&self, t: T) -> Result<(), TrySendError<T>> {
        self.chan.try_send(t)
    }
}

impl<T> Clone for SyncSender<T> {
    fn clone(&self) -> Self {
        self.chan.add_sender();
        SyncSender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for SyncSender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> fmt::Debug for SyncSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncSender { .. }")
    }
}

/// The receiving half of a channel. There is exactly one; it may move to
/// another fiber or thread but is not shared (`!Sync`), like std's.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::channel();
/// weave::spawn(move || {
///     for i in 0..3 {
///         tx.send(i).unwrap();
///     }
/// });
/// assert_eq!(rx.iter().collect::<Vec<_>>(), [0, 1, 2]);
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    /// Unbounded channels only: messages taken from the channel in one batch
    /// and not yet returned.
    buf: RefCell<VecDeque<T>>,
}

impl<T> Receiver<T> {
    fn pop_local(&self) -> Option<T> {
        self.buf.borrow_mut().pop_front()
    }

    fn take_batch(&self) -> impl FnMut(&mut super::chan::State<T>) -> ((), usize) + '_ {
        move |st| {
            let mut buf = self.buf.borrow_mut();
            mem::swap(&mut st.queue, &mut *buf);
            ((), buf.len())
        }
    }

    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        if let Some(v) = self.pop_local() {
            return Ok(v);
        }
        if self.chan.is_unbounded() {
            // The private buffer is looked at again under the lock: fibers of
            // one thread may wait on this receiver together (it is `!Sync`,
            // not thread-bound), and one woken for a message may find that
            // another took it into the buffer with its batch.
            self.chan.recv_with(deadline, |st| {
                let mut buf = self.buf.borrow_mut();
                let mut n = 0;
                if buf.is_empty() {
                    mem::swap(&mut st.queue, &mut *buf);
                    n = buf.len();
                }
                buf.pop_front().map(|v| (v, n))
            })
        } else {
            self.chan.recv(deadline)
        }
    }

    /// Waits for a message. Messages sent before the last sender went are
    /// still delivered.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the channel is empty and every sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::channel();
    /// tx.send(1).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.recv(), Ok(1));
    /// assert!(rx.recv().is_err());
    /// ```
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|_| RecvError)
    }

    /// Takes a message if one is ready, without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if none is ready, [`TryRecvError::Disconnected`]
    /// if none will ever be.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::channel();
    /// assert!(rx.try_recv().is_err());
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(1));
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if let Some(v) = self.pop_local() {
            return Ok(v);
        }
        if self.chan.is_unbounded() {
            self.chan.try_recv_with(self.take_batch())?;
            Ok(self
                .pop_local()
                .expect("a batch holds at least one message"))
        } else {
            self.chan.try_recv()
        }
    }

    /// Waits for a message for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when the time is up,
    /// [`RecvTimeoutError::Disconnected`] when the channel is empty and every
    /// sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (tx, rx) = weave::sync::channel::<()>();
    /// assert!(rx.recv_timeout(Duration::from_millis(1)).is_err());
    /// # drop(tx);
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    /// A blocking iterator: yields messages until every sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::channel();
    /// tx.send(1).unwrap();
    /// tx.send(2).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.iter().sum::<i32>(), 3);
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the messages ready now; never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::channel();
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.try_iter().count(), 1);
    /// assert_eq!(rx.try_iter().count(), 0);
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Messages buffered in the channel now (for this receiver).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::sync_channel(4);
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.buf.borrow().len() + self.chan.len()
    }

    /// True when no message is buffered now.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_tx, rx) = weave::sync::channel::<u8>();
    /// assert!(rx.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given to [`sync_channel`], or `None` for an unbounded
    /// channel.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_tx, rx) = weave::sync::sync_channel::<u8>(3);
    /// assert_eq!(rx.capacity(), Some(3));
    /// ```
    pub fn capacity(&self) -> Option<usize> {
        self.chan.capacity()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.drop_receiver();
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver { .. }")
    }
}

/// Blocking iterator over a [`Receiver`]'s messages; see [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// Non-blocking iterator over a [`Receiver`]'s ready messages; see
/// [`Receiver::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Owning blocking iterator over a [`Receiver`]'s messages.
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

impl<T> crate::select::imp::RecvArm for Receiver<T> {
    fn recv_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        super::chan::ChanArm::recv(&self.chan, Some(&self.buf))
    }
}
impl<T> crate::select::Receivable for Receiver<T> {}

impl<T> crate::select::imp::SendArm for Sender<T> {
    fn send_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        super::chan::ChanArm::send(&self.chan)
    }
}
impl<T> crate::select::Sendable for Sender<T> {}

impl<T> crate::select::imp::SendArm for SyncSender<T> {
    fn send_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        super::chan::ChanArm::send(&self.chan)
    }
}
impl<T> crate::select::Sendable for SyncSender<T> {}
