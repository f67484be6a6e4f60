//! memcached's binary protocol (the classic opcodes, quiet variants
//! included).
//!
//! Every request is a 24-byte header (magic 0x80) and a body of extras, key
//! and value. Quiet variants send nothing on success (quiet gets nothing on
//! a miss); errors are always sent. Replies are batched and written when the
//! server needs more input, so a run of quiet requests ended by a NOOP gets
//! one write.
//!
//! Bad input: a header whose magic is not 0x80, or whose extras and key do
//! not fit in the body, ends the connection (the stream cannot be trusted
//! any more). A malformed but well-framed request gets `EINVAL` and its body
//! is skipped; an unknown opcode gets `UNKNOWN_COMMAND`; a value over the
//! item size limit gets `E2BIG` and is read and dropped with bounded memory.
//! Keys are binary-safe (any bytes, at most 250).

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use crate::conn::{stats_list, Block, Conn, Ctx, VERSION};
use crate::store::{DeleteStatus, DeltaStatus, Item, Mode, StoreStatus, Value, KEY_MAX};

/// First byte of a request.
pub const REQ_MAGIC: u8 = 0x80;
/// First byte of a response.
pub const RES_MAGIC: u8 = 0x81;
/// Header length.
pub const HEADER: usize = 24;

/// Response status codes.
pub mod status {
    /// Success.
    pub const OK: u16 = 0x00;
    /// Key not found.
    pub const KEY_ENOENT: u16 = 0x01;
    /// Key exists (or CAS mismatch).
    pub const KEY_EEXISTS: u16 = 0x02;
    /// Value too large.
    pub const E2BIG: u16 = 0x03;
    /// Invalid arguments.
    pub const EINVAL: u16 = 0x04;
    /// Item not stored.
    pub const NOT_STORED: u16 = 0x05;
    /// incr/decr on a non-numeric value.
    pub const DELTA_BADVAL: u16 = 0x06;
    /// Authentication required (or failed).
    pub const AUTH_ERROR: u16 = 0x20;
    /// Unknown command.
    pub const UNKNOWN_COMMAND: u16 = 0x81;
    /// Out of memory (also used for log write failures).
    pub const ENOMEM: u16 = 0x82;
}

/// Opcodes.
#[allow(missing_docs)]
pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Opcode.
    pub opcode: u8,
    /// Key length.
    pub keylen: u16,
    /// Extras length.
    pub extlen: u8,
    /// Extras + key + value length.
    pub bodylen: u32,
    /// Echoed back in the response.
    pub opaque: u32,
    /// CAS unique (0 = none).
    pub cas: u64,
}

impl Header {
    /// Parses the 24 header bytes; `None` if the magic is wrong.
    pub fn parse(b: &[u8; HEADER]) -> Option<Header> {
        if b[0] != REQ_MAGIC {
            return None;
        }
        Some(Header {
            opcode: b[1],
            keylen: u16::from_be_bytes([b[2], b[3]]),
            extlen: b[4],
            bodylen: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            opaque: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cas: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        })
    }

    fn vallen(&self) -> u64 {
        self.bodylen as u64 - self.extlen as u64 - self.keylen as u64
    }
}

/// Encodes a response header.
#[allow(clippy::too_many_arguments)]
pub fn response_header(
    opcode: u8,
    keylen: usize,
    extlen: usize,
    status: u16,
    bodylen: usize,
    opaque: u32,
    cas: u64,
) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = RES_MAGIC;
    h[1] = opcode;
    h[2..4].copy_from_slice(&(keylen as u16).to_be_bytes());
    h[4] = extlen as u8;
    h[6..8].copy_from_slice(&status.to_be_bytes());
    h[8..12].copy_from_slice(&(bodylen as u32).to_be_bytes());
    h[12..16].copy_from_slice(&opaque.to_be_bytes());
    h[16..24].copy_from_slice(&cas.to_be_bytes());
    h
}

fn is_quiet(opcode: u8) -> bool {
    matches!(
        opcode,
        op::GETQ
            | op::GETKQ
            | op::SETQ
            | op::ADDQ
            | op::REPLACEQ
            | op::DELETEQ
            | op::INCREMENTQ
            | op::DECREMENTQ
            | op::QUITQ
            | op::FLUSHQ
            | op::APPENDQ
            | op::PREPENDQ
            | op::GATQ
            | op::GATKQ
    )
}

fn status_text(s: u16) -> &'static [u8] {
    match s {
        status::KEY_ENOENT => b"Not found",
        status::KEY_EEXISTS => b"Data exists for key.",
        status::E2BIG => b"Too large.",
        status::EINVAL => b"Invalid arguments",
        status::NOT_STORED => b"Not stored.",
        status::DELTA_BADVAL => b"Non-numeric server-side value for incr or decr",
        status::AUTH_ERROR => b"Auth failure.",
        status::UNKNOWN_COMMAND => b"Unknown command",
        status::ENOMEM => b"Out of memory",
        _ => b"",
    }
}

/// Queues one response.
fn respond<S: Read + Write>(
    c: &mut Conn<'_, S>,
    h: &Header,
    status: u16,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let body = extras.len() + key.len() + value.len();
    c.put(&response_header(
        h.opcode,
        key.len(),
        extras.len(),
        status,
        body,
        h.opaque,
        cas,
    ));
    c.put(extras);
    c.put(key);
    c.put_value(value)
}

/// Queues an error response with memcached's message text.
fn error<S: Read + Write>(c: &mut Conn<'_, S>, h: &Header, status: u16) -> io::Result<()> {
    respond(c, h, status, 0, &[], &[], status_text(status))
}

/// Queues a log-failure response (never an acknowledgement).
fn persist_error<S: Read + Write>(
    c: &mut Conn<'_, S>,
    h: &Header,
    e: &crate::store::PersistError,
) -> io::Result<()> {
    respond(c, h, status::ENOMEM, 0, &[], &[], e.to_string().as_bytes())
}

enum Flow {
    Go,
    Quit,
}

/// Serves binary requests until the client quits, disconnects or sends a
/// bad header.
///
/// # Errors
///
/// I/O errors of the connection.
pub fn serve<S: Read + Write>(c: &mut Conn<'_, S>, ctx: &Ctx) -> io::Result<()> {
    let mut head = [0u8; HEADER];
    let mut small = Vec::with_capacity(512);
    loop {
        while c.data().len() < HEADER {
            if c.data().is_empty() && c.idle_here()? {
                return Ok(());
            }
            if !c.fill(HEADER)? {
                return Ok(());
            }
        }
        head.copy_from_slice(&c.data()[..HEADER]);
        let Some(h) = Header::parse(&head) else {
            // Not a request: the stream is out of sync; close.
            return Ok(());
        };
        c.consume(HEADER);
        if h.extlen as u32 + h.keylen as u32 > h.bodylen {
            error(c, &h, status::EINVAL)?;
            return Ok(());
        }
        match request(c, ctx, &h, &mut small)? {
            Flow::Go => {
                c.request_done();
                c.maybe_flush()?
            }
            Flow::Quit => return Ok(()),
        }
    }
}

/// Largest request body read and dropped before refusing a binary request
/// for want of authentication; a bigger one is not read at all.
const REFUSE_BODY_MAX: u64 = 64 * 1024;

/// Answers the first binary request of a connection that has not
/// authenticated (the server runs with `-Y`, which only the text protocol
/// can satisfy) with `AUTH_ERROR`, then ends the connection. The request's
/// body is read first when it is small, so the reply is not lost to a reset.
///
/// # Errors
///
/// I/O errors of the connection.
pub fn refuse_unauthenticated<S: Read + Write>(c: &mut Conn<'_, S>) -> io::Result<()> {
    while c.data().len() < HEADER {
        if !c.fill(HEADER)? {
            return Ok(());
        }
    }
    let mut head = [0u8; HEADER];
    head.copy_from_slice(&c.data()[..HEADER]);
    let Some(h) = Header::parse(&head) else {
        return Ok(());
    };
    c.consume(HEADER);
    if u64::from(h.bodylen) <= REFUSE_BODY_MAX && !c.discard(u64::from(h.bodylen))? {
        return Ok(());
    }
    error(c, &h, status::AUTH_ERROR)?;
    c.flush()
}

/// Which body shape an opcode needs: (extras length(s), key required/allowed,
/// value allowed).
fn shape_ok(h: &Header) -> bool {
    let (ext, key, val) = (h.extlen, h.keylen, h.vallen());
    match h.opcode {
        op::GET | op::GETQ | op::GETK | op::GETKQ | op::DELETE | op::DELETEQ => {
            ext == 0 && key > 0 && val == 0
        }
        op::SET | op::SETQ | op::ADD | op::ADDQ | op::REPLACE | op::REPLACEQ => ext == 8 && key > 0,
        op::APPEND | op::APPENDQ | op::PREPEND | op::PREPENDQ => ext == 0 && key > 0,
        op::INCREMENT | op::INCREMENTQ | op::DECREMENT | op::DECREMENTQ => {
            ext == 20 && key > 0 && val == 0
        }
        op::QUIT | op::QUITQ | op::NOOP | op::VERSION => ext == 0 && key == 0 && val == 0,
        op::FLUSH | op::FLUSHQ => (ext == 0 || ext == 4) && key == 0 && val == 0,
        op::STAT => ext == 0 && val == 0,
        op::VERBOSITY => ext == 4 && key == 0 && val == 0,
        op::TOUCH | op::GAT | op::GATQ | op::GATK | op::GATKQ => ext == 4 && key > 0 && val == 0,
        _ => true,
    }
}

fn known(opcode: u8) -> bool {
    opcode <= op::TOUCH + 2 || opcode == op::GATK || opcode == op::GATKQ
}

fn skip<S: Read + Write>(c: &mut Conn<'_, S>, n: u64) -> io::Result<Flow> {
    Ok(if c.discard(n)? { Flow::Go } else { Flow::Quit })
}

fn request<S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    h: &Header,
    small: &mut Vec<u8>,
) -> io::Result<Flow> {
    let body = h.bodylen as u64;
    if !known(h.opcode) {
        error(c, h, status::UNKNOWN_COMMAND)?;
        return skip(c, body);
    }
    if !shape_ok(h) || h.keylen as usize > KEY_MAX {
        error(c, h, status::EINVAL)?;
        return skip(c, body);
    }
    let storing = matches!(
        h.opcode,
        op::SET
            | op::SETQ
            | op::ADD
            | op::ADDQ
            | op::REPLACE
            | op::REPLACEQ
            | op::APPEND
            | op::APPENDQ
            | op::PREPEND
            | op::PREPENDQ
    );
    // Extras and key are small (at most 255 + 250 bytes).
    small.resize(h.extlen as usize + h.keylen as usize, 0);
    if !c.read_exact_into(small)? {
        return Ok(Flow::Quit);
    }
    let (extras, key) = small.split_at(h.extlen as usize);
    let vallen = h.vallen();
    if storing && vallen > ctx.item_max as u64 {
        error(c, h, status::E2BIG)?;
        if matches!(h.opcode, op::SET | op::SETQ) {
            // Do not leave a stale value behind a failed set.
            let _ = ctx.store.delete(key, 0);
        }
        return skip(c, vallen);
    }
    let value = match c.read_block(vallen as usize)? {
        Block::Data(v) => v,
        Block::Eof => return Ok(Flow::Quit),
        Block::NoMemory => {
            error(c, h, status::ENOMEM)?;
            return Ok(Flow::Go);
        }
    };
    let quiet = is_quiet(h.opcode);
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    match h.opcode {
        op::GET | op::GETQ | op::GETK | op::GETKQ => {
            let with_key = matches!(h.opcode, op::GETK | op::GETKQ);
            let item = ctx.store.get(key);
            reply_item(c, h, item, with_key, key, quiet, true)?;
        }
        op::TOUCH | op::GAT | op::GATQ | op::GATK | op::GATKQ => {
            let exp = be32(extras) as i64;
            let with_key = matches!(h.opcode, op::GATK | op::GATKQ);
            let r = if h.opcode == op::TOUCH {
                ctx.store.touch(key, exp).map(|found| {
                    found.then(|| Item {
                        value: Value::from(&[][..]),
                        flags: 0,
                        exptime: 0,
                        cas: 0,
                    })
                })
            } else {
                ctx.store.get_and_touch(key, exp)
            };
            match r {
                Ok(item) => {
                    let with_value = h.opcode != op::TOUCH;
                    // touch answers with the flags extras only when found;
                    // keep it minimal: status and CAS.
                    if h.opcode == op::TOUCH {
                        match item {
                            Some(_) => respond(c, h, status::OK, 0, &[], &[], &[])?,
                            None => error(c, h, status::KEY_ENOENT)?,
                        }
                    } else {
                        reply_item(c, h, item, with_key, key, quiet, with_value)?;
                    }
                }
                Err(e) => persist_error(c, h, &e)?,
            }
        }
        op::SET
        | op::SETQ
        | op::ADD
        | op::ADDQ
        | op::REPLACE
        | op::REPLACEQ
        | op::APPEND
        | op::APPENDQ
        | op::PREPEND
        | op::PREPENDQ => {
            let (flags, exp) = if extras.len() == 8 {
                (be32(extras), be32(&extras[4..]) as i64)
            } else {
                (0, 0)
            };
            let mode = match h.opcode {
                op::SET | op::SETQ if h.cas != 0 => Mode::Cas(h.cas),
                op::SET | op::SETQ => Mode::Set,
                op::ADD | op::ADDQ => Mode::Add,
                op::REPLACE | op::REPLACEQ if h.cas != 0 => Mode::Cas(h.cas),
                op::REPLACE | op::REPLACEQ => Mode::Replace,
                op::APPEND | op::APPENDQ => Mode::Append,
                _ => Mode::Prepend,
            };
            match ctx.store.store(mode, key, value, flags, exp) {
                Ok(StoreStatus::Stored(cas)) => {
                    if !quiet {
                        respond(c, h, status::OK, cas, &[], &[], &[])?;
                    }
                }
                Ok(StoreStatus::NotStored) => {
                    let st = match mode {
                        Mode::Add => status::KEY_EEXISTS,
                        Mode::Replace => status::KEY_ENOENT,
                        _ => status::NOT_STORED,
                    };
                    error(c, h, st)?;
                }
                Ok(StoreStatus::Exists) => error(c, h, status::KEY_EEXISTS)?,
                Ok(StoreStatus::NotFound) => error(c, h, status::KEY_ENOENT)?,
                Ok(StoreStatus::TooLarge) => error(c, h, status::E2BIG)?,
                Ok(StoreStatus::NoMemory) => error(c, h, status::ENOMEM)?,
                Err(e) => persist_error(c, h, &e)?,
            }
        }
        op::DELETE | op::DELETEQ => match ctx.store.delete(key, h.cas) {
            Ok(DeleteStatus::Deleted) => {
                if !quiet {
                    respond(c, h, status::OK, 0, &[], &[], &[])?;
                }
            }
            Ok(DeleteStatus::NotFound) => error(c, h, status::KEY_ENOENT)?,
            Ok(DeleteStatus::Exists) => error(c, h, status::KEY_EEXISTS)?,
            Err(e) => persist_error(c, h, &e)?,
        },
        op::INCREMENT | op::INCREMENTQ | op::DECREMENT | op::DECREMENTQ => {
            let incr = matches!(h.opcode, op::INCREMENT | op::INCREMENTQ);
            let by = be64(extras);
            let initial = be64(&extras[8..]);
            let exp = be32(&extras[16..]);
            let init = (exp != u32::MAX).then_some((initial, exp as i64));
            match ctx.store.delta(key, incr, by, init, h.cas) {
                Ok(DeltaStatus::Value(v, cas)) => {
                    if !quiet {
                        respond(c, h, status::OK, cas, &[], &[], &v.to_be_bytes())?;
                    }
                }
                Ok(DeltaStatus::NotFound) => error(c, h, status::KEY_ENOENT)?,
                Ok(DeltaStatus::Exists) => error(c, h, status::KEY_EEXISTS)?,
                Ok(DeltaStatus::NonNumeric) => error(c, h, status::DELTA_BADVAL)?,
                Err(e) => persist_error(c, h, &e)?,
            }
        }
        op::QUIT | op::QUITQ => {
            if !quiet {
                respond(c, h, status::OK, 0, &[], &[], &[])?;
            }
            return Ok(Flow::Quit);
        }
        op::FLUSH | op::FLUSHQ => {
            let delay = if extras.len() == 4 {
                be32(extras) as i64
            } else {
                0
            };
            match ctx.store.flush(delay) {
                Ok(()) => {
                    if !quiet {
                        respond(c, h, status::OK, 0, &[], &[], &[])?;
                    }
                }
                Err(e) => persist_error(c, h, &e)?,
            }
        }
        op::NOOP => respond(c, h, status::OK, 0, &[], &[], &[])?,
        op::VERSION => respond(c, h, status::OK, 0, &[], &[], VERSION.as_bytes())?,
        op::VERBOSITY => {
            ctx.verbosity.store(be32(extras), Ordering::Relaxed);
            respond(c, h, status::OK, 0, &[], &[], &[])?;
        }
        op::STAT => {
            let list = match key {
                b"" => Some(stats_list(ctx)),
                b"reset" => {
                    crate::conn::reset_stats(ctx);
                    Some(Vec::new())
                }
                _ => None,
            };
            match list {
                Some(list) => {
                    for (k, v) in list {
                        respond(c, h, status::OK, 0, &[], k.as_bytes(), v.as_bytes())?;
                    }
                    respond(c, h, status::OK, 0, &[], &[], &[])?;
                }
                None => error(c, h, status::KEY_ENOENT)?,
            }
        }
        _ => error(c, h, status::UNKNOWN_COMMAND)?,
    }
    Ok(Flow::Go)
}

/// Answers a get-type request: flags extras, optional key, value.
fn reply_item<S: Read + Write>(
    c: &mut Conn<'_, S>,
    h: &Header,
    item: Option<Item>,
    with_key: bool,
    key: &[u8],
    quiet: bool,
    with_value: bool,
) -> io::Result<()> {
    match item {
        Some(it) => {
            let k: &[u8] = if with_key { key } else { &[] };
            let v: &[u8] = if with_value { &it.value } else { &[] };
            respond(c, h, status::OK, it.cas, &it.flags.to_be_bytes(), k, v)
        }
        None if quiet => Ok(()),
        None if with_key => respond(
            c,
            h,
            status::KEY_ENOENT,
            0,
            &[],
            key,
            status_text(status::KEY_ENOENT),
        ),
        None => error(c, h, status::KEY_ENOENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::mock::{ctx, ctx_with, run};

    /// Builds a request.
    fn req(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32, cas: u64) -> Vec<u8> {
        let mut v = vec![0u8; HEADER];
        v[0] = REQ_MAGIC;
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

    fn set_extras(flags: u32, exp: u32) -> Vec<u8> {
        let mut e = flags.to_be_bytes().to_vec();
        e.extend_from_slice(&exp.to_be_bytes());
        e
    }

    fn delta_extras(by: u64, init: u64, exp: u32) -> Vec<u8> {
        let mut e = by.to_be_bytes().to_vec();
        e.extend_from_slice(&init.to_be_bytes());
        e.extend_from_slice(&exp.to_be_bytes());
        e
    }

    /// A parsed response.
    #[derive(Debug)]
    struct Res {
        opcode: u8,
        status: u16,
        opaque: u32,
        cas: u64,
        extras: Vec<u8>,
        key: Vec<u8>,
        value: Vec<u8>,
    }

    fn parse_all(mut b: &[u8]) -> Vec<Res> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert!(b.len() >= HEADER, "truncated response");
            assert_eq!(b[0], RES_MAGIC);
            let keylen = u16::from_be_bytes([b[2], b[3]]) as usize;
            let extlen = b[4] as usize;
            let body = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
            let r = Res {
                opcode: b[1],
                status: u16::from_be_bytes([b[6], b[7]]),
                opaque: u32::from_be_bytes(b[12..16].try_into().unwrap()),
                cas: u64::from_be_bytes(b[16..24].try_into().unwrap()),
                extras: b[HEADER..HEADER + extlen].to_vec(),
                key: b[HEADER + extlen..HEADER + extlen + keylen].to_vec(),
                value: b[HEADER + extlen + keylen..HEADER + body].to_vec(),
            };
            out.push(r);
            b = &b[HEADER + body..];
        }
        out
    }

    fn exchange(ctx: &Ctx, reqs: &[Vec<u8>]) -> Vec<Res> {
        let input: Vec<u8> = reqs.concat();
        let whole = run(ctx, &input, usize::MAX);
        parse_all(&whole)
    }

    #[test]
    fn set_get_variants() {
        let ctx = ctx();
        let r = exchange(
            &ctx,
            &[
                req(op::SET, b"k", &set_extras(0xdeadbeef, 0), b"hello", 1, 0),
                req(op::GET, b"k", &[], &[], 2, 0),
                req(op::GETK, b"k", &[], &[], 3, 0),
                req(op::GETQ, b"k", &[], &[], 4, 0),
                req(op::GETKQ, b"k", &[], &[], 5, 0),
                req(op::GETQ, b"missing", &[], &[], 6, 0),
                req(op::GETKQ, b"missing", &[], &[], 7, 0),
                req(op::GET, b"missing", &[], &[], 8, 0),
                req(op::GETK, b"missing", &[], &[], 9, 0),
                req(op::NOOP, b"", &[], &[], 10, 0),
            ],
        );
        let ops: Vec<(u8, u16, u32)> = r.iter().map(|r| (r.opcode, r.status, r.opaque)).collect();
        assert_eq!(
            ops,
            vec![
                (op::SET, 0, 1),
                (op::GET, 0, 2),
                (op::GETK, 0, 3),
                (op::GETQ, 0, 4),
                (op::GETKQ, 0, 5),
                (op::GET, status::KEY_ENOENT, 8),
                (op::GETK, status::KEY_ENOENT, 9),
                (op::NOOP, 0, 10),
            ]
        );
        assert!(r[0].cas != 0);
        assert_eq!(r[1].cas, r[0].cas);
        assert_eq!(r[1].extras, 0xdeadbeefu32.to_be_bytes());
        assert_eq!(r[1].value, b"hello");
        assert!(r[1].key.is_empty());
        assert_eq!(r[2].key, b"k");
        assert_eq!(r[4].key, b"k");
        assert_eq!(r[5].value, b"Not found");
        assert_eq!(r[6].key, b"missing");
    }

    #[test]
    fn add_replace_cas_append_prepend() {
        let ctx = ctx();
        let r = exchange(
            &ctx,
            &[
                req(op::REPLACE, b"k", &set_extras(0, 0), b"x", 0, 0),
                req(op::ADD, b"k", &set_extras(0, 0), b"a", 0, 0),
                req(op::ADD, b"k", &set_extras(0, 0), b"b", 0, 0),
                req(op::APPEND, b"k", &[], b"c", 0, 0),
                req(op::PREPEND, b"k", &[], b"z", 0, 0),
                req(op::APPEND, b"nope", &[], b"c", 0, 0),
                req(op::SET, b"k", &set_extras(0, 0), b"n", 0, 12345),
                req(op::SET, b"nope", &set_extras(0, 0), b"n", 0, 12345),
                req(op::GET, b"k", &[], &[], 0, 0),
                req(op::ADDQ, b"q", &set_extras(0, 0), b"1", 0, 0),
                req(op::ADDQ, b"q", &set_extras(0, 0), b"1", 0, 0),
                req(op::REPLACEQ, b"q", &set_extras(0, 0), b"2", 0, 0),
                req(op::APPENDQ, b"q", &[], b"3", 0, 0),
                req(op::PREPENDQ, b"q", &[], b"1", 0, 0),
                req(op::SETQ, b"q2", &set_extras(0, 0), b"x", 0, 0),
                req(op::GET, b"q", &[], &[], 0, 0),
            ],
        );
        let st: Vec<u16> = r.iter().map(|r| r.status).collect();
        assert_eq!(
            st,
            vec![
                status::KEY_ENOENT,
                0,
                status::KEY_EEXISTS,
                0,
                0,
                status::NOT_STORED,
                status::KEY_EEXISTS,
                status::KEY_ENOENT,
                0,
                status::KEY_EEXISTS,
                0
            ]
        );
        assert_eq!(r[8].value, b"zac");
        assert_eq!(r[10].value, b"123");
        // A correct CAS stores.
        let cas = ctx.store.get(b"k").unwrap().cas;
        let r = exchange(
            &ctx,
            &[req(op::SET, b"k", &set_extras(0, 0), b"new", 0, cas)],
        );
        assert_eq!(r[0].status, 0);
        assert!(r[0].cas > cas);
    }

    #[test]
    fn delete_incr_decr() {
        let ctx = ctx();
        let r = exchange(
            &ctx,
            &[
                req(
                    op::INCREMENT,
                    b"n",
                    &delta_extras(1, 5, u32::MAX),
                    &[],
                    0,
                    0,
                ),
                req(op::INCREMENT, b"n", &delta_extras(1, 5, 0), &[], 0, 0),
                req(op::INCREMENT, b"n", &delta_extras(10, 5, 0), &[], 0, 0),
                req(op::DECREMENT, b"n", &delta_extras(100, 5, 0), &[], 0, 0),
                req(
                    op::INCREMENTQ,
                    b"n",
                    &delta_extras(u64::MAX, 0, 0),
                    &[],
                    0,
                    0,
                ),
                req(op::INCREMENT, b"n", &delta_extras(2, 0, 0), &[], 0, 0),
                req(op::SET, b"t", &set_extras(0, 0), b"abc", 0, 0),
                req(op::DECREMENT, b"t", &delta_extras(1, 0, 0), &[], 0, 0),
                req(op::DELETE, b"t", &[], &[], 0, 0),
                req(op::DELETE, b"t", &[], &[], 0, 0),
                req(op::DELETEQ, b"n", &[], &[], 0, 0),
                req(op::DELETEQ, b"n", &[], &[], 0, 0),
            ],
        );
        let got: Vec<(u8, u16, Vec<u8>)> = r
            .iter()
            .map(|r| (r.opcode, r.status, r.value.clone()))
            .collect();
        assert_eq!(
            got[0],
            (op::INCREMENT, status::KEY_ENOENT, b"Not found".to_vec())
        );
        assert_eq!(got[1], (op::INCREMENT, 0, 5u64.to_be_bytes().to_vec()));
        assert_eq!(got[2], (op::INCREMENT, 0, 15u64.to_be_bytes().to_vec()));
        assert_eq!(got[3], (op::DECREMENT, 0, 0u64.to_be_bytes().to_vec()));
        // INCREMENTQ by 2^64-1 from 0 is quiet; then +2 wraps to 1.
        assert_eq!(got[4], (op::INCREMENT, 0, 1u64.to_be_bytes().to_vec()));
        assert_eq!(got[5].0, op::SET);
        assert_eq!(got[6].1, status::DELTA_BADVAL);
        assert_eq!(got[7].1, 0);
        assert_eq!(got[8].1, status::KEY_ENOENT);
        assert_eq!((got[9].0, got[9].1), (op::DELETEQ, status::KEY_ENOENT));
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn touch_gat_flush_version_verbosity_stat() {
        let ctx = ctx();
        let exp = |s: u32| s.to_be_bytes().to_vec();
        let r = exchange(
            &ctx,
            &[
                req(op::SET, b"k", &set_extras(7, 0), b"v", 0, 0),
                req(op::TOUCH, b"k", &exp(10), &[], 0, 0),
                req(op::TOUCH, b"x", &exp(10), &[], 0, 0),
                req(op::GAT, b"k", &exp(100), &[], 0, 0),
                req(op::GATK, b"k", &exp(100), &[], 0, 0),
                req(op::GATQ, b"x", &exp(100), &[], 0, 0),
                req(op::GATKQ, b"k", &exp(100), &[], 0, 0),
                req(op::VERSION, b"", &[], &[], 0, 0),
                req(op::VERBOSITY, b"", &exp(1), &[], 0, 0),
                req(op::FLUSHQ, b"", &[], &[], 0, 0),
                req(op::GET, b"k", &[], &[], 0, 0),
                req(op::FLUSH, b"", &exp(5), &[], 0, 0),
                req(op::STAT, b"", &[], &[], 77, 0),
            ],
        );
        assert_eq!(r[0].status, 0);
        assert_eq!((r[1].opcode, r[1].status), (op::TOUCH, 0));
        assert_eq!(r[2].status, status::KEY_ENOENT);
        assert_eq!(
            (r[3].opcode, &r[3].value[..], &r[3].extras[..]),
            (op::GAT, &b"v"[..], &7u32.to_be_bytes()[..])
        );
        assert_eq!((r[4].opcode, &r[4].key[..]), (op::GATK, &b"k"[..]));
        assert_eq!((r[5].opcode, &r[5].key[..]), (op::GATKQ, &b"k"[..]));
        assert_eq!(
            (r[6].opcode, &r[6].value[..]),
            (op::VERSION, VERSION.as_bytes())
        );
        assert_eq!((r[7].opcode, r[7].status), (op::VERBOSITY, 0));
        assert_eq!((r[8].opcode, r[8].status), (op::GET, status::KEY_ENOENT));
        assert_eq!((r[9].opcode, r[9].status), (op::FLUSH, 0));
        let stats: Vec<&Res> = r[10..].iter().collect();
        assert!(stats.iter().all(|s| s.opcode == op::STAT && s.opaque == 77));
        assert!(stats.last().unwrap().key.is_empty());
        assert!(stats.iter().any(|s| s.key == b"curr_items"));
        assert!(stats.iter().any(|s| s.key == b"pid"));
        assert_eq!(ctx.store.get(b"k"), None);
    }

    #[test]
    fn quit_variants() {
        let ctx = ctx();
        let mut input = req(op::QUIT, b"", &[], &[], 9, 0);
        input.extend_from_slice(&req(op::NOOP, b"", &[], &[], 0, 0));
        let r = parse_all(&run(&ctx, &input, usize::MAX));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].opcode, r[0].opaque), (op::QUIT, 9));
        let mut input = req(op::QUITQ, b"", &[], &[], 9, 0);
        input.extend_from_slice(&req(op::NOOP, b"", &[], &[], 0, 0));
        assert!(run(&ctx, &input, usize::MAX).is_empty());
    }

    #[test]
    fn bad_input() {
        let ctx = ctx_with(64 << 20, 10);
        let mut bad_magic = req(op::NOOP, b"", &[], &[], 0, 0);
        bad_magic[0] = 0x81;
        let mut input = req(op::NOOP, b"", &[], &[], 1, 0);
        input.extend_from_slice(&bad_magic);
        input.extend_from_slice(&req(op::NOOP, b"", &[], &[], 2, 0));
        let r = parse_all(&run(&ctx, &input, usize::MAX));
        assert_eq!(r.len(), 1, "a bad magic byte closes the connection");

        let long_key = vec![b'k'; 251];
        let r = exchange(
            &ctx,
            &[
                req(0x55, b"k", &[], b"junk", 1, 0),
                req(op::GET, b"", &[], &[], 2, 0),
                req(op::GET, b"k", &[1, 2], &[], 3, 0),
                req(op::SET, b"k", &[], b"v", 4, 0),
                req(op::GET, &long_key, &[], &[], 5, 0),
                req(op::SET, b"k", &set_extras(0, 0), b"12345678901", 6, 0),
                req(op::INCREMENT, b"k", &[0; 8], &[], 7, 0),
                req(op::NOOP, b"", &[], &[], 8, 0),
            ],
        );
        let got: Vec<(u32, u16)> = r.iter().map(|r| (r.opaque, r.status)).collect();
        assert_eq!(
            got,
            vec![
                (1, status::UNKNOWN_COMMAND),
                (2, status::EINVAL),
                (3, status::EINVAL),
                (4, status::EINVAL),
                (5, status::EINVAL),
                (6, status::E2BIG),
                (7, status::EINVAL),
                (8, 0),
            ]
        );
        // Extras + key longer than the body: framing is broken, close.
        let mut broken = req(op::GET, b"kk", &[], &[], 1, 0);
        broken[8..12].copy_from_slice(&1u32.to_be_bytes());
        broken.extend_from_slice(&req(op::NOOP, b"", &[], &[], 2, 0));
        let r = parse_all(&run(&ctx, &broken, usize::MAX));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, status::EINVAL);
    }

    #[test]
    fn huge_body_is_skipped_with_bounded_memory() {
        let ctx = ctx_with(64 << 20, 1024);
        let mut h = req(op::SET, b"k", &set_extras(0, 0), &[], 1, 0);
        let vallen = 5u32 << 20;
        h[8..12].copy_from_slice(&(8 + 1 + vallen).to_be_bytes());
        let mut input = h;
        input.extend_from_slice(&vec![0u8; vallen as usize]);
        input.extend_from_slice(&req(op::NOOP, b"", &[], &[], 2, 0));
        let r = parse_all(&run(&ctx, &input, 65536));
        assert_eq!(
            r.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![status::E2BIG, 0]
        );
    }

    #[test]
    fn split_reads_give_same_responses() {
        let reqs = [
            req(op::SET, b"abc", &set_extras(1, 0), b"value", 1, 0),
            req(op::GETK, b"abc", &[], &[], 2, 0),
            req(op::NOOP, b"", &[], &[], 3, 0),
        ]
        .concat();
        let a = run(&ctx(), &reqs, usize::MAX);
        let b = run(&ctx(), &reqs, 1);
        // CAS uniques are per store and equal here (fresh stores).
        assert_eq!(a, b);
        assert_eq!(parse_all(&a).len(), 3);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0xfeed_beef_u64;
        for _ in 0..300 {
            let mut input = vec![REQ_MAGIC];
            for _ in 0..300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly small bytes so lengths stay plausible.
                let b = (seed % 256) as u8;
                input.push(if seed % 3 == 0 { b } else { b % 8 });
                if seed % 50 == 0 {
                    input.push(REQ_MAGIC);
                }
            }
            let _ = run(&ctx(), &input, (seed % 32 + 1) as usize);
        }
    }
}
