//! Stack overflow in a fiber: a clear message, then abort.
//!
//! Every fiber stack has a guard page below it (a `MADV_GUARD_INSTALL`
//! marker, or a `PROT_NONE` page on kernels before 6.13; see
//! [`stack`](super::stack)); touching either kind faults with `SIGSEGV`.
//! Rust's stack probes touch each page of a large frame in order, so an
//! overflow in Rust code always faults inside the guard page, even from a
//! frame larger than it (`tests/rt_process.rs` checks one). C code called
//! through FFI has that guarantee only when compiled with stack-clash
//! protection. Each worker
//! thread gets an alternate signal stack; the `SIGSEGV`/`SIGBUS` handler runs
//! on it, compares the fault address with the guard page of the fiber running
//! on this thread, and if it matches writes
//!
//! ```text
//! weave: fiber 'name' (id 7) overflowed its stack of 262144 bytes; aborting
//! ```
//!
//! to stderr with `write(2)` (async-signal-safe, no allocation) and calls
//! `abort()`. Any other fault is passed to the handler that was installed
//! before (Rust's own, which reports main-thread overflows), or to the default
//! action.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Once;

use super::raw::RawFiber;

thread_local! {
    /// The fiber running on this thread, for the signal handler only.
    static RUNNING: Cell<*const RawFiber> = const { Cell::new(std::ptr::null()) };
}

static mut PREV_SEGV: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();
static mut PREV_BUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();

pub(crate) fn set_current(f: &RawFiber) {
    RUNNING.with(|c| c.set(f));
}

pub(crate) fn set_current_null() {
    RUNNING.with(|c| c.set(std::ptr::null()));
}

/// Installs the process-wide handler, once.
pub(crate) fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (sig, prev) in [
            (libc::SIGSEGV, &raw mut PREV_SEGV),
            (libc::SIGBUS, &raw mut PREV_BUS),
        ] {
            // SAFETY: `action` is fully initialised before use; `prev` points
            // to a static written only here, inside `call_once`, before the
            // handler can run.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, (*prev).as_mut_ptr());
            }
        }
    });
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let fiber = RUNNING.try_with(|c| c.get()).unwrap_or(std::ptr::null());
    // SAFETY: a non-null pointer is the fiber running on this thread right
    // now; the worker keeps it alive while it runs.
    if let Some(f) = unsafe { fiber.as_ref() } {
        let lo = f.guard.0.load(Ordering::Relaxed);
        let hi = f.guard.1.load(Ordering::Relaxed);
        if lo <= addr && addr < hi {
            report_and_abort(f);
        }
    }
    // Not a fiber overflow: hand it to whoever was there before.
    let prev = if sig == libc::SIGSEGV {
        &raw const PREV_SEGV
    } else {
        &raw const PREV_BUS
    };
    // SAFETY: `prev` was initialised by `install_handler` before this
    // handler was installed.
    let prev = unsafe { (*prev).assume_init_ref() };
    if prev.sa_sigaction == libc::SIG_DFL || prev.sa_sigaction == libc::SIG_IGN {
        // Restore the default action and return: the faulting instruction
        // runs again and the process dies with the usual signal.
        // SAFETY: resetting a signal to its default disposition.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed as an SA_SIGINFO handler
        // with exactly this signature.
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev.sa_sigaction);
            f(sig, info, ctx);
        }
    } else {
        // SAFETY: the previous handler was installed as a plain handler.
        unsafe {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
            f(sig);
        }
    }
}

/// A fixed buffer that `fmt::Write` can fill without allocating.
struct StackBuf {
    buf: [u8; 512],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn report_and_abort(f: &RawFiber) -> ! {
    let mut msg = StackBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = match &f.name {
        Some(name) => write!(msg, "\nweave: fiber '{name}'"),
        None => write!(msg, "\nweave: fiber 'fiber-{}'", f.id),
    };
    let _ = writeln!(
        msg,
        " (id {}) overflowed its stack of {} bytes; aborting",
        f.id, f.stack_size
    );
    let _ = writeln!(
        msg,
        "weave: give it a bigger stack with weave::fiber::Builder::stack_size"
    );
    // SAFETY: write(2) and abort(3) are async-signal-safe; the buffer is
    // valid for `len` bytes.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::abort();
    }
}

/// The alternate signal stack of a worker thread (if it had none), removed
/// when the worker exits.
pub(crate) struct AltStack {
    mem: *mut libc::c_void,
    len: usize,
}

impl AltStack {
    const SIZE: usize = 64 * 1024;

    pub(crate) fn ensure() -> Option<AltStack> {
        // SAFETY: querying the current alternate stack into a zeroed struct.
        unsafe {
            let mut old: libc::stack_t = std::mem::zeroed();
            libc::sigaltstack(std::ptr::null(), &mut old);
            if old.ss_flags & libc::SS_DISABLE == 0 {
                return None; // std (or the user) already set one.
            }
            let mem = libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if mem == libc::MAP_FAILED {
                return None;
            }
            let st = libc::stack_t {
                ss_sp: mem,
                ss_flags: 0,
                ss_size: Self::SIZE,
            };
            libc::sigaltstack(&st, std::ptr::null_mut());
            Some(AltStack {
                mem,
                len: Self::SIZE,
            })
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: disable the alternate stack before unmapping the memory we
        // mapped for it in `ensure`.
        unsafe {
            let st = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&st, std::ptr::null_mut());
            libc::munmap(self.mem, self.len);
        }
    }
}
