//! The connection pool under contention, against the obvious baseline.
//!
//! ```text
//! cargo bench -p weave-bench --bench pool
//! ```
//!
//! - `cycle/*`: 256 fibers spread over every worker of a runtime (one per
//!   core) check a connection out and return it, round-robin over 1, 16 or
//!   200 peers (loopback listeners; the connections are real TCP
//!   sockets, opened during warm-up). Time per get/return cycle, all fibers
//!   together. `weave_pool` is [`weave::pool::Pool`] (which also checks
//!   each idle connection before handing it out: the reactor's readiness
//!   word, or a `poll(2)` the first time);
//!   `mutex_hashmap` is a `std::sync::Mutex<HashMap<SocketAddr,
//!   Vec<TcpStream>>>` that pops and pushes, with no bounds, no waiting and
//!   no liveness check.
//! - `lookup/*`: the peer table alone, one thread: a read-locked binary
//!   search of a sorted vector against a read-locked `HashMap` (std's
//!   SipHash), for 1, 16 and 200 `SocketAddr` keys. This is how the pool's
//!   table was chosen; the numbers are in the `weave::pool` docs.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use weave::net::TcpStream;
use weave::pool::Pool;

const FIBERS: u64 = 256;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args()
}

/// `n` loopback listeners; one thread accepts on all of them and keeps
/// the accepted sockets open until the returned guard drops.
fn listeners(n: usize) -> (Acceptor, Vec<SocketAddr>) {
    let ls: Vec<_> = (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !s.load(Ordering::Relaxed) {
            let mut any = false;
            for l in &ls {
                while let Ok((c, _)) = l.accept() {
                    held.push(c);
                    any = true;
                }
            }
            if !any {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    (
        Acceptor {
            stop,
            thread: Some(thread),
        },
        addrs,
    )
}

/// Stops the accepting thread (closing what it accepted) on drop.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `per_fiber` cycles on each of 256 fibers; returns the elapsed time.
fn run_fibers<F>(rt: &weave::Runtime, iters: u64, cycle: F) -> Duration
where
    F: Fn(u64) + Send + Sync + 'static,
{
    let per_fiber = iters.div_ceil(FIBERS).max(1);
    let cycle = Arc::new(cycle);
    rt.block_on(move || {
        let start = Instant::now();
        let hs: Vec<_> = (0..FIBERS)
            .map(|f| {
                let cycle = cycle.clone();
                weave::spawn(move || {
                    for i in 0..per_fiber {
                        cycle(f * 7919 + i);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // Scale to the requested count (rounding up gave some fibers more).
        start
            .elapsed()
            .mul_f64(iters as f64 / (per_fiber * FIBERS) as f64)
    })
}

type Baseline = Mutex<HashMap<SocketAddr, Vec<TcpStream>>>;

fn baseline_cycle(map: &Baseline, addr: SocketAddr) {
    let got = map
        .lock()
        .unwrap()
        .get_mut(&addr)
        .and_then(|v: &mut Vec<TcpStream>| v.pop());
    let conn = match got {
        Some(c) => c,
        None => TcpStream::connect(addr).expect("connect"),
    };
    black_box(&conn);
    map.lock().unwrap().entry(addr).or_default().push(conn);
}

fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle");
    let rt = weave::Runtime::new().expect("runtime");
    for peers in [1usize, 16, 200] {
        let pool: Pool = Pool::builder()
            .max_open(256)
            .max_idle(256)
            .wait_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(30))
            .build();
        let (acceptor, addrs) = listeners(peers);
        let addrs = Arc::new(addrs);
        let nocheck: Pool = Pool::builder()
            .max_open(256)
            .max_idle(256)
            .wait_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(30))
            .check_after(Duration::from_secs(1))
            .build();
        let (p, a) = (nocheck.clone(), addrs.clone());
        g.bench_function(BenchmarkId::new("weave_pool_check_after_1s", peers), |b| {
            b.iter_custom(|iters| {
                let (p, a) = (p.clone(), a.clone());
                run_fibers(&rt, iters, move |i| {
                    let mut conn = p.get(a[i as usize % a.len()]).expect("get");
                    black_box(&*conn);
                    conn.done();
                })
            })
        });
        drop(nocheck);
        drop(acceptor);

        let (acceptor, addrs) = listeners(peers);
        let addrs = Arc::new(addrs);
        let (p, a) = (pool.clone(), addrs.clone());
        g.bench_function(BenchmarkId::new("weave_pool", peers), |b| {
            b.iter_custom(|iters| {
                let (p, a) = (p.clone(), a.clone());
                run_fibers(&rt, iters, move |i| {
                    let mut conn = p.get(a[i as usize % a.len()]).expect("get");
                    black_box(&*conn);
                    conn.done();
                })
            })
        });
        drop(pool);
        drop(acceptor);

        let (_acceptor, addrs) = listeners(peers);
        let addrs = Arc::new(addrs);
        let map: Arc<Baseline> = Arc::new(Mutex::new(HashMap::new()));
        let (m, a) = (map.clone(), addrs.clone());
        g.bench_function(BenchmarkId::new("mutex_hashmap", peers), |b| {
            b.iter_custom(|iters| {
                let (m, a) = (m.clone(), a.clone());
                run_fibers(&rt, iters, move |i| {
                    baseline_cycle(&m, a[i as usize % a.len()]);
                })
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for peers in [1usize, 16, 200] {
        let addrs: Vec<SocketAddr> = (0..peers)
            .map(|i| ([10, 0, (i / 250) as u8, (i % 250) as u8], 11211).into())
            .collect();
        let mut sorted: Vec<(SocketAddr, Arc<u64>)> =
            addrs.iter().map(|&a| (a, Arc::new(0))).collect();
        sorted.sort_by_key(|x| x.0);
        let sorted = RwLock::new(sorted);
        let map: RwLock<HashMap<SocketAddr, Arc<u64>>> =
            RwLock::new(addrs.iter().map(|&a| (a, Arc::new(0))).collect());

        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("sorted_vec", peers), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = &addrs[i % addrs.len()];
                let v = sorted.read().unwrap();
                let idx = v.binary_search_by(|(k, _)| k.cmp(key)).unwrap();
                black_box(v[idx].1.clone())
            })
        });
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("hashmap", peers), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = &addrs[i % addrs.len()];
                let m = map.read().unwrap();
                black_box(m[key].clone())
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = config();
    lookup(&mut c);
    cycle(&mut c);
    c.final_summary();
}
