//! `kv`: a memcached-compatible key-value server on weave fibers.
//!
//! ```text
//! cargo run --release --example kv -- -p 11211 -t 4 -m 1024
//! cargo run --release --example kv -- --aof /var/lib/kv.aof --fsync always
//! ```
//!
//! It speaks memcached's text and binary protocols (picked per connection
//! from the first byte), with memcached's flags where they exist. Every
//! connection is a fiber running [`conn::handle_conn`], plain blocking-style
//! code: read a request, act on the store, queue the reply; replies are
//! written when the input runs dry, so pipelined requests share one write.
//!
//! Modules: [`store`] (sharded LRU hash table), [`text`], [`meta`] and
//! [`binary`] (protocols), [`conn`] (buffers, context, protocol detection), [`stats`]
//! (the `stats` subcommands), [`aof`] (optional append-only log), [`auth`]
//! (ASCII authentication, `-Y`), [`tls`] (TLS, `-Z`).
//!
//! # Differences from memcached
//!
//! `scripts/memcached_diff.py` sends the same requests to kv and to
//! memcached 1.6 and compares the replies byte for byte; what it does not
//! cover, or what kv does differently on purpose:
//!
//! - **Long lines.** memcached serves any line its 16 KiB read buffer holds
//!   and closes the connection when a line without a newline outgrows 2 KiB
//!   (unless it is a `get`/`gets`, which may grow without limit). Whether a
//!   line of 3 KiB is served thus depends on how the client's bytes were
//!   split into reads. kv decides on the line alone: 16 KiB for any
//!   command, 2 MiB for `get`, `gets`, `gat` and `gats` (a bound on a
//!   connection's memory), and past that it answers `CLIENT_ERROR line too
//!   long`, drops the line and keeps the connection.
//! - **Flags of 2^32 or more.** memcached 1.6.18 stores them truncated to
//!   32 bits; kv answers `CLIENT_ERROR bad command line format` rather than
//!   hand back other flags than the client stored.
//! - **Statistics values.** Names and order match memcached's (`stats`,
//!   `settings`, `items`, `slabs`, `sizes`, `conns`); values are kv's own.
//!   kv has no slab allocator: `items` and `slabs` group items by the class
//!   memcached would use, and counters kv does not keep read 0 (see
//!   `stats.rs`). `stats conns` lists the listener as id 0 (memcached
//!   uses its socket number). `stats detail on|off|dump` is not supported
//!   (kv keeps no per-prefix counters).
//! - **Meta `E` flag.** kv accepts `E` (use this CAS unique) on `ms`,
//!   `ma`, `mg` with `N` and `md` with `I`, as memcached's protocol.txt
//!   defines it; Debian's memcached 1.6.18 predates it and answers
//!   `CLIENT_ERROR invalid flag` (or, for `md` and `ma`, `CLIENT_ERROR
//!   invalid or duplicate flag`).
//! - **A refused quiet `ms`.** When memcached 1.6.18 refuses an `ms` that
//!   carries `q` (a bad flag, say), the quiet mode leaks into the next
//!   command, whose reply is dropped too; kv answers the next command.
//! - **Meta state and the log.** The fetched, stale and win-token bits of
//!   the meta protocol are kept in memory only; after a restart from
//!   `--aof`, items read as fresh and unfetched.
//! - **Authentication (`-Y`).** `scripts/security-compare.sh` checks the
//!   handshake byte for byte. Two differences: when several requests reach
//!   memcached in one read before authentication it answers only the last
//!   (the others' replies are overwritten), where kv answers each; and
//!   memcached with `-Y` reads a binary request as text, where kv refuses
//!   it with the binary status `0x20` and closes the connection.
//! - **TLS (`-Z`).** One byte that cannot start a TLS record closes the
//!   connection at once (OpenSSL waits for a whole record header first);
//!   a handshake record too malformed to parse gets no alert from rustls
//!   (a client with no cipher in common does get one). The certificate is
//!   reloaded on SIGHUP rather than by memcached's `refresh_certs`.
//! - **Version.** `version` reports `1.6.0-weave-kv-…`.

pub(crate) mod aof;
pub(crate) mod auth;
pub(crate) mod binary;
pub(crate) mod conn;
#[cfg(test)]
pub(crate) mod fuzz;
pub(crate) mod meta;
pub(crate) mod stats;
pub(crate) mod store;
pub(crate) mod text;
pub(crate) mod tls;

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::conn::Ctx;
use crate::store::Store;

/// A memcached-compatible key-value server (text and binary protocols).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    port: u16,
    /// Interface to listen on (loopback by default).
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    listen: String,
    /// Worker threads (default: one per core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Memory for items, in MiB: every byte an item costs (its
    /// allocations as the allocator rounds them, and its share of the
    /// index) is charged against it.
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    memory_limit: usize,
    /// Memory for request buffers beyond each connection's fixed 16 KiB
    /// input buffer (long command lines, data blocks as they arrive), in
    /// MiB, shared by all connections and separate from -m. A request
    /// that does not fit is refused with an out-of-memory error.
    #[arg(long, default_value_t = 64)]
    buffer_memory: usize,
    /// Largest value, in bytes; accepts k and m suffixes (1m, 512k).
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    max_item_size: usize,
    /// Most simultaneous connections; more are closed on arrival.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    conn_limit: usize,
    /// Close a connection that sends or accepts nothing for this many
    /// seconds (0: never), like memcached's `-o idle_timeout`.
    #[arg(long, default_value_t = 0)]
    idle_timeout: u64,
    /// Close a connection whose request has been arriving for longer than
    /// this many seconds (0: never): a client trickling a request a byte
    /// at a time is never idle, so only this limit ends it.
    #[arg(long, default_value_t = 0)]
    request_timeout: u64,
    /// Keep each connection on its own fiber from accept to close (the
    /// framework's straight-line mode) instead of request mode, in which an
    /// idle connection holds no fiber and no buffer. TLS and `-Y` always
    /// use a fiber per connection.
    #[arg(long)]
    fiber_per_connection: bool,
    /// Require ASCII authentication: FILE holds `user:password` lines, and
    /// a client authenticates with a `set` whose data is `user password`
    /// (any key). Binary requests are refused.
    #[arg(short = 'Y', long = "auth-file", value_name = "FILE")]
    auth_file: Option<PathBuf>,
    /// Serve TLS only, on every listener (needs `-o ssl_chain_cert=FILE`); a
    /// client that does not speak TLS gets nothing. SIGHUP reloads the
    /// certificate and key.
    #[arg(short = 'Z', long = "enable-ssl")]
    enable_ssl: bool,
    /// memcached's extended options, `name=value[,name=value...]`:
    /// `ssl_chain_cert=FILE` (PEM certificate chain, leaf first) and
    /// `ssl_key=FILE` (PEM private key; default: from the chain file).
    #[arg(short = 'o', long = "extended", value_name = "OPTS")]
    extended: Vec<String>,
    /// Verbose logging (-v: info, -vv: debug, -vvv: trace).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Append every mutation to this log, and replay it at start.
    #[arg(long)]
    aof: Option<PathBuf>,
    /// When the log is synced to disk.
    #[arg(long, value_enum, default_value_t = aof::Fsync::Everysec)]
    fsync: aof::Fsync,
    /// If replay finds a corrupt record at this byte offset of the log,
    /// followed by valid ones, cut the log there (dropping everything after
    /// it) instead of refusing to start. Replay names the offset.
    #[arg(long, value_name = "OFFSET")]
    aof_truncate_corrupt: Option<u64>,
    /// Compact the log only once it is at least this many MiB.
    #[arg(long, default_value_t = 64, hide = true)]
    aof_rewrite_min_mb: u64,
}

/// Parses `1048576`, `1024k`, `1m` (binary units, case-insensitive).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 1048576, 512k, 1m)"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size '{s}' is out of range"))
}

/// The TLS files named by `-o` options.
#[derive(Debug, Default)]
struct Extended {
    ssl_chain_cert: Option<PathBuf>,
    ssl_key: Option<PathBuf>,
}

/// Parses `-o` options (each a comma-separated list of `name=value`).
fn parse_extended(opts: &[String]) -> io::Result<Extended> {
    let mut ext = Extended::default();
    for item in opts.iter().flat_map(|o| o.split(',')) {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        let slot = match name {
            "ssl_chain_cert" => &mut ext.ssl_chain_cert,
            "ssl_key" => &mut ext.ssl_key,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsupported -o option '{name}' (kv knows ssl_chain_cert and ssl_key)"),
                ))
            }
        };
        if value.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("-o {name} needs a file name: {name}=FILE"),
            ));
        }
        *slot = Some(PathBuf::from(value));
    }
    Ok(ext)
}

pub(crate) fn main() {
    one_malloc_arena();
    let args = Args::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Err(e) = run(args) {
        eprintln!("kv: {e}");
        std::process::exit(1);
    }
}

/// Makes every thread allocate from glibc's main arena (elsewhere: does
/// nothing). Items are stored by one worker and freed by whichever evicts
/// or replaces them; with an arena per worker each arena keeps its own
/// holes, which only its own thread's requests can reuse, and with mixed
/// item sizes two workers held 1.3-1.5x `-m` resident against 1.1x with
/// one arena (docs/bench-kv-memory.md). Each thread's small-chunk cache
/// still spares most allocations the arena's lock: no throughput change
/// was measurable. Called first thing, before any other thread exists.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable under the allocator's
    // own lock; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let limit = args
        .memory_limit
        .checked_mul(1 << 20)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "memory limit out of range"))?;
    if args.max_item_size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "max item size ({} bytes) exceeds the memory limit ({} MiB)",
                args.max_item_size, args.memory_limit
            ),
        ));
    }
    let store = Arc::new(Store::new(limit));
    if let Some(path) = &args.aof {
        let aof::Replayed { file, report: rep } =
            aof::replay(path, &store, args.aof_truncate_corrupt).map_err(|e| {
                io::Error::new(e.kind(), format!("replaying {}: {e}", path.display()))
            })?;
        log::info!(
            "{}: replayed {} records ({} items){}",
            path.display(),
            rep.records,
            store.len(),
            if rep.truncated > 0 {
                format!(", cut a torn tail of {} bytes", rep.truncated)
            } else {
                String::new()
            }
        );
        let mut cfg = aof::Config::new(path.clone(), args.fsync);
        cfg.rewrite_min = args.aof_rewrite_min_mb << 20;
        store.attach_journal(aof::Journal::start(cfg, file, rep.len, &store)?);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut ctx = Ctx::new(store.clone(), args.max_item_size);
    ctx.threads = threads;
    ctx.max_conns = args.conn_limit;
    ctx.request_timeout = Duration::from_secs(args.request_timeout);
    ctx.buffers = conn::BufferBudget::new(args.buffer_memory << 20);
    ctx.idle_timeout = args.idle_timeout;
    ctx.verbosity = AtomicU32::new(args.verbose as u32);
    if let Some(path) = &args.auth_file {
        let users = auth::Users::load(path)
            .map_err(|e| io::Error::new(e.kind(), format!("auth file {}: {e}", path.display())))?;
        ctx.auth = Some(Arc::new(users));
        ctx.auth_file = Some(path.display().to_string());
    }
    let ext = parse_extended(&args.extended)?;
    let tls = match (args.enable_ssl, &ext.ssl_chain_cert) {
        (true, Some(chain)) => {
            let key = ext.ssl_key.as_ref().unwrap_or(chain);
            let tls = Arc::new(tls::Tls::new(chain, key)?);
            tls::reload_on_sighup(tls.clone())?;
            ctx.tls_files = Some((chain.display().to_string(), key.display().to_string()));
            Some(tls)
        }
        (true, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "-Z needs a certificate: -o ssl_chain_cert=FILE[,ssl_key=FILE]",
            ))
        }
        (false, Some(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ssl_chain_cert given without -Z (TLS is off)",
            ))
        }
        (false, None) => None,
    };
    let ctx = Arc::new(ctx);

    start_sweeper(store.clone())?;
    let host = if args.listen.contains(':') && !args.listen.starts_with('[') {
        format!("[{}]", args.listen)
    } else {
        args.listen.clone()
    };
    let addr = format!("{host}:{}", args.port);
    let idle = Duration::from_secs(args.idle_timeout);
    let request_mode = !args.fiber_per_connection && tls.is_none() && ctx.auth.is_none();
    let served = serve(
        &addr,
        threads,
        args.conn_limit,
        idle,
        ctx.clone(),
        tls,
        request_mode,
    );
    if let Some(j) = store.journal() {
        if let Err(e) = j.sync() {
            log::error!("final log sync failed: {e}");
        }
    }
    log::info!("stopped after {} connections", ctx.total_conns.get());
    served
}

/// Reclaims expired items in the background: a small budget often, so no
/// sweep holds a shard lock for long; and gives freed memory back to the
/// system after heavy churn ([`Store::trim`]).
fn start_sweeper(store: Arc<Store>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("kv-sweeper".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            // Examine about 1% of the items per tick (at least 1024 slots),
            // so a full pass takes about ten seconds.
            let budget = (store.len() / 100).max(1024);
            store.sweep_expired(budget);
            store.trim();
        })?;
    Ok(())
}

/// Listens on `addr` and serves every connection with
/// [`conn::handle_conn`] on its own fiber (inside TLS when `tls` is set),
/// until SIGINT or SIGTERM (then shuts down gracefully). The one place that
/// knows how connections are accepted and scheduled.
fn serve(
    addr: &str,
    threads: usize,
    conn_limit: usize,
    idle: Duration,
    ctx: Arc<Ctx>,
    tls: Option<Arc<tls::Tls>>,
    request_mode: bool,
) -> io::Result<()> {
    // The framework binds one SO_REUSEPORT listener per worker, which would
    // let a second kv on the same port silently share the traffic. Fail like
    // memcached instead: a plain bind first must succeed.
    drop(
        std::net::TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?,
    );
    let server = weave::Server::builder()
        .bind(addr)
        .workers(threads)
        .max_connections(conn_limit)
        .idle_timeout(idle)
        .build()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    log::info!(
        "kv listening on {:?} with {threads} workers",
        server.local_addrs()
    );
    if let Some(a) = server.local_addrs().first() {
        *ctx.conns.listen.lock().unwrap() = format!("tcp:{a}");
    }
    let peer_of = |c: &weave::Conn| match c.peer_addr() {
        weave::server::PeerAddr::Tcp(a) => format!("tcp:{a}"),
        p => p.to_string(),
    };
    if request_mode {
        let ctx2 = ctx.clone();
        let summary = server.serve_requests(
            move |c| {
                let _ = c.set_nodelay(true);
                conn::Session::new(ctx2.clone(), c.as_raw_fd() as u64, peer_of(c))
            },
            |req: &mut weave::server::Request<'_, conn::Session>| {
                let (c, session, _) = req.parts();
                conn::handle_request(c, session)
            },
        )?;
        log::info!("server stopped: {summary:?}");
        return Ok(());
    }
    let summary = server.serve(move |c| {
        c.set_nodelay(true)?;
        let peer = match c.peer_addr() {
            weave::server::PeerAddr::Tcp(a) => format!("tcp:{a}"),
            p => p.to_string(),
        };
        let listed = Some((c.as_raw_fd() as u64, peer));
        match &tls {
            Some(tls) => tls.serve(c, |s| conn::handle_conn_from(s, &ctx, listed)),
            None => conn::handle_conn_from(c, &ctx, listed),
        }
    })?;
    log::info!("server stopped: {summary:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn extended_options() {
        let ext = parse_extended(&["ssl_chain_cert=/a.pem,ssl_key=/b.pem".to_string()]).unwrap();
        assert_eq!(ext.ssl_chain_cert.as_deref(), Some(Path::new("/a.pem")));
        assert_eq!(ext.ssl_key.as_deref(), Some(Path::new("/b.pem")));
        // Several -o flags add up; a later value wins.
        let ext = parse_extended(&[
            "ssl_chain_cert=/a.pem".to_string(),
            "ssl_chain_cert=/c.pem".to_string(),
        ])
        .unwrap();
        assert_eq!(ext.ssl_chain_cert.as_deref(), Some(Path::new("/c.pem")));
        assert!(ext.ssl_key.is_none());
        let err = parse_extended(&["hashpower=20".to_string()]).unwrap_err();
        assert!(err
            .to_string()
            .contains("unsupported -o option 'hashpower'"));
        let err = parse_extended(&["ssl_key".to_string()]).unwrap_err();
        assert!(err.to_string().contains("needs a file name"));
    }

    #[test]
    fn tls_needs_a_certificate_and_a_matching_key() {
        let args = |extra: &[&str]| {
            let mut v = vec!["kv", "-p", "0"];
            v.extend_from_slice(extra);
            Args::parse_from(v)
        };
        let err = run(args(&["-Z"])).unwrap_err();
        assert!(err.to_string().contains("-Z needs a certificate"), "{err}");
        let err = run(args(&["-o", "ssl_chain_cert=/nonexistent.pem"])).unwrap_err();
        assert!(err.to_string().contains("without -Z"), "{err}");
        let err = run(args(&["-Z", "-o", "ssl_chain_cert=/nonexistent/cert.pem"])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
