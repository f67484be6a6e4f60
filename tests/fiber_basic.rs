//! Fibers: spawn, join, park/unpark, sleep, panics, fiber-locals.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

#[test]
fn smoke_spawn_join() {
    let rt = rt(2);
    let v = rt.block_on(|| {
        let hs: Vec<_> = (0..100u64).map(|i| weave::spawn(move || i * 2)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(v, 9900);
    assert_eq!(rt.live_fibers(), 0);
}

#[test]
fn join_from_plain_thread() {
    let rt = rt(2);
    let h = rt.spawn(|| {
        weave::sleep(Duration::from_millis(5));
        7
    });
    assert_eq!(h.join().unwrap(), 7);
}

#[test]
fn unpark_before_park_returns_at_once() {
    let rt = rt(1);
    rt.block_on(|| {
        weave::current().unpark();
        weave::park(); // consumes the token; must not hang
        weave::current().unpark();
        weave::current().unpark(); // tokens do not accumulate
        weave::park();
        let t = Instant::now();
        weave::park_timeout(Duration::from_millis(20));
        assert!(t.elapsed() >= Duration::from_millis(20));
    });
}

#[test]
fn panic_is_returned_and_others_unaffected() {
    let rt = rt(2);
    let h = rt.spawn(|| -> u32 { panic!("boom in fiber") });
    let err = h.join().unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"boom in fiber"));
    // The worker that ran it still works.
    let ok: Vec<_> = (0..50).map(|i| rt.spawn(move || i)).collect();
    for (i, h) in ok.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i);
    }
}

#[test]
fn names_and_ids() {
    let rt = rt(1);
    let (name, id, other) = rt.block_on(|| {
        let h = weave::fiber::Builder::new()
            .name("named")
            .spawn(|| {
                (
                    weave::current().name().map(String::from),
                    weave::current().id(),
                )
            })
            .unwrap();
        let fid = h.fiber().id();
        let (n, id) = h.join().unwrap();
        (n, id, fid)
    });
    assert_eq!(name.as_deref(), Some("named"));
    assert_eq!(id, other);
}

#[test]
fn a_shared_name_is_not_copied() {
    let rt = rt(2);
    let name: Arc<str> = Arc::from("shared name");
    let at = name.as_ptr() as usize;
    let seen: Vec<usize> = rt.block_on(move || {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                weave::fiber::Builder::new()
                    .name(name.clone())
                    .spawn(|| weave::current().name().map_or(0, |n| n.as_ptr() as usize))
                    .unwrap()
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(seen, vec![at; 4], "every fiber's name is the one Arc<str>");
}

#[test]
fn rc_across_parks_stays_on_thread() {
    let rt = rt(2);
    let hs: Vec<_> = (0..8)
        .map(|_| {
            rt.spawn(|| {
                let rc = Rc::new(Cell::new(0u32));
                let tid = std::thread::current().id();
                for _ in 0..200 {
                    weave::yield_now();
                    weave::sleep(Duration::from_micros(10));
                    rc.set(rc.get() + 1);
                    assert_eq!(std::thread::current().id(), tid);
                }
                rc.get()
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), 200);
    }
}

weave::fiber_local! {
    static COUNTER: Cell<u32> = Cell::new(0);
}

#[test]
fn fiber_locals_are_per_fiber() {
    let rt = rt(1);
    let sums: Vec<u32> = rt.block_on(|| {
        let hs: Vec<_> = (0..10u32)
            .map(|i| {
                weave::spawn(move || {
                    for _ in 0..=i {
                        COUNTER.with(|c| c.set(c.get() + 1));
                        weave::yield_now();
                    }
                    COUNTER.with(|c| c.get())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sums, (1..=10).collect::<Vec<_>>());
}

#[test]
fn dropping_runtime_cancels_parked_fibers_and_runs_destructors() {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let rt = rt(2);
    let mut hs = Vec::new();
    for _ in 0..10 {
        let d = drops.clone();
        hs.push(rt.spawn(move || {
            let _g = Guard(d);
            loop {
                weave::park();
            }
        }));
    }
    // Let them start and park.
    rt.block_on(|| weave::sleep(Duration::from_millis(20)));
    drop(rt);
    assert_eq!(drops.load(Ordering::SeqCst), 10);
    for h in hs {
        let e = h.join().unwrap_err();
        assert!(e.downcast_ref::<weave::fiber::Cancelled>().is_some());
    }
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A result nobody will join is dropped as soon as both the fiber and its
/// handle are done with it, even while a [`weave::Fiber`] handle keeps the
/// fiber's record (where the result sits) alive.
#[test]
fn an_unjoined_result_is_dropped_when_handle_and_fiber_are_gone() {
    use std::sync::atomic::AtomicBool;
    let rt = rt(2);
    rt.block_on(|| {
        // The handle goes first: the fiber's end drops the result.
        let dropped = Arc::new(AtomicBool::new(false));
        let (tx, rx) = weave::sync::channel::<()>();
        let flag = DropFlag(dropped.clone());
        let h = weave::spawn(move || {
            rx.recv().unwrap();
            flag
        });
        let fiber = h.fiber();
        drop(h);
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) && Instant::now() < deadline {
            weave::sleep(Duration::from_millis(1));
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "the result outlived its fiber"
        );
        drop(fiber);

        // The fiber goes first: dropping the handle drops the result.
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let h = weave::spawn(move || flag);
        let fiber = h.fiber();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h.is_finished() && Instant::now() < deadline {
            weave::sleep(Duration::from_millis(1));
        }
        assert!(h.is_finished());
        assert!(!dropped.load(Ordering::SeqCst), "dropped before the handle");
        drop(h);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the result outlived its handle"
        );
        drop(fiber);
    });
}
