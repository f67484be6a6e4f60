//! The migration rule, checked where the compiler is most aggressive: CI runs
//! this file in a release build (`cargo test --release --test
//! rt_thread_locals`, with the release profile's LTO). A fiber holding an
//! `Rc` reads a `thread_local!`'s address before and after 10,000 switches
//! under load and must always see its own thread's.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

thread_local! {
    static SLOT: Cell<u64> = const { Cell::new(0) };
}

#[inline(never)]
fn slot_addr() -> usize {
    SLOT.with(|s| s as *const Cell<u64> as usize)
}

fn check_pinned(rounds: usize, partner: Option<weave::Fiber>) -> (ThreadId, usize) {
    let rc = Rc::new(Cell::new(0usize));
    let tid = std::thread::current().id();
    // The address is taken once, before any switch; LLVM may keep it in a
    // register across the switches below.
    let addr = SLOT.with(|s| s as *const Cell<u64> as usize);
    for i in 0..rounds {
        match i % 3 {
            0 => weave::yield_now(),
            1 => weave::park_timeout(std::time::Duration::from_micros(20)),
            _ => {
                if let Some(p) = &partner {
                    p.unpark();
                }
                weave::yield_now();
            }
        }
        let rc2 = rc.clone();
        rc2.set(rc2.get() + 1);
        assert_eq!(std::thread::current().id(), tid, "fiber changed thread");
        assert_eq!(slot_addr(), addr, "thread-local address changed");
        SLOT.with(|s| assert_eq!(s as *const Cell<u64> as usize, addr));
    }
    (tid, rc.get())
}

#[test]
fn thread_local_addresses_hold_across_10k_switches_under_load() {
    let rt = weave::Runtime::builder().workers(4).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Load: fibers that keep every worker busy and yielding.
    let load: Vec<_> = (0..8)
        .map(|_| {
            let s = stop.clone();
            rt.spawn(move || {
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    weave::yield_now();
                }
                n
            })
        })
        .collect();
    let checkers: Vec<_> = (0..16)
        .map(|k| {
            let partner = load[k % load.len()].fiber();
            rt.spawn(move || check_pinned(10_000, Some(partner)))
        })
        .collect();
    for c in checkers {
        let (_, n) = c.join().expect("a checker saw a thread change");
        assert_eq!(n, 10_000);
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
}
