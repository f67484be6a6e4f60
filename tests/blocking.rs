//! The blocking pool: blocking calls made from fibers run on pool threads
//! while the fibers park, so workers keep running everything else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::blocking::{spawn_blocking, unblock};
use weave::Runtime;

#[test]
fn hundred_blocking_calls_overlap_while_fibers_keep_running() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    // A fiber that only makes progress if its worker is free.
    let ticker = {
        let (stop, ticks) = (stop.clone(), ticks.clone());
        rt.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                weave::sleep(Duration::from_millis(1));
            }
        })
    };
    // Each job blocks its pool thread until all 100 jobs are blocked at
    // once and the ticker fiber has kept ticking meanwhile: run one after
    // another, or with the workers stuck, they would never be released (the
    // wait is bounded only to turn that hang into a failure).
    let arrived = Arc::new(AtomicU64::new(0));
    let ticks_before = ticks.load(Ordering::Relaxed);
    let sleepers: Vec<_> = (0..100)
        .map(|i| {
            let (arrived, ticks) = (arrived.clone(), ticks.clone());
            rt.spawn(move || {
                unblock(move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let end = Instant::now() + Duration::from_secs(60);
                    while arrived.load(Ordering::SeqCst) < 100
                        || ticks.load(Ordering::Relaxed) < ticks_before + 5
                    {
                        if Instant::now() > end {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Some(i)
                })
            })
        })
        .collect();
    let done: Vec<Option<u32>> = sleepers.into_iter().map(|s| s.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    assert!(
        done.iter().all(Option::is_some),
        "blocking jobs did not all run at once with the ticker going: {} of 100 arrived, {} ticks",
        arrived.load(Ordering::SeqCst),
        ticks.load(Ordering::Relaxed) - ticks_before
    );
    assert_eq!(done.into_iter().flatten().sum::<u32>(), (0..100).sum());
}

#[test]
fn panics_come_back_to_the_caller() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let caught = rt.block_on(|| {
        std::panic::catch_unwind(|| unblock(|| -> u32 { panic!("in the pool") })).unwrap_err()
    });
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"in the pool"));
    let h = spawn_blocking(|| -> u32 { panic!("again") });
    assert!(h.join().is_err());
    // The pool survives its jobs' panics.
    assert_eq!(spawn_blocking(|| 3).join().unwrap(), 3);
}

#[test]
fn unblock_on_a_plain_thread_runs_inline() {
    let me = std::thread::current().id();
    assert!(unblock(move || std::thread::current().id() == me));
}

#[test]
fn connect_by_host_name_resolves_off_the_worker() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    rt.block_on(|| {
        let listener = weave::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepter = weave::spawn(move || listener.accept().map(|(_, peer)| peer.ip()));
        // "localhost" needs a lookup (through the pool); the stream works.
        let s = weave::net::TcpStream::connect(("localhost", port))
            .or_else(|_| weave::net::TcpStream::connect(format!("127.0.0.1:{port}")))
            .unwrap();
        assert!(accepter.join().unwrap().unwrap().is_loopback());
        drop(s);
        // A name that cannot resolve fails with an error, not a panic.
        assert!(weave::net::TcpStream::connect("no-such-host.invalid:80").is_err());
    });
}

/// An address whose lookup blocks like a slow DNS server: it answers only
/// once the ticker has ticked five more times (bounded: if the lookup
/// stalled the ticker's worker, it fails instead of hanging).
struct SlowName(std::net::SocketAddr, Arc<AtomicU64>);

impl std::net::ToSocketAddrs for SlowName {
    type Iter = std::option::IntoIter<std::net::SocketAddr>;
    fn to_socket_addrs(&self) -> std::io::Result<Self::Iter> {
        let target = self.1.load(Ordering::Relaxed) + 5;
        let end = Instant::now() + Duration::from_secs(60);
        while self.1.load(Ordering::Relaxed) < target {
            if Instant::now() > end {
                return Err(std::io::Error::other(
                    "the ticker stopped during the lookup",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Some(self.0).into_iter())
    }
}

#[test]
fn a_slow_lookup_in_connect_does_not_stall_the_worker() {
    // One worker: if the lookup ran on it, the ticker could not tick.
    let rt = Runtime::builder().workers(1).build().unwrap();
    rt.block_on(|| {
        let listener = weave::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (stop, ticks) = (stop.clone(), ticks.clone());
            weave::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    weave::sleep(Duration::from_millis(5));
                }
            })
        };
        weave::yield_now();
        let stream = weave::net::TcpStream::connect(SlowName(addr, ticks.clone()));
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
        let stream = stream.expect("the worker was blocked during the lookup");
        assert_eq!(stream.peer_addr().unwrap(), addr);
    });
}
