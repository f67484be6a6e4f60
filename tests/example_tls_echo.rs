//! The TLS echo example against rustls clients: 50 at once, 64 KiB
//! messages, every byte checked; a certificate from PEM files; a client
//! that does not speak TLS.

mod example_util;
#[allow(dead_code)] // its `main` and flags are the program's, not the test's
#[path = "../examples/tls_echo.rs"]
mod tls_echo;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A server with a fresh certificate, and a client config that trusts it.
fn server() -> (example_util::Running, Arc<ClientConfig>) {
    let id = tls_echo::generate_identity().unwrap();
    let client = client_config(id.certs[0].clone());
    let config = tls_echo::server_config(id).unwrap();
    let srv = example_util::start(2, tls_echo::STACK_SIZE, move |conn| {
        conn.set_nodelay(true)?;
        tls_echo::serve_conn(config.clone(), conn)
    });
    (srv, client)
}

fn client_config(trust: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS client over a weave socket (from a fiber) or a std one (from a
/// thread): rustls does not care which.
fn tls<S: Read + Write>(
    config: &Arc<ClientConfig>,
    name: &str,
    sock: S,
) -> StreamOwned<ClientConnection, S> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), sock)
}

/// Message `i` of client `c`: 64 KiB that differ between clients and
/// between messages.
fn message(c: usize, i: usize) -> Vec<u8> {
    let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1);
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn many_clients_64k_messages() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 8;
    let (srv, client) = server();
    let addr: SocketAddr = srv.addr;
    let rt = weave::Runtime::builder().workers(2).build().unwrap();
    let echoed = rt.block_on(move || {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let client = client.clone();
                weave::fiber::Builder::new()
                    .stack_size(tls_echo::STACK_SIZE)
                    .spawn(move || {
                        let s = weave::net::TcpStream::connect(addr).unwrap();
                        s.set_nodelay(true).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        let name = if c % 2 == 0 { "localhost" } else { "127.0.0.1" };
                        let mut t = tls(&client, name, s);
                        let mut back = vec![0u8; 64 * 1024];
                        for i in 0..MESSAGES {
                            // A whole message out, then its echo back: 64 KiB
                            // in flight fits in loopback socket buffers.
                            let m = message(c, i);
                            t.write_all(&m).unwrap();
                            t.flush().unwrap();
                            t.read_exact(&mut back).unwrap();
                            assert!(back == m, "client {c} message {i} differs");
                        }
                        t.conn.send_close_notify();
                        t.flush().unwrap();
                        // The server answers with its own close_notify.
                        let mut rest = Vec::new();
                        t.read_to_end(&mut rest).unwrap();
                        assert!(rest.is_empty());
                        MESSAGES * 64 * 1024
                    })
                    .unwrap()
            })
            .collect();
        clients
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(echoed, CLIENTS * MESSAGES * 64 * 1024);
    let summary = srv.stop();
    assert_eq!(summary.counters.accepted, CLIENTS as u64);
    assert_eq!(summary.counters.errors, 0, "{summary:?}");
}

#[test]
fn wrong_name_and_plain_text_are_refused() {
    let (srv, client) = server();
    // A name the certificate does not cover: the client refuses.
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = tls(&client, "example.com", s);
    let e = t.write_all(b"hello").and_then(|_| t.flush()).and_then(|_| {
        let mut b = [0u8; 5];
        t.read_exact(&mut b)
    });
    assert!(e.is_err());
    // Plain text instead of a ClientHello: the server sends an alert and closes.
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected a TLS alert, got {answer:?}"
    );
    // The server still serves, from a plain thread this time.
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = tls(&client, "localhost", s);
    t.write_all(b"still here").unwrap();
    t.flush().unwrap();
    let mut b = [0u8; 10];
    t.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
    // The client sees the close before the handler's error is counted.
    example_util::wait_for("both refused clients' errors counted", || {
        srv.handle().counters().errors >= 2
    });
}

#[test]
fn certificate_from_pem_files() {
    let id = tls_echo::generate_identity().unwrap();
    let dir = std::env::temp_dir().join(format!("weave-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let pem = tls_echo::pem_encode("CERTIFICATE", &id.certs[0]);
    // The encoder round-trips through rustls' PEM reader.
    assert_eq!(
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
        id.certs[0]
    );
    std::fs::write(&cert, pem).unwrap();
    std::fs::write(
        &key,
        tls_echo::pem_encode("PRIVATE KEY", id.key.secret_der()),
    )
    .unwrap();
    let loaded = tls_echo::load_identity(&cert, &key).unwrap();
    assert_eq!(loaded.certs, id.certs);
    let client = client_config(loaded.certs[0].clone());
    let config = tls_echo::server_config(loaded).unwrap();
    let srv = example_util::start(1, tls_echo::STACK_SIZE, move |conn| {
        tls_echo::serve_conn(config.clone(), conn)
    });
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = tls(&client, "localhost", s);
    t.write_all(b"from files").unwrap();
    t.flush().unwrap();
    let mut b = [0u8; 10];
    t.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from files");
    // Missing and empty files are clear errors.
    let e = tls_echo::load_identity(&dir.join("missing.pem"), &key).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let e = tls_echo::load_identity(&dir.join("empty.pem"), &key).unwrap_err();
    assert!(e.to_string().contains("no certificate"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags() {
    let a = tls_echo::Args::try_parse_from(["tls_echo", "--addr", "127.0.0.1:9"]).unwrap();
    assert_eq!(
        (a.addr.port(), a.cert, a.stack_size),
        (9, None, tls_echo::STACK_SIZE)
    );
    // A certificate needs its key.
    assert!(tls_echo::Args::try_parse_from(["tls_echo", "--cert", "c.pem"]).is_err());
    let e = tls_echo::Args::try_parse_from(["tls_echo", "--help"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(e.to_string().contains("--cert"));
}
