//! Faults inside a handler of the server framework: a panic (the
//! connection closes, the server goes on), a peer that resets while the
//! handler writes (an error, never SIGPIPE), and a stack overflow (the
//! documented outcome: the process aborts with a message naming the
//! connection's fiber and its stack size). Running out of fiber stacks
//! closes only the new connection, counted, and the acceptor backs off.

mod sock_util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sock_util::reset_on_close;
use weave::server::{Conn, Server, Summary};

const CHILD_ENV: &str = "WEAVE_CHILD";
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[inline(never)]
#[allow(unconditional_recursion)] // overflowing the stack is the point
fn recurse(depth: u64, buf: &mut [u8; 1024]) -> u64 {
    let mut local = [depth as u8; 1024];
    local[0] = buf[1];
    std::hint::black_box(&mut local);
    recurse(depth + 1, &mut local) + local[2] as u64
}

/// Answers each line: `panic` panics, `flood` writes 64 MiB, `overflow`
/// recurses without end, anything else is echoed. Write errors seen by
/// `flood` are recorded in `seen`.
fn handler(conn: Conn, seen: &Mutex<Vec<io::ErrorKind>>) -> io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim_end() {
            "panic" => panic!("handler asked to panic"),
            "overflow" => {
                let n = recurse(0, &mut [0; 1024]);
                (&conn).write_all(format!("{n}\n").as_bytes())?;
            }
            "flood" => {
                let chunk = vec![b'f'; 1 << 16];
                for _ in 0..1024 {
                    if let Err(e) = (&conn).write_all(&chunk) {
                        seen.lock().unwrap().push(e.kind());
                        return Err(e);
                    }
                }
            }
            _ => (&conn).write_all(line.as_bytes())?,
        }
    }
}

/// The child side of the overflow and stack exhaustion tests.
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    if scenario == "no-stacks-server" {
        return no_stacks_server();
    }
    assert_eq!(scenario, "overflow-server");
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .workers(1)
        .stack_size(64 * 1024)
        .build()
        .unwrap();
    println!("PORT={}", server.local_addrs()[0].port());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _ = server.serve(move |c| handler(c, &seen));
    println!("child survived an overflow");
}

/// Caps the process's address space at what it uses now plus `extra`.
fn limit_address_space(extra: u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let cap = vm_kib * 1024 + extra;
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setting a resource limit of our own process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
}

/// A server whose address space holds only a few 16 MiB stacks; a `stop`
/// line stops it, and it prints its counters.
fn no_stacks_server() {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .workers(1)
        .stack_size(16 << 20)
        .handle_signals(false)
        .build()
        .unwrap();
    println!("PORT={}", server.local_addrs()[0].port());
    let handle = server.handle();
    limit_address_space(160 << 20);
    let summary = server
        .serve(move |conn| {
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "stop\n" {
                    handle.stop();
                    return Ok(());
                }
                (&conn).write_all(line.as_bytes())?;
            }
        })
        .unwrap();
    let c = summary.counters;
    println!(
        "SPAWN_FAILED={} ACCEPTED={} CLOSED={}",
        c.spawn_failed, c.accepted, c.closed
    );
}

/// A server in this process on a free port, stopped by the returned
/// closure, which gives back its summary.
fn start() -> (
    SocketAddr,
    Arc<Mutex<Vec<io::ErrorKind>>>,
    impl FnOnce() -> Summary,
) {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .workers(2)
        .handle_signals(false)
        .build()
        .unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let t = thread::spawn(move || server.serve(move |c| handler(c, &s2)).unwrap());
    let stop = move || {
        handle.stop();
        t.join().expect("server thread")
    };
    (addr, seen, stop)
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    BufReader::new(s)
}

fn echo(c: &mut BufReader<TcpStream>, msg: &str) {
    c.get_mut()
        .write_all(format!("{msg}\n").as_bytes())
        .unwrap();
    let mut l = String::new();
    c.read_line(&mut l).unwrap();
    assert_eq!(l, format!("{msg}\n"));
}

#[test]
fn handler_panics_close_only_their_connection() {
    let (addr, _, stop) = start();
    let mut bystander = connect(addr);
    echo(&mut bystander, "before");
    for i in 0..10 {
        let mut c = connect(addr);
        c.get_mut().write_all(b"panic\n").unwrap();
        let mut rest = Vec::new();
        // The server closes the connection; nothing was answered.
        let r = c.read_to_end(&mut rest);
        assert!(
            matches!(&r, Ok(0)) || r.is_err(),
            "panic {i}: got {r:?} {rest:?}"
        );
        echo(&mut bystander, &format!("after {i}"));
    }
    drop(bystander);
    let summary = stop();
    assert_eq!(summary.counters.panics, 10);
    assert_eq!(summary.still_open, 0);
}

#[test]
fn peer_reset_mid_write_is_an_error_not_a_signal() {
    let (addr, seen, stop) = start();
    for _ in 0..10 {
        let mut c = connect(addr);
        c.get_mut().write_all(b"flood\n").unwrap();
        let mut buf = [0u8; 4096];
        c.read_exact(&mut buf).unwrap();
        reset_on_close(c.get_ref());
        drop(c);
    }
    // Each handler sees its write fail (bounded wait: it is writing 64 MiB
    // into a reset socket).
    let end = Instant::now() + IO_TIMEOUT;
    while seen.lock().unwrap().len() < 10 && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    let kinds = seen.lock().unwrap().clone();
    assert_eq!(kinds.len(), 10, "write errors seen: {kinds:?}");
    assert!(
        kinds.iter().all(|k| matches!(
            k,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )),
        "unexpected errors {kinds:?}"
    );
    // The process is alive (no SIGPIPE) and still serving.
    echo(&mut connect(addr), "still here");
    let summary = stop();
    assert!(summary.counters.errors >= 10);
    assert_eq!(summary.counters.panics, 0);
}

/// Runs this test binary again as a child serving `scenario` (see
/// `child_entry`) and waits for it to print its port: returns the child,
/// its stdout (past the port line) and the port.
fn start_server_child(scenario: &str) -> (Child, BufReader<ChildStdout>, u16) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if let Some(p) = line.split("PORT=").nth(1) {
            break p.trim().parse().unwrap();
        }
    };
    (child, out, port)
}

#[test]
fn handler_stack_overflow_aborts_naming_the_connection_fiber() {
    let (mut child, mut out, port) = start_server_child("overflow-server");
    let mut c = connect(([127, 0, 0, 1], port).into());
    echo(&mut c, "hello");
    c.get_mut().write_all(b"overflow\n").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let end = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("child did not end after the overflow");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "child should abort, got {status:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("fiber 'conn 127.0.0.1:")
            && stderr.contains("overflowed its stack of 65536 bytes"),
        "missing overflow message; stderr:\n{stderr}"
    );
    assert!(!stdout.contains("child survived"));
}

/// Sends a line and reads the answer: `Some(line)`, or `None` when the
/// server closed the connection instead.
fn try_echo(c: &mut BufReader<TcpStream>, msg: &str) -> Option<String> {
    c.get_mut().write_all(format!("{msg}\n").as_bytes()).ok()?;
    let mut l = String::new();
    match c.read_line(&mut l) {
        Ok(n) if n > 0 => Some(l),
        _ => None,
    }
}

#[test]
fn out_of_stacks_closes_the_new_connection_counts_it_and_keeps_serving() {
    let (mut child, mut out, port) = start_server_child("no-stacks-server");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // More connections than stacks: the first ones are served, the rest
    // closed without an answer.
    let mut served = Vec::new();
    let mut refused = 0;
    for i in 0..16 {
        let mut c = connect(addr);
        match try_echo(&mut c, &format!("hello {i}")) {
            Some(l) => {
                assert_eq!(l, format!("hello {i}\n"));
                served.push(c);
            }
            None => refused += 1,
        }
    }
    assert!(!served.is_empty(), "no connection was served");
    assert!(
        refused > 0,
        "every connection got a stack; the limit did not bite"
    );
    // The served ones still work.
    for (i, c) in served.iter_mut().enumerate() {
        assert_eq!(
            try_echo(c, &format!("again {i}")),
            Some(format!("again {i}\n"))
        );
    }
    // Closing one frees its stack: a new connection is served again.
    drop(served.pop());
    let mut next = None;
    let end = Instant::now() + IO_TIMEOUT;
    while next.is_none() && Instant::now() < end {
        let mut c = connect(addr);
        if try_echo(&mut c, "back").is_some() {
            next = Some(c);
        }
    }
    let mut c = next.expect("no connection served after one closed");
    c.get_mut().write_all(b"stop\n").unwrap();
    drop(served);
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        status.success(),
        "child failed: {status:?}; stderr:\n{stderr}"
    );
    let failed: u64 = stdout
        .split("SPAWN_FAILED=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no counters; stdout:\n{stdout}"));
    assert!(
        failed >= refused,
        "{failed} spawn failures counted, {refused} seen"
    );
}
