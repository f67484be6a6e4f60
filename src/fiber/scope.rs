//! Scoped fibers: fibers that may borrow from the caller's stack, like
//! `std::thread::scope`.
//!
//! # Why it is sound
//!
//! A scoped fiber's closure borrows data that lives for `'env`; the runtime
//! stores closures as `'static`, so [`Scope::spawn`] erases the lifetime.
//! That is sound because [`scope`] does not return, by value or by
//! unwinding, before every fiber spawned in it is over: each fiber carries
//! a guard that counts it out of the scope, and the runtime drops the guard
//! last, after the closure and everything it captured are gone, the fiber's
//! locals are dropped and its end is reported (its result delivered, and
//! [`Runtime::live_fibers`](crate::Runtime::live_fibers) no longer counting
//! it), whether it ran, panicked, was cancelled, or was dropped without
//! running at runtime shutdown. The final wait of [`scope`] cannot be
//! cancelled (it would leave the fibers running on freed borrows): if the
//! caller is cancelled, or the closure given to `scope` panics, the scope
//! cancels its fibers first and then waits for them.

use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::{fmt, thread};

use super::raw::{FiberRef, Unparker};
use super::{is_cancellation, Builder, JoinHandle};
use crate::runtime::{Handle, Shared};

/// What a scope and its fibers share.
struct ScopeData {
    /// Fibers spawned and not yet over.
    running: AtomicUsize,
    /// Fibers that panicked and whose handle did not report it by `join`.
    unjoined_panics: AtomicUsize,
    /// The scope's owner, waiting for `running` to reach zero; and every
    /// fiber of the scope, to cancel them.
    inner: Mutex<Inner>,
}

struct Inner {
    waiter: Option<Unparker>,
    fibers: Vec<FiberRef>,
}

impl ScopeData {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cancel_all(&self) {
        let fibers: Vec<FiberRef> = self.lock().fibers.clone();
        for f in fibers {
            f.cancel();
        }
    }

    /// Waits, without being cancellable, until every fiber is over. If the
    /// caller is cancelled meanwhile, its cancellation is passed on to the
    /// scope's fibers (it takes effect on the caller after the wait).
    fn wait_all(&self) {
        let me = super::running();
        let mut passed_on = false;
        super::without_cancellation(|| loop {
            // SAFETY: non-null `running()` is the live fiber running here.
            let cancelled = unsafe { me.as_ref() }.is_some_and(|f| f.state.cancel_requested());
            if cancelled && !passed_on {
                passed_on = true;
                self.cancel_all();
            }
            {
                let mut inner = self.lock();
                if self.running.load(Ordering::Acquire) == 0 {
                    inner.fibers.clear();
                    return;
                }
                inner.waiter = Some(Unparker::current());
            }
            super::park();
        });
    }
}

/// Counts a fiber out of its scope when dropped.
struct Done(Arc<ScopeData>);

impl Drop for Done {
    fn drop(&mut self) {
        let waiter = {
            let mut inner = self.0.lock();
            if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                inner.waiter.take()
            } else {
                None
            }
        };
        if let Some(w) = waiter {
            w.unpark();
        }
    }
}

/// A scope to spawn fibers that borrow from the caller; see [`scope`].
pub struct Scope<'scope, 'env: 'scope> {
    data: Arc<ScopeData>,
    shared: Arc<Shared>,
    scope: PhantomData<&'scope mut &'scope ()>,
    env: PhantomData<&'env mut &'env ()>,
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("running", &self.data.running.load(Ordering::Relaxed))
            .finish()
    }
}

/// The handle of a fiber spawned in a [`Scope`].
pub struct ScopedJoinHandle<'scope, T> {
    handle: JoinHandle<()>,
    result: Arc<Mutex<Option<T>>>,
    data: Arc<ScopeData>,
    _scope: PhantomData<&'scope ()>,
}

impl<T> fmt::Debug for ScopedJoinHandle<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedJoinHandle")
            .field("fiber", &self.handle.fiber().id())
            .finish()
    }
}

impl<T> ScopedJoinHandle<'_, T> {
    /// Waits for the fiber and returns its value, or its panic payload.
    /// A cancellation point.
    ///
    /// # Errors
    ///
    /// The fiber's panic payload ([`Cancelled`](super::Cancelled) if it was
    /// cancelled).
    pub fn join(self) -> thread::Result<T> {
        match self.handle.join() {
            Ok(()) => Ok(self
                .result
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("a scoped fiber that returned left its value")),
            Err(p) => {
                if !is_cancellation(&*p) {
                    self.data.unjoined_panics.fetch_sub(1, Ordering::AcqRel);
                }
                Err(p)
            }
        }
    }

    /// Cancels the fiber (see [`JoinHandle::cancel`]).
    pub fn cancel(&self) {
        self.handle.cancel();
    }

    /// True once the fiber has finished.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl<'scope> Scope<'scope, '_> {
    /// Spawns a fiber that may borrow anything that outlives the scope.
    /// The scope waits for it before it returns.
    ///
    /// # Panics
    ///
    /// If no stack can be had for the fiber (as [`crate::spawn`]).
    pub fn spawn<F, T>(&'scope self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        spawn_erased(&self.data, &self.shared, f)
            .expect("spawning a scoped fiber with default settings")
    }
}

fn spawn_erased<'scope, F, T>(
    data: &Arc<ScopeData>,
    shared: &Arc<Shared>,
    f: F,
) -> std::io::Result<ScopedJoinHandle<'scope, T>>
where
    F: FnOnce() -> T + Send + 'scope,
    T: Send + 'scope,
{
    let result = Arc::new(Mutex::new(None));
    data.running.fetch_add(1, Ordering::AcqRel);
    let slot = result.clone();
    let panics = data.clone();
    let body: Box<dyn FnOnce() + Send + 'scope> =
        Box::new(move || match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(v),
            Err(p) => {
                if !is_cancellation(&*p) {
                    panics.unjoined_panics.fetch_add(1, Ordering::AcqRel);
                }
                panic::resume_unwind(p);
            }
        });
    // SAFETY: only the lifetime is erased. Everything the job borrows
    // outlives 'scope, and the scope's owner does not leave `scope` (by
    // return or unwind) before `running` is back to zero, which happens
    // only when the guard drops: the runtime drops it after the closure
    // and its captures, and after the fiber's end is reported (see
    // `Builder::spawn_inner`), whether the job ran or was dropped unrun.
    let body: Box<dyn FnOnce() + Send + 'static> = unsafe {
        std::mem::transmute::<Box<dyn FnOnce() + Send + 'scope>, Box<dyn FnOnce() + Send>>(body)
    };
    // On an error the guard was dropped inside spawn_inner: counted out
    // already.
    let handle = Builder::new().spawn_inner(shared, None, body, Done(data.clone()))?;
    data.lock().fibers.push(handle.fiber.clone());
    Ok(ScopedJoinHandle {
        handle,
        result,
        data: data.clone(),
        _scope: PhantomData,
    })
}

/// Creates a scope for spawning fibers that borrow from the caller's
/// stack, like `std::thread::scope`: every fiber spawned in it is over
/// before `scope` returns (its closure returned or unwound, its
/// fiber-local values dropped, and [`Runtime::live_fibers`] no longer
/// counting it).
///
/// [`Runtime::live_fibers`]: crate::Runtime::live_fibers
///
/// Called on a fiber, the fibers run on its runtime; on a plain thread, on
/// the default runtime. The final wait parks the calling fiber (or blocks
/// the thread) and cannot be cancelled: if the caller is cancelled while it
/// waits, or `f` panics, the scope's fibers are cancelled and waited for,
/// and the cancellation or panic then continues.
///
/// # Panics
///
/// If a fiber spawned in the scope panicked and its panic was not observed
/// through [`ScopedJoinHandle::join`], `scope` panics after all fibers are
/// over (as std's does). Resumes `f`'s own panic.
///
/// # Examples
///
/// ```
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| {
///     let mut counts = vec![0u32; 4];
///     let text = "fibers borrow from the caller";
///     weave::scope(|s| {
///         for (i, c) in counts.iter_mut().enumerate() {
///             s.spawn(move || *c = text.split(' ').nth(i).map_or(0, |w| w.len() as u32));
///         }
///     });
///     assert_eq!(counts, [6, 6, 4, 3]);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    scope_on(Handle::current().shared, f)
}

pub(crate) fn scope_on<'env, F, T>(shared: Arc<Shared>, f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let scope = Scope {
        data: Arc::new(ScopeData {
            running: AtomicUsize::new(0),
            unjoined_panics: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                waiter: None,
                fibers: Vec::new(),
            }),
        }),
        shared,
        scope: PhantomData,
        env: PhantomData,
    };
    /// On an unwind out of `f` (a panic, or the caller's cancellation in a
    /// blocking call inside it): cancel the scope's fibers and wait.
    struct OnUnwind<'a>(&'a ScopeData);
    impl Drop for OnUnwind<'_> {
        fn drop(&mut self) {
            self.0.cancel_all();
            self.0.wait_all();
        }
    }
    let on_unwind = OnUnwind(&scope.data);
    let result = f(&scope);
    std::mem::forget(on_unwind);
    scope.data.wait_all();
    // The wait is a blocking point: a cancellation that arrived during it
    // (and was passed on to the scope's fibers) takes effect now.
    super::cancellation_point();
    if scope.data.unjoined_panics.load(Ordering::Acquire) > 0 {
        panic!("a scoped fiber panicked");
    }
    result
}
