//! Running a batch: sending its requests to the backends and merging the
//! replies back in the client's order.

use std::io::{self, Write};
use std::sync::Arc;

use weave::server::Conn;

use crate::mux::{lock, Mux, Waiter};
use crate::parse::{is_error_line, parse_num, tokens, trim_cr, Batch, Op};
use crate::{Proxy, OUTPUT_FLUSH_AT, UNAVAILABLE};

/// One backend's replies to a batch, read back by the client, or why the
/// backend failed.
#[derive(Debug, Default)]
pub(crate) struct Link {
    data: Vec<u8>,
    pos: usize,
    failed: bool,
    /// Requests of this batch went to this backend.
    sent: bool,
}

impl Link {
    fn fail(&mut self) {
        self.failed = true;
        self.pos = self.data.len();
    }

    fn rest(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    /// Reads one line (without `\r\n`) into `line`.
    fn line(&mut self, line: &mut Vec<u8>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("backend failed"));
        }
        let Some(nl) = self.rest().iter().position(|&b| b == b'\n') else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        line.clear();
        line.extend_from_slice(trim_cr(&self.rest()[..nl]));
        self.pos += nl + 1;
        Ok(())
    }

    /// Reads exactly `n` bytes onto the end of `out`.
    fn bytes(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.rest().len() < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.extend_from_slice(&self.rest()[..n]);
        self.pos += n;
        Ok(())
    }
}

/// A client connection's links to the backends.
pub(crate) struct Backends {
    pub(crate) muxes: Arc<[Arc<Mux>]>,
    pub(crate) waiter: Arc<Waiter>,
    pub(crate) links: Vec<Link>,
    /// Per backend: this client must write the queued requests.
    pub(crate) flush: Vec<bool>,
}

/// Sends the batch's requests to the backends it needs and waits until
/// every reply is in `links` (or its backend failed).
fn send_batch(p: &Arc<Proxy>, batch: &Batch, be: &mut Backends) {
    let mut n = 0;
    {
        let mut st = lock(&be.waiter.state);
        for (b, req) in batch.reqs.iter().enumerate() {
            let link = &mut be.links[b];
            link.failed = false;
            link.sent = false;
            link.data.clear();
            link.pos = 0;
            if req.is_empty() {
                continue;
            }
            if p.is_down(b) {
                link.failed = true;
                continue;
            }
            let seg = &mut st.segs[b];
            seg.kinds.clear();
            seg.kinds.extend_from_slice(&batch.kinds[b]);
            seg.next = 0;
            seg.buf.clear();
            seg.failed = false;
            link.sent = true;
            n += 1;
        }
        st.outstanding = n;
    }
    if n == 0 {
        return;
    }
    let mut any_flush = false;
    for (b, req) in batch.reqs.iter().enumerate() {
        let f = be.links[b].sent && be.muxes[b].push(req, &be.waiter);
        be.flush[b] = f;
        any_flush |= f;
    }
    if any_flush {
        // Let the other clients that are ready queue their requests too,
        // then write them all at once.
        weave::yield_now();
        for b in 0..be.flush.len() {
            if be.flush[b] {
                be.muxes[b].flush(p);
            }
        }
    }
    while lock(&be.waiter.state).outstanding > 0 {
        weave::fiber::park();
    }
    let mut st = lock(&be.waiter.state);
    for (b, link) in be.links.iter_mut().enumerate() {
        if link.sent {
            let seg = &mut st.segs[b];
            std::mem::swap(&mut link.data, &mut seg.buf);
            link.failed = seg.failed;
        }
    }
}

/// Scratch space for one `get`'s replies.
#[derive(Debug, Default)]
pub(crate) struct GetScratch {
    /// Reply bytes (VALUE lines and data) of all backends.
    pub(crate) bytes: Vec<u8>,
    /// Per backend: (key range, block range) in `bytes`, in reply order.
    pub(crate) blocks: Vec<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>>,
    /// Per backend: next block to match.
    pub(crate) cursor: Vec<usize>,
    /// Per backend: reply already read.
    pub(crate) read: Vec<bool>,
    pub(crate) line: Vec<u8>,
}

/// Reads backend `b`'s reply to a `get` into `s`. `Ok(Some(line))` for an
/// error line from the backend.
fn read_get_reply(
    p: &Proxy,
    link: &mut Link,
    b: usize,
    s: &mut GetScratch,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        link.line(&mut s.line)?;
        if s.line == b"END" {
            return Ok(None);
        }
        if is_error_line(&s.line) {
            return Ok(Some(s.line.clone()));
        }
        let mut t = tokens(&s.line);
        let (Some(b"VALUE"), Some(key), Some(_flags), Some(len)) =
            (t.next(), t.next(), t.next(), t.next())
        else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad VALUE line"));
        };
        let len: usize = parse_num(len)
            .filter(|&n| n <= p.item_max.max(1 << 20) * 2)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad VALUE length"))?;
        let key_len = key.len();
        let key_off = key.as_ptr() as usize - s.line.as_ptr() as usize;
        let block_start = s.bytes.len();
        s.bytes.extend_from_slice(&s.line);
        s.bytes.extend_from_slice(b"\r\n");
        let key_start = block_start + key_off;
        link.bytes(len + 2, &mut s.bytes)?;
        if !s.bytes.ends_with(b"\r\n") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad data block"));
        }
        s.blocks[b].push((key_start..key_start + key_len, block_start..s.bytes.len()));
    }
}

/// Runs a batch: send, then read every reply in order into `out`.
pub(crate) fn run_batch(
    p: &Arc<Proxy>,
    batch: &Batch,
    be: &mut Backends,
    s: &mut GetScratch,
    out: &mut Vec<u8>,
    client: &mut Conn,
) -> io::Result<()> {
    send_batch(p, batch, be);
    let links = &mut be.links[..];
    let mut line = Vec::new();
    for op in &batch.ops {
        match *op {
            Op::Local(reply) => out.extend_from_slice(reply),
            Op::Version => {
                out.extend_from_slice(
                    concat!("VERSION kv_proxy-", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes(),
                );
            }
            Op::Single { b, noreply } => {
                let link = &mut links[b];
                let reply = if link.failed {
                    Err(())
                } else {
                    link.line(&mut line).map_err(|e| {
                        log::debug!("backend {}: {e}", p.backends[b].addr);
                        link.fail();
                    })
                };
                match reply {
                    Ok(()) if noreply && !is_error_line(&line) => {}
                    Ok(()) => {
                        out.extend_from_slice(&line);
                        out.extend_from_slice(b"\r\n");
                    }
                    Err(()) => out.extend_from_slice(UNAVAILABLE),
                }
            }
            Op::Broadcast { noreply } => {
                let mut ok = true;
                for (b, link) in links.iter_mut().enumerate() {
                    if link.failed || link.line(&mut line).is_err() {
                        if !link.failed {
                            log::debug!("backend {}: flush_all failed", p.backends[b].addr);
                            link.fail();
                        }
                        ok = false;
                    } else if line != b"OK" {
                        ok = false;
                    }
                }
                if !ok {
                    out.extend_from_slice(UNAVAILABLE);
                } else if !noreply {
                    out.extend_from_slice(b"OK\r\n");
                }
            }
            Op::Get { ref keys } => get_op(p, batch, keys.clone(), links, s, out),
        }
        if out.len() >= OUTPUT_FLUSH_AT {
            client.write_all(out)?;
            out.clear();
        }
    }
    Ok(())
}

/// Reads the replies to one `get` from each backend it touched and merges
/// them in the client's key order.
fn get_op(
    p: &Proxy,
    batch: &Batch,
    keys: std::ops::Range<usize>,
    links: &mut [Link],
    s: &mut GetScratch,
    out: &mut Vec<u8>,
) {
    let keys = &batch.keys[keys];
    s.bytes.clear();
    s.blocks.iter_mut().for_each(Vec::clear);
    s.cursor.iter_mut().for_each(|c| *c = 0);
    let mut error: Option<Vec<u8>> = None;
    s.read.clear();
    s.read.resize(links.len(), false);
    for &(_, b) in keys {
        if std::mem::replace(&mut s.read[b], true) {
            continue; // this backend's reply is already read
        }
        let link = &mut links[b];
        if link.failed {
            error.get_or_insert_with(|| UNAVAILABLE.to_vec());
            continue;
        }
        match read_get_reply(p, link, b, s) {
            Ok(None) => {}
            Ok(Some(line)) => {
                let mut l = line;
                l.extend_from_slice(b"\r\n");
                error.get_or_insert(l);
            }
            Err(e) => {
                log::debug!("backend {}: {e}", p.backends[b].addr);
                link.fail();
                error.get_or_insert_with(|| UNAVAILABLE.to_vec());
            }
        }
    }
    if let Some(e) = error {
        out.extend_from_slice(&e);
        return;
    }
    // Each backend answered its keys in the order asked, hits only: walk
    // the client's keys and take each backend's next block when it matches.
    for (r, b) in keys {
        let key = &batch.arena[r.clone()];
        let c = s.cursor[*b];
        if let Some((kr, br)) = s.blocks[*b].get(c) {
            if &s.bytes[kr.clone()] == key {
                out.extend_from_slice(&s.bytes[br.clone()]);
                s.cursor[*b] = c + 1;
            }
        }
    }
    out.extend_from_slice(b"END\r\n");
}
