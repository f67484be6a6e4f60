//! Load generator for echo servers, written on weave: one fiber per client
//! connection, straight-line blocking-style code.
//!
//! Load mode (the default): opens `--conns` connections (paced by
//! `--connect-rate`, so thousands of connections do not overflow the server's
//! listen backlog), waits until all are up, then for `--secs` seconds each
//! connection keeps `--depth` messages of `--size` bytes in flight: it writes
//! `depth` messages, then for every echo it has read back in full (and
//! checked byte for byte) it writes one more. Every message carries its
//! sequence number and a per-connection byte pattern, so a lost, duplicated,
//! reordered or corrupted byte is caught.
//!
//! It reports messages per second, MB/s (each direction), and the latency of
//! each message from its write to the end of its echo (p50, p99, p99.9). With
//! `--server-pid` it also reads the server's CPU time (user + system, from
//! `/proc/PID/stat`) at the start and end of the measured window and reports
//! the server's CPU microseconds per message; it always reports its own.
//!
//! Churn mode (`--churn`): each connection fiber loops on connect, echo one
//! message, close, so the server's accept path is what gets measured; the
//! reported messages are whole connections.
//!
//! Idle mode (`--idle-conns N`): opens N connections, echoes one message on
//! each (so the server has accepted it and started its handler), prints a
//! `READY` line, holds them open for `--hold` seconds, then closes them. Used
//! to measure a server's resident memory per idle connection.
//!
//! The last line of output is machine-readable: `RESULT key=value ...`.
//!
//! ```text
//! cargo run --release --example echo_load -- --addr 127.0.0.1:7000 --conns 64 --size 64 --secs 3
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use weave::net::TcpStream;

/// Echo load generator: throughput, latency percentiles and server CPU per
/// message, or idle connections for memory measurements.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Address of the echo server.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Number of client connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    conns: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    size: u64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    depth: u64,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = parse_secs)]
    secs: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// PID of the server, to report its CPU time per message.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Idle mode: open this many connections and hold them (no load).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    idle_conns: Option<u64>,
    /// Idle mode: how long to hold the connections open, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    hold: f64,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    connect_rate: u64,
    /// Churn mode: each of the `--conns` clients loops on connect, echo one
    /// message, close; a "message" is then one whole connection, and its
    /// latency runs from the connect to the echo. Measures accepting.
    #[arg(long)]
    churn: bool,
    /// Timeout of each connect, read and write, in seconds; a connection
    /// that times out counts as an error.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    io_timeout: f64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err("expected a number of seconds in (0, 86400]".to_string())
    }
}

/// A one-shot gate that fibers wait on until it opens.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waiters: Mutex<Vec<weave::Fiber>>,
}

impl Gate {
    fn wait(&self) {
        {
            let mut w = self.waiters.lock().unwrap();
            if self.open.load(Ordering::Acquire) {
                return;
            }
            w.push(weave::current());
        }
        while !self.open.load(Ordering::Acquire) {
            weave::park();
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap());
        for f in waiters {
            f.unpark();
        }
    }
}

/// State shared by the driver fiber and the connection fibers.
struct Shared {
    args: Args,
    /// Connections that finished connecting (or failed to).
    settled: AtomicUsize,
    start: Gate,
    /// End of the measured window (load) or of the hold (idle); set before
    /// `start` opens.
    deadline: Mutex<Option<Instant>>,
    /// Idle mode: opens when the connections may close.
    release: Gate,
}

/// What one connection did.
#[derive(Default)]
struct ConnStats {
    msgs: u64,
    /// Latency of each message, in nanoseconds (saturating at ~4.3 s).
    latencies: Vec<u32>,
    error: Option<String>,
}

/// The byte pattern of connection `id`'s messages; the first (up to) eight
/// bytes of each message are replaced by its sequence number.
fn template(id: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|j| (id.wrapping_mul(131) ^ (j as u64).wrapping_mul(29)).wrapping_add(7) as u8)
        .collect()
}

fn stamp(msg: &mut [u8], seq: u64) {
    let h = msg.len().min(8);
    msg[..h].copy_from_slice(&seq.to_le_bytes()[..h]);
}

fn check(echo: &[u8], tmpl: &[u8], seq: u64) -> io::Result<()> {
    let h = tmpl.len().min(8);
    if echo[..h] != seq.to_le_bytes()[..h] || echo[h..] != tmpl[h..] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echo of message {seq} does not match what was sent"),
        ));
    }
    Ok(())
}

fn connect(shared: &Shared) -> io::Result<TcpStream> {
    let timeout = Duration::from_secs_f64(shared.args.io_timeout);
    let s = TcpStream::connect_timeout(&shared.args.addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Reads echoed bytes into a buffer and hands out whole messages.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new(msg_size: usize) -> Reader {
        Reader {
            buf: vec![0; (64 * 1024).max(msg_size)],
            start: 0,
            end: 0,
        }
    }

    /// Whole messages buffered.
    fn available(&self, size: usize) -> usize {
        (self.end - self.start) / size
    }

    /// Reads at least one more whole message (one system call when the data
    /// is there).
    fn fill(&mut self, conn: &mut TcpStream, size: usize) -> io::Result<()> {
        if self.start > 0 && self.buf.len() - self.start < size {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < size {
            let n = conn.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.end += n;
        }
        Ok(())
    }

    fn take(&mut self, size: usize) -> &[u8] {
        let m = &self.buf[self.start..self.start + size];
        self.start += size;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        m
    }
}

/// One connection of the load: connect, wait for the start, then keep
/// `depth` messages in flight until the deadline.
fn load_conn(shared: Arc<Shared>, id: u64) -> ConnStats {
    let mut stats = ConnStats::default();
    if shared.args.churn {
        shared.settled.fetch_add(1, Ordering::Release);
        shared.start.wait();
        let deadline = shared.deadline.lock().unwrap().expect("deadline set");
        if let Err(e) = run_churn(&shared, id, deadline, &mut stats) {
            stats.error = Some(e.to_string());
        }
        return stats;
    }
    let conn = connect(&shared);
    shared.settled.fetch_add(1, Ordering::Release);
    let result = conn.and_then(|mut conn| {
        shared.start.wait();
        let deadline = shared.deadline.lock().unwrap().expect("deadline set");
        run_load(&shared.args, id, &mut conn, deadline, &mut stats)
    });
    if let Err(e) = result {
        stats.error = Some(e.to_string());
    }
    stats
}

fn run_load(
    args: &Args,
    id: u64,
    conn: &mut TcpStream,
    deadline: Instant,
    stats: &mut ConnStats,
) -> io::Result<()> {
    let size = args.size as usize;
    let depth = args.depth as usize;
    let tmpl = template(id, size);
    // Outgoing messages are built here, several at once when echoes come back
    // in a batch, and written with one call.
    let mut out = Vec::with_capacity(size * depth);
    let mut reader = Reader::new(size);
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let (mut next_send, mut next_recv) = (0u64, 0u64);

    let now = Instant::now();
    for _ in 0..depth {
        let at = out.len();
        out.extend_from_slice(&tmpl);
        stamp(&mut out[at..], next_send);
        next_send += 1;
        sent_at.push_back(now);
    }
    conn.write_all(&out)?;

    loop {
        reader.fill(conn, size)?;
        let now = Instant::now();
        let n = reader.available(size);
        for _ in 0..n {
            check(reader.take(size), &tmpl, next_recv)?;
            next_recv += 1;
            let sent = sent_at.pop_front().expect("a message in flight");
            let ns = now.duration_since(sent).as_nanos();
            stats.latencies.push(ns.min(u32::MAX as u128) as u32);
        }
        stats.msgs += n as u64;
        if now >= deadline {
            return Ok(());
        }
        out.clear();
        for _ in 0..n {
            let at = out.len();
            out.extend_from_slice(&tmpl);
            stamp(&mut out[at..], next_send);
            next_send += 1;
            sent_at.push_back(now);
        }
        conn.write_all(&out)?;
    }
}

/// Churn: connect, echo one message, close, until the deadline.
fn run_churn(shared: &Shared, id: u64, deadline: Instant, stats: &mut ConnStats) -> io::Result<()> {
    let size = shared.args.size as usize;
    let mut msg = template(id, size);
    let mut back = vec![0; size];
    for seq in 0.. {
        let start = Instant::now();
        if start >= deadline {
            break;
        }
        stamp(&mut msg, seq);
        let mut conn = connect(shared)?;
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        check(&back, &msg, seq)?;
        drop(conn);
        let ns = start.elapsed().as_nanos();
        stats.latencies.push(ns.min(u32::MAX as u128) as u32);
        stats.msgs += 1;
    }
    Ok(())
}

/// One idle connection: connect, echo one message, then wait for release.
fn idle_conn(shared: Arc<Shared>, id: u64) -> ConnStats {
    let mut stats = ConnStats::default();
    let size = shared.args.size as usize;
    let result = connect(&shared).and_then(|mut conn| {
        let mut msg = template(id, size);
        stamp(&mut msg, 0);
        conn.write_all(&msg)?;
        let mut back = vec![0; size];
        conn.read_exact(&mut back)?;
        check(&back, &msg, 0)?;
        Ok(conn)
    });
    shared.settled.fetch_add(1, Ordering::Release);
    match result {
        Ok(conn) => {
            stats.msgs = 1;
            shared.release.wait();
            drop(conn);
        }
        Err(e) => stats.error = Some(e.to_string()),
    }
    stats
}

/// CPU time (user + system) of a process, in microseconds.
fn cpu_us(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesized command name; utime and stime are the
    // 14th and 15th fields of the line, i.e. 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 * 1e6 / hz)
}

/// Raises the soft open-files limit to the hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; failure leaves the limit as it was.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Spawns `n` connection fibers, paced at `connect_rate` per second, and
/// waits (bounded) until each has connected or failed.
fn open_conns(
    shared: &Arc<Shared>,
    n: u64,
    body: fn(Arc<Shared>, u64) -> ConnStats,
) -> Vec<weave::JoinHandle<ConnStats>> {
    let rate = shared.args.connect_rate;
    let batch = (rate / 400).max(1);
    let pause = Duration::from_secs_f64(batch as f64 / rate as f64);
    let mut handles = Vec::with_capacity(n as usize);
    for id in 0..n {
        let s = shared.clone();
        handles.push(weave::spawn(move || body(s, id)));
        if (id + 1) % batch == 0 {
            weave::sleep(pause);
        }
    }
    let limit = Instant::now() + Duration::from_secs_f64(shared.args.io_timeout + 30.0);
    while (shared.settled.load(Ordering::Acquire) as u64) < n && Instant::now() < limit {
        weave::sleep(Duration::from_millis(2));
    }
    handles
}

/// Joins the connection fibers; returns their stats and prints the first
/// few errors.
fn collect(handles: Vec<weave::JoinHandle<ConnStats>>) -> (Vec<ConnStats>, u64) {
    let mut all = Vec::with_capacity(handles.len());
    let mut errors = 0u64;
    for h in handles {
        let s = h.join().unwrap_or_else(|_| ConnStats {
            error: Some("connection fiber panicked".to_string()),
            ..ConnStats::default()
        });
        if let Some(e) = &s.error {
            errors += 1;
            if errors <= 5 {
                eprintln!("echo_load: connection error: {e}");
            }
        }
        all.push(s);
    }
    (all, errors)
}

fn load(shared: Arc<Shared>) -> io::Result<()> {
    let args = shared.args.clone();
    let handles = open_conns(&shared, args.conns, load_conn);
    let window = Duration::from_secs_f64(args.secs);
    let server0 = args.server_pid.and_then(|p| cpu_us(Some(p)));
    let client0 = cpu_us(None);
    let start = Instant::now();
    *shared.deadline.lock().unwrap() = Some(start + window);
    shared.start.open();
    weave::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let server1 = args.server_pid.and_then(|p| cpu_us(Some(p)));
    let client1 = cpu_us(None);
    let (stats, errors) = collect(handles);

    let msgs: u64 = stats.iter().map(|s| s.msgs).sum();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| io::Error::other(e.to_string()))?;
    for s in &stats {
        for &ns in &s.latencies {
            hist.saturating_record(u64::from(ns.max(1)));
        }
    }
    let msgs_per_s = msgs as f64 / elapsed;
    let mb_per_s = msgs_per_s * args.size as f64 / 1e6;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_msg = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if msgs > 0 => Some((b - a) / msgs as f64),
        _ => None,
    };
    let server_cpu = per_msg(server0, server1);
    let client_cpu = per_msg(client0, client1);
    let fmt_opt = |v: Option<f64>| v.map_or("na".to_string(), |v| format!("{v:.2}"));

    println!(
        "echo_load: {} conns x {} B, depth {}, {:.1} s, {} worker(s), server {}",
        args.conns, args.size, args.depth, elapsed, args.workers, args.addr
    );
    println!("  throughput: {msgs_per_s:.0} msgs/s, {mb_per_s:.1} MB/s each way");
    println!(
        "  latency:    p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0
    );
    println!(
        "  cpu/msg:    server {} us, load generator {} us",
        fmt_opt(server_cpu),
        fmt_opt(client_cpu)
    );
    if errors > 0 {
        println!("  errors:     {errors} connection(s) failed");
    }
    println!(
        "RESULT conns={} size={} depth={} secs={:.3} msgs={} msgs_per_s={:.0} mb_per_s={:.2} \
         p50_us={:.1} p99_us={:.1} p999_us={:.1} server_cpu_us_per_msg={} \
         client_cpu_us_per_msg={} errors={}",
        args.conns,
        args.size,
        args.depth,
        elapsed,
        msgs,
        msgs_per_s,
        mb_per_s,
        us(0.5),
        us(0.99),
        us(0.999),
        fmt_opt(server_cpu),
        fmt_opt(client_cpu),
        errors
    );
    if msgs == 0 {
        return Err(io::Error::other("no message was echoed"));
    }
    Ok(())
}

fn idle(shared: Arc<Shared>, n: u64) -> io::Result<()> {
    let hold = Duration::from_secs_f64(shared.args.hold);
    let handles = open_conns(&shared, n, idle_conn);
    let ready = handles.len() as u64;
    println!("READY conns={n}");
    io::stdout().flush()?;
    weave::sleep(hold);
    shared.release.open();
    let (stats, errors) = collect(handles);
    let ok = stats.iter().filter(|s| s.error.is_none()).count();
    println!("RESULT idle_conns={ready} open_ok={ok} errors={errors}");
    if ok == 0 {
        return Err(io::Error::other("no connection could be opened"));
    }
    Ok(())
}

fn main() -> io::Result<()> {
    env_logger::init();
    let args = Args::parse();
    raise_nofile();
    let rt = weave::Runtime::builder()
        .workers(args.workers as usize)
        .build()?;
    let shared = Arc::new(Shared {
        args: args.clone(),
        settled: AtomicUsize::new(0),
        start: Gate::default(),
        deadline: Mutex::new(None),
        release: Gate::default(),
    });
    rt.block_on(move || match shared.args.idle_conns {
        Some(n) => idle(shared, n),
        None => load(shared),
    })
}
