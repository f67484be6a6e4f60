//! Operating-system helpers shared across the crate: the `syscall!` macro,
//! SIGPIPE set-up, the coarse clock.
//!
//! Not every libc call lives here: a call tied to one subsystem stays beside
//! the code it serves, in its own `unsafe` block with a `// SAFETY:` comment.
//! Those are the stack mappings and guard pages (`fiber/stack.rs`), the
//! stack-overflow handler and its alternate signal stack
//! (`fiber/overflow.rs`), socket options mio lacks (`net/`), the
//! `shutdown(2)` that wakes connections during a graceful stop
//! (`server/mod.rs`) and the shutdown signal handlers (`server/signals.rs`).
//! Code running inside a signal handler calls libc directly, since only
//! async-signal-safe functions may run there.

use std::io;
use std::sync::Once;
use std::time::Duration;

/// Calls a libc function that reports failure as `-1` + `errno`, turning it
/// into an `io::Result`.
///
/// The caller writes the `unsafe` block (and its `// SAFETY:` comment) around
/// the macro, since only the call site knows why the arguments are valid.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
        if res == -1 {
            Err(::std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Ignores SIGPIPE for the whole process, once: a write to a closed peer then
/// returns `EPIPE` instead of killing the process.
pub(crate) fn ignore_sigpipe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting the disposition of SIGPIPE to SIG_IGN has no
        // preconditions; it is process-wide and idempotent.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// A monotonic clock read cheaply (`CLOCK_MONOTONIC_COARSE`, a few ns, a few
/// ms resolution). Used to spot fibers that run too long, and for the age
/// of request mode's idle connections.
pub(crate) fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // Linux supports.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Waits on a plain (non-fiber) thread until `fd` is ready for `events`
/// (`POLLIN`/`POLLOUT`) or `timeout` passes. Returns `Ok(false)` on timeout.
pub(crate) fn poll_fd(
    fd: i32,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        Some(d) => {
            d.as_millis().min(i32::MAX as u128) as i32
                + i32::from(d.subsec_nanos() % 1_000_000 != 0)
        }
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
        match unsafe { syscall!(poll(&mut pfd, 1, ms)) } {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
