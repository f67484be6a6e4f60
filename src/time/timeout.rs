//! Scoped deadlines: [`timeout`] and [`timeout_at`].

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::fiber::cancel::{self, DeadlineUnwind};

/// The error of a [`timeout`] whose deadline passed before the work was
/// done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(e: Elapsed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

/// Runs `work` on the caller's fiber (or thread) with a deadline `dur` from
/// now: every blocking call inside it (socket I/O, `sleep`, every wait in
/// [`crate::sync`], `join`, `park`) observes the deadline, and when it
/// passes, the work is stopped at its next blocking point and `timeout`
/// returns `Err(Elapsed)`.
///
/// Like a Go context's deadline, it is scoped: it covers whatever `work`
/// calls, third-party code included, with no parameter to pass down.
/// Timeouts nest; the earliest deadline wins. The work is stopped by
/// unwinding its stack from the blocking point, as
/// [`JoinHandle::cancel`](crate::JoinHandle::cancel) does (destructors run;
/// see [`fiber::cancel`](crate::fiber::cancel)). Work that does not block
/// is not interrupted: if it returns after the deadline without having
/// blocked since, its value is returned.
///
/// # Errors
///
/// [`Elapsed`] if the deadline passed at a blocking point inside `work`.
///
/// # Panics
///
/// Resumes a panic of `work` (and lets a cancellation of the caller through).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let (tx, rx) = weave::sync::mpsc::channel::<u32>();
///     // Nothing is ever sent: the receive is stopped after 10 ms.
///     let r = weave::time::timeout(Duration::from_millis(10), || rx.recv());
///     assert!(r.is_err());
///     tx.send(7).unwrap();
///     let r = weave::time::timeout(Duration::from_secs(10), || rx.recv());
///     assert_eq!(r.unwrap(), Ok(7));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout<F, T>(dur: Duration, work: F) -> Result<T, Elapsed>
where
    F: FnOnce() -> T,
{
    match Instant::now().checked_add(dur) {
        Some(deadline) => timeout_at(deadline, work),
        // Too far away to represent: no deadline.
        None => Ok(work()),
    }
}

/// [`timeout`] with an absolute deadline.
///
/// # Errors
///
/// [`Elapsed`] if the deadline passed at a blocking point inside `work`.
///
/// # Panics
///
/// Resumes a panic of `work` (and lets a cancellation of the caller through).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     let deadline = Instant::now() + Duration::from_millis(20);
///     let r = weave::time::timeout_at(deadline, || {
///         // The inner, later deadline does not extend the outer one.
///         weave::time::timeout(Duration::from_secs(60), || weave::sleep(Duration::from_secs(60)))
///     });
///     assert!(r.is_err());
///     assert!(Instant::now() >= deadline);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout_at<F, T>(deadline: Instant, work: F) -> Result<T, Elapsed>
where
    F: FnOnce() -> T,
{
    /// Closes the scope on every way out, unwinding included.
    struct Scope(Option<(Instant, u64)>);
    impl Drop for Scope {
        fn drop(&mut self) {
            cancel::restore_scope(self.0);
        }
    }

    let id = cancel::next_scope_id();
    let scope = Scope(cancel::enter_scope(deadline, id));
    let result = panic::catch_unwind(AssertUnwindSafe(work));
    drop(scope);
    match result {
        Ok(v) => Ok(v),
        Err(p)
            if p.downcast_ref::<DeadlineUnwind>()
                .is_some_and(|d| d.0 == id) =>
        {
            cancel::caught();
            Err(Elapsed(()))
        }
        Err(p) => panic::resume_unwind(p),
    }
}
