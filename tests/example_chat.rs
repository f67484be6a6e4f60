//! The chat example: 100 clients that read get every line of every other
//! client, in order, while one client that does not read is dropped instead
//! of stalling them.

#[allow(dead_code)] // its `main` and flags are the program's, not the test's
#[path = "../examples/chat.rs"]
mod chat;
mod example_util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

fn server(backlog: usize, write_timeout: Duration) -> (example_util::Running, chat::Hub) {
    let hub = chat::Hub::new(backlog, write_timeout);
    let h = hub.clone();
    let srv = example_util::start(2, 0, move |conn| h.serve_conn(conn));
    (srv, hub)
}

/// A client that stops reading, with its receive buffer pinned small:
/// otherwise Linux may grow it to megabytes for a loopback peer, and the
/// test would have to send that much before the server notices anything.
fn not_reading(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads `size`, whose length we pass; the fd is open.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    s
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The text client `c` publishes in round `r`: names both, padded to about
/// 1 KiB with bytes derived from them.
fn text(c: usize, r: usize) -> String {
    let mut s = format!("c{c} r{r} ");
    while s.len() < 1000 {
        s.push(char::from(b'a' + ((s.len() * 7 + c + r) % 26) as u8));
    }
    s
}

/// Splits a received line `"<id>: c<c> r<r> ..."` into (c, r), checking the
/// text is exactly what client `c` sent in round `r` (`texts[c][r]`).
fn parse(line: &str, texts: &[Vec<String>]) -> (usize, usize) {
    let (_, body) = line.split_once(": ").expect("id prefix");
    let mut words = body.split(' ');
    let c: usize = words.next().unwrap()[1..].parse().unwrap();
    let r: usize = words.next().unwrap()[1..].parse().unwrap();
    assert_eq!(body, texts[c][r], "line from client {c} round {r} altered");
    (c, r)
}

#[test]
fn slow_consumer_is_dropped_and_never_stalls_the_others() {
    const CLIENTS: usize = 100;
    const ROUNDS: usize = 20;
    // The clients that read are never more than two rounds (200 lines)
    // behind, since they publish in lockstep: well within the backlog. The
    // client that does not read falls 2,000 lines behind.
    let (srv, hub) = server(512, Duration::from_secs(60));
    let addr = srv.addr;

    // The client that never reads. It joins first, so it is sent everything.
    let slow = not_reading(addr);
    wait_for("the slow client to join", || {
        hub.stats().joined.load(Ordering::Relaxed) == 1
    });

    let texts: Arc<Vec<Vec<String>>> = Arc::new(
        (0..CLIENTS)
            .map(|c| (0..ROUNDS).map(|r| text(c, r)).collect())
            .collect(),
    );
    let hub2 = hub.clone();
    let readers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let hub = hub2.clone();
            let texts = texts.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut lines = BufReader::new(s);
                // Everyone joins before anyone publishes.
                wait_for("all clients to join", || {
                    hub.stats().joined.load(Ordering::Relaxed) == CLIENTS as u64 + 1
                });
                // Next round expected from each client.
                let mut next: HashMap<usize, usize> = HashMap::new();
                let mut got = 0;
                let mut line = String::new();
                for r in 0..ROUNDS {
                    writeln!(w, "{}", texts[c][r]).unwrap();
                    // Read until every client's round `r` has arrived (some
                    // of round `r + 1` may come first: others can be ahead).
                    while (0..CLIENTS).any(|o| next.get(&o).copied().unwrap_or(0) <= r) {
                        line.clear();
                        let n = lines.read_line(&mut line).unwrap();
                        assert!(n > 0, "client {c} was disconnected in round {r}");
                        let (from, round) = parse(line.trim_end_matches('\n'), &texts);
                        let want = next.entry(from).or_insert(0);
                        assert_eq!(round, *want, "client {c}: from {from} out of order");
                        *want += 1;
                        got += 1;
                    }
                }
                // Stay connected until every client has everything; the
                // caller drops us then.
                (got, lines)
            })
        })
        .collect();
    let mut total = 0;
    let mut kept = Vec::new();
    for h in readers {
        let (got, conn) = h.join().unwrap();
        total += got;
        kept.push(conn);
    }
    // Every reader got every line, each checked.
    assert_eq!(total, CLIENTS * CLIENTS * ROUNDS);
    let stats = hub.stats();
    assert_eq!(
        stats.published.load(Ordering::Relaxed),
        (CLIENTS * ROUNDS) as u64
    );
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0, "{stats:?}");

    // The slow client reads at last: what its kernel buffers held, far short
    // of everything, then the notice that it was dropped, then the end.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut backlog = Vec::new();
    let end = (&slow).read_to_end(&mut backlog);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    let everything = CLIENTS * ROUNDS * 1010;
    assert!(
        backlog.len() < everything / 2,
        "slow client got {} bytes",
        backlog.len()
    );
    let text = String::from_utf8_lossy(&backlog);
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("* dropped: missed "), "last line {last:?}");
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1, "{stats:?}");
    drop(kept);
    let summary = srv.stop();
    assert_eq!(summary.still_open, 0, "{summary:?}");
}

#[test]
fn client_that_never_reads_again_is_dropped_after_the_write_timeout() {
    // A backlog no client can outrun here, so the write timeout is what
    // drops the client that does not read.
    let (srv, hub) = server(1 << 20, Duration::from_secs(1));
    let slow = not_reading(srv.addr);
    let mut talker = BufReader::new(TcpStream::connect(srv.addr).unwrap());
    talker.get_mut().set_nodelay(true).unwrap();
    wait_for("two joins", || {
        hub.stats().joined.load(Ordering::Relaxed) == 2
    });
    // 1,000 lines of 1 KB, more than the slow client's buffers hold. The
    // talker reads each of its lines back before sending the next.
    let mut line = String::new();
    for i in 0..1000 {
        talker
            .get_mut()
            .write_all(format!("{}\n", text(0, i)).as_bytes())
            .unwrap();
        line.clear();
        talker.read_line(&mut line).unwrap();
        assert!(line.trim_end().ends_with(&text(0, i)), "{line}");
    }
    wait_for("the slow client to be dropped", || {
        hub.stats().dropped.load(Ordering::Relaxed) == 1
    });
    // Its stream ends after what its buffers held.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut backlog = Vec::new();
    let _ = (&slow).read_to_end(&mut backlog);
    assert!(backlog.len() < 1000 * 1010 / 2, "{}", backlog.len());
    // The talker is still served.
    talker.get_mut().write_all(b"after\n").unwrap();
    line.clear();
    talker.read_line(&mut line).unwrap();
    assert!(line.ends_with(": after\n"), "{line}");
    assert_eq!(hub.stats().dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn lines_reach_everyone_including_the_sender() {
    let (srv, hub) = server(64, Duration::from_secs(60));
    let mut a = BufReader::new(TcpStream::connect(srv.addr).unwrap());
    let mut b = BufReader::new(TcpStream::connect(srv.addr).unwrap());
    wait_for("two joins", || {
        hub.stats().joined.load(Ordering::Relaxed) == 2
    });
    // Two lines in one write, the second split across two writes.
    a.get_mut().write_all(b"hello\nwor").unwrap();
    a.get_mut().write_all(b"ld\n").unwrap();
    let mut line = String::new();
    for r in [&mut a, &mut b] {
        for want in ["hello", "world"] {
            line.clear();
            r.read_line(&mut line).unwrap();
            let (_, text) = line.trim_end().split_once(": ").unwrap();
            assert_eq!(text, want);
        }
    }
    // b leaves; a keeps chatting alone.
    drop(b);
    wait_for("b to leave", || {
        hub.stats().left.load(Ordering::Relaxed) == 1
    });
    a.get_mut().write_all(b"anyone?\n").unwrap();
    line.clear();
    a.read_line(&mut line).unwrap();
    assert!(line.ends_with(": anyone?\n"), "{line}");
}

#[test]
fn overlong_line_closes_only_that_client() {
    let (srv, hub) = server(64, Duration::from_secs(60));
    let mut ok = BufReader::new(TcpStream::connect(srv.addr).unwrap());
    let mut bad = TcpStream::connect(srv.addr).unwrap();
    wait_for("two joins", || {
        hub.stats().joined.load(Ordering::Relaxed) == 2
    });
    bad.write_all(&vec![b'x'; chat::MAX_LINE]).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    ok.get_mut().write_all(b"still here\n").unwrap();
    let mut line = String::new();
    ok.read_line(&mut line).unwrap();
    assert!(line.ends_with(": still here\n"), "{line}");
    // The handler's error is counted after its connection closed, so the
    // count may trail the close the client saw: wait for it.
    wait_for("the bad client's error counted", || {
        srv.handle().counters().errors == 1
    });
    assert_eq!(srv.handle().counters().errors, 1);
}

#[test]
fn hub_with_threads_and_fibers_alike() {
    // A client can be a fiber too, over a weave socket.
    let (srv, hub) = server(64, Duration::from_secs(60));
    let addr = srv.addr;
    let rt = weave::Runtime::builder().workers(1).build().unwrap();
    let hub = Arc::new(hub);
    let h = hub.clone();
    let line = rt.block_on(move || {
        let s = weave::net::TcpStream::connect(addr).unwrap();
        // Parks the fiber, not its worker, between looks.
        let t = Instant::now();
        while h.stats().joined.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(60), "no join");
            weave::sleep(Duration::from_millis(2));
        }
        (&s).write_all(b"from a fiber\n").unwrap();
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line
    });
    assert!(line.ends_with(": from a fiber\n"), "{line}");
}

#[test]
fn flags() {
    let a =
        chat::Args::try_parse_from(["chat", "--addr", "127.0.0.1:9", "--backlog", "8"]).unwrap();
    assert_eq!((a.addr.port(), a.backlog, a.write_timeout), (9, 8, 30));
    assert!(chat::Args::try_parse_from(["chat", "--backlog", "0"]).is_err());
    let e = chat::Args::try_parse_from(["chat", "--help"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(e.to_string().contains("--backlog"));
}
