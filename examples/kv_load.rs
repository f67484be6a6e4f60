//! Load generator for memcached-compatible servers (text protocol).
//!
//! Opens `--conns` connections (one thread each), loads `--keys` keys with
//! `--value-size`-byte values, then for `--secs` seconds (or until
//! `--max-ops` requests) every connection sends batches of `--depth`
//! pipelined requests, one set per `--set-every` requests and gets
//! otherwise, on uniformly random keys, and reads the batch's replies before
//! the next. Every reply is checked (a get must return the key's value,
//! which encodes the key).
//!
//! Reports requests per second, the latency of each request (its batch's
//! round trip: p50, p99, p99.9), and with `--server-pid` the server's CPU
//! microseconds (user + system, `/proc/PID/stat`) per request over the
//! measured window. With `--tls-ca FILE` every connection is a TLS session
//! (rustls, verifying the server's certificate for `127.0.0.1` against the
//! PEM certificate in FILE), to measure what TLS costs. The last line is machine-readable:
//! `RESULT ops_per_sec=.. p50_us=.. p99_us=.. p999_us=.. server_cpu_us_per_op=..`.
//!
//! ```text
//! cargo run --release --example kv_load -- --addr 127.0.0.1:11211 --conns 50 --depth 16 --secs 5
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rand::Rng;

/// memcached text-protocol load generator.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:11211")]
    addr: SocketAddr,
    /// Connections (one client thread each).
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Requests pipelined per batch.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// One request in this many is a set (10 = 1:9 set:get).
    #[arg(long, default_value_t = 10)]
    set_every: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Stop after this many requests in total, even before `--secs`.
    #[arg(long, default_value_t = u64::MAX)]
    max_ops: u64,
    /// Server process id, for its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Speak TLS, trusting the PEM certificate(s) in this file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

/// A client connection: plain TCP or TLS over it.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Replies are read through the buffer; requests are written with
/// `get_mut()` (reads and writes never share bytes).
type Conn = BufReader<Box<dyn Stream>>;

/// The TLS client configuration for `--tls-ca`.
fn tls_config(ca: &std::path::Path) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(format!("{}: {e}", ca.display())))?)
            .map_err(|e| bad(format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The value stored under key `k`: the key number, padded to `size`.
fn value_of(k: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{k:016}").into_bytes();
    v.resize(size.max(16), b'.');
    v
}

fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Conn> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(s),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP");
            let conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|e| bad(e.to_string()))?;
            Box::new(rustls::StreamOwned::new(conn, s))
        }
    };
    Ok(BufReader::with_capacity(1 << 16, stream))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads the replies to one batch and checks them.
fn read_replies(
    r: &mut Conn,
    batch: &[(bool, u64)],
    size: usize,
    line: &mut String,
) -> io::Result<()> {
    let mut val = vec![0u8; size + 2];
    for &(is_set, k) in batch {
        line.clear();
        r.read_line(line)?;
        if is_set {
            if line != "STORED\r\n" {
                return Err(bad(format!("set k{k}: {line:?}")));
            }
            continue;
        }
        if line == "END\r\n" {
            continue; // evicted or not loaded: a miss is allowed
        }
        if !line.starts_with("VALUE ") {
            return Err(bad(format!("get k{k}: {line:?}")));
        }
        r.read_exact(&mut val)?;
        if val[..size] != value_of(k, size)[..] {
            return Err(bad(format!("get k{k}: wrong value")));
        }
        line.clear();
        r.read_line(line)?;
        if line != "END\r\n" {
            return Err(bad(format!("get k{k}: {line:?}")));
        }
    }
    Ok(())
}

fn set_cmd(out: &mut Vec<u8>, k: u64, size: usize) {
    out.extend_from_slice(format!("set k{k} 0 0 {}\r\n", size.max(16)).as_bytes());
    out.extend_from_slice(&value_of(k, size));
    out.extend_from_slice(b"\r\n");
}

/// Stores every key once, over one connection, 100 per batch.
fn preload(a: &Args, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<()> {
    let mut r = connect(a.addr, tls)?;
    let mut out = Vec::new();
    let mut line = String::new();
    let mut k = 0;
    while k < a.keys {
        out.clear();
        let n = (a.keys - k).min(100);
        let batch: Vec<(bool, u64)> = (k..k + n).map(|k| (true, k)).collect();
        for &(_, k) in &batch {
            set_cmd(&mut out, k, a.value_size);
        }
        r.get_mut().write_all(&out)?;
        read_replies(&mut r, &batch, a.value_size.max(16), &mut line)?;
        k += n;
    }
    Ok(())
}

/// CPU time (user + system) of a process, in microseconds.
fn cpu_us(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz * 1e6)
}

fn main() -> io::Result<()> {
    let a = Args::parse();
    let tls = a.tls_ca.as_deref().map(tls_config).transpose()?;
    preload(&a, tls.as_ref())?;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let start = Arc::new(Barrier::new(a.conns + 1));
    let mut threads = Vec::new();
    for _ in 0..a.conns {
        let (a, tls, stop, ops, hist, start) = (
            a.clone(),
            tls.clone(),
            stop.clone(),
            ops.clone(),
            hist.clone(),
            start.clone(),
        );
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            let mut r = connect(a.addr, tls.as_ref())?;
            let mut rng = rand::thread_rng();
            let mut h =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut out = Vec::new();
            let mut batch = Vec::with_capacity(a.depth);
            let mut line = String::new();
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                batch.clear();
                for _ in 0..a.depth {
                    let k = rng.gen_range(0..a.keys);
                    let is_set = rng.gen_range(0..a.set_every) == 0;
                    if is_set {
                        set_cmd(&mut out, k, a.value_size);
                    } else {
                        out.extend_from_slice(format!("get k{k}\r\n").as_bytes());
                    }
                    batch.push((is_set, k));
                }
                let t = Instant::now();
                r.get_mut().write_all(&out)?;
                read_replies(&mut r, &batch, a.value_size.max(16), &mut line)?;
                let us = t.elapsed().as_micros().max(1) as u64;
                h.record_n(us, a.depth as u64).ok();
                if ops.fetch_add(a.depth as u64, Ordering::Relaxed) + a.depth as u64 >= a.max_ops {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            hist.lock().unwrap_or_else(|e| e.into_inner()).add(&h).ok();
            Ok(())
        }));
    }
    start.wait();
    let t0 = Instant::now();
    let cpu0 = a.server_pid.and_then(cpu_us);
    let deadline = t0 + Duration::from_secs(a.secs);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let n = ops.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = a.server_pid.and_then(cpu_us);
    for t in threads {
        t.join().expect("client thread panicked")?;
    }
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let cpu_per_op = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) if n > 0 => format!("{:.2}", (c1 - c0) / n as f64),
        _ => "na".to_string(),
    };
    println!(
        "{} requests in {elapsed:.2} s from {} connections at depth {}",
        n, a.conns, a.depth
    );
    println!(
        "RESULT ops_per_sec={:.0} p50_us={} p99_us={} p999_us={} server_cpu_us_per_op={cpu_per_op}",
        n as f64 / elapsed,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    );
    Ok(())
}
