//! Server behaviour seen from outside the process: SIGTERM drains and exits
//! 0; descriptor exhaustion neither crashes nor spins. Each test re-runs this
//! binary as a child with `WEAVE_CHILD` naming the scenario.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weave::server::{Conn, Server};

const CHILD_ENV: &str = "WEAVE_CHILD";

fn line_handler(conn: Conn) -> io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end() == "sleep" {
            weave::sleep(Duration::from_millis(300));
            (&conn).write_all(b"slept\n")?;
        } else {
            (&conn).write_all(line.as_bytes())?;
        }
    }
}

/// The child side: serves until a signal, prints its summary.
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .workers(1)
        .shutdown_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    println!("PORT={}", server.local_addrs()[0].port());
    let summary = server.serve(line_handler).unwrap();
    println!(
        "SUMMARY accepted={} still_open={}",
        summary.counters.accepted, summary.still_open
    );
    assert!(!scenario.is_empty());
}

/// Kills the child if the test fails before reaping it.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_child(scenario: &str, nofile: Option<u64>) -> (Reaper, u16) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let port = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if let Some(p) = line.split("PORT=").nth(1) {
            break p.trim().parse().unwrap();
        }
    };
    // Keep draining stdout in the background so the child never blocks.
    let mut rest = out;
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = rest.read_to_string(&mut s);
        print!("{s}");
    });
    (Reaper(child), port)
}

fn request(c: &mut BufReader<TcpStream>, line: &str) -> io::Result<String> {
    c.get_mut().write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    c.read_line(&mut out)?;
    Ok(out)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based); `after` starts at 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let (mut child, port) = spawn_child("sigterm", None);
    let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert_eq!(request(&mut c, "hi").unwrap(), "hi\n");
    c.get_mut().write_all(b"sleep\n").unwrap();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut reply = String::new();
    c.read_line(&mut reply).unwrap();
    assert_eq!(reply, "slept\n", "the request in flight gets its reply");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn emfile_backs_off_keeps_serving_and_recovers() {
    const LIMIT: u64 = 48;
    const CLIENTS: usize = 80;
    let (mut child, port) = spawn_child("emfile", Some(LIMIT));
    let mut clients: Vec<BufReader<TcpStream>> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            BufReader::new(s)
        })
        .collect();
    // Those the server could accept answer; the rest wait in the backlog.
    // The kernel hands out connections in arrival order, so the answered
    // ones are a prefix: stop at the first that stays silent.
    for (i, c) in clients.iter_mut().enumerate() {
        c.get_mut().write_all(format!("c{i}\n").as_bytes()).unwrap();
    }
    let mut answered = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut line = String::new();
        match c.read_line(&mut line) {
            Ok(_) if line == format!("c{i}\n") => answered.push(i),
            _ => break,
        }
    }
    assert!(!answered.is_empty(), "the server answered nobody");
    assert!(
        answered.len() < CLIENTS,
        "the descriptor limit was never reached"
    );
    // Saturated: the served clients still work, and the server does not spin.
    let t0 = cpu_ticks(child.0.id());
    let wall = Instant::now();
    for round in 0..10 {
        for &i in &answered {
            let msg = format!("again{round}-{i}");
            assert_eq!(request(&mut clients[i], &msg).unwrap(), format!("{msg}\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ticks = cpu_ticks(child.0.id()) - t0;
    let tick_hz = 100.0; // USER_HZ on Linux
    let cpu = ticks as f64 / tick_hz;
    let elapsed = wall.elapsed().as_secs_f64();
    assert!(
        cpu < 0.5 * elapsed,
        "server used {cpu:.2}s CPU in {elapsed:.2}s while out of descriptors"
    );
    // Free descriptors: the waiting clients get served.
    let waiting: Vec<usize> = (0..CLIENTS).filter(|i| !answered.contains(i)).collect();
    for &i in &answered {
        clients[i]
            .get_mut()
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
    }
    for &i in &waiting {
        clients[i]
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut line = String::new();
        clients[i].read_line(&mut line).unwrap();
        assert_eq!(
            line,
            format!("c{i}\n"),
            "backlogged client {i} was never served"
        );
        // Leave, so the next one in the backlog gets a descriptor too.
        clients[i]
            .get_mut()
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
    }
    drop(clients);
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
}
