//! An echo server: every connection is a fiber running a plain function.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:7000 --workers 2
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use weave::server::{Conn, Next, Request, Server};

/// Echo server on weave fibers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Size of each connection's read buffer, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    buffer: usize,
    /// Use one listener and one acceptor instead of one per worker.
    #[arg(long)]
    single_acceptor: bool,
    /// Request mode: an idle connection holds no fiber and no buffer; each
    /// burst of input is echoed by a request fiber kept parked between
    /// requests, with its buffer.
    #[arg(long)]
    request_mode: bool,
}

/// The whole protocol: read what arrives, write it back, until EOF.
fn echo(mut conn: Conn, buffer: usize) -> io::Result<()> {
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

/// The same protocol in request mode: echo what is readable now, then
/// return at the boundary. `read_append` reads into the runner's buffer
/// (empty, 16 KiB of capacity) without zeroing it first.
fn echo_request(req: &mut Request<'_, ()>) -> io::Result<Next> {
    let (conn, (), buf) = req.parts();
    let n = conn.read_append(buf)?;
    if n == 0 {
        return Ok(Next::Close);
    }
    (&*conn).write_all(&buf[..n])?;
    Ok(Next::Idle)
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let mut builder = Server::builder()
        .bind(args.addr.to_string())
        .reuseport(!args.single_acceptor);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let server = builder.build()?;
    log::info!("echo listening on {:?}", server.local_addrs());
    let buffer = args.buffer;
    let summary = if args.request_mode {
        server.serve_requests(
            |conn| {
                let _ = conn.set_nodelay(true);
            },
            echo_request,
        )?
    } else {
        server.serve(move |conn| echo(conn, buffer))?
    };
    log::info!("stopped: {:?}", summary);
    Ok(())
}
