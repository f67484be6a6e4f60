//! Request mode: a connection's state between requests ([`Session`]) and
//! one turn of its requests ([`handle_request`]), with the buffers the
//! turns of a worker pass on to one another.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{peer_gone, Conn, Ctx, FIRST_READ, INPUT_INITIAL, OUTPUT_INITIAL};
use crate::stats::ConnStat;
use crate::{binary, text};

/// The protocol a request-mode connection speaks, once its first byte
/// told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Unknown,
    Text,
    Binary,
}

/// What a connection keeps between requests in request mode: its counters
/// and `stats conns` entry (released when it drops), and its protocol. No
/// buffer: about a hundred bytes.
#[derive(Debug)]
pub struct Session {
    ctx: Arc<Ctx>,
    id: (u64, u64),
    stat: Arc<ConnStat>,
    proto: Proto,
}

impl Session {
    /// A new connection, listed by `stats conns` under `id` (its socket
    /// number) with its peer address.
    pub fn new(ctx: Arc<Ctx>, id: u64, peer: String) -> Session {
        ctx.curr_conns.fetch_add(1, Ordering::Relaxed);
        ctx.total_conns.add(1);
        let (id, stat) = ctx.conns.insert(id, peer, ctx.store.now());
        Session {
            ctx,
            id,
            stat,
            proto: Proto::Unknown,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.curr_conns.fetch_sub(1, Ordering::Relaxed);
        self.ctx.conns.remove(self.id);
    }
}

/// Input and output buffers a worker's request-mode turns pass on to one
/// another, as memcached keeps a per-thread cache of read buffers: a turn
/// takes a pair and gives it back, so a request neither zeroes its input
/// buffer again (it stays initialised) nor allocates and frees its 4 KiB
/// output buffer, which glibc serves under the arena lock.
#[derive(Default)]
pub(super) struct Spares {
    pub(super) pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Pairs a worker keeps: more are needed only while that many turns wait
/// for input in the middle of a request at once.
const SPARES_KEPT: usize = 4;
/// An output buffer that grew past this (a large multi-get) is not kept.
const SPARE_OUTPUT_MAX: usize = 64 * 1024;

thread_local! {
    // Taken and given back in two short calls with no park inside either;
    // a turn's fiber stays on its worker (request runners are not
    // stealable), so both calls reach the same worker's cache.
    pub(super) static SPARES: std::cell::RefCell<Spares> = std::cell::RefCell::default();
}

impl Spares {
    /// A pair for a turn: an input buffer zeroed up to its length (at least
    /// `FIRST_READ`), and an empty output buffer.
    fn take() -> (Vec<u8>, Vec<u8>) {
        SPARES
            .with(|s| s.borrow_mut().pairs.pop())
            .unwrap_or_else(|| (vec![0; FIRST_READ], Vec::with_capacity(OUTPUT_INITIAL)))
    }

    /// Gives a turn's pair back (the input buffer at its length, which
    /// `Conn::into_buffers` has brought back to at most `INPUT_INITIAL`).
    fn give(mut pair: (Vec<u8>, Vec<u8>)) {
        if pair.1.capacity() > SPARE_OUTPUT_MAX {
            pair.1 = Vec::with_capacity(OUTPUT_INITIAL);
        }
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            if s.pairs.len() < SPARES_KEPT {
                s.pairs.push(pair);
            }
        });
    }
}

/// One turn of a request-mode connection: serves the requests that are
/// readable now, each exactly as [`handle_conn_from`](super::handle_conn_from) would, and returns at the
/// first request boundary with nothing left buffered (`Next::Idle`: the
/// connection idles with no fiber and no buffer), or `Next::Close` when the
/// client quits, hangs up or breaks the protocol. The turn borrows its
/// buffers from its worker's spares (the request runner's own buffer goes
/// unused).
///
/// # Errors
///
/// I/O errors other than the peer going away.
pub fn handle_request<S: Read + Write>(
    stream: S,
    session: &mut Session,
) -> io::Result<weave::server::Next> {
    use weave::server::Next;
    // Borrowed, not cloned: a clone and drop of the shared `Arc` per
    // request is two atomic writes to one cache line from every worker
    // (and, for the connection's own entry, two to its line).
    let Session {
        ctx, stat, proto, ..
    } = session;
    let ctx: &Ctx = ctx;
    let mut c = Conn::for_request(stream, ctx, Spares::take());
    c.stat = Some(stat);
    let r = (|| {
        if *proto == Proto::Unknown {
            if !c.fill(INPUT_INITIAL)? {
                return Ok(());
            }
            *proto = if c.data()[0] == binary::REQ_MAGIC {
                Proto::Binary
            } else {
                Proto::Text
            };
        }
        match *proto {
            Proto::Binary => binary::serve(&mut c, ctx)?,
            _ => text::serve(&mut c, ctx)?,
        }
        c.flush()
    })();
    let idle = c.went_idle;
    Spares::give(c.into_buffers());
    match r {
        Ok(()) if idle => Ok(Next::Idle),
        Ok(()) => Ok(Next::Close),
        Err(e) if peer_gone(&e) => Ok(Next::Close),
        Err(e) => Err(e),
    }
}
