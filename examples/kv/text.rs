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
use crate::store::{DeleteStatus, DeltaStatus, Mode, StoreStatus, KEY_MAX};
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
    // The command line is copied out of the input buffer (the command may
    // read more input into it): onto the stack when it is short, as nearly
    // every line is, so a turn makes no allocation for it.
    let mut short = [0u8; 256];
    let mut long = Vec::new();
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
            let line: &[u8] = match short.get_mut(..l.len()) {
                Some(s) => {
                    s.copy_from_slice(l);
                    s
                }
                None => {
                    long.clear();
                    long.extend_from_slice(l);
                    &long
                }
            };
            c.consume(nl + 1);
            let flow = command(c, ctx, line);
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
            ctx.cmd_meta.add(1);
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
        c.put(b"VALUE ");
        c.put(k);
        c.put(b" ");
        c.put_num(item.flags as u64);
        c.put(b" ");
        c.put_num(item.value.len() as u64);
        if with_cas {
            c.put(b" ");
            c.put_num(item.cas);
        }
        c.put(b"\r\n");
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
        ctx.store_too_large.add(1);
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
    let reply: &[u8] = match ctx.store.store(mode, key, &value, flags, exptime) {
        Ok(StoreStatus::Stored(_)) => b"STORED\r\n",
        Ok(StoreStatus::NotStored) => b"NOT_STORED\r\n",
        Ok(StoreStatus::Exists) => b"EXISTS\r\n",
        Ok(StoreStatus::NotFound) => b"NOT_FOUND\r\n",
        // Only append and prepend grow a value past the limit after the
        // length check: memcached answers those NOT_STORED.
        Ok(StoreStatus::TooLarge) => b"NOT_STORED\r\n",
        Ok(StoreStatus::NoMemory) => {
            c.put(b"SERVER_ERROR out of memory storing object\r\n");
            ctx.store_no_memory.add(1);
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
    c.put_num(v);
    c.put(b"\r\n");
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
mod tests;
