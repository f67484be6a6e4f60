//! The echo server on the bare net layer (a listener, an accept loop and
//! `weave::spawn`), without the server framework: the baseline that
//! `echo` (on `weave::Server`) is measured against.
//!
//! ```text
//! cargo run --release --example echo_net -- --addr 127.0.0.1:7000 --workers 2
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use weave::net::{TcpListener, TcpStream};

/// Echo server on weave fibers, net layer only.
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
}

/// The whole protocol: read what arrives, write it back, until EOF.
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

fn main() -> io::Result<()> {
    env_logger::init();
    let args = Args::parse();
    let mut builder = weave::Runtime::builder();
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let rt = builder.build()?;
    let buffer = args.buffer;
    rt.block_on(move || -> io::Result<()> {
        let listener = TcpListener::bind(args.addr)?;
        log::info!("echo listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((conn, peer)) => {
                    weave::spawn(move || {
                        if let Err(e) = echo(conn, buffer) {
                            log::debug!("{peer}: {e}");
                        }
                    });
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    weave::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    })
}
