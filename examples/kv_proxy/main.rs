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

pub(crate) mod batch;
pub(crate) mod mux;
pub(crate) mod parse;
pub(crate) mod ring;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weave::server::{Conn, Server};

use crate::batch::{run_batch, Backends, GetScratch, Link};
use crate::mux::{worker_muxes, Seg, WaitState, Waiter};
use crate::parse::{parse_one, Batch, Input, Parsed};
use crate::ring::Ring;

/// Points each backend owns on the ring.
pub(crate) const POINTS_PER_BACKEND: usize = 160;
/// Longest command line (other than `get`/`gets`).
pub(crate) const MAX_LINE: usize = 2048;
/// Longest `get`/`gets` line.
pub(crate) const MAX_GET_LINE: usize = 64 * 1024;
/// Longest key.
pub(crate) const KEY_MAX: usize = 250;
/// Longest reply line accepted from a backend (other than `VALUE`).
pub(crate) const MAX_REPLY_LINE: usize = 1024;
/// Most requests handled in one batch.
pub(crate) const BATCH_OPS: usize = 64;
/// Most request bytes queued for the backends in one batch (the first
/// request is always taken, however big).
pub(crate) const BATCH_BYTES: usize = 64 * 1024;
/// Client output is written once this much is queued, even mid-batch.
pub(crate) const OUTPUT_FLUSH_AT: usize = 256 * 1024;

pub(crate) const UNAVAILABLE: &[u8] = b"SERVER_ERROR backend unavailable\r\n";
pub(crate) const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";

/// A memcached text-protocol proxy: keys are spread over the backends by
/// consistent hashing.
#[derive(Parser, Debug)]
#[command(version)]
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
pub(crate) struct Proxy {
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

pub(crate) fn main() {
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
