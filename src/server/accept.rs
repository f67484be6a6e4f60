//! The accept loop: admits connections up to the limit, and backs off
//! (never spins) when the process runs out of descriptors or memory, or a
//! connection's fiber cannot be spawned.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Conn, Listener, State};

/// True for `accept` errors that mean "out of descriptors or memory".
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections until the server stops, handing each to `admit`
/// (which spawns its fiber, or parks it idle in request mode).
pub(super) fn accept_loop<A>(listener: Listener, state: Arc<State>, admit: A)
where
    A: Fn(Conn, &Arc<State>) -> io::Result<()>,
{
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = match &listener {
            Listener::Tcp(l, _) => l.accept().and_then(|(s, peer)| {
                if state.is_stopping() {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                Conn::new_tcp(s, peer, state.clone())
            }),
            Listener::Unix(l, _) => l.accept().and_then(|(s, _)| {
                if state.is_stopping() {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                Conn::new_unix(s, state.clone())
            }),
        };
        if state.is_stopping() {
            return;
        }
        match accepted {
            Ok(conn) => {
                if !backoff.is_zero() {
                    log::info!("accepting connections again");
                    backoff = Duration::ZERO;
                }
                if state.active.load(Ordering::Relaxed) >= state.config.max_connections {
                    state.rejected.fetch_add(1, Ordering::Relaxed);
                    drop(conn);
                    continue;
                }
                state.accepted.fetch_add(1, Ordering::Relaxed);
                state.active.fetch_add(1, Ordering::AcqRel);
                if let Err(e) = admit(conn, &state) {
                    state.spawn_failed.fetch_add(1, Ordering::Relaxed);
                    if backoff.is_zero() {
                        log::warn!(
                            "cannot spawn a connection fiber: {e}; closed the connection, \
                             backing off (open connections keep being served)"
                        );
                    }
                    backoff = next_backoff(backoff);
                    state.pause_acceptor(backoff);
                }
            }
            Err(e) if is_resource_exhaustion(&e) => {
                if backoff.is_zero() {
                    log::warn!("accept: {e}; backing off (open connections keep being served)");
                }
                backoff = next_backoff(backoff);
                state.pause_acceptor(backoff);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                log::error!("accept: {e}");
                crate::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The acceptor's next pause: 1 ms, doubling to 1 s.
fn next_backoff(backoff: Duration) -> Duration {
    if backoff.is_zero() {
        Duration::from_millis(1)
    } else {
        (backoff * 2).min(Duration::from_secs(1))
    }
}
