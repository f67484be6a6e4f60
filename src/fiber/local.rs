//! Fiber-local storage.
//!
//! `thread_local!` values are per *thread*, and many fibers share a worker
//! thread: a value set by one fiber is seen by every other fiber on that
//! worker. [`fiber_local!`](crate::fiber_local) gives each fiber its own copy.
//! Values are created on first access and dropped when the fiber finishes, on
//! the fiber itself. Outside a fiber the key falls back to one copy per
//! thread.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use super::raw::LocalMap;
use crate::runtime::context;

thread_local! {
    static THREAD_LOCALS: RefCell<HashMap<usize, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

/// A key to a fiber-local value, declared with [`fiber_local!`](crate::fiber_local).
pub struct LocalKey<T: 'static> {
    init: fn() -> T,
}

impl<T: 'static> fmt::Debug for LocalKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey").finish_non_exhaustive()
    }
}

impl<T: 'static> LocalKey<T> {
    #[doc(hidden)]
    pub const fn new(init: fn() -> T) -> LocalKey<T> {
        LocalKey { init }
    }

    /// Runs `f` with a reference to this fiber's value, creating it first
    /// if this fiber has none yet.
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        let key = self as *const LocalKey<T> as usize;
        let fiber = context::with_worker(|w| w.map_or(std::ptr::null(), |w| w.current.get()));
        // SAFETY: a non-null pointer is the fiber running on this thread; its
        // `locals` map is only touched by its own code (on this thread), and
        // no reference into the map outlives a single statement below.
        let slot = unsafe { fiber.as_ref() }.map(|fiber| fiber.locals.get());
        let value: *const T = match slot {
            Some(slot) => {
                // SAFETY: as above. The map is boxed, so its address stays
                // put while `init` below adds values through it.
                let map: *mut LocalMap = unsafe { &mut **(*slot).get_or_insert_with(Box::default) };
                // SAFETY: see above; the borrow ends with the statement.
                let present = unsafe { (*map).contains_key(&key) };
                if !present {
                    // `init` may itself use fiber-locals, so it runs with no
                    // borrow of the map alive.
                    let v: Box<dyn Any> = Box::new((self.init)());
                    // SAFETY: as above.
                    unsafe { (*map).insert(key, v) };
                }
                // SAFETY: as above; the boxed value's address is stable until
                // the fiber ends, because entries are never removed before.
                unsafe {
                    (&(*map))[&key]
                        .downcast_ref::<T>()
                        .expect("fiber-local type")
                }
            }
            None => THREAD_LOCALS.with(|m| {
                if !m.borrow().contains_key(&key) {
                    let v: Box<dyn Any> = Box::new((self.init)());
                    m.borrow_mut().insert(key, v);
                }
                let m = m.borrow();
                let v: &T = m[&key].downcast_ref::<T>().expect("fiber-local type");
                v as *const T
            }),
        };
        // SAFETY: the value lives in a `Box` owned by the map; entries are
        // only removed by `clear_current`, which the fiber's own code calls
        // outside any `with` (as its body ends, or between two requests of
        // a request-mode runner), or when the thread ends: after this call.
        f(unsafe { &*value })
    }
}

/// How many times [`clear_current`] empties the map again because
/// destructors created new fiber-local values, before it gives up and leaks
/// what is left (std's thread-locals behave alike).
const CLEAR_ROUNDS: usize = 8;

/// Drops the running fiber's locals, on the fiber, as its body ends (and
/// between two requests of a request-mode runner).
///
/// Each value is dropped under its own catch, so one destructor that panics
/// neither kills the worker nor keeps the other values from being dropped.
/// Returns the first panic payload, if any destructor panicked.
pub(crate) fn clear_current() -> std::thread::Result<()> {
    let fiber = context::with_worker(|w| w.map_or(std::ptr::null(), |w| w.current.get()));
    // SAFETY: non-null is the running fiber, alive while it runs.
    let Some(fiber) = (unsafe { fiber.as_ref() }) else {
        return Ok(());
    };
    let mut first_panic = None;
    for _ in 0..CLEAR_ROUNDS {
        // SAFETY: the map is only touched by the fiber's own code, which is
        // this code. It is moved out first so destructors that use other
        // fiber-locals see a valid (fresh) map.
        let Some(old) = (unsafe { std::mem::take(&mut *fiber.locals.get()) }) else {
            break;
        };
        if old.is_empty() {
            break;
        }
        for (_, value) in *old {
            let dropped = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
            if let Err(payload) = dropped {
                match first_panic {
                    None => first_panic = Some(payload),
                    Some(_) => crate::fiber::drop_payload(payload),
                }
            }
        }
    }
    // SAFETY: as above.
    let left = unsafe { std::mem::take(&mut *fiber.locals.get()) };
    if let Some(left) = left.filter(|m| !m.is_empty()) {
        log::warn!(
            "weave: fiber '{}': fiber-local destructors kept creating values; leaking {}",
            fiber.display_name(),
            left.len()
        );
        std::mem::forget(left);
    }
    match first_panic {
        None => Ok(()),
        Some(p) => Err(p),
    }
}

/// Declares fiber-local values: each fiber gets its own, created on first
/// access.
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
///
/// weave::fiber_local! {
///     static REQUESTS: Cell<u32> = Cell::new(0);
/// }
///
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| {
///     REQUESTS.with(|r| r.set(r.get() + 1));
///     let other = weave::spawn(|| REQUESTS.with(|r| r.get())).join().unwrap();
///     assert_eq!(other, 0); // a fresh value in the other fiber
///     assert_eq!(REQUESTS.with(|r| r.get()), 1);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[macro_export]
macro_rules! fiber_local {
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
        $(#[$attr])* $vis static $name: $crate::fiber::LocalKey<$t> = {
            fn __init() -> $t { $init }
            $crate::fiber::LocalKey::new(__init)
        };
        $crate::fiber_local!($($rest)*);
    };
    () => {};
}
