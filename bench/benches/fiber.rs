//! Fiber primitives side by side: weave against `may` coroutines, OS threads
//! and tokio tasks, in the same process and the same run.
//!
//! ```text
//! cargo bench -p weave-bench --bench fiber
//! ```
//!
//! What each group measures (time per iteration):
//!
//! - `spawn_join`: spawn an empty fiber (coroutine, thread, task) and wait for
//!   it. Fibers and coroutines run on one worker, spawned from a fiber of the
//!   same runtime; tokio uses a current-thread runtime.
//! - `yield_round_trip`: two fibers on one worker yield to each other; one
//!   iteration is one full round (A yields, B runs and yields, A resumes).
//! - `park_unpark_ping_pong`: two fibers wake each other in turn; one
//!   iteration is one round trip (two wakeups). `weave_2w_cross_worker` puts
//!   the two fibers on different workers of a two-worker runtime (weave never
//!   moves a started fiber, so every wakeup crosses threads). `may_2w` and
//!   `tokio_2w_notify` (tokio's `Notify`) run on two workers too, but both
//!   schedulers move a woken coroutine or task to the waker's worker, so
//!   their pairs mostly end up on one worker. The threads variant uses
//!   `thread::park`/`unpark`. The `*_same_worker` variants pin the question
//!   to one worker: scheduler cost alone, no cross-thread wakeup.
//!
//! `may`'s configuration is process-wide and fixed at first use, so this
//! process runs `may` with one worker; the two-worker `may` ping-pong runs in
//! a child process of this same binary (started per measurement batch, timed
//! inside the child, so process start-up is not counted).
//!
//! Ping-pong never loses a wakeup: the turn is a shared counter, and each
//! side parks in a loop until the counter says it is its turn, so a spurious
//! return or an unpark that arrives before the park is harmless.

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;

mod common;
use common::{config, may_one_worker, may_spawn, weave_rt};

/// Environment variable that turns this binary into the `may` ping-pong child.
const CHILD_ENV: &str = "WEAVE_FIBER_BENCH_MAY_PING_PONG_ITERS";

// ---------------------------------------------------------------------------
// spawn + join

fn spawn_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");

    let rt = weave_rt(1);
    g.bench_function("weave_1w", |b| {
        b.iter_custom(|iters| {
            rt.block_on(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    weave::spawn(|| black_box(())).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
    drop(rt);

    let rt = weave_rt(2);
    g.bench_function("weave_2w", |b| {
        b.iter_custom(|iters| {
            rt.block_on(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    weave::spawn(|| black_box(())).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
    drop(rt);

    may_one_worker();
    g.bench_function("may_1w", |b| {
        b.iter_custom(|iters| {
            may_spawn(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    may_spawn(|| black_box(())).join().unwrap();
                }
                start.elapsed()
            })
            .join()
            .unwrap()
        })
    });

    g.bench_function("std_thread", |b| {
        b.iter(|| thread::spawn(|| black_box(())).join().unwrap())
    });

    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    g.bench_function("tokio_current_thread", |b| {
        b.iter_custom(|iters| {
            tokio_rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::spawn(async { black_box(()) }).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// yield round trip on one worker

/// Runs `iters` yield round trips between two fibers of a one-worker weave
/// runtime; the time is taken by the first fiber once both are running.
///
/// The second fiber parks (rather than yields) until the first has started:
/// a weave worker runs its ready started fibers before fibers that have not
/// started yet, so a fiber spinning on `yield_now` would keep a new one from
/// ever starting.
fn weave_yield(rt: &weave::Runtime, iters: u64) -> Duration {
    rt.block_on(move || {
        let a_started = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (at, d) = (a_started.clone(), done.clone());
        let b = weave::spawn(move || {
            while !at.load(Ordering::Acquire) {
                weave::park();
            }
            while !d.load(Ordering::Acquire) {
                weave::yield_now();
            }
        });
        let b_fiber = b.fiber();
        let a = weave::spawn(move || {
            a_started.store(true, Ordering::Release);
            b_fiber.unpark();
            // Let the second fiber reach its yield loop.
            weave::yield_now();
            let start = Instant::now();
            for _ in 0..iters {
                weave::yield_now();
            }
            let t = start.elapsed();
            done.store(true, Ordering::Release);
            t
        });
        let t = a.join().unwrap();
        b.join().unwrap();
        t
    })
}

fn may_yield(iters: u64) -> Duration {
    may_one_worker();
    may_spawn(move || {
        let b_started = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (bs, d) = (b_started.clone(), done.clone());
        let b = may_spawn(move || {
            bs.store(true, Ordering::Release);
            while !d.load(Ordering::Acquire) {
                may::coroutine::yield_now();
            }
        });
        let a = may_spawn(move || {
            while !b_started.load(Ordering::Acquire) {
                may::coroutine::yield_now();
            }
            let start = Instant::now();
            for _ in 0..iters {
                may::coroutine::yield_now();
            }
            let t = start.elapsed();
            done.store(true, Ordering::Release);
            t
        });
        let t = a.join().unwrap();
        b.join().unwrap();
        t
    })
    .join()
    .unwrap()
}

fn tokio_yield(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    rt.block_on(async move {
        let b_started = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (bs, d) = (b_started.clone(), done.clone());
        let b = tokio::spawn(async move {
            bs.store(true, Ordering::Release);
            while !d.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
        });
        let a = tokio::spawn(async move {
            while !b_started.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
            let start = Instant::now();
            for _ in 0..iters {
                tokio::task::yield_now().await;
            }
            let t = start.elapsed();
            done.store(true, Ordering::Release);
            t
        });
        let t = a.await.unwrap();
        b.await.unwrap();
        t
    })
}

fn yield_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("yield_round_trip");
    let rt = weave_rt(1);
    g.bench_function("weave_1w", |b| {
        b.iter_custom(|iters| weave_yield(&rt, iters))
    });
    drop(rt);
    g.bench_function("may_1w", |b| b.iter_custom(may_yield));
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    g.bench_function("tokio_current_thread", |b| {
        b.iter_custom(|iters| tokio_yield(&tokio_rt, iters))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// park/unpark ping-pong across workers

/// One side of the ping-pong. `turn` counts wakeups; side `me` (0 or 1) acts
/// when `turn % 2 == me`, bumps it and wakes the peer, `iters` times.
fn ping_pong_side(turn: &AtomicU64, me: u64, iters: u64, park: impl Fn(), wake: impl Fn()) {
    for i in 0..iters {
        let mine = 2 * i + me;
        while turn.load(Ordering::Acquire) != mine {
            park();
        }
        turn.store(mine + 1, Ordering::Release);
        wake();
    }
}

/// Weave ping-pong between two fibers. With `cross`, on a two-worker runtime,
/// the fibers are made to run on different workers: the first fiber spawns
/// the second and spins (without parking, so its worker stays busy) until
/// the second has started, which therefore can only start on the other
/// worker. Without it (a one-worker runtime) both share the worker.
fn weave_ping_pong(rt: &weave::Runtime, iters: u64, cross: bool) -> Duration {
    rt.block_on(move || {
        weave::spawn(move || {
            let turn = Arc::new(AtomicU64::new(0));
            let b_thread = Arc::new(std::sync::Mutex::new(None));
            let me = weave::current();
            let (t, bt) = (turn.clone(), b_thread.clone());
            let b = weave::spawn(move || {
                *bt.lock().unwrap() = Some(thread::current().id());
                ping_pong_side(&t, 1, iters, weave::park, || me.unpark());
            });
            if cross {
                let deadline = Instant::now() + Duration::from_secs(5);
                let b_tid = loop {
                    if let Some(id) = *b_thread.lock().unwrap() {
                        break id;
                    }
                    assert!(Instant::now() < deadline, "second fiber never started");
                    std::hint::spin_loop();
                };
                assert_ne!(b_tid, thread::current().id(), "fibers share a worker");
            }
            let peer = b.fiber();
            let start = Instant::now();
            ping_pong_side(&turn, 0, iters, weave::park, || peer.unpark());
            while turn.load(Ordering::Acquire) != 2 * iters {
                weave::park();
            }
            let d = start.elapsed();
            b.join().unwrap();
            d
        })
        .join()
        .unwrap()
    })
}

/// The `may` ping-pong body: in this process with one worker, and in the
/// child process with two (`may` coroutines may run on either worker, and
/// move between them).
fn may_ping_pong(iters: u64) -> Duration {
    may_spawn(move || {
        let turn = Arc::new(AtomicU64::new(0));
        let me = may::coroutine::current();
        let t = turn.clone();
        let b = may_spawn(move || {
            ping_pong_side(&t, 1, iters, may::coroutine::park, || me.unpark());
        });
        let peer = b.coroutine().clone();
        let start = Instant::now();
        ping_pong_side(&turn, 0, iters, may::coroutine::park, || peer.unpark());
        while turn.load(Ordering::Acquire) != 2 * iters {
            may::coroutine::park();
        }
        let d = start.elapsed();
        b.join().unwrap();
        d
    })
    .join()
    .unwrap()
}

/// Runs the `may` ping-pong in a child process with two workers and returns
/// the time the child measured.
fn may_ping_pong_child(iters: u64) -> Duration {
    let exe = std::env::current_exe().expect("bench binary path");
    let out = Command::new(exe)
        .env(CHILD_ENV, iters.to_string())
        .output()
        .expect("start the may ping-pong child");
    assert!(out.status.success(), "may ping-pong child failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let nanos: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nanos="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected child output: {text}"));
    Duration::from_nanos(nanos)
}

fn thread_ping_pong(iters: u64) -> Duration {
    let turn = Arc::new(AtomicU64::new(0));
    let me = thread::current();
    let t = turn.clone();
    let b = thread::spawn(move || {
        ping_pong_side(&t, 1, iters, thread::park, || me.unpark());
    });
    let peer = b.thread().clone();
    let start = Instant::now();
    ping_pong_side(&turn, 0, iters, thread::park, || peer.unpark());
    while turn.load(Ordering::Acquire) != 2 * iters {
        thread::park();
    }
    let d = start.elapsed();
    b.join().unwrap();
    d
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    use tokio::sync::Notify;
    rt.block_on(async move {
        let turn = Arc::new(AtomicU64::new(0));
        let wake = [Arc::new(Notify::new()), Arc::new(Notify::new())];
        let side = |me: u64| {
            let turn = turn.clone();
            let mine_n = wake[me as usize].clone();
            let peer_n = wake[1 - me as usize].clone();
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    let mine = 2 * i + me;
                    while turn.load(Ordering::Acquire) != mine {
                        mine_n.notified().await;
                    }
                    turn.store(mine + 1, Ordering::Release);
                    peer_n.notify_one();
                }
                if me == 0 {
                    while turn.load(Ordering::Acquire) != 2 * iters {
                        mine_n.notified().await;
                    }
                }
                start.elapsed()
            }
        };
        let a = tokio::spawn(side(0));
        let b = tokio::spawn(side(1));
        let t = a.await.unwrap();
        b.await.unwrap();
        t
    })
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("park_unpark_ping_pong");
    let rt = weave_rt(2);
    g.bench_function("weave_2w_cross_worker", |b| {
        b.iter_custom(|iters| weave_ping_pong(&rt, iters, true))
    });
    drop(rt);
    g.bench_function("may_2w", |b| b.iter_custom(may_ping_pong_child));
    g.bench_function("std_thread", |b| b.iter_custom(thread_ping_pong));
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    g.bench_function("tokio_2w_notify", |b| {
        b.iter_custom(|iters| tokio_ping_pong(&tokio_rt, iters))
    });
    // Both sides on one worker: what the scheduler alone costs.
    let rt = weave_rt(1);
    g.bench_function("weave_1w_same_worker", |b| {
        b.iter_custom(|iters| weave_ping_pong(&rt, iters, false))
    });
    drop(rt);
    may_one_worker();
    g.bench_function("may_1w_same_worker", |b| b.iter_custom(may_ping_pong));
    g.finish();
}

fn main() {
    if let Ok(iters) = std::env::var(CHILD_ENV) {
        let iters: u64 = iters.parse().expect("iteration count");
        may::config().set_workers(2).set_worker_pin(false);
        let d = may_ping_pong(iters);
        println!("nanos={}", d.as_nanos());
        return;
    }
    let mut c = config();
    spawn_join(&mut c);
    yield_round_trip(&mut c);
    ping_pong(&mut c);
    c.final_summary();
}
