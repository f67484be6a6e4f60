use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;

use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::Timeouts;
use crate::io::{Direction, IoSource};

/// A Unix domain socket server.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use weave::net::{UnixListener, UnixStream};
///
/// let path = std::env::temp_dir().join(format!("weave-doc-{}.sock", std::process::id()));
/// let _ = std::fs::remove_file(&path);
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// let p = path.clone();
/// rt.block_on(move || -> std::io::Result<()> {
///     let listener = UnixListener::bind(&p)?;
///     let client = weave::spawn(move || -> std::io::Result<()> {
///         UnixStream::connect(&p)?.write_all(b"hi")
///     });
///     let (mut conn, _) = listener.accept()?;
///     let mut s = String::new();
///     conn.read_to_string(&mut s)?;
///     assert_eq!(s, "hi");
///     client.join().unwrap()
/// })?;
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixListener {
    io: IoSource<mio::net::UnixListener>,
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("fd", &self.io.raw_fd())
            .finish()
    }
}

impl UnixListener {
    /// Binds a listener to the socket file `path` (which must not exist).
    ///
    /// # Errors
    ///
    /// `bind(2)` errors, such as `AddrInUse` when the file exists.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixListener> {
        crate::sys::ignore_sigpipe();
        Ok(Self::from_mio(mio::net::UnixListener::bind(path)?))
    }

    fn from_mio(l: mio::net::UnixListener) -> UnixListener {
        UnixListener {
            io: IoSource::new(l),
        }
    }

    /// Accepts a connection, parking the fiber until one arrives.
    ///
    /// # Errors
    ///
    /// `accept(2)` errors.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = self.io.do_io(Direction::Read, None, |l| l.accept())?;
        Ok((UnixStream::from_mio(s), addr))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }
}

super::impl_fd!(
    UnixListener,
    std::os::unix::net::UnixListener,
    mio::net::UnixListener
);

/// A Unix domain stream connection. `Read` and `Write` are implemented for
/// `UnixStream` and `&UnixStream`.
pub struct UnixStream {
    io: IoSource<mio::net::UnixStream>,
    timeouts: Timeouts,
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("fd", &self.io.raw_fd())
            .finish()
    }
}

impl UnixStream {
    fn from_mio(s: mio::net::UnixStream) -> UnixStream {
        UnixStream {
            io: IoSource::new(s),
            timeouts: Timeouts::default(),
        }
    }

    /// Wraps a `std` Unix stream, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made non-blocking.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        stream.set_nonblocking(true)?;
        Ok(Self::from_mio(mio::net::UnixStream::from_std(stream)))
    }

    /// Connects to the socket at `path`.
    ///
    /// # Errors
    ///
    /// `connect(2)` errors, such as `NotFound` or `ConnectionRefused`.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<UnixStream> {
        crate::sys::ignore_sigpipe();
        let s = Self::from_mio(mio::net::UnixStream::connect(path)?);
        s.io.do_io(Direction::Write, None, |s| {
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
        Ok(s)
    }

    /// A connected pair of sockets.
    ///
    /// # Errors
    ///
    /// `socketpair(2)` errors.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        crate::sys::ignore_sigpipe();
        let (a, b) = mio::net::UnixStream::pair()?;
        Ok((Self::from_mio(a), Self::from_mio(b)))
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.get_ref().shutdown(how)
    }

    /// Sets the read timeout (`None`: wait forever).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Read, timeout)
    }

    /// Sets the write timeout (`None`: wait forever).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Write, timeout)
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// `getpeername(2)` errors.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// Reads what the socket has now into the spare capacity of `buf`,
    /// after its contents, without zeroing it first; see
    /// [`TcpStream::read_append`](crate::net::TcpStream::read_append).
    ///
    /// # Errors
    ///
    /// As for `read`: `recv(2)` errors, or `TimedOut` after the read
    /// timeout.
    pub fn read_append(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.io
            .read_append(self.timeouts.deadline(Direction::Read), buf)
    }

    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.recv(self.timeouts.deadline(Direction::Read), buf)
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

    /// Whether input, end-of-file or an error is pending, asked of the
    /// kernel (see `TcpStream::poll_read_ready`).
    pub(crate) fn poll_read_ready(&self) -> io::Result<bool> {
        self.io.poll_readable_now()
    }

    fn read_vectored_inner(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.io.do_io(
            Direction::Read,
            self.timeouts.deadline(Direction::Read),
            |mut s| s.read_vectored(bufs),
        )
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

crate::net::impl_read_write!(UnixStream);

super::impl_fd!(
    UnixStream,
    std::os::unix::net::UnixStream,
    mio::net::UnixStream
);

super::readiness!(UnixListener);
super::readiness!(UnixStream);
