//! Runtime stress: lost wakeups, double resumes and leaks would show here as
//! a hang (caught by a watchdog), a panic, or a count that does not add up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// Runs `f` on a helper thread and fails the test if it does not finish in
/// `limit` (a lost wakeup shows up as a hang).
fn with_watchdog<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("stress run did not finish: a wakeup was lost or a fiber hangs")
}

/// Pairs of fibers hand a turn back and forth with park/unpark, across
/// workers. 32 pairs x 4,000 rounds = 256,000 park/unpark races.
#[test]
fn stress_park_unpark_ping_pong_across_workers() {
    const PAIRS: usize = 32;
    const ROUNDS: u64 = 4_000;
    let total = with_watchdog(Duration::from_secs(120), || {
        let rt = rt(4);
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        rt.block_on(move || {
            let mut hs = Vec::new();
            for _ in 0..PAIRS {
                let turn = Arc::new(AtomicU64::new(0));
                // A publishes its own handle before it first hands over the
                // turn, so B always finds it.
                let cell_a = Arc::new(std::sync::OnceLock::<weave::Fiber>::new());
                let t1 = turn.clone();
                let d1 = d.clone();
                let ca = cell_a.clone();
                // B waits for odd turns, A for even ones.
                let b = weave::spawn(move || {
                    for r in 0..ROUNDS {
                        while t1.load(Ordering::Acquire) != 2 * r + 1 {
                            weave::park();
                        }
                        t1.store(2 * r + 2, Ordering::Release);
                        ca.get().expect("A registered itself").unpark();
                        d1.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let bf = b.fiber();
                let t2 = turn.clone();
                let a = weave::spawn(move || {
                    cell_a.set(weave::current()).unwrap();
                    for r in 0..ROUNDS {
                        while t2.load(Ordering::Acquire) != 2 * r {
                            weave::park();
                        }
                        t2.store(2 * r + 1, Ordering::Release);
                        bf.unpark();
                    }
                });
                hs.push(a);
                hs.push(b);
            }
            for h in hs {
                h.join().unwrap();
            }
        });
        done.load(Ordering::SeqCst)
    });
    assert_eq!(total, PAIRS as u64 * ROUNDS);
}

/// Plain threads unpark fibers that wait for a counter to move: 8 threads x
/// 20,000 increments, each followed by an unpark racing the fiber's park.
#[test]
fn stress_unpark_from_plain_threads() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 20_000;
    with_watchdog(Duration::from_secs(120), || {
        let rt = rt(2);
        let mut waiters = Vec::new();
        let mut counters = Vec::new();
        for _ in 0..THREADS {
            let counter = Arc::new(AtomicU64::new(0));
            let c = counter.clone();
            let h = rt.spawn(move || {
                let mut seen = 0;
                while seen < ROUNDS {
                    let now = c.load(Ordering::Acquire);
                    if now == seen {
                        weave::park();
                    } else {
                        seen = now;
                    }
                }
                seen
            });
            counters.push(counter);
            waiters.push(h);
        }
        let threads: Vec<_> = counters
            .into_iter()
            .zip(waiters.iter().map(|h| h.fiber()))
            .map(|(c, f)| {
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        c.fetch_add(1, Ordering::Release);
                        f.unpark();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for h in waiters {
            assert_eq!(h.join().unwrap(), ROUNDS);
        }
    });
}

/// Many fibers unpark many others at random while they park with timeouts:
/// no fiber may be resumed twice (a double resume trips the runtime's debug
/// check or corrupts the counts) and all finish.
#[test]
fn stress_unpark_storm_with_timeouts() {
    const FIBERS: usize = 200;
    const ROUNDS: usize = 500;
    with_watchdog(Duration::from_secs(120), || {
        let rt = rt(4);
        let parks = Arc::new(AtomicUsize::new(0));
        let p = parks.clone();
        rt.block_on(move || {
            let stop = Arc::new(AtomicBool::new(false));
            let hs: Vec<_> = (0..FIBERS)
                .map(|_| {
                    let p = p.clone();
                    weave::spawn(move || {
                        for i in 0..ROUNDS {
                            if i % 7 == 0 {
                                weave::park_timeout(Duration::from_micros(50));
                            } else if i % 3 == 0 {
                                weave::yield_now();
                            } else {
                                weave::park_timeout(Duration::from_millis(1));
                            }
                            p.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let fibers: Vec<weave::Fiber> = hs.iter().map(|h| h.fiber()).collect();
            let s = stop.clone();
            let storm: Vec<_> = (0..4)
                .map(|k| {
                    let fibers = fibers.clone();
                    let s = s.clone();
                    weave::spawn(move || {
                        let mut i = k;
                        let mut n = 0u64;
                        while !s.load(Ordering::Relaxed) {
                            fibers[i % fibers.len()].unpark();
                            i = i.wrapping_mul(7).wrapping_add(13);
                            n += 1;
                            if n % 16 == 0 {
                                weave::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            for s in storm {
                s.join().unwrap();
            }
        });
        assert_eq!(parks.load(Ordering::SeqCst), FIBERS * ROUNDS);
        assert_eq!(rt.live_fibers(), 0);
    });
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// One million fibers spawned and joined: all complete, none stays live,
/// and resident memory returns near where it was (the stack pool is bounded).
#[test]
fn stress_million_fibers_no_leak() {
    const BATCH: usize = 1_000;
    const BATCHES: usize = 1_000;
    with_watchdog(Duration::from_secs(300), || {
        // Small stacks for the many fibers, the default for the one that
        // spawns them (see `fiber_scale.rs`).
        let rt = weave::Runtime::builder().workers(2).build().unwrap();
        fn spawn_small<T: Send + 'static>(
            f: impl FnOnce() -> T + Send + 'static,
        ) -> weave::JoinHandle<T> {
            weave::fiber::Builder::new()
                .stack_size(32 * 1024)
                .spawn(f)
                .unwrap()
        }
        // Warm up: fill the stack pools once.
        let warm = |rt: &weave::Runtime| {
            rt.block_on(|| {
                let hs: Vec<_> = (0..BATCH).map(|i| spawn_small(move || i)).collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
            })
        };
        warm(&rt);
        let before = resident_bytes();
        let sum = rt.block_on(|| {
            let mut sum = 0u64;
            for _ in 0..BATCHES {
                let hs: Vec<_> = (0..BATCH as u64).map(|i| spawn_small(move || i)).collect();
                for h in hs {
                    sum += h.join().unwrap();
                }
            }
            sum
        });
        assert_eq!(
            sum,
            BATCHES as u64 * (BATCH as u64 * (BATCH as u64 - 1) / 2)
        );
        assert_eq!(rt.live_fibers(), 0);
        let after = resident_bytes();
        let grown = after.saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "resident memory grew by {} KiB over 1M fibers",
            grown / 1024
        );
    });
}

/// A fiber that never parks only holds its own worker: the other worker
/// takes the queued new fibers and runs them. (The controller is a plain
/// thread: a fiber pinned to the hog's worker would wait behind the hog,
/// which is the documented cost of never migrating started fibers.)
#[test]
fn no_starvation_of_queued_fibers_behind_a_hog() {
    with_watchdog(Duration::from_secs(60), || {
        let rt = weave::Runtime::builder()
            .workers(2)
            .hog_threshold(Duration::from_secs(3600))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let started = Arc::new(AtomicBool::new(false));
        let st = started.clone();
        let hog = rt.spawn(move || {
            st.store(true, Ordering::Release);
            while !s.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
        while !started.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..100)
            .map(|_| {
                let r = ran.clone();
                rt.spawn(move || {
                    weave::yield_now();
                    r.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 100);
        stop.store(true, Ordering::Release);
        hog.join().unwrap();
    });
}

/// A worker runs the fiber an event wakes right after that event, but only
/// that one: a fiber that keeps yielding goes back to the queue, so the rest
/// of the batch still gets dispatched. Here two sockets turn readable in one
/// batch (the worker is blocked meanwhile); the first one's reader yields
/// until the second one's reader has run. Were the queue run until empty
/// after each event, the second event would never be dispatched and the
/// watchdog would fire (checked by breaking the worker that way).
#[test]
fn a_yielding_fiber_does_not_hold_up_its_event_batch() {
    use std::io::{Read, Write};
    with_watchdog(Duration::from_secs(60), || {
        for _ in 0..20 {
            let rt = rt(1);
            let (mut c1, s1) = std::os::unix::net::UnixStream::pair().unwrap();
            let (mut c2, s2) = std::os::unix::net::UnixStream::pair().unwrap();
            let s1 = weave::net::UnixStream::from_std(s1).unwrap();
            let s2 = weave::net::UnixStream::from_std(s2).unwrap();
            let second_ran = Arc::new(AtomicBool::new(false));
            let reading = Arc::new(AtomicUsize::new(0));
            let (ran, r1) = (second_ran.clone(), reading.clone());
            let yielder = rt.spawn(move || {
                let mut b = [0u8; 1];
                r1.fetch_add(1, Ordering::SeqCst);
                (&s1).read_exact(&mut b).unwrap();
                let mut yields = 0u64;
                while !ran.load(Ordering::SeqCst) {
                    weave::yield_now();
                    yields += 1;
                }
                yields
            });
            let (ran, r2) = (second_ran.clone(), reading.clone());
            let second = rt.spawn(move || {
                let mut b = [0u8; 1];
                r2.fetch_add(1, Ordering::SeqCst);
                (&s2).read_exact(&mut b).unwrap();
                ran.store(true, Ordering::SeqCst);
            });
            while reading.load(Ordering::SeqCst) < 2 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20));
            // Block the only worker while both sockets turn readable, so its
            // next poll fetches both events together.
            let blocker = rt.spawn(|| std::thread::sleep(Duration::from_millis(100)));
            std::thread::sleep(Duration::from_millis(30));
            c1.write_all(b"a").unwrap();
            c2.write_all(b"b").unwrap();
            blocker.join().unwrap();
            second.join().unwrap();
            yielder.join().unwrap();
        }
    });
}
