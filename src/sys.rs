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
use std::os::fd::RawFd;
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

/// `recv(2)` on a stream socket, as a plain system call. glibc's `recv`
/// and `send` are cancellation points: around the system call they switch
/// the thread's cancellation type on and off, two calls and two atomic
/// updates of the thread's cancel state (about 60 instructions per call,
/// 12% of the echo example's user-space instructions per message). weave
/// never cancels its threads with `pthread_cancel`, so it skips them.
///
/// # Safety
///
/// `buf` must be valid for writes of `len` bytes (which need not be
/// initialised: the kernel only writes them).
pub(crate) unsafe fn recv(fd: RawFd, buf: *mut libc::c_void, len: usize) -> io::Result<usize> {
    // SAFETY: the caller passes `len` writable bytes at `buf`; recvfrom
    // with null address arguments writes only there. `syscall` returns -1
    // with `errno` set on failure.
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf,
            len,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `send(2)` on a stream socket with `MSG_NOSIGNAL` (a closed peer is an
/// `EPIPE` error, not a signal), as a plain system call (see [`recv`]).
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length; sendto with a null
    // address reads only it. `syscall` returns -1 with `errno` set.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
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
