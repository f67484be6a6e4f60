//! Failure isolation: user code that panics where no fiber body catches it
//! (a fiber-local destructor, the drop of a detached fiber's result or of an
//! unstarted fiber's closure) never takes its worker down; every fiber ends
//! exactly once with a join result, at shutdown and after the runtime is
//! gone; a socket outlives its runtime.
//!
//! Everything that could hang on a broken runtime waits with a generous
//! bound, so a regression fails instead of hanging the suite.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use weave::fiber::Cancelled;

/// Bound on any single wait in these tests: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(20);

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// Runs `f` on a helper thread and returns its value, failing the test if
/// it does not return within [`BOUND`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

fn is_cancelled(e: &(dyn std::any::Any + Send)) -> bool {
    e.downcast_ref::<Cancelled>().is_some()
}

struct PanicOnDrop(&'static str);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

weave::fiber_local! {
    static BOMB: std::cell::RefCell<Option<PanicOnDrop>> = std::cell::RefCell::new(None);
    static COUNTED: DropCount = DropCount(None);
}

struct DropCount(Option<Arc<AtomicUsize>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A fiber parked on the worker before the panic, then woken after it,
/// must resume; new fibers must run on the worker. One worker, so "the
/// worker" is the only one.
fn check_worker_alive(rt: &weave::Runtime, parked: weave::JoinHandle<u32>, wake: weave::Fiber) {
    wake.unpark();
    assert_eq!(bounded("parked fiber", move || parked.join().unwrap()), 7);
    let h = rt.spawn(|| 40 + 2);
    assert_eq!(bounded("new fiber", move || h.join().unwrap()), 42);
}

/// Spawns a fiber that parks until unparked, and waits until it is parked.
fn parked_fiber(rt: &weave::Runtime) -> (weave::JoinHandle<u32>, weave::Fiber) {
    let (tx, rx) = mpsc::channel();
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = woken.clone();
    let h = rt.spawn(move || {
        tx.send(()).unwrap();
        while !w.load(Ordering::SeqCst) {
            weave::park();
        }
        7
    });
    rx.recv_timeout(BOUND).expect("parked fiber started");
    let f = h.fiber();
    // The flag is set before the unpark, so the fiber's loop ends.
    woken.store(true, Ordering::SeqCst);
    (h, f)
}

#[test]
fn panicking_fiber_local_destructor_does_not_kill_the_worker() {
    let rt = rt(1);
    let (parked, wake) = parked_fiber(&rt);
    let h = rt.spawn(|| {
        BOMB.with(|b| *b.borrow_mut() = Some(PanicOnDrop("fiber-local boom")));
        5
    });
    // The destructor's panic is the fiber's result.
    let err = bounded("fiber with a panicking local", move || h.join()).unwrap_err();
    assert_eq!(
        err.downcast_ref::<String>().map(String::as_str),
        Some("fiber-local boom")
    );
    check_worker_alive(&rt, parked, wake);
    assert_eq!(rt.live_fibers(), 0);
}

#[test]
fn other_fiber_locals_are_dropped_when_one_destructor_panics() {
    weave::fiber_local! {
        static SET: std::cell::RefCell<Vec<DropCount>> = std::cell::RefCell::new(Vec::new());
    }
    let rt = rt(1);
    let drops = Arc::new(AtomicUsize::new(0));
    for round in 0..50 {
        let d = drops.clone();
        // Locals are created in both orders around the panicking one.
        let h = rt.spawn(move || {
            if round % 2 == 0 {
                SET.with(|s| s.borrow_mut().push(DropCount(Some(d))));
                BOMB.with(|b| *b.borrow_mut() = Some(PanicOnDrop("boom")));
            } else {
                BOMB.with(|b| *b.borrow_mut() = Some(PanicOnDrop("boom")));
                SET.with(|s| s.borrow_mut().push(DropCount(Some(d))));
            }
        });
        assert!(bounded("join", move || h.join()).is_err());
        assert_eq!(
            drops.load(Ordering::SeqCst),
            round + 1,
            "every other local dropped"
        );
    }
    let h = rt.spawn(|| 1);
    assert_eq!(bounded("new fiber", move || h.join().unwrap()), 1);
}

#[test]
fn panicking_drop_of_a_detached_result_does_not_kill_the_worker() {
    let rt = rt(1);
    let (parked, wake) = parked_fiber(&rt);
    let (go_tx, go_rx) = weave::sync::oneshot::channel::<()>();
    let h = rt.spawn(move || {
        let _ = go_rx.recv();
        PanicOnDrop("result boom")
    });
    drop(h); // detached: the fiber's end drops its result
    go_tx.send(()).unwrap();
    check_worker_alive(&rt, parked, wake);
}

#[test]
fn panicking_drop_of_a_detached_panic_payload_does_not_kill_the_worker() {
    let rt = rt(1);
    let (parked, wake) = parked_fiber(&rt);
    let (go_tx, go_rx) = weave::sync::oneshot::channel::<()>();
    let h = rt.spawn(move || {
        let _ = go_rx.recv();
        std::panic::panic_any(PanicOnDrop("payload boom"));
    });
    drop(h);
    go_tx.send(()).unwrap();
    check_worker_alive(&rt, parked, wake);
}

/// A runtime dropped from one of its own fibers, on its only worker, after
/// that fiber spawned fibers pinned to the worker: those never start. With
/// `yield_first`, the worker has already moved them to its run queue when
/// the shutdown comes; otherwise they are still in its pinned queue.
fn shutdown_with_unstarted_pinned_fibers(
    yield_first: bool,
) -> (
    weave::JoinHandle<u32>,
    weave::JoinHandle<()>,
    Arc<AtomicUsize>,
) {
    let rt = rt(1);
    let handle = rt.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let counted = DropCount(Some(drops.clone()));
    let (tx, rx) = mpsc::channel();
    let h = handle.clone();
    let dropper = handle.spawn(move || {
        let plain = h.spawn_on_worker(0, || 1u32);
        let bomb = PanicOnDrop("closure boom");
        let with_bomb = h.spawn_on_worker(0, move || {
            let _keep = (&bomb, &counted);
        });
        tx.send((plain, with_bomb)).unwrap();
        if yield_first {
            weave::yield_now();
        }
        drop(rt);
    });
    let (plain, with_bomb) = rx.recv_timeout(BOUND).unwrap();
    assert!(bounded("dropper's join", move || dropper.join()).is_ok());
    (plain, with_bomb, drops)
}

#[test]
fn unstarted_fibers_on_a_worker_are_cancelled_at_shutdown() {
    for round in 0..40 {
        let (plain, with_bomb, drops) = shutdown_with_unstarted_pinned_fibers(round % 2 == 0);
        let e = bounded("pinned fiber's join", move || plain.join()).unwrap_err();
        assert!(is_cancelled(&*e));
        // Its closure's destructor panicked while being dropped: contained,
        // and the rest of the closure was still dropped.
        let e = bounded("pinned fiber's join", move || with_bomb.join()).unwrap_err();
        assert!(is_cancelled(&*e));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn spawn_after_the_runtime_is_dropped_is_cancelled() {
    let rt = rt(2);
    let handle = rt.handle();
    drop(rt);
    let h = handle.spawn(|| 1);
    let e = bounded("join after drop", move || h.join()).unwrap_err();
    assert!(is_cancelled(&*e));
    let h = handle.spawn_on_worker(1, || 1);
    let e = bounded("join after drop", move || h.join()).unwrap_err();
    assert!(is_cancelled(&*e));
    assert_eq!(handle.live_fibers(), 0);
}

/// A fiber whose destructor waits for something that never comes is
/// abandoned once shutdown's unwind limit passes (its stack leaked, never
/// resumed); its join handle still gets its one result, and it no longer
/// counts as live.
#[test]
fn fiber_abandoned_at_shutdown_still_reports_to_its_handle() {
    struct WaitsOnDrop(weave::sync::Receiver<()>);
    impl Drop for WaitsOnDrop {
        fn drop(&mut self) {
            // Unwinding: not a cancellation point any more, so this parks.
            let _ = self.0.recv();
        }
    }
    let (never, rx) = weave::sync::channel::<()>();
    let (started_tx, started) = mpsc::channel();
    let rt = rt(1);
    let handle = rt.handle();
    let h = handle.spawn(move || {
        let _guard = WaitsOnDrop(rx);
        started_tx.send(()).unwrap();
        loop {
            weave::park();
        }
    });
    started.recv_timeout(BOUND).expect("fiber started");
    // Cancels the fiber, whose destructor then waits until the limit.
    bounded("runtime drop", move || drop(rt));
    let e = bounded("abandoned fiber's join", move || h.join()).unwrap_err();
    assert!(is_cancelled(&*e));
    assert_eq!(handle.live_fibers(), 0);
    drop(never);
}

/// Many threads spawn (anywhere and pinned) while the runtime drops; fibers
/// park forever, finish, or never start. Every handle gets exactly one
/// result, and nothing stays counted as live.
#[test]
fn stress_every_fiber_ends_once_across_shutdown() {
    for round in 0..30 {
        let rt = rt(2);
        let handle = rt.handle();
        let ran = Arc::new(AtomicUsize::new(0));
        let mut spawners = Vec::new();
        for t in 0..3 {
            let handle = handle.clone();
            let ran = ran.clone();
            spawners.push(thread::spawn(move || {
                let mut hs = Vec::new();
                for i in 0..200usize {
                    let ran = ran.clone();
                    let f = move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                        if i % 3 == 0 {
                            loop {
                                weave::park();
                            }
                        }
                        i
                    };
                    hs.push(if (i + t) % 2 == 0 {
                        handle.spawn(f)
                    } else {
                        handle.spawn_on_worker(i, f)
                    });
                }
                hs
            }));
        }
        if round % 2 == 0 {
            thread::yield_now();
        }
        bounded("runtime drop", move || drop(rt));
        let handles: Vec<_> = spawners
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect();
        let results = bounded("joins", move || {
            handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        });
        let (mut ok, mut cancelled) = (0, 0);
        for r in &results {
            match r {
                Ok(_) => ok += 1,
                Err(e) if is_cancelled(&**e) => cancelled += 1,
                Err(_) => panic!("unexpected panic payload"),
            }
        }
        assert_eq!(ok + cancelled, 600);
        assert!(ok <= ran.load(Ordering::SeqCst));
        assert_eq!(
            handle.live_fibers(),
            0,
            "round {round}: fibers left counted"
        );
    }
}

/// A socket registered with a runtime's poller keeps working, in blocking
/// mode, on a plain thread after the runtime is dropped: the read returns
/// the data, and while waiting the thread sleeps in the kernel instead of
/// spinning.
#[test]
fn socket_outlives_its_runtime_without_spinning() {
    let rt = rt(1);
    let (conn, mut peer) = rt.block_on(|| {
        let l = weave::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = weave::spawn(move || weave::net::TcpStream::connect(addr).unwrap());
        let (mut s, _) = l.accept().unwrap();
        let mut peer = c.join().unwrap();
        // A read that would block registers the socket with the poller.
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let e = s.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        s.set_read_timeout(None).unwrap();
        // And data that arrives while registered is read through it.
        peer.write_all(b"a").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        (s, peer)
    });
    drop(rt);
    let (tx, rx) = mpsc::channel();
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut conn = conn;
        let mut buf = [0u8; 5];
        blocked_tx.send(()).unwrap();
        let wall = Instant::now();
        let cpu0 = thread_cpu();
        conn.read_exact(&mut buf).unwrap();
        let cpu = thread_cpu() - cpu0;
        tx.send((buf, wall.elapsed(), cpu)).unwrap();
        conn.write_all(b"back").unwrap();
    });
    blocked_rx.recv().unwrap();
    // Give the reader time to wait; a spinning reader burns this as CPU.
    thread::sleep(Duration::from_millis(300));
    peer.write_all(b"hello").unwrap();
    let (buf, wall, cpu) = rx
        .recv_timeout(BOUND)
        .expect("the read after the runtime's drop returned");
    assert_eq!(&buf, b"hello");
    assert!(
        cpu * 2 < wall,
        "reader spun: {cpu:?} of CPU in {wall:?} of waiting"
    );
    let mut back = [0u8; 4];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
    reader.join().unwrap();
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Handles and fibers race to be done with each result: joined, dropped
/// before the fiber ends, dropped after it, or cancelled, with values and
/// panic payloads that count their drops, across 4 workers. (Here, not in
/// `rt_stress.rs`: its memory-growth test reads the whole process's
/// resident size.) Every value
/// and payload made is dropped exactly once, by whichever side is done
/// last, and no fiber stays counted live: a result dropped twice, or kept
/// by a fiber record some `Fiber` handle still holds, would show in the
/// count.
#[test]
fn stress_every_result_is_dropped_once_whoever_is_done_last() {
    const FIBERS: usize = 4_000;
    const ROUNDS: usize = 5;
    bounded("results dropped once", || {
        let rt = rt(4);
        for round in 0..ROUNDS {
            let made = Arc::new(AtomicUsize::new(0));
            let dropped = Arc::new(AtomicUsize::new(0));
            let (made2, dropped2) = (made.clone(), dropped.clone());
            let kept_fibers = rt.block_on(move || {
                let mut handles = Vec::with_capacity(FIBERS);
                let mut fibers = Vec::with_capacity(FIBERS);
                for i in 0..FIBERS {
                    let (made, dropped) = (made2.clone(), dropped2.clone());
                    let h = weave::spawn(move || {
                        // Some finish at once, some after a yield or a park.
                        match i % 3 {
                            0 => {}
                            1 => weave::yield_now(),
                            _ => weave::sleep(Duration::from_micros((i % 7) as u64 * 50)),
                        }
                        made.fetch_add(1, Ordering::SeqCst);
                        // A few panic (each prints a report).
                        if i % 100 == 0 {
                            std::panic::panic_any(Counted(dropped));
                        }
                        Counted(dropped)
                    });
                    // A `Fiber` handle keeps the fiber's record alive past
                    // both its end and its join handle.
                    fibers.push(h.fiber());
                    match (i + round) % 4 {
                        0 => drop(h), // most likely before the fiber ends
                        1 => {
                            h.cancel();
                            handles.push((i, Some(h)));
                        }
                        _ => handles.push((i, Some(h))),
                    }
                    if i % 64 == 63 {
                        weave::yield_now();
                    }
                }
                for (i, h) in handles.iter_mut() {
                    let Some(h) = h.take() else { continue };
                    if *i % 2 == 0 {
                        // Joined: the value or payload is the caller's to drop.
                        drop(h.join());
                    } else {
                        // Dropped, finished or not.
                        drop(h);
                    }
                }
                fibers
            });
            // Every fiber has ended once none counts as live.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while rt.live_fibers() != 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(rt.live_fibers(), 0, "round {round}: fibers still live");
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                made.load(Ordering::SeqCst),
                "round {round}: results made and dropped differ, with the records still held"
            );
            drop(kept_fibers);
            assert_eq!(dropped.load(Ordering::SeqCst), made.load(Ordering::SeqCst));
        }
    });
}
