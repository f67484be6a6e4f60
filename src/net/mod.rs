//! Networking types shaped like `std::net`: [`TcpListener`], [`TcpStream`],
//! [`UdpSocket`], [`UnixListener`], [`UnixStream`].
//!
//! Every operation that would block parks the calling fiber until the socket
//! is ready (see the reactor notes in the crate docs); the worker runs other
//! fibers meanwhile. Both `T` and `&T` implement `Read`/`Write` for the stream
//! types, so `BufReader`, `BufWriter` and full-duplex use (one fiber reads
//! while another writes the same socket) work as with `std`.
//!
//! **Outside a runtime** (on a plain thread) these types block the calling
//! thread, like `std::net`: they wait in `poll(2)`.
//!
//! A write to a peer that has closed returns `Err` (`BrokenPipe` or
//! `ConnectionReset`): building a runtime ignores `SIGPIPE` for the process.

/// Readiness waits and the [`Select`](crate::Select) arms of a net type
/// (whose socket is the field `io`).
macro_rules! readiness {
    ($ty:ident) => {
        impl $ty {
            /// Blocks until the socket is readable: data (or, on a listener,
            /// a connection) is waiting, the peer closed, or an error is
            /// pending, so that the next read (or `accept`) returns at once.
            /// On a fiber it parks; a cancellation point.
            ///
            /// # Errors
            ///
            /// If waiting fails (a closed descriptor).
            pub fn readable(&self) -> std::io::Result<()> {
                self.io.wait_ready($crate::io::Direction::Read)
            }

            /// Blocks until the socket is writable (or an error is pending),
            /// so that the next write makes progress at once. On a fiber it
            /// parks; a cancellation point.
            ///
            /// # Errors
            ///
            /// If waiting fails (a closed descriptor).
            pub fn writable(&self) -> std::io::Result<()> {
                self.io.wait_ready($crate::io::Direction::Write)
            }
        }

        impl $crate::select::imp::IoArm for $ty {
            fn io_arm(&self, write: bool) -> Box<dyn $crate::select::imp::Source + '_> {
                Box::new($crate::io::IoArm {
                    io: &self.io,
                    dir: if write {
                        $crate::io::Direction::Write
                    } else {
                        $crate::io::Direction::Read
                    },
                })
            }
        }

        impl $crate::select::Pollable for $ty {}
    };
}
pub(crate) use readiness;

mod tcp;
mod udp;
mod unix;

pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::io::Direction;

/// Implements `Read` and `Write` for a stream type and for a shared reference
/// to it (as std does for `TcpStream` and `&TcpStream`), forwarding to the
/// type's `read_inner`, `read_vectored_inner`, `write_inner` and
/// `write_vectored_inner` methods, which take `&self`. `flush` has nothing to
/// do: writes are not buffered.
macro_rules! impl_read_write {
    ($t:ty) => {
        $crate::net::impl_read_write!(@one $t);
        $crate::net::impl_read_write!(@one &$t);
    };
    (@one $t:ty) => {
        impl ::std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> ::std::io::Result<usize> {
                self.read_inner(buf)
            }

            fn read_vectored(
                &mut self,
                bufs: &mut [::std::io::IoSliceMut<'_>],
            ) -> ::std::io::Result<usize> {
                self.read_vectored_inner(bufs)
            }
        }

        impl ::std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> ::std::io::Result<usize> {
                self.write_inner(buf)
            }

            fn write_vectored(&mut self, bufs: &[::std::io::IoSlice<'_>]) -> ::std::io::Result<usize> {
                self.write_vectored_inner(bufs)
            }

            fn flush(&mut self) -> ::std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use impl_read_write;

/// Implements the descriptor traits and the std conversions for a socket
/// type whose `io` field is an `IoSource<$mio>` and which has a
/// `from_mio($mio) -> Self` constructor: `AsFd`, `AsRawFd`, `IntoRawFd`,
/// `FromRawFd`, `From<$std>` and `into_std`.
macro_rules! impl_fd {
    ($t:ident, $std:ty, $mio:ty) => {
        impl ::std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> ::std::os::fd::RawFd {
                self.io.raw_fd()
            }
        }

        impl ::std::os::fd::AsFd for $t {
            fn as_fd(&self) -> ::std::os::fd::BorrowedFd<'_> {
                // SAFETY: the descriptor stays open as long as `self`, which
                // the returned borrow cannot outlive.
                unsafe { ::std::os::fd::BorrowedFd::borrow_raw(self.io.raw_fd()) }
            }
        }

        impl ::std::os::fd::IntoRawFd for $t {
            /// Takes the socket out of its poller and gives up ownership of
            /// the descriptor, still in non-blocking mode.
            fn into_raw_fd(self) -> ::std::os::fd::RawFd {
                ::std::os::fd::IntoRawFd::into_raw_fd(self.io.into_source())
            }
        }

        impl ::std::os::fd::FromRawFd for $t {
            /// Takes ownership of `fd`, switching it to non-blocking mode.
            ///
            /// # Safety
            ///
            /// `fd` must be an open socket of this type that the caller owns.
            unsafe fn from_raw_fd(fd: ::std::os::fd::RawFd) -> $t {
                // SAFETY: passed on from the caller.
                <$t>::from(unsafe { <$std as ::std::os::fd::FromRawFd>::from_raw_fd(fd) })
            }
        }

        impl ::std::convert::From<$std> for $t {
            /// Wraps a std socket, switching it to non-blocking mode (a
            /// failure to switch, which only a descriptor that is not a
            /// socket can cause, is ignored: every operation checks
            /// readiness).
            fn from(s: $std) -> $t {
                let _ = s.set_nonblocking(true);
                <$t>::from_mio(<$mio>::from_std(s))
            }
        }

        impl $t {
            /// Converts into the std type: the socket leaves its poller and
            /// goes back to blocking mode. Timeouts set on this value are
            /// not carried over (set them again on the std socket).
            ///
            /// # Errors
            ///
            /// If the socket cannot be switched back to blocking mode.
            pub fn into_std(self) -> ::std::io::Result<$std> {
                let fd = ::std::os::fd::IntoRawFd::into_raw_fd(self);
                // SAFETY: `fd` was just released by this socket, which owned it.
                let s = unsafe { <$std as ::std::os::fd::FromRawFd>::from_raw_fd(fd) };
                s.set_nonblocking(false)?;
                Ok(s)
            }
        }
    };
}
pub(crate) use impl_fd;

/// A socket's read and write timeouts, each stored in an atomic
/// (nanoseconds, 0 = none), so a socket shared by reference between fibers
/// can change them. Clones made with [`share`](Self::share) see the same
/// values, as duplicated descriptors share `SO_RCVTIMEO` in std.
///
/// Every read and every write looks its timeout up, so until the socket is
/// first cloned the two live in the socket itself, beside the fields each
/// operation reads anyway (a separate allocation cost one cache line per
/// operation once a thousand other connections ran since). The first
/// `share` moves them into an allocation that the clones hold too.
#[derive(Debug, Default)]
pub(crate) struct Timeouts {
    /// The timeouts while no clone exists.
    own: [AtomicU64; 2],
    /// Once the socket was cloned: the timeouts shared with its clones
    /// (`own` is not used any more).
    shared: std::sync::OnceLock<std::sync::Arc<[AtomicU64; 2]>>,
    /// Taken by `set` and `share`: a timeout set while `share` copies `own`
    /// is neither lost nor written to the copy's source after the copy.
    update: std::sync::Mutex<()>,
}

impl Timeouts {
    fn cells(&self) -> &[AtomicU64; 2] {
        self.shared.get().map_or(&self.own, |a| a)
    }

    fn cell(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Read => &self.cells()[0],
            Direction::Write => &self.cells()[1],
        }
    }

    /// Sets `dir`'s timeout; a zero duration is an `InvalidInput` error,
    /// as in std.
    pub(crate) fn set(&self, dir: Direction, d: Option<Duration>) -> io::Result<()> {
        let nanos = match d {
            None => 0,
            Some(d) if d.is_zero() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot set a 0 duration timeout",
                ))
            }
            Some(d) => d.as_nanos().min(u64::MAX as u128) as u64,
        };
        let _update = self.update.lock().unwrap_or_else(|e| e.into_inner());
        self.cell(dir).store(nanos, Ordering::Relaxed);
        Ok(())
    }

    /// The same timeouts, for a clone of the socket.
    pub(crate) fn share(&self) -> Timeouts {
        let _update = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let shared = self.shared.get_or_init(|| {
            let [r, w] = &self.own;
            std::sync::Arc::new([
                AtomicU64::new(r.load(Ordering::Relaxed)),
                AtomicU64::new(w.load(Ordering::Relaxed)),
            ])
        });
        Timeouts {
            shared: std::sync::OnceLock::from(shared.clone()),
            ..Timeouts::default()
        }
    }

    /// `dir`'s timeout.
    pub(crate) fn get(&self, dir: Direction) -> Option<Duration> {
        match self.cell(dir).load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// The deadline for an operation in direction `dir` starting now.
    pub(crate) fn deadline(&self, dir: Direction) -> Option<Instant> {
        self.get(dir).and_then(|d| Instant::now().checked_add(d))
    }
}

/// Resolves `addr` inline (no offload: used where the address is nearly
/// always an IP literal, as in bind and send_to) and calls `f` on each
/// address until one succeeds, returning the last error otherwise (as
/// `std::net` does).
pub(crate) fn each_addr<A: ToSocketAddrs, T>(
    addr: A,
    f: impl FnMut(&SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    first_ok(addr.to_socket_addrs()?, f)
}

/// Calls `f` on each address until one succeeds; the last error otherwise.
pub(crate) fn first_ok<T>(
    addrs: impl IntoIterator<Item = SocketAddr>,
    mut f: impl FnMut(&SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addrs {
        match f(&a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

/// Resolves `addr` without stalling the worker: on a fiber, the lookup
/// (which may be a blocking `getaddrinfo`) runs on the
/// [blocking pool](crate::blocking) while the fiber parks.
///
/// std's socket-address types (`SocketAddr`, `(IpAddr, u16)`, slices of
/// them) never touch DNS, so they resolve inline and skip the pool's thread
/// hop. They are recognised by type name: only a performance hint, since a
/// wrong guess either way just moves where a correct lookup runs.
pub(crate) fn resolve_offloaded<A: ToSocketAddrs + Sync>(addr: &A) -> io::Result<Vec<SocketAddr>> {
    let name = std::any::type_name::<A>();
    let no_dns = name.contains("::net::") && !name.contains("str") && !name.contains("String");
    if no_dns || !crate::runtime::context::in_fiber() {
        return Ok(addr.to_socket_addrs()?.collect());
    }
    crate::blocking::unblock_scoped(|| addr.to_socket_addrs().map(Iterator::collect))
}

/// Duplicates a descriptor (close-on-exec), for `try_clone`.
pub(crate) fn dup_fd(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new
    // descriptor, which we immediately wrap to own it.
    let new = unsafe { crate::sys::syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)) }?;
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}
