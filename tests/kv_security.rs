//! The kv example's defenses, against the real binary: ASCII authentication
//! (`-Y`, with the `memcache` crate as a real client, whose
//! `user:password@` URL does memcached's handshake) and the hang-up on
//! HTTP request lines.

mod kv_common;

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kv_common::{Client, Server};

/// Writes an auth file unique to this test and returns its path.
fn auth_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kv-security-{}-{name}.auth", std::process::id()));
    std::fs::write(&path, "alice:secret\nbob:hunter2\n").expect("write auth file");
    path
}

fn start_auth(name: &str) -> (Server, PathBuf) {
    let path = auth_file(name);
    let server = Server::start(&["-Y", path.to_str().unwrap()]);
    (server, path)
}

fn login(c: &mut Client, user: &str, pass: &str) -> String {
    let data = format!("{user} {pass}");
    c.send(format!("set auth 0 0 {}\r\n{data}\r\n", data.len()));
    c.line()
}

#[test]
fn memcache_crate_authenticates_and_is_served() {
    let (server, path) = start_auth("crate");
    let url = format!(
        "memcache://alice:secret@127.0.0.1:{}?protocol=ascii&timeout=30",
        server.addr.port()
    );
    let client = memcache::Client::connect(url.as_str()).expect("authenticated client");
    client.set("greeting", "hello", 0).unwrap();
    assert_eq!(
        client.get::<String>("greeting").unwrap().as_deref(),
        Some("hello")
    );
    assert_eq!(client.increment("n", 1).ok(), None, "missing counter");
    client.set("n", 41u64, 0).unwrap();
    assert_eq!(client.increment("n", 1).unwrap(), 42);
    // A raw connection that has not authenticated sees none of it.
    let mut raw = server.connect();
    raw.expect("get greeting\r\n", "CLIENT_ERROR unauthenticated\r\n");
    raw.expect("version\r\n", "CLIENT_ERROR unauthenticated\r\n");
    assert_eq!(login(&mut raw, "bob", "hunter2"), "STORED\r\n");
    raw.expect("get greeting\r\n", "VALUE greeting 0 5\r\nhello\r\nEND\r\n");
    // The handshake's own set stored nothing.
    raw.expect("get auth\r\n", "END\r\n");
    let _ = std::fs::remove_file(path);
}

#[test]
fn failures_are_refused_and_counted() {
    let (server, path) = start_auth("fail");
    let mut c = server.connect();
    assert_eq!(
        login(&mut c, "alice", "secreT"),
        "CLIENT_ERROR authentication failure\r\n"
    );
    assert_eq!(
        login(&mut c, "mallory", "secret"),
        "CLIENT_ERROR authentication failure\r\n"
    );
    assert_eq!(
        login(&mut c, "alice", "secret!"),
        "CLIENT_ERROR authentication failure\r\n"
    );
    c.expect("get auth\r\n", "CLIENT_ERROR unauthenticated\r\n");
    c.expect(
        "set a 0 0 5\r\nalice\r\n",
        "CLIENT_ERROR bad authentication token format\r\n",
    );
    assert_eq!(login(&mut c, "alice", "secret"), "STORED\r\n");
    assert_eq!(c.stat("auth_cmds"), 4);
    assert_eq!(c.stat("auth_errors"), 3);
    // Not a login any more: an ordinary set.
    assert_eq!(login(&mut c, "alice", "wrong"), "STORED\r\n");
    c.expect("get auth\r\n", "VALUE auth 0 11\r\nalice wrong\r\nEND\r\n");
    assert_eq!(c.stat("auth_cmds"), 4);
    let _ = std::fs::remove_file(path);
}

#[test]
fn binary_requests_are_refused_with_auth_error() {
    let (server, path) = start_auth("binary");
    let mut c = server.connect();
    // A binary GET of key "a", opaque 7.
    let mut req = vec![0x80, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7];
    req.extend_from_slice(&[0; 8]);
    req.push(b'a');
    c.send(&req);
    let head = c.bytes(24);
    assert_eq!(head[0], 0x81);
    assert_eq!(u16::from_be_bytes([head[6], head[7]]), 0x20, "auth error");
    assert_eq!(&head[12..16], &[0, 0, 0, 7]);
    let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
    assert_eq!(c.bytes(len), b"Auth failure.");
    assert!(c.closed(), "refused binary connection is closed");
    let _ = std::fs::remove_file(path);
}

/// Many threads log in at once, a third of them with a wrong password;
/// every good login is served, every bad one refused, and the counters
/// add up exactly.
#[test]
fn stress_concurrent_logins() {
    let (server, path) = start_auth("stress");
    let addr = server.addr;
    let good = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let good = good.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let mut c = Client::connect(addr);
                    let key = format!("k{t}-{i}");
                    if (t + i) % 3 == 0 {
                        assert_eq!(
                            login(&mut c, "bob", "hunter3"),
                            "CLIENT_ERROR authentication failure\r\n"
                        );
                        c.expect(format!("get {key}\r\n"), "CLIENT_ERROR unauthenticated\r\n");
                    } else {
                        assert_eq!(login(&mut c, "alice", "secret"), "STORED\r\n");
                        c.expect(format!("set {key} 0 0 1\r\nx\r\n"), "STORED\r\n");
                        c.expect(
                            format!("get {key}\r\n"),
                            &format!("VALUE {key} 0 1\r\nx\r\nEND\r\n"),
                        );
                        good.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = server.connect();
    assert_eq!(login(&mut c, "alice", "secret"), "STORED\r\n");
    let good = good.load(Ordering::Relaxed) as u64;
    assert_eq!(c.stat("auth_cmds"), 8 * 40 + 1);
    assert_eq!(c.stat("auth_errors"), 8 * 40 - good);
    assert_eq!(c.stat("curr_items"), good);
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_auth_file_stops_the_server() {
    let path = std::env::temp_dir().join(format!("kv-security-{}-bad.auth", std::process::id()));
    std::fs::write(&path, "alice:secret\nno colon here\n").unwrap();
    let out = std::process::Command::new(kv_common::kv_binary())
        .args(["-l", "127.0.0.1", "-p", "0", "-Y"])
        .arg(&path)
        .output()
        .expect("run kv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "stderr: {err}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn http_request_line_hangs_up_silently() {
    let server = Server::start(&[]);
    for req in [
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "POST /cache HTTP/1.1\r\nContent-Length: 25\r\n\r\nset x 0 0 1\r\nx\r\nget x\r\n",
        "PUT /path HTTP/1.1\r\n",
        "DELETE HTTP/1.1\r\n",
    ] {
        let mut c = server.connect();
        c.send(req);
        let mut got = Vec::new();
        // Read to the end: EOF (or a reset) and not one byte before it.
        let r = c.r.read_to_end(&mut got);
        assert!(
            r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "{req:?}"
        );
        assert!(
            got.is_empty(),
            "{req:?} got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // Nothing the page posted was stored, and others are served.
    let mut c = server.connect();
    c.expect("get x\r\n", "END\r\n");
    c.expect("GET /\r\n", "ERROR\r\n");
}
