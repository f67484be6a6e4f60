//! The kv example over real sockets: every text and binary command, the
//! error paths, and a real client library in both protocols.

mod kv_common;

use std::collections::HashMap;

use kv_common::{Client, Server};

#[test]
fn text_storage_and_retrieval() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.expect("set a 5 0 3\r\nabc\r\n", "STORED\r\n");
    c.expect("get a\r\n", "VALUE a 5 3\r\nabc\r\nEND\r\n");
    c.expect("add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.expect("add b 0 0 1\r\nx\r\n", "STORED\r\n");
    c.expect("replace c 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.expect("replace b 7 0 1\r\ny\r\n", "STORED\r\n");
    c.expect("append b 0 0 2\r\nzz\r\n", "STORED\r\n");
    c.expect("prepend b 0 0 2\r\nxx\r\n", "STORED\r\n");
    c.expect("append nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.expect(
        "get a b nope\r\n",
        "VALUE a 5 3\r\nabc\r\nVALUE b 7 5\r\nxxyzz\r\nEND\r\n",
    );

    c.send("gets a\r\n");
    let head = c.line();
    let cas: u64 = head.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(head, format!("VALUE a 5 3 {cas}\r\n"));
    assert_eq!(c.line(), "abc\r\n");
    assert_eq!(c.line(), "END\r\n");
    c.expect(format!("cas a 0 0 1 {}\r\nq\r\n", cas + 1000), "EXISTS\r\n");
    c.expect(format!("cas a 0 0 1 {cas}\r\nq\r\n"), "STORED\r\n");
    c.expect(format!("cas a 0 0 1 {cas}\r\nr\r\n"), "EXISTS\r\n");
    c.expect("cas nope 0 0 1 1\r\nr\r\n", "NOT_FOUND\r\n");

    c.expect("delete a\r\n", "DELETED\r\n");
    c.expect("delete a\r\n", "NOT_FOUND\r\n");
    c.expect("touch b 100\r\n", "TOUCHED\r\n");
    c.expect("touch a 100\r\n", "NOT_FOUND\r\n");
    c.expect("gat 100 b a\r\n", "VALUE b 7 5\r\nxxyzz\r\nEND\r\n");
    c.send("gats 0 b\r\n");
    assert!(c.line().starts_with("VALUE b 7 5 "));
    assert_eq!(c.line(), "xxyzz\r\n");
    assert_eq!(c.line(), "END\r\n");

    // Expiry without waiting: negative and absolute-past times.
    c.expect("set e 0 -1 1\r\nx\r\nget e\r\n", "STORED\r\nEND\r\n");
    c.expect("set e 0 2592001 1\r\nx\r\nget e\r\n", "STORED\r\nEND\r\n");
    c.expect(
        "set e 0 2592000 1\r\nx\r\nget e\r\n",
        "STORED\r\nVALUE e 0 1\r\nx\r\nEND\r\n",
    );
    c.expect("touch e -1\r\nget e\r\n", "TOUCHED\r\nEND\r\n");

    // Binary-safe values.
    c.send(b"set bin 0 0 5\r\n\r\n\0\xff\n\r\n");
    assert_eq!(c.line(), "STORED\r\n");
    c.send("get bin\r\n");
    assert_eq!(c.line(), "VALUE bin 0 5\r\n");
    assert_eq!(c.bytes(7), b"\r\n\0\xff\n\r\n");
    assert_eq!(c.line(), "END\r\n");
}

#[test]
fn text_incr_decr_flush_and_noreply() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.expect("incr n 1\r\n", "NOT_FOUND\r\n");
    c.expect("set n 0 0 2\r\n10\r\n", "STORED\r\n");
    c.expect("incr n 5\r\n", "15\r\n");
    c.expect("decr n 100\r\n", "0\r\n");
    c.expect("set n 0 0 20\r\n18446744073709551615\r\n", "STORED\r\n");
    c.expect("incr n 2\r\n", "1\r\n");
    c.expect("set t 0 0 2\r\nab\r\n", "STORED\r\n");
    c.expect(
        "incr t 1\r\n",
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    c.expect(
        "incr n x\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    c.expect(
        "decr n -3\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    );

    // noreply: nothing comes back, the next command's reply is next.
    c.send(
        "set q 0 0 1 noreply\r\n1\r\nadd q 0 0 1 noreply\r\n2\r\nreplace q 0 0 1 noreply\r\n3\r\n\
         append q 0 0 1 noreply\r\n4\r\nprepend q 0 0 1 noreply\r\n5\r\nincr q 1 noreply\r\n\
         decr q 2 noreply\r\ntouch q 0 noreply\r\ndelete zz noreply\r\n",
    );
    c.expect("get q\r\n", "VALUE q 0 3\r\n533\r\nEND\r\n");
    c.expect("delete q noreply\r\nget q\r\n", "END\r\n");

    c.expect("flush_all\r\n", "OK\r\n");
    c.expect("get n t\r\n", "END\r\n");
    c.expect(
        "set n 0 0 1\r\n1\r\nflush_all 100\r\nget n\r\n",
        "STORED\r\nOK\r\nVALUE n 0 1\r\n1\r\nEND\r\n",
    );
    c.expect("flush_all noreply\r\nget n\r\n", "END\r\n");
    let v = version(&mut c);
    c.expect(
        "flush_all 0 noreply\r\nversion\r\n",
        &format!("VERSION {v}\r\n"),
    );
    c.expect("verbosity 1\r\n", "OK\r\n");
    c.expect("verbosity 0 noreply\r\nverbosity\r\n", "ERROR\r\n");
}

fn version(c: &mut Client) -> String {
    c.send("version\r\n");
    c.line()
        .strip_prefix("VERSION ")
        .expect("VERSION reply")
        .trim_end()
        .to_string()
}

#[test]
fn text_stats_have_memcached_names() {
    let s = Server::start(&["-t", "2", "-m", "32"]);
    let mut c = s.connect();
    c.expect(
        "set a 0 0 1\r\nx\r\nget a\r\nget b\r\ntouch a 0\r\n",
        "STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nEND\r\nTOUCHED\r\n",
    );
    // The readiness probe of `Server::start` connected and closed; the
    // server counts it until it has read its end-of-file, so give that a
    // moment (bounded) before comparing connection counts.
    let mut stats: HashMap<String, String> = c.stats().into_iter().collect();
    for _ in 0..200 {
        if stats["curr_connections"] == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = c.stats().into_iter().collect();
    }
    for name in [
        "pid",
        "uptime",
        "time",
        "version",
        "curr_connections",
        "total_connections",
        "cmd_get",
        "cmd_set",
        "cmd_touch",
        "get_hits",
        "get_misses",
        "curr_items",
        "total_items",
        "bytes",
        "evictions",
        "limit_maxbytes",
        "threads",
    ] {
        assert!(stats.contains_key(name), "stats lacks {name}");
    }
    assert_eq!(stats["pid"], s.pid().to_string());
    assert_eq!(stats["threads"], "2");
    assert_eq!(stats["limit_maxbytes"], (32u64 << 20).to_string());
    assert_eq!(stats["cmd_get"], "2");
    assert_eq!(stats["get_hits"], "1");
    assert_eq!(stats["get_misses"], "1");
    assert_eq!(stats["cmd_set"], "1");
    assert_eq!(stats["cmd_touch"], "1");
    assert_eq!(stats["curr_items"], "1");
    assert_eq!(stats["curr_connections"], "1");
    assert!(stats["bytes"].parse::<u64>().unwrap() > 0);
    c.expect("stats settings\r\n", "STAT maxbytes 33554432\r\n");
}

#[test]
fn text_error_paths_keep_the_connection_usable() {
    let s = Server::start(&["-I", "1k"]);
    let mut c = s.connect();
    let long_key = "k".repeat(251);
    c.expect(
        format!("get {long_key}\r\n"),
        "CLIENT_ERROR bad command line format\r\n",
    );
    // As memcached: the data block of a rejected line is read as a command.
    c.expect(
        format!("set {long_key} 0 0 1\r\nx\r\n"),
        "CLIENT_ERROR bad command line format\r\nERROR\r\n",
    );
    c.expect("bogus command\r\n", "ERROR\r\n");
    c.expect("get\r\n", "ERROR\r\n");
    c.expect(
        "set a 0 0 1\r\nxyz\r\n",
        "CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    c.expect(
        "set a 0 0 x\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    );
    // A value over -I 1k: rejected and its data swallowed.
    c.expect("set big 0 0 1\r\nx\r\n", "STORED\r\n");
    c.send("set big 0 0 1025\r\n");
    c.send(vec![b'v'; 1025]);
    c.expect("\r\n", "SERVER_ERROR object too large for cache\r\n");
    c.expect("get big\r\n", "END\r\n");
    c.expect(
        format!("set big 0 0 1024\r\n{}\r\n", "v".repeat(1024)),
        "STORED\r\n",
    );
    // An append past the limit is not stored (memcached's answer).
    c.expect("append big 0 0 1\r\nv\r\n", "NOT_STORED\r\n");
    // A line over the limit: one error, the rest of the line dropped.
    c.send(vec![b'z'; 20_000]);
    c.expect("\r\nversion\r\n", "CLIENT_ERROR line too long\r\n");
    assert!(c.line().starts_with("VERSION "));
    c.expect(
        "delete x 5\r\n",
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    );
    c.expect("touch x y\r\n", "CLIENT_ERROR invalid exptime argument\r\n");
    c.expect("quit\r\n", "");
    assert!(c.closed());
}

#[test]
fn pipelined_and_large_values_round_trip() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    // 200 pipelined sets, sent at once, answered in order.
    let mut req = String::new();
    for i in 0..200 {
        req.push_str(&format!(
            "set p{i} {i} 0 {}\r\n{}\r\n",
            i.to_string().len(),
            i
        ));
    }
    c.send(&req);
    for _ in 0..200 {
        assert_eq!(c.line(), "STORED\r\n");
    }
    let keys: Vec<String> = (0..200).map(|i| format!("p{i}")).collect();
    c.send(format!("get {}\r\n", keys.join(" ")));
    for i in 0..200 {
        assert_eq!(
            c.line(),
            format!("VALUE p{i} {i} {}\r\n", i.to_string().len())
        );
        assert_eq!(c.line(), format!("{i}\r\n"));
    }
    assert_eq!(c.line(), "END\r\n");

    // Values up to the 1 MiB limit, fetched several at once.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for k in ["b1", "b2", "b3"] {
        c.send(format!("set {k} 0 0 {}\r\n", big.len()));
        c.send(&big);
        c.expect("\r\n", "STORED\r\n");
    }
    c.send("get b1 b2 b3\r\n");
    for k in ["b1", "b2", "b3"] {
        assert_eq!(c.line(), format!("VALUE {k} 0 {}\r\n", big.len()));
        assert_eq!(c.bytes(big.len()), big);
        assert_eq!(c.bytes(2), b"\r\n");
    }
    assert_eq!(c.line(), "END\r\n");
}

#[test]
fn memory_limit_evicts_least_recently_used() {
    let s = Server::start(&["-m", "2"]);
    let mut c = s.connect();
    let v = "v".repeat(1000);
    c.expect(format!("set hot 0 0 1000\r\n{v}\r\n"), "STORED\r\n");
    for i in 0..5000 {
        c.send(format!("set k{i} 0 0 1000\r\n{v}\r\nget hot\r\n"));
        assert_eq!(c.line(), "STORED\r\n");
        assert_eq!(
            c.line(),
            "VALUE hot 0 1000\r\n",
            "recently used item evicted at {i}"
        );
        c.line();
        assert_eq!(c.line(), "END\r\n");
    }
    assert!(c.stat("evictions") > 2000);
    assert!(c.stat("bytes") <= 2 << 20);
    c.expect("get k0\r\n", "END\r\n");
    c.expect(
        "get k4999\r\n",
        &format!("VALUE k4999 0 1000\r\n{v}\r\nEND\r\n"),
    );
}

/// Binary protocol helpers.
mod bin {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const APPEND: u8 = 0x0e;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;

    pub fn req(
        opcode: u8,
        key: &[u8],
        extras: &[u8],
        value: &[u8],
        opaque: u32,
        cas: u64,
    ) -> Vec<u8> {
        let mut v = vec![0u8; 24];
        v[0] = 0x80;
        v[1] = opcode;
        v[2..4].copy_from_slice(&(key.len() as u16).to_be_bytes());
        v[4] = extras.len() as u8;
        v[8..12].copy_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        v[12..16].copy_from_slice(&opaque.to_be_bytes());
        v[16..24].copy_from_slice(&cas.to_be_bytes());
        v.extend_from_slice(extras);
        v.extend_from_slice(key);
        v.extend_from_slice(value);
        v
    }

    pub fn set_extras(flags: u32, exp: u32) -> Vec<u8> {
        [flags.to_be_bytes(), exp.to_be_bytes()].concat()
    }

    pub fn delta_extras(by: u64, init: u64, exp: u32) -> Vec<u8> {
        [
            &by.to_be_bytes()[..],
            &init.to_be_bytes(),
            &exp.to_be_bytes(),
        ]
        .concat()
    }

    #[derive(Debug)]
    pub struct Res {
        pub opcode: u8,
        pub status: u16,
        pub opaque: u32,
        pub cas: u64,
        pub extras: Vec<u8>,
        pub key: Vec<u8>,
        pub value: Vec<u8>,
    }

    pub fn read(c: &mut super::Client) -> Res {
        let h = c.bytes(24);
        assert_eq!(h[0], 0x81, "response magic");
        let keylen = u16::from_be_bytes([h[2], h[3]]) as usize;
        let extlen = h[4] as usize;
        let body = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
        let b = c.bytes(body);
        Res {
            opcode: h[1],
            status: u16::from_be_bytes([h[6], h[7]]),
            opaque: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            cas: u64::from_be_bytes(h[16..24].try_into().unwrap()),
            extras: b[..extlen].to_vec(),
            key: b[extlen..extlen + keylen].to_vec(),
            value: b[extlen + keylen..].to_vec(),
        }
    }
}

#[test]
fn binary_commands() {
    use bin::*;
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send(req(SET, b"k", &set_extras(42, 0), b"hello", 1, 0));
    let r = read(&mut c);
    assert_eq!((r.opcode, r.status, r.opaque), (SET, 0, 1));
    let cas = r.cas;
    assert_ne!(cas, 0);
    c.send(req(GET, b"k", &[], &[], 2, 0));
    let r = read(&mut c);
    assert_eq!(
        (r.status, &r.value[..], &r.extras[..], r.cas),
        (0, &b"hello"[..], &42u32.to_be_bytes()[..], cas)
    );
    c.send(req(GETK, b"nope", &[], &[], 3, 0));
    let r = read(&mut c);
    assert_eq!((r.opcode, r.status, &r.key[..]), (GETK, 1, &b"nope"[..]));
    c.send(req(ADD, b"k", &set_extras(0, 0), b"x", 4, 0));
    assert_eq!(read(&mut c).status, 2);
    c.send(req(SET, b"k", &set_extras(0, 0), b"x", 5, cas + 99));
    assert_eq!(read(&mut c).status, 2, "CAS mismatch");
    c.send(req(APPEND, b"k", &[], b"!", 6, 0));
    assert_eq!(read(&mut c).status, 0);
    c.send(req(TOUCH, b"k", &100u32.to_be_bytes(), &[], 7, 0));
    assert_eq!(read(&mut c).status, 0);
    c.send(req(GAT, b"k", &0u32.to_be_bytes(), &[], 8, 0));
    assert_eq!(read(&mut c).value, b"hello!");

    // Quiet requests: only misses of GETQ are silent; NOOP ends the batch.
    let mut batch = Vec::new();
    for i in 0..50u32 {
        batch.extend(req(
            SETQ,
            format!("q{i}").as_bytes(),
            &set_extras(i, 0),
            b"v",
            100 + i,
            0,
        ));
    }
    for i in 0..60u32 {
        batch.extend(req(GETQ, format!("q{i}").as_bytes(), &[], &[], 200 + i, 0));
    }
    batch.extend(req(NOOP, &[], &[], &[], 999, 0));
    c.send(&batch);
    for i in 0..50u32 {
        let r = read(&mut c);
        assert_eq!(
            (r.opcode, r.opaque, &r.extras[..]),
            (GETQ, 200 + i, &i.to_be_bytes()[..])
        );
    }
    let r = read(&mut c);
    assert_eq!((r.opcode, r.opaque), (NOOP, 999));

    c.send(req(INCREMENT, b"n", &delta_extras(1, 10, 0), &[], 9, 0));
    assert_eq!(read(&mut c).value, 10u64.to_be_bytes());
    c.send(req(
        INCREMENT,
        b"n",
        &delta_extras(u64::MAX, 10, 0),
        &[],
        9,
        0,
    ));
    assert_eq!(read(&mut c).value, 9u64.to_be_bytes(), "wraps at 2^64");
    c.send(req(DECREMENT, b"n", &delta_extras(100, 0, 0), &[], 9, 0));
    assert_eq!(read(&mut c).value, 0u64.to_be_bytes(), "floors at 0");
    c.send(req(
        DECREMENT,
        b"m",
        &delta_extras(1, 0, 0xffff_ffff),
        &[],
        9,
        0,
    ));
    assert_eq!(read(&mut c).status, 1, "0xffffffff expiry: no create");
    c.send(req(INCREMENT, b"k", &delta_extras(1, 0, 0), &[], 9, 0));
    assert_eq!(read(&mut c).status, 6, "non-numeric");
    c.send(req(DELETE, b"k", &[], &[], 10, 0));
    assert_eq!(read(&mut c).status, 0);
    c.send(req(DELETE, b"k", &[], &[], 10, 0));
    assert_eq!(read(&mut c).status, 1);
    c.send(req(VERSION, &[], &[], &[], 11, 0));
    assert!(!read(&mut c).value.is_empty());
    c.send(req(STAT, &[], &[], &[], 12, 0));
    let mut names = Vec::new();
    loop {
        let r = read(&mut c);
        assert_eq!((r.opcode, r.opaque), (STAT, 12));
        if r.key.is_empty() {
            break;
        }
        names.push(String::from_utf8(r.key).unwrap());
    }
    assert!(names.iter().any(|n| n == "curr_items"));
    c.send(req(0x42, b"", &[], b"junk", 13, 0));
    let r = read(&mut c);
    assert_eq!((r.status, r.opaque), (0x81, 13));
    c.send(req(FLUSH, &[], &[], &[], 14, 0));
    assert_eq!(read(&mut c).status, 0);
    c.send(req(GET, b"q1", &[], &[], 15, 0));
    assert_eq!(read(&mut c).status, 1);
    // Over the item size limit: E2BIG, body swallowed, connection usable.
    c.send(req(
        SET,
        b"big",
        &set_extras(0, 0),
        &vec![0u8; (1 << 20) + 1],
        16,
        0,
    ));
    assert_eq!(read(&mut c).status, 3);
    c.send(req(QUIT, &[], &[], &[], 17, 0));
    assert_eq!(read(&mut c).opaque, 17);
    assert!(c.closed());
}

#[test]
fn binary_bad_magic_closes_the_connection() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send(bin::req(bin::NOOP, &[], &[], &[], 1, 0));
    assert_eq!(bin::read(&mut c).opaque, 1);
    let mut bad = bin::req(bin::NOOP, &[], &[], &[], 2, 0);
    bad[0] = 0x42;
    c.send(&bad);
    assert!(c.closed());
    // The server itself is fine.
    s.connect().expect("set a 0 0 1\r\nx\r\n", "STORED\r\n");
}

fn client_suite(url: &str) {
    let m = memcache::Client::connect(url).expect("memcache client");
    m.flush().unwrap();
    m.set("foo", "bar", 0).unwrap();
    assert_eq!(m.get::<String>("foo").unwrap().as_deref(), Some("bar"));
    // add on a present key fails (the ascii client reports it as Ok).
    let _ = m.add("foo", "baz", 0);
    assert_eq!(m.get::<String>("foo").unwrap().as_deref(), Some("bar"));
    m.add("new", "1", 0).unwrap();
    m.replace("new", "2", 0).unwrap();
    m.append("new", "3").unwrap();
    m.prepend("new", "1").unwrap();
    assert_eq!(m.get::<String>("new").unwrap().as_deref(), Some("123"));
    assert_eq!(m.increment("new", 7).unwrap(), 130);
    assert_eq!(m.decrement("new", 200).unwrap(), 0);
    assert!(m.touch("foo", 100).unwrap());
    assert!(!m.touch("missing", 100).unwrap());
    let got: HashMap<String, String> = m.gets(&["foo", "new", "missing"]).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["foo"], "bar");
    assert!(m.delete("foo").unwrap());
    assert!(!m.delete("foo").unwrap());
    assert_eq!(m.get::<String>("foo").unwrap(), None);
    let v = vec![7u8; 100_000];
    m.set("bytes", &v[..], 0).unwrap();
    assert_eq!(m.get::<Vec<u8>>("bytes").unwrap(), Some(v));
    assert!(!m.version().unwrap()[0].1.is_empty());
    if !url.contains("protocol=ascii") {
        // (memcache 0.17's ascii `stats` stops after the first line and
        // leaves the rest unread, so it is only used in binary mode.)
        let stats = m.stats().unwrap();
        assert!(stats[0].1.contains_key("curr_items"));
    }
    m.flush().unwrap();
    assert_eq!(m.get::<String>("new").unwrap(), None);
}

#[test]
fn memcache_client_ascii() {
    let s = Server::start(&[]);
    client_suite(&format!("memcache://{}?protocol=ascii", s.addr));
}

#[test]
fn memcache_client_binary() {
    let s = Server::start(&[]);
    client_suite(&format!("memcache://{}", s.addr));
}
