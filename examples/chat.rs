//! A chat hub on weave's channels: every line a client sends goes to every
//! connected client (the sender too), prefixed with the sender's id:
//! `17: hello`. Try it with a few `nc 127.0.0.1 7070`.
//!
//! ```text
//! cargo run --release --example chat -- --addr 127.0.0.1:7070 --queue 1024
//! ```
//!
//! # Layout
//!
//! - Each connection's handler (a fiber) reads lines and sends them to the
//!   hub's inbox, a bounded `weave::sync::sync_channel`. A publisher faster
//!   than the hub parks there: back-pressure on the publisher only.
//! - The hub (one plain thread: weave's channels connect threads and fibers
//!   in any direction) fans each line out to every client's outbound queue,
//!   also a bounded `sync_channel`, with `try_send`. It never waits on a
//!   client.
//! - Each connection has a writer fiber that drains its queue and writes
//!   whatever has gathered in one `write`.
//!
//! # Slow consumers
//!
//! A client that stops reading must not stall the others, and must not make
//! the server hold an unbounded backlog for it. Its kernel buffers fill, its
//! writer blocks, its queue fills; the next `try_send` to it fails with
//! `Full` and the hub **drops the client**: it forgets the queue and shuts
//! the socket down, which ends the writer and the reader. Messages it had
//! not received are lost to it; everyone else got them without waiting.
//! What a stopped reader can cost is bounded: `--queue` messages, plus a
//! kernel send buffer capped at [`SEND_BUFFER`] bytes (Linux would otherwise
//! grow it to megabytes for a loopback peer), plus what its own receive
//! buffer holds. A writer that waits longer than `--write-timeout` for a
//! single write is dropped the same way, so a trickling reader cannot hold
//! its queue forever either.
//!
//! (Skipping instead of dropping, i.e. discarding the message for that client
//! and keeping it, would leave it with a stream that silently has holes;
//! for a chat a clean disconnect the client can notice is the better
//! default.)

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weave::server::{Conn, Server};
use weave::sync::{self, Receiver, SyncSender, TrySendError};

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
    /// Messages queued for one client before it counts as not reading and
    /// is dropped.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Seconds one write to a client may wait before the client is dropped.
    #[arg(long, default_value_t = 30)]
    pub write_timeout: u64,
}

/// Longest line a client may send, newline included; a longer one closes
/// the connection.
pub const MAX_LINE: usize = 4096;
/// Kernel send buffer of each connection, in bytes (see the header).
pub const SEND_BUFFER: usize = 64 * 1024;
/// Lines waiting for the hub before publishers park.
const INBOX: usize = 4096;

/// One message as it goes out: the whole line, prefix and newline included,
/// shared by every queue it is in.
type Line = Arc<[u8]>;

enum Event {
    Join {
        id: u64,
        queue: SyncSender<Line>,
        conn: Arc<Conn>,
    },
    Leave {
        id: u64,
    },
    Publish(Line),
}

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

/// The hub: a handle to its inbox, shared by every connection.
#[derive(Clone)]
pub struct Hub {
    inbox: SyncSender<Event>,
    stats: Arc<Stats>,
    next_id: Arc<AtomicU64>,
    queue: usize,
    write_timeout: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats).finish()
    }
}

impl Hub {
    /// Starts a hub whose clients may fall `queue` messages behind, and whose
    /// writes may wait `write_timeout`. It runs until every handle to it is
    /// dropped.
    ///
    /// # Errors
    ///
    /// The hub's thread could not be started.
    pub fn start(queue: usize, write_timeout: Duration) -> io::Result<Hub> {
        let (inbox, events) = sync::sync_channel(INBOX);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("chat-hub".into())
            .spawn(move || run_hub(events, &st))?;
        Ok(Hub {
            inbox,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
            queue: queue.max(1),
            write_timeout,
        })
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
        let (queue, outbound) = sync::sync_channel(self.queue);
        let writer = {
            let conn = conn.clone();
            weave::spawn(move || write_loop(&conn, &outbound))
        };
        let joined = self.event(Event::Join {
            id,
            queue,
            conn: conn.clone(),
        });
        let result = joined.and_then(|()| self.read_loop(id, &conn));
        // Leaving makes the hub drop our queue, which ends the writer once
        // it has sent what is left (or fails to: it is shut down then).
        let _ = self.event(Event::Leave { id });
        if result.is_err() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let _ = writer.join();
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
                // Shut down by the hub (dropped) while we were reading.
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
                self.event(Event::Publish(out.into()))?;
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

    fn event(&self, e: Event) -> io::Result<()> {
        self.inbox
            .send(e)
            .map_err(|_| io::Error::other("the chat hub has stopped"))
    }
}

/// The hub's loop: the only owner of the client table.
fn run_hub(events: Receiver<Event>, stats: &Stats) {
    let mut clients: HashMap<u64, (SyncSender<Line>, Arc<Conn>)> = HashMap::new();
    let mut slow = Vec::new();
    for e in events {
        match e {
            Event::Join { id, queue, conn } => {
                stats.joined.fetch_add(1, Ordering::Relaxed);
                clients.insert(id, (queue, conn));
            }
            Event::Leave { id } => {
                if clients.remove(&id).is_some() {
                    stats.left.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Publish(line) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
                for (&id, (queue, _)) in &clients {
                    match queue.try_send(line.clone()) {
                        Ok(()) => {}
                        // Not reading: drop it (see the header).
                        Err(TrySendError::Full(_)) => slow.push(id),
                        // Its writer ended (write error or timeout): drop it
                        // too; its reader's `Leave` will find it gone.
                        Err(TrySendError::Disconnected(_)) => slow.push(id),
                    }
                }
                for id in slow.drain(..) {
                    if let Some((_, conn)) = clients.remove(&id) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "chat: dropping client {id} ({}): not reading",
                            conn.peer_addr()
                        );
                        let _ = conn.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
}

/// A client's writer: sends its queue, gathering what has piled up into one
/// write, until the hub drops the queue or a write fails.
fn write_loop(conn: &Conn, outbound: &Receiver<Line>) -> io::Result<()> {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Ok(line) = outbound.recv() {
        batch.extend_from_slice(&line);
        while batch.len() < 64 * 1024 {
            match outbound.try_recv() {
                Ok(line) => batch.extend_from_slice(&line),
                Err(_) => break,
            }
        }
        if let Err(e) = (&*conn).write_all(&batch) {
            // Too slow (timed out) or gone: make sure the reader ends too.
            let _ = conn.shutdown(Shutdown::Both);
            return Err(e);
        }
        batch.clear();
    }
    Ok(())
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
    let hub = Hub::start(args.queue, Duration::from_secs(args.write_timeout.max(1)))?;
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
