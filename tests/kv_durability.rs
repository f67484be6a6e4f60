//! The kv example's append-only log: acknowledged writes survive SIGKILL,
//! deleted keys stay deleted (evicted or not), CAS uniques survive a
//! restart, a torn or zero-filled tail is cut at restart, corruption
//! followed by valid records refuses to start (naming the offset), two
//! processes cannot share a log, a bad log path is a clear error.
//!
//! Losing the page cache (a power cut) is simulated by the unit tests in
//! `examples/kv/aof/crash_tests.rs`: SIGKILL cannot show it.

mod kv_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kv_common::Server;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kv-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn acknowledged_sets_survive_sigkill() {
    let dir = tmp("sigkill");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let s = Server::start(&["--aof", &log_s, "--fsync", "always"]);
    // 10,000 sets from 10 connections at once (group commit), each
    // acknowledged before the next on its connection.
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let addr = s.addr;
            thread::spawn(move || {
                let mut c = kv_common::Client::connect(addr);
                for i in 0..1000 {
                    let val = format!("value-{w}-{i}");
                    c.expect(
                        format!("set key-{w}-{i} {i} 0 {}\r\n{val}\r\n", val.len()),
                        "STORED\r\n",
                    );
                }
                // A few other mutations that must be replayed too.
                c.expect(format!("delete key-{w}-0\r\n"), "DELETED\r\n");
                c.expect(format!("append key-{w}-1 0 0 1\r\n!\r\n"), "STORED\r\n");
                c.expect(
                    format!("set n{w} 0 0 1\r\n5\r\nincr n{w} 10\r\n"),
                    "STORED\r\n15\r\n",
                );
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer failed");
    }
    s.kill();

    let s = Server::start(&["--aof", &log_s, "--fsync", "always"]);
    let mut c = s.connect();
    for w in 0..10 {
        c.expect(format!("get key-{w}-0\r\n"), "END\r\n");
        c.expect(
            format!("get key-{w}-1\r\n"),
            &format!("VALUE key-{w}-1 1 10\r\nvalue-{w}-1!\r\nEND\r\n"),
        );
        c.expect(
            format!("get n{w}\r\n"),
            &format!("VALUE n{w} 0 2\r\n15\r\nEND\r\n"),
        );
        // Fetch the rest in batches of 100 keys.
        for chunk in (2..1000).collect::<Vec<_>>().chunks(100) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("key-{w}-{i}")).collect();
            c.send(format!("get {}\r\n", keys.join(" ")));
            for &i in chunk {
                let val = format!("value-{w}-{i}");
                assert_eq!(
                    c.line(),
                    format!("VALUE key-{w}-{i} {i} {}\r\n", val.len()),
                    "lost key-{w}-{i}"
                );
                assert_eq!(c.line(), format!("{val}\r\n"));
            }
            assert_eq!(c.line(), "END\r\n");
        }
    }
    assert_eq!(c.stat("curr_items"), 10 * 999 + 10);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes 100 sets to a fresh log under `--fsync always`, then kills the
/// server: returns the test's directory and the log's path.
fn log_of_100_sets(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp(name);
    let log = dir.join("kv.aof");
    let s = Server::start(&["--aof", log.to_str().unwrap(), "--fsync", "always"]);
    let mut c = s.connect();
    for i in 0..100 {
        c.expect(format!("set k{i} 0 0 3\r\nabc\r\n"), "STORED\r\n");
    }
    s.kill();
    (dir, log)
}

/// Appends `tail` to a log of 100 sets, as a crash can leave it: the
/// restart keeps the 100 items, cuts the log where the tail began, and
/// takes writes.
fn tail_is_cut_at_restart(name: &str, tail: &[u8]) {
    let (dir, log) = log_of_100_sets(name);
    let good = std::fs::metadata(&log).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(tail).unwrap();
    drop(f);
    let s = Server::start(&["--aof", log.to_str().unwrap()]);
    let mut c = s.connect();
    assert_eq!(c.stat("curr_items"), 100);
    assert_cut_at(&log, good);
    c.expect("set after 0 0 1\r\nx\r\n", "STORED\r\n");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn torn_tail_is_cut_at_restart() {
    // A crash in the middle of a record: a frame announcing 1000 bytes
    // followed by only a few.
    let mut tail = 1000u32.to_le_bytes().to_vec();
    tail.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
    tail_is_cut_at_restart("torn", &tail);
}

#[test]
fn unopenable_log_is_a_clear_startup_error() {
    // (A log that fails while running, e.g. a full disk, is covered by the
    // unit tests in examples/kv/aof.rs: errors, never acknowledgements.)
    let dir = tmp("missing");
    let missing = dir.join("no/such/dir/kv.aof");
    let out = std::process::Command::new(kv_common::kv_binary())
        .args(["-p", "1", "--aof", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/dir/kv.aof"), "unclear error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs kv with `args` and waits (bounded) for it to exit on its own; its
/// exit status and stderr. A kv still running after the bound is killed and
/// the test fails.
fn run_expecting_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(kv_common::kv_binary())
        .args(["-l", "127.0.0.1", "-p", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kv");
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kv {args:?} was expected to refuse to start but kept running");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

/// The offsets of the records of a log (after its 8-byte header).
fn record_offsets(log: &Path) -> Vec<u64> {
    let b = std::fs::read(log).unwrap();
    let mut pos = 8usize;
    let mut out = Vec::new();
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(pos as u64);
        pos += 8 + len;
    }
    out
}

/// The log was cut at `at` at the last start: the record that start logged
/// (its CAS floor, opcode 6) begins there, and the records after it run to
/// the end of the file (nothing of what was cut is left).
fn assert_cut_at(log: &Path, at: u64) {
    let b = std::fs::read(log).unwrap();
    let offsets = record_offsets(log);
    assert!(offsets.contains(&at), "no record at {at}: {offsets:?}");
    assert_eq!(b[at as usize + 8], 6, "not the start's CAS floor at {at}");
    let last = *offsets.last().unwrap() as usize;
    let len = u32::from_le_bytes(b[last..last + 4].try_into().unwrap()) as usize;
    assert_eq!(last + 8 + len, b.len(), "the log does not end on a record");
}

#[test]
fn deleted_keys_stay_deleted_after_restart_even_when_evicted_first() {
    let dir = tmp("evicted-delete");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let s = Server::start(&["--aof", &log_s, "--fsync", "always", "-m", "1"]);
    let mut c = s.connect();
    // Victims, then enough newer data to evict them (about 3 MiB into 1).
    let victims = ["gone-del", "gone-incr", "gone-touch", "gone-cas"];
    for v in victims {
        c.expect(format!("set {v} 0 0 2\r\n10\r\n"), "STORED\r\n");
    }
    let fill = "x".repeat(10_000);
    for i in 0..300 {
        c.expect(
            format!("set fill{i} 0 0 {}\r\n{fill}\r\n", fill.len()),
            "STORED\r\n",
        );
    }
    assert!(c.stat("evictions") > 0);
    for v in victims {
        c.expect(format!("get {v}\r\n"), "END\r\n");
    }
    // Each of these answers "not found": the client now knows the key is
    // gone, and a restart must not bring it back.
    c.expect("delete gone-del\r\n", "NOT_FOUND\r\n");
    c.expect("incr gone-incr 1\r\n", "NOT_FOUND\r\n");
    c.expect("touch gone-touch 100\r\n", "NOT_FOUND\r\n");
    c.expect("cas gone-cas 0 0 1 1\r\nx\r\n", "NOT_FOUND\r\n");
    // A flushed key, for good measure.
    c.expect(
        "set flushed 0 0 1\r\nf\r\nflush_all\r\n",
        "STORED\r\nOK\r\n",
    );
    s.kill();

    let s = Server::start(&["--aof", &log_s, "-m", "64"]);
    let mut c = s.connect();
    let mut resurrected = Vec::new();
    for v in victims.iter().chain(&["flushed"]) {
        c.send(format!("get {v}\r\n"));
        if c.line() != "END\r\n" {
            resurrected.push(*v);
        }
    }
    assert!(
        resurrected.is_empty(),
        "deleted keys came back: {resurrected:?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gets` of one key: its CAS unique.
fn cas_of(c: &mut kv_common::Client, key: &str) -> u64 {
    c.send(format!("gets {key}\r\n"));
    let head = c.line();
    let cas = head
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad gets reply {head:?}"));
    c.line();
    assert_eq!(c.line(), "END\r\n");
    cas
}

#[test]
fn cas_uniques_survive_a_restart() {
    let dir = tmp("cas");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let s = Server::start(&["--aof", &log_s, "--fsync", "always"]);
    let mut c = s.connect();
    c.expect("set kept 0 0 1\r\na\r\n", "STORED\r\n");
    let kept = cas_of(&mut c, "kept");
    c.expect("set changed 0 0 1\r\na\r\n", "STORED\r\n");
    let stale = cas_of(&mut c, "changed");
    c.expect("set changed 0 0 1\r\nb\r\n", "STORED\r\n");
    let fresh = cas_of(&mut c, "changed");
    s.kill();

    for round in 0..2 {
        let s = Server::start(&["--aof", &log_s, "--fsync", "always"]);
        let mut c = s.connect();
        assert_eq!(cas_of(&mut c, "kept"), kept, "round {round}");
        assert_eq!(cas_of(&mut c, "changed"), fresh, "round {round}");
        // Uniques handed out after the restart are new ones.
        c.expect(format!("set new{round} 0 0 1\r\nn\r\n"), "STORED\r\n");
        let new = cas_of(&mut c, &format!("new{round}"));
        assert!(
            new > fresh && new != stale,
            "round {round}: reused unique {new}"
        );
        // A token from before the restart: stale fails, current wins.
        c.expect(format!("cas changed 0 0 1 {stale}\r\nx\r\n"), "EXISTS\r\n");
        if round == 1 {
            c.expect(format!("cas changed 0 0 1 {fresh}\r\nz\r\n"), "STORED\r\n");
        }
        s.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_filled_tail_is_cut_at_restart() {
    // What a power cut in the middle of appends can leave: the file grew,
    // its data never reached the disk.
    tail_is_cut_at_restart("zeros", &vec![0u8; 64 << 10]);
}

#[test]
fn corruption_followed_by_valid_records_refuses_to_start_until_told_to_cut() {
    let (dir, log) = log_of_100_sets("corrupt");
    let log_s = log.to_str().unwrap().to_string();
    let offsets = record_offsets(&log);
    let bad = *offsets.iter().rev().nth(40).unwrap();
    // The records before it: sets, and the CAS floor the start logged.
    let before = offsets.iter().filter(|&&o| o < bad).count() as u64 - 1;
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[bad as usize + 8 + 3] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();

    let (status, err) = run_expecting_exit(&["--aof", &log_s]);
    assert!(!status.success());
    assert!(err.contains(&format!("offset {bad}")), "no offset: {err}");
    let flag = format!("--aof-truncate-corrupt {bad}");
    assert!(err.contains(&flag), "no way out named: {err}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log was changed");

    // The flag at another offset does not cut.
    let other = (bad + 1).to_string();
    let (status, err) = run_expecting_exit(&["--aof", &log_s, "--aof-truncate-corrupt", &other]);
    assert!(!status.success(), "cut at the wrong offset: {err}");

    let bad_s = bad.to_string();
    let s = Server::start(&["--aof", &log_s, "--aof-truncate-corrupt", &bad_s]);
    let mut c = s.connect();
    assert_eq!(c.stat("curr_items"), before);
    assert_cut_at(&log, bad);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_process_on_the_same_log_refuses_to_start() {
    let dir = tmp("lock");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let s = Server::start(&["--aof", &log_s]);
    let mut c = s.connect();
    c.expect("set a 0 0 1\r\n1\r\n", "STORED\r\n");
    let (status, err) = run_expecting_exit(&["--aof", &log_s]);
    assert!(!status.success());
    assert!(err.contains("locked"), "unclear error: {err}");
    // The first one is unaffected, and its exit releases the lock.
    c.expect("get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    s.kill();
    let s = Server::start(&["--aof", &log_s]);
    s.connect()
        .expect("get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
