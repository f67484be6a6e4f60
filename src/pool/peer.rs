//! One peer's connections, idle list and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::sync::{Condvar, Mutex};

use super::*;

/// One peer: its connections and counters.
pub(super) struct Peer<K: Connect> {
    pub(super) key: K,
    pub(super) state: Mutex<PeerState<K::Conn>>,
    pub(super) freed: Condvar,
    pub(super) counters: Counters,
}

pub(super) struct PeerState<C> {
    /// Most recently returned last.
    pub(super) idle: Vec<Idle<C>>,
    /// Connections open: idle, checked out, or being opened.
    pub(super) open: usize,
    /// Fibers or threads parked in `get`.
    pub(super) waiting: usize,
    /// Set by `Pool::remove`: returned connections are closed.
    pub(super) removed: bool,
}

pub(super) struct Idle<C> {
    pub(super) conn: C,
    pub(super) since: Instant,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) opened: AtomicU64,
    pub(super) reused: AtomicU64,
    discarded: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) timeouts: AtomicU64,
}

/// A snapshot of one peer's counters, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Connections opened.
    pub opened: u64,
    /// Checkouts served by an idle connection.
    pub reused: u64,
    /// Connections closed instead of kept: errors, [`Pooled::discard`],
    /// dead or expired idle ones, surplus over `max_idle`.
    pub discarded: u64,
    /// `get` calls that had to wait for a connection.
    pub waits: u64,
    /// `get` calls that gave up waiting (`TimedOut`).
    pub timeouts: u64,
    /// Connections open now (idle or checked out).
    pub open: usize,
    /// Idle connections now.
    pub idle: usize,
}

impl<K: Connect> Peer<K> {
    pub(super) fn stats(&self) -> PeerStats {
        let (open, idle) = {
            let st = lock(&self.state);
            (st.open, st.idle.len())
        };
        let c = &self.counters;
        PeerStats {
            opened: c.opened.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            open,
            idle,
        }
    }

    /// Frees the open slot of a connection that was never opened.
    pub(super) fn release_slot(&self) {
        let mut st = lock(&self.state);
        st.open -= 1;
        let notify = st.waiting > 0;
        drop(st);
        if notify {
            self.freed.notify_one();
        }
    }

    /// Counts a connection closed (already dropped by the caller) and frees
    /// its slot.
    pub(super) fn close_one(&self) {
        self.counters.discarded.fetch_add(1, Ordering::Relaxed);
        self.release_slot();
    }

    /// Takes a connection back: into the idle list, or closed.
    pub(super) fn put_back(&self, conn: K::Conn, max_idle: usize) {
        let mut st = lock(&self.state);
        if st.removed || max_idle == 0 {
            drop(st);
            drop(conn);
            self.close_one();
            return;
        }
        let surplus = if st.idle.len() >= max_idle {
            Some(st.idle.remove(0))
        } else {
            None
        };
        st.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        let notify = st.waiting > 0;
        drop(st);
        if notify {
            self.freed.notify_one();
        }
        if let Some(old) = surplus {
            drop(old);
            self.close_one();
        }
    }
}
