//! TLS (`-Z -o ssl_chain_cert=FILE,ssl_key=FILE`), with rustls and its
//! `ring` provider.
//!
//! # The stream
//!
//! A connection's handler is written against `Read + Write`, so TLS is a
//! wrapper and nothing else changes: [`Tls::accept`] runs the handshake
//! over the accepted socket, then hands out rustls's `StreamOwned`, whose
//! `read` and `write` drive the TLS session over the socket's own blocking
//! calls (a fiber parks in them exactly as it does in plaintext). The same
//! few lines serve TLS for any server built on weave; nothing of it is in
//! the core.
//!
//! # Who gets nothing
//!
//! With `-Z`, every listener speaks TLS only. A client whose first bytes
//! are not a TLS handshake record (a plaintext memcached request, an HTTP
//! request) gets nothing at all and the connection is closed, as memcached
//! (OpenSSL) does; one that sends a broken TLS handshake gets the TLS alert
//! naming the problem.
//!
//! # Reloading the certificate
//!
//! On SIGHUP the chain and key are read again ([`reload_on_sighup`]);
//! connections accepted afterwards use the new pair, established ones keep
//! theirs. A pair that fails to load (missing file, key not matching the
//! certificate) is logged and the old one stays in use.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A TLS connection over a stream `S`: `Read + Write` of plaintext.
pub type TlsStream<S> = StreamOwned<ServerConnection, S>;

/// First byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Server-side TLS: the configuration every connection starts from, and the
/// certificate it presents (replaceable while the server runs).
#[derive(Debug)]
pub struct Tls {
    config: Arc<ServerConfig>,
    cert: Arc<CurrentCert>,
    chain_path: PathBuf,
    key_path: PathBuf,
}

/// The certificate presented to new connections.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads a PEM certificate chain and its private key, and checks that they
/// belong together.
fn load(chain: &Path, key: &Path) -> io::Result<CertifiedKey> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let certs = CertificateDer::pem_slice_iter(&read(chain)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", chain.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{}: no certificate", chain.display())));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        invalid(format!(
            "{} does not match {}: {e}",
            key.display(),
            chain.display()
        ))
    })?;
    Ok(ck)
}

impl Tls {
    /// Loads the certificate chain and key (PEM files; the key may be
    /// PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// A file cannot be read or parsed, or the key does not match the
    /// certificate.
    pub fn new(chain: &Path, key: &Path) -> io::Result<Tls> {
        let cert = Arc::new(CurrentCert(RwLock::new(Arc::new(load(chain, key)?))));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(cert.clone());
        Ok(Tls {
            config: Arc::new(config),
            cert,
            chain_path: chain.to_path_buf(),
            key_path: key.to_path_buf(),
        })
    }

    /// Reads the files again; new connections present the new pair.
    ///
    /// # Errors
    ///
    /// As [`Tls::new`]; the pair in use is then kept.
    pub fn reload(&self) -> io::Result<()> {
        let ck = Arc::new(load(&self.chain_path, &self.key_path)?);
        *self.cert.0.write().unwrap_or_else(|e| e.into_inner()) = ck;
        Ok(())
    }

    /// Runs the server side of the handshake over `sock`. Returns the TLS
    /// stream, or `None` when the connection is over: the client left, or
    /// it does not speak TLS (then nothing is sent; a broken TLS handshake
    /// gets its alert).
    ///
    /// # Errors
    ///
    /// I/O errors of the socket.
    pub fn accept<S: Read + Write>(&self, mut sock: S) -> io::Result<Option<TlsStream<S>>> {
        let mut conn =
            ServerConnection::new(self.config.clone()).map_err(|e| invalid(e.to_string()))?;
        let mut first = None;
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            let n = conn.read_tls(&mut FirstByte {
                inner: &mut sock,
                first: &mut first,
            })?;
            if n == 0 {
                return Ok(None);
            }
            if let Err(e) = conn.process_new_packets() {
                log::debug!("TLS handshake failed: {e}");
                if first == Some(HANDSHAKE_RECORD) {
                    // A TLS client: tell it why (best effort).
                    let _ = conn.write_tls(&mut sock);
                }
                return Ok(None);
            }
        }
        Ok(Some(StreamOwned::new(conn, sock)))
    }

    /// Serves one connection with `handler` over TLS, then closes the
    /// session with a `close_notify`.
    ///
    /// # Errors
    ///
    /// Those of the handshake and of `handler`.
    pub fn serve<S: Read + Write>(
        &self,
        sock: S,
        handler: impl FnOnce(&mut TlsStream<S>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(mut s) = self.accept(sock)? else {
            return Ok(());
        };
        let r = handler(&mut s);
        s.conn.send_close_notify();
        while s.conn.wants_write() {
            if s.conn.write_tls(&mut s.sock).is_err() {
                break;
            }
        }
        r
    }
}

/// Remembers the first byte read through it.
struct FirstByte<'a, S> {
    inner: &'a mut S,
    first: &'a mut Option<u8>,
}

impl<S: Read> Read for FirstByte<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.first.is_none() {
            *self.first = Some(buf[0]);
        }
        Ok(n)
    }
}

/// Write end of the SIGHUP self-pipe (-1 until installed).
static HUP_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sighup(_: libc::c_int) {
    let fd = HUP_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; errno is saved and
        // restored around it so the interrupted code does not see it
        // change. A full pipe already holds a pending reload.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Reloads `tls`'s certificate and key each time the process gets SIGHUP,
/// on a thread of its own (the signal handler only writes to a pipe).
///
/// # Errors
///
/// The pipe, the handler or the thread cannot be set up.
pub fn reload_on_sighup(tls: Arc<Tls>) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The read end blocks; the write end stays non-blocking so the handler
    // never waits.
    // SAFETY: fcntl on a descriptor we just created.
    unsafe { libc::fcntl(fds[0], libc::F_SETFL, 0) };
    // SAFETY: fds[0] is a fresh descriptor that nothing else owns.
    let mut rx = unsafe { File::from_raw_fd(fds[0]) };
    HUP_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: installs a handler that only calls async-signal-safe
    // functions; the sigaction struct is plain data, valid when zeroed.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sighup as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::thread::Builder::new()
        .name("kv-tls-reload".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match rx.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => match tls.reload() {
                        Ok(()) => log::info!(
                            "SIGHUP: reloaded {} and {}",
                            tls.chain_path.display(),
                            tls.key_path.display()
                        ),
                        Err(e) => log::error!(
                            "SIGHUP: certificate not reloaded, keeping the old one: {e}"
                        ),
                    },
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::error!("SIGHUP pipe: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
