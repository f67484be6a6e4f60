//! The connection a handler receives.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::State;
use crate::net::{TcpStream, UnixStream};

/// Last I/O seen on a connection, used by graceful shutdown to tell a
/// connection waiting for its next request from one in the middle of one.
pub(crate) const FRESH: u8 = 0;
pub(crate) const READ: u8 = 1;
pub(crate) const WROTE: u8 = 2;

/// What the server keeps about a live connection.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) fd: RawFd,
    pub(crate) last_io: AtomicU8,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Shutdown already applied (`SHUT_RD` = 1, `SHUT_RDWR` = 2).
    pub(crate) cut: AtomicU8,
}

/// The remote end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix socket peer (usually unnamed).
    Unix(String),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connection handed to a server handler: a TCP or Unix stream that
/// implements `Read` and `Write` (for `Conn` and `&Conn`), and whose traffic
/// the server counts.
///
/// Reads and writes time out with `TimedOut` after the server's idle timeout,
/// unless the handler sets its own timeouts.
pub struct Conn {
    stream: Stream,
    peer: PeerAddr,
    tracked: Arc<Tracked>,
    state: Arc<State>,
    slot: usize,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("stream", &self.stream)
            .finish()
    }
}

impl Conn {
    pub(crate) fn new_tcp(s: TcpStream, peer: SocketAddr, state: Arc<State>) -> io::Result<Conn> {
        if let Some(idle) = state.config.idle_timeout {
            s.set_read_timeout(Some(idle))?;
            s.set_write_timeout(Some(idle))?;
        }
        let fd = s.as_raw_fd();
        Ok(Conn::track(Stream::Tcp(s), PeerAddr::Tcp(peer), fd, state))
    }

    pub(crate) fn new_unix(s: UnixStream, state: Arc<State>) -> io::Result<Conn> {
        if let Some(idle) = state.config.idle_timeout {
            s.set_read_timeout(Some(idle))?;
            s.set_write_timeout(Some(idle))?;
        }
        let peer = match s.peer_addr() {
            Ok(a) => a
                .as_pathname()
                .map_or_else(|| "unnamed".to_string(), |p| p.display().to_string()),
            Err(_) => "unnamed".to_string(),
        };
        let fd = s.as_raw_fd();
        Ok(Conn::track(
            Stream::Unix(s),
            PeerAddr::Unix(peer),
            fd,
            state,
        ))
    }

    fn track(stream: Stream, peer: PeerAddr, fd: RawFd, state: Arc<State>) -> Conn {
        let tracked = Arc::new(Tracked {
            fd,
            last_io: AtomicU8::new(FRESH),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            cut: AtomicU8::new(0),
        });
        let slot = state.register(tracked.clone());
        Conn {
            stream,
            peer,
            tracked,
            state,
            slot,
        }
    }

    /// The remote address.
    pub fn peer_addr(&self) -> &PeerAddr {
        &self.peer
    }

    /// The TCP stream, for TCP connections (to set options such as
    /// `TCP_NODELAY`).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }

    /// Sets `TCP_NODELAY` on TCP connections; a no-op on Unix sockets.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_nodelay(on),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Sets the read timeout (replacing the server's idle timeout).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    /// Sets the write timeout (replacing the server's idle timeout).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// True once the server has begun a graceful shutdown: a handler that
    /// loops over requests may finish the current one and return.
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_stopping()
    }

    /// What the reactor knows about pending input without a system call
    /// (see `TcpStream::read_ready_hint`); `None` when nothing is known.
    pub(crate) fn read_hint(&self) -> Option<bool> {
        match &self.stream {
            Stream::Tcp(s) => s.read_ready_hint(),
            Stream::Unix(_) => None,
        }
    }

    /// Bytes read from the connection so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.tracked.bytes_in.load(Ordering::Relaxed)
    }

    /// Whether input, end of file or an error is pending, asked of the
    /// kernel with a zero-timeout `poll(2)`; clears a stale read bit.
    pub(crate) fn poll_read_ready(&self) -> io::Result<bool> {
        match &self.stream {
            Stream::Tcp(s) => s.poll_read_ready(),
            Stream::Unix(s) => s.poll_read_ready(),
        }
    }

    /// Tells `hook`, once, with `token`, on the reactor's worker, when the
    /// connection is next readable; false, handing nothing over, when input
    /// is already known to be pending or nothing can report it (see
    /// `IoSource::on_readable`).
    pub(crate) fn on_readable(
        &self,
        hook: std::sync::Weak<dyn crate::io::ReadHook>,
        token: u64,
    ) -> bool {
        match &self.stream {
            Stream::Tcp(s) => s.on_readable(hook, token),
            Stream::Unix(s) => s.on_readable(hook, token),
        }
    }

    fn note_read(&self, r: &io::Result<usize>) {
        if let Ok(n) = r {
            if *n > 0 {
                self.tracked
                    .bytes_in
                    .fetch_add(*n as u64, Ordering::Relaxed);
                self.tracked.last_io.store(READ, Ordering::Relaxed);
            }
        }
    }

    fn note_write(&self, r: &io::Result<usize>) {
        if let Ok(n) = r {
            self.tracked
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
            self.tracked.last_io.store(WROTE, Ordering::Relaxed);
        }
    }

    /// Reads what the connection has now into the spare capacity of
    /// `buf`, after its contents, without zeroing it first, and returns
    /// how many bytes it appended (0: end of file); see
    /// [`TcpStream::read_append`](crate::net::TcpStream::read_append). In
    /// request mode this reads into the runner's buffer
    /// ([`Request::parts`](crate::server::Request::parts)) without paying
    /// to zero its 16 KiB on every request.
    ///
    /// # Errors
    ///
    /// As for `read`.
    pub fn read_append(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let r = match &self.stream {
            Stream::Tcp(s) => s.read_append(buf),
            Stream::Unix(s) => s.read_append(buf),
        };
        self.note_read(&r);
        r
    }

    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &self.stream {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        };
        self.note_read(&r);
        r
    }

    fn read_vectored_inner(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let r = match &self.stream {
            Stream::Tcp(s) => (&*s).read_vectored(bufs),
            Stream::Unix(s) => (&*s).read_vectored(bufs),
        };
        self.note_read(&r);
        r
    }

    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        let r = match &self.stream {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        };
        self.note_write(&r);
        r
    }

    fn write_vectored_inner(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = match &self.stream {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
        };
        self.note_write(&r);
        r
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Leave the registry before the descriptor closes, so a shutdown
        // sweep can never hit a reused descriptor number.
        self.state.unregister(self.slot, &self.tracked);
    }
}

crate::net::impl_read_write!(Conn);

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.tracked.fd
    }
}
