//! Cross-worker wakeup latency: a fiber on one worker unparks a fiber on
//! another, and the woken fiber notes how long that took, from just before
//! `unpark` to its first instruction after `park` returned.
//!
//! Between two wakeups the waker waits a chosen gap, so the woken fiber's
//! worker has been idle that long: 0 is back-to-back ping-pong, a gap past
//! the workers' spin window means the woken worker was asleep in the
//! kernel. Prints the median, p90 and p99 per gap, and the process's CPU
//! time per wakeup, which shows what spinning costs under light load.
//!
//! ```text
//! cargo run --release --example wake_latency -- --wakeups 20000
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

/// Measure how long a fiber on one worker takes to wake a fiber on another.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Wakeups measured per gap.
    #[arg(long, default_value_t = 20_000)]
    wakeups: u64,
    /// Gaps between two wakeups, in microseconds (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,5,20,100,1000")]
    gaps_us: Vec<u64>,
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage fills the one we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Waits `gap` without parking, so the waker's own worker stays busy and
/// only the woken side goes idle.
fn spin_for(gap: Duration) {
    let until = Instant::now() + gap;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let args = Args::parse();
    let rt = weave::Runtime::builder()
        .workers(2)
        .build()
        .expect("runtime");
    println!(
        "gap_us  median_ns  p90_ns  p99_ns  cpu_ns_per_wakeup  (woken fiber on the other worker)"
    );
    for &gap_us in &args.gaps_us {
        let gap = Duration::from_micros(gap_us);
        let n = args.wakeups;
        let (mut lat, cpu) = rt.block_on(move || measure(n, gap));
        lat.sort_unstable();
        println!(
            "{gap_us:>6}  {:>9}  {:>6}  {:>6}  {:>17.0}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            cpu.as_nanos() as f64 / n as f64
        );
    }
}

/// Runs `n` wakeups `gap` apart; returns each one's latency in nanoseconds
/// and the process's CPU time over the run.
fn measure(n: u64, gap: Duration) -> (Vec<u64>, Duration) {
    let base = Instant::now();
    // The waker's timestamp (ns since `base`) and the woken side's count.
    let sent_at = Arc::new(AtomicU64::new(0));
    let woken = Arc::new(AtomicU64::new(0));
    let home = weave::runtime::current_worker();
    let (s, w) = (sent_at.clone(), woken.clone());
    let sleeper = weave::spawn(move || {
        let worker = weave::runtime::current_worker();
        let mut lat = Vec::with_capacity(n as usize);
        w.store(1, Ordering::Release); // started
        while lat.len() < n as usize {
            weave::park();
            let now = base.elapsed().as_nanos() as u64;
            let t0 = s.swap(0, Ordering::Acquire);
            if t0 != 0 {
                lat.push(now.saturating_sub(t0));
                w.fetch_add(1, Ordering::Release);
            }
        }
        (worker, lat)
    });
    // Busy until the sleeper has started: it can only start on the other
    // worker while this one is occupied.
    while woken.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let peer = sleeper.fiber();
    let cpu0 = cpu_time();
    for i in 0..n {
        spin_for(gap);
        sent_at.store(base.elapsed().as_nanos() as u64, Ordering::Release);
        peer.unpark();
        // Wait (busy) for the wakeup to be noted before the next one.
        while woken.load(Ordering::Acquire) < i + 2 {
            std::hint::spin_loop();
        }
    }
    let cpu = cpu_time() - cpu0;
    let (worker, lat) = sleeper.join().expect("sleeper");
    assert_ne!(worker, home, "both fibers ran on one worker");
    (lat, cpu)
}
