//! The kv example's append-only log: acknowledged writes survive SIGKILL,
//! a torn tail is cut at restart, a bad log path is a clear error.

mod kv_common;

use std::io::Write;
use std::path::PathBuf;
use std::thread;

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

#[test]
fn torn_tail_is_cut_at_restart() {
    let dir = tmp("torn");
    let log = dir.join("kv.aof");
    let log_s = log.to_str().unwrap().to_string();
    let s = Server::start(&["--aof", &log_s, "--fsync", "always"]);
    let mut c = s.connect();
    for i in 0..100 {
        c.expect(format!("set k{i} 0 0 3\r\nabc\r\n"), "STORED\r\n");
    }
    s.kill();
    // A crash in the middle of a record: a frame announcing 1000 bytes
    // followed by only a few.
    let good = std::fs::metadata(&log).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&1000u32.to_le_bytes()).unwrap();
    f.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
    drop(f);
    let s = Server::start(&["--aof", &log_s]);
    let mut c = s.connect();
    assert_eq!(c.stat("curr_items"), 100);
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        good,
        "torn record cut off"
    );
    c.expect("set after 0 0 1\r\nx\r\n", "STORED\r\n");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
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
