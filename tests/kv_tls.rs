//! The kv example with TLS (`-Z -o ssl_chain_cert=...,ssl_key=...`), with
//! rustls as the client and certificates made by rcgen: sessions are
//! served, plaintext gets nothing, SIGHUP swaps the certificate, and many
//! concurrent TLS clients get every reply.

mod kv_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use kv_common::IO_TIMEOUT;

/// PEM armour around DER (base64, 64 columns).
fn pem(label: &str, der: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A test CA that signs leaf certificates for 127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes a fresh leaf certificate and its key to `dir`; returns the
    /// leaf's DER.
    fn leaf(&self, dir: &Path) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written beside, then renamed: a reload never sees half a file.
        let tmp = dir.join("tmp.pem");
        std::fs::write(&tmp, pem("CERTIFICATE", cert.der())).unwrap();
        std::fs::rename(&tmp, dir.join("cert.pem")).unwrap();
        std::fs::write(&tmp, pem("PRIVATE KEY", &key.serialize_der())).unwrap();
        std::fs::rename(&tmp, dir.join("key.pem")).unwrap();
        cert.der().clone()
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every handshake a full one: a resumed session shows the
        // certificate of the session it resumes, not the one now served.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kv-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<BufReader<Tls>> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    // Finish the handshake now, so a refused one is an error here.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(BufReader::new(s))
}

fn ask(s: &mut BufReader<Tls>, req: &str, lines: usize) -> String {
    s.get_mut().write_all(req.as_bytes()).unwrap();
    s.get_mut().flush().unwrap();
    let mut out = String::new();
    for _ in 0..lines {
        let n = s.read_line(&mut out).unwrap();
        assert!(n > 0, "closed while waiting for a reply to {req:?}");
    }
    out
}

/// A kv server with TLS on; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts kv with TLS from `dir`'s files (and `extra` flags); waits
    /// until a TLS client gets an answer to `version`.
    fn start(dir: &Path, config: &Arc<ClientConfig>, extra: &[&str]) -> Server {
        let tls = format!(
            "ssl_chain_cert={},ssl_key={}",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        );
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(kv_common::kv_binary())
                .args([
                    "-l",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "2",
                    "-Z",
                    "-o",
                ])
                .arg(&tls)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn kv");
            let mut server = Server {
                child,
                addr: ([127, 0, 0, 1], port).into(),
            };
            for _ in 0..3000 {
                if server.child.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok(mut s) = tls_connect(server.addr, config) {
                    let reply = ask(&mut s, "version\r\n", 1);
                    if reply.starts_with("VERSION ") || reply == "CLIENT_ERROR unauthenticated\r\n"
                    {
                        return server;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = server.child.kill();
        }
        panic!("kv with TLS did not start");
    }

    fn sighup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(r, 0);
    }
}

fn peer_cert(s: &BufReader<Tls>) -> CertificateDer<'static> {
    s.get_ref().conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[test]
fn tls_sessions_are_served_and_plaintext_gets_nothing() {
    let dir = temp_dir("smoke");
    let ca = Ca::new();
    ca.leaf(&dir);
    let config = ca.client_config();
    let server = Server::start(&dir, &config, &[]);
    let mut s = tls_connect(server.addr, &config).unwrap();
    assert_eq!(ask(&mut s, "set k 0 0 5\r\nhello\r\n", 1), "STORED\r\n");
    assert_eq!(
        ask(&mut s, "get k\r\n", 3),
        "VALUE k 0 5\r\nhello\r\nEND\r\n"
    );
    // A large value crosses many TLS records both ways.
    let big: String = (0..500_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    assert_eq!(
        ask(
            &mut s,
            &format!("set big 0 0 {}\r\n{big}\r\n", big.len()),
            1
        ),
        "STORED\r\n"
    );
    let reply = ask(&mut s, "get big\r\n", 3);
    assert_eq!(
        reply,
        format!("VALUE big 0 {}\r\n{big}\r\nEND\r\n", big.len())
    );

    for req in [
        &b"set p 0 0 1\r\nx\r\nget k\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00k",
    ] {
        let mut p = TcpStream::connect(server.addr).unwrap();
        p.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        p.write_all(req).unwrap();
        let mut got = Vec::new();
        let r = p.read_to_end(&mut got);
        assert!(
            r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "plaintext connection must be closed"
        );
        assert!(got.is_empty(), "plaintext client got {got:?}");
    }
    assert_eq!(
        ask(&mut s, "get p\r\n", 1),
        "END\r\n",
        "plaintext stored nothing"
    );
    s.get_mut().write_all(b"stats settings\r\n").unwrap();
    let mut settings = String::new();
    while !settings.ends_with("END\r\n") {
        assert!(s.read_line(&mut settings).unwrap() > 0);
    }
    assert!(settings.contains("STAT ssl_enabled yes\r\n"), "{settings}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_and_auth_together() {
    let dir = temp_dir("auth");
    let ca = Ca::new();
    ca.leaf(&dir);
    let auth = dir.join("users");
    std::fs::write(&auth, "alice:secret\n").unwrap();
    let config = ca.client_config();
    let server = Server::start(&dir, &config, &["-Y", auth.to_str().unwrap()]);
    let mut s = tls_connect(server.addr, &config).unwrap();
    assert_eq!(
        ask(&mut s, "get k\r\n", 1),
        "CLIENT_ERROR unauthenticated\r\n"
    );
    assert_eq!(
        ask(&mut s, "set a 0 0 12\r\nalice secret\r\n", 1),
        "STORED\r\n"
    );
    assert_eq!(ask(&mut s, "get k\r\n", 1), "END\r\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = temp_dir("reload");
    let ca = Ca::new();
    let first = ca.leaf(&dir);
    let config = ca.client_config();
    let mut server = Server::start(&dir, &config, &[]);
    let mut old = tls_connect(server.addr, &config).unwrap();
    assert_eq!(peer_cert(&old), first);

    let second = ca.leaf(&dir);
    assert_ne!(first, second);
    server.sighup();
    // Wait (bounded) until new connections present the new certificate.
    let end = Instant::now() + IO_TIMEOUT;
    loop {
        let s = tls_connect(server.addr, &config).unwrap();
        if peer_cert(&s) == second {
            break;
        }
        assert!(
            Instant::now() < end,
            "certificate not reloaded after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The connection made before the reload goes on.
    assert_eq!(ask(&mut old, "set k 0 0 1\r\nx\r\n", 1), "STORED\r\n");

    // A broken pair is refused and the current one stays.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let mut stderr = BufReader::new(server.child.stderr.take().unwrap());
    server.sighup();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "kv exited");
        if line.contains("not reloaded") {
            break;
        }
    }
    let s = tls_connect(server.addr, &config).unwrap();
    assert_eq!(peer_cert(&s), second);
    let _ = std::fs::remove_dir_all(dir);
}

/// Many client threads, each with several TLS connections sending
/// pipelined requests: every reply arrives, in order, on every connection.
#[test]
fn stress_concurrent_tls_clients() {
    let dir = temp_dir("stress");
    let ca = Ca::new();
    ca.leaf(&dir);
    let config = ca.client_config();
    let server = Server::start(&dir, &config, &[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || {
                for c in 0..6 {
                    let mut s = tls_connect(addr, &config).unwrap();
                    for round in 0..20 {
                        let mut req = String::new();
                        let mut want = String::new();
                        for i in 0..10 {
                            let key = format!("t{t}c{c}r{round}i{i}");
                            req.push_str(&format!(
                                "set {key} 0 0 {}\r\n{key}\r\nget {key}\r\n",
                                key.len()
                            ));
                            want.push_str(&format!(
                                "STORED\r\nVALUE {key} 0 {}\r\n{key}\r\nEND\r\n",
                                key.len()
                            ));
                        }
                        assert_eq!(ask(&mut s, &req, 40), want);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut s = tls_connect(addr, &config).unwrap();
    let stats = ask(&mut s, "stats\r\n", 1);
    assert!(stats.starts_with("STAT pid "));
    let _ = std::fs::remove_dir_all(dir);
}
