use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use std::time::Duration;

use super::{each_addr, Timeouts};
use crate::io::{Direction, IoSource};

/// A UDP socket.
///
/// # Examples
///
/// ```
/// use weave::net::UdpSocket;
///
/// let rt = weave::Runtime::builder().workers(1).build()?;
/// rt.block_on(|| -> std::io::Result<()> {
///     let a = UdpSocket::bind("127.0.0.1:0")?;
///     let b = UdpSocket::bind("127.0.0.1:0")?;
///     a.send_to(b"ping", b.local_addr()?)?;
///     let mut buf = [0u8; 16];
///     let (n, from) = b.recv_from(&mut buf)?;
///     assert_eq!((&buf[..n], from), (&b"ping"[..], a.local_addr()?));
///     Ok(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UdpSocket {
    io: IoSource<mio::net::UdpSocket>,
    timeouts: Timeouts,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .field("fd", &self.io.raw_fd())
            .finish()
    }
}

impl UdpSocket {
    /// Binds a socket to the first address of `addr` that works.
    ///
    /// # Errors
    ///
    /// The last address's error.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        each_addr(addr, |a| mio::net::UdpSocket::bind(*a)).map(Self::from_mio)
    }

    fn from_mio(s: mio::net::UdpSocket) -> UdpSocket {
        UdpSocket {
            io: IoSource::new(s),
            timeouts: Timeouts::default(),
        }
    }

    /// Sends a datagram to `target`.
    ///
    /// # Errors
    ///
    /// `sendto(2)` errors, or `TimedOut`.
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], target: A) -> io::Result<usize> {
        let target = each_addr(target, |a| Ok(*a))?;
        self.io.do_io(
            Direction::Write,
            self.timeouts.deadline(Direction::Write),
            |s| s.send_to(buf, target),
        )
    }

    /// Receives a datagram and its sender's address.
    ///
    /// # Errors
    ///
    /// `recvfrom(2)` errors, or `TimedOut`.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.do_io(
            Direction::Read,
            self.timeouts.deadline(Direction::Read),
            |s| s.recv_from(buf),
        )
    }

    /// Like [`recv_from`](Self::recv_from), leaving the datagram queued.
    ///
    /// # Errors
    ///
    /// As [`recv_from`](Self::recv_from).
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.do_io(
            Direction::Read,
            self.timeouts.deadline(Direction::Read),
            |s| s.peek_from(buf),
        )
    }

    /// Sets the default peer for [`send`](Self::send) and filters
    /// [`recv`](Self::recv) to it.
    ///
    /// # Errors
    ///
    /// `connect(2)` errors.
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        each_addr(addr, |a| self.io.get_ref().connect(*a))
    }

    /// Sends to the connected peer.
    ///
    /// # Errors
    ///
    /// `send(2)` errors (`ConnectionRefused` after an ICMP error), or
    /// `TimedOut`.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.do_io(
            Direction::Write,
            self.timeouts.deadline(Direction::Write),
            |s| s.send(buf),
        )
    }

    /// Receives from the connected peer.
    ///
    /// # Errors
    ///
    /// `recv(2)` errors, or `TimedOut`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.do_io(
            Direction::Read,
            self.timeouts.deadline(Direction::Read),
            |s| s.recv(buf),
        )
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// The connected peer's address.
    ///
    /// # Errors
    ///
    /// `NotConnected` if not connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// Sets the receive timeout (`None`: wait forever).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Read, timeout)
    }

    /// Sets the send timeout (`None`: wait forever).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Direction::Write, timeout)
    }

    /// Sets `SO_BROADCAST`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.io.get_ref().set_broadcast(on)
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

super::impl_fd!(UdpSocket, std::net::UdpSocket, mio::net::UdpSocket);

super::readiness!(UdpSocket);
