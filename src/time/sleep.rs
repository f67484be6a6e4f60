use std::time::{Duration, Instant};

use crate::fiber::park_until;

/// Puts the caller to sleep for at least `dur`.
///
/// On a fiber, the fiber parks on its worker's timers and the worker runs
/// other fibers meanwhile; on a plain thread this is `std::thread::sleep`.
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
pub fn sleep_until(deadline: Instant) {
    if !crate::runtime::context::in_fiber() {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        return;
    }
    // Parks may return early (a stray unpark); sleep until the deadline.
    while Instant::now() < deadline {
        park_until(Some(deadline));
    }
}
