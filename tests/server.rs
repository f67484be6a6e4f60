//! The server framework: graceful shutdown, panics, limits, idle timeouts.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use weave::server::{Conn, Server, Summary};

/// A line protocol: each request is a line; `sleep` waits 200 ms before the
/// reply (a request in progress); `panic` panics; anything else is echoed.
fn line_handler(conn: Conn) -> io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim_end() {
            "sleep" => {
                weave::sleep(Duration::from_millis(200));
                (&conn).write_all(b"slept\n")?;
            }
            "panic" => panic!("handler asked to panic"),
            other => (&conn).write_all(format!("{other}\n").as_bytes())?,
        }
    }
}

/// `builder` on an ephemeral loopback port, 2 workers, no signal handling.
fn build(builder: weave::server::Builder) -> Server {
    builder
        .bind("127.0.0.1:0")
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap()
}

fn start(
    builder: weave::server::Builder,
) -> (SocketAddr, weave::ServerHandle, thread::JoinHandle<Summary>) {
    let server = build(builder);
    let addr = server.local_addrs()[0];
    let handle = server.handle();
    let t = thread::spawn(move || server.serve(line_handler).unwrap());
    (addr, handle, t)
}

fn request(c: &mut BufReader<TcpStream>, line: &str) -> io::Result<String> {
    c.get_mut().write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    if c.read_line(&mut out)? == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(out.trim_end().to_string())
}

#[test]
fn smoke_serve_and_stop() {
    let (addr, handle, t) = start(Server::builder());
    let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(request(&mut c, "hello").unwrap(), "hello");
    drop(c);
    handle.stop();
    let s = t.join().unwrap();
    assert_eq!(s.counters.accepted, 1);
    assert_eq!(s.still_open, 0);
    assert!(s.counters.bytes_in >= 6 && s.counters.bytes_out >= 6);
    // The listener is gone.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn graceful_shutdown_finishes_requests_in_flight() {
    const CLIENTS: usize = 100;
    let (addr, handle, t) = start(Server::builder().shutdown_grace(Duration::from_secs(10)));
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let b = barrier.clone();
            thread::spawn(move || {
                let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
                assert_eq!(request(&mut c, "warm").unwrap(), "warm");
                c.get_mut().write_all(b"sleep\n").unwrap();
                b.wait(); // the request is on its way; now the server stops
                let mut reply = String::new();
                c.read_line(&mut reply).unwrap();
                assert_eq!(reply, "slept\n");
                // After its reply the connection is closed by the server.
                let mut rest = String::new();
                assert_eq!(c.read_line(&mut rest).unwrap(), 0);
            })
        })
        .collect();
    barrier.wait();
    // Let the requests reach their handlers before stopping.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.counters().bytes_in < (CLIENTS * 11) as u64 && Instant::now() < deadline {
        thread::yield_now();
    }
    handle.stop();
    for c in clients {
        c.join().unwrap();
    }
    let s = t.join().unwrap();
    assert_eq!(s.counters.accepted, CLIENTS as u64);
    assert_eq!(s.counters.closed, CLIENTS as u64);
    assert_eq!(s.cut_at_grace, 0);
    assert_eq!(s.still_open, 0);
}

#[test]
fn client_that_never_finishes_is_cut_at_grace() {
    let (addr, handle, t) = start(Server::builder().shutdown_grace(Duration::from_millis(300)));
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"half a req").unwrap(); // no newline: mid-request forever
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.counters().bytes_in < 10 && Instant::now() < deadline {
        thread::yield_now();
    }
    let stopped = Instant::now();
    handle.stop();
    let s = t.join().unwrap();
    assert!(stopped.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.cut_at_grace, 1);
    assert_eq!(s.still_open, 0);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn panicking_handler_only_drops_its_client() {
    const OTHERS: usize = 1000;
    let (addr, handle, t) = start(Server::builder());
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let ok = ok.clone();
            thread::spawn(move || {
                for i in 0..OTHERS / 8 {
                    let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
                    let msg = format!("client-{k}-{i}");
                    assert_eq!(request(&mut c, &msg).unwrap(), msg);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut bad = BufReader::new(TcpStream::connect(addr).unwrap());
    assert!(
        request(&mut bad, "panic").is_err(),
        "the panicking connection must close"
    );
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), OTHERS);
    handle.stop();
    let s = t.join().unwrap();
    assert_eq!(s.counters.panics, 1);
    assert_eq!(s.counters.accepted, OTHERS as u64 + 1);
}

#[test]
fn idle_timeout_closes_silent_connections_only() {
    // The busy client asks every 20 ms against a 2 s idle timeout, until
    // the server has closed the silent one (bounded by count).
    let (addr, handle, t) = start(Server::builder().idle_timeout(Duration::from_secs(2)));
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut busy = BufReader::new(TcpStream::connect(addr).unwrap());
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4];
    let closed = (0..3000).any(|_| {
        assert_eq!(request(&mut busy, "tick").unwrap(), "tick");
        thread::sleep(Duration::from_millis(20));
        match silent.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!("the silent client got {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    });
    assert!(closed, "the silent connection was never closed");
    assert_eq!(request(&mut busy, "still here").unwrap(), "still here");
    handle.stop();
    let s = t.join().unwrap();
    assert_eq!(s.counters.errors, 1, "one TimedOut handler error");
}

#[test]
fn max_connections_rejects_extras_and_keeps_existing() {
    let (addr, handle, t) = start(Server::builder().max_connections(2));
    let mut a = BufReader::new(TcpStream::connect(addr).unwrap());
    let mut b = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(request(&mut a, "a").unwrap(), "a");
    assert_eq!(request(&mut b, "b").unwrap(), "b");
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an over-limit connection is closed");
    assert_eq!(request(&mut a, "a2").unwrap(), "a2");
    drop(a);
    // Room again once one leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.counters().active > 1 && Instant::now() < deadline {
        thread::yield_now();
    }
    let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(request(&mut c, "c").unwrap(), "c");
    handle.stop();
    let s = t.join().unwrap();
    assert_eq!(s.counters.rejected, 1);
}

#[test]
fn unix_socket_server() {
    let path = std::env::temp_dir().join(format!("weave-server-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let server = Server::builder()
        .bind_unix(&path)
        .workers(1)
        .handle_signals(false)
        .build()
        .unwrap();
    let handle = server.handle();
    let t = thread::spawn(move || server.serve(line_handler).unwrap());
    let mut c = BufReader::new(std::os::unix::net::UnixStream::connect(&path).unwrap());
    c.get_mut().write_all(b"over unix\n").unwrap();
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "over unix\n");
    drop(c);
    handle.stop();
    assert_eq!(t.join().unwrap().counters.accepted, 1);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn port_held_by_another_listener_is_refused() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let err = Server::builder()
        .bind(addr.to_string())
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // Nor can a second weave server share a port the first one holds.
    let first = Server::builder()
        .bind("127.0.0.1:0")
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap();
    let taken = first.local_addrs()[0];
    let err = Server::builder()
        .bind(taken.to_string())
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
}

/// Waits (bounded) until `rt` counts `want` live fibers.
fn wait_for_live(rt: &weave::Handle, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.live_fibers() != want {
        assert!(
            Instant::now() < deadline,
            "live fibers stayed at {}, expected {want}",
            rt.live_fibers()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn connection_fibers_are_counted_live_until_their_clients_leave() {
    const CONNS: usize = 64;
    let server = build(Server::builder());
    let addr = server.local_addrs()[0];
    let handle = server.handle();
    let rt = server.runtime_handle();
    let t = thread::spawn(move || server.serve(line_handler).unwrap());
    for round in 0..3 {
        // Each answered client has its handler parked in a read.
        let mut clients: Vec<_> = (0..CONNS)
            .map(|i| {
                let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
                assert_eq!(
                    request(&mut c, &format!("r{round}c{i}")).unwrap(),
                    format!("r{round}c{i}")
                );
                c
            })
            .collect();
        let with_clients = rt.live_fibers();
        assert!(
            with_clients >= CONNS,
            "{CONNS} handlers running, {with_clients} fibers counted"
        );
        clients.clear();
        wait_for_live(&rt, with_clients - CONNS);
    }
    handle.stop();
    t.join().unwrap();
}
