//! `kv_proxy`: a memcached text-protocol proxy that shards keys over several
//! backends (kv instances or memcached) by consistent hashing.
//!
//! ```text
//! cargo run --release --example kv_proxy -- --listen 127.0.0.1:22122 \
//!     --backend 127.0.0.1:11211 --backend 127.0.0.1:11212
//! ```
//!
//! # Routing
//!
//! Each key goes to one backend, picked on a ketama-style ring: every
//! backend owns [`POINTS_PER_BACKEND`] points (hashes of `"ADDR-i"`), and a
//! key belongs to the first point at or after its own hash. Adding a
//! backend takes over only the arcs before its points, about `1/n` of the
//! keys; the rest stay where they were.
//!
//! # Pipelining and backend connections
//!
//! A client's buffered requests are handled as a batch: every request is
//! parsed, its bytes queued for its backend (a multi-key `get` is split
//! into one `get` per backend), and the replies are merged in the client's
//! order. Batches are bounded ([`BATCH_OPS`] requests, [`BATCH_BYTES`] of
//! request bytes).
//!
//! Each worker thread keeps one connection per backend, shared by all of
//! its clients (as twemproxy does). A client appends its batch's requests
//! to the connection's output buffer and its reply slot to the
//! connection's queue, in the same order; the first client to find no
//! write under way yields once, so that the other clients ready on that
//! worker can queue theirs too, then writes everything in one call. A
//! reader fiber per connection reads replies in large chunks, frames each
//! one (a line, or `VALUE` blocks up to `END`), and hands it to the client
//! at the head of the queue; a client parks until all of its batch's
//! replies are in. So at pipeline depth 1, many clients' requests share
//! one backend write and one backend read.
//!
//! # Failures
//!
//! A backend connection that fails (an error, end-of-file, a malformed
//! reply, or a request unanswered for `--timeout-ms`) is closed, and every
//! client waiting on it gets `SERVER_ERROR backend unavailable` for its
//! requests to that backend; the next request opens a new connection.
//! A backend that cannot be reached is marked down for `--retry-ms`:
//! requests for its keys get `SERVER_ERROR backend unavailable` at once,
//! and after the delay the next request tries to connect again. Keys are
//! never moved to another backend (no ejection), so a restarted backend
//! serves its own keys again. A multi-key `get` that touches a failed
//! backend is answered by one `SERVER_ERROR` line as a whole (a `get`
//! reply has no place for a per-key error, and silently dropping keys would
//! pass for misses). Other backends keep serving.
//!
//! # Bad input
//!
//! Command lines may be 2048 bytes long (64 KiB for `get`/`gets`); a longer
//! one gets `CLIENT_ERROR line too long` and is skipped up to its newline.
//! Unknown commands get `ERROR`; a missing or too long key (over 250 bytes),
//! or a storage command without a valid length, gets
//! `CLIENT_ERROR bad command line format`; a value over `--max-item-size`
//! gets `SERVER_ERROR object too large for cache` and its data is skipped
//! without buffering it; a data block not ended by `\r\n` gets
//! `CLIENT_ERROR bad data chunk`. Everything else is checked by the backend
//! and its reply passed on, so through the proxy a client sees what one
//! server would say. `noreply` is honoured towards the client but the
//! backend is always asked for a reply (an error is still passed on, as
//! memcached does), so a backend connection never loses track of where its
//! replies are.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use weave::net::TcpStream;
use weave::server::{Conn, Server};

/// Points each backend owns on the ring.
const POINTS_PER_BACKEND: usize = 160;
/// Longest command line (other than `get`/`gets`).
const MAX_LINE: usize = 2048;
/// Longest `get`/`gets` line.
const MAX_GET_LINE: usize = 64 * 1024;
/// Longest key.
const KEY_MAX: usize = 250;
/// Longest reply line accepted from a backend (other than `VALUE`).
const MAX_REPLY_LINE: usize = 1024;
/// Most requests handled in one batch.
const BATCH_OPS: usize = 64;
/// Most request bytes queued for the backends in one batch (the first
/// request is always taken, however big).
const BATCH_BYTES: usize = 64 * 1024;
/// Client output is written once this much is queued, even mid-batch.
const OUTPUT_FLUSH_AT: usize = 256 * 1024;

const UNAVAILABLE: &[u8] = b"SERVER_ERROR backend unavailable\r\n";
const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";

/// A memcached text-protocol proxy: keys are spread over the backends by
/// consistent hashing.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:22122")]
    listen: String,
    /// A backend (kv or memcached), `HOST:PORT`; repeat for each one.
    #[arg(long = "backend", required = true)]
    backends: Vec<SocketAddr>,
    /// Worker threads (default: one per core).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Timeout for connecting to a backend, for each write to it, and for
    /// its reply to a request, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// How long a backend that could not be reached is skipped, in
    /// milliseconds.
    #[arg(long, default_value_t = 1000)]
    retry_ms: u64,
    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_item_size: usize,
    /// Most client connections; more are closed on arrival.
    #[arg(short = 'c', long, default_value_t = 1024)]
    conn_limit: usize,
    /// Verbose logging (-v: info, -vv: debug).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

// ---------------------------------------------------------------------------
// The ring

/// FNV-1a, 64-bit, then a finaliser (splitmix64's) so that similar short
/// strings ("ADDR-1", "ADDR-2") land far apart.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A consistent-hash ring over backend indices.
#[derive(Debug, Clone)]
struct Ring {
    /// (point, backend index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(backends: &[SocketAddr]) -> Ring {
        let mut points = Vec::with_capacity(backends.len() * POINTS_PER_BACKEND);
        for (i, b) in backends.iter().enumerate() {
            for j in 0..POINTS_PER_BACKEND {
                points.push((hash(format!("{b}-{j}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    fn pick(&self, key: &[u8]) -> usize {
        let h = hash(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        self.points.get(i).unwrap_or(&self.points[0]).1
    }
}

// ---------------------------------------------------------------------------
// Shared state

/// One backend: its address and when it may be tried again.
#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    /// Milliseconds since `Proxy::start` before which the backend is
    /// skipped; 0 when it is up.
    down_until_ms: AtomicU64,
}

/// Everything the connections share.
#[derive(Debug)]
struct Proxy {
    ring: Ring,
    backends: Vec<Backend>,
    io_timeout: Duration,
    retry: Duration,
    item_max: usize,
    start: Instant,
}

impl Proxy {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn is_down(&self, b: usize) -> bool {
        let until = self.backends[b].down_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn mark_down(&self, b: usize, why: &io::Error) {
        let until = self.now_ms() + self.retry.as_millis() as u64;
        let prev = self.backends[b]
            .down_until_ms
            .swap(until.max(1), Ordering::Relaxed);
        if prev == 0 || prev <= self.now_ms() {
            log::warn!(
                "backend {} unavailable ({why}); retrying in {:?}",
                self.backends[b].addr,
                self.retry
            );
        }
    }

    fn mark_up(&self, b: usize) {
        if self.backends[b].down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            log::info!("backend {} is back", self.backends[b].addr);
        }
    }
}

// ---------------------------------------------------------------------------
// Buffered input

/// A bounded input buffer over a stream.
#[derive(Debug)]
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn new(cap: usize) -> Input {
        Input {
            buf: vec![0; cap],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more, making room for at least `want` buffered bytes (the
    /// buffer grows up to that). Returns false at end of stream.
    fn fill(&mut self, r: &mut impl Read, want: usize) -> io::Result<bool> {
        if self.start > 0 && (self.end == self.buf.len() || self.start + want > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || want > self.buf.len() {
            let new = want.max(self.buf.len() * 2).max(self.end + 1);
            self.buf.resize(new, 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

fn parse_num<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

fn valid_key(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= KEY_MAX && k.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn is_error_line(l: &[u8]) -> bool {
    l.starts_with(b"ERROR") || l.starts_with(b"CLIENT_ERROR") || l.starts_with(b"SERVER_ERROR")
}

// ---------------------------------------------------------------------------
// A batch of parsed requests

/// What one client request needs.
#[derive(Debug)]
enum Op {
    /// A reply known without asking a backend.
    Local(&'static [u8]),
    /// `version`.
    Version,
    /// A `get`/`gets`: keys `keys` of the batch's key list.
    Get { keys: std::ops::Range<usize> },
    /// A one-line reply from backend `b`.
    Single { b: usize, noreply: bool },
    /// `flush_all`: every backend must say `OK`.
    Broadcast { noreply: bool },
}

/// Parsed requests and the bytes queued for each backend.
#[derive(Debug)]
struct Batch {
    ops: Vec<Op>,
    /// (key range in `arena`, backend) of every `get` key, in client order.
    keys: Vec<(std::ops::Range<usize>, usize)>,
    arena: Vec<u8>,
    /// Request bytes per backend.
    reqs: Vec<Vec<u8>>,
    /// Per backend: the reply kind of each request in `reqs`, in order.
    kinds: Vec<Vec<u8>>,
    bytes: usize,
    /// The client asked to quit after this batch.
    quit: bool,
}

impl Batch {
    fn new(n: usize) -> Batch {
        Batch {
            ops: Vec::new(),
            keys: Vec::new(),
            arena: Vec::new(),
            reqs: vec![Vec::new(); n],
            kinds: vec![Vec::new(); n],
            bytes: 0,
            quit: false,
        }
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.keys.clear();
        self.arena.clear();
        for r in &mut self.reqs {
            r.clear();
        }
        for k in &mut self.kinds {
            k.clear();
        }
        self.bytes = 0;
        self.quit = false;
    }

    fn full(&self) -> bool {
        self.quit || self.ops.len() >= BATCH_OPS || self.bytes >= BATCH_BYTES
    }

    fn queue(&mut self, b: usize, parts: &[&[u8]]) {
        let r = &mut self.reqs[b];
        for p in parts {
            r.extend_from_slice(p);
            self.bytes += p.len();
        }
    }
}

/// What parsing the buffered input produced.
enum Parsed {
    /// One request was added to the batch (or answered locally).
    Added,
    /// More input is needed to finish the next request, this many bytes
    /// in all.
    NeedMore(usize),
    /// A value too large: skip this many bytes of input, then go on.
    Skip(usize),
}

/// Parses the next request from `input` into `batch`, and consumes it.
fn parse_one(p: &Proxy, input: &mut Input, batch: &mut Batch, discarding: &mut bool) -> Parsed {
    let mut used = 0;
    let r = parse_from(p, input.data(), batch, discarding, &mut used);
    input.consume(used);
    r
}

/// Parses the next request from `data` into `batch`; sets `used` to the
/// bytes it took.
fn parse_from(
    p: &Proxy,
    data: &[u8],
    batch: &mut Batch,
    discarding: &mut bool,
    used: &mut usize,
) -> Parsed {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        let limit = if data.starts_with(b"get") {
            MAX_GET_LINE
        } else {
            MAX_LINE
        };
        if *discarding || data.len() > limit {
            // A line over the limit: answer once, then drop it piecewise.
            if !*discarding {
                batch.ops.push(Op::Local(b"CLIENT_ERROR line too long\r\n"));
                *discarding = true;
            }
            let n = data.len();
            *used = n;
            return Parsed::Added;
        }
        return Parsed::NeedMore(data.len() + 1);
    };
    if *discarding {
        *used = nl + 1;
        *discarding = false;
        return Parsed::Added;
    }
    let line = trim_cr(&data[..nl]);
    let mut toks = tokens(line);
    let cmd = toks.next().unwrap_or(b"");
    let limit = if cmd == b"get" || cmd == b"gets" {
        MAX_GET_LINE
    } else {
        MAX_LINE
    };
    if nl > limit {
        batch.ops.push(Op::Local(b"CLIENT_ERROR line too long\r\n"));
        *used = nl + 1;
        return Parsed::Added;
    }
    let consumed = nl + 1;
    match cmd {
        b"get" | b"gets" => {
            let first = batch.keys.len();
            let mut bad = false;
            for k in toks {
                if !valid_key(k) {
                    bad = true;
                    break;
                }
                let b = p.ring.pick(k);
                let start = batch.arena.len();
                batch.arena.extend_from_slice(k);
                batch.keys.push((start..batch.arena.len(), b));
            }
            if bad || batch.keys.len() == first {
                batch.keys.truncate(first);
                batch
                    .ops
                    .push(Op::Local(if bad { BAD_FORMAT } else { b"ERROR\r\n" }));
            } else {
                // One request per backend, keys in client order.
                let keys = first..batch.keys.len();
                let mut left = vec![0usize; batch.reqs.len()];
                for &(_, b) in &batch.keys[keys.clone()] {
                    left[b] += 1;
                }
                let mut started = vec![false; batch.reqs.len()];
                for i in keys.clone() {
                    let (r, b) = batch.keys[i].clone();
                    let req = &mut batch.reqs[b];
                    if !started[b] {
                        started[b] = true;
                        batch.kinds[b].push(KIND_GET);
                        req.extend_from_slice(cmd);
                        batch.bytes += cmd.len();
                    }
                    req.push(b' ');
                    req.extend_from_slice(&batch.arena[r.clone()]);
                    batch.bytes += 1 + r.len();
                    left[b] -= 1;
                    if left[b] == 0 {
                        req.extend_from_slice(b"\r\n");
                        batch.bytes += 2;
                    }
                }
                batch.ops.push(Op::Get { keys });
            }
            *used = consumed;
            Parsed::Added
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let args: Vec<&[u8]> = toks.collect();
            let want = if cmd == b"cas" { 5 } else { 4 };
            let bytes = args.get(3).and_then(|t| parse_num::<usize>(t));
            let (Some(bytes), true) = (bytes, args.len() == want || args.len() == want + 1) else {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Added;
            };
            let noreply = args.len() == want + 1;
            if noreply && args[want] != b"noreply" {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Added;
            }
            if bytes > p.item_max {
                batch
                    .ops
                    .push(Op::Local(b"SERVER_ERROR object too large for cache\r\n"));
                *used = consumed;
                return Parsed::Skip(bytes.saturating_add(2));
            }
            if !valid_key(args[0]) {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Skip(bytes + 2);
            }
            let total = consumed + bytes + 2;
            if data.len() < total {
                return Parsed::NeedMore(total);
            }
            let block = &data[consumed..total];
            if &block[bytes..] != b"\r\n" {
                batch
                    .ops
                    .push(Op::Local(b"CLIENT_ERROR bad data chunk\r\n"));
                *used = total;
                return Parsed::Added;
            }
            let b = p.ring.pick(args[0]);
            batch.queue(b, &[cmd]);
            for a in &args[..want] {
                batch.queue(b, &[b" ", a]);
            }
            batch.queue(b, &[b"\r\n", block]);
            batch.kinds[b].push(KIND_LINE);
            batch.ops.push(Op::Single { b, noreply });
            *used = total;
            Parsed::Added
        }
        b"delete" | b"incr" | b"decr" | b"touch" => {
            let args: Vec<&[u8]> = toks.collect();
            let noreply = args.last() == Some(&&b"noreply"[..]);
            let n = args.len() - usize::from(noreply);
            let arity_ok = match cmd {
                // `delete KEY 0` is an old form memcached still accepts.
                b"delete" => n == 1 || n == 2,
                _ => n == 2,
            };
            if !arity_ok || !valid_key(args[0]) {
                batch
                    .ops
                    .push(Op::Local(if n == 0 { b"ERROR\r\n" } else { BAD_FORMAT }));
                *used = consumed;
                return Parsed::Added;
            }
            let b = p.ring.pick(args[0]);
            batch.queue(b, &[cmd]);
            for a in &args[..n] {
                batch.queue(b, &[b" ", a]);
            }
            batch.queue(b, &[b"\r\n"]);
            batch.kinds[b].push(KIND_LINE);
            batch.ops.push(Op::Single { b, noreply });
            *used = consumed;
            Parsed::Added
        }
        b"flush_all" => {
            let args: Vec<&[u8]> = toks.collect();
            let noreply = args.last() == Some(&&b"noreply"[..]);
            let n = args.len() - usize::from(noreply);
            if n > 1 || (n == 1 && parse_num::<i64>(args[0]).is_none()) {
                batch.ops.push(Op::Local(BAD_FORMAT));
            } else {
                for b in 0..batch.reqs.len() {
                    batch.queue(b, &[b"flush_all"]);
                    if n == 1 {
                        batch.queue(b, &[b" ", args[0]]);
                    }
                    batch.queue(b, &[b"\r\n"]);
                    batch.kinds[b].push(KIND_LINE);
                }
                batch.ops.push(Op::Broadcast { noreply });
            }
            *used = consumed;
            Parsed::Added
        }
        b"version" => {
            batch.ops.push(Op::Version);
            *used = consumed;
            Parsed::Added
        }
        b"quit" => {
            batch.quit = true;
            *used = consumed;
            Parsed::Added
        }
        _ => {
            batch.ops.push(Op::Local(b"ERROR\r\n"));
            *used = consumed;
            Parsed::Added
        }
    }
}

// ---------------------------------------------------------------------------
// Talking to the backends

/// A reply that is one line (storage, `delete`, `incr`, `flush_all`, ...).
const KIND_LINE: u8 = 0;
/// A `get`/`gets` reply: `VALUE` blocks up to `END`, or an error line.
const KIND_GET: u8 = 1;

fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client connection's share of a backend's replies to the current
/// batch.
#[derive(Debug, Default)]
struct Seg {
    /// The reply kind of each request sent, in order.
    kinds: Vec<u8>,
    /// Replies received so far.
    next: usize,
    /// The replies, as the backend sent them.
    buf: Vec<u8>,
    /// The backend failed before every reply came.
    failed: bool,
}

#[derive(Debug)]
struct WaitState {
    /// Per backend.
    segs: Vec<Seg>,
    /// Segments not yet complete or failed.
    outstanding: usize,
}

/// Where the backends' reader fibers put a client's replies; the client
/// fiber parks until all of its batch's replies are in.
#[derive(Debug)]
struct Waiter {
    state: StdMutex<WaitState>,
    fiber: weave::fiber::Fiber,
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
struct Mux {
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
    fn push(&self, req: &[u8], waiter: &Arc<Waiter>) -> bool {
        let mut st = lock(&self.st);
        st.out.extend_from_slice(req);
        st.queue.push_back(Pending {
            waiter: waiter.clone(),
            since: Instant::now(),
        });
        !std::mem::replace(&mut st.flushing, true)
    }

    /// Writes `out` until it stays empty, connecting first if needed.
    fn flush(self: &Arc<Self>, p: &Arc<Proxy>) {
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

fn connect(p: &Proxy, b: usize) -> io::Result<TcpStream> {
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

fn worker_muxes(n: usize) -> Arc<[Arc<Mux>]> {
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

/// One backend's replies to a batch, read back by the client, or why the
/// backend failed.
#[derive(Debug, Default)]
struct Link {
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
struct Backends {
    muxes: Arc<[Arc<Mux>]>,
    waiter: Arc<Waiter>,
    links: Vec<Link>,
    /// Per backend: this client must write the queued requests.
    flush: Vec<bool>,
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
struct GetScratch {
    /// Reply bytes (VALUE lines and data) of all backends.
    bytes: Vec<u8>,
    /// Per backend: (key range, block range) in `bytes`, in reply order.
    blocks: Vec<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>>,
    /// Per backend: next block to match.
    cursor: Vec<usize>,
    /// Per backend: reply already read.
    read: Vec<bool>,
    line: Vec<u8>,
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
fn run_batch(
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

// ---------------------------------------------------------------------------
// A client connection

/// Serves one client until it quits or disconnects.
fn handle(p: &Arc<Proxy>, mut client: Conn) -> io::Result<()> {
    client.set_nodelay(true)?;
    let n = p.backends.len();
    let mut input = Input::new(16 * 1024);
    let mut batch = Batch::new(n);
    let mut be = Backends {
        muxes: worker_muxes(n),
        waiter: Arc::new(Waiter {
            state: StdMutex::new(WaitState {
                segs: (0..n).map(|_| Seg::default()).collect(),
                outstanding: 0,
            }),
            fiber: weave::fiber::current(),
        }),
        links: (0..n).map(|_| Link::default()).collect(),
        flush: vec![false; n],
    };
    let mut scratch = GetScratch {
        blocks: vec![Vec::new(); n],
        cursor: vec![0; n],
        ..GetScratch::default()
    };
    let mut out = Vec::with_capacity(16 * 1024);
    let mut discarding = false;
    let mut skip = 0usize;
    loop {
        // Parse what is buffered into a batch.
        let mut need = 0;
        while !batch.full() {
            if skip > 0 {
                let n = skip.min(input.data().len());
                input.consume(n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            if input.data().is_empty() {
                break;
            }
            match parse_one(p, &mut input, &mut batch, &mut discarding) {
                Parsed::Added => {}
                Parsed::Skip(n) => skip = n,
                Parsed::NeedMore(n) => {
                    need = n;
                    break;
                }
            }
        }
        if !batch.ops.is_empty() {
            run_batch(p, &batch, &mut be, &mut scratch, &mut out, &mut client)?;
        }
        let quit = batch.quit;
        batch.clear();
        if !out.is_empty() && (quit || input.data().is_empty() || need > 0 || skip > 0) {
            client.write_all(&out)?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
        if input.data().is_empty() || need > 0 || skip > 0 {
            let want = if skip > 0 {
                1
            } else {
                need.max(input.data().len() + 1)
            };
            if !input.fill(&mut client, want.min(p.item_max + MAX_GET_LINE + 2))? {
                return Ok(());
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Err(e) = run(args) {
        eprintln!("kv_proxy: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let proxy = Arc::new(Proxy {
        ring: Ring::new(&args.backends),
        backends: args
            .backends
            .iter()
            .map(|&addr| Backend {
                addr,
                down_until_ms: AtomicU64::new(0),
            })
            .collect(),
        io_timeout: timeout,
        retry: Duration::from_millis(args.retry_ms),
        item_max: args.max_item_size,
        start: Instant::now(),
    });
    let mut builder = Server::builder()
        .bind(args.listen.clone())
        .max_connections(args.conn_limit);
    if let Some(t) = args.threads {
        builder = builder.workers(t);
    }
    let server = builder
        .build()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.listen)))?;
    log::info!(
        "kv_proxy on {:?} in front of {:?}",
        server.local_addrs(),
        args.backends
    );
    let summary = server.serve(move |c| handle(&proxy, c))?;
    log::info!("stopped: {summary:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| ([127, 0, 0, 1], 11211 + i).into()).collect()
    }

    #[test]
    fn keys_spread_over_all_backends() {
        let ring = Ring::new(&addrs(3));
        let mut counts = [0usize; 3];
        for k in 0..30_000 {
            counts[ring.pick(format!("key:{k}").as_bytes())] += 1;
        }
        // Each backend should own roughly a third; allow a wide margin.
        for c in counts {
            assert!((6_000..14_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn adding_a_backend_moves_few_keys() {
        let three = Ring::new(&addrs(3));
        let four = Ring::new(&addrs(4));
        let moved = (0..20_000)
            .filter(|k| {
                let key = format!("key:{k}");
                let (a, b) = (three.pick(key.as_bytes()), four.pick(key.as_bytes()));
                if a != b {
                    // A key only ever moves to the new backend.
                    assert_eq!(b, 3);
                }
                a != b
            })
            .count();
        // About a quarter should move; modulo hashing would move 3/4.
        assert!((2_500..7_500).contains(&moved), "moved {moved}");
    }

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

    #[test]
    fn input_grows_only_on_demand() {
        let mut input = Input::new(4);
        let mut src: &[u8] = b"abcdefgh";
        assert!(input.fill(&mut src, 1).unwrap());
        assert_eq!(input.data(), b"abcd");
        input.consume(2);
        assert!(input.fill(&mut src, 6).unwrap());
        assert_eq!(input.data(), b"cdefgh");
        assert!(!input.fill(&mut src, 7).unwrap());
    }
}
