//! SIGINT/SIGTERM to graceful shutdown, the self-pipe way.
//!
//! The signal handler does async-signal-safe things only: it writes the
//! signal number as a byte into one end of a socket pair per installed
//! server, then calls the handler that was installed before it, if that one
//! was a function. A fiber reads the other end like any socket and starts
//! the shutdown from ordinary code. This works whatever signal mask the
//! process's threads have, and does no work inside the handler.
//!
//! # Living with other handlers
//!
//! - **Chaining.** The action found at the first install is kept, and the
//!   handler calls it after writing its byte (when it is a function, plain or
//!   `SA_SIGINFO`; a default or ignore disposition is not called: the server
//!   replaces "terminate" with a graceful stop).
//! - **Restoring.** Several servers may be installed at once (each gets its
//!   own stream, every signal reaches all of them). When the last one
//!   uninstalls, the kept action is put back, unless someone installed a
//!   handler over ours meanwhile: theirs stays (it may chain to ours, which
//!   then only chains on).
//! - **`errno`.** The handler saves `errno` on entry and restores it on exit,
//!   so the interrupted code never sees a value from `write(2)` or from the
//!   chained handler.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::net::UnixStream;

/// The signals routed to graceful shutdown.
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// How many servers can have signals installed at once.
const SLOTS: usize = 16;

/// Write ends of the installed servers' socket pairs (-1: free slot).
static WRITE_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// The actions found at the first install, per entry of [`SIGNALS`]: the
/// handler address and the flags, read by the handler to chain.
static PREV_HANDLER: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static PREV_FLAGS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Installs and the full previous actions (for the restore), under a lock.
struct Installed {
    count: usize,
    prev: Vec<libc::sigaction>,
}

static STATE: Mutex<Installed> = Mutex::new(Installed {
    count: 0,
    prev: Vec::new(),
});

/// A server's registration: its slot in [`WRITE_FDS`].
#[derive(Debug)]
pub(crate) struct Installation {
    slot: usize,
}

fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; no preconditions.
    unsafe { libc::__errno_location() }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the thread's errno slot is valid for the thread's life.
    let saved_errno = unsafe { *errno_location() };
    let byte = sig as u8;
    for slot in &WRITE_FDS {
        let fd = slot.load(Ordering::Acquire);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; `byte` lives for the
            // call. A full pipe (many signals) just drops the byte: one is
            // enough. A descriptor closed meanwhile fails with EBADF.
            unsafe {
                libc::write(fd, (&byte as *const u8).cast(), 1);
            }
        }
    }
    if let Some(i) = SIGNALS.iter().position(|&s| s == sig) {
        let handler = PREV_HANDLER[i].load(Ordering::Acquire);
        let flags = PREV_FLAGS[i].load(Ordering::Acquire) as libc::c_int;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN && handler != 0 {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous action was installed with SA_SIGINFO,
                // so its handler has this signature; we pass on our own
                // arguments unchanged.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the handler takes the signal
                // number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                f(sig);
            }
        }
    }
    // SAFETY: as above.
    unsafe { *errno_location() = saved_errno };
}

fn our_action() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as *const () as usize;
    action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
    // SAFETY: `sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action
}

/// Routes SIGINT and SIGTERM to the returned stream (one byte per signal)
/// until [`uninstall`] runs with the returned installation.
pub(crate) fn install() -> io::Result<(UnixStream, Installation)> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    write.set_nonblocking(true)?;
    let stream = UnixStream::from_std(read)?;
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(slot) = WRITE_FDS.iter().position(|s| s.load(Ordering::Acquire) < 0) else {
        return Err(io::Error::other(format!(
            "at most {SLOTS} servers can handle signals at once"
        )));
    };
    if st.count == 0 {
        let mut prev = Vec::with_capacity(SIGNALS.len());
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: an all-zero sigaction is valid; sigaction(2) fills it.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: querying the current action (null new action).
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if old.sa_sigaction == on_signal as *const () as usize {
                // Still ours from an earlier install (another handler was
                // put over it, then taken away): keep what it chains to.
                prev.push(st.prev.get(i).copied().unwrap_or(old));
                continue;
            }
            // Published before our handler can run, so it chains correctly
            // from its first signal.
            PREV_HANDLER[i].store(old.sa_sigaction, Ordering::Release);
            PREV_FLAGS[i].store(old.sa_flags as usize, Ordering::Release);
            prev.push(old);
        }
        let action = our_action();
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: installs a handler that only writes bytes, calls the
            // previous handler, and restores errno.
            if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
                let e = io::Error::last_os_error();
                for (j, &s) in SIGNALS.iter().enumerate().take(i) {
                    // SAFETY: putting back the action found above.
                    unsafe { libc::sigaction(s, &prev[j], std::ptr::null_mut()) };
                }
                return Err(e);
            }
        }
        st.prev = prev;
    }
    st.count += 1;
    WRITE_FDS[slot].store(write.into_raw_fd(), Ordering::Release);
    Ok((stream, Installation { slot }))
}

/// Stops routing signals to this installation's stream; the last one out
/// restores the actions found at the first install.
pub(crate) fn uninstall(installation: Installation) {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let fd = WRITE_FDS[installation.slot].swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: `fd` was leaked into the slot by `install` and nobody else
        // owns it; re-owning it closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    st.count = st.count.saturating_sub(1);
    if st.count > 0 {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        let Some(prev) = st.prev.get(i) else { break };
        // SAFETY: an all-zero sigaction is valid; sigaction(2) fills it.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying the current action.
        unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) };
        if current.sa_sigaction == on_signal as *const () as usize {
            // SAFETY: putting back the action found at the first install.
            unsafe { libc::sigaction(sig, prev, std::ptr::null_mut()) };
        }
    }
    // `st.prev` is kept: if our handler stayed installed under another
    // one, a later install still knows what it chains to and restores.
}

/// Blocks (parks) until a signal arrives; returns its number, or `None` when
/// the stream was shut down.
pub(crate) fn wait(stream: &mut UnixStream) -> Option<i32> {
    let mut b = [0u8; 1];
    match stream.read(&mut b) {
        Ok(1) => Some(i32::from(b[0])),
        _ => None,
    }
}
