//! memcached 1.6's meta commands: `mg`, `ms`, `md`, `ma`, `mn`, `me`.
//!
//! A meta command is `<cmd> <key> <flags>*` (`ms` adds the data length
//! after the key). A flag is one character, some followed by a token
//! (`T30`, `Oabc`). Replies are two letters (`HD`, `VA`, `EN`, `NF`, `NS`,
//! `EX`, `MN`) followed by the return flags the request asked for, in the
//! order it asked for them, then `Z`, `X`, `W` where they apply (see
//! [`crate::store`]'s meta module for the win-token scheme).
//!
//! Flags: `b` (key in base64), `c` (return CAS), `C` (compare CAS), `E`
//! (use this CAS), `f`/`F` (client flags), `h` (fetched before), `I`
//! (invalidate), `k` (return key), `l` (seconds since last access), `M`
//! (mode), `N` (vivify on miss / auto-create), `J` and `D` (`ma` initial
//! value and delta), `O` (opaque, up to 32 bytes), `q` (quiet: no `EN` for
//! `mg`, no `HD` for `ms`, `md`, `ma`), `R` (recache win), `s` (size), `t`
//! (TTL left, `-1` for none), `T` (new TTL), `u` (no LRU bump), `v`
//! (value). `mn` answers `MN`, so a pipeline of quiet commands ends with a
//! reply the client can wait for.
//!
//! Errors are memcached 1.6.18's, byte for byte (`scripts/memcached_diff.py`),
//! except that `E` is accepted as protocol.txt defines it (memcached 1.6.18
//! answers `CLIENT_ERROR invalid flag`; later versions accept it).

use std::io::{self, Read, Write};

use crate::conn::{Block, Conn, Ctx};
use crate::stats;
use crate::store::{DeleteStatus, DeltaStatus, MetaGetOpts, Mode, SetOpts, StoreStatus, KEY_MAX};
use crate::text::put_num;

const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
/// Longest opaque token.
const OPAQUE_MAX: usize = 32;

/// A parsed flag: its letter and its token (empty for most).
type Flag<'a> = (u8, &'a [u8]);

/// Serves one meta command. Returns false at end of stream (an `ms` whose
/// data never came).
///
/// # Errors
///
/// I/O errors of the connection.
pub fn command<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    cmd: &[u8],
    mut toks: impl Iterator<Item = &'a [u8]>,
) -> io::Result<bool> {
    if cmd == b"mn" {
        c.put(b"MN\r\n");
        return Ok(true);
    }
    let Some(raw_key) = toks.next() else {
        c.put(match cmd {
            b"ms" | b"me" => BAD_FORMAT,
            _ => b"ERROR\r\n",
        });
        return Ok(true);
    };
    if cmd == b"ms" {
        return set(c, ctx, raw_key, toks);
    }
    let flags: Vec<&[u8]> = toks.collect();
    let parsed = match parse_flags(cmd, &flags) {
        Ok(f) => f,
        Err(e) => {
            c.put(e);
            return Ok(true);
        }
    };
    let key = match key_of(raw_key, &parsed) {
        Ok(k) => k,
        Err(e) => {
            c.put(e);
            return Ok(true);
        }
    };
    match cmd {
        b"mg" => get(c, ctx, raw_key, &key, &parsed)?,
        b"md" => delete(c, ctx, raw_key, &key, &parsed),
        b"ma" => arith(c, ctx, raw_key, &key, &parsed)?,
        _ => debug(c, ctx, &key),
    }
    Ok(true)
}

/// The flags each command accepts.
fn allowed(cmd: &[u8]) -> &'static [u8] {
    match cmd {
        b"mg" => b"bcfhklOqstvuTNRE",
        b"ms" => b"bcCEFIkOqTMN",
        b"md" => b"bCEIkOqT",
        b"ma" => b"bCEcNJDTMOqtvk",
        _ => b"b",
    }
}

fn parse_flags<'a>(cmd: &[u8], toks: &[&'a [u8]]) -> Result<Vec<Flag<'a>>, &'static [u8]> {
    let ok = allowed(cmd);
    // md and ma word flag errors one way, mg and ms another.
    let (invalid, duplicate): (&[u8], &[u8]) = match cmd {
        b"md" | b"ma" => (
            b"CLIENT_ERROR invalid or duplicate flag\r\n",
            b"CLIENT_ERROR invalid or duplicate flag\r\n",
        ),
        _ => (
            b"CLIENT_ERROR invalid flag\r\n",
            b"CLIENT_ERROR duplicate flag\r\n",
        ),
    };
    let mut seen = [false; 128];
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let f = t[0];
        if !ok.contains(&f) {
            return Err(invalid);
        }
        if seen[f as usize] {
            return Err(duplicate);
        }
        seen[f as usize] = true;
        if f == b'O' && t.len() - 1 > OPAQUE_MAX {
            return Err(b"CLIENT_ERROR opaque token too long\r\n");
        }
        out.push((f, &t[1..]));
    }
    // Numeric tokens.
    for &(f, tok) in &out {
        let numeric = matches!(f, b'T' | b'N' | b'R' | b'C' | b'E' | b'F' | b'J' | b'D');
        if !numeric {
            continue;
        }
        let good = match f {
            b'T' | b'N' | b'R' => parse::<i64>(tok).is_some(),
            b'F' => parse::<u32>(tok).is_some(),
            _ => parse::<u64>(tok).is_some(),
        };
        if !good {
            return Err(match (cmd, f) {
                (b"md" | b"ma", _) => b"CLIENT_ERROR invalid or duplicate flag\r\n",
                (_, b'T' | b'N' | b'R') if tok.is_empty() => {
                    b"CLIENT_ERROR bad token in command line format\r\n"
                }
                _ => BAD_FORMAT,
            });
        }
    }
    Ok(out)
}

fn has(flags: &[Flag<'_>], f: u8) -> bool {
    flags.iter().any(|&(g, _)| g == f)
}

fn token<'a>(flags: &[Flag<'a>], f: u8) -> Option<&'a [u8]> {
    flags.iter().find(|&&(g, _)| g == f).map(|&(_, t)| t)
}

fn num<T: std::str::FromStr>(flags: &[Flag<'_>], f: u8) -> Option<T> {
    token(flags, f).and_then(parse)
}

fn parse<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    if t.first() == Some(&b'+') {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// The key the command names: checked, and decoded with `b`.
fn key_of(raw: &[u8], flags: &[Flag<'_>]) -> Result<Vec<u8>, &'static [u8]> {
    if raw.len() > KEY_MAX || !raw.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err(BAD_FORMAT);
    }
    if has(flags, b'b') {
        match base64_decode(raw) {
            Some(k) if !k.is_empty() && k.len() <= KEY_MAX => Ok(k),
            _ => Err(b"CLIENT_ERROR error decoding key\r\n"),
        }
    } else {
        Ok(raw.to_vec())
    }
}

fn abs_ttl(ctx: &Ctx, flags: &[Flag<'_>], f: u8) -> Option<u64> {
    num::<i64>(flags, f).map(|t| ctx.store.abs_expiry(t))
}

fn ttl_left(ctx: &Ctx, exptime: u64, out: &mut Vec<u8>) {
    if exptime == 0 {
        out.extend_from_slice(b"-1");
    } else {
        let left = exptime.saturating_sub(ctx.store.now());
        put_num(out, left);
    }
}

fn push_flag(out: &mut Vec<u8>, f: u8) {
    out.push(b' ');
    out.push(f);
}

/// Appends the `O` and `k` return flags in request order; a key in base64
/// (`encoded`) is followed by a `b`, as memcached does.
fn push_common(out: &mut Vec<u8>, f: u8, tok: &[u8], key: &[u8], encoded: bool) {
    match f {
        b'O' => {
            push_flag(out, b'O');
            out.extend_from_slice(tok);
        }
        b'k' => {
            push_flag(out, b'k');
            out.extend_from_slice(key);
            if encoded {
                out.extend_from_slice(b" b");
            }
        }
        _ => {}
    }
}

fn end_line(c: &mut Conn<'_, impl Read + Write>, mut out: Vec<u8>) {
    out.extend_from_slice(b"\r\n");
    c.put(&out);
}

fn get<S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    raw_key: &[u8],
    key: &[u8],
    flags: &[Flag<'_>],
) -> io::Result<()> {
    let opts = MetaGetOpts {
        touch: abs_ttl(ctx, flags, b'T'),
        vivify: abs_ttl(ctx, flags, b'N'),
        recache: abs_ttl(ctx, flags, b'R'),
        no_bump: has(flags, b'u'),
        new_cas: num(flags, b'E'),
    };
    let hit = match ctx.store.meta_get(key, opts) {
        Ok(h) => h,
        Err(e) => {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
            return Ok(());
        }
    };
    let Some(hit) = hit else {
        if has(flags, b'q') {
            return Ok(());
        }
        let mut out = b"EN".to_vec();
        for &(f, tok) in flags {
            push_common(&mut out, f, tok, raw_key, has(flags, b'b'));
        }
        out.extend_from_slice(b"\r\n");
        c.put(&out);
        return Ok(());
    };
    let it = &hit.item;
    // Flags act in request order: a `t` before a `T` shows the old TTL.
    let mut exptime = hit.exptime_before;
    let mut out = Vec::with_capacity(64);
    if has(flags, b'v') {
        out.extend_from_slice(b"VA ");
        put_num(&mut out, it.value.len() as u64);
    } else {
        out.extend_from_slice(b"HD");
    }
    for &(f, tok) in flags {
        match f {
            b'c' => {
                push_flag(&mut out, b'c');
                put_num(&mut out, it.cas);
            }
            b'f' => {
                push_flag(&mut out, b'f');
                put_num(&mut out, it.flags as u64);
            }
            b'h' => {
                push_flag(&mut out, b'h');
                out.push(if hit.fetched { b'1' } else { b'0' });
            }
            b'l' => {
                push_flag(&mut out, b'l');
                put_num(&mut out, ctx.store.now().saturating_sub(hit.access));
            }
            b's' => {
                push_flag(&mut out, b's');
                put_num(&mut out, it.value.len() as u64);
            }
            b't' => {
                push_flag(&mut out, b't');
                ttl_left(ctx, exptime, &mut out);
            }
            b'T' => exptime = it.exptime,
            // memcached echoes the key as the item was stored: in base64
            // (and `b`) when it was stored with `b`, else as bytes.
            b'k' if hit.binary_key => push_common(&mut out, f, tok, &base64_encode(key), true),
            _ => push_common(&mut out, f, tok, key, false),
        }
    }
    if hit.token_was_sent {
        out.extend_from_slice(b" Z");
    }
    if hit.stale {
        out.extend_from_slice(b" X");
    }
    if hit.won {
        out.extend_from_slice(b" W");
    }
    out.extend_from_slice(b"\r\n");
    c.put(&out);
    if has(flags, b'v') {
        c.put_value(&it.value)?;
        c.put(b"\r\n");
        c.maybe_flush()?;
    }
    Ok(())
}

fn set<'a, S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    raw_key: &[u8],
    mut toks: impl Iterator<Item = &'a [u8]>,
) -> io::Result<bool> {
    let Some(len) = toks
        .next()
        .and_then(parse::<i64>)
        .filter(|&l| (0..i32::MAX as i64 - 2).contains(&l))
    else {
        c.put(BAD_FORMAT);
        return Ok(true);
    };
    let block = len as u64 + 2;
    let rest: Vec<&[u8]> = toks.collect();
    let checked = parse_flags(b"ms", &rest).and_then(|f| {
        let key = key_of(raw_key, &f)?;
        let mode = match token(&f, b'M') {
            None => Mode::Set,
            Some(m) if m.len() == 1 => match m[0] {
                b'S' => Mode::Set,
                b'E' => Mode::Add,
                b'A' => Mode::Append,
                b'P' => Mode::Prepend,
                b'R' => Mode::Replace,
                _ => return Err(&b"CLIENT_ERROR invalid mode for ms M token\r\n"[..]),
            },
            Some(_) => return Err(&b"CLIENT_ERROR invalid mode for ms M token\r\n"[..]),
        };
        Ok((f, key, mode))
    });
    let (flags, key, mode) = match checked {
        Ok(v) => v,
        Err(e) => {
            // The data block follows whatever was wrong with the line.
            c.put(e);
            return c.discard(block);
        }
    };
    if len as usize > ctx.item_max {
        // Unlike a classic append, a meta one also drops the old item.
        c.put(b"SERVER_ERROR object too large for cache\r\n");
        ctx.store_too_large.add(1);
        if let Err(e) = ctx.store.delete(&key, 0) {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
        }
        return c.discard(block);
    }
    let mut value = match c.read_block(block as usize)? {
        Block::Data(v) => v,
        Block::Eof => return Ok(false),
        Block::NoMemory => {
            c.put(b"SERVER_ERROR out of memory reading request\r\n");
            return Ok(true);
        }
    };
    if !value.ends_with(b"\r\n") {
        c.put(b"CLIENT_ERROR bad data chunk\r\n");
        return Ok(true);
    }
    value.truncate(len as usize);
    let compare: Option<u64> = num(&flags, b'C');
    let mode = match (mode, compare) {
        (Mode::Set, Some(cas)) => Mode::Cas(cas),
        (m, _) => m,
    };
    let opts = SetOpts {
        new_cas: num(&flags, b'E'),
        invalidate: has(&flags, b'I'),
        binary_key: has(&flags, b'b'),
    };
    let client_flags: u32 = num(&flags, b'F').unwrap_or(0);
    let exp = abs_ttl(ctx, &flags, b'T').unwrap_or(0);
    let r = ctx
        .store
        .store_with(mode, &key, &value, client_flags, exp, opts);
    let (code, cas): (&[u8], u64) = match r {
        Ok(StoreStatus::Stored(cas)) => (b"HD", cas),
        Ok(StoreStatus::NotStored | StoreStatus::TooLarge) => (b"NS", 0),
        Ok(StoreStatus::Exists) => (b"EX", 0),
        Ok(StoreStatus::NotFound) => (b"NF", 0),
        Ok(StoreStatus::NoMemory) => {
            c.put(b"SERVER_ERROR out of memory storing object\r\n");
            ctx.store_no_memory.add(1);
            return Ok(true);
        }
        Err(e) => {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
            return Ok(true);
        }
    };
    if code == b"HD" && has(&flags, b'q') {
        return Ok(true);
    }
    let mut out = code.to_vec();
    for &(f, tok) in &flags {
        match f {
            b'c' => {
                push_flag(&mut out, b'c');
                put_num(&mut out, cas);
            }
            _ => push_common(&mut out, f, tok, raw_key, has(&flags, b'b')),
        }
    }
    end_line(c, out);
    Ok(true)
}

fn delete<S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    raw_key: &[u8],
    key: &[u8],
    flags: &[Flag<'_>],
) {
    let cas = num(flags, b'C').unwrap_or(0);
    let r = ctx.store.meta_delete(
        key,
        cas,
        has(flags, b'I'),
        abs_ttl(ctx, flags, b'T'),
        num(flags, b'E'),
    );
    let code: &[u8] = match r {
        Ok(DeleteStatus::Deleted) => b"HD",
        Ok(DeleteStatus::NotFound) => b"NF",
        Ok(DeleteStatus::Exists) => b"EX",
        Err(e) => {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
            return;
        }
    };
    if code == b"HD" && has(flags, b'q') {
        return;
    }
    let mut out = code.to_vec();
    for &(f, tok) in flags {
        push_common(&mut out, f, tok, raw_key, has(flags, b'b'));
    }
    end_line(c, out);
}

fn arith<S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    raw_key: &[u8],
    key: &[u8],
    flags: &[Flag<'_>],
) -> io::Result<()> {
    let incr = match token(flags, b'M') {
        None => true,
        Some(m) if m.len() == 1 => match m[0] {
            b'I' | b'+' => true,
            b'D' | b'-' => false,
            _ => {
                c.put(b"CLIENT_ERROR invalid mode for ma M token\r\n");
                return Ok(());
            }
        },
        Some(_) => {
            c.put(b"CLIENT_ERROR invalid mode for ma M token\r\n");
            return Ok(());
        }
    };
    let by: u64 = num(flags, b'D').unwrap_or(1);
    let initial = num::<i64>(flags, b'N').map(|ttl| (num::<u64>(flags, b'J').unwrap_or(0), ttl));
    let cas = num(flags, b'C').unwrap_or(0);
    let r = ctx
        .store
        .delta_with(key, incr, by, initial, cas, num(flags, b'E'));
    let (value, new_cas) = match r {
        Ok(DeltaStatus::Value(v, cas)) => (v, cas),
        Ok(DeltaStatus::NotFound) => {
            c.put(b"NF\r\n");
            return Ok(());
        }
        Ok(DeltaStatus::Exists) => {
            c.put(b"EX\r\n");
            return Ok(());
        }
        Ok(DeltaStatus::NonNumeric) => {
            c.put(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
            return Ok(());
        }
        Err(e) => {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
            return Ok(());
        }
    };
    let mut exptime = None;
    if let Some(exp) = abs_ttl(ctx, flags, b'T') {
        if let Err(e) = ctx.store.touch(key, exp as i64) {
            c.put(format!("SERVER_ERROR {e}\r\n").as_bytes());
            return Ok(());
        }
        exptime = Some(exp);
    }
    let with_value = has(flags, b'v');
    if !with_value && has(flags, b'q') {
        return Ok(());
    }
    let mut digits = Vec::with_capacity(20);
    put_num(&mut digits, value);
    let mut out = Vec::with_capacity(64);
    if with_value {
        out.extend_from_slice(b"VA ");
        put_num(&mut out, digits.len() as u64);
    } else {
        out.extend_from_slice(b"HD");
    }
    for &(f, tok) in flags {
        match f {
            b'c' => {
                push_flag(&mut out, b'c');
                put_num(&mut out, new_cas);
            }
            b't' => {
                push_flag(&mut out, b't');
                let exp = exptime.or_else(|| ctx.store.meta_peek(key).map(|(it, _, _)| it.exptime));
                ttl_left(ctx, exp.unwrap_or(0), &mut out);
            }
            _ => push_common(&mut out, f, tok, raw_key, has(flags, b'b')),
        }
    }
    end_line(c, out);
    if with_value {
        c.put(&digits);
        c.put(b"\r\n");
    }
    Ok(())
}

/// `me <key>`: memcached's debug line (size and class as memcached would
/// store the item, see [`crate::stats`]).
fn debug<S: Read + Write>(c: &mut Conn<'_, S>, ctx: &Ctx, key: &[u8]) {
    let Some((it, fetched, access)) = ctx.store.meta_peek(key) else {
        c.put(b"EN\r\n");
        return;
    };
    let now = ctx.store.now();
    let size = stats::item_size(key.len(), it.value.len(), it.flags);
    let mut out = b"ME ".to_vec();
    out.extend_from_slice(key);
    out.extend_from_slice(b" exp=");
    // memcached 1.6.18 prints the time left negated (`now - exptime`).
    let left = it.exptime.saturating_sub(now);
    if it.exptime == 0 {
        out.extend_from_slice(b"-1");
    } else {
        if left > 0 {
            out.push(b'-');
        }
        put_num(&mut out, left);
    }
    out.extend_from_slice(b" la=");
    put_num(&mut out, now.saturating_sub(access));
    out.extend_from_slice(b" cas=");
    put_num(&mut out, it.cas);
    out.extend_from_slice(if fetched { b" fetch=yes" } else { b" fetch=no" });
    out.extend_from_slice(b" cls=");
    put_num(&mut out, stats::class_of(size) as u64);
    out.extend_from_slice(b" size=");
    put_num(&mut out, size as u64);
    out.extend_from_slice(b"\r\n");
    c.put(&out);
}

/// Decodes standard base64 (with `=` padding, as memcached expects).
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 != 0 {
        return None;
    }
    let val = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &b in &q[..4 - pad] {
            n = n << 6 | val(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Encodes standard base64 with padding.
pub fn base64_encode(b: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(b.len().div_ceil(3) * 4);
    for ch in b.chunks(3) {
        let n = (ch[0] as u32) << 16
            | (*ch.get(1).unwrap_or(&0) as u32) << 8
            | *ch.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= ch.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::mock::{ctx, run};
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn session(ctx: &Ctx, input: &str) -> String {
        String::from_utf8(run(ctx, input.as_bytes(), usize::MAX)).unwrap()
    }

    #[test]
    fn smoke() {
        let ctx = ctx();
        let out = session(
            &ctx,
            "ms foo 3 T0 F5 c\r\nbar\r\nmg foo v f s t k O123 h l\r\nmg foo h l q k\r\n\
             mg miss v q\r\nmg miss v k O9\r\nmn\r\n",
        );
        let cas = ctx.store.get(b"foo").unwrap().cas;
        assert_eq!(
            out,
            format!(
                "HD c{cas}\r\nVA 3 f5 s3 t-1 kfoo O123 h0 l0\r\nbar\r\nHD h1 l0 kfoo\r\n\
                 EN kmiss O9\r\nMN\r\n"
            )
        );
    }

    #[test]
    fn set_modes_delete_and_arithmetic() {
        let ctx = ctx();
        let out = session(
            &ctx,
            "ms a 1 ME\r\n1\r\nms a 1 ME\r\n2\r\nms a 1 MA\r\n3\r\nms a 1 MP\r\n0\r\nms b 1 MR\r\nx\r\n\
             mg a v\r\nms a 1 C1\r\nz\r\nms a 1 q\r\ny\r\nms b 1 MR q\r\ny\r\n\
             md a q\r\nmd a q\r\nmd a O5 k\r\n\
             ma cnt\r\nma cnt N0 J10 v\r\nma cnt v MD D3\r\nma cnt q\r\nma cnt M- D1000 v\r\n\
             ma cnt Mi\r\nmn\r\n",
        );
        assert_eq!(
            out,
            "HD\r\nNS\r\nHD\r\nHD\r\nNS\r\nVA 3\r\n013\r\nEX\r\nNS\r\n\
             NF\r\nNF O5 ka\r\n\
             NF\r\nVA 2\r\n10\r\nVA 1\r\n7\r\nVA 1\r\n0\r\n\
             CLIENT_ERROR invalid mode for ma M token\r\nMN\r\n"
        );
    }

    #[test]
    fn vivify_invalidate_and_recache_hand_out_one_token() {
        let ctx = ctx();
        let out = session(
            &ctx,
            "mg viv N30 v t\r\nmg viv N30 v t\r\nms viv 3\r\nnew\r\nmg viv v\r\n\
             ms foo 3\r\nbar\r\nmd foo I T30\r\nmg foo v\r\nmg foo v\r\nms foo 3 I\r\nnew\r\nmg foo v\r\n\
             ms ttl 2 T10\r\nhi\r\nmg ttl R30 t\r\nmg ttl R30 t\r\nmg ttl R5 t\r\n",
        );
        assert_eq!(
            out,
            "VA 0 t30 W\r\n\r\nVA 0 t30 Z\r\n\r\nHD\r\nVA 3\r\nnew\r\n\
             HD\r\nHD\r\nVA 3 X W\r\nbar\r\nVA 3 Z X\r\nbar\r\nHD\r\nVA 3\r\nnew\r\n\
             HD\r\nHD t10 W\r\nHD t10 Z\r\nHD t10 Z\r\n"
        );
    }

    #[test]
    fn errors_are_memcacheds() {
        let ctx = ctx();
        let out = session(
            &ctx,
            "mg\r\nmg foo zz\r\nmg foo v v\r\nms foo\r\nms foo x\r\nms foo 2 MX\r\nhi\r\n\
             ms foo 2 T\r\nhi\r\nms foo 2 c\r\nhix\r\nmd foo Cx\r\nma foo MX\r\nme\r\n\
             mg foo O123456789012345678901234567890123 v\r\nmg !!!! b v\r\nmn\r\n",
        );
        assert_eq!(
            out,
            "ERROR\r\nCLIENT_ERROR invalid flag\r\nCLIENT_ERROR duplicate flag\r\n\
             CLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad command line format\r\n\
             CLIENT_ERROR invalid mode for ms M token\r\n\
             CLIENT_ERROR bad token in command line format\r\n\
             CLIENT_ERROR bad data chunk\r\nERROR\r\n\
             CLIENT_ERROR invalid or duplicate flag\r\nCLIENT_ERROR invalid mode for ma M token\r\n\
             CLIENT_ERROR bad command line format\r\nCLIENT_ERROR opaque token too long\r\n\
             CLIENT_ERROR error decoding key\r\nMN\r\n"
        );
    }

    #[test]
    fn explicit_cas() {
        // `E` sets the CAS unique of what a command writes (memcached's
        // protocol.txt; 1.6.18 predates it, so it is outside the diff).
        let ctx = ctx();
        let out = session(
            &ctx,
            "ms a 1 E500 c\r\n1\r\nma a E600 c\r\nmd a I E700\r\nmg a c\r\n\
             mg b N30 E800 c\r\nms a 1 C700 E900 c\r\n2\r\n",
        );
        assert_eq!(
            out,
            "HD c500\r\nHD c600\r\nHD\r\nHD c700 X W\r\nHD c800 W\r\nHD c900\r\n"
        );
    }

    #[test]
    fn base64_keys_round_trip() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"\x00\xff\x10 key\r\n"] {
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert_eq!(base64_encode(b"foo"), b"Zm9v");
        assert!(base64_decode(b"Zm9").is_none());
        assert!(base64_decode(b"Z=9v").is_none());
        let ctx = ctx();
        let out = session(&ctx, "ms Zm9v 2 b k\r\nhi\r\nget foo\r\nmg Zm9v b k v\r\n");
        assert_eq!(
            out,
            "HD kZm9v b\r\nVALUE foo 0 2\r\nhi\r\nEND\r\nVA 2 kZm9v b\r\nhi\r\n"
        );
    }

    /// Many readers race for the win token of one missing key, and of an
    /// invalidated one: exactly one of them wins each round.
    #[test]
    fn stress_one_winner_per_token() {
        let ctx = Arc::new(ctx());
        let threads = 8;
        let rounds = 300;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let wins: Arc<Vec<AtomicUsize>> =
            Arc::new((0..2 * rounds).map(|_| AtomicUsize::new(0)).collect());
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ctx, barrier, wins) = (ctx.clone(), barrier.clone(), wins.clone());
                std::thread::spawn(move || {
                    for r in 0..rounds {
                        let key = format!("k{r}");
                        barrier.wait();
                        let vivify = MetaGetOpts {
                            vivify: Some(0),
                            ..MetaGetOpts::default()
                        };
                        let hit = ctx.store.meta_get(key.as_bytes(), vivify).unwrap().unwrap();
                        if hit.won {
                            wins[2 * r].fetch_add(1, Ordering::Relaxed);
                        }
                        barrier.wait();
                        // One thread invalidates; then all race again.
                        if t == 0 {
                            ctx.store
                                .meta_delete(key.as_bytes(), 0, true, None, None)
                                .unwrap();
                        }
                        barrier.wait();
                        let hit = ctx
                            .store
                            .meta_get(key.as_bytes(), MetaGetOpts::default())
                            .unwrap()
                            .unwrap();
                        if hit.won {
                            wins[2 * r + 1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for (i, w) in wins.iter().enumerate() {
            assert_eq!(
                w.load(Ordering::Relaxed),
                1,
                "round {} phase {}",
                i / 2,
                i % 2
            );
        }
    }

    /// One operation, as a classic command and as its meta twin.
    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u32, Vec<u8>),
        Add(u8, Vec<u8>),
        Replace(u8, Vec<u8>),
        Append(u8, Vec<u8>),
        Prepend(u8, Vec<u8>),
        Delete(u8),
        Incr(u8, u64),
        Decr(u8, u64),
        Get(u8),
    }

    /// What a reply means, whichever protocol gave it.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Stored,
        NotStored,
        Deleted,
        NotFound,
        Number(u64),
        NonNumeric,
        Value(u32, Vec<u8>),
        Miss,
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20),
            (0u64..1000).prop_map(|n| n.to_string().into_bytes()),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0u8..4;
        prop_oneof![
            (k.clone(), any::<u32>(), value()).prop_map(|(k, f, v)| Op::Set(k, f, v)),
            (k.clone(), value()).prop_map(|(k, v)| Op::Add(k, v)),
            (k.clone(), value()).prop_map(|(k, v)| Op::Replace(k, v)),
            (k.clone(), value()).prop_map(|(k, v)| Op::Append(k, v)),
            (k.clone(), value()).prop_map(|(k, v)| Op::Prepend(k, v)),
            k.clone().prop_map(Op::Delete),
            (k.clone(), 0u64..50).prop_map(|(k, d)| Op::Incr(k, d)),
            (k.clone(), 0u64..50).prop_map(|(k, d)| Op::Decr(k, d)),
            k.prop_map(Op::Get),
        ]
    }

    fn with_data(head: String, v: &[u8]) -> Vec<u8> {
        let mut b = head.into_bytes();
        b.extend_from_slice(v);
        b.extend_from_slice(b"\r\n");
        b
    }

    fn classic(op: &Op) -> Vec<u8> {
        match op {
            Op::Set(k, f, v) => with_data(format!("set k{k} {f} 0 {}\r\n", v.len()), v),
            Op::Add(k, v) => with_data(format!("add k{k} 0 0 {}\r\n", v.len()), v),
            Op::Replace(k, v) => with_data(format!("replace k{k} 0 0 {}\r\n", v.len()), v),
            Op::Append(k, v) => with_data(format!("append k{k} 0 0 {}\r\n", v.len()), v),
            Op::Prepend(k, v) => with_data(format!("prepend k{k} 0 0 {}\r\n", v.len()), v),
            Op::Delete(k) => format!("delete k{k}\r\n").into_bytes(),
            Op::Incr(k, d) => format!("incr k{k} {d}\r\n").into_bytes(),
            Op::Decr(k, d) => format!("decr k{k} {d}\r\n").into_bytes(),
            Op::Get(k) => format!("get k{k}\r\n").into_bytes(),
        }
    }

    fn meta(op: &Op) -> Vec<u8> {
        match op {
            Op::Set(k, f, v) => with_data(format!("ms k{k} {} F{f}\r\n", v.len()), v),
            Op::Add(k, v) => with_data(format!("ms k{k} {} ME\r\n", v.len()), v),
            Op::Replace(k, v) => with_data(format!("ms k{k} {} MR\r\n", v.len()), v),
            Op::Append(k, v) => with_data(format!("ms k{k} {} MA\r\n", v.len()), v),
            Op::Prepend(k, v) => with_data(format!("ms k{k} {} MP\r\n", v.len()), v),
            Op::Delete(k) => format!("md k{k}\r\n").into_bytes(),
            Op::Incr(k, d) => format!("ma k{k} D{d} v\r\n").into_bytes(),
            Op::Decr(k, d) => format!("ma k{k} MD D{d} v\r\n").into_bytes(),
            Op::Get(k) => format!("mg k{k} f v\r\n").into_bytes(),
        }
    }

    fn outcome(op: &Op, reply: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(reply);
        let first = text.split("\r\n").next().unwrap_or("");
        let numeric = |s: &str| s.parse::<u64>().ok();
        match first {
            "STORED" | "HD" if !matches!(op, Op::Delete(_)) => Outcome::Stored,
            "DELETED" | "HD" => Outcome::Deleted,
            "NOT_STORED" | "NS" => Outcome::NotStored,
            "NOT_FOUND" | "NF" => Outcome::NotFound,
            "END" | "EN" => Outcome::Miss,
            l if l.starts_with("CLIENT_ERROR cannot increment") => Outcome::NonNumeric,
            l if l.starts_with("VALUE ") => {
                let f: Vec<&str> = l.split(' ').collect();
                let n: usize = f[3].parse().unwrap();
                let start = l.len() + 2;
                Outcome::Value(f[2].parse().unwrap(), reply[start..start + n].to_vec())
            }
            l if l.starts_with("VA ") => {
                let f: Vec<&str> = l.split(' ').collect();
                let n: usize = f[1].parse().unwrap();
                let start = l.len() + 2;
                let data = reply[start..start + n].to_vec();
                match f.get(2) {
                    Some(fl) => Outcome::Value(fl[1..].parse().unwrap(), data),
                    None => Outcome::Number(numeric(std::str::from_utf8(&data).unwrap()).unwrap()),
                }
            }
            l => match numeric(l) {
                Some(n) => Outcome::Number(n),
                None => panic!("unexpected reply {text:?} to {op:?}"),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The same operations, sent as classic commands to one store and
        /// as meta commands to another, have the same outcomes, leave the
        /// same data, and mix on one connection.
        #[test]
        fn classic_and_meta_agree(ops in proptest::collection::vec(op(), 1..40)) {
            let (a, b) = (ctx(), ctx());
            for op in &ops {
                let ca = run(&a, &classic(op), usize::MAX);
                let mb = run(&b, &meta(op), usize::MAX);
                prop_assert_eq!(outcome(op, &ca), outcome(op, &mb), "{:?}", op);
            }
            for k in 0..4u8 {
                let get = format!("gets k{k}\r\nmg k{k} v f c\r\n");
                let (ra, rb) = (run(&a, get.as_bytes(), 7), run(&b, get.as_bytes(), usize::MAX));
                prop_assert_eq!(ra, rb);
            }
        }
    }
}
