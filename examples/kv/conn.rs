//! Per-connection plumbing: the shared server context, a buffered
//! connection with bounded input and batched output, and the entry point
//! that picks the protocol from the first byte.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Users;
use crate::stats::{ConnStat, ConnTable};
use crate::store::{Counter, Store};
use crate::{auth, binary, text};

/// Version string reported by `version` and `stats`.
pub const VERSION: &str = concat!("1.6.0-weave-kv-", env!("CARGO_PKG_VERSION"));

/// Initial input buffer size per connection.
const INPUT_INITIAL: usize = 16 * 1024;
/// The size a request-mode input buffer starts at, zeroed (it grows to
/// `INPUT_INITIAL` as input needs it): most turns carry one short request.
/// The buffer then passes from turn to turn among its worker's spares,
/// so it is zeroed once, not once per turn.
const FIRST_READ: usize = 4096;
/// The output buffer's starting capacity (and what a grown one goes back
/// to).
const OUTPUT_INITIAL: usize = 4096;
/// Output is written once this much is queued, even mid-request.
const OUTPUT_FLUSH_AT: usize = 256 * 1024;
/// A connection that has read this much (a request counts as 1 KiB)
/// without yielding lets the other fibers on its worker run.
const YIELD_EVERY: usize = 1 << 20;
/// Values at least this big are written straight from the item instead of
/// being copied into the output buffer.
const DIRECT_VALUE: usize = 32 * 1024;
/// A data block's buffer starts at most this big and doubles as its bytes
/// arrive, so a header that declares a large value costs nothing until
/// the value is actually sent.
const BLOCK_INITIAL: usize = 16 * 1024;
/// Default for `--buffer-memory`, in bytes.
pub const BUFFER_BUDGET_DEFAULT: usize = 64 << 20;

/// Memory for request buffers beyond each connection's fixed input buffer
/// (grown input buffers and data blocks being read), shared by all
/// connections and bounded apart from the item memory (`-m`). A request
/// that cannot get its memory is refused, not queued.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A data block as [`Conn::read_block`] returns it.
#[derive(Debug)]
pub enum Block {
    /// All the bytes, terminator included (the caller checks it).
    Data(Vec<u8>),
    /// The buffer budget ran out: the rest of the block was read and
    /// dropped.
    NoMemory,
    /// The stream ended first.
    Eof,
}

/// Server-wide state shared by every connection.
#[derive(Debug)]
pub struct Ctx {
    /// The items.
    pub store: Arc<Store>,
    /// Largest value accepted, in bytes (`-I`).
    pub item_max: usize,
    /// Worker threads (reported by `stats`).
    pub threads: usize,
    /// Connection limit (reported by `stats`).
    pub max_conns: usize,
    /// Verbosity as set by `-v` or the `verbosity` command.
    pub verbosity: AtomicU32,
    /// When the server started.
    pub started: Instant,
    /// Connections open now.
    pub curr_conns: AtomicU64,
    /// Connections ever opened.
    pub total_conns: Counter,
    /// Bytes read from clients.
    pub bytes_read: Counter,
    /// Bytes written to clients.
    pub bytes_written: Counter,
    /// Longest a request may take to arrive once its first bytes came in
    /// (zero: no limit). Closes clients that trickle a request slowly
    /// enough never to trip the idle timeout.
    pub request_timeout: Duration,
    /// Users allowed in (`-Y`); `None`: no authentication.
    pub auth: Option<Arc<Users>>,
    /// Where the users came from (reported by `stats settings`).
    pub auth_file: Option<String>,
    /// TLS certificate chain and key files, when TLS is on (reported by
    /// `stats settings`).
    pub tls_files: Option<(String, String)>,
    /// Authentication attempts checked (memcached's `auth_cmds`).
    pub auth_cmds: Counter,
    /// Authentication attempts that failed (memcached's `auth_errors`).
    pub auth_errors: Counter,
    /// Idle timeout in seconds, 0 for none (reported by `stats settings`).
    pub idle_timeout: u64,
    /// Open connections and the listening address (`stats conns`).
    pub conns: ConnTable,
    /// Meta commands served (memcached's `cmd_meta`).
    pub cmd_meta: Counter,
    /// Values refused as larger than the item limit (`store_too_large`).
    pub store_too_large: Counter,
    /// Values refused as larger than the whole memory limit
    /// (`store_no_memory`).
    pub store_no_memory: Counter,
    /// Memory for request buffers (`--buffer-memory`).
    pub buffers: BufferBudget,
    /// Requests refused because the buffer budget ran out.
    pub buffer_oom: Counter,
}

impl Ctx {
    /// A context around `store` with default limits (tests adjust fields).
    pub fn new(store: Arc<Store>, item_max: usize) -> Ctx {
        store.set_item_max(item_max);
        Ctx {
            store,
            item_max,
            threads: 1,
            max_conns: 1024,
            verbosity: AtomicU32::new(0),
            started: Instant::now(),
            curr_conns: AtomicU64::new(0),
            total_conns: Counter::default(),
            bytes_read: Counter::default(),
            bytes_written: Counter::default(),
            request_timeout: Duration::ZERO,
            auth: None,
            auth_file: None,
            tls_files: None,
            auth_cmds: Counter::default(),
            auth_errors: Counter::default(),
            idle_timeout: 0,
            conns: ConnTable::default(),
            cmd_meta: Counter::default(),
            store_too_large: Counter::default(),
            store_no_memory: Counter::default(),
            buffers: BufferBudget::new(BUFFER_BUDGET_DEFAULT),
            buffer_oom: Counter::default(),
        }
    }
}

/// A connection with a bounded input buffer and an output buffer that is
/// written when more input is needed (so a pipeline of requests gets one
/// write), or when it grows past a threshold.
#[derive(Debug)]
pub struct Conn<'a, S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    ctx: &'a Ctx,
    /// Bytes read since this connection last yielded.
    unyielded: usize,
    /// When the unfinished request now buffered started to arrive.
    partial_since: Option<Instant>,
    /// When the request whose line was consumed last began to arrive, if
    /// it had to wait for more input (its data block's deadline).
    line_since: Option<Instant>,
    /// Bytes of input buffer growth taken from the buffer budget.
    buf_taken: usize,
    /// Replies are dropped (a text command with `noreply`).
    muted: bool,
    /// This connection's entry in `stats conns`, if it has one.
    stat: Option<&'a ConnStat>,
    /// Request mode: return at a request boundary with nothing buffered
    /// (after something was read), instead of waiting for more input.
    idle_ok: bool,
    /// Input was read during this turn.
    read_any: bool,
    /// Returned at a request boundary (see `idle_here`).
    went_idle: bool,
    /// Largest the input buffer has been (for tests of its bound).
    #[cfg(test)]
    high_water: usize,
}

impl<'a, S: Read + Write> Conn<'a, S> {
    /// Wraps a stream.
    pub fn new(stream: S, ctx: &'a Ctx) -> Self {
        Conn::with_bufs(
            stream,
            ctx,
            vec![0; INPUT_INITIAL],
            Vec::with_capacity(OUTPUT_INITIAL),
        )
    }

    fn with_bufs(stream: S, ctx: &'a Ctx, buf: Vec<u8>, out: Vec<u8>) -> Self {
        Conn {
            stream,
            buf,
            start: 0,
            end: 0,
            out,
            ctx,
            unyielded: 0,
            partial_since: None,
            line_since: None,
            buf_taken: 0,
            muted: false,
            stat: None,
            idle_ok: false,
            read_any: false,
            went_idle: false,
            #[cfg(test)]
            high_water: INPUT_INITIAL,
        }
    }

    /// Wraps a stream for one turn of request mode, with an input buffer
    /// (zeroed to its length, contents ignored) and an empty output buffer.
    fn for_request(stream: S, ctx: &'a Ctx, (buf, out): (Vec<u8>, Vec<u8>)) -> Self {
        debug_assert!(buf.len() >= FIRST_READ && out.is_empty());
        let mut c = Conn::with_bufs(stream, ctx, buf, out);
        c.idle_ok = true;
        c
    }

    /// Gives back the input buffer, at most at its initial size (growth
    /// taken from the buffer budget is given back), and the output buffer,
    /// emptied.
    fn into_buffers(mut self) -> (Vec<u8>, Vec<u8>) {
        self.shrink_input();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        (std::mem::take(&mut self.buf), out)
    }

    /// Returns a grown input buffer to its initial size and its growth to
    /// the buffer budget.
    fn shrink_input(&mut self) {
        if self.buf.len() > INPUT_INITIAL {
            self.ctx.buffers.give(self.buf_taken);
            self.buf_taken = 0;
            self.buf = vec![0; INPUT_INITIAL];
        }
    }

    /// Called by a protocol loop at a request boundary with nothing
    /// buffered. In request mode, once something was read this turn, it
    /// writes the queued replies and returns true: the caller returns and
    /// the connection goes idle, holding neither this buffer nor a fiber.
    /// Otherwise false: the caller reads on.
    pub fn idle_here(&mut self) -> io::Result<bool> {
        if !(self.idle_ok && self.read_any) {
            return Ok(false);
        }
        self.flush()?;
        if let Some(s) = &self.stat {
            s.waiting();
        }
        self.went_idle = true;
        Ok(true)
    }

    /// Buffered input not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        // Progress: whatever is left is the start of a newer request (or
        // the data block of the one just parsed, whose clock started when
        // its line began to arrive).
        self.line_since = self.partial_since.take();
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Writes queued output, then reads more input. The buffer grows (up to
    /// `max` bytes) only when it is full of one unfinished request; callers
    /// enforce their own request-size limits before asking for more.
    /// Returns false at end of stream.
    pub fn fill(&mut self, max: usize) -> io::Result<bool> {
        self.flush()?;
        self.check_request_deadline()?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.shrink_input();
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < INPUT_INITIAL {
            // A request-mode buffer, zeroed only as far as it was needed:
            // the initial size is not charged to the buffer budget.
            let want = (self.buf.len() * 2).min(INPUT_INITIAL);
            self.buf.resize(want, 0);
        } else if self.end == self.buf.len() {
            let want = (self.buf.len() * 2).min(max.max(self.buf.len()));
            if want == self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request larger than the input buffer limit",
                ));
            }
            if !self.ctx.buffers.try_take(want - self.buf.len()) {
                self.ctx.buffer_oom.add(1);
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "request buffer memory exhausted (--buffer-memory)",
                ));
            }
            self.buf_taken += want - self.buf.len();
            self.buf.resize(want, 0);
            #[cfg(test)]
            {
                self.high_water = self.high_water.max(want);
            }
        }
        if let Some(s) = &self.stat {
            s.waiting();
        }
        let n = loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if let Some(s) = self.stat.as_ref().filter(|_| n > 0) {
            s.read_at(self.ctx.store.now());
        }
        self.read_done(n);
        self.read_any = true;
        self.end += n;
        Ok(n > 0)
    }

    /// Fails with `TimedOut` when the unfinished request in the buffer has
    /// been arriving for longer than the request timeout.
    fn check_request_deadline(&mut self) -> io::Result<()> {
        let limit = self.ctx.request_timeout;
        if limit.is_zero() || self.start == self.end {
            return Ok(());
        }
        let since = *self.partial_since.get_or_insert_with(Instant::now);
        if since.elapsed() > limit {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete within the request timeout",
            ));
        }
        Ok(())
    }

    /// Counts bytes read; a client that streams input faster than it is
    /// processed would otherwise never make its fiber park, so every
    /// [`YIELD_EVERY`] bytes the fiber yields to its worker's other fibers.
    fn read_done(&mut self, n: usize) {
        self.ctx.bytes_read.add(n as u64);
        self.unyielded += n;
        if self.unyielded >= YIELD_EVERY {
            self.unyielded = 0;
            weave::yield_now();
        }
    }

    /// Fills `dst` from buffered input, then straight from the stream.
    /// Returns false on end of stream.
    pub fn read_exact_into(&mut self, dst: &mut [u8]) -> io::Result<bool> {
        let have = (self.end - self.start).min(dst.len());
        dst[..have].copy_from_slice(&self.buf[self.start..self.start + have]);
        self.consume(have);
        let mut got = have;
        if got < dst.len() {
            self.flush()?;
        }
        while got < dst.len() {
            match self.stream.read(&mut dst[got..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.read_done(n);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads a data block of `len` bytes into a buffer of its own that
    /// grows as the bytes arrive (never more than was sent, and never past
    /// what the buffer budget grants). The request timeout covers the
    /// block as it covers the command line. Memory taken from the budget
    /// is given back before this returns: the block then belongs to the
    /// caller (and, once stored, to the store's accounting).
    pub fn read_block(&mut self, len: usize) -> io::Result<Block> {
        let mut v: Vec<u8> = Vec::new();
        let mut taken = 0usize;
        let r = self.read_block_into(&mut v, &mut taken, len);
        self.ctx.buffers.give(taken);
        // The request is whole (or abandoned): the next one starts afresh.
        self.partial_since = None;
        self.line_since = None;
        match r {
            Ok(true) => Ok(Block::Data(v)),
            Ok(false) => Ok(Block::Eof),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                self.ctx.buffer_oom.add(1);
                let left = (len - v.len()) as u64;
                drop(v);
                Ok(if self.discard(left)? {
                    Block::NoMemory
                } else {
                    Block::Eof
                })
            }
            Err(e) => Err(e),
        }
    }

    fn read_block_into(
        &mut self,
        v: &mut Vec<u8>,
        taken: &mut usize,
        len: usize,
    ) -> io::Result<bool> {
        while v.len() < len {
            if self.start == self.end {
                self.flush()?;
                self.check_request_deadline_block()?;
            }
            if v.len() == v.capacity() {
                let want = (v.capacity() * 2).clamp(BLOCK_INITIAL.min(len), len);
                let extra = want - v.capacity();
                if !self.ctx.buffers.try_take(extra) {
                    return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer budget"));
                }
                *taken += extra;
                v.reserve_exact(want - v.len());
            }
            let room = v.capacity().min(len) - v.len();
            if self.start < self.end {
                let n = (self.end - self.start).min(room);
                v.extend_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                continue;
            }
            let old = v.len();
            v.resize(old + room, 0);
            let n = loop {
                match self.stream.read(&mut v[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        v.truncate(old);
                        return Err(e);
                    }
                }
            };
            v.truncate(old + n);
            if n == 0 {
                return Ok(false);
            }
            self.read_done(n);
            self.read_any = true;
        }
        Ok(true)
    }

    /// The request deadline while a data block arrives: the block is part
    /// of its request, so the clock started by the command line runs on.
    fn check_request_deadline_block(&mut self) -> io::Result<()> {
        let limit = self.ctx.request_timeout;
        if limit.is_zero() {
            return Ok(());
        }
        let since = *self
            .partial_since
            .get_or_insert_with(|| self.line_since.unwrap_or_else(Instant::now));
        if since.elapsed() > limit {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete within the request timeout",
            ));
        }
        Ok(())
    }

    /// Reads and drops `n` bytes of input with bounded memory. Returns false
    /// on end of stream.
    pub fn discard(&mut self, mut n: u64) -> io::Result<bool> {
        loop {
            let have = ((self.end - self.start) as u64).min(n);
            self.consume(have as usize);
            n -= have;
            if n == 0 {
                return Ok(true);
            }
            if !self.fill(INPUT_INITIAL)? {
                return Ok(false);
            }
        }
    }

    /// Queues reply bytes (none while muted).
    pub fn put(&mut self, b: &[u8]) {
        if !self.muted {
            self.out.extend_from_slice(b);
        }
    }

    /// Queues `n` in decimal (nothing while muted).
    pub fn put_num(&mut self, n: u64) {
        if !self.muted {
            crate::text::put_num(&mut self.out, n);
        }
    }

    /// Drops (true) or queues again (false) every reply from now on: a text
    /// command with `noreply` gets no answer at all, errors included.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Queues a value: large ones are written directly after flushing.
    pub fn put_value(&mut self, v: &[u8]) -> io::Result<()> {
        if self.muted {
            return Ok(());
        }
        if v.len() >= DIRECT_VALUE {
            self.flush()?;
            self.stream.write_all(v)?;
            self.ctx.bytes_written.add(v.len() as u64);
        } else {
            self.out.extend_from_slice(v);
        }
        Ok(())
    }

    /// Writes queued output if it has grown past the threshold.
    pub fn maybe_flush(&mut self) -> io::Result<()> {
        if self.out.len() >= OUTPUT_FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Counts one request towards the fairness budget (see
    /// [`YIELD_EVERY`]): a long pipeline of small requests yields too.
    pub fn request_done(&mut self) {
        self.unyielded += 1024;
        if self.unyielded >= YIELD_EVERY {
            self.unyielded = 0;
            weave::yield_now();
        }
    }

    /// Writes all queued output.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.ctx.bytes_written.add(self.out.len() as u64);
            self.out.clear();
            if self.out.capacity() > 4 * OUTPUT_FLUSH_AT {
                self.out = Vec::with_capacity(OUTPUT_INITIAL);
            }
        }
        Ok(())
    }

    /// Drops queued output unwritten (a connection hung up on sends
    /// nothing more).
    pub fn discard_output(&mut self) {
        self.out.clear();
    }

    /// Output queued but not yet written (for tests).
    #[cfg(test)]
    pub fn pending(&self) -> &[u8] {
        &self.out
    }

    /// The largest size the input buffer has reached (for tests).
    #[cfg(test)]
    pub fn input_high_water(&self) -> usize {
        self.high_water
    }
}

impl<S> Drop for Conn<'_, S> {
    fn drop(&mut self) {
        self.ctx.buffers.give(self.buf_taken);
    }
}

/// The general statistics, in memcached 1.6.18's names and order, for
/// `stats` (text) and STAT (binary). Names of mechanisms kv does not have
/// (libevent, response objects, read buffers, slab rebalancing, the LRU
/// crawler and maintainer, log watchers) and counters kv does not keep
/// (rejected connections, yields, listen pauses) read 0, so parsers that
/// expect memcached's full list find it. With `--aof`, the log's health
/// (`aof_*`) follows memcached's list.
pub fn stats_list(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let s = &ctx.store.stats;
    let g = |a: &Counter| a.get().to_string();
    let gauge = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    let zero = || "0".to_string();
    let (user, system) = cpu_times();
    let uptime = ctx.started.elapsed().as_secs();
    let mut v = vec![
        ("pid", std::process::id().to_string()),
        ("uptime", uptime.to_string()),
        ("time", ctx.store.now().to_string()),
        ("version", VERSION.to_string()),
        ("libevent", "none".to_string()),
        ("pointer_size", (usize::BITS).to_string()),
        ("rusage_user", user),
        ("rusage_system", system),
        ("max_connections", ctx.max_conns.to_string()),
        ("curr_connections", gauge(&ctx.curr_conns)),
        ("total_connections", g(&ctx.total_conns)),
        ("rejected_connections", zero()),
        ("connection_structures", gauge(&ctx.curr_conns)),
        ("response_obj_oom", zero()),
        ("response_obj_count", zero()),
        ("response_obj_bytes", zero()),
        ("read_buf_count", zero()),
        ("read_buf_bytes", ctx.buffers.used().to_string()),
        ("read_buf_bytes_free", zero()),
        ("read_buf_oom", g(&ctx.buffer_oom)),
        ("reserved_fds", zero()),
        ("cmd_get", g(&s.cmd_get)),
        ("cmd_set", g(&s.cmd_set)),
        ("cmd_flush", g(&s.cmd_flush)),
        ("cmd_touch", g(&s.cmd_touch)),
        ("cmd_meta", g(&ctx.cmd_meta)),
        ("get_hits", g(&s.get_hits)),
        ("get_misses", g(&s.get_misses)),
        ("get_expired", g(&s.get_expired)),
        ("get_flushed", g(&s.get_flushed)),
        ("delete_misses", g(&s.delete_misses)),
        ("delete_hits", g(&s.delete_hits)),
        ("incr_misses", g(&s.incr_misses)),
        ("incr_hits", g(&s.incr_hits)),
        ("decr_misses", g(&s.decr_misses)),
        ("decr_hits", g(&s.decr_hits)),
        ("cas_misses", g(&s.cas_misses)),
        ("cas_hits", g(&s.cas_hits)),
        ("cas_badval", g(&s.cas_badval)),
        ("touch_hits", g(&s.touch_hits)),
        ("touch_misses", g(&s.touch_misses)),
        ("store_too_large", g(&ctx.store_too_large)),
        ("store_no_memory", g(&ctx.store_no_memory)),
        ("auth_cmds", g(&ctx.auth_cmds)),
        ("auth_errors", g(&ctx.auth_errors)),
        ("bytes_read", g(&ctx.bytes_read)),
        ("bytes_written", g(&ctx.bytes_written)),
        ("limit_maxbytes", ctx.store.limit().to_string()),
        ("accepting_conns", "1".to_string()),
        ("listen_disabled_num", zero()),
        ("time_in_listen_disabled_us", zero()),
        ("threads", ctx.threads.to_string()),
        ("conn_yields", zero()),
        ("hash_power_level", zero()),
        ("hash_bytes", gauge(&s.index_bytes)),
        ("hash_is_expanding", zero()),
        ("slab_reassign_rescues", zero()),
        ("slab_reassign_chunk_rescues", zero()),
        ("slab_reassign_evictions_nomem", zero()),
        ("slab_reassign_inline_reclaim", zero()),
        ("slab_reassign_busy_items", zero()),
        ("slab_reassign_busy_deletes", zero()),
        ("slab_reassign_running", zero()),
        ("slabs_moved", zero()),
        ("lru_crawler_running", zero()),
        ("lru_crawler_starts", zero()),
        ("lru_maintainer_juggles", zero()),
        ("malloc_fails", zero()),
        ("log_worker_dropped", zero()),
        ("log_worker_written", zero()),
        ("log_watcher_skipped", zero()),
        ("log_watcher_sent", zero()),
        ("log_watchers", zero()),
        ("unexpected_napi_ids", zero()),
        ("round_robin_fallback", zero()),
        ("bytes", gauge(&s.bytes)),
        ("curr_items", gauge(&s.curr_items)),
        ("total_items", g(&s.total_items)),
        ("slab_global_page_pool", zero()),
        ("expired_unfetched", zero()),
        ("evicted_unfetched", zero()),
        ("evicted_active", zero()),
        ("evictions", g(&s.evictions)),
        ("reclaimed", g(&s.reclaimed)),
        ("crawler_reclaimed", zero()),
        ("crawler_items_checked", zero()),
        ("lrutail_reflocked", zero()),
        ("moves_to_cold", zero()),
        ("moves_to_warm", zero()),
        ("moves_within_lru", zero()),
        ("direct_reclaims", zero()),
        ("lru_bumps_dropped", zero()),
    ];
    if let Some(j) = ctx.store.journal() {
        let h = j.health();
        v.extend([
            ("aof_fsync_errors", gauge(&h.fsync_errors)),
            ("aof_write_errors", gauge(&h.write_errors)),
            ("aof_writes_refused", gauge(&h.refused)),
            (
                "aof_last_fsync_ok",
                u8::from(!h.sync_failed.load(Ordering::Relaxed)).to_string(),
            ),
            ("aof_rewrites", gauge(&h.rewrites)),
        ]);
    }
    v
}

/// `stats reset`: zeroes the counters (not the gauges).
pub fn reset_stats(ctx: &Ctx) {
    let s = &ctx.store.stats;
    for c in [
        &s.cmd_get,
        &s.cmd_set,
        &s.cmd_flush,
        &s.cmd_touch,
        &s.get_hits,
        &s.get_misses,
        &s.get_expired,
        &s.get_flushed,
        &s.delete_hits,
        &s.delete_misses,
        &s.incr_hits,
        &s.incr_misses,
        &s.decr_hits,
        &s.decr_misses,
        &s.cas_hits,
        &s.cas_misses,
        &s.cas_badval,
        &s.touch_hits,
        &s.touch_misses,
        &ctx.auth_cmds,
        &ctx.auth_errors,
        &s.total_items,
        &s.evictions,
        &s.reclaimed,
        &ctx.total_conns,
        &ctx.bytes_read,
        &ctx.bytes_written,
        &ctx.cmd_meta,
        &ctx.store_too_large,
        &ctx.store_no_memory,
    ] {
        c.reset();
    }
}

/// User and system CPU time of the process, as `seconds.micros`.
fn cpu_times() -> (String, String) {
    // SAFETY: getrusage only writes the struct we pass, which is plain data
    // and valid when zeroed.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let f = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    (f(ru.ru_utime), f(ru.ru_stime))
}

/// Keeps `curr_connections` right however the handler ends.
struct Open<'a>(&'a Ctx);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.curr_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection until it closes, quits or sends something
/// that ends it (a bad binary header, a line that looks like HTTP). The
/// first byte picks the protocol: 0x80 is a binary request, anything else
/// is text. With authentication on, a text connection first goes through
/// [`auth::handshake`] and a binary one is refused.
///
/// # Errors
///
/// I/O errors other than the peer going away.
#[cfg(test)]
pub fn handle_conn<S: Read + Write>(stream: S, ctx: &Ctx) -> io::Result<()> {
    handle_conn_from(stream, ctx, None)
}

/// [`handle_conn`] for a connection listed by `stats conns` under `id`
/// (its socket number) with its peer address (`tcp:HOST:PORT`).
///
/// # Errors
///
/// As [`handle_conn`].
pub fn handle_conn_from<S: Read + Write>(
    stream: S,
    ctx: &Ctx,
    listed: Option<(u64, String)>,
) -> io::Result<()> {
    ctx.curr_conns.fetch_add(1, Ordering::Relaxed);
    ctx.total_conns.add(1);
    let _open = Open(ctx);
    let registered = listed.map(|(id, peer)| ctx.conns.register(id, peer, ctx.store.now()));
    let mut c = Conn::new(stream, ctx);
    c.stat = registered.as_ref().map(|r| &*r.stat);
    let r = (|| {
        if !c.fill(INPUT_INITIAL)? {
            return Ok(());
        }
        if c.data()[0] == binary::REQ_MAGIC {
            match &ctx.auth {
                Some(_) => binary::refuse_unauthenticated(&mut c)?,
                None => binary::serve(&mut c, ctx)?,
            }
        } else {
            if let Some(users) = &ctx.auth {
                if !auth::handshake(&mut c, ctx, users)? {
                    return c.flush();
                }
            }
            text::serve(&mut c, ctx)?;
        }
        c.flush()
    })();
    match r {
        Err(e) if peer_gone(&e) => Ok(()),
        r => r,
    }
}

/// Whether `e` only says the client went away (reset, hung up, closed
/// mid-request): the connection ends quietly, not with an error.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

mod request;
pub use request::{handle_request, Session};

/// An in-memory client for protocol tests: reads come from a script (in
/// chunks of a chosen size, to exercise split requests), writes are kept.
#[cfg(test)]
pub mod mock;

#[cfg(test)]
mod tests;
