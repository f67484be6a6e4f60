//! Keys: what the pool can open connections for.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::net::TcpStream;

/// A key the pool can open connections for: a peer address, or anything
/// that knows how to reach its peer.
///
/// Keys are kept sorted (`Ord`) and compared on every lookup, so they
/// should be cheap to compare.
///
/// # Examples
///
/// A key that names a server and connects with `TCP_NODELAY` off:
///
/// ```
/// use std::io;
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use weave::net::TcpStream;
/// use weave::pool::Connect;
///
/// #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
/// struct Nagle(SocketAddr);
///
/// impl Connect for Nagle {
///     type Conn = TcpStream;
///     fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
///         TcpStream::connect_timeout(&self.0, timeout)
///     }
///     fn is_reusable(&self, conn: &TcpStream) -> bool {
///         self.0.is_reusable(conn)
///     }
/// }
/// let pool = weave::pool::Pool::<Nagle>::new();
/// # let _ = pool;
/// ```
pub trait Connect: Clone + Ord + fmt::Debug + Send + Sync + 'static {
    /// The connection type.
    type Conn: Send + 'static;

    /// Opens a new connection, giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// Whatever stopped the connection (refused, timed out, ...).
    fn connect(&self, timeout: Duration) -> io::Result<Self::Conn>;

    /// Whether an idle connection can be handed out again: false if the
    /// peer closed it, reset it, or sent bytes nobody asked for. Must not
    /// block.
    fn is_reusable(&self, conn: &Self::Conn) -> bool;
}

impl Connect for SocketAddr {
    type Conn = TcpStream;

    /// Connects with [`TcpStream::connect_timeout`] and sets `TCP_NODELAY`
    /// (pooled connections carry requests and replies).
    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(self, timeout)?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// An idle connection should have no input pending: readable means
    /// end-of-file (the peer closed), an error, or stray bytes, and all
    /// three make the connection unusable.
    ///
    /// First the reactor's readiness word is read (no system call): if the
    /// connection is registered, its last read drained it and no event
    /// since reported input, a hang-up or an error, it is reusable.
    /// Otherwise (never registered, or input may be pending) a
    /// zero-timeout `poll(2)` decides, which also registers the connection
    /// and clears a stale read bit so that the next check can skip the
    /// system call. Never parks.
    fn is_reusable(&self, conn: &TcpStream) -> bool {
        conn.read_ready_hint() == Some(false) || matches!(conn.poll_read_ready(), Ok(false))
    }
}
