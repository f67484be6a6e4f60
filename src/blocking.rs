//! A thread pool for calls that truly block: file I/O, DNS, `fsync`,
//! compression, a C library that sleeps.
//!
//! Such a call made directly on a fiber stops its whole worker: every fiber
//! on that worker waits. [`unblock`] runs the closure on a pool thread
//! instead and parks only the calling fiber until the value comes back.
//! [`spawn_blocking`] starts the closure and returns a [`BlockingHandle`] to
//! collect the result later.
//!
//! # The pool
//!
//! One pool per process, shared by all runtimes, started on first use.
//!
//! - Threads are created on demand, when a job arrives and no pool thread is
//!   idle, up to a maximum: 512 by default, or the value of the environment
//!   variable `WEAVE_BLOCKING_THREADS` (read once, at first use). Beyond the
//!   maximum, jobs queue in FIFO order.
//! - A thread idle for 10 seconds exits; an idle process keeps no pool
//!   threads.
//! - Threads are named `weave-blocking`.
//! - A panic in a job is caught on the pool thread (the pool thread lives on)
//!   and handed to the caller: [`unblock`] resumes it, and
//!   [`BlockingHandle::join`] returns it as `Err`.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use once_cell::sync::OnceCell;

use crate::fiber::raw::Unparker;
use crate::sync::oneshot;

/// Environment variable that sets the maximum number of pool threads.
pub const THREADS_ENV: &str = "WEAVE_BLOCKING_THREADS";

/// Maximum number of pool threads unless [`THREADS_ENV`] says otherwise.
pub const DEFAULT_MAX_THREADS: usize = 512;

/// How long a pool thread waits for a job before it exits.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<PoolState>,
    /// Signalled once per job queued for an idle thread.
    job_ready: Condvar,
    max_threads: usize,
}

struct PoolState {
    queue: VecDeque<Job>,
    /// Threads waiting on `job_ready`.
    idle: usize,
    /// Threads alive.
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceCell<Pool> = OnceCell::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(PoolState {
            queue: VecDeque::new(),
            idle: 0,
            threads: 0,
        }),
        job_ready: Condvar::new(),
        max_threads: max_threads_from_env(),
    })
}

fn max_threads_from_env() -> usize {
    match std::env::var(THREADS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                log::warn!("weave: ignoring {THREADS_ENV}={v:?}: expected a positive integer");
                DEFAULT_MAX_THREADS
            }
        },
        Err(_) => DEFAULT_MAX_THREADS,
    }
}

impl Pool {
    fn submit(&'static self, job: Job) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.queue.push_back(job);
        if st.idle >= st.queue.len() {
            // An idle thread is there for this job (each queued job has been
            // matched with one signal).
            drop(st);
            self.job_ready.notify_one();
            return;
        }
        if st.threads >= self.max_threads {
            return; // A busy thread takes it when done.
        }
        st.threads += 1;
        drop(st);
        let spawned = thread::Builder::new()
            .name("weave-blocking".into())
            .spawn(move || self.run());
        if let Err(e) = spawned {
            log::error!("weave: cannot start a blocking-pool thread: {e}");
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.threads -= 1;
            if st.threads == 0 {
                // Nobody would ever run the queue: run it here rather than
                // leave the callers waiting forever.
                let jobs = std::mem::take(&mut st.queue);
                drop(st);
                jobs.into_iter().for_each(|job| job());
            }
        }
    }

    /// A pool thread: runs jobs until it has been idle for `IDLE_TIMEOUT`.
    fn run(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                job(); // Jobs catch their own panics.
                st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.idle += 1;
            let (guard, timeout) = self
                .job_ready
                .wait_timeout(st, IDLE_TIMEOUT)
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }
}

/// Runs `f` on the blocking pool and returns a handle to its result.
///
/// # Examples
///
/// ```
/// let h = weave::blocking::spawn_blocking(|| std::fs::metadata("Cargo.toml").is_ok());
/// assert!(h.join().unwrap());
/// ```
pub fn spawn_blocking<F, T>(f: F) -> BlockingHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    pool().submit(Box::new(move || {
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(result); // The handle may be gone: nothing to do.
    }));
    BlockingHandle { rx }
}

/// Runs a blocking `f` without blocking the worker: on a fiber, `f` runs on
/// the blocking pool while the fiber parks, and its value comes back here;
/// on a plain thread, `f` simply runs on the caller's thread.
///
/// # Panics
///
/// Resumes `f`'s panic in the caller.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// let n = rt.block_on(|| {
///     // The worker keeps running other fibers during the sleep.
///     weave::blocking::unblock(|| {
///         std::thread::sleep(Duration::from_millis(10));
///         7
///     })
/// });
/// assert_eq!(n, 7);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn unblock<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if !crate::runtime::context::in_fiber() {
        return f();
    }
    match spawn_blocking(f).join() {
        Ok(v) => v,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// [`unblock`] for a closure that borrows from the caller: the caller does
/// not leave this frame, by return or by unwinding, before the job is over.
pub(crate) fn unblock_scoped<'a, F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'a,
    T: Send + 'a,
{
    /// Waits in `drop` until the job has finished (parking the fiber, or
    /// blocking the thread). Normally the job is over (or a few
    /// instructions from it) when the result arrives; this matters when the
    /// fiber is unwound while parked (cancelled, or its `timeout` expired).
    /// The wait itself is never cancelled: the job still borrows from this
    /// frame until it sets `done`.
    struct UntilDone(Arc<Mutex<Done>>);
    #[derive(Default)]
    struct Done {
        done: bool,
        waiter: Option<Unparker>,
    }
    impl Drop for UntilDone {
        fn drop(&mut self) {
            crate::fiber::without_cancellation(|| loop {
                {
                    let mut d = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                    if d.done {
                        return;
                    }
                    d.waiter = Some(Unparker::current());
                }
                crate::park();
            });
        }
    }

    let done = Arc::new(Mutex::new(Done::default()));
    let until_done = UntilDone(done.clone());
    let (tx, rx) = oneshot::channel();
    let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(result);
        // Everything borrowed for 'a is gone by now; only `done` is left.
        let waiter = {
            let mut d = done.lock().unwrap_or_else(PoisonError::into_inner);
            d.done = true;
            d.waiter.take()
        };
        if let Some(w) = waiter {
            w.unpark();
        }
    });
    // SAFETY: this only erases the lifetime 'a of what the job borrows. The
    // borrowed data outlives this call, and this call outlives the job:
    // `until_done` is dropped, on every path out of this frame including an
    // unwind, only after the job's last use of 'a data, when it sets `done`.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
    pool().submit(job);
    let result = rx.recv();
    drop(until_done);
    match result {
        Ok(Ok(v)) => v,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => unreachable!("the job always sends before it ends"),
    }
}

/// The result of a [`spawn_blocking`] job, to be collected.
///
/// Dropping the handle does not stop the job; its result is dropped.
pub struct BlockingHandle<T> {
    rx: oneshot::Receiver<thread::Result<T>>,
}

impl<T> BlockingHandle<T> {
    /// Waits for the job (parking the fiber, or blocking the thread) and
    /// returns its value.
    ///
    /// # Errors
    ///
    /// The job's panic payload, if it panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = weave::blocking::spawn_blocking(|| panic!("boom"));
    /// assert!(h.join().is_err());
    /// ```
    pub fn join(self) -> thread::Result<T> {
        match self.rx.recv() {
            Ok(result) => result,
            // Unreachable: every job sends before its sender drops, and a
            // panic inside the job is caught first.
            Err(_) => Err(Box::new("weave: blocking job vanished without a result")),
        }
    }

    /// True once the job has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = weave::blocking::spawn_blocking(|| 1);
    /// while !h.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(h.join().unwrap(), 1);
    /// ```
    pub fn is_finished(&self) -> bool {
        self.rx.is_ready()
    }
}

impl<T> fmt::Debug for BlockingHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
