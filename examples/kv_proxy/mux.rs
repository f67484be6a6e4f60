//! Backend connections: one per worker and backend, shared by the
//! worker's clients, with a reader fiber that frames replies and hands
//! them to the waiting clients in order.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Instant;

use weave::net::TcpStream;

use crate::parse::{is_error_line, parse_num, tokens, trim_cr, Input};
use crate::{Proxy, MAX_REPLY_LINE};

/// A reply that is one line (storage, `delete`, `incr`, `flush_all`, ...).
pub(crate) const KIND_LINE: u8 = 0;
/// A `get`/`gets` reply: `VALUE` blocks up to `END`, or an error line.
pub(crate) const KIND_GET: u8 = 1;

pub(crate) fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client connection's share of a backend's replies to the current
/// batch.
#[derive(Debug, Default)]
pub(crate) struct Seg {
    /// The reply kind of each request sent, in order.
    pub(crate) kinds: Vec<u8>,
    /// Replies received so far.
    pub(crate) next: usize,
    /// The replies, as the backend sent them.
    pub(crate) buf: Vec<u8>,
    /// The backend failed before every reply came.
    pub(crate) failed: bool,
}

#[derive(Debug)]
pub(crate) struct WaitState {
    /// Per backend.
    pub(crate) segs: Vec<Seg>,
    /// Segments not yet complete or failed.
    pub(crate) outstanding: usize,
}

/// Where the backends' reader fibers put a client's replies; the client
/// fiber parks until all of its batch's replies are in.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) state: StdMutex<WaitState>,
    pub(crate) fiber: weave::fiber::Fiber,
}

impl Waiter {
    fn kind(&self, b: usize) -> u8 {
        let st = lock(&self.state);
        let seg = &st.segs[b];
        seg.kinds[seg.next]
    }

    /// Adds the next reply from backend `b`; returns whether that was the
    /// last one this client expects from `b`.
    fn deliver(&self, b: usize, reply: &[u8]) -> bool {
        let mut st = lock(&self.state);
        let seg = &mut st.segs[b];
        seg.buf.extend_from_slice(reply);
        seg.next += 1;
        if seg.next < seg.kinds.len() {
            return false;
        }
        st.outstanding -= 1;
        let wake = st.outstanding == 0;
        drop(st);
        if wake {
            self.fiber.unpark();
        }
        true
    }

    /// Backend `b` failed before all of this client's replies came.
    fn fail(&self, b: usize) {
        let mut st = lock(&self.state);
        st.segs[b].failed = true;
        st.outstanding -= 1;
        let wake = st.outstanding == 0;
        drop(st);
        if wake {
            self.fiber.unpark();
        }
    }
}

/// A client's requests on a backend connection, waiting for replies.
#[derive(Debug)]
struct Pending {
    waiter: Arc<Waiter>,
    since: Instant,
}

/// One worker's connection to one backend, shared by every client
/// connection on that worker: requests are appended to `out` (and their
/// clients to `queue`, in the same order) and written in one go by
/// whichever client found no flush under way; a reader fiber per
/// connection hands the replies back in order.
#[derive(Debug)]
pub(crate) struct Mux {
    b: usize,
    st: StdMutex<MuxState>,
}

#[derive(Debug, Default)]
struct MuxState {
    conn: Option<Arc<TcpStream>>,
    /// Bumped whenever the connection changes; a reader or writer of an
    /// older connection leaves the state alone.
    epoch: u64,
    /// Requests not yet written.
    out: Vec<u8>,
    /// Sent (or about to be sent) and not fully answered, in send order.
    queue: VecDeque<Pending>,
    /// A client is writing `out`; others only append.
    flushing: bool,
}

impl Mux {
    /// Queues a client's requests; returns whether the caller must flush.
    pub(crate) fn push(&self, req: &[u8], waiter: &Arc<Waiter>) -> bool {
        let mut st = lock(&self.st);
        st.out.extend_from_slice(req);
        st.queue.push_back(Pending {
            waiter: waiter.clone(),
            since: Instant::now(),
        });
        !std::mem::replace(&mut st.flushing, true)
    }

    /// Writes `out` until it stays empty, connecting first if needed.
    pub(crate) fn flush(self: &Arc<Self>, p: &Arc<Proxy>) {
        let mut buf = Vec::new();
        loop {
            let (conn, epoch) = {
                let mut st = lock(&self.st);
                if st.out.is_empty() {
                    st.flushing = false;
                    return;
                }
                buf.clear();
                std::mem::swap(&mut buf, &mut st.out);
                (st.conn.clone(), st.epoch)
            };
            let (conn, epoch) = match conn {
                Some(c) => (c, epoch),
                None => match connect(p, self.b) {
                    Ok(c) => {
                        p.mark_up(self.b);
                        let c = Arc::new(c);
                        let epoch = {
                            let mut st = lock(&self.st);
                            st.epoch += 1;
                            st.conn = Some(c.clone());
                            st.epoch
                        };
                        let (p, mux, rc) = (p.clone(), self.clone(), c.clone());
                        weave::spawn(move || read_replies(&p, &mux, &rc, epoch));
                        (c, epoch)
                    }
                    Err(e) => {
                        p.mark_down(self.b, &e);
                        self.fail(None);
                        continue;
                    }
                },
            };
            if let Err(e) = (&*conn).write_all(&buf) {
                log::debug!("backend {}: {e}", p.backends[self.b].addr);
                self.fail(Some(epoch));
            }
        }
    }

    /// Closes the connection (if it is still the one of `epoch`) and fails
    /// every client waiting on it or queued for it.
    fn fail(&self, epoch: Option<u64>) {
        let queue = {
            let mut st = lock(&self.st);
            if epoch.is_some_and(|e| e != st.epoch) {
                return;
            }
            st.epoch += 1;
            if let Some(c) = st.conn.take() {
                let _ = c.shutdown(Shutdown::Both);
            }
            st.out.clear();
            std::mem::take(&mut st.queue)
        };
        for w in queue {
            w.waiter.fail(self.b);
        }
    }
}

pub(crate) fn connect(p: &Proxy, b: usize) -> io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&p.backends[b].addr, p.io_timeout)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(p.io_timeout))?;
    c.set_write_timeout(Some(p.io_timeout))?;
    Ok(c)
}

/// The length of the complete reply of `kind` at the start of `data`, or
/// `None` if more bytes are needed. `scan` is where checking resumes (the
/// end of the `VALUE` blocks already found complete).
fn frame(data: &[u8], kind: u8, scan: &mut usize, item_max: usize) -> io::Result<Option<usize>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    loop {
        let rest = &data[*scan..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_REPLY_LINE {
                return Err(bad("reply line too long"));
            }
            return Ok(None);
        };
        let end = *scan + nl + 1;
        let line = trim_cr(&rest[..nl]);
        if kind == KIND_LINE || line == b"END" || is_error_line(line) {
            return Ok(Some(end));
        }
        let mut t = tokens(line);
        let (Some(b"VALUE"), Some(_key), Some(_flags), Some(len)) =
            (t.next(), t.next(), t.next(), t.next())
        else {
            return Err(bad("bad VALUE line"));
        };
        let len: usize = parse_num(len)
            .filter(|&n| n <= item_max.max(1 << 20) * 2)
            .ok_or_else(|| bad("bad VALUE length"))?;
        let block_end = end + len + 2;
        if data.len() < block_end {
            return Ok(None);
        }
        *scan = block_end;
    }
}

/// The reader fiber of one backend connection: frames replies and hands
/// each to the client that asked, in order, until the connection fails or
/// is replaced.
fn read_replies(p: &Proxy, mux: &Mux, conn: &TcpStream, epoch: u64) {
    let b = mux.b;
    let mut input = Input::new(64 * 1024);
    let mut cur: Option<Pending> = None;
    let mut scan = 0;
    let why: io::Error = 'run: loop {
        while !input.data().is_empty() {
            if cur.is_none() {
                let mut st = lock(&mux.st);
                if st.epoch != epoch {
                    break 'run io::Error::other("connection replaced");
                }
                cur = st.queue.pop_front();
            }
            let Some(c) = &cur else {
                break 'run io::Error::new(io::ErrorKind::InvalidData, "reply nobody asked for");
            };
            let kind = c.waiter.kind(b);
            match frame(input.data(), kind, &mut scan, p.item_max) {
                Err(e) => break 'run e,
                Ok(None) => break,
                Ok(Some(n)) => {
                    if c.waiter.deliver(b, &input.data()[..n]) {
                        cur = None;
                    }
                    input.consume(n);
                    scan = 0;
                }
            }
        }
        let want = input.data().len() + 1;
        match input.fill(&mut &*conn, want) {
            Ok(true) => {}
            Ok(false) => break io::ErrorKind::UnexpectedEof.into(),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                // Only a request left unanswered for the whole timeout
                // counts; an idle connection just waits on.
                let oldest = cur.as_ref().map(|c| c.since).or_else(|| {
                    let st = lock(&mux.st);
                    (st.epoch == epoch)
                        .then(|| st.queue.front().map(|c| c.since))
                        .flatten()
                });
                if oldest.is_some_and(|t| t.elapsed() >= p.io_timeout) {
                    break e;
                }
            }
            Err(e) => break e,
        }
    };
    if let Some(c) = cur {
        c.waiter.fail(b);
    }
    if lock(&mux.st).epoch == epoch {
        log::debug!("backend {}: {why}", p.backends[b].addr);
    }
    mux.fail(Some(epoch));
}

thread_local! {
    /// This worker's connection to each backend.
    static MUXES: OnceCell<Arc<[Arc<Mux>]>> = const { OnceCell::new() };
}

pub(crate) fn worker_muxes(n: usize) -> Arc<[Arc<Mux>]> {
    MUXES.with(|m| {
        m.get_or_init(|| {
            (0..n)
                .map(|b| {
                    Arc::new(Mux {
                        b,
                        st: StdMutex::new(MuxState::default()),
                    })
                })
                .collect()
        })
        .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_framed_whole() {
        let mut scan = 0;
        let f = |d: &[u8], k, scan: &mut usize| frame(d, k, scan, 1 << 20).unwrap();
        assert_eq!(f(b"STORED\r\nEND\r\n", KIND_LINE, &mut scan), Some(8));
        assert_eq!(f(b"STOR", KIND_LINE, &mut scan), None);
        assert_eq!(f(b"END\r\n", KIND_GET, &mut scan), Some(5));
        assert_eq!(
            f(b"SERVER_ERROR x\r\nEND\r\n", KIND_GET, &mut scan),
            Some(16)
        );
        // A get reply arriving piecewise: complete blocks are not rescanned.
        let whole = b"VALUE a 0 2\r\nxy\r\nVALUE b 5 1\r\nz\r\nEND\r\nNOT_FOUND\r\n";
        let mut scan = 0;
        assert_eq!(f(&whole[..15], KIND_GET, &mut scan), None);
        assert_eq!(scan, 0);
        assert_eq!(f(&whole[..20], KIND_GET, &mut scan), None);
        assert_eq!(scan, 17);
        assert_eq!(f(&whole[..36], KIND_GET, &mut scan), None);
        assert_eq!(f(whole, KIND_GET, &mut scan), Some(38));
        // Data that looks like END inside a value is not the end.
        let tricky = b"VALUE a 0 5\r\nEND\r\n\r\nEND\r\n";
        assert_eq!(f(tricky, KIND_GET, &mut 0), Some(tricky.len()));
        assert!(frame(b"VALUE a 0 x\r\n", KIND_GET, &mut 0, 1 << 20).is_err());
        assert!(frame(b"HELLO\r\n", KIND_GET, &mut 0, 1 << 20).is_err());
        assert!(frame(&[b'x'; MAX_REPLY_LINE + 1], KIND_LINE, &mut 0, 1 << 20).is_err());
    }
}
