//! What a spawn, a channel and a socket's timeouts allocate, counted by a
//! global allocator that counts the allocations (and their bytes) of the
//! thread that asks it to.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// `Some((n, bytes))`: this thread is counting, and made `n` allocations
    /// of `bytes` in all so far.
    static COUNT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

fn note(bytes: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNT.try_with(|c| {
        if let Some((n, b)) = c.get() {
            c.set(Some((n + 1, b + bytes as u64)));
        }
    });
}

// SAFETY: every call is passed on to `System` unchanged; counting only
// touches a `const` thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Counts the allocations `f` makes on this thread, and their bytes.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, (u64, u64)) {
    COUNT.with(|c| c.set(Some((0, 0))));
    let r = f();
    let n = COUNT.with(|c| c.replace(None)).expect("counting");
    (r, n)
}

/// A joinable fiber is one allocation: its record, its closure until it
/// starts, and its join packet share it. The stack comes from the pool,
/// and the run queue and the pool's lists grow now and then, so a batch
/// of spawns counts a little more than one each (2,015 for 2,000 when
/// this was written; 6,015 when the closure and the packet were
/// allocations of their own).
#[test]
fn a_spawn_allocates_once() {
    const N: u64 = 2000;
    let rt = weave::Runtime::builder().workers(1).build().unwrap();
    let sum = rt.block_on(|| {
        // Warm the stack pool and the queues up.
        let warm: Vec<_> = (0..N).map(|i| weave::spawn(move || i)).collect();
        warm.into_iter().for_each(|h| drop(h.join()));
        let mut handles = Vec::with_capacity(N as usize);
        // One worker and no yield: none of them runs inside the count.
        let ((), (n, _)) = allocations(|| {
            for i in 0..N {
                handles.push(weave::spawn(move || i));
            }
        });
        assert!(
            n < N + N / 10,
            "{N} spawns made {n} allocations, more than one each"
        );
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(sum, N * (N - 1) / 2);
}

/// An unbounded `mpsc` channel nobody selects on is one allocation of at
/// most 144 bytes: the waiters only some channels need (queued receivers,
/// waiting senders, selectors) are made on first use (the channel was 280
/// bytes with them inline). A selector's first watch makes them, and the
/// channel still works.
#[test]
fn an_unbounded_channel_is_one_small_allocation() {
    let ((tx, rx), (n, bytes)) = allocations(weave::sync::channel::<u64>);
    assert_eq!(n, 1, "a channel made {n} allocations");
    assert!(bytes <= 144, "a channel takes {bytes} bytes");
    let rt = weave::Runtime::builder().workers(1).build().unwrap();
    let got = rt.block_on(move || {
        let sender = weave::spawn(move || {
            weave::sleep(std::time::Duration::from_millis(5));
            tx.send(7).unwrap();
        });
        let mut select = weave::Select::new();
        let i = select.recv(&rx);
        let ready = select.ready();
        assert_eq!(ready, i);
        let v = rx.recv().unwrap();
        sender.join().unwrap();
        v
    });
    assert_eq!(got, 7);
}

/// A socket keeps its read and write timeouts in itself: making one from a
/// std socket and setting both allocates nothing; its first clone moves
/// them into one allocation that the two share, and a later clone
/// allocates nothing for them.
#[test]
fn socket_timeouts_allocate_only_when_first_cloned() {
    use std::time::Duration;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let (s, (n, _)) = allocations(|| {
        let s = weave::net::TcpStream::from(server);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(6))).unwrap();
        s
    });
    assert_eq!(n, 0, "a socket and its timeouts allocated {n} times");
    let (clone, (n, bytes)) = allocations(|| s.try_clone().unwrap());
    assert_eq!(n, 1, "the first clone allocated {n} times ({bytes} bytes)");
    assert_eq!(clone.write_timeout().unwrap(), Some(Duration::from_secs(6)));
    // A clone of the clone shares the same allocation.
    let (_third, (n, _)) = allocations(|| clone.try_clone().unwrap());
    assert_eq!(n, 0, "a second clone allocated {n} times");
}
