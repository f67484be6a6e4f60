use std::time::{Duration, Instant};

use crate::fiber::park_until;

/// Puts the caller to sleep for at least `dur`.
///
/// On a fiber, the fiber parks on its worker's timers and the worker runs
/// other fibers meanwhile; on a plain thread this is `std::thread::sleep`.
/// A cancellation point: a cancelled fiber, or an expired
/// [`timeout`](crate::time::timeout), stops the sleep.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let t = Instant::now();
///     weave::sleep(Duration::from_millis(5));
///     assert!(t.elapsed() >= Duration::from_millis(5));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sleep(dur: Duration) {
    match Instant::now().checked_add(dur) {
        Some(deadline) => sleep_until(deadline),
        None => loop {
            park_until(None);
        },
    }
}

/// Puts the caller to sleep until `deadline`.
///
/// A cancellation point, like [`sleep`].
pub fn sleep_until(deadline: Instant) {
    if !crate::runtime::context::in_fiber() {
        // A plain thread: std's sleep, cut short by a scoped deadline.
        let until = match crate::fiber::cancel::check_thread() {
            Some(scope) => scope.min(deadline),
            None => deadline,
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
        crate::fiber::cancel::check_thread();
        return;
    }
    // Parks may return early (a stray unpark); sleep until the deadline.
    while Instant::now() < deadline {
        park_until(Some(deadline));
    }
}
