//! A fiber-aware reader-writer lock.
//!
//! # Protocol
//!
//! `readers`, `writer` and two waiter queues live under one std mutex. Both
//! queues are hand-off queues: a waiter is woken already owning the lock (the
//! releaser counted it in `readers` or set `writer` for it). Invariant: when
//! the lock is free, both queues are empty.
//!
//! Fairness is phase-fair, so neither side starves:
//!
//! - a reader may join current readers only while no writer waits;
//! - the last reader out hands the lock to the first waiting writer;
//! - a writer out admits **every** reader waiting at that moment (readers
//!   that queued behind a waiting writer go before the next writer); with no
//!   readers waiting it hands over to the next writer.
//!
//! The data sits in a `std::sync::RwLock` that is only `try_read`/`try_write`
//! locked by owners of the weave lock, so it never blocks and supplies
//! poisoning like std's.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{LockResult, Mutex as StdMutex, PoisonError, TryLockError, TryLockResult};

use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

#[derive(Debug)]
struct State {
    readers: usize,
    writer: bool,
    read_q: WaitQueue,
    write_q: WaitQueue,
}

impl State {
    /// The lock just became free: hand it to waiters, preferring `readers_first`.
    fn grant(&mut self, readers_first: bool, wake: &mut Wakeups) {
        debug_assert!(!self.writer && self.readers == 0);
        if (readers_first || self.write_q.is_empty()) && !self.read_q.is_empty() {
            self.readers += self.read_q.len();
            self.read_q.notify_all(wake);
            return;
        }
        if self.write_q.notify_one(wake) {
            self.writer = true;
        }
    }

    fn release_read(&mut self, wake: &mut Wakeups) {
        self.readers -= 1;
        if self.readers == 0 {
            self.grant(false, wake);
        }
    }

    fn release_write(&mut self, wake: &mut Wakeups) {
        self.writer = false;
        self.grant(true, wake);
    }
}

/// A reader-writer lock for fibers and threads, shaped like
/// `std::sync::RwLock`: many readers or one writer. Waiting fibers park;
/// plain threads block. Neither readers nor writers starve (see the module
/// notes).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use weave::sync::RwLock;
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let lock = Arc::new(RwLock::new(0));
///     let l2 = lock.clone();
///     weave::spawn(move || *l2.write().unwrap() += 1).join().unwrap();
///     assert_eq!(*lock.read().unwrap(), 1);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RwLock<T: ?Sized> {
    state: StdMutex<State>,
    data: std::sync::RwLock<T>,
}

/// Shared access to a [`RwLock`]'s data; released on drop.
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    // Field order: the data guard drops before the weave lock is released.
    data: std::sync::RwLockReadGuard<'a, T>,
    _owner: ReadOwner<'a, T>,
}

/// Exclusive access to a [`RwLock`]'s data; released on drop.
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    // Field order: the data guard drops (and poisons, when panicking)
    // before the weave lock is released.
    data: std::sync::RwLockWriteGuard<'a, T>,
    _owner: WriteOwner<'a, T>,
}

struct ReadOwner<'a, T: ?Sized>(&'a RwLock<T>);
struct WriteOwner<'a, T: ?Sized>(&'a RwLock<T>);

impl<T> RwLock<T> {
    /// A new unlocked lock.
    ///
    /// # Examples
    ///
    /// ```
    /// static CONFIG: weave::sync::RwLock<u32> = weave::sync::RwLock::new(1);
    /// assert_eq!(*CONFIG.read().unwrap(), 1);
    /// ```
    pub const fn new(t: T) -> RwLock<T> {
        RwLock {
            state: StdMutex::new(State {
                readers: 0,
                writer: false,
                read_q: WaitQueue::new(),
                write_q: WaitQueue::new(),
            }),
            data: std::sync::RwLock::new(t),
        }
    }

    /// Consumes the lock and returns the data.
    ///
    /// # Errors
    ///
    /// The data inside a [`PoisonError`] if the lock is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(weave::sync::RwLock::new(5).into_inner().unwrap(), 5);
    /// ```
    pub fn into_inner(self) -> LockResult<T> {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    fn read_guard(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        let owner = ReadOwner(self);
        match self.data.try_read() {
            Ok(data) => Ok(RwLockReadGuard {
                data,
                _owner: owner,
            }),
            Err(TryLockError::Poisoned(e)) => Err(PoisonError::new(RwLockReadGuard {
                data: e.into_inner(),
                _owner: owner,
            })),
            Err(TryLockError::WouldBlock) => {
                unreachable!("weave::sync::RwLock: data write-locked while readers own it")
            }
        }
    }

    fn write_guard(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        let owner = WriteOwner(self);
        match self.data.try_write() {
            Ok(data) => Ok(RwLockWriteGuard {
                data,
                _owner: owner,
            }),
            Err(TryLockError::Poisoned(e)) => Err(PoisonError::new(RwLockWriteGuard {
                data: e.into_inner(),
                _owner: owner,
            })),
            Err(TryLockError::WouldBlock) => {
                unreachable!("weave::sync::RwLock: data locked while a writer owns it")
            }
        }
    }

    /// Takes shared access, waiting while a writer holds the lock or waits
    /// for it.
    ///
    /// # Errors
    ///
    /// If a writer panicked, the lock is poisoned; the guard comes inside the
    /// [`PoisonError`].
    ///
    /// # Examples
    ///
    /// ```
    /// let l = weave::sync::RwLock::new(1);
    /// let (a, b) = (l.read().unwrap(), l.read().unwrap());
    /// assert_eq!(*a + *b, 2);
    /// ```
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        let mut st = lock(&self.state);
        if !st.writer && st.write_q.is_empty() {
            st.readers += 1;
            drop(st);
            return self.read_guard();
        }
        let p = Pending::new(
            &self.state,
            &mut st,
            |s| &mut s.read_q,
            Pos::Back,
            |s: &mut State, granted| {
                let mut wake = Wakeups::new();
                if granted {
                    s.release_read(&mut wake);
                }
                wake
            },
        );
        drop(st);
        let (st, granted) = p.wait(None);
        debug_assert!(granted);
        drop(st);
        self.read_guard()
    }

    /// Takes exclusive access, waiting until no reader or writer holds it.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = weave::sync::RwLock::new(vec![1]);
    /// l.write().unwrap().push(2);
    /// assert_eq!(l.read().unwrap().len(), 2);
    /// ```
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        let mut st = lock(&self.state);
        if !st.writer && st.readers == 0 {
            st.writer = true;
            drop(st);
            return self.write_guard();
        }
        let p = Pending::new(
            &self.state,
            &mut st,
            |s| &mut s.write_q,
            Pos::Back,
            |s: &mut State, granted| {
                let mut wake = Wakeups::new();
                if granted {
                    s.release_write(&mut wake);
                } else if s.write_q.is_empty() && !s.writer && !s.read_q.is_empty() {
                    // Readers queued only because we waited: admit them.
                    s.readers += s.read_q.len();
                    s.read_q.notify_all(&mut wake);
                }
                wake
            },
        );
        drop(st);
        let (st, granted) = p.wait(None);
        debug_assert!(granted);
        drop(st);
        self.write_guard()
    }

    /// Takes shared access if that needs no waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] or [`TryLockError::Poisoned`].
    ///
    /// # Examples
    ///
    /// ```
    /// let l = weave::sync::RwLock::new(0);
    /// let w = l.write().unwrap();
    /// assert!(l.try_read().is_err());
    /// drop(w);
    /// assert!(l.try_read().is_ok());
    /// ```
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        let mut st = lock(&self.state);
        if st.writer || !st.write_q.is_empty() {
            return Err(TryLockError::WouldBlock);
        }
        st.readers += 1;
        drop(st);
        self.read_guard().map_err(TryLockError::Poisoned)
    }

    /// Takes exclusive access if that needs no waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] or [`TryLockError::Poisoned`].
    ///
    /// # Examples
    ///
    /// ```
    /// let l = weave::sync::RwLock::new(0);
    /// let r = l.read().unwrap();
    /// assert!(l.try_write().is_err());
    /// drop(r);
    /// assert!(l.try_write().is_ok());
    /// ```
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        let mut st = lock(&self.state);
        if st.writer || st.readers > 0 {
            return Err(TryLockError::WouldBlock);
        }
        st.writer = true;
        drop(st);
        self.write_guard().map_err(TryLockError::Poisoned)
    }

    /// True if a writer panicked while holding the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!weave::sync::RwLock::new(0).is_poisoned());
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.data.is_poisoned()
    }

    /// Clears the poisoned state.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = weave::sync::RwLock::new(0);
    /// l.clear_poison();
    /// ```
    pub fn clear_poison(&self) {
        self.data.clear_poison();
    }

    /// A mutable reference to the data; no locking needed.
    ///
    /// # Errors
    ///
    /// The reference inside a [`PoisonError`] if the lock is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut l = weave::sync::RwLock::new(0);
    /// *l.get_mut().unwrap() = 3;
    /// assert_eq!(*l.read().unwrap(), 3);
    /// ```
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        self.data.get_mut()
    }
}

impl<T: ?Sized> Drop for ReadOwner<'_, T> {
    fn drop(&mut self) {
        let mut wake = Wakeups::new();
        lock(&self.0.state).release_read(&mut wake);
        drop(wake);
    }
}

impl<T: ?Sized> Drop for WriteOwner<'_, T> {
    fn drop(&mut self) {
        let mut wake = Wakeups::new();
        lock(&self.0.state).release_write(&mut wake);
        drop(wake);
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> RwLock<T> {
        RwLock::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(t: T) -> RwLock<T> {
        RwLock::new(t)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Ok(g) => d.field("data", &&*g),
            Err(TryLockError::Poisoned(g)) => d.field("data", &&*g.into_inner()),
            Err(TryLockError::WouldBlock) => d.field("data", &format_args!("<locked>")),
        };
        d.field("poisoned", &self.is_poisoned()).finish()
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
