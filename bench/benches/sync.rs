//! Channels side by side: weave's `sync` channels against `may`'s channels,
//! tokio's mpsc and crossbeam-channel between OS threads, in the same run.
//!
//! ```text
//! cargo bench -p weave-bench --bench sync
//! ```
//!
//! What each group measures (time per message):
//!
//! - `channel_ping_pong`: two fibers (coroutines, tasks, threads) bounce one
//!   value back and forth over two unbounded channels; one iteration is one
//!   round trip, so two sends, two receives and two wakeups. weave runs both
//!   fibers on a one-worker runtime; `may` has one worker in this process;
//!   tokio uses a current-thread runtime; crossbeam uses two OS threads, the
//!   cost every wakeup pays without fibers.
//! - `channel_4_producers`: four producers send 10,000 messages each into one
//!   receiver, on two workers (two threads for tokio; four producer threads
//!   and a receiving thread for crossbeam). One iteration is one message
//!   received. weave runs on one worker (`weave_1w`, like `may_1w`) and on
//!   two.
//!
//! `may`'s configuration is process-wide, fixed at first use: this binary
//! gives it one worker for ping-pong and the throughput group runs it with
//! that same worker (a second may worker cannot be added later).

use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

mod common;
use common::{config, may_one_worker, may_spawn, weave_rt};

// ----- ping-pong -----------------------------------------------------------

fn weave_ping_pong(rt: &weave::Runtime, iters: u64) -> Duration {
    rt.block_on(move || {
        let (to_b, b_in) = weave::sync::channel::<u64>();
        let (to_a, a_in) = weave::sync::channel::<u64>();
        let b = weave::spawn(move || {
            for v in b_in {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        for i in 0..iters {
            to_b.send(i).unwrap();
            assert_eq!(a_in.recv().unwrap(), i + 1);
        }
        let t = start.elapsed();
        drop(to_b);
        b.join().unwrap();
        t
    })
}

fn may_ping_pong(iters: u64) -> Duration {
    may_one_worker();
    may_spawn(move || {
        let (to_b, b_in) = may::sync::mpsc::channel::<u64>();
        let (to_a, a_in) = may::sync::mpsc::channel::<u64>();
        let b = may_spawn(move || {
            while let Ok(v) = b_in.recv() {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        for i in 0..iters {
            to_b.send(i).unwrap();
            assert_eq!(a_in.recv().unwrap(), i + 1);
        }
        let t = start.elapsed();
        drop(to_b);
        b.join().unwrap();
        t
    })
    .join()
    .unwrap()
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    rt.block_on(async move {
        let (to_b, mut b_in) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let (to_a, mut a_in) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let b = tokio::spawn(async move {
            while let Some(v) = b_in.recv().await {
                if to_a.send(v + 1).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        for i in 0..iters {
            to_b.send(i).unwrap();
            assert_eq!(a_in.recv().await.unwrap(), i + 1);
        }
        let t = start.elapsed();
        drop(to_b);
        b.await.unwrap();
        t
    })
}

fn crossbeam_ping_pong(iters: u64) -> Duration {
    let (to_b, b_in) = crossbeam_channel::unbounded::<u64>();
    let (to_a, a_in) = crossbeam_channel::unbounded::<u64>();
    let b = thread::spawn(move || {
        for v in b_in {
            if to_a.send(v + 1).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        to_b.send(i).unwrap();
        assert_eq!(a_in.recv().unwrap(), i + 1);
    }
    let t = start.elapsed();
    drop(to_b);
    b.join().unwrap();
    t
}

fn ping_pong(c: &mut Criterion) {
    let weave1 = weave_rt(1);
    let tokio_ct = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("channel_ping_pong");
    g.bench_function("weave", |b| b.iter_custom(|n| weave_ping_pong(&weave1, n)));
    g.bench_function("may", |b| b.iter_custom(may_ping_pong));
    g.bench_function("tokio", |b| {
        b.iter_custom(|n| tokio_ping_pong(&tokio_ct, n))
    });
    g.bench_function("crossbeam_threads", |b| b.iter_custom(crossbeam_ping_pong));
    g.finish();
}

// ----- four producers ------------------------------------------------------

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 10_000;
const BATCH: u64 = PRODUCERS * PER_PRODUCER;

/// Runs `batch` enough times to cover `iters` messages; returns the time
/// for `iters` messages, scaled from whole batches.
fn batches(iters: u64, mut batch: impl FnMut() -> Duration) -> Duration {
    let rounds = iters.div_ceil(BATCH).max(1);
    let total: Duration = (0..rounds).map(|_| batch()).sum();
    total.mul_f64(iters as f64 / (rounds * BATCH) as f64)
}

fn weave_producers(rt: &weave::Runtime) -> Duration {
    rt.block_on(|| {
        let (tx, rx) = weave::sync::channel::<u64>();
        let start = Instant::now();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tx = tx.clone();
                weave::spawn(move || (0..PER_PRODUCER).for_each(|i| tx.send(i).unwrap()))
            })
            .collect();
        drop(tx);
        let n = rx.iter().count() as u64;
        let t = start.elapsed();
        producers.into_iter().for_each(|p| p.join().unwrap());
        assert_eq!(n, BATCH);
        t
    })
}

fn may_producers() -> Duration {
    may_one_worker();
    may_spawn(|| {
        let (tx, rx) = may::sync::mpsc::channel::<u64>();
        let start = Instant::now();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tx = tx.clone();
                may_spawn(move || (0..PER_PRODUCER).for_each(|i| tx.send(i).unwrap()))
            })
            .collect();
        drop(tx);
        let mut n = 0;
        while rx.recv().is_ok() {
            n += 1;
        }
        let t = start.elapsed();
        producers.into_iter().for_each(|p| p.join().unwrap());
        assert_eq!(n, BATCH);
        t
    })
    .join()
    .unwrap()
}

fn tokio_producers(rt: &tokio::runtime::Runtime) -> Duration {
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let start = Instant::now();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..PER_PRODUCER {
                        tx.send(i).unwrap();
                        if i % 64 == 0 {
                            // Producers that never yield would not share the
                            // workers with the receiver.
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        let t = start.elapsed();
        for p in producers {
            p.await.unwrap();
        }
        assert_eq!(n, BATCH);
        t
    })
}

fn crossbeam_producers() -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let tx = tx.clone();
            thread::spawn(move || (0..PER_PRODUCER).for_each(|i| tx.send(i).unwrap()))
        })
        .collect();
    drop(tx);
    let n = rx.iter().count() as u64;
    let t = start.elapsed();
    producers.into_iter().for_each(|p| p.join().unwrap());
    assert_eq!(n, BATCH);
    t
}

fn four_producers(c: &mut Criterion) {
    let weave1 = weave_rt(1);
    let weave2 = weave_rt(2);
    let tokio_mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("channel_4_producers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("weave_1w", |b| {
        b.iter_custom(|n| batches(n, || weave_producers(&weave1)))
    });
    g.bench_function("weave_2w", |b| {
        b.iter_custom(|n| batches(n, || weave_producers(&weave2)))
    });
    g.bench_function("may_1w", |b| b.iter_custom(|n| batches(n, may_producers)));
    g.bench_function("tokio_2w", |b| {
        b.iter_custom(|n| batches(n, || tokio_producers(&tokio_mt)))
    });
    g.bench_function("crossbeam_threads", |b| {
        b.iter_custom(|n| batches(n, crossbeam_producers))
    });
    g.finish();
}

fn main() {
    let mut c = config();
    ping_pong(&mut c);
    four_producers(&mut c);
    c.final_summary();
}
