//! Client requests: buffered input, parsing, and the batch they are
//! gathered into.

use std::io::{self, Read};

use crate::mux::{KIND_GET, KIND_LINE};
use crate::{Proxy, BAD_FORMAT, BATCH_BYTES, BATCH_OPS, KEY_MAX, MAX_GET_LINE, MAX_LINE};

/// A bounded input buffer over a stream.
#[derive(Debug)]
pub(crate) struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    pub(crate) fn new(cap: usize) -> Input {
        Input {
            buf: vec![0; cap],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more, making room for at least `want` buffered bytes (the
    /// buffer grows up to that). Returns false at end of stream.
    pub(crate) fn fill(&mut self, r: &mut impl Read, want: usize) -> io::Result<bool> {
        if self.start > 0 && (self.end == self.buf.len() || self.start + want > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || want > self.buf.len() {
            let new = want.max(self.buf.len() * 2).max(self.end + 1);
            self.buf.resize(new, 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }
}

pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub(crate) fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

pub(crate) fn parse_num<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

fn valid_key(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= KEY_MAX && k.iter().all(|&b| b > b' ' && b != 0x7f)
}

pub(crate) fn is_error_line(l: &[u8]) -> bool {
    l.starts_with(b"ERROR") || l.starts_with(b"CLIENT_ERROR") || l.starts_with(b"SERVER_ERROR")
}

// ---------------------------------------------------------------------------
// A batch of parsed requests

/// What one client request needs.
#[derive(Debug)]
pub(crate) enum Op {
    /// A reply known without asking a backend.
    Local(&'static [u8]),
    /// `version`.
    Version,
    /// A `get`/`gets`: keys `keys` of the batch's key list.
    Get { keys: std::ops::Range<usize> },
    /// A one-line reply from backend `b`.
    Single { b: usize, noreply: bool },
    /// `flush_all`: every backend must say `OK`.
    Broadcast { noreply: bool },
}

/// Parsed requests and the bytes queued for each backend.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<Op>,
    /// (key range in `arena`, backend) of every `get` key, in client order.
    pub(crate) keys: Vec<(std::ops::Range<usize>, usize)>,
    pub(crate) arena: Vec<u8>,
    /// Request bytes per backend.
    pub(crate) reqs: Vec<Vec<u8>>,
    /// Per backend: the reply kind of each request in `reqs`, in order.
    pub(crate) kinds: Vec<Vec<u8>>,
    bytes: usize,
    /// The client asked to quit after this batch.
    pub(crate) quit: bool,
}

impl Batch {
    pub(crate) fn new(n: usize) -> Batch {
        Batch {
            ops: Vec::new(),
            keys: Vec::new(),
            arena: Vec::new(),
            reqs: vec![Vec::new(); n],
            kinds: vec![Vec::new(); n],
            bytes: 0,
            quit: false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.ops.clear();
        self.keys.clear();
        self.arena.clear();
        for r in &mut self.reqs {
            r.clear();
        }
        for k in &mut self.kinds {
            k.clear();
        }
        self.bytes = 0;
        self.quit = false;
    }

    pub(crate) fn full(&self) -> bool {
        self.quit || self.ops.len() >= BATCH_OPS || self.bytes >= BATCH_BYTES
    }

    fn queue(&mut self, b: usize, parts: &[&[u8]]) {
        let r = &mut self.reqs[b];
        for p in parts {
            r.extend_from_slice(p);
            self.bytes += p.len();
        }
    }
}

/// What parsing the buffered input produced.
pub(crate) enum Parsed {
    /// One request was added to the batch (or answered locally).
    Added,
    /// More input is needed to finish the next request, this many bytes
    /// in all.
    NeedMore(usize),
    /// A value too large: skip this many bytes of input, then go on.
    Skip(usize),
}

/// Parses the next request from `input` into `batch`, and consumes it.
pub(crate) fn parse_one(
    p: &Proxy,
    input: &mut Input,
    batch: &mut Batch,
    discarding: &mut bool,
) -> Parsed {
    let mut used = 0;
    let r = parse_from(p, input.data(), batch, discarding, &mut used);
    input.consume(used);
    r
}

/// Parses the next request from `data` into `batch`; sets `used` to the
/// bytes it took.
fn parse_from(
    p: &Proxy,
    data: &[u8],
    batch: &mut Batch,
    discarding: &mut bool,
    used: &mut usize,
) -> Parsed {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        let limit = if data.starts_with(b"get") {
            MAX_GET_LINE
        } else {
            MAX_LINE
        };
        if *discarding || data.len() > limit {
            // A line over the limit: answer once, then drop it piecewise.
            if !*discarding {
                batch.ops.push(Op::Local(b"CLIENT_ERROR line too long\r\n"));
                *discarding = true;
            }
            let n = data.len();
            *used = n;
            return Parsed::Added;
        }
        return Parsed::NeedMore(data.len() + 1);
    };
    if *discarding {
        *used = nl + 1;
        *discarding = false;
        return Parsed::Added;
    }
    let line = trim_cr(&data[..nl]);
    let mut toks = tokens(line);
    let cmd = toks.next().unwrap_or(b"");
    let limit = if cmd == b"get" || cmd == b"gets" {
        MAX_GET_LINE
    } else {
        MAX_LINE
    };
    if nl > limit {
        batch.ops.push(Op::Local(b"CLIENT_ERROR line too long\r\n"));
        *used = nl + 1;
        return Parsed::Added;
    }
    let consumed = nl + 1;
    match cmd {
        b"get" | b"gets" => {
            let first = batch.keys.len();
            let mut bad = false;
            for k in toks {
                if !valid_key(k) {
                    bad = true;
                    break;
                }
                let b = p.ring.pick(k);
                let start = batch.arena.len();
                batch.arena.extend_from_slice(k);
                batch.keys.push((start..batch.arena.len(), b));
            }
            if bad || batch.keys.len() == first {
                batch.keys.truncate(first);
                batch
                    .ops
                    .push(Op::Local(if bad { BAD_FORMAT } else { b"ERROR\r\n" }));
            } else {
                // One request per backend, keys in client order.
                let keys = first..batch.keys.len();
                let mut left = vec![0usize; batch.reqs.len()];
                for &(_, b) in &batch.keys[keys.clone()] {
                    left[b] += 1;
                }
                let mut started = vec![false; batch.reqs.len()];
                for i in keys.clone() {
                    let (r, b) = batch.keys[i].clone();
                    let req = &mut batch.reqs[b];
                    if !started[b] {
                        started[b] = true;
                        batch.kinds[b].push(KIND_GET);
                        req.extend_from_slice(cmd);
                        batch.bytes += cmd.len();
                    }
                    req.push(b' ');
                    req.extend_from_slice(&batch.arena[r.clone()]);
                    batch.bytes += 1 + r.len();
                    left[b] -= 1;
                    if left[b] == 0 {
                        req.extend_from_slice(b"\r\n");
                        batch.bytes += 2;
                    }
                }
                batch.ops.push(Op::Get { keys });
            }
            *used = consumed;
            Parsed::Added
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let args: Vec<&[u8]> = toks.collect();
            let want = if cmd == b"cas" { 5 } else { 4 };
            let bytes = args.get(3).and_then(|t| parse_num::<usize>(t));
            let (Some(bytes), true) = (bytes, args.len() == want || args.len() == want + 1) else {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Added;
            };
            let noreply = args.len() == want + 1;
            if noreply && args[want] != b"noreply" {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Added;
            }
            if bytes > p.item_max {
                batch
                    .ops
                    .push(Op::Local(b"SERVER_ERROR object too large for cache\r\n"));
                *used = consumed;
                return Parsed::Skip(bytes.saturating_add(2));
            }
            if !valid_key(args[0]) {
                batch.ops.push(Op::Local(BAD_FORMAT));
                *used = consumed;
                return Parsed::Skip(bytes + 2);
            }
            let total = consumed + bytes + 2;
            if data.len() < total {
                return Parsed::NeedMore(total);
            }
            let block = &data[consumed..total];
            if &block[bytes..] != b"\r\n" {
                batch
                    .ops
                    .push(Op::Local(b"CLIENT_ERROR bad data chunk\r\n"));
                *used = total;
                return Parsed::Added;
            }
            let b = p.ring.pick(args[0]);
            batch.queue(b, &[cmd]);
            for a in &args[..want] {
                batch.queue(b, &[b" ", a]);
            }
            batch.queue(b, &[b"\r\n", block]);
            batch.kinds[b].push(KIND_LINE);
            batch.ops.push(Op::Single { b, noreply });
            *used = total;
            Parsed::Added
        }
        b"delete" | b"incr" | b"decr" | b"touch" => {
            let args: Vec<&[u8]> = toks.collect();
            let noreply = args.last() == Some(&&b"noreply"[..]);
            let n = args.len() - usize::from(noreply);
            let arity_ok = match cmd {
                // `delete KEY 0` is an old form memcached still accepts.
                b"delete" => n == 1 || n == 2,
                _ => n == 2,
            };
            if !arity_ok || !valid_key(args[0]) {
                batch
                    .ops
                    .push(Op::Local(if n == 0 { b"ERROR\r\n" } else { BAD_FORMAT }));
                *used = consumed;
                return Parsed::Added;
            }
            let b = p.ring.pick(args[0]);
            batch.queue(b, &[cmd]);
            for a in &args[..n] {
                batch.queue(b, &[b" ", a]);
            }
            batch.queue(b, &[b"\r\n"]);
            batch.kinds[b].push(KIND_LINE);
            batch.ops.push(Op::Single { b, noreply });
            *used = consumed;
            Parsed::Added
        }
        b"flush_all" => {
            let args: Vec<&[u8]> = toks.collect();
            let noreply = args.last() == Some(&&b"noreply"[..]);
            let n = args.len() - usize::from(noreply);
            if n > 1 || (n == 1 && parse_num::<i64>(args[0]).is_none()) {
                batch.ops.push(Op::Local(BAD_FORMAT));
            } else {
                for b in 0..batch.reqs.len() {
                    batch.queue(b, &[b"flush_all"]);
                    if n == 1 {
                        batch.queue(b, &[b" ", args[0]]);
                    }
                    batch.queue(b, &[b"\r\n"]);
                    batch.kinds[b].push(KIND_LINE);
                }
                batch.ops.push(Op::Broadcast { noreply });
            }
            *used = consumed;
            Parsed::Added
        }
        b"version" => {
            batch.ops.push(Op::Version);
            *used = consumed;
            Parsed::Added
        }
        b"quit" => {
            batch.quit = true;
            *used = consumed;
            Parsed::Added
        }
        _ => {
            batch.ops.push(Op::Local(b"ERROR\r\n"));
            *used = consumed;
            Parsed::Added
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_grows_only_on_demand() {
        let mut input = Input::new(4);
        let mut src: &[u8] = b"abcdefgh";
        assert!(input.fill(&mut src, 1).unwrap());
        assert_eq!(input.data(), b"abcd");
        input.consume(2);
        assert!(input.fill(&mut src, 6).unwrap());
        assert_eq!(input.data(), b"cdefgh");
        assert!(!input.fill(&mut src, 7).unwrap());
    }
}
