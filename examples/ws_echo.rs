//! A WebSocket echo server: `tungstenite`, a synchronous WebSocket library
//! written for `std::net`, runs unchanged over a weave connection. The
//! handshake, framing, masking, ping/pong and the close handshake are all
//! tungstenite's; weave only makes its blocking reads and writes park the
//! fiber instead of the thread.
//!
//! ```text
//! cargo run --release --example ws_echo -- --addr 127.0.0.1:9001
//! ```
//!
//! Caveat: `tungstenite::connect(url)` opens its own `std::net::TcpStream`,
//! which blocks the whole worker thread. From a fiber, connect a
//! `weave::net::TcpStream` and hand it to `tungstenite::client` instead (the
//! tests do), or wrap the call in `weave::blocking::unblock`.

use std::io::{self, Write};
use std::net::SocketAddr;

use clap::Parser;
use tungstenite::{Error, Message};
use weave::server::{Conn, Server};

/// WebSocket echo server (tungstenite) on weave fibers.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Stack size of each connection's fiber, in bytes.
    #[arg(long, default_value_t = STACK_SIZE)]
    pub stack_size: usize,
}

/// Stack for a connection: measured with `--stack-size`, a release build
/// overflowed 8 KiB and ran in 12 KiB, a debug build overflowed 24 KiB
/// during the handshake and ran in 32 KiB; this leaves room.
pub const STACK_SIZE: usize = 64 * 1024;

/// Runs the WebSocket handshake on `conn`, then echoes every text and binary
/// message until the client closes.
///
/// # Errors
///
/// A failed handshake or a protocol or I/O error on the connection.
pub fn serve_conn(conn: Conn) -> io::Result<()> {
    // The handshake borrows the connection, so a failed one can still be
    // answered (tungstenite itself sends nothing back).
    let mut ws = match tungstenite::accept(&conn) {
        Ok(ws) => ws,
        Err(e) => {
            let body = format!("not a WebSocket handshake: {e}\n");
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            (&conn).write_all(head.as_bytes())?;
            (&conn).write_all(body.as_bytes())?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                body.trim_end().to_string(),
            ));
        }
    };
    loop {
        match ws.read() {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(msg) {
                    return closed_or(e);
                }
            }
            // Pings are answered by tungstenite itself (on the next read or
            // send); a close is answered likewise and ends the loop below.
            Ok(_) => {}
            Err(e) => return closed_or(e),
        }
    }
}

/// A close (clean or not) ends the connection quietly; anything else is an
/// error for the server to log.
fn closed_or(e: Error) -> io::Result<()> {
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => Ok(()),
        Error::Io(e) => Err(e),
        e => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
    }
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let mut builder = Server::builder()
        .bind(args.addr.to_string())
        .stack_size(args.stack_size);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let server = builder.build()?;
    log::info!("ws_echo listening on {:?}", server.local_addrs());
    let summary = server.serve(|conn| {
        conn.set_nodelay(true)?;
        serve_conn(conn)
    })?;
    log::info!("stopped: {summary:?}");
    Ok(())
}
