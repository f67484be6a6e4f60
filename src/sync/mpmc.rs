//! Many-producer, many-consumer channels: like [`mpsc`](super::mpsc), but the
//! [`Receiver`] is cloneable too, and each message goes to exactly one
//! receiver. One [`Sender`] type serves both flavours: [`channel`] is
//! unbounded, [`sync_channel(n)`](sync_channel) holds at most `n` messages
//! (`n == 0`: rendezvous), and [`Sender::try_send`] only reports
//! [`Full`](TrySendError::Full) on a bounded channel.
//!
//! Blocked receivers are served first come, first served. The channel is
//! disconnected for receivers when every `Sender` is gone, and for senders
//! when every `Receiver` is gone (buffered messages are then dropped).
//!
//! # Examples
//!
//! A work queue shared by a pool of consumer fibers:
//!
//! ```
//! use weave::sync::mpmc;
//! let rt = weave::Runtime::builder().workers(2).build()?;
//! let sum = rt.block_on(|| {
//!     let (tx, rx) = mpmc::sync_channel(8);
//!     let consumers: Vec<_> = (0..3)
//!         .map(|_| {
//!             let rx = rx.clone();
//!             weave::spawn(move || rx.iter().sum::<u64>())
//!         })
//!         .collect();
//!     drop(rx);
//!     for i in 1..=100 {
//!         tx.send(i).unwrap();
//!     }
//!     drop(tx);
//!     consumers.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
//! });
//! assert_eq!(sum, 5050);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chan::Chan;
use super::error::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// Creates an unbounded channel with cloneable ends.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::mpmc::channel();
/// let rx2 = rx.clone();
/// tx.send(1).unwrap();
/// tx.send(2).unwrap();
/// assert_eq!(rx.recv().unwrap() + rx2.recv().unwrap(), 3);
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new(None, false));
    (Sender { chan: chan.clone() }, Receiver { chan })
}

/// Creates a channel with cloneable ends that holds at most `bound`
/// messages; with `bound == 0` each send waits for a receiver to take its
/// message.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::mpmc::sync_channel(1);
/// tx.send(1).unwrap();
/// assert!(tx.try_send(2).is_err());
/// assert_eq!(rx.recv(), Ok(1));
/// ```
pub fn sync_channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new(Some(bound), false));
    (Sender { chan: chan.clone() }, Receiver { chan })
}

/// The sending half; clone it for more producers.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::mpmc::channel();
/// tx.clone().send(1).unwrap();
/// assert_eq!(rx.recv(), Ok(1));
/// ```
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends a value, blocking while a bounded channel is full (on a
    /// rendezvous channel, until a receiver took it).
    ///
    /// # Errors
    ///
    /// Gives the value back if every receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel();
    /// tx.send(1).unwrap();
    /// drop(rx);
    /// assert_eq!(tx.send(2).unwrap_err().0, 2);
    /// ```
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan.send(t)
    }

    /// Sends a value if there is room now (always, on an unbounded channel
    /// that has receivers).
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] (bounded channels only) or
    /// [`TrySendError::Disconnected`], with the value.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, _rx) = weave::sync::mpmc::sync_channel(1);
    /// assert!(tx.try_send(1).is_ok());
    /// assert!(tx.try_send(2).is_err());
    /// ```
    pub fn try_send(&self, t: T) -> Result<(), TrySendError<T>> {
        self.chan.try_send(t)
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

/// The receiving half; clone it for more consumers. Each message goes to one
/// receiver.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::mpmc::channel();
/// let rx2 = rx.clone();
/// drop(rx);
/// tx.send(3).unwrap();
/// assert_eq!(rx2.recv(), Ok(3));
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Receiver<T> {
    /// Waits for a message.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the channel is empty and every sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel::<u8>();
    /// drop(tx);
    /// assert!(rx.recv().is_err());
    /// ```
    pub fn recv(&self) -> Result<T, RecvError> {
        self.chan.recv(None).map_err(|_| RecvError)
    }

    /// Takes a message if one is ready, without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] or [`TryRecvError::Disconnected`].
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel();
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(1));
    /// assert!(rx.try_recv().is_err());
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.chan.try_recv()
    }

    /// Waits for a message for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Disconnected`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (_tx, rx) = weave::sync::mpmc::channel::<u8>();
    /// assert!(rx.recv_timeout(Duration::from_millis(1)).is_err());
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.chan.recv(Instant::now().checked_add(timeout))
    }

    /// A blocking iterator: yields messages until every sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel();
    /// tx.send(2).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.iter().collect::<Vec<_>>(), [2]);
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the messages ready now; never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel();
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.try_iter().count(), 1);
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Messages buffered in the channel now.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::mpmc::channel();
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.chan.len()
    }

    /// True when no message is buffered now.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_tx, rx) = weave::sync::mpmc::channel::<u8>();
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
    /// let (_tx, rx) = weave::sync::mpmc::channel::<u8>();
    /// assert_eq!(rx.capacity(), None);
    /// ```
    pub fn capacity(&self) -> Option<usize> {
        self.chan.capacity()
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.chan.add_receiver();
        Receiver {
            chan: self.chan.clone(),
        }
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

/// Blocking iterator over a [`Receiver`]; see [`Receiver::iter`].
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

/// Non-blocking iterator over a [`Receiver`]; see [`Receiver::try_iter`].
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

/// Owning blocking iterator over a [`Receiver`].
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
        super::chan::ChanArm::recv(&self.chan, None)
    }
}
impl<T> crate::select::Receivable for Receiver<T> {}

impl<T> crate::select::imp::SendArm for Sender<T> {
    fn send_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        super::chan::ChanArm::send(&self.chan)
    }
}
impl<T> crate::select::Sendable for Sender<T> {}
