//! The WebSocket echo example against tungstenite clients: 200 at once,
//! 100 messages each, every echo checked; pings, closes and a client that
//! is not speaking WebSocket.

mod example_util;
#[allow(dead_code)] // its `main` and flags are the program's, not the test's
#[path = "../examples/ws_echo.rs"]
mod ws_echo;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tungstenite::{Message, WebSocket};

fn server() -> example_util::Running {
    example_util::start(2, ws_echo::STACK_SIZE, |conn| {
        conn.set_nodelay(true)?;
        ws_echo::serve_conn(conn)
    })
}

/// A client over a weave socket, from a fiber: the way to use tungstenite's
/// client side without blocking a worker.
fn connect(addr: SocketAddr) -> WebSocket<weave::net::TcpStream> {
    let s = weave::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/"), s).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The `i`th message of client `c`: text or binary, 0 bytes to 10 KB (both short and 16-bit frame lengths),
/// contents that name their sender and position.
fn message(c: usize, i: usize) -> Message {
    let len = [0, 1, 125, 126, 1000, 4096, 10_000, 200][(c + i) % 8];
    if i % 2 == 0 {
        let mut s = format!("client {c} message {i} ");
        while s.len() < len {
            s.push(char::from(b'a' + ((s.len() + c) % 26) as u8));
        }
        Message::text(s)
    } else {
        let mut v = format!("{c}:{i}:").into_bytes();
        v.extend((0..len).map(|k| (k * 31 + c * 7 + i) as u8));
        Message::binary(v)
    }
}

#[test]
fn many_clients_every_message_checked() {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 100;
    let srv = server();
    let addr = srv.addr;
    let rt = weave::Runtime::builder().workers(2).build().unwrap();
    let checked = rt.block_on(move || {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                weave::fiber::Builder::new()
                    .stack_size(ws_echo::STACK_SIZE)
                    .spawn(move || {
                        let mut ws = connect(addr);
                        // Keep a few messages in flight, not strictly one at a time.
                        let mut sent = 0;
                        for i in 0..MESSAGES {
                            while sent < MESSAGES && sent < i + 3 {
                                ws.send(message(c, sent)).unwrap();
                                sent += 1;
                            }
                            let got = ws.read().unwrap();
                            assert_eq!(got, message(c, i), "client {c} message {i}");
                        }
                        ws.close(None).unwrap();
                        // The server answers the close; then the stream ends.
                        loop {
                            match ws.read() {
                                Ok(Message::Close(_)) => {}
                                Ok(m) => panic!("unexpected {m:?} after close"),
                                Err(tungstenite::Error::ConnectionClosed) => break,
                                Err(e) => panic!("close handshake: {e}"),
                            }
                        }
                        MESSAGES
                    })
                    .unwrap()
            })
            .collect();
        clients
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(checked, CLIENTS * MESSAGES);
    let summary = srv.stop();
    assert_eq!(summary.counters.accepted, CLIENTS as u64);
    assert_eq!(summary.counters.errors, 0, "{summary:?}");
}

#[test]
fn ping_is_answered_from_a_plain_thread_client() {
    let srv = server();
    // A std socket on a plain thread works too: outside a runtime nothing parks.
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/", srv.addr), s).unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        m => panic!("expected a pong, got {m:?}"),
    }
    ws.send(Message::text("after ping")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("after ping"));
}

#[test]
fn not_websocket_is_refused() {
    let srv = server();
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    // A plain HTTP request is answered 400, then the connection is closed.
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    // A client that is garbage from the first byte is closed too.
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    // And the server still serves.
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/", srv.addr), s).unwrap();
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
    // The client sees the close before the handler's error is counted.
    example_util::wait_for("both refused clients' errors counted", || {
        srv.handle().counters().errors >= 2
    });
}

#[test]
fn flags() {
    let a = ws_echo::Args::try_parse_from([
        "ws_echo",
        "--addr",
        "127.0.0.1:9",
        "--stack-size",
        "32768",
    ])
    .unwrap();
    assert_eq!((a.addr.port(), a.stack_size), (9, 32_768));
    let e = ws_echo::Args::try_parse_from(["ws_echo", "--help"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(e.to_string().contains("--addr"));
}
