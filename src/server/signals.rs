//! SIGINT/SIGTERM to graceful shutdown, the self-pipe way.
//!
//! The signal handler does one async-signal-safe thing: it writes the signal
//! number as a byte into one end of a socket pair. A fiber reads the other
//! end like any socket and starts the shutdown from ordinary code. This works
//! whatever signal mask the process's threads have, and does no work inside
//! the handler.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::net::UnixStream;

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the call.
        // A full pipe (many signals) just drops the byte: one is enough.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Routes SIGINT and SIGTERM to the returned stream (one byte per signal)
/// until [`uninstall`] runs. The most recent caller wins.
pub(crate) fn install() -> io::Result<UnixStream> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    write.set_nonblocking(true)?;
    let old = WRITE_FD.swap(write.into_raw_fd(), Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: `old` was a descriptor we leaked into WRITE_FD and nobody
        // else owns; re-owning it closes it.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(old) });
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only performs write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    UnixStream::from_std(read)
}

/// Restores the default SIGINT/SIGTERM actions.
pub(crate) fn uninstall() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: resetting a signal to its default disposition.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let old = WRITE_FD.swap(-1, Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: as in `install`.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(old) });
    }
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
