//! Helpers shared by the control-flow tests (`tests/control.rs`,
//! `tests/select.rs`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::fiber::Cancelled;
use weave::net::{TcpListener, TcpStream};

pub fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// Counts its drops: proves a destructor ran during an unwind.
pub struct DropCount(pub Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn assert_cancelled<T: std::fmt::Debug>(r: std::thread::Result<T>) {
    match r {
        Ok(v) => panic!("fiber finished with {v:?}, expected a cancellation"),
        Err(p) => assert!(
            p.is::<Cancelled>(),
            "payload is not Cancelled: {:?}",
            p.downcast_ref::<&str>()
        ),
    }
}

/// Waits (bounded) until `cond` holds, parking in between.
pub fn wait_for(mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "condition not reached in 20 s");
        weave::sleep(Duration::from_millis(1));
    }
}

/// Spawns `f` and returns once it has started (on one worker it has then
/// also reached its first park: it runs until it parks).
pub fn spawn_started<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> weave::JoinHandle<T> {
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = weave::spawn(move || {
        s.store(true, Ordering::SeqCst);
        f()
    });
    wait_for(|| started.load(Ordering::SeqCst));
    h
}

/// A connected pair: (accepted, client).
pub fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s, c)
}
