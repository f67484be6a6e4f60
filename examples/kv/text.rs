//! memcached's text protocol.
//!
//! Requests are lines ending in `\r\n` (a bare `\n` is accepted too);
//! storage commands are followed by a data block of the announced length
//! and `\r\n`.
//!
//! # Limits and bad input
//!
//! Errors are worded as memcached 1.6 words them, and the rest of the
//! connection behaves as it does in memcached (`scripts/memcached_diff.py`
//! compares the two byte for byte).
//!
//! - A command line may be 16 KiB long (memcached serves any line that
//!   fits its 16 KiB read buffer), or 2 MiB for the retrieval commands
//!   (`get`, `gets`, `gat`, `gats`), which carry many keys: batch reads of
//!   thousands of keys are served. A longer line gets
//!   `CLIENT_ERROR line too long`; the rest of it, up to the next newline,
//!   is read and dropped with bounded memory, and the connection goes on.
//! - A key longer than 250 bytes or containing control characters, or a
//!   number that does not parse, gets `CLIENT_ERROR bad command line
//!   format`. As in memcached, the data block of a rejected storage line is
//!   not skipped: its bytes are read as the next command (the length may
//!   be the very field that is wrong).
//! - A value larger than the item size limit gets
//!   `SERVER_ERROR object too large for cache` and its data block is read and
//!   dropped in small pieces (a `set` also removes the key's old value, as
//!   memcached does). An `append` or `prepend` whose result would be too
//!   large gets `NOT_STORED`.
//! - A data block not followed by `\r\n` gets `CLIENT_ERROR bad data chunk`;
//!   the block's announced length plus two bytes was consumed.
//! - Unknown commands, and known ones with the wrong number of arguments,
//!   get `ERROR`, except a line that looks like an HTTP
//!   request (see [`looks_like_http`]): the connection is closed at once
//!   and nothing more is sent on it, as memcached does, so a web page that
//!   makes a browser post to the port cannot drive the cache.
//! - `noreply` as the last argument of a storage command, `incr`, `decr`,
//!   `delete`, `touch`, `flush_all`, `verbosity` or `cache_memlimit`
//!   suppresses every reply of that command, errors included (as memcached
//!   does: a client that asked for no reply reads none, so its later replies
//!   stay in step). An `ERROR` for a malformed command is still sent.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use crate::conn::{reset_stats, stats_list, Block, Conn, Ctx, VERSION};
use crate::store::{DeleteStatus, DeltaStatus, Mode, StoreStatus, Value, KEY_MAX};
use crate::{meta, stats};

/// Longest command line (memcached handles any line that fits its 16 KiB
/// read buffer).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest line of a retrieval command: batch reads of many thousands of
/// keys are common, so this is far larger (memcached has no limit).
pub const MAX_GET_LINE: usize = 2 * 1024 * 1024;

const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";

enum Flow {
    Go,
    Quit,
    /// Close without sending the replies still queued.
    HangUp,
}

/// Serves text requests until the client quits or disconnects.
///
/// # Errors
///
/// I/O errors of the connection.
pub fn serve<S: Read + Write>(c: &mut Conn<'_, S>, ctx: &Ctx) -> io::Result<()> {
    let mut line = Vec::with_capacity(256);
    let mut discarding = false;
    // Buffered bytes already searched for a newline: a line that arrives in
    // many small reads is scanned once, not once per read.
    let mut scanned = 0;
    loop {
        let data = c.data();
        if let Some(nl) = data[scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| scanned + p)
        {
            scanned = 0;
            if discarding {
                c.consume(nl + 1);
                discarding = false;
                continue;
            }
            if nl >= line_limit(data) {
                // A whole line arrived at once but is over the limit.
                c.put(b"CLIENT_ERROR line too long\r\n");
                c.consume(nl + 1);
                continue;
            }
            let l = &data[..nl];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            line.clear();
            line.extend_from_slice(l);
            c.consume(nl + 1);
            let flow = command(c, ctx, &line);
            // `noreply` silences one command only, errors included.
            c.set_muted(false);
            match flow? {
                Flow::Go => {
                    c.request_done();
                    c.maybe_flush()?
                }
                Flow::Quit => return Ok(()),
                Flow::HangUp => {
                    c.discard_output();
                    return Ok(());
                }
            }
            continue;
        }
        let n = data.len();
        scanned = n;
        if discarding || n >= line_limit(data) {
            if !discarding {
                c.put(b"CLIENT_ERROR line too long\r\n");
                discarding = true;
            }
            c.consume(n);
            scanned = 0;
        }
        if !discarding && c.data().is_empty() && c.idle_here()? {
            return Ok(());
        }
        if !c.fill(MAX_GET_LINE)? {
            return Ok(());
        }
    }
}

/// The longest line allowed for the command `line` starts with.
fn line_limit(line: &[u8]) -> usize {
    let retrieval = [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| line.starts_with(p));
    if retrieval {
        MAX_GET_LINE
    } else {
        MAX_LINE
    }
}

/// memcached's tokenizer: fields split on single spaces (runs of spaces
/// make no empty fields), the line cut at its first NUL, at most 23 fields
/// kept (memcached's `MAX_TOKENS` less the terminator; the 23rd would hold
/// the rest of the line, which the rules built on this never look at).
pub fn mc_tokens(line: &[u8]) -> Vec<&[u8]> {
    let line = match line.iter().position(|&b| b == 0) {
        Some(z) => &line[..z],
        None => line,
    };
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .take(23)
        .collect()
}

/// True for a command line that memcached 1.6.18 treats as an HTTP request
/// and answers by closing the connection: the command is not one it knows,
/// and the last field (of at most 23) starts with `HTTP/`, as in
/// `GET / HTTP/1.1` or `DELETE HTTP/1.1`. As in memcached, the rule is
/// skipped for one-byte commands and for those whose first letter routes
/// them to a family of known commands (`g`, `s`, `a`, `c`, `i`, `d`, `t`,
/// and two-letter `m` meta commands), and for memcached's other commands
/// that kv lacks. Only called for commands kv does not know.
pub fn looks_like_http(line: &[u8]) -> bool {
    let t = mc_tokens(line);
    let (Some(cmd), Some(last)) = (t.first(), t.last()) else {
        return false;
    };
    let family = matches!(cmd[0], b'g' | b's' | b'a' | b'c' | b'i' | b'd' | b't')
        || (cmd[0] == b'm' && cmd.len() == 2);
    let known = matches!(
        *cmd,
        b"bget" | b"lru" | b"lru_crawler" | b"watch" | b"extstore" | b"refresh_certs"
    );
    cmd.len() >= 2 && !family && !known && last.starts_with(b"HTTP/")
}

/// True for a key memcached's text protocol can carry.
pub fn valid_key(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= KEY_MAX && k.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn parse<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    // Plain decimal only: no sign for unsigned types, no '+', no spaces.
    if t.first() == Some(&b'+') {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Appends a decimal number.
pub fn put_num(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Collects up to `N` tokens; the count says how many there were (it may
/// exceed `N`, in which case the extra ones are not kept).
fn take<'a, const N: usize>(toks: impl Iterator<Item = &'a [u8]>) -> ([&'a [u8]; N], usize) {
    let mut a: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    for t in toks {
        if n < N {
            a[n] = t;
        }
        n += 1;
    }
    (a, n)
}

fn command<S: Read + Write>(c: &mut Conn<'_, S>, ctx: &Ctx, line: &[u8]) -> io::Result<Flow> {
    let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let Some(cmd) = toks.next() else {
        c.put(b"ERROR\r\n");
        return Ok(Flow::Go);
    };
    match cmd {
        b"get" => retrieve(c, ctx, toks, false, None)?,
        b"gets" => retrieve(c, ctx, toks, true, None)?,
        b"gat" | b"gats" => {
            let Some(e) = toks.next() else {
                c.put(b"ERROR\r\n");
                return Ok(Flow::Go);
            };
            match parse::<i64>(e) {
                Some(exp) => retrieve(c, ctx, toks, cmd == b"gats", Some(exp))?,
                None => c.put(b"CLIENT_ERROR invalid exptime argument\r\n"),
            }
        }
        b"set" => return storage(c, ctx, Mode::Set, toks),
        b"add" => return storage(c, ctx, Mode::Add, toks),
        b"replace" => return storage(c, ctx, Mode::Replace, toks),
        b"append" => return storage(c, ctx, Mode::Append, toks),
        b"prepend" => return storage(c, ctx, Mode::Prepend, toks),
        b"cas" => return storage(c, ctx, Mode::Cas(0), toks),
        b"incr" | b"decr" => delta(c, ctx, cmd == b"incr", toks),
        b"delete" => delete(c, ctx, toks),
        b"touch" => touch(c, ctx, toks),
        b"flush_all" => flush_all(c, ctx, toks),
        b"version" => {
            c.put(b"VERSION ");
            c.put(VERSION.as_bytes());
            c.put(b"\r\n");
        }
        b"verbosity" => {
            // As memcached 1.6: arguments after the level are ignored, and
            // a trailing "noreply" silences even a bad level.
            let (a, n) = take::<2>(toks);
            let noreply = (1..=2).contains(&n) && a[n - 1] == b"noreply";
            c.set_muted(noreply);
            match (n, parse::<u32>(a[0])) {
                (1 | 2, Some(v)) => {
                    ctx.verbosity.store(v, Ordering::Relaxed);
                    if !noreply {
                        c.put(b"OK\r\n");
                    }
                }
                (1 | 2, None) => c.put(BAD_FORMAT),
                _ => c.put(b"ERROR\r\n"),
            }
        }
        b"cache_memlimit" => {
            let (a, n) = take::<2>(toks);
            let noreply = n == 2 && a[1] == b"noreply";
            c.set_muted(noreply);
            // memcached's wording, and its floor of 8 MiB.
            match (n, parse::<usize>(a[0])) {
                (1 | 2, Some(mb)) if mb >= 8 => {
                    ctx.store.set_limit(mb.saturating_mul(1 << 20));
                    c.put(b"OK\r\n");
                }
                (1 | 2, Some(_)) => {
                    c.put(b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n")
                }
                _ => c.put(b"ERROR\r\n"),
            }
        }
        b"stats" => stats(c, ctx, toks),
        b"mg" | b"ms" | b"md" | b"ma" | b"mn" | b"me" => {
            ctx.cmd_meta.fetch_add(1, Ordering::Relaxed);
            return Ok(if meta::command(c, ctx, cmd, toks)? {
                Flow::Go
            } else {
                Flow::Quit
            });
        }
        b"quit" => return Ok(Flow::Quit),
        b"shutdown" => c.put(b"ERROR: shutdown not enabled\r\n"),
        _ if looks_like_http(line) => return Ok(Flow::HangUp),
        _ => c.put(b"ERROR\r\n"),
    }
    Ok(Flow::Go)
}

fn retrieve<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    keys: impl Iterator<Item = &'a [u8]> + Clone,
    with_cas: bool,
    touch: Option<i64>,
) -> io::Result<()> {
    let mut n = 0;
    for k in keys.clone() {
        if !valid_key(k) {
            c.put(BAD_FORMAT);
            return Ok(());
        }
        n += 1;
    }
    if n == 0 && touch.is_none() {
        c.put(b"ERROR\r\n");
        return Ok(());
    }
    let mut head = Vec::with_capacity(64);
    for k in keys {
        let item = match touch {
            None => ctx.store.get(k),
            Some(exp) => match ctx.store.get_and_touch(k, exp) {
                Ok(i) => i,
                Err(e) => {
                    server_error(c, &e.to_string());
                    return Ok(());
                }
            },
        };
        let Some(item) = item else { continue };
        head.clear();
        head.extend_from_slice(b"VALUE ");
        head.extend_from_slice(k);
        head.push(b' ');
        put_num(&mut head, item.flags as u64);
        head.push(b' ');
        put_num(&mut head, item.value.len() as u64);
        if with_cas {
            head.push(b' ');
            put_num(&mut head, item.cas);
        }
        head.extend_from_slice(b"\r\n");
        c.put(&head);
        c.put_value(&item.value)?;
        c.put(b"\r\n");
        c.maybe_flush()?;
    }
    c.put(b"END\r\n");
    Ok(())
}

fn server_error<S: Read + Write>(c: &mut Conn<'_, S>, msg: &str) {
    c.put(b"SERVER_ERROR ");
    c.put(msg.as_bytes());
    c.put(b"\r\n");
}

fn storage<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    mode: Mode,
    toks: impl Iterator<Item = &'a [u8]>,
) -> io::Result<Flow> {
    let is_cas = matches!(mode, Mode::Cas(_));
    let need = if is_cas { 5 } else { 4 };
    let (a, n) = take::<6>(toks);
    if n < need || n > need + 1 {
        c.put(b"ERROR\r\n");
        return Ok(Flow::Go);
    }
    let noreply = n == need + 1 && a[need] == b"noreply";
    c.set_muted(noreply);
    let key = a[0];
    let flags = parse::<u32>(a[1]);
    let exptime = parse::<i64>(a[2]);
    let len = parse::<i64>(a[3]).filter(|&l| (0..i32::MAX as i64).contains(&l));
    let cas = if is_cas { parse::<u64>(a[4]) } else { Some(0) };
    // As memcached: a bad command line is answered and its data block, if
    // any, is read as the next command (the length may be what is wrong).
    let (Some(len), Some(flags), Some(exptime), Some(cas)) = (len, flags, exptime, cas) else {
        c.put(BAD_FORMAT);
        return Ok(Flow::Go);
    };
    let block = len as u64 + 2;
    if !valid_key(key) {
        c.put(BAD_FORMAT);
        return Ok(Flow::Go);
    }
    if len as usize > ctx.item_max {
        c.put(b"SERVER_ERROR object too large for cache\r\n");
        ctx.store_too_large.fetch_add(1, Ordering::Relaxed);
        if mode == Mode::Set {
            // Do not leave a stale value behind a failed set.
            if let Err(e) = ctx.store.delete(key, 0) {
                server_error(c, &e.to_string());
            }
        }
        return swallow(c, block);
    }
    let mut value = match c.read_block(block as usize)? {
        Block::Data(v) => v,
        Block::Eof => return Ok(Flow::Quit),
        Block::NoMemory => {
            c.put(b"SERVER_ERROR out of memory reading request\r\n");
            return Ok(Flow::Go);
        }
    };
    if !value.ends_with(b"\r\n") {
        c.put(b"CLIENT_ERROR bad data chunk\r\n");
        return Ok(Flow::Go);
    }
    value.truncate(len as usize);
    let mode = if is_cas { Mode::Cas(cas) } else { mode };
    let reply: &[u8] = match ctx
        .store
        .store(mode, key, Value::from(value), flags, exptime)
    {
        Ok(StoreStatus::Stored(_)) => b"STORED\r\n",
        Ok(StoreStatus::NotStored) => b"NOT_STORED\r\n",
        Ok(StoreStatus::Exists) => b"EXISTS\r\n",
        Ok(StoreStatus::NotFound) => b"NOT_FOUND\r\n",
        // Only append and prepend grow a value past the limit after the
        // length check: memcached answers those NOT_STORED.
        Ok(StoreStatus::TooLarge) => b"NOT_STORED\r\n",
        Ok(StoreStatus::NoMemory) => {
            c.put(b"SERVER_ERROR out of memory storing object\r\n");
            ctx.store_no_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(Flow::Go);
        }
        Err(e) => {
            server_error(c, &e.to_string());
            return Ok(Flow::Go);
        }
    };
    if !noreply {
        c.put(reply);
    }
    Ok(Flow::Go)
}

fn swallow<S: Read + Write>(c: &mut Conn<'_, S>, n: u64) -> io::Result<Flow> {
    Ok(if c.discard(n)? { Flow::Go } else { Flow::Quit })
}

fn delta<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    incr: bool,
    toks: impl Iterator<Item = &'a [u8]>,
) {
    let (a, n) = take::<3>(toks);
    if !(2..=3).contains(&n) {
        c.put(b"ERROR\r\n");
        return;
    }
    let noreply = n == 3 && a[2] == b"noreply";
    c.set_muted(noreply);
    if !valid_key(a[0]) {
        c.put(BAD_FORMAT);
        return;
    }
    let Some(by) = parse::<u64>(a[1]) else {
        c.put(b"CLIENT_ERROR invalid numeric delta argument\r\n");
        return;
    };
    match ctx.store.delta(a[0], incr, by, None, 0) {
        Ok(DeltaStatus::Value(v, _)) => {
            if !noreply {
                put_num_line(c, v);
            }
        }
        Ok(DeltaStatus::NotFound | DeltaStatus::Exists) => {
            if !noreply {
                c.put(b"NOT_FOUND\r\n");
            }
        }
        Ok(DeltaStatus::NonNumeric) => {
            c.put(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        }
        Err(e) => server_error(c, &e.to_string()),
    }
}

fn put_num_line<S: Read + Write>(c: &mut Conn<'_, S>, v: u64) {
    let mut b = Vec::with_capacity(24);
    put_num(&mut b, v);
    b.extend_from_slice(b"\r\n");
    c.put(&b);
}

fn delete<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    toks: impl Iterator<Item = &'a [u8]>,
) {
    let (a, n) = take::<3>(toks);
    if !(1..=3).contains(&n) {
        c.put(b"ERROR\r\n");
        return;
    }
    let noreply = n >= 2 && a[n - 1] == b"noreply";
    c.set_muted(noreply);
    let valid = match n {
        1 => true,
        2 => a[1] == b"0" || noreply,
        _ => a[1] == b"0" && noreply,
    };
    if !valid {
        c.put(b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
        return;
    }
    if !valid_key(a[0]) {
        c.put(BAD_FORMAT);
        return;
    }
    let reply: &[u8] = match ctx.store.delete(a[0], 0) {
        Ok(DeleteStatus::Deleted) => b"DELETED\r\n",
        Ok(_) => b"NOT_FOUND\r\n",
        Err(e) => {
            server_error(c, &e.to_string());
            return;
        }
    };
    if !noreply {
        c.put(reply);
    }
}

fn touch<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    toks: impl Iterator<Item = &'a [u8]>,
) {
    let (a, n) = take::<3>(toks);
    if !(2..=3).contains(&n) {
        c.put(b"ERROR\r\n");
        return;
    }
    let noreply = n == 3 && a[2] == b"noreply";
    c.set_muted(noreply);
    if !valid_key(a[0]) {
        c.put(BAD_FORMAT);
        return;
    }
    let Some(exp) = parse::<i64>(a[1]) else {
        c.put(b"CLIENT_ERROR invalid exptime argument\r\n");
        return;
    };
    let reply: &[u8] = match ctx.store.touch(a[0], exp) {
        Ok(true) => b"TOUCHED\r\n",
        Ok(false) => b"NOT_FOUND\r\n",
        Err(e) => {
            server_error(c, &e.to_string());
            return;
        }
    };
    if !noreply {
        c.put(reply);
    }
}

fn flush_all<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    toks: impl Iterator<Item = &'a [u8]>,
) {
    // As memcached: the first argument is the delay, a last "noreply"
    // silences the reply, anything in between is ignored.
    let (a, n) = take::<2>(toks);
    if n > 2 {
        c.put(b"ERROR\r\n");
        return;
    }
    let noreply = n >= 1 && a[n - 1] == b"noreply";
    c.set_muted(noreply);
    let delay = match (n, noreply) {
        (0, _) | (1, true) => Some(0),
        _ => parse::<i64>(a[0]),
    };
    let Some(delay) = delay else {
        c.put(b"CLIENT_ERROR invalid exptime argument\r\n");
        return;
    };
    match ctx.store.flush(delay) {
        Ok(()) => {
            if !noreply {
                c.put(b"OK\r\n");
            }
        }
        Err(e) => server_error(c, &e.to_string()),
    }
}

fn stats<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    toks: impl Iterator<Item = &'a [u8]>,
) {
    let (a, n) = take::<2>(toks);
    let list: Vec<(String, String)> = match (n, a[0]) {
        (0, _) => stats_list(ctx)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        // As memcached, arguments after the subcommand are ignored.
        (_, b"reset") => {
            reset_stats(ctx);
            c.put(b"RESET\r\n");
            return;
        }
        (_, b"settings") => stats::settings(ctx),
        (_, b"items") => stats::items(ctx),
        (_, b"slabs") => stats::slabs(ctx),
        (_, b"sizes") => stats::sizes(),
        (_, b"conns") => stats::conns(ctx),
        // kv keeps no per-prefix statistics: `stats detail on|off|dump`
        // is unknown, but the bare form gets memcached's usage line.
        (1, b"detail") => {
            c.put(b"CLIENT_ERROR usage: stats detail on|off|dump\r\n");
            return;
        }
        _ => {
            c.put(b"ERROR\r\n");
            return;
        }
    };
    let mut out = Vec::with_capacity(1024);
    for (k, v) in list {
        out.extend_from_slice(b"STAT ");
        out.extend_from_slice(k.as_bytes());
        out.push(b' ');
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"END\r\n");
    c.put(&out);
}

#[cfg(test)]
mod tests {
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
        assert_eq!(ctx.store.stats.get_hits.load(Ordering::Relaxed), 0);
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
        assert!(ctx.store.stats.evictions.load(Ordering::Relaxed) > 700);
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
}
