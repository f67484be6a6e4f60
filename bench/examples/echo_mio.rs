//! A hand-written mio echo server: the ceiling of the echo benchmark
//! (`scripts/bench-echo.sh`), what a server costs with no framework at all.
//!
//! `--workers` threads, each with its own `mio::Poll` and its own listener on
//! the same port (`SO_REUSEPORT`, so the kernel spreads new connections over
//! the threads). Sockets are registered once, edge-triggered, for reading and
//! writing. Each connection has a 64 KiB read buffer; on every event the
//! connection first flushes what it still owes the peer, then reads and
//! writes back until the socket would block. A partial write leaves the rest
//! in the buffer and stops reading that connection until the writable edge
//! arrives, so a slow reader cannot make the server buffer without bound.
//!
//! ```text
//! cargo run -p weave-bench --release --example echo_mio -- --addr 127.0.0.1:7003 --workers 1
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Hand-written mio echo server (one event loop per thread).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7003")]
    addr: SocketAddr,
    /// Threads, each with its own poller and listener.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// Size of each connection's read buffer, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    buffer: u64,
}

const LISTENER: Token = Token(0);

/// Returns `Err(last_os_error)` when a libc call returned -1.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A non-blocking listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let (domain, storage, len) = sockaddr(addr);
    // SAFETY: plain socket creation; the descriptor is owned right below.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh socket that nothing else owns; the listener
    // closes it on every path from here.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `one` is a live c_int and the length says so.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    cvt(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    // SAFETY: `fd` is a bound stream socket.
    cvt(unsafe { libc::listen(fd, 1024) })?;
    Ok(listener)
}

fn sockaddr(addr: SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and aligned for any
            // socket address.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            (libc::AF_INET, storage, len)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (libc::AF_INET6, storage, len)
        }
    }
}

/// One connection: its socket and the bytes read but not yet written back
/// (`buf[pos..len]`).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Conn {
    /// Echoes until the socket would block. Returns `false` when the
    /// connection is finished (EOF or error) and must be dropped.
    fn drive(&mut self) -> bool {
        loop {
            while self.pos < self.len {
                match self.stream.write(&self.buf[self.pos..self.len]) {
                    Ok(0) => return false,
                    Ok(n) => self.pos += n,
                    // The rest waits for the writable edge.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            self.pos = 0;
            self.len = 0;
            match self.stream.read(&mut self.buf) {
                Ok(0) => return false,
                Ok(n) => self.len = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// One thread's event loop.
fn event_loop(addr: SocketAddr, buffer: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = reuseport_listener(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    // Connection `i` has token `i + 1`; freed slots are reused.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let slot = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            let interest = Interest::READABLE | Interest::WRITABLE;
                            if poll
                                .registry()
                                .register(&mut stream, Token(slot + 1), interest)
                                .is_err()
                            {
                                free.push(slot);
                                continue;
                            }
                            conns[slot] = Some(Conn {
                                stream,
                                buf: vec![0; buffer],
                                pos: 0,
                                len: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of descriptors or similar: leave the rest
                            // queued for the next event.
                            eprintln!("echo_mio: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let slot = event.token().0 - 1;
            let done = match conns.get_mut(slot).and_then(Option::as_mut) {
                Some(conn) => !conn.drive(),
                None => false,
            };
            if done {
                if let Some(mut conn) = conns[slot].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(slot);
            }
        }
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let buffer = args.buffer as usize;
    let threads: Vec<_> = (0..args.workers)
        .map(|i| {
            let addr = args.addr;
            std::thread::Builder::new()
                .name(format!("echo-mio-{i}"))
                .spawn(move || event_loop(addr, buffer))
        })
        .collect::<io::Result<_>>()?;
    for t in threads {
        t.join()
            .unwrap_or_else(|_| Err(io::Error::other("event loop panicked")))?;
    }
    Ok(())
}
