//! A counting semaphore.
//!
//! # Protocol
//!
//! `permits` and the waiter queue live under one std mutex. Invariant:
//! **permits are idle only when nobody waits** (`permits > 0` implies an
//! empty queue). A released permit goes straight to the first waiter (a
//! hand-off: the waiter is notified *owning* it), and only when the queue is
//! empty does it go back to the pool. An acquirer takes from the pool only
//! if nobody waits, so nobody overtakes a waiter: first come, first served.
//!
//! A waiter whose timeout expires after it was handed a permit keeps it and
//! succeeds. One that unwinds (its runtime shut down) while holding a
//! handed-over permit releases it, so no permit is ever lost.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

struct State {
    permits: usize,
    waiters: WaitQueue,
}

/// A counting semaphore for fibers and threads: [`acquire`](Self::acquire)
/// takes a permit (parking while none is free), and the returned
/// [`SemaphorePermit`] gives it back when dropped. Waiters are served in
/// arrival order.
///
/// # Examples
///
/// At most two fibers at a time in a section:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use weave::sync::Semaphore;
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let sem = Arc::new(Semaphore::new(2));
///     let inside = Arc::new(AtomicUsize::new(0));
///     let hs: Vec<_> = (0..8)
///         .map(|_| {
///             let (sem, inside) = (sem.clone(), inside.clone());
///             weave::spawn(move || {
///                 let _permit = sem.acquire();
///                 assert!(inside.fetch_add(1, Ordering::SeqCst) < 2);
///                 weave::yield_now();
///                 inside.fetch_sub(1, Ordering::SeqCst);
///             })
///         })
///         .collect();
///     hs.into_iter().for_each(|h| h.join().unwrap());
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Semaphore {
    state: Mutex<State>,
}

/// One permit of a [`Semaphore`], released on drop (or kept forever with
/// [`forget`](Self::forget)).
#[must_use = "dropping a permit releases it at once"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
}

impl Semaphore {
    /// A semaphore with `permits` free permits.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = weave::sync::Semaphore::new(3);
    /// assert_eq!(sem.available_permits(), 3);
    /// ```
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: Mutex::new(State {
                permits,
                waiters: WaitQueue::new(),
            }),
        }
    }

    fn acquire_deadline(&self, deadline: Option<Instant>) -> Option<SemaphorePermit<'_>> {
        let mut st = lock(&self.state);
        if st.permits > 0 {
            // Idle permits imply nobody waits (see the module docs).
            st.permits -= 1;
            return Some(SemaphorePermit { sem: self });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let p = Pending::new(
            &self.state,
            &mut st,
            |s| &mut s.waiters,
            Pos::Back,
            |s: &mut State, granted| {
                // Unwinding while owning a handed-over permit: pass it on.
                let mut wake = Wakeups::new();
                if granted {
                    release(s, 1, &mut wake);
                }
                wake
            },
        );
        drop(st);
        let (st, granted) = p.wait(deadline);
        drop(st);
        // Not `granted.then_some(..)`: that builds a permit even when none
        // was granted, and dropping it would add a permit that never existed.
        if granted {
            Some(SemaphorePermit { sem: self })
        } else {
            None
        }
    }

    /// Takes a permit, parking (or blocking the thread) until one is free.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = weave::sync::Semaphore::new(1);
    /// let p = sem.acquire();
    /// assert_eq!(sem.available_permits(), 0);
    /// drop(p);
    /// assert_eq!(sem.available_permits(), 1);
    /// ```
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        self.acquire_deadline(None)
            .expect("an untimed acquire returns only with a permit")
    }

    /// Takes a permit if one is free now and nobody is waiting ahead.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = weave::sync::Semaphore::new(1);
    /// let p = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_none());
    /// # drop(p);
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        let mut st = lock(&self.state);
        if st.permits > 0 {
            st.permits -= 1;
            Some(SemaphorePermit { sem: self })
        } else {
            None
        }
    }

    /// Takes a permit, waiting at most `timeout`; `None` if none came.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let sem = weave::sync::Semaphore::new(0);
    /// assert!(sem.acquire_timeout(Duration::from_millis(1)).is_none());
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
        self.acquire_deadline(Instant::now().checked_add(timeout))
    }

    /// Adds `n` permits, waking up to `n` waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = weave::sync::Semaphore::new(0);
    /// sem.add_permits(2);
    /// assert_eq!(sem.available_permits(), 2);
    /// ```
    pub fn add_permits(&self, n: usize) {
        let mut wake = Wakeups::new();
        let mut st = lock(&self.state);
        release(&mut st, n, &mut wake);
        drop(st);
        drop(wake);
    }

    /// Permits free now.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(weave::sync::Semaphore::new(4).available_permits(), 4);
    /// ```
    pub fn available_permits(&self) -> usize {
        lock(&self.state).permits
    }
}

/// Hands `n` permits to waiters in order; the rest go to the pool.
fn release(st: &mut State, mut n: usize, wake: &mut Wakeups) {
    while n > 0 && st.waiters.notify_one(wake) {
        n -= 1;
    }
    st.permits += n;
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken forever (the semaphore has one fewer).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = weave::sync::Semaphore::new(1);
    /// sem.acquire().forget();
    /// assert_eq!(sem.available_permits(), 0);
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        self.sem.add_permits(1);
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("Semaphore")
            .field("permits", &st.permits)
            .field("waiters", &st.waiters.len())
            .finish()
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphorePermit { .. }")
    }
}
