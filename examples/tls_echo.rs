//! A TLS echo server: `rustls`, a synchronous TLS library, runs unchanged
//! over a weave connection (`rustls::StreamOwned` around a
//! `weave::server::Conn`). The certificate is generated at start with
//! `rcgen` for `localhost` and `127.0.0.1`, or read from PEM files.
//!
//! ```text
//! cargo run --release --example tls_echo -- --addr 127.0.0.1:8443
//! cargo run --release --example tls_echo -- --cert cert.pem --key key.pem
//! openssl s_client -connect 127.0.0.1:8443 -quiet
//! ```
//!
//! Stack: a TLS handshake is deep. Measured with `--stack-size`, a release
//! build overflowed 12 KiB and ran in 16 KiB, a debug build overflowed
//! 48 KiB and ran in 64 KiB; this example gives its fibers
//! 128 KiB (weave's default is 256 KiB; only the pages a fiber touches
//! become resident, so a generous size costs address space, not memory).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use weave::server::Server;

/// TLS echo server (rustls) on weave fibers.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Certificate chain (PEM). Without it, a self-signed certificate for
    /// localhost and 127.0.0.1 is generated at start.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of the certificate (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write the generated certificate here (PEM), for clients to trust.
    #[arg(long, conflicts_with = "cert")]
    pub write_cert: Option<PathBuf>,
    /// Stack size of each connection's fiber, in bytes.
    #[arg(long, default_value_t = STACK_SIZE)]
    pub stack_size: usize,
}

/// Stack for a connection fiber (see the header).
pub const STACK_SIZE: usize = 128 * 1024;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// Generates a self-signed certificate for `localhost` and `127.0.0.1`.
///
/// # Errors
///
/// Key generation failed.
pub fn generate_identity() -> io::Result<Identity> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    Ok(Identity {
        certs: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
    })
}

/// Reads a PEM certificate chain and key.
///
/// # Errors
///
/// A file that cannot be read, or holds no certificate or key.
pub fn load_identity(cert: &PathBuf, key: &PathBuf) -> io::Result<Identity> {
    let bad = |what: &str, p: &PathBuf, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {}: {e}", p.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate file", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate file", cert, &e))?;
    if certs.is_empty() {
        return Err(bad("certificate file", cert, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key file", key, &e))?;
    Ok(Identity { certs, key })
}

/// The server configuration: TLS 1.2 and 1.3 with the `ring` provider.
///
/// # Errors
///
/// A key that does not match the certificate or is of an unsupported kind.
pub fn server_config(id: Identity) -> io::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(id.certs, id.key))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Arc::new(config))
}

/// Runs the TLS handshake on `conn`, then echoes the decrypted bytes until
/// the client closes.
///
/// # Errors
///
/// A failed handshake, a TLS alert, or an I/O error.
pub fn serve_conn<S: Read + Write>(config: Arc<ServerConfig>, conn: S) -> io::Result<()> {
    let session = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(session, conn);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // The first read drives the handshake.
        let n = match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A client that closes without close_notify: done all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        tls.write_all(&buf[..n])?;
        tls.flush()?;
    }
    tls.conn.send_close_notify();
    // Best effort: the client may already be gone.
    let _ = tls.flush();
    Ok(())
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let id = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => load_identity(c, k)?,
        _ => {
            let id = generate_identity()?;
            if let Some(p) = &args.write_cert {
                let pem = pem_encode("CERTIFICATE", &id.certs[0]);
                std::fs::write(p, pem)?;
                log::info!("certificate written to {}", p.display());
            }
            id
        }
    };
    let config = server_config(id)?;
    let mut builder = Server::builder()
        .bind(args.addr.to_string())
        .stack_size(args.stack_size);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let server = builder.build()?;
    log::info!("tls_echo listening on {:?}", server.local_addrs());
    let summary = server.serve(move |conn| {
        conn.set_nodelay(true)?;
        serve_conn(config.clone(), conn)
    })?;
    log::info!("stopped: {summary:?}");
    Ok(())
}

/// PEM text for one DER object.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
