//! TCP through the reactor: many connections, full duplex, timeouts, closed
//! peers, descriptor hygiene.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use weave::net::{TcpListener, TcpStream};

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// Starts an echo server fiber; returns its address.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    weave::spawn(move || loop {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(_) => return,
        };
        weave::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    });
    addr
}

#[test]
fn smoke_echo_from_plain_thread_client() {
    let rt = rt(2);
    let addr = rt.block_on(echo_server);
    // The client is a plain thread: weave sockets block it like std.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"hello weave").unwrap();
    let mut back = [0u8; 11];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello weave");
}

#[test]
fn stress_1000_connections_echo_1mib_each() {
    const CONNS: usize = 1000;
    const BYTES: usize = 1 << 20;
    let rt = rt(2);
    let verified = Arc::new(AtomicUsize::new(0));
    let v = verified.clone();
    rt.block_on(move || {
        let addr = echo_server();
        let clients: Vec<_> = (0..CONNS)
            .map(|i| {
                let v = v.clone();
                weave::spawn(move || {
                    let conn = TcpStream::connect(addr).unwrap();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                    let data: Vec<u8> = (0..BYTES).map(|j| (j * 31 + i) as u8).collect();
                    // Writer and reader run as two fibers on one socket.
                    let w = conn.try_clone().unwrap();
                    let chunks: Vec<usize> = {
                        let mut left = BYTES;
                        let mut v = Vec::new();
                        while left > 0 {
                            let n = rng.gen_range(1..=left.min(64 * 1024));
                            v.push(n);
                            left -= n;
                        }
                        v
                    };
                    let d2 = data.clone();
                    let writer = weave::spawn(move || {
                        let mut w = w;
                        let mut off = 0;
                        for n in chunks {
                            w.write_all(&d2[off..off + n]).unwrap();
                            off += n;
                        }
                    });
                    let mut got = vec![0u8; BYTES];
                    (&conn).read_exact(&mut got).unwrap();
                    writer.join().unwrap();
                    assert!(got == data, "connection {i}: echoed bytes differ");
                    v.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    });
    assert_eq!(verified.load(Ordering::SeqCst), CONNS);
}

/// Four fibers read one socket at once, spread over two workers: one waits
/// in the socket's lock-free slot, the others in its locked list. Every byte
/// is read exactly once, and the hang-up at the end wakes every reader (a
/// reader whose wakeup was lost would never see it, and the watchdog
/// fails the round). Many rounds, each with bursts the readers park
/// between. The watchdog bounds each round, not the whole run: under
/// valgrind a round takes seconds, and a slow machine must not read as a
/// lost wakeup.
#[test]
fn stress_four_readers_share_one_socket_across_workers() {
    const ROUNDS: u64 = 30;
    const READERS: usize = 4;
    use std::sync::mpsc::RecvTimeoutError;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = rt(2);
        for round in 0..ROUNDS {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // The client: a plain thread writing bursts with pauses, so
            // the readers park and are woken many times.
            let client = std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round);
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                let (mut sent, mut sum) = (0u64, 0u64);
                for _ in 0..40 {
                    let n = rng.gen_range(1..4096);
                    let burst: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    c.write_all(&burst).unwrap();
                    sent += n as u64;
                    sum += burst.iter().map(|&b| b as u64).sum::<u64>();
                    std::thread::sleep(Duration::from_micros(rng.gen_range(0..500)));
                }
                (sent, sum)
            });
            let (read, sum) = rt.block_on(move || {
                let (conn, _) = listener.accept().unwrap();
                let conn = Arc::new(conn);
                let readers: Vec<_> = (0..READERS)
                    .map(|_| {
                        let conn = conn.clone();
                        weave::spawn(move || {
                            let (mut read, mut sum) = (0u64, 0u64);
                            let mut buf = [0u8; 97];
                            loop {
                                match (&*conn).read(&mut buf) {
                                    Ok(0) => return (read, sum),
                                    Ok(n) => {
                                        read += n as u64;
                                        sum += buf[..n].iter().map(|&b| b as u64).sum::<u64>();
                                        // Let the others take turns.
                                        weave::yield_now();
                                    }
                                    Err(e) => panic!("read failed: {e}"),
                                }
                            }
                        })
                    })
                    .collect();
                readers
                    .into_iter()
                    .map(|r| r.join().unwrap())
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            });
            let (sent, sent_sum) = client.join().unwrap();
            assert_eq!(
                (read, sum),
                (sent, sent_sum),
                "round {round}: bytes lost or read twice"
            );
            done_tx.send(round).unwrap();
        }
    });
    for round in 0..ROUNDS {
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => assert_eq!(r, round),
            Err(RecvTimeoutError::Timeout) => {
                panic!("round {round}: a reader never woke: a wakeup was lost")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("round {round} failed (see above)"),
        }
    }
}

#[test]
fn full_duplex_100_mib_on_one_socket() {
    const TOTAL: usize = 100 << 20;
    let rt = rt(2);
    rt.block_on(|| {
        let addr = echo_server();
        let conn = Arc::new(TcpStream::connect(addr).unwrap());
        let w = conn.clone();
        let writer = weave::spawn(move || {
            let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < TOTAL {
                let n = chunk.len().min(TOTAL - sent);
                (&*w).write_all(&chunk[..n]).unwrap();
                sent += n;
            }
        });
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        while got < TOTAL {
            let n = (&*conn).read(&mut buf).unwrap();
            assert!(n > 0, "early EOF after {got} bytes");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, (((got + k) % 65536) % 251) as u8);
            }
            got += n;
        }
        writer.join().unwrap();
        assert_eq!(got, TOTAL);
    });
}

#[test]
fn read_timeout_on_silent_peer_while_others_run() {
    let rt = rt(1);
    rt.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = weave::spawn(move || {
            let (c, _) = listener.accept().unwrap();
            weave::sleep(Duration::from_secs(2));
            drop(c);
        });
        let ticks = Arc::new(AtomicUsize::new(0));
        let t2 = ticks.clone();
        let ticker = weave::spawn(move || {
            for _ in 0..5 {
                weave::sleep(Duration::from_millis(5));
                t2.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let t = Instant::now();
        let err = c.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(50));
        // The single worker kept running the ticker while we waited.
        ticker.join().unwrap();
        assert_eq!(ticks.load(Ordering::SeqCst), 5);
    });
}

#[test]
fn write_to_closed_peer_is_an_error_not_sigpipe() {
    let rt = rt(2);
    rt.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(s);
        let mut c = c;
        let chunk = [7u8; 65536];
        let mut failed = None;
        for _ in 0..1000 {
            if let Err(e) = c.write_all(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("writes to a closed peer kept succeeding");
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "unexpected error {e:?}"
        );
    });
}

#[test]
fn connect_refused_and_timeout() {
    let rt = rt(1);
    rt.block_on(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        let e = TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    });
}

#[test]
fn udp_round_trip_and_timeout() {
    let rt = rt(2);
    rt.block_on(|| {
        let a = weave::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = weave::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let baddr = b.local_addr().unwrap();
        let server = weave::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..100 {
                let (n, from) = b.recv_from(&mut buf).unwrap();
                b.send_to(&buf[..n], from).unwrap();
            }
        });
        a.connect(baddr).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..100u32 {
            a.send(&i.to_le_bytes()).unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(a.recv(&mut buf).unwrap(), 4);
            assert_eq!(u32::from_le_bytes(buf), i);
        }
        server.join().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(
            a.recv(&mut [0u8; 4]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
    });
}

#[test]
fn unix_stream_pair_and_listener() {
    let rt = rt(1);
    rt.block_on(|| {
        let (a, b) = weave::net::UnixStream::pair().unwrap();
        let t = weave::spawn(move || {
            let mut b = b;
            let mut s = [0u8; 4];
            b.read_exact(&mut s).unwrap();
            b.write_all(&s).unwrap();
        });
        (&a).write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        (&a).read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        t.join().unwrap();
    });
}

/// `read_append` appends after what the buffer holds, reads at most its
/// spare capacity, grows a full buffer by 4 KiB, returns 0 at end of file,
/// and times out like `read`; on TCP and Unix streams alike.
#[test]
fn read_append_fills_spare_capacity_only() {
    let rt = rt(1);
    rt.block_on(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"0123456789").unwrap();
        let mut buf = Vec::with_capacity(8);
        buf.extend_from_slice(b"ab");
        // Six bytes of spare capacity: six of the ten arrive.
        let n = server.read_append(&mut buf).unwrap();
        assert!((1..=6).contains(&n), "read {n} into 6 spare bytes");
        while buf.len() < 8 {
            server.read_append(&mut buf).unwrap();
        }
        assert_eq!(buf, b"ab012345");
        assert_eq!(buf.capacity(), 8, "a buffer with room is not grown");
        // Full: it grows by 4 KiB, then takes the rest.
        let mut got = 0;
        while got < 4 {
            got += server.read_append(&mut buf).unwrap();
        }
        assert_eq!(buf, b"ab0123456789");
        assert!(buf.capacity() >= 8 + 4096);
        // Nothing comes: the read timeout applies.
        server
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let e = server.read_append(&mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        // End of file: 0, the buffer unchanged.
        drop(client);
        assert_eq!(server.read_append(&mut buf).unwrap(), 0);
        assert_eq!(buf, b"ab0123456789");

        let (a, mut b) = weave::net::UnixStream::pair().unwrap();
        b.write_all(b"unix").unwrap();
        let mut ubuf = Vec::new();
        let mut got = 0;
        while got < 4 {
            got += a.read_append(&mut ubuf).unwrap();
        }
        assert_eq!(ubuf, b"unix");
    });
}
