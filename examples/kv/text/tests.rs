use super::*;
use crate::conn::mock::{ctx, ctx_with, run};

/// Runs `input` as one session and returns the reply text; also checks
/// that delivering the same input one byte at a time gives the same
/// replies (requests split across reads).
fn session(input: &str) -> String {
    let whole = run(&ctx(), input.as_bytes(), usize::MAX);
    let bytewise = run(&ctx(), input.as_bytes(), 1);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&bytewise),
        "chunking changed the replies"
    );
    String::from_utf8(whole).unwrap()
}

#[test]
fn set_get_gets() {
    let out = session("set a 5 0 3\r\nabc\r\nget a\r\nget a b a\r\n");
    assert_eq!(
            out,
            "STORED\r\nVALUE a 5 3\r\nabc\r\nEND\r\nVALUE a 5 3\r\nabc\r\nVALUE a 5 3\r\nabc\r\nEND\r\n"
        );
    let ctx = ctx();
    let out = String::from_utf8(run(&ctx, b"set k 0 0 1\r\nx\r\ngets k\r\n", 7)).unwrap();
    let cas = ctx.store.get(b"k").unwrap().cas;
    assert_eq!(out, format!("STORED\r\nVALUE k 0 1 {cas}\r\nx\r\nEND\r\n"));
}

#[test]
fn bare_newlines_and_empty_values() {
    assert_eq!(
        session("set a 0 0 0\n\r\nget a\nget nothing\n"),
        "STORED\r\nVALUE a 0 0\r\n\r\nEND\r\nEND\r\n"
    );
}

#[test]
fn binary_safe_values() {
    let mut input = b"set bin 0 0 6\r\n\r\n\0\x80\n\r\r\nget bin\r\n".to_vec();
    input.extend_from_slice(b"quit\r\n");
    let out = run(&ctx(), &input, 3);
    assert_eq!(
        out,
        b"STORED\r\nVALUE bin 0 6\r\n\r\n\0\x80\n\r\r\nEND\r\n".to_vec()
    );
}

#[test]
fn add_replace_append_prepend_cas() {
    let out = session(
        "add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nreplace x 0 0 1\r\nc\r\nreplace k 0 0 1\r\nd\r\n\
             append k 0 0 2\r\nef\r\nprepend k 0 0 2\r\nbc\r\nappend x 0 0 1\r\nz\r\nget k\r\n\
             cas x 0 0 1 1\r\nz\r\ncas k 0 0 1 999\r\nz\r\n",
    );
    assert_eq!(
        out,
        "STORED\r\nNOT_STORED\r\nNOT_STORED\r\nSTORED\r\nSTORED\r\nSTORED\r\nNOT_STORED\r\n\
             VALUE k 0 5\r\nbcdef\r\nEND\r\nNOT_FOUND\r\nEXISTS\r\n"
    );
    let ctx = ctx();
    run(&ctx, b"set k 0 0 1\r\na\r\n", 100);
    let cas = ctx.store.get(b"k").unwrap().cas;
    let out = run(
        &ctx,
        format!("cas k 1 0 1 {cas}\r\nb\r\ncas k 1 0 1 {cas}\r\nc\r\nget k\r\n").as_bytes(),
        100,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "STORED\r\nEXISTS\r\nVALUE k 1 1\r\nb\r\nEND\r\n"
    );
}

#[test]
fn noreply_everywhere() {
    let out = session(
            "set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\nreplace a 0 0 1 noreply\r\n3\r\n\
             append a 0 0 1 noreply\r\n4\r\nprepend a 0 0 1 noreply\r\n5\r\ncas a 0 0 1 1 noreply\r\n6\r\n\
             incr a 1 noreply\r\ndecr a 1 noreply\r\ntouch a 10 noreply\r\nget a\r\n\
             delete a noreply\r\ndelete a 0 noreply\r\nflush_all noreply\r\nflush_all 0 noreply\r\n\
             verbosity 1 noreply\r\nget a\r\n",
        );
    assert_eq!(out, "VALUE a 0 3\r\n534\r\nEND\r\nEND\r\n");
}

#[test]
fn noreply_silences_errors_too() {
    let long = "k".repeat(251);
    let out = session(&format!(
        "incr nothing 1 noreply\r\nset t 0 0 2\r\nab\r\nincr t 1 noreply\r\nincr t x noreply\r\n\
             touch a x noreply\r\nflush_all x noreply\r\nverbosity x noreply\r\n\
             delete t 10 noreply\r\ncache_memlimit 1 noreply\r\n\
             set {long} 0 0 1 noreply\r\nx\r\nset a x 0 1 noreply\r\nget t\r\n\
             set a 0 0 1 noreply\r\nxyz\r\ndelete t 10\r\n"
    ));
    // The only replies: STORED, ERROR for the data line after the bad
    // key, the get, ERROR for the "\r\n" left by the bad chunk, and the
    // delete without noreply.
    assert_eq!(
        out,
        "STORED\r\nERROR\r\nVALUE t 0 2\r\nab\r\nEND\r\nERROR\r\n\
             CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
    );
    let ctx = ctx_with(64 << 20, 100);
    let mut input = b"set a 0 0 1\r\nx\r\nset a 0 0 101 noreply\r\n".to_vec();
    input.extend_from_slice(&[b'q'; 101]);
    input.extend_from_slice(b"\r\nget a\r\n");
    assert_eq!(run(&ctx, &input, 7), b"STORED\r\nEND\r\n");
}

#[test]
fn incr_decr_text_rules() {
    let out = session(
            "incr n 1\r\nset n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\n\
             set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\n\
             set t 0 0 2\r\nab\r\nincr t 1\r\nincr n -1\r\nincr n abc\r\nincr n 18446744073709551616\r\n\
             incr n\r\n",
        );
    assert_eq!(
        out,
        "NOT_FOUND\r\nSTORED\r\n15\r\n0\r\nSTORED\r\n0\r\nSTORED\r\n\
             CLIENT_ERROR cannot increment or decrement non-numeric value\r\n\
             CLIENT_ERROR invalid numeric delta argument\r\n\
             CLIENT_ERROR invalid numeric delta argument\r\n\
             CLIENT_ERROR invalid numeric delta argument\r\nERROR\r\n"
    );
}

#[test]
fn delete_forms() {
    let out = session(
            "set a 0 0 1\r\n1\r\ndelete a\r\ndelete a\r\nset a 0 0 1\r\n1\r\ndelete a 0\r\ndelete a 5\r\ndelete\r\n",
        );
    assert_eq!(
        out,
        "STORED\r\nDELETED\r\nNOT_FOUND\r\nSTORED\r\nDELETED\r\n\
             CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\nERROR\r\n"
    );
}

#[test]
fn touch_gat_gats_and_expiry() {
    let ctx = ctx();
    let out = run(
            &ctx,
            b"set a 0 0 1\r\nx\r\ntouch a 10\r\ntouch b 10\r\ntouch a xx\r\ngat 100 a b\r\ngat x a\r\ngat 100\r\n",
            usize::MAX,
        );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "STORED\r\nTOUCHED\r\nNOT_FOUND\r\nCLIENT_ERROR invalid exptime argument\r\n\
             VALUE a 0 1\r\nx\r\nEND\r\nCLIENT_ERROR invalid exptime argument\r\nEND\r\n"
    );
    ctx.store.clock().advance(50);
    let cas = ctx.store.get(b"a").unwrap().cas;
    let out = run(&ctx, b"gats 1 a\r\n", usize::MAX);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("VALUE a 0 1 {cas}\r\nx\r\nEND\r\n")
    );
    ctx.store.clock().advance(2);
    assert_eq!(run(&ctx, b"get a\r\n", usize::MAX), b"END\r\n");
    // Negative expiry: stored but immediately invisible.
    assert_eq!(
        run(&ctx, b"set n 0 -1 1\r\nx\r\nget n\r\n", usize::MAX),
        b"STORED\r\nEND\r\n"
    );
}

#[test]
fn flush_all_forms() {
    let ctx = ctx();
    let out = run(
            &ctx,
            b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\nset a 0 0 1\r\nx\r\nflush_all 10\r\nget a\r\nflush_all x\r\n",
            usize::MAX,
        );
    assert_eq!(
            String::from_utf8(out).unwrap(),
            "STORED\r\nOK\r\nEND\r\nSTORED\r\nOK\r\nVALUE a 0 1\r\nx\r\nEND\r\nCLIENT_ERROR invalid exptime argument\r\n"
        );
    ctx.store.clock().advance(10);
    assert_eq!(run(&ctx, b"get a\r\n", usize::MAX), b"END\r\n");
}

#[test]
fn misc_commands() {
    let out = session("version x\r\nverbosity noreply\r\nverbosity 1\r\nverbosity\r\nverbosity x\r\nbogus\r\n\r\nshutdown\r\nstats nonsense\r\nstats items\r\nquit\r\nget a\r\n");
    assert_eq!(
            out,
            format!(
                "VERSION {VERSION}\r\nOK\r\nERROR\r\nCLIENT_ERROR bad command line format\r\nERROR\r\nERROR\r\n\
                 ERROR: shutdown not enabled\r\nERROR\r\nEND\r\n"
            )
        );
}

#[test]
fn stats_fields() {
    let ctx = ctx();
    let out = run(
        &ctx,
        b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\nstats\r\n",
        usize::MAX,
    );
    let out = String::from_utf8(out).unwrap();
    for f in [
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
        assert!(
            out.contains(&format!("\r\nSTAT {f} ")) || out.starts_with(&format!("STAT {f} ")),
            "missing {f}"
        );
    }
    assert!(out.contains("STAT get_hits 1\r\n"));
    assert!(out.contains("STAT get_misses 1\r\n"));
    assert!(out.contains("STAT cmd_set 1\r\n"));
    assert!(out.contains("STAT curr_items 1\r\n"));
    assert!(out.contains("STAT curr_connections 1\r\n"));
    assert!(out.ends_with("END\r\n"));
    let out = run(&ctx, b"stats reset\r\nstats settings\r\n", usize::MAX);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("RESET\r\nSTAT maxbytes 67108864\r\n"));
    assert_eq!(ctx.store.stats.get_hits.get(), 0);
}

#[test]
fn stats_subcommands() {
    let ctx = ctx();
    let big = "y".repeat(2000);
    let out = run(
        &ctx,
        format!(
            "set a 0 0 1\r\nx\r\nset b 5 0 2000\r\n{big}\r\nstats items\r\nstats slabs\r\n\
                 stats sizes\r\nstats settings extra\r\nstats detail\r\nstats detail on\r\n"
        )
        .as_bytes(),
        usize::MAX,
    );
    let out = String::from_utf8(out).unwrap();
    // Class 1 (96-byte chunks) holds "a", class 15 (2320) holds "b".
    for line in [
        "STAT items:1:number 1\r\n",
        "STAT items:1:mem_requested 61\r\n",
        "STAT items:15:number 1\r\n",
        "STAT items:15:mem_requested 2064\r\n",
        "STAT 1:chunk_size 96\r\n",
        "STAT 15:chunk_size 2320\r\n",
        "STAT 15:used_chunks 1\r\n",
        "STAT active_slabs 2\r\nSTAT total_malloced 2097152\r\nEND\r\n",
        "STAT sizes_status disabled\r\nEND\r\n",
        "STAT maxbytes 67108864\r\nSTAT maxconns 1024\r\nSTAT tcpport 0\r\n",
        "STAT item_size_max 1048576\r\n",
        "STAT memory_file (null)\r\nEND\r\n\
             CLIENT_ERROR usage: stats detail on|off|dump\r\nERROR\r\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    assert_eq!(out.matches("STAT items:").count(), 2 * 28);
    // Connections: the listener, then each open one by socket number.
    *ctx.conns.listen.lock().unwrap() = "tcp:127.0.0.1:11211".into();
    let reg = ctx
        .conns
        .register(7, "tcp:127.0.0.1:5000".into(), ctx.store.now());
    reg.stat.waiting();
    let out = String::from_utf8(run(&ctx, b"stats conns\r\n", usize::MAX)).unwrap();
    assert!(out.starts_with(
        "STAT 0:addr tcp:127.0.0.1:11211\r\nSTAT 0:state conn_listening\r\n\
             STAT 0:secs_since_last_cmd 0\r\nSTAT 7:addr tcp:127.0.0.1:5000\r\n\
             STAT 7:listen_addr tcp:127.0.0.1:11211\r\nSTAT 7:state conn_waiting\r\n"
    ));
    drop(reg);
    let out = String::from_utf8(run(&ctx, b"stats conns\r\n", usize::MAX)).unwrap();
    assert!(
        !out.contains("7:addr"),
        "a closed connection is still listed"
    );
}

#[test]
fn bad_keys() {
    let long = "k".repeat(251);
    let ok = "k".repeat(250);
    let out = session(&format!(
            "get {long}\r\nset {long} 0 0 1\r\nx\r\nset {ok} 0 0 1\r\ny\r\nget {ok}\r\nget a\x01b\r\nincr {long} 1\r\n\
             touch {long} 1\r\ndelete {long}\r\nget\r\n"
        ));
    assert_eq!(
            out,
            format!(
                "CLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad command line format\r\nERROR\r\nSTORED\r\n\
                 VALUE {ok} 0 1\r\ny\r\nEND\r\nCLIENT_ERROR bad command line format\r\n\
                 CLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad command line format\r\n\
                 CLIENT_ERROR bad command line format\r\nERROR\r\n"
            )
        );
}

#[test]
fn bad_storage_lines() {
    let out = session(
            "set a 0 0\r\nset a x 0 1\r\nz\r\nset a 0 0 -1\r\nset a 0 0 x\r\nset a 4294967296 0 1\r\nz\r\n\
             cas a 0 0 1\r\ncas a 0 0 1 x\r\nz\r\nset a 0 0 1 noreply extra\r\nget a\r\n",
        );
    // As memcached, a rejected line's data block is read as a command.
    assert_eq!(
        out,
        "ERROR\r\nCLIENT_ERROR bad command line format\r\nERROR\r\n\
             CLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad command line format\r\n\
             CLIENT_ERROR bad command line format\r\nERROR\r\nERROR\r\n\
             CLIENT_ERROR bad command line format\r\nERROR\r\nERROR\r\nEND\r\n"
    );
}

#[test]
fn bad_data_chunk() {
    let out = session("set a 0 0 1\r\nxyz\r\nget a\r\nset a 0 0 1\r\nx\r\nget a\r\n");
    // The bad terminator "yz" is consumed with the data; the "\r\n" left
    // over is an empty command line.
    assert_eq!(
        out,
        "CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
    );
}

#[test]
fn too_large_value_is_swallowed() {
    let ctx = ctx_with(64 << 20, 100);
    let mut input = b"set a 0 0 1\r\nx\r\nset a 0 0 101\r\n".to_vec();
    input.extend_from_slice(&[b'q'; 101]);
    input.extend_from_slice(b"\r\nget a\r\nset b 0 0 100\r\n");
    input.extend_from_slice(&[b'q'; 100]);
    input.extend_from_slice(b"\r\nappend b 0 0 1\r\nq\r\n");
    let out = run(&ctx, &input, 13);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\nSTORED\r\n\
             NOT_STORED\r\n"
    );
}

#[test]
fn long_lines_are_rejected_and_skipped() {
    let mut input = b"set a 0 0 1\r\nx\r\n".to_vec();
    input.extend_from_slice(&[b'x'; 20_000]);
    input.extend_from_slice(b"\r\nget a\r\n");
    // A batch read of 15,000 keys (a 128 KiB line) is served.
    let mut long_get = b"get ".to_vec();
    for i in 0..15_000 {
        long_get.extend_from_slice(format!("key{i} ").as_bytes());
    }
    long_get.extend_from_slice(b"a\r\n");
    input.extend_from_slice(&long_get);
    let out = run(&ctx(), &input, 1000);
    assert_eq!(
            String::from_utf8(out).unwrap(),
            "STORED\r\nCLIENT_ERROR line too long\r\nVALUE a 0 1\r\nx\r\nEND\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        );
    // The same long line delivered in one piece.
    let mut input = vec![b'x'; 20_000];
    input.extend_from_slice(b"\r\nversion\r\n");
    let out = run(&ctx(), &input, usize::MAX);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("CLIENT_ERROR line too long\r\nVERSION {VERSION}\r\n")
    );
    // A line that never ends: one error, memory stays bounded.
    let out = run(&ctx(), &vec![b'y'; 3 << 20], 65536);
    assert_eq!(out, b"CLIENT_ERROR line too long\r\n");
}

#[test]
fn memory_limit_evicts() {
    let ctx = ctx_with(200 * 1024, 1 << 20);
    let mut input = Vec::new();
    for i in 0..1000 {
        input.extend_from_slice(format!("set key{i} 0 0 1000\r\n").as_bytes());
        input.extend_from_slice(&[b'v'; 1000]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b"get key999\r\nget key0\r\n");
    let out = String::from_utf8(run(&ctx, &input, usize::MAX)).unwrap();
    assert!(out.ends_with("\r\nEND\r\nEND\r\n"));
    assert!(out.contains("VALUE key999 0 1000\r\n"));
    assert!(ctx.store.stats.evictions.get() > 700);
    assert!(ctx.store.charged() <= 200 * 1024);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let alphabet = b"setgaddincr 0123456789\r\n\x00\xff-noreply";
    for _ in 0..200 {
        let mut input = Vec::new();
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        if input[0] == 0x80 {
            input[0] = b's';
        }
        let _ = run(&ctx(), &input, (seed % 64 + 1) as usize);
    }
}

#[test]
fn http_request_lines_hang_up() {
    // memcached 1.6.18 closes without a reply on these...
    for line in [
        &b"GET / HTTP/1.0"[..],
        b"PUT /path HTTP/1.1",
        b"DELETE HTTP/1.1",
        b"POST / HTTP/1.1",
        b"HTTP/1.1",
        b"xx HTTP/1.1",
        b"FOO bar HTTP/",
        b"GET / HTTP/1.0 ",
        b"GET / HTTP/1.1\rX",
        b"GET / HTTP/1.0\0junk",
        b"lxx / HTTP/1.1",
    ] {
        assert!(looks_like_http(line), "{:?}", String::from_utf8_lossy(line));
        let mut input = b"version\r\n".to_vec();
        input.extend_from_slice(line);
        input.extend_from_slice(b"\r\nversion\r\n");
        // Nothing at all comes back: not even the reply to the
        // request before it, still queued when the line was read.
        assert_eq!(run(&ctx(), &input, usize::MAX), b"");
    }
    // ... and answers ERROR on these.
    for line in [
        &b"GET / HTTP/1.0 extra"[..],
        b"GET /",
        b"FOO bar HTTPX",
        b"FOO bar http/1.1",
        b"HTTP/1.1 x",
        b"X HTTP/1.1",
        b"x  HTTP/1.1",
        b"GE\0T / HTTP/1.0",
        b"gxx / HTTP/1.1",
        b"sxx / HTTP/1.1",
        b"txx / HTTP/1.1",
        b"mx / HTTP/1.1",
        b"lru / HTTP/1.1",
        b"watch / HTTP/1.1",
    ] {
        assert!(
            !looks_like_http(line),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        let mut input = line.to_vec();
        input.extend_from_slice(b"\r\n");
        assert_eq!(run(&ctx(), &input, usize::MAX), b"ERROR\r\n");
    }
    // Fields past the 23rd are not looked at.
    let mid: String = (0..21).map(|i| format!(" a{i}")).collect();
    assert!(looks_like_http(
        format!("FOO{mid} HTTP/1.1 more").as_bytes()
    ));
    assert!(!looks_like_http(
        format!("FOO{mid} a21 HTTP/1.1").as_bytes()
    ));
    // Known commands are served whatever their last field.
    let out = session("set k 0 0 1\r\nx\r\nget k HTTP/1.1\r\nversion HTTP/1.1\r\n");
    assert_eq!(
        out,
        format!("STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\nVERSION {VERSION}\r\n")
    );
    // Split across reads, the rule is the same.
    assert_eq!(run(&ctx(), b"GET / HTTP/1.1\r\nversion\r\n", 1), b"");
}

#[test]
fn put_num_formats() {
    let mut v = Vec::new();
    put_num(&mut v, 0);
    v.push(b' ');
    put_num(&mut v, u64::MAX);
    assert_eq!(v, b"0 18446744073709551615");
}
