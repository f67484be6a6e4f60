//! Stress and behaviour tests for `weave::sync`: channels, locks, condition
//! variables and semaphores used from fibers on several workers and from
//! plain threads, in any mix.
//!
//! The stress tests check exact outcomes (every message once and in order,
//! an exact counter, every waiter released). A lost wakeup shows up as a
//! hang, which the watchdog turns into a failure naming the test; a double
//! resume trips the runtime's debug check; a leaked waiter shows up in
//! `live_fibers` after the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use weave::sync::{
    self, mpmc, oneshot, Barrier, Condvar, Mutex, RecvError, RecvTimeoutError, RwLock, Semaphore,
    TryRecvError, TrySendError, WaitGroup,
};
use weave::Runtime;

fn rt(workers: usize) -> Runtime {
    Runtime::builder().workers(workers).build().unwrap()
}

/// Fails the test (instead of hanging CI) if `f` does not finish in `limit`.
/// The limit is a hang detector, many times what the work needs.
fn within<T: Send + 'static>(
    limit: Duration,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{name}: no progress in {limit:?} (lost wakeup?)"),
    }
}

const HANG: Duration = Duration::from_secs(120);

/// Waits until the runtime has no fibers left but the caller's.
fn settle(rt: &Runtime, expected: usize) {
    let start = Instant::now();
    while rt.live_fibers() > expected && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rt.live_fibers(), expected, "fibers left behind");
}

/// Producers tagged by id send increasing sequence numbers; the receiver
/// checks each sender's sequence is exactly 0, 1, 2, ... and complete.
fn check_per_sender_order(received: impl Iterator<Item = (usize, u64)>, senders: usize, per: u64) {
    let mut next = vec![0u64; senders];
    let mut total = 0u64;
    for (id, seq) in received {
        assert_eq!(seq, next[id], "sender {id}: out of order or duplicated");
        next[id] += 1;
        total += 1;
    }
    assert!(next.iter().all(|&n| n == per), "missing messages: {next:?}");
    assert_eq!(total, per * senders as u64);
}

#[test]
fn million_messages_from_fibers_and_threads_each_once_in_order() {
    within(HANG, "mpsc stress", || {
        let rt = rt(4);
        const FIBERS: usize = 8;
        const THREADS: usize = 2;
        const PER: u64 = 100_000;
        let (tx, rx) = sync::channel::<(usize, u64)>();
        let mut fibers = Vec::new();
        for id in 0..FIBERS {
            let tx = tx.clone();
            fibers.push(rt.spawn(move || {
                for seq in 0..PER {
                    tx.send((id, seq)).unwrap();
                    if seq % 1024 == 0 {
                        weave::yield_now();
                    }
                }
            }));
        }
        let mut threads = Vec::new();
        for id in FIBERS..FIBERS + THREADS {
            let tx = tx.clone();
            threads.push(thread::spawn(move || {
                for seq in 0..PER {
                    tx.send((id, seq)).unwrap();
                }
            }));
        }
        drop(tx);
        // The receiver is a fiber: it parks when the queue runs dry and is
        // woken by fibers and threads alike; the loop ends on disconnection.
        let received = rt.spawn(move || rx.into_iter().collect::<Vec<_>>());
        for f in fibers {
            f.join().unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        let received = received.join().unwrap();
        assert_eq!(received.len(), 1_000_000);
        check_per_sender_order(received.into_iter(), FIBERS + THREADS, PER);
        settle(&rt, 0);
    });
}

#[test]
fn bounded_channel_from_fibers_and_threads_each_once_in_order() {
    within(HANG, "sync_channel stress", || {
        let rt = rt(3);
        for bound in [0, 1, 7] {
            const PER: u64 = 5_000;
            let (tx, rx) = sync::sync_channel::<(usize, u64)>(bound);
            let mut fibers = Vec::new();
            for id in 0..4 {
                let tx = tx.clone();
                fibers.push(rt.spawn(move || (0..PER).for_each(|s| tx.send((id, s)).unwrap())));
            }
            let mut threads = Vec::new();
            for id in 4..6 {
                let tx = tx.clone();
                threads.push(thread::spawn(move || {
                    (0..PER).for_each(|s| tx.send((id, s)).unwrap())
                }));
            }
            drop(tx);
            // Received on a plain thread this time: fibers block on a full
            // channel and are woken by a thread.
            check_per_sender_order(rx.iter(), 6, PER);
            fibers.into_iter().for_each(|f| f.join().unwrap());
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
        settle(&rt, 0);
    });
}

#[test]
fn mpmc_work_queue_delivers_each_message_to_exactly_one_receiver() {
    within(HANG, "mpmc stress", || {
        let rt = rt(4);
        for bound in [None, Some(0), Some(16)] {
            let (tx, rx) = match bound {
                None => mpmc::channel::<u64>(),
                Some(n) => mpmc::sync_channel::<u64>(n),
            };
            const N: u64 = 40_000;
            let producers: Vec<_> = (0..4)
                .map(|p| {
                    let tx = tx.clone();
                    rt.spawn(move || {
                        for i in 0..N / 4 {
                            tx.send(p * (N / 4) + i).unwrap();
                        }
                    })
                })
                .collect();
            drop(tx);
            let mut consumers: Vec<_> = (0..6)
                .map(|_| {
                    let rx = rx.clone();
                    rt.spawn(move || rx.iter().collect::<Vec<u64>>())
                })
                .collect();
            let thread_rx = rx.clone();
            drop(rx);
            let by_thread = thread::spawn(move || thread_rx.iter().collect::<Vec<u64>>());
            producers.into_iter().for_each(|p| p.join().unwrap());
            let mut all: Vec<u64> = consumers
                .drain(..)
                .flat_map(|c| c.join().unwrap())
                .collect();
            all.extend(by_thread.join().unwrap());
            all.sort_unstable();
            assert_eq!(all, (0..N).collect::<Vec<_>>(), "bound {bound:?}");
        }
        settle(&rt, 0);
    });
}

#[test]
fn thread_and_fiber_talk_in_both_directions() {
    within(HANG, "ping-pong", || {
        let rt = rt(2);
        let (to_fiber, from_thread) = sync::sync_channel::<u64>(0);
        let (to_thread, from_fiber) = sync::channel::<u64>();
        let echo = rt.spawn(move || {
            for n in from_thread {
                to_thread.send(n + 1).unwrap();
            }
        });
        for n in 0..10_000 {
            to_fiber.send(n).unwrap();
            assert_eq!(from_fiber.recv().unwrap(), n + 1);
        }
        drop(to_fiber);
        echo.join().unwrap();
        assert_eq!(from_fiber.recv(), Err(RecvError));
    });
}

#[test]
fn mutex_contended_by_a_thousand_fibers_counts_exactly() {
    within(HANG, "mutex", || {
        let rt = rt(4);
        let m = Arc::new(Mutex::new(0u64));
        let inside = Arc::new(AtomicUsize::new(0));
        let fibers: Vec<_> = (0..1000)
            .map(|i| {
                let m = m.clone();
                let inside = inside.clone();
                rt.spawn(move || {
                    for round in 0..50 {
                        let mut g = m.lock().unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two owners");
                        let v = *g;
                        if (i + round) % 7 == 0 {
                            // Park while holding the lock: others must queue.
                            weave::yield_now();
                        }
                        *g = v + 1;
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // A plain thread contends too.
        let m2 = m.clone();
        let t = thread::spawn(move || {
            for _ in 0..2000 {
                *m2.lock().unwrap() += 1;
            }
        });
        fibers.into_iter().for_each(|f| f.join().unwrap());
        t.join().unwrap();
        assert_eq!(*m.lock().unwrap(), 1000 * 50 + 2000);
        settle(&rt, 0);
    });
}

#[test]
fn mutex_poisoned_by_a_panicking_fiber() {
    let rt = rt(2);
    let m = Arc::new(Mutex::new(1));
    let m2 = m.clone();
    let r = rt.spawn(move || {
        let _g = m2.lock().unwrap();
        panic!("poison it");
    });
    assert!(r.join().is_err());
    assert!(m.is_poisoned());
    let g = m.lock().unwrap_err().into_inner();
    assert_eq!(*g, 1);
}

#[test]
fn rwlock_readers_share_writers_exclude() {
    within(HANG, "rwlock", || {
        let rt = rt(4);
        let lock = Arc::new(RwLock::new(0u64));
        // Readers and writers: a writer's critical section makes the value
        // odd mid-way; no reader may ever see it odd.
        let readers_at_once = Arc::new(AtomicUsize::new(0));
        let max_readers = Arc::new(AtomicUsize::new(0));
        let mut fibers = Vec::new();
        for _ in 0..8 {
            let lock = lock.clone();
            fibers.push(rt.spawn(move || {
                for _ in 0..500 {
                    let mut g = lock.write().unwrap();
                    *g += 1;
                    weave::yield_now();
                    *g += 1;
                }
            }));
        }
        for _ in 0..32 {
            let lock = lock.clone();
            let (at_once, max) = (readers_at_once.clone(), max_readers.clone());
            fibers.push(rt.spawn(move || {
                for _ in 0..500 {
                    let g = lock.read().unwrap();
                    let n = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    assert_eq!(*g % 2, 0, "a reader saw a half-done write");
                    weave::yield_now();
                    at_once.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        fibers.into_iter().for_each(|f| f.join().unwrap());
        assert_eq!(*lock.read().unwrap(), 8 * 500 * 2);
        assert!(
            max_readers.load(Ordering::SeqCst) > 1,
            "readers never overlapped: read locks are not shared"
        );
        settle(&rt, 0);
    });
}

#[test]
fn condvar_has_no_lost_wakeup_under_stress() {
    within(HANG, "condvar", || {
        let rt = rt(4);
        // A bounded buffer built from one Mutex and two Condvars, the
        // classic shape where a lost notify hangs everyone.
        struct Buf {
            items: std::collections::VecDeque<u64>,
            done: bool,
        }
        let state = Arc::new((
            Mutex::new(Buf {
                items: Default::default(),
                done: false,
            }),
            Condvar::new(),
            Condvar::new(),
        ));
        const CAP: usize = 4;
        const N: u64 = 20_000;
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let s = state.clone();
                rt.spawn(move || {
                    for i in 0..N / 4 {
                        let (m, not_full, not_empty) = &*s;
                        let mut g = not_full
                            .wait_while(m.lock().unwrap(), |b| b.items.len() >= CAP)
                            .unwrap();
                        g.items.push_back(p * (N / 4) + i);
                        drop(g);
                        not_empty.notify_one();
                    }
                })
            })
            .collect();
        let consume = |s: Arc<(Mutex<Buf>, Condvar, Condvar)>| {
            let (m, not_full, not_empty) = &*s;
            let mut got = Vec::new();
            loop {
                let mut g = not_empty
                    .wait_while(m.lock().unwrap(), |b| b.items.is_empty() && !b.done)
                    .unwrap();
                match g.items.pop_front() {
                    Some(v) => {
                        drop(g);
                        not_full.notify_one();
                        got.push(v);
                    }
                    None => return got, // done and drained
                }
            }
        };
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let s = state.clone();
                rt.spawn(move || consume(s))
            })
            .collect();
        let s = state.clone();
        let thread_consumer = thread::spawn(move || consume(s));
        producers.into_iter().for_each(|p| p.join().unwrap());
        state.0.lock().unwrap().done = true;
        state.2.notify_all();
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.extend(thread_consumer.join().unwrap());
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>());
        settle(&rt, 0);
    });
}

#[test]
fn condvar_wait_timeout_times_out_and_notify_wakes() {
    let rt = rt(2);
    rt.block_on(|| {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let (m, cv) = &*pair;
        let (g, r) = cv
            .wait_timeout(m.lock().unwrap(), Duration::from_millis(30))
            .unwrap();
        assert!(r.timed_out());
        drop(g);
        let p2 = pair.clone();
        weave::spawn(move || {
            weave::sleep(Duration::from_millis(10));
            *p2.0.lock().unwrap() = true;
            p2.1.notify_all();
        });
        let (g, r) = cv
            .wait_timeout_while(m.lock().unwrap(), Duration::from_secs(60), |ready| !*ready)
            .unwrap();
        assert!(*g);
        assert!(!r.timed_out());
    });
}

#[test]
fn semaphore_bounds_concurrency_and_loses_no_permit() {
    within(HANG, "semaphore", || {
        let rt = rt(4);
        const PERMITS: usize = 3;
        let sem = Arc::new(Semaphore::new(PERMITS));
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let fibers: Vec<_> = (0..200)
            .map(|i| {
                let (sem, inside, max) = (sem.clone(), inside.clone(), max_inside.clone());
                rt.spawn(move || {
                    for _ in 0..50 {
                        let timed = i % 3 == 0;
                        let permit = if timed {
                            // Timed waits that often expire race with
                            // releases: a permit handed to a waiter whose
                            // deadline passed must not vanish.
                            match sem.acquire_timeout(Duration::from_micros(50)) {
                                Some(p) => p,
                                None => continue,
                            }
                        } else {
                            sem.acquire()
                        };
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        assert!(n <= PERMITS, "{n} inside a semaphore of {PERMITS}");
                        weave::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                })
            })
            .collect();
        fibers.into_iter().for_each(|f| f.join().unwrap());
        assert_eq!(
            sem.available_permits(),
            PERMITS,
            "a permit was lost or made up"
        );
        assert_eq!(max_inside.load(Ordering::SeqCst), PERMITS);
        settle(&rt, 0);
    });
}

#[test]
fn recv_timeout_fires_and_later_messages_still_arrive() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = sync::channel::<u32>();
        let t0 = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));
        weave::spawn(move || {
            weave::sleep(Duration::from_millis(5));
            tx.send(9).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(9));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)),
            Err(RecvTimeoutError::Disconnected)
        );
        let (tx, rx) = oneshot::channel::<u32>();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        tx.send(1).unwrap();
        assert_eq!(rx.recv(), Ok(1));
    });
}

#[test]
fn disconnection_wakes_blocked_receivers_and_senders() {
    within(HANG, "disconnect", || {
        let rt = rt(2);
        // Receivers blocked in recv wake when the last sender drops.
        let (tx, rx) = mpmc::channel::<u32>();
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let rx = rx.clone();
                rt.spawn(move || rx.recv())
            })
            .collect();
        let rx_thread = thread::spawn(move || rx.recv());
        thread::sleep(Duration::from_millis(20));
        drop(tx);
        for w in waiting {
            assert_eq!(w.join().unwrap(), Err(RecvError));
        }
        assert_eq!(rx_thread.join().unwrap(), Err(RecvError));

        // A sender blocked on a full channel wakes when the receiver drops,
        // and gets its value back.
        let (tx, rx) = sync::sync_channel::<u32>(1);
        tx.send(1).unwrap();
        let blocked = rt.spawn(move || tx.send(2));
        thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(blocked.join().unwrap().unwrap_err().0, 2);

        // try_* report the state without waiting.
        let (tx, rx) = sync::sync_channel::<u32>(1);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        drop(rx);
        assert_eq!(tx.try_send(3), Err(TrySendError::Disconnected(3)));

        // A oneshot whose sender is dropped wakes its receiver.
        let (tx, rx) = oneshot::channel::<u32>();
        let w = rt.spawn(move || rx.recv());
        thread::sleep(Duration::from_millis(10));
        drop(tx);
        assert_eq!(w.join().unwrap(), Err(RecvError));
        settle(&rt, 0);
    });
}

#[test]
fn wait_group_and_barrier_release_everyone() {
    within(HANG, "wait group", || {
        let rt = rt(4);
        for _ in 0..20 {
            let wg = WaitGroup::new();
            let done = Arc::new(AtomicUsize::new(0));
            for _ in 0..50 {
                let (wg, done) = (wg.clone(), done.clone());
                rt.spawn(move || {
                    weave::yield_now();
                    done.fetch_add(1, Ordering::SeqCst);
                    drop(wg);
                });
            }
            wg.wait(); // from a plain thread
            assert_eq!(done.load(Ordering::SeqCst), 50);
        }
        const N: usize = 16;
        let barrier = Arc::new(Barrier::new(N));
        let phase = Arc::new(AtomicUsize::new(0));
        let fibers: Vec<_> = (0..N)
            .map(|_| {
                let (b, phase) = (barrier.clone(), phase.clone());
                rt.spawn(move || {
                    let mut leaders = 0;
                    for round in 0..100 {
                        phase.fetch_add(1, Ordering::SeqCst);
                        let r = b.wait();
                        // Nobody passes round `round` before all arrived.
                        assert!(phase.load(Ordering::SeqCst) >= (round + 1) * N);
                        leaders += r.is_leader() as usize;
                        b.wait();
                    }
                    leaders
                })
            })
            .collect();
        let leaders: usize = fibers.into_iter().map(|f| f.join().unwrap()).sum();
        assert_eq!(leaders, 100, "exactly one leader per round");
        settle(&rt, 0);
    });
}

#[test]
fn runtime_shutdown_with_fibers_blocked_on_sync_releases_them() {
    // Fibers parked on a mutex, a semaphore and a channel when their runtime
    // is dropped are unwound; what they held or were handed goes back, so
    // waiters elsewhere (here a plain thread) are not stuck.
    within(HANG, "shutdown", || {
        let m = Arc::new(Mutex::new(0));
        let sem = Arc::new(Semaphore::new(1));
        let (tx, rx) = mpmc::channel::<u32>();
        {
            let rt = rt(2);
            let held = sem.acquire();
            let g = m.lock().unwrap();
            for _ in 0..10 {
                let (m, sem, rx) = (m.clone(), sem.clone(), rx.clone());
                rt.spawn(move || {
                    let _g = m.lock();
                    let _p = sem.acquire();
                    let _ = rx.recv();
                });
            }
            thread::sleep(Duration::from_millis(30));
            drop(g);
            drop(held);
            thread::sleep(Duration::from_millis(30));
            drop(rt);
        }
        // Everything is free again.
        // Free again (poisoned, as a std mutex is when its holder unwinds).
        assert!(
            !matches!(m.try_lock(), Err(std::sync::TryLockError::WouldBlock)),
            "mutex still held by an unwound fiber"
        );
        assert_eq!(
            sem.available_permits(),
            1,
            "permit lost in an unwound fiber"
        );
        tx.send(5).unwrap();
        assert_eq!(rx.recv(), Ok(5));
    });
}

#[test]
fn timed_out_acquire_makes_up_no_permit() {
    let rt = rt(1);
    rt.block_on(|| {
        let sem = Semaphore::new(0);
        assert!(sem.acquire_timeout(Duration::from_millis(5)).is_none());
        assert_eq!(sem.available_permits(), 0);
        sem.add_permits(1);
        let p = sem.acquire_timeout(Duration::from_millis(5));
        assert!(p.is_some());
        assert_eq!(sem.available_permits(), 0);
    });
}

#[test]
fn mpsc_receiver_shared_by_fibers_of_one_worker() {
    // The receiver is `!Sync`, but fibers of one worker thread can still
    // block on it together (here through a thread-local): each must be woken.
    thread_local! {
        static RX: std::cell::RefCell<Option<sync::Receiver<u32>>> =
            const { std::cell::RefCell::new(None) };
    }
    fn recv_shared() -> Result<u32, RecvError> {
        RX.with(|rx| rx.borrow().as_ref().expect("receiver installed").recv())
    }
    fn collect(
        waiting: Vec<weave::JoinHandle<Result<u32, RecvError>>>,
    ) -> Vec<Result<u32, RecvError>> {
        let mut got: Vec<_> = waiting.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort_unstable_by_key(|r| r.ok());
        got
    }
    within(HANG, "shared mpsc receiver", || {
        let rt = rt(1);
        rt.block_on(|| {
            let (tx, rx) = sync::channel::<u32>();
            RX.with(|r| *r.borrow_mut() = Some(rx));
            // Sent from a fiber of the same worker, one at a time.
            let waiting: Vec<_> = (0..4).map(|_| weave::spawn(recv_shared)).collect();
            weave::sleep(Duration::from_millis(5));
            for v in 0..4 {
                tx.send(v).unwrap();
                weave::yield_now();
            }
            assert_eq!(collect(waiting), [Ok(0), Ok(1), Ok(2), Ok(3)]);
            // Sent from a plain thread, all at once.
            let waiting: Vec<_> = (0..4).map(|_| weave::spawn(recv_shared)).collect();
            weave::sleep(Duration::from_millis(5));
            let tx2 = tx.clone();
            thread::spawn(move || (10..14).for_each(|v| tx2.send(v).unwrap()))
                .join()
                .unwrap();
            assert_eq!(collect(waiting), [Ok(10), Ok(11), Ok(12), Ok(13)]);
            // The last sender's drop wakes them all.
            let waiting: Vec<_> = (0..3).map(|_| weave::spawn(recv_shared)).collect();
            weave::sleep(Duration::from_millis(5));
            drop(tx);
            assert_eq!(collect(waiting), [Err(RecvError); 3]);
            RX.with(|r| r.borrow_mut().take());
        });
    });
}

#[test]
fn mpsc_receiver_timeouts_race_sends_and_the_receiver_changes_hands() {
    // Short receive timeouts firing while messages arrive, by a receiver that
    // moves between fibers and a plain thread: no message lost, none stuck.
    within(HANG, "mpsc timeouts", || {
        let rt = rt(2);
        const PER: u64 = 20_000;
        let (tx, rx) = sync::channel::<(usize, u64)>();
        let producers: Vec<_> = (0..2)
            .map(|id| {
                let tx = tx.clone();
                rt.spawn(move || {
                    for seq in 0..PER {
                        tx.send((id, seq)).unwrap();
                        if seq % 7 == 0 {
                            weave::yield_now();
                        }
                        if seq % 1000 == 0 {
                            weave::sleep(Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        let feeder = {
            let tx = tx.clone();
            thread::spawn(move || {
                for seq in 0..PER {
                    tx.send((2, seq)).unwrap();
                    if seq % 500 == 0 {
                        thread::sleep(Duration::from_micros(100));
                    }
                }
            })
        };
        drop(tx);
        // Receive in turns: a fiber, a thread, a fiber on another worker...
        let mut got = Vec::new();
        let mut rx = rx;
        let mut done = false;
        let mut turn = 0;
        while !done {
            let take = move |rx: sync::Receiver<(usize, u64)>| {
                let mut part = Vec::new();
                for _ in 0..5_000 {
                    match rx.recv_timeout(Duration::from_micros(20)) {
                        Ok(m) => part.push(m),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return (rx, part, true),
                    }
                }
                (rx, part, false)
            };
            let (back, part, end) = if turn % 2 == 0 {
                rt.spawn(move || take(rx)).join().unwrap()
            } else {
                thread::spawn(move || take(rx)).join().unwrap()
            };
            rx = back;
            got.extend(part);
            done = end;
            turn += 1;
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        feeder.join().unwrap();
        check_per_sender_order(got.into_iter(), 3, PER);
        settle(&rt, 0);
    });
}

#[test]
fn runtime_shutdown_with_a_fiber_blocked_on_an_mpsc_receiver() {
    within(HANG, "mpsc shutdown", || {
        let (tx, rx) = sync::channel::<u32>();
        {
            let rt = rt(1);
            rt.spawn(move || {
                let _ = rx.recv();
            });
            thread::sleep(Duration::from_millis(20));
            drop(rt);
        }
        // The unwound fiber dropped the receiver.
        assert_eq!(tx.send(1).unwrap_err().0, 1);
    });
}
