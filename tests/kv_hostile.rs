//! The kv example against hostile and careless clients: endless lines,
//! garbage, half-sent requests, many idle connections, deep pipelines.
//! Every wait is on an event (a reply, EOF); loops are bounded by count.

mod kv_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;

use kv_common::{Client, Server, IO_TIMEOUT};

/// Sends `total` bytes of `fill` in chunks; stops early if the server
/// closes (returns the bytes sent).
fn flood(s: &mut TcpStream, fill: u8, total: usize) -> usize {
    let chunk = vec![fill; 1 << 16];
    let mut sent = 0;
    while sent < total {
        match s.write(&chunk[..chunk.len().min(total - sent)]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn endless_line_is_rejected_with_bounded_memory() {
    let s = Server::start(&[]);
    let before = s.rss_kib();
    let mut c = s.connect();
    // 256 MiB without a newline: one error, then everything is dropped.
    let sent = flood(c.r.get_mut(), b'x', 256 << 20);
    assert_eq!(sent, 256 << 20);
    c.expect(
        "\r\nset after 0 0 2\r\nok\r\nget after\r\n",
        "CLIENT_ERROR line too long\r\n",
    );
    assert_eq!(c.line(), "STORED\r\n");
    assert_eq!(c.line(), "VALUE after 0 2\r\n");
    assert_eq!(c.line(), "ok\r\n");
    assert_eq!(c.line(), "END\r\n");
    let after = s.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn binary_garbage_bodies_are_skipped_with_bounded_memory() {
    let s = Server::start(&[]);
    let before = s.rss_kib();
    let mut c = s.connect();
    // An unknown opcode announcing a 200 MiB body, then the body.
    let mut h = vec![0u8; 24];
    h[0] = 0x80;
    h[1] = 0x77;
    h[8..12].copy_from_slice(&(200u32 << 20).to_be_bytes());
    c.send(&h);
    assert_eq!(flood(c.r.get_mut(), 0xab, 200 << 20), 200 << 20);
    let mut noop = vec![0u8; 24];
    noop[0] = 0x80;
    noop[1] = 0x0a;
    c.send(&noop);
    let r1 = c.bytes(24);
    assert_eq!(
        (r1[0], r1[1], u16::from_be_bytes([r1[6], r1[7]])),
        (0x81, 0x77, 0x81)
    );
    let body = u32::from_be_bytes(r1[8..12].try_into().unwrap()) as usize;
    c.bytes(body);
    let r2 = c.bytes(24);
    assert_eq!((r2[1], u16::from_be_bytes([r2[6], r2[7]])), (0x0a, 0));
    let after = s.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn random_garbage_never_kills_the_server() {
    let s = Server::start(&[]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..40 {
        let mut stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut junk = Vec::with_capacity(64 << 10);
        for _ in 0..(64 << 10) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(if round % 2 == 0 {
                (seed >> 24) as u8
            } else {
                b"set get 01 \r\n"[(seed % 13) as usize]
            });
        }
        let _ = stream.write_all(&junk);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Drain replies until the server closes its side.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    s.connect().expect(
        "set alive 0 0 1\r\n1\r\nget alive\r\n",
        "STORED\r\nVALUE alive 0 1\r\n1\r\nEND\r\n",
    );
}

#[test]
fn half_sent_request_does_not_block_others() {
    let s = Server::start(&["-t", "1"]);
    let mut slow = s.connect();
    // A header and half the data, then silence.
    slow.send("set slow 0 0 10\r\n12345");
    let mut slow_bin = s.connect();
    slow_bin.send([0x80u8, 0x01, 0, 4]);
    // Others keep working on the same (single) worker.
    let mut fast = s.connect();
    for i in 0..500 {
        fast.expect(format!("set k{i} 0 0 1\r\nx\r\n"), "STORED\r\n");
        fast.expect(
            format!("get k{i}\r\n"),
            &format!("VALUE k{i} 0 1\r\nx\r\nEND\r\n"),
        );
    }
    // The slow client finishes its request and is answered.
    slow.expect("67890\r\n", "STORED\r\n");
    fast.expect("get slow\r\n", "VALUE slow 0 10\r\n1234567890\r\nEND\r\n");
    drop(slow_bin);
}

#[test]
fn thousand_idle_connections_while_fifty_work() {
    let s = Server::start(&["-c", "4096", "-t", "2"]);
    // 1,000 idle connections; every other one has sent half a request.
    let mut idle = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut c = Client::connect(s.addr);
        if i % 2 == 0 {
            c.send(format!("set idle{i} 0 0 5\r\nab"));
        }
        idle.push(c);
    }
    // All of them are really being served (the server accepts them in its
    // own time: ask until it has, bounded).
    let mut probe = s.connect();
    let all_in = (0..10_000).any(|_| probe.stat("curr_connections") >= 1001);
    assert!(all_in, "the server never had all 1,001 connections open");

    let start = Arc::new(Barrier::new(50));
    let workers: Vec<_> = (0..50)
        .map(|w| {
            let addr = s.addr;
            let start = start.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                for i in 0..200 {
                    let key = format!("w{w}-{i}");
                    let val = format!("{w}:{i}");
                    c.expect(
                        format!("set {key} 0 0 {}\r\n{val}\r\n", val.len()),
                        "STORED\r\n",
                    );
                    c.expect(
                        format!("get {key}\r\n"),
                        &format!("VALUE {key} 0 {}\r\n{val}\r\nEND\r\n", val.len()),
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("busy client failed");
    }
    // The idle ones are still served afterwards.
    for (i, c) in idle.iter_mut().enumerate().step_by(97) {
        if i % 2 == 0 {
            c.expect("cde\r\n", "STORED\r\n");
        } else {
            c.send("version\r\n");
            assert!(c.line().starts_with("VERSION "));
        }
    }
    assert_eq!(
        probe.stat("curr_items") as usize,
        50 * 200 + (0..1000).step_by(97).filter(|i| i % 2 == 0).count()
    );
}

#[test]
fn deep_pipeline_from_a_writer_thread() {
    let s = Server::start(&[]);
    let stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let n = 50_000;
    // The writer never reads; the server must keep answering as the reader
    // drains, without unbounded buffering on either side.
    let writer = thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&format!(
                "set d{} 0 0 4\r\nabcd\r\nget d{}\r\n",
                i % 100,
                i % 100
            ));
            if batch.len() > 1 << 16 {
                w.write_all(batch.as_bytes()).unwrap();
                batch.clear();
            }
        }
        w.write_all(batch.as_bytes()).unwrap();
    });
    let mut c = Client {
        r: std::io::BufReader::new(stream),
    };
    for i in 0..n {
        assert_eq!(c.line(), "STORED\r\n", "reply {i}");
        assert_eq!(c.line(), format!("VALUE d{} 0 4\r\n", i % 100));
        assert_eq!(c.line(), "abcd\r\n");
        assert_eq!(c.line(), "END\r\n");
    }
    writer.join().unwrap();
}

#[test]
fn connection_limit_closes_extra_connections() {
    let s = Server::start(&["-c", "10"]);
    // The start-up probe's connection may still be closing: wait (bounded,
    // by asking the server) until only the first held one counts.
    let mut held: Vec<Client> = vec![s.connect()];
    let settled = (0..10_000).any(|_| held[0].stat("curr_connections") == 1);
    assert!(settled, "the start-up probe's connection never closed");
    held.extend((1..10).map(|_| s.connect()));
    for c in held.iter_mut() {
        c.send("version\r\n");
        assert!(c.line().starts_with("VERSION "));
    }
    let mut extra = s.connect();
    extra.send("version\r\n");
    assert!(extra.closed(), "the 11th connection is closed");
    drop(held.pop());
    // Wait (bounded, by asking the server) until it has seen the close.
    let seen = (0..10_000).any(|_| held[0].stat("curr_connections") == 9);
    assert!(seen, "the server never noticed the closed connection");
    // Room again: the slot is reused (the framework may release it a
    // moment after the handler returns, so allow a bounded number of tries).
    let ok = (0..1000).any(|_| {
        let mut c = s.connect();
        c.send("version\r\n");
        let mut b = [0u8; 8];
        matches!(c.r.read(&mut b), Ok(n) if n > 0)
    });
    assert!(ok, "a slot freed by a closed connection is reused");
}
