//! The checked-out connection guard.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// A checked-out connection: dereferences to it, and returns it to the
/// pool when dropped, but only when that is known to be safe.
///
/// # When a connection goes back
///
/// The pool is fail-safe: a connection left in the middle of an exchange
/// (a request sent, its reply not read, because of a panic, an early
/// return, a timeout or a cancellation) would hand the next caller someone
/// else's reply. So the guard returns the connection only when
///
/// - nothing was done with it since checkout (no `Read`/`Write` through
///   the guard, no access through `Deref`/`DerefMut`), or the caller said
///   the exchange is over with [`done`](Self::done) after the last such
///   access;
/// - it is not [broken](Self::mark_broken) (an error or end-of-file seen
///   through the guard, or [`discard`](Self::discard));
/// - the guard is not dropped by an unwind (a panic or a cancellation).
///
/// Otherwise the connection is closed. Call `done()` once the reply has
/// been read completely.
pub struct Pooled<K: Connect> {
    pub(super) conn: Option<K::Conn>,
    pub(super) peer: Arc<Peer<K>>,
    pub(super) config_max_idle: usize,
    pub(super) reused: bool,
    pub(super) broken: bool,
    /// The connection was used since checkout or the last `done()`: an
    /// exchange may be in flight.
    pub(super) in_flight: AtomicBool,
}

impl<K: Connect> Pooled<K> {
    /// Says the exchange is complete (the whole reply was read): nothing is
    /// in flight, so the connection may go back to the pool when the guard
    /// drops. Using the connection again after this starts a new exchange,
    /// which needs its own `done()`.
    pub fn done(&mut self) {
        self.in_flight.store(false, Ordering::Relaxed);
    }

    /// Whether the connection was used since checkout or the last
    /// [`done`](Self::done): dropped now, it would be closed.
    pub fn is_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Closes the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.broken = true;
    }

    /// Marks the connection broken: it will be closed, not returned, when
    /// the guard drops. Use it after an error seen outside this guard's
    /// `Read`/`Write` (say, a reply that made no sense).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the connection is marked broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether this connection came from the idle list (rather than being
    /// opened for this checkout). A request that fails on a reused
    /// connection before any reply arrived may deserve one retry on a new
    /// one: the peer may have closed it just as it was handed out.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The key this connection belongs to.
    pub fn key(&self) -> &K {
        &self.peer.key
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::Interrupted {
                self.broken = true;
            }
        }
        r
    }
}

impl<K: Connect> Deref for Pooled<K> {
    type Target = K::Conn;
    fn deref(&self) -> &K::Conn {
        self.in_flight.store(true, Ordering::Relaxed);
        self.conn
            .as_ref()
            .expect("a Pooled guard holds its connection until dropped")
    }
}

impl<K: Connect> DerefMut for Pooled<K> {
    fn deref_mut(&mut self) -> &mut K::Conn {
        self.in_flight.store(true, Ordering::Relaxed);
        self.conn
            .as_mut()
            .expect("a Pooled guard holds its connection until dropped")
    }
}

/// Reads through the connection; an error, or end-of-file on a non-empty
/// buffer, marks it broken.
impl<K: Connect> Read for Pooled<K>
where
    K::Conn: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.deref_mut().read(buf);
        if matches!(r, Ok(0)) && !buf.is_empty() {
            self.broken = true;
        }
        self.note(r)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let want = bufs.iter().any(|b| !b.is_empty());
        let r = self.deref_mut().read_vectored(bufs);
        if matches!(r, Ok(0)) && want {
            self.broken = true;
        }
        self.note(r)
    }
}

/// Writes through the connection; an error marks it broken.
impl<K: Connect> Write for Pooled<K>
where
    K::Conn: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.deref_mut().write(buf);
        self.note(r)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = self.deref_mut().write_vectored(bufs);
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.deref_mut().flush();
        self.note(r)
    }
}

impl<K: Connect> Drop for Pooled<K> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Fail-safe: only a connection known to be between exchanges goes
        // back (see the type's docs).
        if self.broken || self.in_flight.load(Ordering::Relaxed) || std::thread::panicking() {
            drop(conn);
            self.peer.close_one();
        } else {
            self.peer.put_back(conn, self.config_max_idle);
        }
    }
}

impl<K: Connect> fmt::Debug for Pooled<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("key", &self.peer.key)
            .field("reused", &self.reused)
            .field("broken", &self.broken)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}
