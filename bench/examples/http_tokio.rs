//! The HTTP example's protocol code (`examples/http.rs`, its `Session`) on
//! tokio: the tokio peer in `scripts/bench-http.sh`. Parsing, routing and
//! response bytes are the very same functions as weave's; only the
//! connection loop differs (`.await` on tokio's sockets instead of weave's
//! blocking calls), so the comparison measures the runtimes.
//!
//! ```text
//! cargo run -p weave-bench --release --example http_tokio -- --addr 127.0.0.1:8081 --workers 1
//! ```

#[allow(dead_code)] // the weave program's `main` and flags are not used here
#[path = "../../examples/http.rs"]
mod http;

use std::io;
use std::net::SocketAddr;

use clap::Parser;
use http::{Session, Step};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The HTTP example's protocol on a tokio multi-threaded runtime.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
}

/// `http::serve_conn`, line for line, with `.await`.
async fn serve_conn(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut session = Session::default();
    let mut buf = vec![0u8; 4096];
    let mut start = 0;
    let mut filled = 0;
    let mut out = Vec::with_capacity(4096);
    loop {
        let (used, step) = session.answer(&buf[start..filled], &mut out);
        start += used;
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        match step {
            Step::Flush => continue,
            Step::Close => return Ok(()),
            Step::NeedInput => {}
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        start = 0;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = conn.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers as usize)
        .enable_io()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.addr).await?;
        eprintln!("http_tokio listening on {}", args.addr);
        loop {
            let (conn, _) = listener.accept().await?;
            tokio::spawn(serve_conn(conn));
        }
    })
}
