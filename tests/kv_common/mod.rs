//! Shared helpers for the kv example's integration tests: start the example
//! binary cargo built for this run as a child process on a free loopback
//! port, talk to it with raw sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bound on any single read in these tests, so a broken server fails
/// a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The kv example binary, as cargo built it for this test run.
pub fn kv_binary() -> PathBuf {
    example_binary("kv")
}

/// The binary of the example `name`, as cargo built it beside this test
/// (`target/<profile>/examples/<name>`).
///
/// `cargo test` builds every example together with the tests, in the same
/// target directory and profile, so the tests run the very binary a user
/// would (a real process: the tests kill it, limit its descriptors and read
/// its `/proc` entries). A run filtered to single tests (`--test kv_faults`)
/// does not build the example binaries: build them first with
/// `cargo build --examples`. A binary older than the example's sources is
/// refused rather than tested.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let profile_dir = exe
        .ancestors()
        .nth(2)
        .expect("test executable is in target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    let built = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) => panic!(
            "{}: {e}. `cargo test` builds the examples with the tests; before a filtered \
             run, build them with `cargo build --examples`",
            bin.display()
        ),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        root.join("examples").join(name),
        root.join("examples").join(format!("{name}.rs")),
    ];
    if let Some(newest) = sources.iter().filter_map(|p| newest_mtime(p)).max() {
        assert!(
            newest <= built,
            "{} is older than its sources: rebuild it (`cargo build --examples`)",
            bin.display()
        );
    }
    bin
}

/// The newest modification time of a Rust source file, or of the Rust
/// sources under a directory (data files such as a fuzz corpus do not
/// count: the binary does not depend on them); `None` if there is none.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        let rust = path.extension().is_some_and(|e| e == "rs");
        return if rust { meta.modified().ok() } else { None };
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A port that was free a moment ago and that this process has not handed
/// out before (tests run in parallel: two servers must never be given the
/// same port).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// True if a kv server at `addr` answers `version` (a bare connect is not
/// enough: the server probes its port with a plain bind first), or refuses
/// it for want of authentication (`-Y`).
fn answers_version(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    if s.write_all(b"version\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(BufReader::new(s).read_line(&mut line), Ok(n) if n > 0)
        && (line.starts_with("VERSION ") || line == "CLIENT_ERROR unauthenticated\r\n")
}

/// A running kv server; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts the server with extra flags and waits until it accepts.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, |_| {})
    }

    /// Like [`Server::start`], with a hook that adjusts the command first
    /// (environment, stderr, resource limits set in `pre_exec`).
    pub fn start_with(args: &[&str], setup: impl Fn(&mut Command)) -> Server {
        let bin = kv_binary();
        let mut last_err = String::new();
        // The free port can be taken between our probe and the server's
        // bind; try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["-l", "127.0.0.1", "-p", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            setup(&mut cmd);
            let mut child = cmd.spawn().expect("spawn kv");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Poll until it accepts or exits (bounded).
            for _ in 0..3000 {
                if let Some(status) = child.try_wait().unwrap() {
                    last_err = format!("kv exited early: {status}");
                    break;
                }
                if answers_version(addr) {
                    return Server { child, addr };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("kv server did not start: {last_err}");
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        // SAFETY: kill(2) with our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0, "kill -TERM {}", self.pid());
    }

    /// Waits up to `limit` for the server to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child process (for its stderr, when piped).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Open descriptors of the server (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// User plus system CPU time of the server, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based); `after` starts at 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill kv");
        self.child.wait().expect("reap kv");
    }

    /// A new raw connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Resident memory of the server, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw client connection.
#[derive(Debug)]
pub struct Client {
    /// Buffered reader over the socket.
    pub r: BufReader<TcpStream>,
}

impl Client {
    /// Connects with bounded read/write timeouts.
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect to kv");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s),
        }
    }

    /// Sends bytes.
    pub fn send(&mut self, b: impl AsRef<[u8]>) {
        self.r.get_mut().write_all(b.as_ref()).expect("send");
    }

    /// Reads one line (with its `\r\n`).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        let n = self.r.read_line(&mut s).expect("read line");
        assert!(n > 0, "connection closed while a line was expected");
        s
    }

    /// Reads exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.r.read_exact(&mut v).expect("read bytes");
        v
    }

    /// Sends `req` and checks the reply lines, joined.
    pub fn expect(&mut self, req: impl AsRef<[u8]>, reply: &str) {
        let req = req.as_ref();
        self.send(req);
        let mut got = String::new();
        while got.len() < reply.len() {
            got.push_str(&self.line());
        }
        assert_eq!(got, reply, "request {:?}", String::from_utf8_lossy(req));
    }

    /// True once the server has closed the connection: the read sees EOF,
    /// or a reset (a close with unread input sends RST).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        }
    }

    /// `stats` as (name, value) pairs.
    pub fn stats(&mut self) -> Vec<(String, String)> {
        self.send("stats\r\n");
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == "END\r\n" {
                return out;
            }
            let mut parts = l.trim_end().splitn(3, ' ');
            assert_eq!(parts.next(), Some("STAT"), "bad stats line {l:?}");
            out.push((
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("").to_string(),
            ));
        }
    }

    /// One stat as a number.
    pub fn stat(&mut self, name: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no stat {name}"))
            .1
            .parse()
            .expect("numeric stat")
    }
}
