//! A million fibers at once: each parks in a `weave::sync` channel receive,
//! then every sender sends and every fiber is joined with its result.
//! Prints the time of each phase and what the process holds while they are
//! all parked (resident memory, heap, page tables, mappings).
//!
//! ```text
//! cargo run --release --example million -- --fibers 1000000 --workers 2
//! ```
//!
//! The figures in `docs/scale.md` come from this program.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

/// Spawn N fibers parked in channel receives, then wake and join them all.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of fibers alive at once.
    #[arg(long, default_value_t = 1_000_000)]
    fibers: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Stack size of each fiber, in bytes (address space; only touched pages
    /// are resident).
    #[arg(long, default_value_t = weave::runtime::DEFAULT_STACK_SIZE)]
    stack_size: usize,
    /// Rounds to run in one process (the first one maps the stacks, later
    /// ones reuse them).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// glibc's `M_TOP_PAD` in MiB: how much a new heap of a worker
    /// thread's arena is made writable up front. With glibc's default such
    /// a heap grows one `mprotect` call per 4 KiB page (about 180,000
    /// calls for a million fibers; docs/scale.md). 0 leaves glibc's
    /// default.
    #[arg(long, default_value_t = 64)]
    malloc_top_pad: usize,
    /// glibc's `M_MXFAST` in bytes: allocations up to this size are freed
    /// into a fastbin, without the arena's lock, also from another thread.
    /// At 160 (glibc's maximum) this test's channels, which the fibers free
    /// on the other worker than the one that made them, qualify; with
    /// glibc's default (128) each such free waits for the lock the spawning
    /// worker holds (docs/scale.md). 0 leaves glibc's default.
    #[arg(long, default_value_t = 160)]
    malloc_mxfast: usize,
}

/// Fields of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

/// Bytes the allocator has handed out and not taken back.
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as u64
}

/// User and system CPU time of the whole process so far.
fn cpu_time() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is valid, and getrusage fills the one we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// The 1-minute load average: other processes competing for the cores.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Sets glibc's malloc parameter `param` to `value` unless `value` is 0
/// (glibc's default stays), saying so on stderr if glibc refuses.
fn set_malloc(name: &str, param: libc::c_int, value: usize) {
    if value == 0 {
        return;
    }
    let v = i32::try_from(value).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets an allocator parameter.
    if unsafe { libc::mallopt(param, v) } != 1 {
        eprintln!("million: mallopt({name}, {value}) was refused; glibc's default stays");
    }
}

pub(crate) fn main() {
    let args = Args::parse();
    let n = args.fibers;
    // Before any thread of ours exists.
    set_malloc("M_TOP_PAD", libc::M_TOP_PAD, args.malloc_top_pad << 20);
    set_malloc(
        "M_MXFAST (glibc allows 0..=160)",
        libc::M_MXFAST,
        args.malloc_mxfast,
    );
    let rt = weave::Runtime::builder()
        .workers(args.workers)
        .stack_size(args.stack_size)
        .build()
        .expect("runtime");
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap_or_default()
        .trim()
        .to_string();
    println!(
        "fibers={n} workers={} stack_size={} malloc_top_pad={} MiB malloc_mxfast={} vm.max_map_count={max_map_count} kernel={}",
        args.workers,
        args.stack_size,
        args.malloc_top_pad,
        args.malloc_mxfast,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    for round in 1..=args.rounds {
        let rss0 = status_kib("VmRSS:");
        let heap0 = heap_in_use();
        let pte0 = status_kib("VmPTE:");
        let maps0 = mappings();
        let (user0, sys0) = cpu_time();
        // How many fibers started on each worker (they park right after).
        let started: Arc<Vec<AtomicU64>> =
            Arc::new((0..args.workers).map(|_| AtomicU64::new(0)).collect());
        let started_total = {
            let started = started.clone();
            move || {
                started
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<u64>()
            }
        };
        let per_worker = started.clone();
        let report = rt.block_on(move || {
            let t0 = Instant::now();
            let mut senders = Vec::with_capacity(n as usize);
            let mut handles = Vec::with_capacity(n as usize);
            for i in 0..n {
                let (tx, rx) = weave::sync::channel::<u64>();
                let started = started.clone();
                let h = weave::fiber::Builder::new()
                    .spawn(move || {
                        let w = weave::runtime::current_worker().unwrap_or(0);
                        started[w].fetch_add(1, Ordering::Relaxed);
                        rx.recv().expect("sender dropped") ^ i
                    })
                    .unwrap_or_else(|e| panic!("spawn {i} of {n}: {e}"));
                senders.push(tx);
                handles.push(h);
                // Let this worker run its share of the new fibers too,
                // instead of leaving them all to be stolen.
                if i % 256 == 255 {
                    weave::yield_now();
                }
            }
            let spawned = t0.elapsed();
            // Each fiber counts itself just before it parks in `recv`.
            while started_total() < n {
                weave::yield_now();
            }
            let parked_at = t0.elapsed();
            let rss = status_kib("VmRSS:");
            let heap = heap_in_use();
            let pte = status_kib("VmPTE:");
            let maps = mappings();
            let t1 = Instant::now();
            for (i, tx) in senders.into_iter().enumerate() {
                tx.send(i as u64).expect("fiber gone");
                if i % 256 == 255 {
                    weave::yield_now();
                }
            }
            let mut joined = 0u64;
            for (i, h) in handles.into_iter().enumerate() {
                let v = h.join().unwrap_or_else(|_| panic!("fiber {i} failed"));
                assert_eq!(v, 0, "fiber {i} returned a wrong value");
                joined += 1;
            }
            let woke_joined = t1.elapsed();
            (
                spawned,
                parked_at,
                woke_joined,
                joined,
                rss,
                heap,
                pte,
                maps,
            )
        });
        let (spawned, parked_at, woke_joined, joined, rss, heap, pte, maps) = report;
        let total = parked_at + woke_joined;
        assert_eq!(joined, n);
        let (user1, sys1) = cpu_time();
        let (user, sys) = (user1 - user0, sys1 - sys0);
        let d_rss = rss.saturating_sub(rss0);
        let d_heap = heap.saturating_sub(heap0) / 1024;
        println!(
            "round {round}: spawn {:.3} s, all parked {:.3} s, send+join {:.3} s, total {:.3} s ({:.0} ns per fiber)",
            secs(spawned),
            secs(parked_at),
            secs(woke_joined),
            secs(total),
            total.as_nanos() as f64 / n as f64
        );
        println!(
            "  cpu: user {:.3} s, system {:.3} s ({:.0} ns per fiber; {:.0}% of the {} cores over the round; load average {})",
            secs(user),
            secs(sys),
            (user + sys).as_nanos() as f64 / n as f64,
            100.0 * secs(user + sys) / secs(total) / cores() as f64,
            cores(),
            loadavg()
        );
        println!(
            "  parked: resident +{:.0} MiB ({:.2} KiB per fiber), of which heap +{:.0} MiB ({} B per fiber) and stacks and the rest +{:.0} MiB ({:.2} KiB per fiber)",
            mib(d_rss),
            d_rss as f64 / n as f64,
            mib(d_heap),
            d_heap * 1024 / n,
            mib(d_rss.saturating_sub(d_heap)),
            d_rss.saturating_sub(d_heap) as f64 / n as f64,
        );
        println!(
            "  page tables +{:.0} MiB, mappings {maps0} -> {maps}, peak resident {:.0} MiB, virtual {:.1} GiB",
            mib(pte.saturating_sub(pte0)),
            mib(status_kib("VmHWM:")),
            mib(status_kib("VmSize:")) / 1024.0
        );
        let shares: Vec<String> = per_worker
            .iter()
            .map(|c| c.load(Ordering::Relaxed).to_string())
            .collect();
        println!(
            "  after join: resident {:.0} MiB; fibers run per worker: {}",
            mib(status_kib("VmRSS:")),
            shares.join(" / ")
        );
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
