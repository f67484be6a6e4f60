//! Control flow: cancellation, scoped deadlines (timeout), shutdown by
//! cancellation.

use std::io::{self, Read, Write};
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::fiber::Cancelled;
use weave::net::TcpListener;
use weave::sync::{mpsc, Mutex};
use weave::time::{timeout, timeout_at};

mod control_common;
use control_common::*;

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
