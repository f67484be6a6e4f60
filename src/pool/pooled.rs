//! The checked-out connection guard.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::*;

/// A checked-out connection: dereferences to it, and returns it to the
/// pool when dropped, unless it was [discarded](Self::discard) or saw an
/// error through this guard's `Read`/`Write`.
pub struct Pooled<K: Connect> {
    pub(super) conn: Option<K::Conn>,
    pub(super) peer: Arc<Peer<K>>,
    pub(super) config_max_idle: usize,
    pub(super) reused: bool,
    pub(super) broken: bool,
}

impl<K: Connect> Pooled<K> {
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
        self.conn
            .as_ref()
            .expect("a Pooled guard holds its connection until dropped")
    }
}

impl<K: Connect> DerefMut for Pooled<K> {
    fn deref_mut(&mut self) -> &mut K::Conn {
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
        if self.broken {
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
            .finish()
    }
}
