//! A barrier: `n` fibers or threads wait until all `n` arrived.
//!
//! # Protocol
//!
//! `arrived`, `generation` and the waiter queue live under one std mutex.
//! The `n`-th arrival resets `arrived`, bumps `generation` and notifies every
//! waiter; a waiter sleeps until the generation it arrived in is over, so a
//! spurious wakeup, or an early start of the next round, cannot confuse it.

use std::fmt;
use std::sync::Mutex;

use super::waiter::{lock, Pending, Pos, WaitQueue, Wakeups};

struct State {
    arrived: usize,
    generation: u64,
    waiters: WaitQueue,
}

/// Lets `n` fibers or threads meet: each [`wait`](Self::wait) blocks until
/// `n` callers are waiting, then all proceed. Reusable, round after round.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use weave::sync::Barrier;
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let b = Arc::new(Barrier::new(3));
///     let hs: Vec<_> = (0..3)
///         .map(|_| {
///             let b = b.clone();
///             weave::spawn(move || b.wait().is_leader())
///         })
///         .collect();
///     let leaders = hs.into_iter().map(|h| h.join().unwrap()).filter(|l| *l).count();
///     assert_eq!(leaders, 1);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Barrier {
    n: usize,
    state: Mutex<State>,
}

/// What [`Barrier::wait`] returns: whether this caller was the leader (the
/// one that arrived last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult(bool);

impl BarrierWaitResult {
    /// True for exactly one caller per round.
    pub fn is_leader(&self) -> bool {
        self.0
    }
}

impl Barrier {
    /// A barrier for `n` parties (`0` behaves as `1`).
    ///
    /// # Examples
    ///
    /// ```
    /// let b = weave::sync::Barrier::new(1);
    /// assert!(b.wait().is_leader());
    /// ```
    pub const fn new(n: usize) -> Barrier {
        Barrier {
            n,
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                waiters: WaitQueue::new(),
            }),
        }
    }

    /// Waits until `n` callers are waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let b = Arc::new(weave::sync::Barrier::new(2));
    /// let b2 = b.clone();
    /// let h = std::thread::spawn(move || b2.wait().is_leader());
    /// let me = b.wait().is_leader();
    /// assert!(me ^ h.join().unwrap());
    /// ```
    pub fn wait(&self) -> BarrierWaitResult {
        let mut st = lock(&self.state);
        st.arrived += 1;
        if st.arrived >= self.n {
            st.arrived = 0;
            st.generation += 1;
            let mut wake = Wakeups::new();
            st.waiters.notify_all(&mut wake);
            drop(st);
            drop(wake);
            return BarrierWaitResult(true);
        }
        let generation = st.generation;
        while st.generation == generation {
            // Notifications go to every waiter at once: nothing to pass on.
            let p = Pending::new(
                &self.state,
                &mut st,
                |s| &mut s.waiters,
                Pos::Back,
                |_, _| (),
            );
            drop(st);
            st = p.wait(None).0;
        }
        BarrierWaitResult(false)
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("n", &self.n).finish()
    }
}
