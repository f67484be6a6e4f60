//! A chat hub on weave's channels: every line a client sends goes to every
//! connected client (the sender too), prefixed with the sender's id:
//! `17: hello`. Try it with a few `nc 127.0.0.1 7070`.
//!
//! ```text
//! cargo run --release --example chat -- --addr 127.0.0.1:7070 --backlog 1024
//! ```
//!
//! # Layout
//!
//! - Each connection's handler (a fiber) reads lines and sends them on one
//!   `weave::sync::broadcast` channel that keeps the last `--backlog`
//!   lines. Sending never waits, so no client can hold up a publisher.
//! - Each connection has a writer fiber that subscribed before its reader
//!   started. It waits with a `weave::Select` for the next line or for its
//!   reader to leave, and writes whatever lines have gathered in one
//!   `write`.
//!
//! # Slow consumers
//!
//! A client that stops reading must not stall the others, and must not make
//! the server hold an unbounded backlog for it. Its kernel buffers fill and
//! its writer blocks in `write`; the broadcast ring moves on without it
//! (the others are unaffected: nothing waits for the slowest receiver). When
//! its writer can write again and finds that lines it never sent were
//! overwritten (`RecvError::Lagged`), the client is **dropped**: it gets a
//! last line, `* dropped: missed N lines`, and the connection is closed. A
//! client that never reads again is dropped when one write has waited
//! `--write-timeout`. What slow clients cost is bounded: the ring holds
//! `--backlog` lines however many clients fall behind, and each one pins
//! at most a kernel send buffer capped at [`SEND_BUFFER`] bytes (Linux
//! would otherwise grow it to megabytes for a loopback peer).
//!
//! (Skipping instead of dropping, i.e. carrying on after the gap, would
//! leave the client a stream with holes it cannot see; for a chat a clean
//! disconnect the client can notice is the better default.)

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weave::server::{Conn, Server};
use weave::sync::broadcast::{self, TryRecvError};
use weave::sync::oneshot;
use weave::Select;

/// Chat hub on weave fibers: every line goes to every client.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Lines the hub keeps for clients that are behind; a client that falls
    /// further behind is dropped.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub backlog: u64,
    /// Seconds one write to a client may wait before the client is dropped.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub write_timeout: u64,
}

/// Longest line a client may send, newline included; a longer one closes
/// the connection.
pub const MAX_LINE: usize = 4096;
/// Kernel send buffer of each connection, in bytes (see the header).
pub const SEND_BUFFER: usize = 64 * 1024;
/// Most bytes a writer gathers into one write.
const BATCH: usize = 64 * 1024;

/// One line as it goes out: prefix and newline included, shared by every
/// receiver.
type Line = Arc<[u8]>;

/// Counters of a hub.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients that joined.
    pub joined: AtomicU64,
    /// Clients that left by themselves.
    pub left: AtomicU64,
    /// Clients dropped for not reading.
    pub dropped: AtomicU64,
    /// Lines published.
    pub published: AtomicU64,
}

/// The hub: the broadcast channel every connection publishes on, shared by
/// every connection.
#[derive(Clone)]
pub struct Hub {
    lines: broadcast::Sender<Line>,
    stats: Arc<Stats>,
    next_id: Arc<AtomicU64>,
    write_timeout: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats).finish()
    }
}

impl Hub {
    /// A hub that keeps the last `backlog` lines for clients that are
    /// behind, and whose writes may wait `write_timeout`.
    pub fn new(backlog: usize, write_timeout: Duration) -> Hub {
        // Nobody listens until a client subscribes.
        let (lines, _) = broadcast::channel(backlog.max(1));
        Hub {
            lines,
            stats: Arc::new(Stats::default()),
            next_id: Arc::new(AtomicU64::new(1)),
            write_timeout,
        }
    }

    /// The hub's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Serves one client until it leaves, sends a line that is too long, or
    /// is dropped for not reading.
    ///
    /// # Errors
    ///
    /// An I/O error on the connection, or a line longer than [`MAX_LINE`].
    pub fn serve_conn(&self, conn: Conn) -> io::Result<()> {
        conn.set_write_timeout(Some(self.write_timeout))?;
        cap_send_buffer(&conn)?;
        let conn = Arc::new(conn);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Subscribed before the first read, so a client sees its own lines.
        let lines = self.lines.subscribe();
        let (leave, left) = oneshot::channel::<()>();
        let writer = {
            let (conn, stats) = (conn.clone(), self.stats.clone());
            weave::spawn(move || write_loop(id, &conn, lines, &left, &stats))
        };
        self.stats.joined.fetch_add(1, Ordering::Relaxed);
        let result = self.read_loop(id, &conn);
        // Dropping the sender wakes the writer's select: time to go.
        drop(leave);
        if result.is_err() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let dropped = writer.join().unwrap_or(true);
        if !dropped {
            self.stats.left.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn read_loop(&self, id: u64, conn: &Conn) -> io::Result<()> {
        let prefix = format!("{id}: ");
        let mut buf = vec![0u8; MAX_LINE];
        let mut filled = 0;
        loop {
            let n = match (&*conn).read(&mut buf[filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                // Shut down by our writer (dropped) while we were reading.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut start = 0;
            let end = filled + n;
            while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl + 1];
                let mut out = Vec::with_capacity(prefix.len() + line.len());
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(line);
                // Never waits; fails only if the hub itself is gone.
                let _ = self.lines.send(out.into());
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                start += nl + 1;
            }
            buf.copy_within(start..end, 0);
            filled = end - start;
            if filled == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("client {id} sent a line longer than {MAX_LINE} bytes"),
                ));
            }
        }
    }
}

/// A client's writer: sends every line published since it subscribed,
/// gathering what has piled up into one write, until its reader leaves.
/// Returns `true` if it dropped the client (see the header).
fn write_loop(
    id: u64,
    conn: &Conn,
    mut lines: broadcast::Receiver<Line>,
    left: &oneshot::Receiver<()>,
    stats: &Stats,
) -> bool {
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        let leaving = {
            let mut sel = Select::new();
            sel.recv(&lines);
            let leave = sel.recv(left);
            sel.ready() == leave
        };
        if leaving {
            return false;
        }
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => {
                    return drop_client(id, conn, stats, &format!("missed {missed} lines"));
                }
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = (&*conn).write_all(&batch) {
            // (A timed-out write says `TimedOut`; std's sockets would say
            // `WouldBlock`.)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                return drop_client(id, conn, stats, "not reading");
            }
            // Gone: make sure the reader ends too.
            let _ = conn.shutdown(Shutdown::Both);
            return false;
        }
        batch.clear();
    }
}

/// Drops a client that fell behind: a last line saying why (best effort),
/// then the connection is shut down, which also ends its reader.
fn drop_client(id: u64, conn: &Conn, stats: &Stats, why: &str) -> bool {
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    log::warn!("chat: dropping client {id} ({}): {why}", conn.peer_addr());
    let _ = (&*conn).write_all(format!("* dropped: {why}\n").as_bytes());
    let _ = conn.shutdown(Shutdown::Both);
    true
}

/// Caps the kernel send buffer at [`SEND_BUFFER`] bytes.
fn cap_send_buffer(conn: &Conn) -> io::Result<()> {
    let size = SEND_BUFFER as libc::c_int;
    // SAFETY: `conn`'s descriptor is open for the duration of the call, and
    // setsockopt only reads `size`, whose length we pass.
    let r = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let hub = Hub::new(
        args.backlog as usize,
        Duration::from_secs(args.write_timeout),
    );
    let mut builder = Server::builder().bind(args.addr.to_string());
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let server = builder.build()?;
    log::info!("chat listening on {:?}", server.local_addrs());
    let summary = server.serve(move |conn| hub.serve_conn(conn))?;
    log::info!("stopped: {summary:?}");
    Ok(())
}
