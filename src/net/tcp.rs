use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use super::{dup_fd, each_addr, first_ok, resolve_offloaded, Timeouts};
use crate::io::{Direction, IoSource};

/// A TCP socket server, listening for connections.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use weave::net::{TcpListener, TcpStream};
///
/// let rt = weave::Runtime::builder().workers(2).build()?;
/// rt.block_on(|| -> std::io::Result<()> {
///     let listener = TcpListener::bind("127.0.0.1:0")?;
///     let addr = listener.local_addr()?;
///     let server = weave::spawn(move || -> std::io::Result<()> {
///         let (mut conn, _) = listener.accept()?;
///         let mut buf = [0u8; 5];
///         conn.read_exact(&mut buf)?;
///         conn.write_all(&buf)
///     });
///     let mut client = TcpStream::connect(addr)?;
///     client.write_all(b"hello")?;
///     let mut back = [0u8; 5];
///     client.read_exact(&mut back)?;
///     assert_eq!(&back, b"hello");
///     server.join().unwrap()
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpListener {
    io: IoSource<mio::net::TcpListener>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.local_addr().ok())
            .field("fd", &self.io.raw_fd())
            .finish()
    }
}

impl TcpListener {
    /// Binds a listener (with `SO_REUSEADDR` and a backlog of 1024) to the
    /// first address of `addr` that works.
    ///
    /// # Errors
    ///
    /// The last address's error (address in use, permission denied, ...).
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        crate::sys::ignore_sigpipe();
        each_addr(addr, |a| mio::net::TcpListener::bind(*a)).map(Self::from_mio)
    }

    /// Binds with `SO_REUSEPORT` as well, so several listeners (one per
    /// worker) can share one port and the kernel spreads connections among
    /// them.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind).
    pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
        crate::sys::ignore_sigpipe();
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket creation; the result is owned right below.
        let fd = unsafe {
            crate::sys::syscall!(socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0
            ))
        }?;
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let listener = unsafe { mio::net::TcpListener::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            // SAFETY: `one` is a valid c_int for the option's size.
            unsafe {
                crate::sys::syscall!(setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t
                ))
            }?;
        }
        bind_and_listen(fd, &addr)?;
        Ok(Self::from_mio(listener))
    }

    /// Wraps a `std` listener, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(Self::from_mio(mio::net::TcpListener::from_std(listener)))
    }

    fn from_mio(l: mio::net::TcpListener) -> TcpListener {
        TcpListener {
            io: IoSource::new(l),
        }
    }

    /// Accepts a connection, parking the fiber until one arrives.
    ///
    /// # Errors
    ///
    /// `accept(2)` errors, such as `EMFILE` when the process is out of
    /// descriptors.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept_until(None)
    }

    /// Like [`accept`](Self::accept), but gives up with `TimedOut` at
    /// `deadline`.
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept), plus `TimedOut`.
    pub fn accept_until(&self, deadline: Option<Instant>) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, addr) = self.io.do_io(Direction::Read, deadline, |l| l.accept())?;
        Ok((TcpStream::from_mio(s), addr))
    }

    /// An iterator over incoming connections (never returns `None`).
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Sets `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.get_ref().set_ttl(ttl)
    }

    /// Takes the pending socket error (`SO_ERROR`).
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.get_ref().take_error()
    }
}

fn bind_and_listen(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    unsafe {
        crate::sys::syscall!(bind(
            fd,
            (&storage as *const libc::sockaddr_storage).cast(),
            len
        ))
    }?;
    // SAFETY: `fd` is a bound stream socket.
    unsafe { crate::sys::syscall!(listen(fd, 1024)) }?;
    Ok(())
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
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
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

super::impl_fd!(TcpListener, std::net::TcpListener, mio::net::TcpListener);

/// Iterator returned by [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A TCP connection. `Read` and `Write` are implemented for `TcpStream` and
/// for `&TcpStream`.
pub struct TcpStream {
    io: IoSource<mio::net::TcpStream>,
    timeouts: Timeouts,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .field("fd", &self.io.raw_fd())
            .finish()
    }
}

impl TcpStream {
    fn from_mio(s: mio::net::TcpStream) -> TcpStream {
        TcpStream {
            io: IoSource::new(s),
            timeouts: Timeouts::default(),
        }
    }

    /// Wraps a `std` stream, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Ok(Self::from_mio(mio::net::TcpStream::from_std(stream)))
    }

    /// Opens a connection to the first address of `addr` that accepts.
    ///
    /// A host name is looked up on the [blocking pool](crate::blocking)
    /// while the fiber parks, so a slow DNS server stalls only this fiber.
    /// (That is why `addr` must be `Sync`, which every std address type is:
    /// the pool thread reads it.)
    ///
    /// # Errors
    ///
    /// The lookup's error, or the last address's error (refused,
    /// unreachable, ...).
    pub fn connect<A: ToSocketAddrs + Sync>(addr: A) -> io::Result<TcpStream> {
        first_ok(resolve_offloaded(&addr)?, |a| Self::connect_until(a, None))
    }

    /// Opens a connection to `addr`, giving up with `TimedOut` after
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// `TimedOut`, or the connection's error.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        Self::connect_until(addr, Instant::now().checked_add(timeout))
    }

    fn connect_until(addr: &SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
        crate::sys::ignore_sigpipe();
        let stream = Self::from_mio(mio::net::TcpStream::connect(*addr)?);
        // The connect is in progress; it has finished when the socket turns
        // writable, and then `SO_ERROR` or `getpeername` tell the outcome.
        stream.io.do_io(Direction::Write, deadline, |s| {
            if let Some(e) = s.take_error()? {
                return Err(e);
            }
            match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(stream)
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// `NotConnected` and other `getpeername(2)` errors.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.get_ref().shutdown(how)
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm).
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(nodelay)
    }

    /// Reads `TCP_NODELAY`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.get_ref().nodelay()
    }

    /// Sets `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.get_ref().set_ttl(ttl)
    }

    /// Sets the read timeout: a read that waits longer fails with
    /// `TimedOut`. `None` waits forever.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration, as `std`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Read, timeout)
    }

    /// Sets the write timeout; see [`set_read_timeout`](Self::set_read_timeout).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration, as `std`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Write, timeout)
    }

    /// The read timeout.
    ///
    /// # Errors
    ///
    /// Never fails; `io::Result` for `std` parity.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.timeouts.get(Direction::Read))
    }

    /// The write timeout.
    ///
    /// # Errors
    ///
    /// Never fails; `io::Result` for `std` parity.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.timeouts.get(Direction::Write))
    }

    /// Reads what the socket has now (parking until something arrives,
    /// as [`read`](std::io::Read::read) does) into the spare capacity of
    /// `buf`, after its contents, and returns how many bytes it appended;
    /// 0 means end of file. The spare capacity needs no zeroing first, which
    /// a `read` into `buf.resize(buf.capacity(), 0)` pays for on every
    /// call. A `buf` without spare capacity first grows by 4 KiB.
    ///
    /// # Errors
    ///
    /// As for `read`: `recv(2)` errors, or `TimedOut` after the read
    /// timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// let rt = weave::Runtime::builder().workers(1).build()?;
    /// rt.block_on(|| {
    ///     let listener = weave::net::TcpListener::bind("127.0.0.1:0")?;
    ///     let mut client = weave::net::TcpStream::connect(listener.local_addr()?)?;
    ///     let (server, _) = listener.accept()?;
    ///     client.write_all(b"hello")?;
    ///     let mut buf = Vec::with_capacity(64);
    ///     buf.extend_from_slice(b"> ");
    ///     let mut n = 0;
    ///     while n < 5 {
    ///         n += server.read_append(&mut buf)?;
    ///     }
    ///     assert_eq!(buf, b"> hello");
    ///     Ok::<(), std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read_append(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.io
            .read_append(self.timeouts.deadline(Direction::Read), buf)
    }

    /// Reads without removing the data from the socket's queue.
    ///
    /// # Errors
    ///
    /// `recv(2)` errors, or `TimedOut`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.do_io(
            Direction::Read,
            self.timeouts.deadline(Direction::Read),
            |s| s.peek(buf),
        )
    }

    /// Takes the pending socket error (`SO_ERROR`).
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.get_ref().take_error()
    }

    /// A second handle to the same connection (a duplicated descriptor).
    /// The read and write timeouts are shared with it, as std's clones
    /// share `SO_RCVTIMEO`/`SO_SNDTIMEO`: setting one on either handle
    /// changes both.
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors, such as `EMFILE`.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        let fd = dup_fd(self.io.raw_fd())?;
        // SAFETY: `fd` is a fresh, owned duplicate of a connected TCP socket.
        let s = unsafe { mio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let mut clone = Self::from_mio(s);
        // Shared, as duplicated descriptors share `SO_RCVTIMEO` in std.
        clone.timeouts = self.timeouts.share();
        Ok(clone)
    }

    /// Whether the reactor has seen input pending on this connection, read
    /// without a system call: `None` if the socket was never registered
    /// with a reactor (nothing is known), `Some(true)` if bytes, end-of-file
    /// or an error may be waiting, `Some(false)` if the last read drained
    /// the socket and no event fetched since reported anything. Events the
    /// worker has not polled yet are not seen, so `Some(false)` is a hint,
    /// like a `poll(2)` that is a few fiber runs old.
    pub(crate) fn read_ready_hint(&self) -> Option<bool> {
        self.io.read_hint()
    }

    /// Whether input, end-of-file or an error is pending, asked of the
    /// kernel (a zero-timeout `poll(2)`; never parks). On a fiber it also
    /// registers the socket with the reactor and, when nothing is pending,
    /// clears a stale read bit, so that [`read_ready_hint`](Self::read_ready_hint)
    /// can answer without a system call next time.
    pub(crate) fn poll_read_ready(&self) -> io::Result<bool> {
        self.io.poll_readable_now()
    }

    /// Tells `hook` once when the socket is next readable (see
    /// `IoSource::on_readable`); false if it was not handed over.
    pub(crate) fn on_readable(
        &self,
        hook: std::sync::Weak<dyn crate::io::ReadHook>,
        token: u64,
    ) -> bool {
        self.io.on_readable(hook, token)
    }

    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.recv(self.timeouts.deadline(Direction::Read), buf)
    }

    fn read_vectored_inner(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let want = bufs.iter().map(|b| b.len()).sum();
        self.io
            .do_read(self.timeouts.deadline(Direction::Read), want, |mut s| {
                s.read_vectored(bufs)
            })
    }

    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.send(self.timeouts.deadline(Direction::Write), buf)
    }

    fn write_vectored_inner(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.io.do_io(
            Direction::Write,
            self.timeouts.deadline(Direction::Write),
            |mut s| s.write_vectored(bufs),
        )
    }
}

crate::net::impl_read_write!(TcpStream);

super::impl_fd!(TcpStream, std::net::TcpStream, mio::net::TcpStream);

super::readiness!(TcpListener);
super::readiness!(TcpStream);
