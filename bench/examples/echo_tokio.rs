//! Echo server on tokio, the async peer in the echo benchmark
//! (`scripts/bench-echo.sh`): a multi-threaded runtime with `--workers`
//! worker threads, one task per connection, a 64 KiB read buffer per
//! connection, `TCP_NODELAY` on every connection.
//!
//! ```text
//! cargo run -p weave-bench --release --example echo_tokio -- --addr 127.0.0.1:7001 --workers 1
//! ```

use std::io;
use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Echo server on tokio (multi-thread runtime).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// Size of each connection's read buffer, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    buffer: u64,
}

async fn echo(mut conn: TcpStream, buffer: usize) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; buffer];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers as usize)
        .enable_all()
        .build()?;
    let buffer = args.buffer as usize;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(async move {
                        let _ = echo(conn, buffer).await;
                    });
                }
                Err(e) => {
                    eprintln!("echo_tokio: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    })
}
