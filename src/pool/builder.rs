//! Pool settings and their defaults.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::*;

/// Configures a [`Pool`]; see the [module docs](crate::pool) for the defaults.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let pool: weave::pool::Pool = weave::pool::Pool::builder()
///     .max_open(8)
///     .max_idle(4)
///     .wait_timeout(Duration::from_millis(200))
///     .build();
/// # let _ = pool;
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) max_open: usize,
    pub(super) max_idle: usize,
    pub(super) wait_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) check_after: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            config: Config {
                max_open: 64,
                max_idle: 16,
                wait_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                check_after: Duration::ZERO,
            },
        }
    }
}

impl Builder {
    /// Most connections open per peer, idle and checked out together
    /// (at least 1).
    pub fn max_open(mut self, n: usize) -> Builder {
        self.config.max_open = n.max(1);
        self
    }

    /// Most idle connections kept per peer; a connection returned past this
    /// closes the oldest idle one.
    pub fn max_idle(mut self, n: usize) -> Builder {
        self.config.max_idle = n;
        self
    }

    /// How long [`Pool::get`] waits for a connection when `max_open` are
    /// checked out, before it fails with `TimedOut`.
    pub fn wait_timeout(mut self, d: Duration) -> Builder {
        self.config.wait_timeout = d;
        self
    }

    /// Timeout for opening a connection (a zero duration is taken as 1 ms).
    pub fn connect_timeout(mut self, d: Duration) -> Builder {
        self.config.connect_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Idle connections older than this are closed instead of handed out.
    pub fn idle_timeout(mut self, d: Duration) -> Builder {
        self.config.idle_timeout = d;
        self
    }

    /// Hands out connections idle for less than `d` without the liveness
    /// check (default zero: always check). For TCP the check seldom needs
    /// a system call (see [`Connect::is_reusable`] for `SocketAddr`), so
    /// this mostly matters for keys whose check is expensive; skipping it
    /// trades that cost for the rare request that meets a peer which
    /// closed in the meantime (it sees the error through the guard
    /// instead).
    pub fn check_after(mut self, d: Duration) -> Builder {
        self.config.check_after = d;
        self
    }

    /// Builds the pool.
    pub fn build<K: Connect>(self) -> Pool<K> {
        Pool {
            inner: Arc::new(Inner {
                config: self.config,
                peers: RwLock::new(Vec::new()),
            }),
        }
    }
}
