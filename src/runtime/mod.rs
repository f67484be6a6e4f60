//! The runtime: worker threads that run fibers.
//!
//! # Scheduling
//!
//! Each worker thread owns:
//! - a `crossbeam_deque::Worker` of fibers that have **not started yet**; idle
//!   workers steal from it, and from the runtime-wide injector that receives
//!   fibers spawned from outside the runtime;
//! - a run queue of **started** fibers, which no other worker touches, plus an
//!   inbox (a lock-free queue) through which other threads hand it back its own
//!   fibers when they unpark them;
//! - a `mio::Poll`, its timers, and a pool of fiber stacks.
//!
//! A worker with nothing to run sleeps inside `epoll_wait`, bounded by its next
//! timer; an idle runtime burns no CPU. A thread that hands a worker work
//! writes to that worker's `mio::Waker` only if the worker said it was going to
//! sleep (a `SeqCst` flag checked on both sides, so the wakeup cannot be lost).
//!
//! # The migration rule
//!
//! **A fiber may be stolen only before it first runs; once started it stays on
//! its worker for life.** Resuming a suspended stack on another thread would be
//! undefined behaviour whenever that stack holds a `!Send` value (`Rc`, a
//! `RefCell` borrow, a `MutexGuard`) or a thread-local address the compiler
//! cached before the switch, and no type check can see what a stack holds. With
//! the rule, `thread_local!` and `!Send` locals held across a park are sound.
//! New fibers (every new connection) still spread across workers by stealing.
//!
//! The cost: a worker whose started fibers are all busy cannot shed them. New
//! work goes elsewhere, so this only shows when a few long-lived fibers are all
//! hot on one worker; `yield_now` keeps them fair among themselves.
//!
//! # Fairness
//!
//! A worker runs its started fibers in FIFO order. Every 4th scheduling tick
//! it starts a queued new fiber first, so fibers that keep yielding cannot
//! keep fresh connections from starting. Every 61 ticks it first polls I/O
//! without blocking, fires due timers and takes one fiber from the injector,
//! so neither I/O nor outside work starves behind a busy run queue.
//! A fiber that runs longer than the hog threshold (default 100 ms) without
//! parking is logged by name at `warn` level, since it delays every fiber on
//! its worker. The report goes through the `log` crate only; a program that
//! installed no logger (log's level is still `Off`, its default) would never
//! see it, so the first report is then also printed to stderr, once per
//! process, with a hint to install a logger for the rest.

pub(crate) mod context;
pub(crate) mod worker;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_deque::{Injector, Stealer};
use once_cell::sync::OnceCell;

use crate::fiber::raw::FiberRef;
use crate::fiber::JoinHandle;
use crate::io::ScheduledIo;

/// Set once the first hog report has gone to stderr.
static HOG_PRINTED: AtomicBool = AtomicBool::new(false);

/// Reports a fiber that ran for `ran` without parking on worker `worker`:
/// through `log` at `warn` level, and the first time also on stderr when no
/// logger is installed (see the module docs). `name` is called only when
/// the report goes somewhere, so a silenced report allocates nothing.
pub(crate) fn report_hog(name: impl FnOnce() -> String, ran: Duration, worker: usize) {
    let to_log = log::log_enabled!(log::Level::Warn);
    let to_stderr =
        log::max_level() == log::LevelFilter::Off && !HOG_PRINTED.swap(true, Ordering::Relaxed);
    if !to_log && !to_stderr {
        return;
    }
    let (name, ms) = (name(), ran.as_millis());
    if to_log {
        log::warn!(
            "weave: fiber '{name}' ran for {ms} ms without parking; it delays every fiber on worker {worker}"
        );
    }
    if to_stderr {
        eprintln!(
            "weave: fiber '{name}' ran for {ms} ms without parking; it delays every fiber on \
             worker {worker} (printed once because no logger is installed; install one, \
             e.g. env_logger, to see every report)"
        );
    }
}

/// Default stack size of a fiber: 256 KiB of address space, of which only the
/// pages a fiber touches become resident.
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// How long a runtime that shuts down waits for its cancelled fibers to
/// finish unwinding. A fiber still parked after that (a destructor that
/// waits for something that never comes) is abandoned: its stack is leaked,
/// the event logged, and its join handle reports it cancelled. See [`fiber::cancel`](crate::fiber::cancel).
pub const SHUTDOWN_UNWIND_LIMIT: Duration = Duration::from_secs(5);

/// Environment variable that sets the worker count of the default runtime.
pub const WORKERS_ENV: &str = "WEAVE_WORKERS";

/// Settings shared by all workers.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) stack_size: usize,
    pub(crate) thread_name: String,
    pub(crate) hog_threshold: Duration,
    pub(crate) stack_pool: usize,
}

/// What other threads may touch of one worker.
pub(crate) struct Remote {
    pub(crate) stealer: Stealer<FiberRef>,
    /// Started fibers of this worker, woken by other threads.
    pub(crate) inbox: Injector<FiberRef>,
    /// New fibers spawned to run on this worker (and stay). Only fibers that
    /// have not started sit here, so after shutdown any thread may drain it.
    pub(crate) pinned: Injector<FiberRef>,
    pub(crate) waker: mio::Waker,
    pub(crate) registry: mio::Registry,
    /// Set by the worker just before it sleeps in `poll`.
    pub(crate) sleeping: AtomicBool,
    /// I/O registrations dropped on other threads, freed by the worker between
    /// two event batches (see [`crate::io`]).
    pub(crate) released: Mutex<Vec<Arc<ScheduledIo>>>,
    /// Set after pushing to `released`, so the worker locks only when needed.
    pub(crate) any_released: AtomicBool,
    /// Set when the worker has left for good: its poller reports nothing
    /// more, and sockets registered with it fall back to `poll(2)`.
    pub(crate) closed: AtomicBool,
}

impl Remote {
    /// Wakes the worker if it is asleep (or about to be).
    pub(crate) fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::error!("weave: failed to wake a worker: {e}");
            }
        }
    }
}

/// State shared by a runtime's workers and handles.
pub(crate) struct Shared {
    pub(crate) injector: Injector<FiberRef>,
    pub(crate) remotes: Box<[Remote]>,
    pub(crate) num_sleeping: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    pub(crate) config: Config,
    /// Fibers spawned and not yet finished or dropped.
    pub(crate) live_fibers: AtomicUsize,
}

impl Shared {
    /// Wakes one sleeping worker, if any, to pick up new stealable work.
    pub(crate) fn notify_one(&self) {
        if self.num_sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        for r in self.remotes.iter() {
            if r.sleeping.load(Ordering::Relaxed) && r.sleeping.swap(false, Ordering::SeqCst) {
                if let Err(e) = r.waker.wake() {
                    log::error!("weave: failed to wake a worker: {e}");
                }
                return;
            }
        }
    }

    fn notify_all(&self) {
        for r in self.remotes.iter() {
            r.sleeping.store(false, Ordering::SeqCst);
            let _ = r.waker.wake();
        }
    }
}

/// Queues a fiber that has not started yet: on this worker's stealable queue
/// if called on a worker of the same runtime, else on the injector.
pub(crate) fn schedule_new(fiber: FiberRef) {
    let shared = fiber.shared.clone();
    let queued_locally = context::with_worker(|w| match w {
        Some(w) if Arc::ptr_eq(&w.shared, &shared) => {
            w.push_new(fiber.clone());
            true
        }
        _ => false,
    });
    if !queued_locally {
        shared.injector.push(fiber);
    }
    shared.notify_one();
}

/// Queues a fiber just spawned: anywhere (`worker` is `None`), or on worker
/// `worker` (modulo the worker count), where it stays.
///
/// A runtime that shut down runs nothing more, so the fiber is cancelled at
/// once and its handle reports [`Cancelled`](crate::fiber::Cancelled). That
/// holds when the shutdown races with the push too: the shutdown stores its
/// flag and then drains the queues of new fibers (after its workers left);
/// the spawner pushes and then reads the flag, with a `SeqCst` fence between
/// on both sides, so at least one of them sees the other and drains.
pub(crate) fn schedule_spawned(fiber: FiberRef, worker: Option<usize>) {
    let shared = fiber.shared.clone();
    if shared.shutdown.load(Ordering::SeqCst) {
        worker::drop_unstarted(fiber);
        return;
    }
    let queue = match worker {
        None => {
            schedule_new(fiber);
            &shared.injector
        }
        Some(i) => {
            // Only the owner pops its pinned queue, and the first run pins
            // the fiber there.
            let remote = &shared.remotes[i % shared.remotes.len()];
            remote.pinned.push(fiber);
            remote.notify();
            &remote.pinned
        }
    };
    std::sync::atomic::fence(Ordering::SeqCst);
    if shared.shutdown.load(Ordering::SeqCst) {
        // A fiber queued locally by a worker of this runtime is drained by
        // that worker's own shutdown.
        worker::cancel_queued(queue);
    }
}

/// Queues a started fiber on its owner worker (migration rule: never
/// elsewhere).
pub(crate) fn schedule_started(fiber: FiberRef) {
    let owner = fiber.owner.load(Ordering::Acquire);
    let fiber = context::with_worker(move |w| match w {
        Some(w) if w.index == owner && Arc::ptr_eq(&w.shared, &fiber.shared) => {
            w.push_ready(fiber);
            None
        }
        _ => Some(fiber),
    });
    if let Some(fiber) = fiber {
        let remote = &fiber.shared.remotes[owner];
        remote.inbox.push(fiber.clone());
        remote.notify();
    }
}

/// The index of the worker the caller runs on (a fiber, or code on a worker
/// thread), from 0 to the runtime's worker count; `None` on a plain thread.
/// A started fiber never changes worker, so the answer holds for the rest of
/// the fiber's life.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// let w = rt.block_on(weave::runtime::current_worker);
/// assert!(w.is_some_and(|w| w < 2));
/// assert_eq!(weave::runtime::current_worker(), None);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn current_worker() -> Option<usize> {
    context::with_worker(|w| w.map(|w| w.index))
}

/// Configures and builds a [`Runtime`].
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(2).stack_size(128 * 1024).build()?;
/// assert_eq!(rt.block_on(|| 6 * 7), 42);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    workers: Option<usize>,
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// A builder with the defaults: one worker per available core, 256 KiB
    /// stacks, a 100 ms hog threshold.
    pub fn new() -> Builder {
        Builder {
            workers: None,
            config: Config {
                stack_size: DEFAULT_STACK_SIZE,
                thread_name: "weave-worker".to_string(),
                hog_threshold: Duration::from_millis(100),
                stack_pool: 1024,
            },
        }
    }

    /// Number of worker threads (at least 1). Default: available cores.
    pub fn workers(mut self, n: usize) -> Builder {
        self.workers = Some(n.max(1));
        self
    }

    /// Default stack size of the runtime's fibers, in bytes (rounded up to
    /// whole pages, plus one guard page). Default: 256 KiB.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.config.stack_size = bytes;
        self
    }

    /// Prefix of worker thread names (`<prefix>-<index>`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Builder {
        self.config.thread_name = name.into();
        self
    }

    /// A fiber that runs longer than this without parking is logged at
    /// `warn` level (and, when no logger is installed, the first such report
    /// is printed to stderr). Default: 100 ms.
    pub fn hog_threshold(mut self, d: Duration) -> Builder {
        self.config.hog_threshold = d;
        self
    }

    /// How many finished fibers' stacks per worker keep their memory for
    /// quick reuse. Free stacks beyond `stack_pool` × workers (the largest
    /// such figure of any runtime in the process, since stacks are pooled
    /// process-wide) give their pages back to the kernel. Default: 1024.
    pub fn stack_pool(mut self, stacks: usize) -> Builder {
        self.config.stack_pool = stacks;
        self
    }

    /// Starts the worker threads.
    ///
    /// # Errors
    ///
    /// Fails if an epoll instance or a worker thread cannot be created.
    pub fn build(self) -> io::Result<Runtime> {
        crate::sys::ignore_sigpipe();
        crate::fiber::overflow::install_handler();
        let n = self.workers.unwrap_or_else(default_workers);
        crate::fiber::stack::raise_high_water(self.config.stack_pool.saturating_mul(n));
        let mut polls = Vec::with_capacity(n);
        let mut locals = Vec::with_capacity(n);
        let mut remotes = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), worker::WAKER_TOKEN)?;
            let registry = poll.registry().try_clone()?;
            let local = crossbeam_deque::Worker::new_fifo();
            remotes.push(Remote {
                stealer: local.stealer(),
                inbox: Injector::new(),
                pinned: Injector::new(),
                waker,
                registry,
                sleeping: AtomicBool::new(false),
                released: Mutex::new(Vec::new()),
                any_released: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            });
            polls.push(poll);
            locals.push(local);
        }
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            remotes: remotes.into_boxed_slice(),
            num_sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            config: self.config,
            live_fibers: AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(n);
        for (index, (poll, local)) in polls.into_iter().zip(locals).enumerate() {
            let shared2 = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-{index}", shared.config.thread_name))
                .spawn(move || worker::run(index, shared2, poll, local));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let rt = Runtime {
                        handle: Handle { shared },
                        threads,
                    };
                    drop(rt);
                    return Err(e);
                }
            }
        }
        Ok(Runtime {
            handle: Handle { shared },
            threads,
        })
    }
}

fn default_workers() -> usize {
    if let Some(n) = std::env::var(WORKERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.max(1);
    }
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// A set of worker threads running fibers. Dropping it stops the workers:
/// fibers that have not finished are cancelled (they unwind from their park
/// points, on their own worker, which keeps running them until they are
/// done; see [`fiber::cancel`](crate::fiber::cancel)), fibers that never
/// started are dropped unstarted, and their [`JoinHandle`]s report them as
/// [`Cancelled`](crate::fiber::Cancelled). A fiber spawned through a
/// [`Handle`] after the drop is cancelled at once. Sockets used on the
/// runtime keep working after it, in blocking mode.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// let sum = rt.block_on(|| {
///     let handles: Vec<_> = (0..10u64).map(|i| weave::spawn(move || i * i)).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
/// });
/// assert_eq!(sum, 285);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Runtime {
    handle: Handle,
    threads: Vec<thread::JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.threads.len())
            .finish()
    }
}

impl Runtime {
    /// A [`Builder`] with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A runtime with default settings.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn new() -> io::Result<Runtime> {
        Builder::new().build()
    }

    /// Runs `f` as a fiber on this runtime and blocks the calling thread (or
    /// parks the calling fiber) until it returns its value. `f` may borrow
    /// from the caller: the call does not return (or unwind) before the
    /// fiber is over, as with [`crate::scope`].
    ///
    /// # Panics
    ///
    /// Resumes the fiber's panic, if it panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = weave::Runtime::builder().workers(1).build()?;
    /// let words = vec!["borrowed", "from", "the", "caller"];
    /// let n = rt.block_on(|| words.iter().map(|w| w.len()).sum::<usize>());
    /// assert_eq!(n, 21);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn block_on<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        crate::fiber::scope_on(self.handle.shared.clone(), |s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(payload) => std::panic::resume_unwind(payload),
        })
    }

    /// Spawns a fiber on this runtime.
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// A cloneable handle that spawns onto this runtime from anywhere.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.handle.shared.remotes.len()
    }

    /// Fibers spawned on this runtime that have not finished yet.
    pub fn live_fibers(&self) -> usize {
        self.handle.live_fibers()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let shared = &self.handle.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        shared.notify_all();
        let me = thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() == me {
                // Dropped from one of its own fibers: the worker stops once
                // this fiber switches out; joining here would deadlock.
                continue;
            }
            let _ = t.join();
        }
        // Fibers spawned after the workers left (see `schedule_spawned`).
        std::sync::atomic::fence(Ordering::SeqCst);
        worker::cancel_queued(&shared.injector);
        for r in shared.remotes.iter() {
            worker::cancel_queued(&r.pinned);
        }
    }
}

/// A handle to a runtime, to spawn fibers onto it from any thread.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.shared.remotes.len())
            .finish()
    }
}

impl Handle {
    /// Spawns a fiber on the runtime. After the runtime was dropped, the
    /// fiber never runs: its handle reports
    /// [`Cancelled`](crate::fiber::Cancelled) at once.
    ///
    /// # Panics
    ///
    /// As [`weave::spawn`](crate::spawn): when no stack can be had.
    #[track_caller]
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match crate::fiber::Builder::new().spawn_on(&self.shared, f) {
            Ok(h) => h,
            Err(e) => panic!("weave: Handle::spawn: {e}"),
        }
    }

    /// Spawns a fiber that runs on worker `worker` (modulo the worker
    /// count) and stays there: for per-worker services such as one acceptor
    /// per worker.
    ///
    /// # Panics
    ///
    /// As [`weave::spawn`](crate::spawn): when no stack can be had.
    #[track_caller]
    pub fn spawn_on_worker<F, T>(&self, worker: usize, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match crate::fiber::Builder::new().spawn_inner(&self.shared, Some(worker), f, ()) {
            Ok(h) => h,
            Err(e) => panic!("weave: spawn_on_worker: {e}"),
        }
    }

    /// The handle of the runtime the caller runs on, if it runs on a fiber
    /// or worker thread.
    pub fn try_current() -> Option<Handle> {
        context::with_worker(|w| {
            w.map(|w| Handle {
                shared: w.shared.clone(),
            })
        })
    }

    /// The runtime the caller runs on, else the default runtime (started on
    /// first use with [`WORKERS_ENV`] workers, or one per core).
    ///
    /// # Panics
    ///
    /// Panics if the default runtime cannot be started.
    pub fn current() -> Handle {
        Handle::try_current().unwrap_or_else(|| default_runtime().handle())
    }

    /// Fibers spawned on this runtime that have not finished yet.
    pub fn live_fibers(&self) -> usize {
        self.shared.live_fibers.load(Ordering::SeqCst)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared.remotes.len()
    }
}

fn default_runtime() -> &'static Runtime {
    static DEFAULT: OnceCell<Runtime> = OnceCell::new();
    DEFAULT.get_or_init(|| {
        Builder::new()
            .thread_name("weave-default")
            .build()
            .unwrap_or_else(|e| panic!("weave: cannot start the default runtime: {e}"))
    })
}
