//! HTTP server on `may_minihttp`, the stackful peer of the HTTP example in
//! `scripts/bench-http.sh`: the same routes (`GET /` answers `Hello, World!`,
//! `GET /json` the same JSON object via `serde_json`, anything else 404),
//! `--workers` may worker threads.
//!
//! ```text
//! cargo run -p weave-bench --release --example http_may -- --addr 127.0.0.1:8082 --workers 1
//! ```

use std::io;
use std::net::SocketAddr;

use clap::Parser;
use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

/// HTTP server on may_minihttp.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
}

struct Hello;

impl HttpService for Hello {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        match req.path() {
            "/" => {
                rsp.header("Content-Type: text/plain").body("Hello, World!");
            }
            "/json" => {
                let json = serde_json::json!({ "message": "Hello, World!" });
                rsp.header("Content-Type: application/json")
                    .body_vec(serde_json::to_vec(&json)?);
            }
            _ => {
                rsp.status_code(404, "Not Found").body("not found\n");
            }
        }
        Ok(())
    }
}

struct Factory;

impl HttpServiceFactory for Factory {
    type Service = Hello;

    fn new_service(&self, _: usize) -> Hello {
        Hello
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    may::config()
        .set_workers(args.workers as usize)
        .set_worker_pin(false);
    let server = Factory.start(args.addr)?;
    eprintln!("http_may listening on {}", args.addr);
    server
        .join()
        .map_err(|_| io::Error::other("the may_minihttp server panicked"))
}
