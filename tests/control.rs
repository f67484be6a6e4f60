//! Control flow: cancellation, scoped deadlines (timeout), shutdown by
//! cancellation.

use std::io::{self, Read, Write};
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::fiber::Cancelled;
use weave::net::{TcpListener, TcpStream};
use weave::sync::{mpsc, Mutex};
use weave::time::{timeout, timeout_at};

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// Counts its drops: proves a destructor ran during an unwind.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn assert_cancelled<T: std::fmt::Debug>(r: std::thread::Result<T>) {
    match r {
        Ok(v) => panic!("fiber finished with {v:?}, expected a cancellation"),
        Err(p) => assert!(
            p.is::<Cancelled>(),
            "payload is not Cancelled: {:?}",
            p.downcast_ref::<&str>()
        ),
    }
}

/// Waits (bounded) until `cond` holds, parking in between.
fn wait_for(mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "condition not reached in 20 s");
        weave::sleep(Duration::from_millis(1));
    }
}

/// Spawns `f` and returns once it has started (on one worker it has then
/// also reached its first park: it runs until it parks).
fn spawn_started<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> weave::JoinHandle<T> {
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = weave::spawn(move || {
        s.store(true, Ordering::SeqCst);
        f()
    });
    wait_for(|| started.load(Ordering::SeqCst));
    h
}

/// A connected pair: (accepted, client).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s, c)
}

#[test]
fn cancel_blocked_in_read_runs_destructors_and_closes_the_socket() {
    let rt = rt(2);
    rt.block_on(|| {
        let (mut server, mut client) = pair();
        let drops = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicBool::new(false));
        let (d, s) = (DropCount(drops.clone()), started.clone());
        let h = weave::spawn(move || {
            let _d = d;
            s.store(true, Ordering::SeqCst);
            let mut buf = [0u8; 8];
            let r = server.read(&mut buf);
            format!("read returned {r:?}")
        });
        wait_for(|| started.load(Ordering::SeqCst));
        weave::sleep(Duration::from_millis(5)); // let it block in read
        h.cancel();
        assert_cancelled(h.join());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // The server side was dropped by the unwind: the client sees EOF.
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    });
}

#[test]
fn cancel_blocked_in_sleep() {
    let rt = rt(1);
    rt.block_on(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = DropCount(drops.clone());
        let h = spawn_started(move || {
            let _d = d;
            weave::sleep(Duration::from_secs(3600));
        });
        h.cancel();
        assert_cancelled(h.join());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn cancel_blocked_in_recv_leaves_the_channel_usable() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let rx2 = rx.clone();
        let h = weave::spawn(move || {
            let rx = rx2.lock().unwrap().take().unwrap();
            let r = rx.recv();
            *rx2.lock().unwrap() = Some(rx);
            r
        });
        weave::sleep(Duration::from_millis(5));
        h.cancel();
        assert_cancelled(h.join());
        // The receiver was dropped by the unwind: sending fails cleanly.
        assert!(tx.send(1).is_err());
        assert!(rx.lock().unwrap().is_none());
    });
}

#[test]
fn cancel_blocked_in_mutex_lock_leaves_the_mutex_usable() {
    let rt = rt(2);
    rt.block_on(|| {
        let m = Arc::new(Mutex::new(0u32));
        let guard = m.lock().unwrap();
        let m2 = m.clone();
        let h = weave::spawn(move || {
            *m2.lock().unwrap() += 1;
        });
        weave::sleep(Duration::from_millis(5));
        h.cancel();
        assert_cancelled(h.join());
        drop(guard);
        // The cancelled waiter left the queue: the lock is free, and other
        // waiters still get it.
        let m3 = m.clone();
        let other = weave::spawn(move || *m3.lock().unwrap() += 10);
        other.join().unwrap();
        assert_eq!(*m.lock().unwrap(), 10);
    });
}

/// A library loop in the style of many protocol crates: it retries every
/// error it sees. With per-call errors a cancellation would spin here; the
/// unwind leaves the loop.
fn third_party_read_loop<R: Read>(r: &mut R, errors_seen: &AtomicUsize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    loop {
        match r.read_exact(&mut buf) {
            Ok(()) => out.extend_from_slice(&buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return out,
            Err(_) => {
                errors_seen.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        }
    }
}

#[test]
fn cancel_inside_a_third_party_read_exact_loop() {
    let rt = rt(2);
    rt.block_on(|| {
        let (mut server, mut client) = pair();
        let errors = Arc::new(AtomicUsize::new(0));
        let e2 = errors.clone();
        let h = weave::spawn(move || third_party_read_loop(&mut server, &e2));
        // Half a record, then nothing: read_exact blocks mid-record.
        client.write_all(b"abcdef").unwrap();
        weave::sleep(Duration::from_millis(5));
        h.cancel();
        assert_cancelled(h.join());
        assert_eq!(errors.load(Ordering::SeqCst), 0, "the loop saw errors");
    });
}

#[test]
fn cancel_blocked_in_write_all() {
    let rt = rt(2);
    rt.block_on(|| {
        let (mut server, _client) = pair();
        let h = weave::spawn(move || {
            // The client never reads: write_all fills the buffers and blocks.
            let chunk = vec![7u8; 1 << 20];
            loop {
                server.write_all(&chunk)?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        });
        weave::sleep(Duration::from_millis(20));
        h.cancel();
        assert_cancelled(h.join());
    });
}

#[test]
fn cancel_before_first_run_never_runs_the_closure() {
    let rt = rt(1);
    rt.block_on(|| {
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        // On one worker, the new fiber cannot start before we park.
        let h = weave::spawn(move || r2.store(true, Ordering::SeqCst));
        h.cancel();
        assert_cancelled(h.join());
        assert!(!ran.load(Ordering::SeqCst));
    });
}

#[test]
fn cancel_after_finish_keeps_the_value() {
    let rt = rt(1);
    rt.block_on(|| {
        let h = weave::spawn(|| 5);
        wait_for(|| h.is_finished());
        h.cancel();
        h.cancel();
        assert_eq!(h.join().unwrap(), 5);
    });
}

#[test]
fn a_swallowed_cancellation_is_raised_again_at_the_next_blocking_point() {
    let rt = rt(1);
    rt.block_on(|| {
        let swallowed = Arc::new(AtomicUsize::new(0));
        let s2 = swallowed.clone();
        let started = Arc::new(AtomicBool::new(false));
        let st = started.clone();
        let h = weave::spawn(move || {
            st.store(true, Ordering::SeqCst);
            for _ in 0..3 {
                if panic::catch_unwind(|| weave::sleep(Duration::from_secs(3600))).is_err() {
                    s2.fetch_add(1, Ordering::SeqCst);
                }
            }
            "ran on"
        });
        wait_for(|| started.load(Ordering::SeqCst));
        h.cancel();
        // Each sleep is cut by the still pending cancellation; the fiber
        // then finishes normally, since it chose to swallow them.
        assert_eq!(h.join().unwrap(), "ran on");
        assert_eq!(swallowed.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn weave_catch_unwind_lets_cancellation_through_and_catches_panics() {
    let rt = rt(1);
    rt.block_on(|| {
        let caught = Arc::new(AtomicUsize::new(0));
        let c2 = caught.clone();
        let h = weave::spawn(move || {
            if weave::fiber::catch_unwind(|| panic!("a real panic")).is_err() {
                c2.fetch_add(1, Ordering::SeqCst);
            }
            let _ = weave::fiber::catch_unwind(weave::park);
            c2.fetch_add(100, Ordering::SeqCst);
        });
        wait_for(|| caught.load(Ordering::SeqCst) == 1);
        h.cancel();
        assert_cancelled(h.join());
        assert_eq!(caught.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn cancel_a_fiber_blocked_in_join_and_in_unblock() {
    let rt = rt(2);
    rt.block_on(|| {
        let sleeper = weave::spawn(|| weave::sleep(Duration::from_secs(3600)));
        let joiner = weave::spawn(move || sleeper.join().is_ok());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let unblocker = weave::spawn(move || {
            weave::blocking::unblock(move || {
                let _ = rx.recv_timeout(Duration::from_secs(3600));
            })
        });
        weave::sleep(Duration::from_millis(5));
        joiner.cancel();
        unblocker.cancel();
        assert_cancelled(joiner.join());
        assert_cancelled(unblocker.join());
        drop(tx);
    });
}

#[test]
fn stress_cancel_races_completion() {
    let rt = rt(4);
    let drops = Arc::new(AtomicUsize::new(0));
    let rounds = 2000;
    let (mut ok, mut cancelled) = (0, 0);
    for i in 0..rounds {
        let d = DropCount(drops.clone());
        let (tx, rx) = mpsc::channel::<u32>();
        let h = rt.spawn(move || {
            let _d = d;
            if i % 3 == 0 {
                weave::yield_now();
            }
            rx.recv().unwrap_or(0)
        });
        // Sender and canceller race from two OS threads.
        let sender = std::thread::spawn(move || {
            let _ = tx.send(1);
        });
        if i % 2 == 0 {
            std::thread::yield_now();
        }
        h.cancel();
        sender.join().unwrap();
        match h.join() {
            Ok(v) => {
                assert!(v == 1 || v == 0);
                ok += 1;
            }
            Err(p) => {
                assert!(p.is::<Cancelled>());
                cancelled += 1;
            }
        }
    }
    assert_eq!(ok + cancelled, rounds);
    assert_eq!(drops.load(Ordering::SeqCst), rounds);
    assert_eq!(rt.live_fibers(), 0);
}

#[test]
fn timeout_stops_blocked_work_and_returns_elapsed() {
    let rt = rt(1);
    rt.block_on(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let drops = Arc::new(AtomicUsize::new(0));
        let d = DropCount(drops.clone());
        let r = timeout(Duration::from_millis(10), || {
            let _d = d;
            rx.recv()
        });
        assert_eq!(r.unwrap_err().to_string(), "deadline has elapsed");
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // The fiber carries on normally afterwards, with no deadline.
        tx.send(3).unwrap();
        assert_eq!(rx.recv().unwrap(), 3);
        weave::sleep(Duration::from_millis(15));
        assert_eq!(timeout(Duration::from_secs(30), || 9), Ok(9));
    });
}

#[test]
fn timeout_inside_timeout_earliest_wins() {
    let rt = rt(1);
    rt.block_on(|| {
        // Inner earlier: the inner one fires, the outer goes on.
        let r = timeout(Duration::from_secs(30), || {
            let inner = timeout(Duration::from_millis(5), || {
                weave::sleep(Duration::from_secs(3600))
            });
            assert!(inner.is_err());
            "outer finished"
        });
        assert_eq!(r, Ok("outer finished"));
        // Outer earlier: the inner scope does not catch the outer deadline.
        let inner_saw = Arc::new(AtomicBool::new(false));
        let i2 = inner_saw.clone();
        let start = Instant::now();
        let r = timeout(Duration::from_millis(10), || {
            let inner = timeout(Duration::from_secs(3600), || {
                weave::sleep(Duration::from_secs(3600))
            });
            i2.store(true, Ordering::SeqCst);
            inner
        });
        assert!(r.is_err());
        assert!(
            !inner_saw.load(Ordering::SeqCst),
            "the inner scope caught the outer deadline"
        );
        assert!(start.elapsed() < Duration::from_secs(3000));
        // timeout_at with a deadline already past stops at the first block.
        let r = timeout_at(Instant::now(), || weave::sleep(Duration::from_secs(3600)));
        assert!(r.is_err());
    });
}

#[test]
fn timeout_covers_socket_io_and_mutex() {
    let rt = rt(2);
    rt.block_on(|| {
        let (mut server, _client) = pair();
        let r = timeout(Duration::from_millis(10), || {
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf)
        });
        assert!(r.is_err());
        let m = Arc::new(Mutex::new(()));
        let g = m.lock().unwrap();
        let m2 = m.clone();
        let h =
            weave::spawn(move || timeout(Duration::from_millis(10), || drop(m2.lock())).is_err());
        assert!(h.join().unwrap());
        drop(g);
        assert!(m.try_lock().is_ok());
    });
}

#[test]
fn timeout_on_a_plain_thread() {
    let (_tx, rx) = mpsc::channel::<u32>();
    let r = timeout(Duration::from_millis(10), || rx.recv());
    assert!(r.is_err());
    let r = timeout(Duration::from_millis(10), || {
        weave::sleep(Duration::from_secs(3600))
    });
    assert!(r.is_err());
    assert_eq!(timeout(Duration::from_secs(10), || 1), Ok(1));
}

#[test]
fn cancellation_passes_through_timeout() {
    let rt = rt(1);
    rt.block_on(|| {
        let h = spawn_started(|| timeout(Duration::from_secs(3600), weave::park));
        h.cancel();
        assert_cancelled(h.join());
    });
}

#[test]
fn timeout_does_not_interrupt_destructors() {
    let rt = rt(1);
    rt.block_on(|| {
        struct SlowDrop(Arc<AtomicBool>);
        impl Drop for SlowDrop {
            fn drop(&mut self) {
                // Blocks during the unwind: must wait for real, not unwind again.
                weave::sleep(Duration::from_millis(5));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let done = Arc::new(AtomicBool::new(false));
        let s = SlowDrop(done.clone());
        let r = timeout(Duration::from_millis(5), || {
            let _s = s;
            weave::park();
        });
        assert!(r.is_err());
        assert!(done.load(Ordering::SeqCst));
    });
}

#[test]
fn shutdown_cancels_blocked_fibers_and_runs_their_destructors() {
    let drops = Arc::new(AtomicUsize::new(0));
    let rt = rt(3);
    let (tx, rx) = mpsc::channel::<u32>();
    let listener = rt.block_on(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let mut handles = Vec::new();
    let d = DropCount(drops.clone());
    handles.push(rt.spawn(move || {
        let _d = d;
        let _ = rx.recv();
    }));
    let d = DropCount(drops.clone());
    handles.push(rt.spawn(move || {
        let _d = d;
        let _ = listener.accept();
    }));
    let d = DropCount(drops.clone());
    let sleeper = rt.spawn(|| weave::sleep(Duration::from_secs(3600)));
    // Joining a fiber during shutdown: unwound from its join, no livelock.
    handles.push(rt.spawn(move || {
        let _d = d;
        let _ = sleeper.join();
    }));
    // A destructor that waits for a message another fiber's destructor
    // sends during the same shutdown.
    let (late_tx, late_rx) = mpsc::channel::<u32>();
    struct SendOnDrop(Option<mpsc::Sender<u32>>);
    impl Drop for SendOnDrop {
        fn drop(&mut self) {
            weave::sleep(Duration::from_millis(2));
            let _ = self.0.take().unwrap().send(1);
        }
    }
    struct RecvOnDrop(mpsc::Receiver<u32>, Arc<AtomicUsize>);
    impl Drop for RecvOnDrop {
        fn drop(&mut self) {
            if self.0.recv() == Ok(1) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let d = RecvOnDrop(late_rx, drops.clone());
    handles.push(rt.spawn(move || {
        let _d = d;
        weave::park();
    }));
    let s = SendOnDrop(Some(late_tx));
    handles.push(rt.spawn(move || {
        let _s = s;
        weave::park();
    }));
    // Everything is blocked.
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < end);
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(tx);
    drop(rt);
    assert_eq!(drops.load(Ordering::SeqCst), 4);
    for h in handles {
        let _ = h.join();
    }
}

#[test]
fn shutdown_join_handles_report_cancelled() {
    let rt = rt(2);
    let h = rt.spawn(|| weave::sleep(Duration::from_secs(3600)));
    std::thread::sleep(Duration::from_millis(10));
    drop(rt);
    assert_cancelled(h.join());
}

#[test]
fn runaway_wait_in_panic_unwind_does_not_hide_other_cancellations() {
    // Fiber A panics and, while unwinding, waits in a destructor; fiber B on
    // the same worker must still be cancellable meanwhile.
    let rt = rt(1);
    rt.block_on(|| {
        let (tx, rx) = mpsc::channel::<()>();
        struct WaitOnDrop(mpsc::Receiver<()>);
        impl Drop for WaitOnDrop {
            fn drop(&mut self) {
                let _ = self.0.recv();
            }
        }
        let a = weave::spawn(move || {
            let _w = WaitOnDrop(rx);
            panic::resume_unwind(Box::new("a's own panic"));
        });
        weave::sleep(Duration::from_millis(5)); // A is parked mid-unwind
        let b = weave::spawn(|| weave::sleep(Duration::from_secs(3600)));
        weave::sleep(Duration::from_millis(5));
        b.cancel();
        assert_cancelled(b.join());
        tx.send(()).unwrap();
        let p = a.join().unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"a's own panic"));
    });
}

// ---- select ----

use weave::sync::{mpmc, oneshot};
use weave::Select;

#[test]
fn select_two_ready_arms_both_win_sometimes() {
    let rt = rt(1);
    rt.block_on(|| {
        let (tx1, rx1) = mpsc::channel::<u32>();
        let (tx2, rx2) = mpmc::channel::<u32>();
        tx1.send(1).unwrap();
        tx2.send(2).unwrap();
        let mut wins = [0u32; 2];
        for _ in 0..400 {
            let mut sel = Select::new();
            let a = sel.recv(&rx1);
            let b = sel.recv(&rx2);
            let i = sel.ready();
            assert!(i == a || i == b);
            wins[i] += 1;
        }
        assert!(wins[0] > 0 && wins[1] > 0, "unfair: {wins:?}");
        // Selecting took nothing.
        assert_eq!(rx1.try_recv(), Ok(1));
        assert_eq!(rx2.try_recv(), Ok(2));
    });
}

#[test]
fn select_socket_and_channel_across_workers() {
    let rt = rt(3);
    let h = rt.handle();
    rt.block_on(move || {
        let (mut server, client) = pair();
        let (tx, rx) = mpsc::channel::<u32>();
        let client = Arc::new(std::sync::Mutex::new(client));
        let rounds = 300;
        // The producer lives on another worker: every event crosses threads.
        let (go_tx, go_rx) = mpsc::sync_channel::<u32>(0);
        let c2 = client.clone();
        let producer = h.spawn_on_worker(1, move || {
            while let Ok(i) = go_rx.recv() {
                if i % 2 == 0 {
                    tx.send(i).unwrap();
                } else {
                    c2.lock().unwrap().write_all(&[i as u8]).unwrap();
                }
            }
        });
        let consumer = h.spawn_on_worker(2, move || {
            for i in 0..rounds {
                go_tx.send(i).unwrap();
                let mut sel = Select::new();
                let r = sel.recv(&rx);
                let s = sel.readable(&server);
                let t = sel.timeout(Duration::from_secs(20));
                let got = sel.ready();
                drop(sel);
                assert_ne!(got, t, "round {i}: event lost");
                if i % 2 == 0 {
                    assert_eq!(got, r, "round {i}");
                    assert_eq!(rx.try_recv(), Ok(i));
                } else {
                    assert_eq!(got, s, "round {i}");
                    let mut b = [0u8; 1];
                    server.read_exact(&mut b).unwrap();
                    assert_eq!(b[0], i as u8);
                }
            }
        });
        consumer.join().unwrap();
        producer.join().unwrap();
    });
}

#[test]
fn select_losing_arms_lose_no_events() {
    let rt = rt(3);
    rt.block_on(|| {
        // A real receiver blocked in recv and a selector on a clone of the
        // same mpmc receiver: every message reaches the real receiver; the
        // selector only learns that the channel was ready.
        let (tx, rx) = mpmc::channel::<u32>();
        let rx2 = rx.clone();
        let rounds = 500;
        let real = weave::spawn(move || (0..rounds).map(|_| rx.recv().unwrap()).sum::<u32>());
        let selector = weave::spawn(move || {
            let (_keep, never) = mpsc::channel::<u32>();
            let mut seen = 0;
            for _ in 0..rounds {
                let mut sel = Select::new();
                sel.recv(&never);
                let me = sel.recv(&rx2);
                let t = sel.timeout(Duration::from_millis(1));
                let i = sel.ready();
                if i == me {
                    seen += 1;
                }
                let _ = t;
            }
            seen
        });
        for i in 0..rounds {
            tx.send(i).unwrap();
            if i % 16 == 0 {
                weave::yield_now();
            }
        }
        assert_eq!(real.join().unwrap(), (0..rounds).sum::<u32>());
        selector.join().unwrap();
    });
}

#[test]
fn select_send_with_room_join_oneshot_and_deadline() {
    let rt = rt(2);
    rt.block_on(|| {
        // Send: full until the receiver takes one.
        let (tx, rx) = mpsc::sync_channel::<u32>(1);
        tx.send(1).unwrap();
        let taker = weave::spawn(move || {
            weave::sleep(Duration::from_millis(5));
            let v = rx.recv().unwrap();
            (v, rx)
        });
        let mut sel = Select::new();
        let s = sel.send(&tx);
        assert_eq!(sel.try_ready(), None);
        assert_eq!(sel.ready(), s);
        tx.try_send(2).unwrap();
        let (v, rx) = taker.join().unwrap();
        assert_eq!(v, 1);
        assert_eq!(rx.recv().unwrap(), 2);

        // Join and a deadline: the deadline comes first, then the fiber.
        let (otx, orx) = oneshot::channel::<u32>();
        let h = weave::spawn(move || {
            let _ = orx.recv();
            7
        });
        let mut sel = Select::new();
        let j = sel.join(&h);
        let d = sel.deadline(Instant::now() + Duration::from_millis(5));
        assert_eq!(sel.ready(), d);
        drop(sel);
        otx.send(1).unwrap();
        let mut sel = Select::new();
        let j2 = sel.join(&h);
        assert_eq!(sel.ready_timeout(Duration::from_secs(20)), Ok(j2));
        drop(sel);
        assert_eq!(j, j2);
        assert_eq!(h.join().unwrap(), 7);

        // Oneshot receive arm.
        let (otx, orx) = oneshot::channel::<&str>();
        weave::spawn(move || otx.send("x").unwrap());
        let mut sel = Select::new();
        let o = sel.recv(&orx);
        assert_eq!(sel.ready(), o);
        assert_eq!(orx.try_recv(), Ok("x"));

        // Nothing ready: the timeout reports it.
        let (_t, never) = mpsc::channel::<u8>();
        let mut sel = Select::new();
        sel.recv(&never);
        assert!(sel.ready_timeout(Duration::from_millis(5)).is_err());
    });
}

#[test]
fn select_rendezvous_send_waits_for_a_receiver() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let recv = weave::spawn(move || rx.recv().unwrap());
        let mut sel = Select::new();
        let s = sel.send(&tx);
        assert_eq!(sel.ready_timeout(Duration::from_secs(20)), Ok(s));
        tx.try_send(9).unwrap();
        assert_eq!(recv.join().unwrap(), 9);
    });
}

#[test]
fn cancel_a_fiber_blocked_in_select_withdraws_it() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let r2 = rx.clone();
        let h = spawn_started(move || {
            let rx = r2.lock().unwrap().take().unwrap();
            let mut sel = Select::new();
            sel.recv(&rx);
            sel.ready();
            drop(sel);
            *r2.lock().unwrap() = Some(rx);
        });
        weave::sleep(Duration::from_millis(5));
        h.cancel();
        assert_cancelled(h.join());
        assert!(
            tx.send(1).is_err(),
            "the receiver was dropped by the unwind"
        );
    });
}

#[test]
fn select_on_a_plain_thread_and_socket_readiness_methods() {
    let (tx, rx) = mpsc::channel::<u32>();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        tx.send(4).unwrap();
    });
    let mut sel = Select::new();
    let r = sel.recv(&rx);
    assert_eq!(sel.ready(), r);
    assert_eq!(rx.recv().unwrap(), 4);
    t.join().unwrap();

    let rt = rt(2);
    rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = weave::spawn(move || {
            l.readable().unwrap();
            l.accept().unwrap().0
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let s = h.join().unwrap();
        c.writable().unwrap();
        let r = weave::spawn(move || {
            s.readable().unwrap();
            let mut b = [0u8; 2];
            (&s).read_exact(&mut b).unwrap();
            b
        });
        weave::sleep(Duration::from_millis(2));
        c.write_all(b"hi").unwrap();
        assert_eq!(&r.join().unwrap(), b"hi");
    });
}

// ---- scoped fibers, block_on with borrows ----

#[test]
fn scope_fibers_borrow_and_are_all_over_when_it_returns() {
    let rt = rt(3);
    let mut totals = [0u64; 8];
    let base = 10u64; // borrowed by every fiber
    let slow_done = AtomicBool::new(false);
    rt.block_on(|| {
        weave::scope(|s| {
            for (i, t) in totals.iter_mut().enumerate() {
                let base = &base;
                s.spawn(move || {
                    for k in 0..100 {
                        *t += base + k;
                        if k % 10 == 0 {
                            weave::yield_now();
                        }
                    }
                    i
                });
            }
            s.spawn(|| {
                weave::sleep(Duration::from_millis(10));
                slow_done.store(true, Ordering::SeqCst);
            });
        });
        // Not joined, yet finished: scope waited.
        assert!(slow_done.load(Ordering::SeqCst));
    });
    assert!(totals.iter().all(|&t| t == 100 * 10 + 4950));
}

#[test]
fn scope_values_panics_and_stress() {
    let rt = rt(4);
    rt.block_on(|| {
        let v = [1, 2, 3];
        let sum = weave::scope(|s| {
            let hs: Vec<_> = v.iter().map(|x| s.spawn(move || x * 2)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
        });
        assert_eq!(sum, 12);
        // A joined panic is handled; an unjoined one makes scope panic.
        weave::scope(|s| {
            let h = s.spawn(|| panic!("joined"));
            assert!(h.join().is_err());
        });
        let r = panic::catch_unwind(panic::AssertUnwindSafe(|| {
            weave::scope(|s| {
                s.spawn(|| panic!("not joined"));
            })
        }));
        assert!(r.is_err(), "scope must panic for an unjoined panic");
        // Many rounds across workers: nothing outlives its scope.
        let counter = AtomicUsize::new(0);
        for _ in 0..200 {
            weave::scope(|s| {
                for _ in 0..5 {
                    s.spawn(|| {
                        weave::yield_now();
                        counter.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        }
        assert_eq!(counter.load(Ordering::SeqCst), 1000);
    });
    assert_eq!(rt.live_fibers(), 0);
}

#[test]
fn cancelling_a_scope_owner_cancels_its_fibers_then_unwinds() {
    let rt = rt(2);
    rt.block_on(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let d2 = drops.clone();
        let owner = spawn_started(move || {
            let local = DropCount(d2.clone());
            weave::scope(|s| {
                for _ in 0..3 {
                    let d = DropCount(d2.clone());
                    let local = &local;
                    s.spawn(move || {
                        let _d = d;
                        let _ = local;
                        weave::sleep(Duration::from_secs(3600));
                    });
                }
            });
            "not reached"
        });
        weave::sleep(Duration::from_millis(10));
        owner.cancel();
        assert_cancelled(owner.join());
        assert_eq!(drops.load(Ordering::SeqCst), 4);
    });
}

#[test]
fn block_on_borrows_locals() {
    let rt = rt(2);
    let mut data = vec![1u32, 2, 3];
    let name = String::from("borrowed");
    let n = rt.block_on(|| {
        data.push(name.len() as u32);
        data.iter().sum::<u32>()
    });
    assert_eq!(n, 14);
    assert_eq!(data, [1, 2, 3, 8]);
    let r = panic::catch_unwind(panic::AssertUnwindSafe(|| rt.block_on(|| panic!("inner"))));
    assert!(r.is_err());
    assert_eq!(rt.block_on(|| 5), 5);
}

// ---- broadcast, send_timeout ----

use weave::sync::broadcast;
use weave::sync::SendTimeoutError;

#[test]
fn broadcast_every_receiver_gets_every_message() {
    let rt = rt(4);
    rt.block_on(|| {
        let n = 2000u64;
        let (tx, rx) = broadcast::channel::<u64>(n as usize);
        let mut hs = Vec::new();
        for _ in 0..4 {
            let mut rx = tx.subscribe();
            hs.push(weave::spawn(move || {
                let mut sum = 0;
                let mut count = 0;
                loop {
                    match rx.recv() {
                        Ok(v) => {
                            sum += v;
                            count += 1;
                        }
                        Err(broadcast::RecvError::Disconnected) => return (count, sum),
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        drop(rx);
        let tx2 = tx.clone();
        let sender = weave::spawn(move || {
            for i in 0..n {
                tx2.send(i).unwrap();
                if i % 64 == 0 {
                    weave::yield_now();
                }
            }
        });
        sender.join().unwrap();
        drop(tx);
        for h in hs {
            assert_eq!(h.join().unwrap(), (n, n * (n - 1) / 2));
        }
    });
}

#[test]
fn broadcast_lagging_receiver_is_told_how_many_it_missed() {
    let (tx, mut slow) = broadcast::channel::<u32>(4);
    let mut fast = tx.subscribe();
    for i in 0..10 {
        tx.send(i).unwrap();
        assert_eq!(fast.recv(), Ok(i));
    }
    assert_eq!(slow.recv(), Err(broadcast::RecvError::Lagged(6)));
    for i in 6..10 {
        assert_eq!(slow.recv(), Ok(i));
    }
    assert_eq!(slow.try_recv(), Err(broadcast::TryRecvError::Empty));
    assert_eq!(
        slow.recv_timeout(Duration::from_millis(5)),
        Err(broadcast::TryRecvError::Empty)
    );
    drop(tx);
    assert_eq!(slow.recv(), Err(broadcast::RecvError::Disconnected));
    // No receivers: send gives the value back.
    let (tx, rx) = broadcast::channel::<u32>(1);
    drop(rx);
    assert_eq!(tx.send(5).unwrap_err().0, 5);
}

#[test]
fn broadcast_in_select_and_cancelled_receiver() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, mut rx) = broadcast::channel::<u32>(8);
        let tx2 = tx.clone();
        weave::spawn(move || {
            weave::sleep(Duration::from_millis(2));
            tx2.send(3).unwrap();
        });
        let mut sel = Select::new();
        let b = sel.recv(&rx);
        assert_eq!(sel.ready_timeout(Duration::from_secs(20)), Ok(b));
        drop(sel);
        assert_eq!(rx.try_recv(), Ok(3));
        let mut rx2 = tx.subscribe();
        let h = spawn_started(move || rx2.recv());
        weave::sleep(Duration::from_millis(2));
        h.cancel();
        assert_cancelled(h.join());
        assert_eq!(tx.receiver_count(), 1);
    });
}

#[test]
fn send_timeout_bounded_rendezvous_and_disconnected() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = mpsc::sync_channel::<u32>(1);
        tx.send_timeout(1, Duration::from_millis(5)).unwrap();
        assert_eq!(
            tx.send_timeout(2, Duration::from_millis(5)),
            Err(SendTimeoutError::Timeout(2))
        );
        // Room frees before the deadline: the send goes through.
        let taker = weave::spawn(move || {
            weave::sleep(Duration::from_millis(5));
            let a = rx.recv().unwrap();
            let b = rx.recv().unwrap();
            (a, b, rx)
        });
        tx.send_timeout(3, Duration::from_secs(20)).unwrap();
        let (a, b, rx) = taker.join().unwrap();
        assert_eq!((a, b), (1, 3));
        drop(rx);
        assert_eq!(
            tx.send_timeout(4, Duration::from_secs(20)),
            Err(SendTimeoutError::Disconnected(4))
        );

        // Rendezvous: nobody takes it in time; the value comes back and the
        // slot is free for the next sender.
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        assert_eq!(
            tx.send_timeout(5, Duration::from_millis(5)),
            Err(SendTimeoutError::Timeout(5))
        );
        let r = weave::spawn(move || rx.recv().unwrap());
        tx.send_timeout(6, Duration::from_secs(20)).unwrap();
        assert_eq!(r.join().unwrap(), 6);
    });
}

#[test]
fn hub_with_send_timeout_is_not_frozen_by_a_slow_consumer() {
    let rt = rt(3);
    rt.block_on(|| {
        let (fast_tx, fast_rx) = mpsc::sync_channel::<u32>(4);
        let (slow_tx, slow_rx) = mpsc::sync_channel::<u32>(4);
        let fast = weave::spawn(move || fast_rx.iter().count());
        let mut dropped = 0;
        for i in 0..100 {
            fast_tx.send_timeout(i, Duration::from_secs(20)).unwrap();
            if slow_tx.send_timeout(i, Duration::from_millis(1)).is_err() {
                dropped += 1;
            }
        }
        drop(fast_tx);
        assert_eq!(fast.join().unwrap(), 100);
        assert_eq!(
            dropped, 96,
            "the slow consumer never read: all but 4 dropped"
        );
        drop(slow_rx);
    });
}

#[test]
fn cancelled_rendezvous_sender_leaves_the_channel_usable() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = mpsc::sync_channel::<u32>(0);
        let tx = Arc::new(tx);
        let t2 = tx.clone();
        let h = spawn_started(move || t2.send(1));
        weave::sleep(Duration::from_millis(5));
        h.cancel();
        assert_cancelled(h.join());
        let r = weave::spawn(move || rx.recv().unwrap());
        tx.send(2).unwrap();
        assert_eq!(
            r.join().unwrap(),
            2,
            "the cancelled sender's message was taken back"
        );
    });
}

#[test]
fn server_connections_cut_by_shutdown_are_not_handler_panics() {
    let server = weave::Server::builder()
        .bind("127.0.0.1:0")
        .workers(2)
        .handle_signals(false)
        .shutdown_grace(Duration::from_millis(50))
        .build()
        .unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.handle();
    let entered = Arc::new(AtomicUsize::new(0));
    let e2 = entered.clone();
    let t = std::thread::spawn(move || {
        server
            .serve(move |_conn| {
                e2.fetch_add(1, Ordering::SeqCst);
                // Ignores its socket: only the runtime's shutdown stops it.
                weave::sleep(Duration::from_secs(3600));
                Ok(())
            })
            .unwrap()
    });
    let _c = std::net::TcpStream::connect(addr).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < end, "the handler never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.stop();
    let summary = t.join().unwrap();
    assert_eq!(
        summary.still_open, 1,
        "the handler outlived the grace period"
    );
    // The runtime is gone: the handler was cancelled, not counted as a panic.
    let c = handle.counters();
    assert_eq!(c.panics, 0);
    assert_eq!(c.active, 0);
}
