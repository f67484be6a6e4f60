//! A condition variable for [`Mutex`](super::Mutex).
//!
//! # Protocol
//!
//! `wait` enqueues the caller on the condvar's queue **while it still holds
//! the user's mutex**, and only then unlocks the mutex and parks. A notifier
//! changes the condition under that same mutex before it notifies, so it
//! either ran before the waiter checked the condition, or it finds the waiter
//! queued: no wakeup is lost between "unlock" and "park".
//!
//! A notification is recorded in the waiter's node (see
//! [`waiter`](super::waiter)). A waiter whose timeout expires after it was
//! notified reports "not timed out": it consumed the notification, so
//! `notify_one` always reaches a waiter that will look at the condition.

use std::fmt;
use std::sync::{LockResult, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use super::mutex::MutexGuard;
use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

/// Whether a timed wait on a [`Condvar`] ended by timeout.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use weave::sync::{Condvar, Mutex};
/// let (m, cv) = (Mutex::new(()), Condvar::new());
/// let (_g, r) = cv.wait_timeout(m.lock().unwrap(), Duration::from_millis(1)).unwrap();
/// assert!(r.timed_out());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait ended because the timeout passed (and no
    /// notification arrived).
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

/// A condition variable, shaped like `std::sync::Condvar`, for use with
/// [`weave::sync::Mutex`](super::Mutex). Fibers park while they wait; plain
/// threads block. Waiters are woken in arrival order.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use weave::sync::{Condvar, Mutex};
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let pair = Arc::new((Mutex::new(false), Condvar::new()));
///     let p2 = pair.clone();
///     weave::spawn(move || {
///         *p2.0.lock().unwrap() = true;
///         p2.1.notify_one();
///     });
///     let (m, cv) = &*pair;
///     let ready = cv.wait_while(m.lock().unwrap(), |r| !*r).unwrap();
///     assert!(*ready);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct Condvar {
    waiters: StdMutex<WaitQueue>,
}

impl Condvar {
    /// A new condition variable.
    ///
    /// # Examples
    ///
    /// ```
    /// static CV: weave::sync::Condvar = weave::sync::Condvar::new();
    /// CV.notify_all();
    /// ```
    pub const fn new() -> Condvar {
        Condvar {
            waiters: StdMutex::new(WaitQueue::new()),
        }
    }

    /// Unlocks the guard's mutex, waits until notified (or `deadline`), and
    /// locks it again. Returns whether it was notified.
    fn wait_deadline<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> (LockResult<MutexGuard<'a, T>>, bool) {
        let mut q = lock(&self.waiters);
        let p = Pending::new(
            &self.waiters,
            &mut q,
            |q| q,
            Pos::Back,
            |q: &mut WaitQueue, notified| {
                // Unwinding: a notification we got goes to the next waiter.
                let mut wake = Wakeups::new();
                if notified {
                    q.notify_one(&mut wake);
                }
                wake
            },
        );
        drop(q);
        let (data, owner) = guard.into_parts();
        let mutex = owner.mutex;
        drop(data);
        drop(owner);
        let (q, notified) = p.wait(deadline);
        drop(q);
        (mutex.lock(), notified)
    }

    /// Unlocks the guard's mutex and waits for a notification, then locks
    /// the mutex again. May wake spuriously: check your condition in a loop,
    /// or use [`wait_while`](Self::wait_while).
    ///
    /// # Errors
    ///
    /// If the mutex is poisoned when re-locked, the guard comes inside the
    /// [`PoisonError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use weave::sync::{Condvar, Mutex};
    /// let pair = Arc::new((Mutex::new(0), Condvar::new()));
    /// let p2 = pair.clone();
    /// let h = weave::spawn(move || {
    ///     *p2.0.lock().unwrap() = 1;
    ///     p2.1.notify_all();
    /// });
    /// let mut g = pair.0.lock().unwrap();
    /// while *g == 0 {
    ///     g = pair.1.wait(g).unwrap();
    /// }
    /// drop(g);
    /// h.join().unwrap();
    /// ```
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> LockResult<MutexGuard<'a, T>> {
        self.wait_deadline(guard, None).0
    }

    /// Waits while `condition` returns true, re-checking after each wakeup;
    /// returns with the lock held and the condition false.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use weave::sync::{Condvar, Mutex};
    /// let pair = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    /// let p2 = pair.clone();
    /// let h = weave::spawn(move || {
    ///     p2.0.lock().unwrap().push(1);
    ///     p2.1.notify_one();
    /// });
    /// let g = pair.1.wait_while(pair.0.lock().unwrap(), |v| v.is_empty()).unwrap();
    /// assert_eq!(*g, [1]);
    /// drop(g);
    /// h.join().unwrap();
    /// ```
    pub fn wait_while<'a, T: ?Sized, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: F,
    ) -> LockResult<MutexGuard<'a, T>>
    where
        F: FnMut(&mut T) -> bool,
    {
        while condition(&mut *guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use weave::sync::{Condvar, Mutex};
    /// let (m, cv) = (Mutex::new(()), Condvar::new());
    /// let (_g, r) = cv.wait_timeout(m.lock().unwrap(), Duration::from_millis(1)).unwrap();
    /// assert!(r.timed_out());
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)> {
        let (res, notified) = self.wait_deadline(guard, Instant::now().checked_add(timeout));
        let r = WaitTimeoutResult(!notified);
        match res {
            Ok(g) => Ok((g, r)),
            Err(e) => Err(PoisonError::new((e.into_inner(), r))),
        }
    }

    /// Like [`wait_while`](Self::wait_while), for at most `timeout` in all.
    /// The result says whether it timed out with the condition still true.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use weave::sync::{Condvar, Mutex};
    /// let (m, cv) = (Mutex::new(false), Condvar::new());
    /// let (g, r) = cv
    ///     .wait_timeout_while(m.lock().unwrap(), Duration::from_millis(1), |ready| !*ready)
    ///     .unwrap();
    /// assert!(r.timed_out() && !*g);
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn wait_timeout_while<'a, T: ?Sized, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        timeout: Duration,
        mut condition: F,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)>
    where
        F: FnMut(&mut T) -> bool,
    {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if !condition(&mut *guard) {
                return Ok((guard, WaitTimeoutResult(false)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((guard, WaitTimeoutResult(true)));
            }
            match self.wait_deadline(guard, deadline).0 {
                Ok(g) => guard = g,
                Err(e) => return Err(PoisonError::new((e.into_inner(), WaitTimeoutResult(false)))),
            }
        }
    }

    /// Wakes the longest-waiting waiter, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// weave::sync::Condvar::new().notify_one(); // nobody waits: no effect
    /// ```
    pub fn notify_one(&self) {
        let mut wake = Wakeups::new();
        let mut q = lock(&self.waiters);
        q.notify_one(&mut wake);
        drop(q);
        drop(wake);
    }

    /// Wakes every waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// weave::sync::Condvar::new().notify_all();
    /// ```
    pub fn notify_all(&self) {
        let mut wake = Wakeups::new();
        let mut q = lock(&self.waiters);
        q.notify_all(&mut wake);
        drop(q);
        drop(wake);
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &lock(&self.waiters).len())
            .finish()
    }
}
