//! Request mode: idle connections hold no fiber; each request runs on a
//! fiber from the pool with a pooled buffer, and per-connection state
//! survives between requests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use weave::server::{Next, Request, Server, Summary};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Per connection: how many lines it has answered.
#[derive(Default)]
struct Count(u64);

/// Line protocol: `quit` closes, `panic` panics, `wait` parks on a timer
/// inside the request, anything else is answered `<n> <line>` with `n` the
/// connection's line count. Handles every complete line in the buffer, and
/// reads more while a line is incomplete.
fn handler(req: &mut Request<'_, Count>, live: &AtomicUsize) -> io::Result<Next> {
    live.fetch_add(1, Ordering::SeqCst);
    let _live = Dec(live);
    let (conn, count, buf) = req.parts();
    assert!(buf.is_empty(), "a request starts with an empty buffer");
    let mut out = Vec::new();
    loop {
        let start = buf.len();
        buf.resize(start + 4096, 0);
        let n = (&*conn).read(&mut buf[start..])?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(Next::Close);
        }
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]).to_string();
            match line.as_str() {
                "quit" => return Ok(Next::Close),
                "panic" => panic!("asked to panic"),
                "wait" => weave::sleep(Duration::from_millis(5)),
                _ => {}
            }
            count.0 += 1;
            out.extend_from_slice(format!("{} {line}\n", count.0).as_bytes());
        }
        if buf.is_empty() {
            (&*conn).write_all(&out)?;
            return Ok(Next::Idle);
        }
    }
}

struct Dec<'a>(&'a AtomicUsize);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server on an ephemeral loopback port with `workers` workers and no
/// signal handling.
fn loopback(workers: usize) -> weave::server::Builder {
    Server::builder()
        .bind("127.0.0.1:0")
        .workers(workers)
        .handle_signals(false)
}

fn start(idle: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>, impl FnOnce() -> Summary) {
    let mut b = loopback(2);
    if let Some(d) = idle {
        b = b.idle_timeout(d);
    }
    let server = b.build().unwrap();
    let addr = server.local_addrs()[0];
    let (live, stop) = serve(server);
    (addr, live, stop)
}

/// Serves `server` in request mode with [`handler`] on a thread; returns
/// the count of running requests and what stops the server.
fn serve(server: Server) -> (Arc<AtomicUsize>, impl FnOnce() -> Summary) {
    let live = Arc::new(AtomicUsize::new(0));
    let l2 = live.clone();
    let stop = serve_with(server, |_| Count::default(), move |r| handler(r, &l2));
    (live, stop)
}

/// Serves `server` in request mode with `new_state` and `handler` on a
/// thread; returns what stops it and gives back its summary.
fn serve_with<S, N, H>(server: Server, new_state: N, handler: H) -> impl FnOnce() -> Summary
where
    S: Send + 'static,
    N: Fn(&weave::server::Conn) -> S + Send + Sync + 'static,
    H: Fn(&mut Request<'_, S>) -> io::Result<Next> + Send + Sync + 'static,
{
    let handle = server.handle();
    let t = thread::spawn(move || server.serve_requests(new_state, handler).unwrap());
    move || {
        handle.stop();
        t.join().expect("server thread")
    }
}

/// Once every answer has arrived every handler has returned (or is about
/// to): waits for the count of running requests to reach zero, which
/// means idle connections hold no fiber.
fn wait_until_no_request_runs(live: &AtomicUsize) {
    wait_until(
        30_000,
        || live.load(Ordering::SeqCst) == 0,
        || "requests still running with all clients idle".to_string(),
    );
}

/// Checks `done` every millisecond, at most `tries` times; fails with
/// `what()` if it never held.
fn wait_until(tries: u32, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let mut spins = 0;
    while !done() {
        spins += 1;
        assert!(spins < tries, "{}", what());
        thread::sleep(Duration::from_millis(1));
    }
}

/// `rounds` rounds over `conns` of client `t`: a line, and a second one
/// right behind it in its own write; both answers must come, in order
/// (one request or two may answer them).
fn back_to_back<S: Read + Write>(t: usize, conns: &mut [BufReader<S>], rounds: u64) {
    for round in 1..=rounds {
        for (i, c) in conns.iter_mut().enumerate() {
            c.get_mut()
                .write_all(format!("p{t}.{i}\n").as_bytes())
                .unwrap();
            c.get_mut()
                .write_all(format!("q{t}.{i}\n").as_bytes())
                .unwrap();
            let mut l = String::new();
            c.read_line(&mut l).unwrap();
            assert_eq!(l, format!("{} p{t}.{i}\n", 2 * round - 1));
            l.clear();
            c.read_line(&mut l).unwrap();
            assert_eq!(l, format!("{} q{t}.{i}\n", 2 * round));
        }
    }
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    BufReader::new(s)
}

fn ask(c: &mut BufReader<TcpStream>, line: &str) -> String {
    c.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut l = String::new();
    c.read_line(&mut l).unwrap();
    l
}

#[test]
fn smoke_state_survives_between_requests() {
    let (addr, _live, stop) = start(None);
    let mut c = connect(addr);
    for i in 1..=20 {
        assert_eq!(
            ask(&mut c, &format!("hello {i}")),
            format!("{i} hello {i}\n")
        );
    }
    // A request that parks inside (a timer) still answers.
    assert_eq!(ask(&mut c, "wait"), "21 wait\n");
    assert_eq!(ask(&mut c, "quit"), "");
    let s = stop();
    assert_eq!(s.counters.accepted, 1);
    assert_eq!(s.counters.closed, 1);
}

/// Many connections, many rounds, from several threads: every answer is
/// right (no request lost or run twice), and between rounds no request is
/// running: idle connections hold no fiber.
#[test]
fn stress_many_connections_many_rounds() {
    let (addr, live, stop) = start(None);
    let conns: Vec<_> = (0..200).map(|_| connect(addr)).collect();
    let per = conns.len() / 4;
    let mut groups: Vec<Vec<_>> = Vec::new();
    let mut it = conns.into_iter();
    for _ in 0..4 {
        groups.push(it.by_ref().take(per).collect());
    }
    for round in 1..=25u64 {
        let threads: Vec<_> = groups
            .drain(..)
            .map(|mut g| {
                thread::spawn(move || {
                    for (i, c) in g.iter_mut().enumerate() {
                        // Two lines in one write: answered together.
                        c.get_mut()
                            .write_all(format!("a{i}\nb{i}\n").as_bytes())
                            .unwrap();
                        let mut l = String::new();
                        c.read_line(&mut l).unwrap();
                        assert_eq!(l, format!("{} a{i}\n", 2 * round - 1));
                        l.clear();
                        c.read_line(&mut l).unwrap();
                        assert_eq!(l, format!("{} b{i}\n", 2 * round));
                    }
                    g
                })
            })
            .collect();
        groups = threads.into_iter().map(|t| t.join().unwrap()).collect();
    }
    wait_until_no_request_runs(&live);
    drop(groups);
    let s = stop();
    assert_eq!(s.counters.accepted, 200);
    assert_eq!(s.counters.errors + s.counters.panics, 0);
}

#[test]
fn a_panic_closes_only_its_connection() {
    let (addr, _live, stop) = start(None);
    let mut a = connect(addr);
    let mut b = connect(addr);
    assert_eq!(ask(&mut a, "x"), "1 x\n");
    a.get_mut().write_all(b"panic\n").unwrap();
    let mut rest = Vec::new();
    let _ = a.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(ask(&mut b, "y"), "1 y\n");
    let s = stop();
    assert_eq!(s.counters.panics, 1);
}

#[test]
fn idle_connections_close_after_the_idle_timeout_and_busy_ones_stay() {
    let (addr, _live, stop) = start(Some(Duration::from_millis(300)));
    let mut idle = connect(addr);
    let mut busy = connect(addr);
    assert_eq!(ask(&mut idle, "x"), "1 x\n");
    assert_eq!(ask(&mut busy, "y"), "1 y\n");
    // The busy one talks every 50 ms (never idle for the timeout) until the
    // idle one has been closed, and a while after.
    let t = thread::spawn(move || {
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).unwrap()
    });
    let mut i = 1;
    while !t.is_finished() || i < 20 {
        thread::sleep(Duration::from_millis(50));
        i += 1;
        assert_eq!(
            ask(&mut busy, "y"),
            format!("{i} y\n"),
            "busy connection closed"
        );
        assert!(i < 2_000, "the idle connection was never closed");
    }
    assert_eq!(
        t.join().unwrap(),
        0,
        "idle connection got data instead of a close"
    );
    let _ = stop();
}

#[test]
fn graceful_shutdown_closes_idle_connections() {
    let (addr, _live, stop) = start(None);
    let mut cs: Vec<_> = (0..50).map(|_| connect(addr)).collect();
    for c in &mut cs {
        assert_eq!(ask(c, "x"), "1 x\n");
    }
    let s = stop();
    assert_eq!(s.still_open, 0);
    assert_eq!(s.cut_at_grace, 0);
    for c in &mut cs {
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    }
}

/// The handover race: each client sends a line, and a second one right
/// behind it in its own write, so the second often lands just as the
/// first request's handler returns and its connection goes idle. A wakeup
/// lost there leaves the client waiting for its second answer (the read
/// times out and the test fails). Many rounds, from several threads.
#[test]
fn input_arriving_as_a_connection_goes_idle_is_never_lost() {
    let (addr, live, stop) = start(None);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut conns: Vec<_> = (0..25).map(|_| connect(addr)).collect();
                back_to_back(t, &mut conns, 150);
                conns
            })
        })
        .collect();
    let conns: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    wait_until_no_request_runs(&live);
    drop(conns);
    let s = stop();
    assert_eq!(s.counters.accepted, 100);
    assert_eq!(s.counters.errors + s.counters.panics, 0);
}

/// The same over a Unix socket: the read hook and the short-read rule work
/// for Unix streams too (requests answered, back-to-back input not lost,
/// idle connections hold no fiber).
#[test]
fn unix_socket_connections_idle_and_wake_like_tcp_ones() {
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("weave-req-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let server = Server::builder()
        .bind_unix(&path)
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap();
    let (live, stop) = serve(server);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            thread::spawn(move || {
                let mut conns: Vec<_> = (0..10)
                    .map(|_| {
                        let s = UnixStream::connect(&path).unwrap();
                        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        BufReader::new(s)
                    })
                    .collect();
                back_to_back(t, &mut conns, 100);
                conns
            })
        })
        .collect();
    let conns: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    wait_until_no_request_runs(&live);
    drop(conns);
    let s = stop();
    assert_eq!(s.counters.accepted, 20);
    assert_eq!(s.counters.errors + s.counters.panics, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A handler that breaks the contract (returns `Idle` after reading end of
/// file) would be called again forever; the server closes the connection
/// instead, and the worker stays free for everyone else.
#[test]
fn a_handler_that_ignores_end_of_file_gets_its_connection_closed() {
    let server = loopback(1).build().unwrap();
    let addr = server.local_addrs()[0];
    let stop = serve_with(
        server,
        |_| (),
        |req: &mut Request<'_, ()>| {
            let (conn, (), buf) = req.parts();
            buf.resize(4096, 0);
            let n = (&*conn).read(buf)?;
            (&*conn).write_all(&buf[..n])?;
            Ok(Next::Idle) // even when n == 0: the bug
        },
    );
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    bad.read_exact(&mut b).unwrap();
    bad.shutdown(std::net::Shutdown::Write).unwrap();
    // The server closes it: end of file here, not a timeout.
    let n = bad.read(&mut b).expect("the server closed the connection");
    assert_eq!(n, 0);
    // The single worker still serves others.
    let mut good = TcpStream::connect(addr).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    good.write_all(b"y").unwrap();
    good.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
    drop(good);
    let s = stop();
    assert_eq!(s.counters.accepted, 2);
}

#[test]
fn request_runners_are_reused_bounded_and_gone_after_stop() {
    // Every connection sends `wait` at once: as many requests in flight as
    // connections, each parked in its handler, more than the runners a
    // worker keeps.
    const CONNS: usize = 300;
    const KEPT_PER_WORKER: usize = 64;
    let server = loopback(2).build().unwrap();
    let addr = server.local_addrs()[0];
    let rt = server.runtime_handle();
    let (live, stop) = serve(server);
    // Once a first client is answered the server's own fibers (acceptors,
    // sweepers) are up, and one runner at most.
    let mut first = connect(addr);
    assert_eq!(ask(&mut first, "hello"), "1 hello\n");
    wait_until_no_request_runs(&live);
    let base = rt.live_fibers();
    for round in 0..3 {
        let mut conns: Vec<_> = (0..CONNS).map(|_| connect(addr)).collect();
        for c in &mut conns {
            c.get_mut().write_all(b"wait\n").unwrap();
        }
        for c in &mut conns {
            let mut l = String::new();
            c.read_line(&mut l).unwrap();
            assert_eq!(l, "1 wait\n", "round {round}");
        }
        wait_until_no_request_runs(&live);
        // The runners past what each worker keeps have ended.
        wait_until(
            10_000,
            || rt.live_fibers() <= base + 2 * KEPT_PER_WORKER,
            || {
                format!(
                    "{} fibers live with every client idle, {base} before {CONNS} requests at once",
                    rt.live_fibers()
                )
            },
        );
    }
    drop(first);
    stop();
    assert_eq!(rt.live_fibers(), 0, "fibers left after the server stopped");
}

weave::fiber_local! {
    static SEEN: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

#[test]
fn fiber_locals_of_one_request_never_reach_the_next() {
    // One worker, requests one after the other: the same runner serves
    // them all.
    let server = loopback(1).build().unwrap();
    let addr = server.local_addrs()[0];
    let stop = serve_with(
        server,
        |_| (),
        |req: &mut Request<'_, ()>| {
            let mut b = [0u8; 64];
            if req.conn().read(&mut b)? == 0 {
                return Ok(Next::Close);
            }
            let seen = SEEN.with(|s| s.replace(true));
            req.conn()
                .write_all(if seen { b"seen\n" } else { b"fresh\n" })?;
            Ok(Next::Idle)
        },
    );
    let mut conns: Vec<_> = (0..4).map(|_| connect(addr)).collect();
    for round in 0..5 {
        for c in &mut conns {
            assert_eq!(ask(c, "x"), "fresh\n", "round {round}");
        }
    }
    stop();
}

/// A request-mode echo that reads with `Conn::read_append` into the
/// runner's buffer, which each call gets empty: every client gets back
/// exactly what it sent, over many requests of changing sizes (a long one
/// before a short one would show stale bytes), and the server counts what
/// it read.
#[test]
fn read_append_echoes_through_the_runner_buffer() {
    let server = loopback(2).build().unwrap();
    let addr = server.local_addrs()[0];
    let stop = serve_with(
        server,
        |_| (),
        |r: &mut Request<'_, ()>| {
            let (conn, (), buf) = r.parts();
            assert!(buf.is_empty(), "a runner's buffer starts each call empty");
            let n = conn.read_append(buf)?;
            if n == 0 {
                return Ok(Next::Close);
            }
            assert_eq!(buf.len(), n);
            (&*conn).write_all(buf)?;
            Ok(Next::Idle)
        },
    );
    let mut sent = 0u64;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut total = 0u64;
                for round in 0..60usize {
                    let len = 1 + (round * 997 + c * 131) % 6000;
                    let msg: Vec<u8> = (0..len).map(|i| b'a' + ((i + round) % 26) as u8).collect();
                    s.write_all(&msg).unwrap();
                    let mut back = vec![0u8; len];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg, "client {c}, round {round}");
                    total += len as u64;
                }
                total
            })
        })
        .collect();
    for c in clients {
        sent += c.join().expect("client");
    }
    let summary = stop();
    assert_eq!(summary.counters.bytes_in, sent);
    assert_eq!(summary.counters.bytes_out, sent);
}

/// The server stops while requests keep arriving on both workers, many
/// rounds: the stop returns, no handler saw an error, and no fiber is left
/// behind.
#[test]
fn stopping_while_requests_arrive_leaves_no_fiber_behind() {
    use std::sync::atomic::AtomicBool;
    for round in 0..10u64 {
        let server = loopback(2).build().unwrap();
        let addr = server.local_addrs()[0];
        let rt = server.runtime_handle();
        let (_live, stop) = serve(server);
        let quit = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (quit, answered) = (quit.clone(), answered.clone());
                thread::spawn(move || {
                    let mut conns: Vec<_> = (0..25).map(|_| connect(addr)).collect();
                    // Bounded: the server stops long before this many.
                    for _ in 0..20_000 {
                        if quit.load(Ordering::SeqCst) || conns.is_empty() {
                            break;
                        }
                        conns.retain_mut(|c| {
                            let mut l = String::new();
                            let ok = c.get_mut().write_all(b"x\n").is_ok()
                                && c.read_line(&mut l).is_ok_and(|n| n > 0);
                            if ok {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            ok
                        });
                    }
                })
            })
            .collect();
        // Stop once requests are flowing.
        wait_until(
            30_000,
            || answered.load(Ordering::SeqCst) >= 500,
            || format!("round {round}: requests never flowed"),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || tx.send(stop()).unwrap());
        let summary = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("round {round}: the stop never returned"));
        assert_eq!(summary.counters.errors + summary.counters.panics, 0);
        wait_until(
            10_000,
            || rt.live_fibers() == 0,
            || {
                format!(
                    "round {round}: {} fibers left after the server stopped",
                    rt.live_fibers()
                )
            },
        );
        quit.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
    }
}
