//! A fiber-aware mutual-exclusion lock.
//!
//! # Protocol
//!
//! The lock word `state` has two bits:
//!
//! | bit      | meaning                                                       |
//! |----------|---------------------------------------------------------------|
//! | `LOCKED` | someone owns the lock                                         |
//! | `QUEUED` | the waiter queue may be non-empty; the owner must unlock slowly |
//!
//! Invariants: `QUEUED` implies `LOCKED`; `QUEUED` is set and cleared only
//! under the queue's std mutex; a non-empty queue implies `QUEUED`.
//!
//! - Uncontended lock and unlock are one CAS each (`0 -> LOCKED`,
//!   `LOCKED -> 0`), no queue lock.
//! - A contended locker takes the queue lock, then either acquires (the
//!   word was `0`) or sets `QUEUED` with a CAS *from a locked word* and
//!   enqueues itself, in the same critical section. Because the CAS needs
//!   `LOCKED`, the owner's fast unlock (`LOCKED -> 0`) now fails, and its slow
//!   unlock takes the queue lock, which the locker holds until it is queued:
//!   the owner is bound to find it. No wakeup is lost.
//! - The slow unlock **hands the lock over**: it pops the first waiter and
//!   leaves `LOCKED` set for it (clearing `QUEUED` if the queue is now
//!   empty). The woken waiter owns the lock when it returns from its park.
//!
//! So waiters are served strictly first come, first served and cannot be
//! starved; a newcomer may take the lock ahead of them only when nobody is
//! queued (the word is `0`), which is what keeps the uncontended path a
//! single CAS.
//!
//! The data sits in a `std::sync::Mutex` that is only ever `try_lock`ed by
//! the owner of the weave lock, so it never blocks, and it supplies the
//! poisoning (a guard dropped during a panic poisons the lock, as in std)
//! without any `unsafe` here.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

const LOCKED: u8 = 1;
const QUEUED: u8 = 2;

/// A mutual-exclusion lock for fibers and threads, shaped like
/// `std::sync::Mutex` (guards, poisoning).
///
/// A fiber that waits for the lock parks, and its worker runs other fibers;
/// a plain thread blocks. Unlike a std mutex, a guard may be held across a
/// park (I/O, `sleep`, a channel receive) without blocking the worker.
/// Waiters are served in arrival order.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use weave::sync::Mutex;
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// let n = rt.block_on(|| {
///     let m = Arc::new(Mutex::new(0));
///     let hs: Vec<_> = (0..10)
///         .map(|_| {
///             let m = m.clone();
///             weave::spawn(move || *m.lock().unwrap() += 1)
///         })
///         .collect();
///     hs.into_iter().for_each(|h| h.join().unwrap());
///     let n = *m.lock().unwrap();
///     n
/// });
/// assert_eq!(n, 10);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Mutex<T: ?Sized> {
    state: AtomicU8,
    waiters: std::sync::Mutex<WaitQueue>,
    data: std::sync::Mutex<T>,
}

/// Proof of owning a [`Mutex`]: dereferences to the data; unlocks on drop.
///
/// Not `Send`, like std's guard.
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard<'a, T: ?Sized> {
    // Field order matters: the data guard drops (and poisons, when
    // panicking) before the weave lock is released.
    data: std::sync::MutexGuard<'a, T>,
    owner: Owner<'a, T>,
}

/// Releases the weave lock word on drop.
pub(crate) struct Owner<'a, T: ?Sized> {
    pub(crate) mutex: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    ///
    /// # Examples
    ///
    /// ```
    /// static COUNT: weave::sync::Mutex<u32> = weave::sync::Mutex::new(0);
    /// *COUNT.lock().unwrap() += 1;
    /// ```
    pub const fn new(t: T) -> Mutex<T> {
        Mutex {
            state: AtomicU8::new(0),
            waiters: std::sync::Mutex::new(WaitQueue::new()),
            data: std::sync::Mutex::new(t),
        }
    }

    /// Consumes the mutex and returns the data.
    ///
    /// # Errors
    ///
    /// The data inside a [`PoisonError`] if the mutex is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = weave::sync::Mutex::new(3);
    /// assert_eq!(m.into_inner().unwrap(), 3);
    /// ```
    pub fn into_inner(self) -> LockResult<T> {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    fn guard(&self) -> LockResult<MutexGuard<'_, T>> {
        let owner = Owner { mutex: self };
        match self.data.try_lock() {
            Ok(data) => Ok(MutexGuard { data, owner }),
            Err(TryLockError::Poisoned(e)) => Err(PoisonError::new(MutexGuard {
                data: e.into_inner(),
                owner,
            })),
            Err(TryLockError::WouldBlock) => {
                unreachable!("weave::sync::Mutex: data locked while its lock word was free")
            }
        }
    }

    /// Acquires the lock, parking (or blocking the thread) while another
    /// fiber or thread holds it.
    ///
    /// Locking a mutex the caller already holds deadlocks, as with std.
    ///
    /// # Errors
    ///
    /// If a holder panicked, the mutex is poisoned; the guard comes inside
    /// the [`PoisonError`].
    ///
    /// # Examples
    ///
    /// ```
    /// let m = weave::sync::Mutex::new(vec![1]);
    /// m.lock().unwrap().push(2);
    /// assert_eq!(*m.lock().unwrap(), [1, 2]);
    /// ```
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        self.guard()
    }

    fn lock_slow(&self) {
        let mut q = lock(&self.waiters);
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s == 0 {
                // Free and nobody queued (`QUEUED` implies `LOCKED`).
                match self
                    .state
                    .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return,
                    Err(now) => s = now,
                }
            } else {
                // Only from a locked word: the owner's fast unlock must fail.
                match self.state.compare_exchange(
                    s,
                    LOCKED | QUEUED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => s = now,
                }
            }
        }
        let p = Pending::new(
            &self.waiters,
            &mut q,
            |q| q,
            Pos::Back,
            move |q: &mut WaitQueue, granted| {
                let mut wake = Wakeups::new();
                if granted {
                    // Unwinding with the lock handed to us: hand it on.
                    self.hand_over(q, &mut wake);
                } else if q.is_empty() {
                    self.state.fetch_and(!QUEUED, Ordering::Relaxed);
                }
                wake
            },
        );
        drop(q);
        let (_q, granted) = p.wait(None);
        debug_assert!(granted, "an untimed lock waiter returns only when granted");
        // The hand-over happened under the queue lock, which we just took:
        // the previous owner's writes are visible.
    }

    /// Acquires the lock if it is free now.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if it is held, [`TryLockError::Poisoned`]
    /// (with the guard) if it is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = weave::sync::Mutex::new(1);
    /// let g = m.lock().unwrap();
    /// assert!(m.try_lock().is_err());
    /// drop(g);
    /// assert!(m.try_lock().is_ok());
    /// ```
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(TryLockError::WouldBlock);
        }
        self.guard().map_err(TryLockError::Poisoned)
    }

    /// True if a holder panicked while holding the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = weave::sync::Mutex::new(0);
    /// assert!(!m.is_poisoned());
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.data.is_poisoned()
    }

    /// Clears the poisoned state.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let m = Arc::new(weave::sync::Mutex::new(0));
    /// let m2 = m.clone();
    /// let _ = std::thread::spawn(move || {
    ///     let _g = m2.lock().unwrap();
    ///     panic!("poison it");
    /// })
    /// .join();
    /// assert!(m.is_poisoned());
    /// m.clear_poison();
    /// assert!(!m.is_poisoned());
    /// ```
    pub fn clear_poison(&self) {
        self.data.clear_poison();
    }

    /// A mutable reference to the data; no locking needed.
    ///
    /// # Errors
    ///
    /// The reference inside a [`PoisonError`] if the mutex is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut m = weave::sync::Mutex::new(1);
    /// *m.get_mut().unwrap() = 2;
    /// assert_eq!(*m.lock().unwrap(), 2);
    /// ```
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        self.data.get_mut()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Gives the lock to the first waiter, or frees it. Called by the owner
    /// under the queue lock.
    fn hand_over(&self, q: &mut WaitQueue, wake: &mut Wakeups) {
        if q.notify_one(wake) {
            if q.is_empty() {
                self.state.store(LOCKED, Ordering::Release);
            }
        } else {
            self.state.store(0, Ordering::Release);
        }
    }

    fn unlock(&self) {
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        let mut wake = Wakeups::new();
        let mut q = lock(&self.waiters);
        self.hand_over(&mut q, &mut wake);
        drop(q);
        drop(wake);
    }
}

impl<T: ?Sized> Drop for Owner<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// Splits the guard (for `Condvar::wait`). Drop the data guard first,
    /// then the owner, as dropping the whole guard would.
    pub(crate) fn into_parts(self) -> (std::sync::MutexGuard<'a, T>, Owner<'a, T>) {
        (self.data, self.owner)
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(t: T) -> Mutex<T> {
        Mutex::new(t)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        match self.try_lock() {
            Ok(g) => d.field("data", &&*g),
            Err(TryLockError::Poisoned(g)) => d.field("data", &&*g.into_inner()),
            Err(TryLockError::WouldBlock) => d.field("data", &format_args!("<locked>")),
        };
        d.field("poisoned", &self.is_poisoned()).finish()
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
