//! A channel for exactly one value: the usual way to hand a result from one
//! fiber or thread to another.
//!
//! [`Sender::send`] consumes the sender and never blocks. The receiver waits
//! with [`Receiver::recv`], [`recv_timeout`](Receiver::recv_timeout) or
//! [`try_recv`](Receiver::try_recv). A sender dropped without sending
//! disconnects the channel: the receiver gets an error instead of waiting
//! forever. A value sent to a receiver that is gone is dropped (and
//! [`send`](Sender::send) gives it back).
//!
//! # Examples
//!
//! ```
//! use weave::sync::oneshot;
//! let rt = weave::Runtime::builder().workers(2).build()?;
//! let v = rt.block_on(|| {
//!     let (tx, rx) = oneshot::channel();
//!     weave::spawn(move || tx.send(6 * 7).unwrap());
//!     rx.recv().unwrap()
//! });
//! assert_eq!(v, 42);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{RecvError, RecvTimeoutError, SendError, TryRecvError};
use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups, Watchers};

struct State<T> {
    value: Option<T>,
    /// The sender still exists (it has neither sent nor been dropped).
    sender: bool,
    receiver: bool,
    waiters: WaitQueue,
    /// Selectors watching the receiver.
    watchers: Watchers,
}

/// Creates a oneshot channel.
///
/// # Examples
///
/// ```
/// let (tx, rx) = weave::sync::oneshot::channel();
/// tx.send("done").unwrap();
/// assert_eq!(rx.recv(), Ok("done"));
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Mutex::new(State {
        value: None,
        sender: true,
        receiver: true,
        waiters: WaitQueue::new(),
        watchers: Watchers::new(),
    }));
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

/// Sends the one value.
pub struct Sender<T> {
    inner: Arc<Mutex<State<T>>>,
}

impl<T> Sender<T> {
    /// Sends the value and wakes the receiver.
    ///
    /// # Errors
    ///
    /// Gives the value back if the receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::oneshot::channel();
    /// drop(rx);
    /// assert_eq!(tx.send(1).unwrap_err().0, 1);
    /// ```
    pub fn send(self, t: T) -> Result<(), SendError<T>> {
        let mut st = lock(&self.inner);
        if !st.receiver {
            return Err(SendError(t));
        }
        st.value = Some(t);
        st.sender = false;
        let mut wake = Wakeups::new();
        st.waiters.notify_all(&mut wake);
        st.watchers.notify_all(&mut wake);
        drop(st);
        drop(wake);
        // `Drop` then finds `sender` already false and does nothing.
        Ok(())
    }

    /// True if the receiver is gone (a send would fail).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::oneshot::channel::<u8>();
    /// assert!(!tx.is_closed());
    /// drop(rx);
    /// assert!(tx.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        !lock(&self.inner).receiver
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        let mut wake = Wakeups::new();
        if st.sender {
            st.sender = false;
            st.waiters.notify_all(&mut wake);
            st.watchers.notify_all(&mut wake);
        }
        drop(st);
        drop(wake);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("oneshot::Sender { .. }")
    }
}

/// Receives the one value.
pub struct Receiver<T> {
    inner: Arc<Mutex<State<T>>>,
}

impl<T> Receiver<T> {
    fn wait(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut st = lock(&self.inner);
        loop {
            if let Some(v) = st.value.take() {
                return Ok(v);
            }
            if !st.sender {
                return Err(RecvTimeoutError::Disconnected);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            // Notifications here go to every waiter at once, so an unwinding
            // waiter owes nothing to the others.
            let p = Pending::new(
                &self.inner,
                &mut st,
                |s| &mut s.waiters,
                Pos::Back,
                |_, _| (),
            );
            drop(st);
            st = p.wait(deadline).0;
        }
    }

    /// Waits for the value.
    ///
    /// # Errors
    ///
    /// [`RecvError`] if the sender was dropped without sending.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::oneshot::channel::<u8>();
    /// drop(tx);
    /// assert!(rx.recv().is_err());
    /// ```
    pub fn recv(self) -> Result<T, RecvError> {
        self.wait(None).map_err(|_| RecvError)
    }

    /// Waits for the value for at most `timeout`; the receiver stays usable
    /// after a timeout.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], or [`RecvTimeoutError::Disconnected`]
    /// if the sender was dropped without sending (or the value was already
    /// taken).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (tx, rx) = weave::sync::oneshot::channel();
    /// assert!(rx.recv_timeout(Duration::from_millis(1)).is_err());
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(1));
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.wait(Instant::now().checked_add(timeout))
    }

    /// Takes the value if it was sent, without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if not sent yet, [`TryRecvError::Disconnected`]
    /// if it never will be (or was already taken).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::oneshot::channel();
    /// assert!(rx.try_recv().is_err());
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(1));
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = lock(&self.inner);
        match st.value.take() {
            Some(v) => Ok(v),
            None if st.sender => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }
}

impl<T> Receiver<T> {
    /// True if receiving would not block: the value was sent (and not yet
    /// taken), or the sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = weave::sync::oneshot::channel();
    /// assert!(!rx.is_ready());
    /// tx.send(()).unwrap();
    /// assert!(rx.is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        let st = lock(&self.inner);
        st.value.is_some() || !st.sender
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let value = {
            let mut st = lock(&self.inner);
            st.receiver = false;
            st.value.take()
        };
        drop(value);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("oneshot::Receiver { .. }")
    }
}

struct OneshotArm<'a, T>(&'a Mutex<State<T>>);

impl<T> crate::select::imp::Source for OneshotArm<'_, T> {
    fn is_ready(&self) -> bool {
        let st = lock(self.0);
        st.value.is_some() || !st.sender
    }
    fn watch(&self, w: &crate::select::imp::Watcher) -> bool {
        lock(self.0).watchers.add(w.id, &w.unparker);
        true
    }
    fn unwatch(&self, w: &crate::select::imp::Watcher) {
        lock(self.0).watchers.remove(w.id);
    }
}

impl<T> crate::select::imp::RecvArm for Receiver<T> {
    fn recv_arm(&self) -> Box<dyn crate::select::imp::Source + '_> {
        Box::new(OneshotArm(&self.inner))
    }
}
impl<T> crate::select::Receivable for Receiver<T> {}
