//! The counters `stats` reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Cache lines a [`Counter`] spreads over. Threads past this many share
/// lines (still exact, only no longer alone on their line).
const COUNTER_LINES: usize = 16;

/// A statistics counter that each thread adds to in a cache line of its
/// own, so workers serving requests at once do not pass one line back and
/// forth between their cores (two such counters on one line took about 1%
/// of kv's CPU with two workers at pipeline depth 1); reading it adds the
/// lines up. memcached keeps per-thread statistics for the same reason.
/// Relaxed throughout: these are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Counter {
    lines: [Line; COUNTER_LINES],
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.lines[line_of_thread()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The total: exact once the adds it should see have happened before
    /// (the lines are read one after another, so a read racing adds may
    /// count some of them and not others).
    pub fn get(&self) -> u64 {
        self.lines
            .iter()
            .fold(0u64, |t, l| t.wrapping_add(l.0.load(Ordering::Relaxed)))
    }

    /// Back to zero (`stats reset`).
    pub fn reset(&self) {
        for l in &self.lines {
            l.0.store(0, Ordering::Relaxed);
        }
    }
}

/// This thread's line in every [`Counter`]: threads take lines in the
/// order they first count something, round the [`COUNTER_LINES`].
fn line_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % COUNTER_LINES;
    }
    // A fiber that moved to another thread since it last counted just
    // adds to that thread's line: any line gives the right total.
    LINE.with(|l| *l)
}

/// Counters shown by `stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Keys requested by get-type commands.
    pub cmd_get: Counter,
    /// Storage commands.
    pub cmd_set: Counter,
    /// touch/gat commands (per key).
    pub cmd_touch: Counter,
    /// flush_all commands.
    pub cmd_flush: Counter,
    /// Keys found by get-type commands.
    pub get_hits: Counter,
    /// Keys not found by get-type commands.
    pub get_misses: Counter,
    /// Gets that found only an expired item.
    pub get_expired: Counter,
    /// Gets that found only a flushed item.
    pub get_flushed: Counter,
    /// Deletes that removed an item.
    pub delete_hits: Counter,
    /// Deletes of missing keys.
    pub delete_misses: Counter,
    /// Increments of present keys.
    pub incr_hits: Counter,
    /// Increments of missing keys.
    pub incr_misses: Counter,
    /// Decrements of present keys.
    pub decr_hits: Counter,
    /// Decrements of missing keys.
    pub decr_misses: Counter,
    /// CAS commands that stored.
    pub cas_hits: Counter,
    /// CAS commands on missing keys.
    pub cas_misses: Counter,
    /// CAS commands with a stale unique.
    pub cas_badval: Counter,
    /// Touches of present keys.
    pub touch_hits: Counter,
    /// Touches of missing keys.
    pub touch_misses: Counter,
    /// Items ever stored.
    pub total_items: Counter,
    /// Items evicted to make room.
    pub evictions: Counter,
    /// Expired or flushed items reclaimed.
    pub reclaimed: Counter,
    /// Items currently stored (expired ones included until reclaimed).
    pub curr_items: AtomicU64,
    /// Bytes the items' own allocations take, as the allocator rounds
    /// them (see [`super::arc_bytes`]).
    pub bytes: AtomicU64,
    /// Bytes the index takes (the shards' slot arrays, at capacity).
    pub index_bytes: AtomicU64,
    /// Bytes of items removed or replaced since free memory was last given
    /// back to the system (see [`super::Store::trim`]).
    pub freed: AtomicU64,
}

/// Shorthand for adding one.
pub(crate) fn bump(c: &Counter) {
    c.add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds from many threads at once all count, each thread keeps to one
    /// line and the threads spread over several, and a reset zeroes every
    /// line.
    #[test]
    fn a_counter_adds_up_its_threads_lines() {
        let c = Counter::default();
        let threads = 2 * COUNTER_LINES;
        std::thread::scope(|s| {
            for t in 0..threads {
                let c = &c;
                s.spawn(move || {
                    let line = line_of_thread();
                    for _ in 0..10_000 {
                        c.add(t as u64 + 1);
                    }
                    assert_eq!(line_of_thread(), line);
                });
            }
        });
        let want: u64 = (1..=threads as u64).map(|t| t * 10_000).sum();
        assert_eq!(c.get(), want);
        let used = c.lines.iter().filter(|l| l.0.load(Ordering::Relaxed) > 0);
        // Lines go round robin to threads as they first count, so 32 new
        // threads cannot all get one line (other tests' threads take
        // turns too, which is why this does not ask for all 16).
        assert!(used.count() > 1, "the threads share one line");
        c.reset();
        assert_eq!(c.get(), 0);
    }
}
