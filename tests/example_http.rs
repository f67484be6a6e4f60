//! The HTTP example's handler on a real server: routes, keep-alive,
//! pipelining, split requests, bodies, bad input, many clients at once.

mod example_util;
#[allow(dead_code)] // its `main` and flags are the program's, not the test's
#[path = "../examples/http.rs"]
mod http;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::Parser;

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client reading responses off one connection, in order.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads one whole response (`head`: the request was HEAD, no body).
    fn response(&mut self, head: bool) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(used) = r.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let status = r.code.unwrap();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .expect("every response has a Content-Length")
                    .1
                    .parse()
                    .unwrap();
                let len = if head { 0 } else { len };
                while self.buf.len() < used + len {
                    self.fill();
                }
                let body = self.buf[used..used + len].to_vec();
                self.buf.drain(..used + len);
                return Response {
                    status,
                    headers,
                    body,
                };
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.s.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed mid-response; have {:?}", self.buf);
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Asserts the server closes the connection with nothing more to say.
    fn expect_closed(&mut self) {
        assert!(self.buf.is_empty(), "left over: {:?}", self.buf);
        let mut chunk = [0u8; 64];
        match self.s.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("expected a close, got {:?}", &chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

fn server() -> example_util::Running {
    example_util::start(2, 0, |conn| {
        conn.set_nodelay(true)?;
        http::serve_conn(conn)
    })
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const JSON: &[u8] = b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n";
const MISSING: &[u8] = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";

fn check_hello(r: &Response) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"Hello, World!");
    assert_eq!(r.header("content-length"), Some("13"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
}

fn check_json(r: &Response) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({ "message": "Hello, World!" }));
}

#[test]
fn routes() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    c.send(GET);
    check_hello(&c.response(false));
    c.send(JSON);
    check_json(&c.response(false));
    c.send(MISSING);
    let r = c.response(false);
    assert_eq!(r.status, 404);
    c.send(b"DELETE / HTTP/1.1\r\n\r\n");
    assert_eq!(c.response(false).status, 405);
    c.send(b"HEAD / HTTP/1.1\r\n\r\n");
    let r = c.response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("13")));
    // The connection is still usable after all of that.
    c.send(GET);
    check_hello(&c.response(false));
    let summary = srv.stop();
    assert_eq!(summary.counters.errors, 0, "{summary:?}");
}

#[test]
fn keep_alive_many_requests() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    for i in 0..500 {
        c.send(if i % 2 == 0 { GET } else { JSON });
        let r = c.response(false);
        if i % 2 == 0 {
            check_hello(&r)
        } else {
            check_json(&r)
        }
    }
    assert_eq!(srv.handle().counters().accepted, 1);
}

#[test]
fn pipelined_answers_in_order() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    // 3,000 requests in a few big writes: several read buffers' worth, and
    // the answers pass the flush threshold several times.
    let kinds: Vec<usize> = (0..3000).map(|i| (i * 7 + i / 13) % 3).collect();
    let mut all = Vec::new();
    for &k in &kinds {
        all.extend_from_slice([GET, JSON, MISSING][k]);
    }
    let writer = {
        let mut s = c.s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&all).unwrap())
    };
    for &k in &kinds {
        let r = c.response(false);
        match k {
            0 => check_hello(&r),
            1 => check_json(&r),
            _ => assert_eq!(r.status, 404),
        }
    }
    writer.join().unwrap();
}

#[test]
fn requests_split_at_every_byte() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    c.s.set_nodelay(true).unwrap();
    let two = [GET, JSON].concat();
    for cut in 1..two.len() {
        c.send(&two[..cut]);
        // Give the server a chance to see the partial request alone.
        std::thread::yield_now();
        c.send(&two[cut..]);
        check_hello(&c.response(false));
        check_json(&c.response(false));
    }
}

#[test]
fn bodies_are_skipped() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    let body = vec![b'x'; 100_000];
    let mut req = format!(
        "POST /nope HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(GET);
    c.send(&req);
    assert_eq!(c.response(false).status, 404);
    check_hello(&c.response(false));
}

#[test]
fn connection_close_and_http10() {
    let srv = server();
    let mut c = Client::connect(srv.addr);
    c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.response(false);
    check_hello(&r);
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_closed();

    let mut c = Client::connect(srv.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    check_hello(&c.response(false));
    c.expect_closed();

    let mut c = Client::connect(srv.addr);
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    check_hello(&c.response(false));
    c.send(GET);
    check_hello(&c.response(false));
}

#[test]
fn bad_requests_get_400_and_close() {
    let srv = server();
    let cases: [(&[u8], u16); 6] = [
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
    ];
    for (req, status) in cases {
        let mut c = Client::connect(srv.addr);
        // A good request first: the bad one ends a live keep-alive connection.
        c.send(GET);
        check_hello(&c.response(false));
        c.send(req);
        let r = c.response(false);
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(req));
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_closed();
    }
    // Too many headers, and a head that never ends.
    let mut c = Client::connect(srv.addr);
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    c.send(&req);
    assert_eq!(c.response(false).status, 431);
    c.expect_closed();
    let mut c = Client::connect(srv.addr);
    // Exactly the limit, so the server has read every byte when it answers
    // (unread bytes at close would turn the close into a reset).
    let prefix = b"GET / HTTP/1.1\r\nX-Long: ";
    c.send(prefix);
    c.send(&vec![b'a'; http::MAX_HEAD - prefix.len()]);
    assert_eq!(c.response(false).status, 431);
    // The server is unaffected.
    let mut c = Client::connect(srv.addr);
    c.send(GET);
    check_hello(&c.response(false));
}

#[test]
fn many_clients_pipelining() {
    let srv = server();
    let addr = srv.addr;
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for round in 0..20 {
                    let depth = 1 + (i + round) % 16;
                    let mut batch = Vec::new();
                    for j in 0..depth {
                        batch.extend_from_slice(if j % 2 == 0 { GET } else { JSON });
                    }
                    c.send(&batch);
                    for j in 0..depth {
                        let r = c.response(false);
                        if j % 2 == 0 {
                            check_hello(&r)
                        } else {
                            check_json(&r)
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let summary = srv.stop();
    assert_eq!(summary.counters.accepted, 50);
    assert_eq!(summary.counters.errors, 0, "{summary:?}");
}

#[test]
fn http_date_format() {
    assert_eq!(
        &http::http_date(784_111_777),
        b"Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(&http::http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        &http::http_date(951_782_400),
        b"Tue, 29 Feb 2000 00:00:00 GMT"
    );
}

#[test]
fn flags() {
    let a =
        http::Args::try_parse_from(["http", "--addr", "127.0.0.1:9", "--workers", "3"]).unwrap();
    assert_eq!((a.addr.port(), a.workers), (9, Some(3)));
    let e = http::Args::try_parse_from(["http", "--help"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    let help = e.to_string();
    assert!(
        help.contains("--addr") && help.contains("--workers"),
        "{help}"
    );
    assert!(http::Args::try_parse_from(["http", "--addr", "nope"]).is_err());
}
