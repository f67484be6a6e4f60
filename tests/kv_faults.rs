//! The kv example under faults: a log that cannot be written (disk full),
//! SIGTERM in the middle of a write load, descriptor exhaustion, a flood
//! past the connection limit, peers that reset in the middle of a reply,
//! and connection churn. Every wait is bounded; no assertion depends on how
//! fast the machine is, except generous ceilings that only a hang or a
//! spinning process would reach.

mod kv_common;
mod sock_util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kv_common::{Server, IO_TIMEOUT};
use sock_util::reset_on_close;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kv-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sets a resource limit in the child, before exec.
fn limit(cmd: &mut Command, resource: libc::__rlimit_resource_t, n: u64) {
    // SAFETY: setrlimit and signal are async-signal-safe; this runs in the
    // child between fork and exec and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            // Lower the soft limit only; the hard one stays, so the test can
            // raise the soft one again later.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(resource, &mut lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            lim.rlim_cur = n.min(lim.rlim_max);
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Past RLIMIT_FSIZE a write fails with EFBIG once SIGXFSZ (which
            // would kill the process) is ignored, like a full disk.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// Raises a running child's soft resource limit to its hard limit.
fn lift_limit(pid: u32, resource: libc::__rlimit_resource_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes only the struct we pass.
    let r = unsafe { libc::prlimit(pid as libc::pid_t, resource, std::ptr::null(), &mut lim) };
    assert_eq!(r, 0, "prlimit: {}", io::Error::last_os_error());
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above; the old limit is not asked for.
    let r = unsafe { libc::prlimit(pid as libc::pid_t, resource, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", io::Error::last_os_error());
}

/// A connection whose reads report errors instead of panicking.
struct Raw {
    r: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> io::Result<Raw> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Raw {
            r: BufReader::new(s),
        })
    }

    /// Sends `req` and reads one reply line; `None` on EOF or error.
    fn ask(&mut self, req: &[u8]) -> Option<String> {
        self.r.get_mut().write_all(req).ok()?;
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(n) if n > 0 => Some(l),
            _ => None,
        }
    }
}

fn value_of(i: usize) -> String {
    format!("{i:08}-{}", "v".repeat(1000))
}

/// The value stored under `key`, if any.
fn get(c: &mut kv_common::Client, key: &str) -> Option<String> {
    c.send(format!("get {key}\r\n"));
    let l = c.line();
    if l == "END\r\n" {
        return None;
    }
    assert!(l.starts_with(&format!("VALUE {key} ")), "bad reply {l:?}");
    let v = c.line();
    assert_eq!(c.line(), "END\r\n");
    Some(v.trim_end().to_string())
}

#[test]
fn full_disk_refuses_writes_and_never_loses_acknowledged_ones() {
    let dir = tmp("full");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    // The log may grow to 64 KiB: room for about sixty 1 KiB values.
    let mut s = Server::start_with(&["--aof", &log_s, "--fsync", "always"], |cmd| {
        limit(cmd, libc::RLIMIT_FSIZE, 64 * 1024);
        // Every refused batch logs an error; keep the test output readable.
        cmd.stderr(Stdio::null());
    });
    // Four writers at once, so failures also hit group-committed batches.
    let results: Vec<(Vec<usize>, Vec<usize>)> = (0..4)
        .map(|w| {
            let addr = s.addr;
            thread::spawn(move || {
                let mut c = kv_common::Client::connect(addr);
                let (mut acked, mut refused) = (Vec::new(), Vec::new());
                for i in (w..400).step_by(4) {
                    let v = value_of(i);
                    c.send(format!("set f{i} 0 0 {}\r\n{v}\r\n", v.len()));
                    let l = c.line();
                    if l == "STORED\r\n" {
                        acked.push(i);
                    } else {
                        assert!(l.starts_with("SERVER_ERROR "), "unexpected reply {l:?}");
                        refused.push(i);
                    }
                }
                (acked, refused)
            })
        })
        .map(|h| h.join().expect("writer failed"))
        .collect();
    let acked: Vec<usize> = results.iter().flat_map(|r| r.0.clone()).collect();
    let refused: Vec<usize> = results.iter().flat_map(|r| r.1.clone()).collect();
    println!(
        "full disk: {} writes acknowledged, {} refused",
        acked.len(),
        refused.len()
    );
    assert!(!acked.is_empty() && !refused.is_empty());
    assert!(std::fs::metadata(&log).unwrap().len() <= 64 * 1024);

    // A refused write is not served; an acknowledged one is.
    let mut c = s.connect();
    for &i in refused.iter().step_by(7) {
        assert_eq!(get(&mut c, &format!("f{i}")), None, "refused f{i} served");
    }
    for &i in &acked {
        assert_eq!(get(&mut c, &format!("f{i}")), Some(value_of(i)));
    }
    // Room again (the disk was cleaned up): writes succeed again.
    lift_limit(s.pid(), libc::RLIMIT_FSIZE);
    c.expect("set after 0 0 2\r\nok\r\n", "STORED\r\n");
    assert!(s.child().try_wait().unwrap().is_none(), "server still up");
    s.kill();

    // After a crash, exactly what was acknowledged is there.
    let s = Server::start(&["--aof", &log_s]);
    let mut c = s.connect();
    for &i in &acked {
        assert_eq!(
            get(&mut c, &format!("f{i}")),
            Some(value_of(i)),
            "acknowledged f{i} lost"
        );
    }
    for &i in &refused {
        assert_eq!(get(&mut c, &format!("f{i}")), None, "refused f{i} logged");
    }
    assert_eq!(get(&mut c, "after").as_deref(), Some("ok"));
    assert_eq!(c.stat("curr_items") as usize, acked.len() + 1);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_on_a_full_device_is_a_startup_error() {
    if !std::path::Path::new("/dev/full").exists() {
        println!("skipped: /dev/full is missing");
        return;
    }
    let out = Command::new(kv_common::kv_binary())
        .args(["-l", "127.0.0.1", "-p", "1", "--aof", "/dev/full"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/full"), "unclear error: {err}");
}

/// Writers that set keys until the server goes away; returns the keys
/// each acknowledged write stored.
fn write_until_gone(addr: SocketAddr, writers: usize, acked: &Arc<AtomicUsize>) -> Vec<Vec<usize>> {
    let hs: Vec<_> = (0..writers)
        .map(|w| {
            let acked = acked.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                let Ok(mut c) = Raw::connect(addr) else {
                    return mine;
                };
                // Bounded: the test stops the server long before.
                for i in 0..1_000_000 {
                    let v = format!("{w}-{i}");
                    let req = format!("set t{w}-{i} 0 0 {}\r\n{v}\r\n", v.len());
                    match c.ask(req.as_bytes()).as_deref() {
                        Some("STORED\r\n") => {
                            mine.push(i);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(other) => panic!("unexpected reply {other:?}"),
                        None => break,
                    }
                }
                mine
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().expect("writer failed"))
        .collect()
}

fn sigterm_under_load(fsync: &str) {
    let dir = tmp(&format!("term-{fsync}"));
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let mut s = Server::start(&["--aof", &log_s, "--fsync", fsync, "-t", "2"]);
    let acked = Arc::new(AtomicUsize::new(0));
    let addr = s.addr;
    let a2 = acked.clone();
    let load = thread::spawn(move || write_until_gone(addr, 8, &a2));
    // Let the load run until a few thousand writes are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < 2000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        acked.load(Ordering::Relaxed) >= 2000,
        "load never got going"
    );
    let t0 = Instant::now();
    s.terminate();
    let status = s.wait_exit(Duration::from_secs(60));
    let took = t0.elapsed();
    let keys = load.join().expect("load failed");
    let status = status.expect("kv did not exit within 60 s of SIGTERM");
    assert!(status.success(), "kv exited with {status}");
    let total: usize = keys.iter().map(Vec::len).sum();
    println!("SIGTERM ({fsync}): exit 0 after {took:?}; {total} acknowledged writes");

    let s = Server::start(&["--aof", &log_s]);
    let mut c = s.connect();
    for (w, mine) in keys.iter().enumerate() {
        for chunk in mine.chunks(100) {
            let names: Vec<String> = chunk.iter().map(|i| format!("t{w}-{i}")).collect();
            c.send(format!("get {}\r\n", names.join(" ")));
            for i in chunk {
                let v = format!("{w}-{i}");
                assert_eq!(
                    c.line(),
                    format!("VALUE t{w}-{i} 0 {}\r\n", v.len()),
                    "acknowledged t{w}-{i} lost"
                );
                assert_eq!(c.line(), format!("{v}\r\n"));
            }
            assert_eq!(c.line(), "END\r\n");
        }
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_write_fsync_always() {
    sigterm_under_load("always");
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_write_fsync_everysec() {
    sigterm_under_load("everysec");
}

#[test]
fn descriptor_exhaustion_neither_crashes_nor_spins_and_recovers() {
    let mut s = Server::start_with(&["-c", "4096", "-t", "2"], |cmd| {
        limit(cmd, libc::RLIMIT_NOFILE, 64);
        cmd.stderr(Stdio::piped());
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = s.child().stderr.take().unwrap();
    let e2 = stderr.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            e2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Twice as many connections as the server has descriptors; each asks
    // for the version (the ones the server cannot accept wait in the
    // listen backlog).
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..128 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(b"version\r\n").unwrap();
        held.push(c);
    }
    let warned = (0..1000).any(|_| {
        thread::sleep(Duration::from_millis(10));
        stderr.lock().unwrap().contains("backing off")
    });
    assert!(
        warned,
        "no EMFILE back-off logged; stderr: {}",
        stderr.lock().unwrap()
    );
    let fds = s.open_fds();
    println!("EMFILE: {fds} descriptors open under a soft limit of 64");
    assert!(fds >= 60, "the server was never short of descriptors");
    // While exhausted, the acceptor waits instead of retrying in a loop.
    let t0 = s.cpu_ticks();
    thread::sleep(Duration::from_secs(2));
    let used = s.cpu_ticks() - t0;
    println!("EMFILE: {used} ticks of CPU in 2 s while exhausted");
    // A spinning acceptor burns about 200 ticks (two seconds) here.
    assert!(used < 100, "server spun: {used} ticks in 2 s");
    assert!(s.child().try_wait().unwrap().is_none(), "server crashed");

    // Closing the held connections frees descriptors: service resumes.
    drop(held);
    for i in 0..200 {
        let mut c = Raw::connect(s.addr).expect("connect after exhaustion");
        let v = c.ask(b"version\r\n");
        assert!(
            v.as_deref().is_some_and(|l| l.starts_with("VERSION ")),
            "connection {i} after recovery got {v:?}"
        );
    }
    let mut probe = s.connect();
    let settled = (0..1000).any(|_| probe.stat("curr_connections") == 1);
    assert!(settled, "connections not released after the flood");
}

#[test]
fn flood_past_the_connection_limit() {
    let s = Server::start(&["-c", "16", "-t", "2"]);
    let (served, rejected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for round in 0..3 {
        let all_in = Arc::new(Barrier::new(64));
        let hs: Vec<_> = (0..64)
            .map(|_| {
                let (addr, all_in) = (s.addr, all_in.clone());
                let (served, rejected) = (served.clone(), rejected.clone());
                thread::spawn(move || {
                    let mut c = Raw::connect(addr).expect("connect");
                    match c.ask(b"version\r\n") {
                        Some(l) if l.starts_with("VERSION ") => {
                            served.fetch_add(1, Ordering::Relaxed)
                        }
                        Some(l) => panic!("unexpected reply {l:?}"),
                        None => rejected.fetch_add(1, Ordering::Relaxed),
                    };
                    // Hold the connection until every client has its answer.
                    all_in.wait();
                })
            })
            .collect();
        for h in hs {
            h.join().expect("client failed");
        }
        let (sv, rj) = (
            served.load(Ordering::Relaxed),
            rejected.load(Ordering::Relaxed),
        );
        println!("flood round {round}: {sv} served, {rj} closed on arrival so far");
        // A client's close reaches the server a little after its thread
        // returned; until then the limit can turn the probe itself away
        // (closed on arrival, a failed read), so every attempt is a fresh
        // probe, and a turned-away one is just another try.
        let settled = (0..1000).any(|_| {
            let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.connect().stat("curr_connections")
            }));
            if seen.as_ref().is_ok_and(|&n| n == 1) {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
            false
        });
        assert!(settled, "connections not released after round {round}");
    }
    let (sv, rj) = (
        served.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    assert_eq!(sv + rj, 3 * 64);
    assert!(sv <= 3 * 16, "more than the limit were served at once");
    assert!(rj >= 3 * 48, "the limit was not enforced: {rj} rejected");
}

#[test]
fn peers_resetting_mid_reply_do_not_hurt_the_server() {
    let s = Server::start(&["-t", "2"]);
    let mut c = s.connect();
    let big = "x".repeat(512 * 1024);
    c.expect(
        format!("set big 0 0 {}\r\n{big}\r\n", big.len()),
        "STORED\r\n",
    );
    for _ in 0..20 {
        let mut r = TcpStream::connect(s.addr).unwrap();
        // 100 MiB of replies queued; read a little, then reset.
        r.write_all("get big\r\n".repeat(200).as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        r.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        r.read_exact(&mut buf).unwrap();
        reset_on_close(&r);
        drop(r);
    }
    let settled = (0..1000).any(|_| c.stat("curr_connections") == 1);
    assert!(settled, "handlers of reset connections did not end");
    c.expect("get nothing\r\n", "END\r\n");
}

#[test]
fn churn_returns_descriptors_and_connections() {
    let s = Server::start(&["-t", "2"]);
    let mut probe = s.connect();
    probe.expect("set churn 0 0 1\r\nx\r\n", "STORED\r\n");
    let fds_before = s.open_fds();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let addr = s.addr;
            thread::spawn(move || {
                for _ in 0..500 {
                    let mut c = Raw::connect(addr).expect("connect");
                    assert_eq!(
                        c.ask(b"get churn\r\n").as_deref(),
                        Some("VALUE churn 0 1\r\n")
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("churn client failed");
    }
    let settled = (0..1000).any(|_| probe.stat("curr_connections") == 1);
    assert!(settled, "connections left open after churn");
    let fds = (0..100)
        .map(|_| {
            thread::sleep(Duration::from_millis(10));
            s.open_fds()
        })
        .find(|&n| n <= fds_before)
        .unwrap_or_else(|| s.open_fds());
    assert!(
        fds <= fds_before,
        "descriptors leaked: {fds_before} before, {fds} after"
    );
    assert!(probe.stat("total_connections") > 4 * 500);
}

#[test]
fn idle_timeout_reclaims_silent_and_half_sent_connections() {
    let s = Server::start(&["--idle-timeout", "1", "-t", "2"]);
    // Silent ones, and ones stuck half-way through a request.
    let mut quiet: Vec<kv_common::Client> = (0..20).map(|_| s.connect()).collect();
    for (i, c) in quiet.iter_mut().enumerate() {
        if i % 2 == 0 {
            c.send("set half 0 0 10\r\nabc");
        }
    }
    // A client that keeps talking is not affected: it asks until the
    // others are gone (bounded by count; each ask is well under a second).
    let mut busy = s.connect();
    let gone = (0..20_000).any(|_| {
        thread::sleep(Duration::from_millis(5));
        busy.stat("curr_connections") == 1
    });
    assert!(gone, "idle connections were not reclaimed");
    for c in quiet.iter_mut() {
        assert!(c.closed(), "the server closed the idle connection");
    }
    busy.expect("get half\r\n", "END\r\n");
}

#[test]
fn request_timeout_cuts_a_client_that_trickles_a_request() {
    // One byte every 200 ms never leaves the connection idle for the 1 s
    // idle timeout; the 1 s request timeout closes it.
    let s = Server::start(&["--idle-timeout", "1", "--request-timeout", "1", "-t", "1"]);
    let mut slow = TcpStream::connect(s.addr).unwrap();
    let request = b"get a-key-that-arrives-far-too-slowly\r\n";
    let mut sent = 0;
    let mut cut = false;
    for &b in request.iter() {
        if slow.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        sent += 1;
        thread::sleep(Duration::from_millis(200));
    }
    if !cut {
        // Everything went out: the server must have answered or closed.
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 64];
        cut = matches!(slow.read(&mut b), Ok(0) | Err(_));
    }
    assert!(cut, "a trickling client was served after {sent} bytes");
    assert!(sent < request.len(), "the request completed before the cut");
    // Others are served normally.
    let mut c = s.connect();
    c.expect("get x\r\n", "END\r\n");
}
