//! The connection pool: reuse, bounds, waiting and timeouts, dead and
//! expired connections, counters, use from fibers on every worker and from
//! plain threads.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weave::net::TcpListener;
use weave::pool::{PeerStats, Pool};

fn rt() -> weave::Runtime {
    weave::Runtime::builder().workers(2).build().unwrap()
}

/// An echo server on a fiber: echoes 4-byte messages; a message `"bye!"`
/// makes it close that connection. Counts accepted connections.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    weave::spawn(move || loop {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        acc.fetch_add(1, Ordering::SeqCst);
        weave::spawn(move || -> io::Result<()> {
            let mut buf = [0u8; 4];
            loop {
                conn.read_exact(&mut buf)?;
                if &buf == b"bye!" {
                    return Ok(());
                }
                conn.write_all(&buf)?;
            }
        });
    });
    (addr, accepted)
}

fn ping(c: &mut (impl Read + Write)) -> io::Result<()> {
    c.write_all(b"ping")?;
    let mut back = [0u8; 4];
    c.read_exact(&mut back)?;
    assert_eq!(&back, b"ping");
    Ok(())
}

#[test]
fn smoke_reuse() {
    rt().block_on(|| {
        let (addr, accepted) = echo_server();
        let pool = Pool::new();
        for i in 0..10 {
            let mut c = pool.get(addr).unwrap();
            assert_eq!(c.is_reused(), i > 0);
            assert_eq!(*c.key(), addr);
            ping(&mut *c).unwrap();
            c.done();
        }
        let s = pool.stats(&addr).unwrap();
        assert_eq!(
            s,
            PeerStats {
                opened: 1,
                reused: 9,
                open: 1,
                idle: 1,
                ..PeerStats::default()
            }
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn bounded_open_and_waiters_served() {
    rt().block_on(|| {
        let (addr, accepted) = echo_server();
        let pool = Pool::builder()
            .max_open(4)
            .max_idle(4)
            .wait_timeout(Duration::from_secs(30))
            .build();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let fibers: Vec<_> = (0..64)
            .map(|_| {
                let (pool, inside, most) = (pool.clone(), inside.clone(), most.clone());
                weave::spawn(move || {
                    for _ in 0..5 {
                        let mut c = pool.get(addr).unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        ping(&mut *c).unwrap();
                        c.done();
                        weave::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for f in fibers {
            f.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 4);
        let s = pool.stats(&addr).unwrap();
        assert!(s.opened <= 4, "{s:?}");
        assert_eq!(s.opened + s.reused, 64 * 5);
        assert!(s.waits > 0, "64 fibers on 4 connections must wait: {s:?}");
        assert_eq!((s.timeouts, s.discarded), (0, 0));
        assert_eq!(accepted.load(Ordering::SeqCst) as u64, s.opened);
    });
}

#[test]
fn wait_times_out_when_all_are_out() {
    rt().block_on(|| {
        let (addr, _) = echo_server();
        let pool = Pool::builder()
            .max_open(1)
            .wait_timeout(Duration::from_millis(20))
            .build();
        let held = pool.get(addr).unwrap();
        let p2 = pool.clone();
        let e = weave::spawn(move || p2.get(addr).map(drop))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(held);
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.opened, s.waits, s.timeouts, s.idle), (1, 1, 1, 1));
    });
}

#[test]
fn returned_connection_goes_to_a_waiter() {
    rt().block_on(|| {
        let (addr, accepted) = echo_server();
        let pool = Pool::builder()
            .max_open(1)
            .wait_timeout(Duration::from_secs(30))
            .build();
        let held = pool.get(addr).unwrap();
        let p2 = pool.clone();
        let waiter = weave::spawn(move || {
            let mut c = p2.get(addr).unwrap();
            ping(&mut *c).unwrap();
            c.done();
            c.is_reused()
        });
        // Return the connection only once the other fiber is waiting.
        while pool.stats(&addr).unwrap().waits == 0 {
            weave::yield_now();
        }
        drop(held);
        assert!(waiter.join().unwrap());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn closed_by_peer_is_not_handed_out() {
    rt().block_on(|| {
        let (addr, accepted) = echo_server();
        let pool = Pool::new();
        {
            let mut c = pool.get(addr).unwrap();
            ping(&mut *c).unwrap();
            c.done();
            c.write_all(b"bye!").unwrap();
            // Wait (on a second handle, so the guard sees no error) until
            // the server's close has arrived.
            let probe = c.try_clone().unwrap();
            assert_eq!(probe.peek(&mut [0u8; 1]).unwrap(), 0);
            c.done(); // claimed complete: the checkout must still notice
        } // returned: looks fine to the guard
        assert_eq!(pool.stats(&addr).unwrap().idle, 1);
        let mut c = pool.get(addr).unwrap();
        assert!(!c.is_reused());
        ping(&mut *c).unwrap();
        c.done();
        drop(c);
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.opened, s.reused, s.discarded, s.open), (2, 0, 1, 1));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn stray_bytes_make_a_connection_unusable() {
    rt().block_on(|| {
        let (addr, _) = echo_server();
        let pool = Pool::new();
        {
            let mut c = pool.get(addr).unwrap();
            // A request whose reply is never read.
            c.write_all(b"ping").unwrap();
            let probe = c.try_clone().unwrap();
            assert!(probe.peek(&mut [0u8; 4]).unwrap() > 0);
        }
        let c = pool.get(addr).unwrap();
        assert!(!c.is_reused());
        assert_eq!(pool.stats(&addr).unwrap().discarded, 1);
    });
}

#[test]
fn errors_and_discard_close_instead_of_returning() {
    rt().block_on(|| {
        let (addr, _) = echo_server();
        let pool = Pool::new();
        {
            let mut c = pool.get(addr).unwrap();
            c.write_all(b"bye!").unwrap();
            // End of file through the guard marks it broken.
            assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
            assert!(c.is_broken());
        }
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.open, s.idle, s.discarded), (0, 0, 1));

        let c = pool.get(addr).unwrap();
        c.discard();
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.opened, s.open, s.idle, s.discarded), (2, 0, 0, 2));

        let mut c = pool.get(addr).unwrap();
        c.mark_broken();
        drop(c);
        assert_eq!(pool.stats(&addr).unwrap().discarded, 3);
    });
}

#[test]
fn expired_idle_connections_are_closed() {
    rt().block_on(|| {
        let (addr, _) = echo_server();
        let pool = Pool::builder()
            .idle_timeout(Duration::from_millis(30))
            .build();
        drop(pool.get(addr).unwrap());
        weave::sleep(Duration::from_millis(60));
        let c = pool.get(addr).unwrap();
        assert!(!c.is_reused());
        drop(c);
        assert_eq!(pool.stats(&addr).unwrap().discarded, 1);

        // And the sweep closes them without a `get`.
        let (addr2, _) = echo_server();
        drop(pool.get(addr2).unwrap());
        assert_eq!(pool.purge_idle(), 0);
        weave::sleep(Duration::from_millis(60));
        assert_eq!(pool.purge_idle(), 2);
        for a in [addr, addr2] {
            let s = pool.stats(&a).unwrap();
            assert_eq!((s.open, s.idle), (0, 0), "{a}: {s:?}");
        }
    });
}

#[test]
fn refused_connect_frees_its_slot() {
    rt().block_on(|| {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = Pool::builder().max_open(1).build();
        for _ in 0..3 {
            assert!(pool.get(addr).is_err());
        }
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.opened, s.open, s.waits), (0, 0, 0));
    });
}

#[test]
fn removed_peer_closes_its_connections() {
    rt().block_on(|| {
        let (addr, _) = echo_server();
        let pool = Pool::new();
        let out = pool.get(addr).unwrap();
        drop(pool.get(addr).unwrap());
        assert!(pool.remove(&addr));
        assert!(pool.stats(&addr).is_none());
        drop(out); // closed, not returned to the forgotten peer
        let c = pool.get(addr).unwrap();
        assert!(!c.is_reused());
        assert_eq!(pool.stats(&addr).unwrap().opened, 1);
    });
}

#[test]
fn stress_many_fibers_many_peers() {
    rt().block_on(|| {
        let servers: Vec<_> = (0..8).map(|_| echo_server()).collect();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.0).collect();
        let pool = Pool::builder()
            .max_open(8)
            .max_idle(8)
            .wait_timeout(Duration::from_secs(30))
            .build();
        let fibers: Vec<_> = (0..256)
            .map(|i| {
                let (pool, addrs) = (pool.clone(), addrs.clone());
                weave::spawn(move || {
                    for j in 0..20 {
                        let addr = addrs[(i + j) % addrs.len()];
                        let mut c = pool.get(addr).unwrap();
                        ping(&mut *c).unwrap();
                        c.done();
                    }
                })
            })
            .collect();
        for f in fibers {
            f.join().unwrap();
        }
        let mut total = 0;
        for (addr, s) in pool.all_stats() {
            assert!(
                s.opened <= 8 && s.open <= 8 && s.idle == s.open,
                "{addr}: {s:?}"
            );
            assert_eq!((s.discarded, s.timeouts), (0, 0));
            total += s.opened + s.reused;
        }
        assert_eq!(total, 256 * 20);
    });
}

#[test]
fn works_from_plain_threads() {
    // The server runs on a runtime; the clients are OS threads, where the
    // pool's waits block the thread.
    let rt = rt();
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = rt.spawn(move || {
        tx.send(echo_server().0).unwrap();
        weave::sleep(Duration::from_secs(3600));
    });
    let addr = rx.recv().unwrap();
    let pool: Pool = Pool::builder()
        .max_open(2)
        .wait_timeout(Duration::from_secs(30))
        .build();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let mut c = pool.get(addr).unwrap();
                    ping(&mut *c).unwrap();
                    c.done();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats(&addr).unwrap();
    assert!(s.opened <= 2, "{s:?}");
    assert_eq!(s.opened + s.reused, 120);
    // A guard is a plain value: it can outlive the thread that took it.
    let c: weave::pool::Pooled<SocketAddr> = pool.get(addr).unwrap();
    std::thread::spawn(move || drop(c)).join().unwrap();
    assert_eq!(pool.stats(&addr).unwrap().idle, s.idle);
}

/// An echo server that holds each reply until the test releases one (a
/// slow backend): a request abandoned mid-exchange still has its reply on
/// the way when the connection would be handed out again.
fn gated_echo_server() -> (SocketAddr, weave::sync::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, gate) = weave::sync::channel::<()>();
    let gate = Arc::new(weave::sync::Mutex::new(gate));
    weave::spawn(move || loop {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let gate = gate.clone();
        weave::spawn(move || -> io::Result<()> {
            let mut buf = [0u8; 4];
            loop {
                conn.read_exact(&mut buf)?;
                if gate.lock().unwrap().recv().is_err() {
                    return Ok(());
                }
                conn.write_all(&buf)?;
            }
        });
    });
    (addr, release)
}

/// After an exchange abandoned by `abandon`, the next checkout must not get
/// that connection: it would read the abandoned request's reply.
fn next_caller_reads_its_own_reply(abandon: impl FnOnce(&Pool, SocketAddr) + Send + 'static) {
    rt().block_on(move || {
        let (addr, release) = gated_echo_server();
        let pool = Pool::new();
        abandon(&pool, addr);
        let mut c = pool.get(addr).unwrap();
        assert!(
            !c.is_reused(),
            "a connection left mid-exchange was handed out"
        );
        c.write_all(b"mine").unwrap();
        // Release every reply the backend holds.
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"mine");
        c.done();
        drop(c);
        let s = pool.stats(&addr).unwrap();
        assert_eq!((s.discarded, s.idle), (1, 1), "{s:?}");
    });
}

#[test]
fn early_return_mid_exchange_is_not_reused() {
    next_caller_reads_its_own_reply(|pool, addr| {
        let mut c = pool.get(addr).unwrap();
        c.write_all(b"lost").unwrap();
        // An early return (say, `?` on an unrelated error): no reply read.
    });
}

#[test]
fn panic_mid_exchange_is_not_reused() {
    next_caller_reads_its_own_reply(|pool, addr| {
        let pool = pool.clone();
        let h = weave::spawn(move || {
            let mut c = pool.get(addr).unwrap();
            c.write_all(b"lost").unwrap();
            panic!("the handler failed between request and reply");
        });
        assert!(h.join().is_err());
    });
}

#[test]
fn timeout_mid_exchange_is_not_reused() {
    next_caller_reads_its_own_reply(|pool, addr| {
        let pool = pool.clone();
        // A scoped deadline unwinds out of the read, dropping the guard on
        // the way: no error was seen through it.
        let r = weave::time::timeout(Duration::from_millis(20), move || {
            let mut c = pool.get(addr).unwrap();
            c.write_all(b"lost").unwrap();
            let mut b = [0u8; 4];
            let _ = c.read_exact(&mut b);
            c.done();
        });
        assert!(
            r.is_err(),
            "the backend holds the reply: the deadline passes"
        );
    });
}

#[test]
fn direct_access_without_done_is_not_reused() {
    next_caller_reads_its_own_reply(|pool, addr| {
        let c = pool.get(addr).unwrap();
        // Writing on the connection itself, bypassing the guard's `Write`.
        (&*c).write_all(b"lost").unwrap();
    });
}
