//! Echo server on `may` coroutines, the stackful peer in the echo benchmark
//! (`scripts/bench-echo.sh`): `--workers` worker threads (not pinned to
//! cores, like the other servers), one coroutine per connection, a 64 KiB
//! read buffer per connection (on the heap: may's default stacks are small),
//! `TCP_NODELAY` on every connection.
//!
//! ```text
//! cargo run -p weave-bench --release --example echo_may -- --addr 127.0.0.1:7002 --workers 1
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use may::net::{TcpListener, TcpStream};

/// Echo server on may coroutines.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7002")]
    addr: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// Size of each connection's read buffer, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    buffer: u64,
}

fn echo(mut conn: TcpStream, buffer: usize) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; buffer];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

/// Spawns a may coroutine.
fn spawn<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: may's spawn is unsafe because coroutines can move between
    // threads (thread-locals read across a switch may be stale) and their
    // stacks are not overflow-checked. The accept loop and the connection
    // handlers use no thread-locals, keep their buffers on the heap, and
    // need far less than may's default stack.
    unsafe { may::coroutine::spawn(f) }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    may::config()
        .set_workers(args.workers as usize)
        .set_worker_pin(false);
    let buffer = args.buffer as usize;
    let addr = args.addr;
    let server = spawn(move || -> io::Result<()> {
        let listener = TcpListener::bind(addr)?;
        loop {
            match listener.accept() {
                Ok((conn, _)) => {
                    spawn(move || {
                        let _ = echo(conn, buffer);
                    });
                }
                Err(e) => {
                    eprintln!("echo_may: accept: {e}");
                    may::coroutine::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    });
    server
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("accept loop panicked")))
}
