//! Control flow between fibers: `weave::Select`, scoped fibers and
//! `block_on` with borrows, the broadcast channel and `send_timeout`.

use std::io::{Read, Write};
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::net::{TcpListener, TcpStream};
use weave::sync::mpsc;

mod control_common;
use control_common::*;

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

/// Counts its drops, after a park: a fiber-local destructor that parks
/// keeps its fiber from ending for a while after the closure returned.
struct ParksOnDrop(&'static AtomicUsize);

impl Drop for ParksOnDrop {
    fn drop(&mut self) {
        weave::sleep(Duration::from_millis(2));
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

weave::fiber_local! {
    static PARKS_ON_DROP: std::cell::RefCell<Option<ParksOnDrop>> =
        std::cell::RefCell::new(None);
}

#[test]
fn a_scope_returns_only_after_its_fibers_have_ended() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let rt = rt(2);
    let handle = rt.handle();
    rt.block_on(|| {
        let before = handle.live_fibers();
        let mut expected = 0;
        for round in 1..=50 {
            // In a few rounds (each prints its panic), a panic, joined:
            // the scope does not panic, and the fiber's local is dropped
            // before its panic is delivered.
            let with_panic = round <= 3;
            expected += 3 + usize::from(with_panic);
            weave::scope(|s| {
                if with_panic {
                    let h = s.spawn(|| {
                        PARKS_ON_DROP.with(|p| *p.borrow_mut() = Some(ParksOnDrop(&DROPPED)));
                        panic!("a scoped fiber's panic, joined");
                    });
                    assert!(h.join().is_err());
                }
                // Not joined: the scope itself waits for these.
                for i in 0..3 {
                    s.spawn(move || {
                        PARKS_ON_DROP.with(|p| *p.borrow_mut() = Some(ParksOnDrop(&DROPPED)));
                        if i % 2 == 0 {
                            weave::yield_now();
                        }
                    });
                }
            });
            // The fibers' locals are gone, the panicking one's too, and no
            // fiber counts as live.
            assert_eq!(DROPPED.load(Ordering::SeqCst), expected, "round {round}");
            assert_eq!(handle.live_fibers(), before, "round {round}");
        }
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
