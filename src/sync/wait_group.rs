//! A wait group: wait until a set of fibers or threads is done.
//!
//! # Protocol
//!
//! `count` (clones alive) and the waiter queue live under one std mutex.
//! Dropping a clone decrements `count`; the decrement to zero notifies every
//! waiter. A waiter checks `count == 0` under the lock before it enqueues, so
//! the last drop either happened before (it sees zero) or finds it queued.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

struct State {
    count: usize,
    waiters: WaitQueue,
}

/// Waits for a group of fibers or threads: each holds a clone and drops it
/// when done; [`wait`](Self::wait) blocks until every other clone is gone.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use weave::sync::WaitGroup;
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let wg = WaitGroup::new();
///     let done = Arc::new(AtomicU32::new(0));
///     for _ in 0..5 {
///         let (wg, done) = (wg.clone(), done.clone());
///         weave::spawn(move || {
///             done.fetch_add(1, Ordering::SeqCst);
///             drop(wg);
///         });
///     }
///     wg.wait();
///     assert_eq!(done.load(Ordering::SeqCst), 5);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct WaitGroup {
    /// `None` only after `wait` took it.
    inner: Option<Arc<Mutex<State>>>,
}

impl WaitGroup {
    /// A new group of one (this handle).
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = weave::sync::WaitGroup::new();
    /// wg.wait(); // nobody else: returns at once
    /// ```
    pub fn new() -> WaitGroup {
        WaitGroup {
            inner: Some(Arc::new(Mutex::new(State {
                count: 1,
                waiters: WaitQueue::new(),
            }))),
        }
    }

    fn inner(&self) -> &Arc<Mutex<State>> {
        self.inner
            .as_ref()
            .expect("a WaitGroup is alive until dropped")
    }

    /// Drops this handle and waits until every other handle is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = weave::sync::WaitGroup::new();
    /// let wg2 = wg.clone();
    /// let h = std::thread::spawn(move || drop(wg2));
    /// wg.wait();
    /// h.join().unwrap();
    /// ```
    pub fn wait(mut self) {
        let inner = self
            .inner
            .take()
            .expect("a WaitGroup is alive until dropped");
        let mut st = lock(&inner);
        leave(&mut st).wake();
        while st.count != 0 {
            // Notifications go to every waiter at once: nothing to pass on.
            let p = Pending::new(&inner, &mut st, |s| &mut s.waiters, Pos::Back, |_, _| ());
            drop(st);
            st = p.wait(None).0;
        }
    }

    /// Number of handles alive now.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = weave::sync::WaitGroup::new();
    /// let _c = wg.clone();
    /// assert_eq!(wg.count(), 2);
    /// ```
    pub fn count(&self) -> usize {
        lock(self.inner()).count
    }
}

/// One handle leaves; the last one wakes the waiters (wake after unlock).
fn leave(st: &mut State) -> Wakeups {
    st.count -= 1;
    let mut wake = Wakeups::new();
    if st.count == 0 {
        st.waiters.notify_all(&mut wake);
    }
    wake
}

impl Default for WaitGroup {
    fn default() -> WaitGroup {
        WaitGroup::new()
    }
}

impl Clone for WaitGroup {
    fn clone(&self) -> WaitGroup {
        let inner = self.inner().clone();
        lock(&inner).count += 1;
        WaitGroup { inner: Some(inner) }
    }
}

impl Drop for WaitGroup {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let wake = leave(&mut lock(&inner));
            drop(wake);
        }
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(inner) => f
                .debug_struct("WaitGroup")
                .field("count", &lock(inner).count)
                .finish(),
            None => f.write_str("WaitGroup { .. }"),
        }
    }
}
