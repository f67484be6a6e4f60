//! A server's SIGINT/SIGTERM handling lives with the program's own handlers:
//! it chains to the handlers installed before it, preserves `errno`, and
//! puts the earlier handlers back when the server is done. Signal handlers
//! are process-wide, so the scenario runs in a child process (this test
//! binary re-run with `WEAVE_CHILD` set).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weave::server::Server;

const CHILD_ENV: &str = "WEAVE_CHILD";

static TERM_SEEN: AtomicUsize = AtomicUsize::new(0);
static INT_SEEN: AtomicUsize = AtomicUsize::new(0);

/// The program's own SIGTERM handler: counts, and clobbers `errno` the way
/// a handler calling into libc may.
extern "C" fn user_term(_sig: libc::c_int) {
    TERM_SEEN.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the thread's errno slot.
    unsafe { *libc::__errno_location() = libc::EXDEV };
}

/// The program's own SIGINT handler, in the `SA_SIGINFO` form.
extern "C" fn user_int(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    INT_SEEN.fetch_add(1, Ordering::SeqCst);
}

fn install(sig: libc::c_int, handler: usize, flags: libc::c_int) {
    // SAFETY: an all-zero sigaction is valid; we fill the fields we use.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = handler;
    a.sa_flags = flags;
    // SAFETY: installing a handler that only touches atomics and errno.
    assert_eq!(unsafe { libc::sigaction(sig, &a, std::ptr::null_mut()) }, 0);
}

fn current_handler(sig: libc::c_int) -> usize {
    // SAFETY: an all-zero sigaction is valid; sigaction(2) fills it.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying only.
    assert_eq!(unsafe { libc::sigaction(sig, std::ptr::null(), &mut a) }, 0);
    a.sa_sigaction
}

fn errno() -> libc::c_int {
    // SAFETY: the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: libc::c_int) {
    // SAFETY: the thread's errno slot.
    unsafe { *libc::__errno_location() = v };
}

fn scenario() {
    let term = user_term as *const () as usize;
    let int = user_int as *const () as usize;
    install(libc::SIGTERM, term, 0);
    install(libc::SIGINT, int, libc::SA_SIGINFO);

    let server = Server::builder()
        .bind("127.0.0.1:0")
        .workers(1)
        .build()
        .unwrap();
    let serving = std::thread::spawn(move || server.serve(|_conn| Ok(())).unwrap());
    // Wait (bounded) until the server's handler is in place.
    let deadline = Instant::now() + Duration::from_secs(20);
    while current_handler(libc::SIGTERM) == term {
        assert!(
            Instant::now() < deadline,
            "the server never installed its handler"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // raise(3) runs the handler on this thread before it returns.
    set_errno(libc::EILSEQ);
    // SAFETY: raising a signal that has a handler.
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    assert_eq!(errno(), libc::EILSEQ, "the handler must preserve errno");
    assert_eq!(
        TERM_SEEN.load(Ordering::SeqCst),
        1,
        "the earlier handler is chained"
    );

    // The signal stops the server gracefully.
    let summary = serving.join().unwrap();
    assert_eq!(summary.still_open, 0);

    // The earlier handlers are back, and work.
    assert_eq!(current_handler(libc::SIGTERM), term);
    assert_eq!(current_handler(libc::SIGINT), int);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
    assert_eq!(INT_SEEN.load(Ordering::SeqCst), 1);
    println!("SIGNALS OK");
}

/// The child side: does nothing unless `WEAVE_CHILD` is set.
#[test]
fn child_entry() {
    if std::env::var(CHILD_ENV).is_ok() {
        scenario();
    }
}

#[test]
fn signal_handlers_are_chained_preserve_errno_and_are_restored() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "signals")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SIGNALS OK"),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}
