//! Many live fibers: none is dropped, and they do not spend a kernel memory
//! mapping each (stacks are carved from shared mappings with guard markers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// True on Linux 6.13+, where guard pages need no mapping of their own.
fn kernel_has_guard_markers() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 13) && std::env::var_os("WEAVE_STACK_GUARD").is_none()
}

fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Far more parked fibers than `vm.max_map_count / 2` (the old ceiling):
/// each one runs, parks in a channel receive, gets its value and is joined
/// with its result.
#[test]
fn stress_hundred_thousand_parked_fibers_all_join() {
    let n: u64 = if kernel_has_guard_markers() {
        100_000
    } else {
        10_000 // Two mappings per stack: stay well under the default limit.
    };
    // Small stacks for the many fibers; the fiber that spawns them keeps
    // the default: a spawn can reach crossbeam-epoch's flush, whose frames
    // take most of 32 KiB in a debug build.
    let rt = weave::Runtime::builder().workers(2).build().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let maps_before = count_maps();
    let (sum, maps_parked) = rt.block_on(move || {
        let mut senders = Vec::with_capacity(n as usize);
        let mut handles = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (tx, rx) = weave::sync::channel::<u64>();
            let started = started.clone();
            let h = weave::fiber::Builder::new()
                .stack_size(32 * 1024)
                .spawn(move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    rx.recv().unwrap() + i
                })
                .unwrap_or_else(|e| panic!("spawn {i} of {n} failed: {e}"));
            senders.push(tx);
            handles.push(h);
        }
        // Let every fiber start and park in its receive.
        while started.load(Ordering::Relaxed) < n as usize {
            weave::yield_now();
        }
        let maps_parked = count_maps();
        for (i, tx) in senders.into_iter().enumerate() {
            tx.send(i as u64).unwrap();
        }
        let sum: u64 = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join()
                    .unwrap_or_else(|_| panic!("fiber {i} of {n} did not finish"))
            })
            .sum();
        (sum, maps_parked)
    });
    assert_eq!(sum, n * (n - 1));
    assert_eq!(rt.live_fibers(), 0);
    if kernel_has_guard_markers() {
        assert!(
            maps_parked < maps_before + 1_000,
            "{n} parked fibers took {} mappings",
            maps_parked - maps_before
        );
    }
}
