//! Runs an example's connection handler on a `weave::Server` inside the test
//! process, on a loopback port the system picks.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use weave::server::{Conn, Server, ServerHandle, Summary};

/// A server running on a background thread; stopped (gracefully) on drop.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<Summary>>>,
}

impl Running {
    /// The server's handle (counters, stop).
    #[allow(dead_code)] // not every test reads counters
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Stops the server and waits for `serve` to return.
    pub fn stop(mut self) -> Summary {
        self.stop_inner().expect("server thread")
    }

    fn stop_inner(&mut self) -> Option<Summary> {
        self.handle.stop();
        let t = self.thread.take()?;
        Some(t.join().expect("serve panicked").expect("serve failed"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop_inner();
        } else {
            self.handle.stop();
        }
    }
}

/// Starts a server with `workers` workers and `stack` bytes of fiber stack
/// (0: the default) that runs `handler` for every connection.
pub fn start<H>(workers: usize, stack: usize, handler: H) -> Running
where
    H: Fn(Conn) -> io::Result<()> + Send + Sync + 'static,
{
    let mut b = Server::builder()
        .bind("127.0.0.1:0")
        .workers(workers)
        .handle_signals(false);
    if stack > 0 {
        b = b.stack_size(stack);
    }
    let server = b.build().expect("build server");
    let addr = server.local_addrs()[0];
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.serve(handler));
    Running {
        addr,
        handle,
        thread: Some(thread),
    }
}

/// Waits (bounded) until `f` holds: for what the server counts after the
/// client already saw its effect (a handler's error is counted after its
/// connection closed).
#[allow(dead_code)] // not every test waits
pub fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
