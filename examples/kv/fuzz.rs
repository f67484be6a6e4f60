//! A stable-Rust fuzz harness for the text and binary protocol parsers,
//! plus property tests.
//!
//! The harness is a deterministic mutation loop: it starts from a seed
//! corpus (hand-written requests and the committed files under
//! `examples/kv/corpus/{text,binary}/`), mutates inputs with a seeded
//! xorshift generator, and runs each one as a whole session against a fresh
//! in-memory store, delivered in reads of a random size. Every run checks:
//!
//! - the parser never panics, and the session ends without an I/O error
//!   (the scripted stream never fails, so any error is the parser's);
//! - the connection's input buffer never grows past its bound (64 KiB for
//!   text, the initial 16 KiB for binary) and no single read asks for more
//!   than that bound or the item size limit (plus the data terminator).
//!
//! An input whose replies show a combination not seen before (a new set of
//! reply kinds or binary statuses) joins the working corpus, so later
//! mutations build on it: feedback from behaviour, in the absence of
//! coverage instrumentation on stable Rust.
//!
//! Knobs (environment variables):
//! - `KV_FUZZ_ITERS`: inputs per target (default 3000, a few seconds in a
//!   debug build);
//! - `KV_FUZZ_SEED`: the generator's seed (default fixed, so CI is
//!   repeatable);
//! - `KV_FUZZ_SAVE=DIR`: write every input that produced a reply kind not
//!   seen before to `DIR/{text,binary}/` (how the committed corpus was
//!   made).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::binary::{self, op, Header, HEADER, REQ_MAGIC, RES_MAGIC};
use crate::conn::mock::ctx_with;
use crate::conn::Conn;
use crate::text::{self, MAX_GET_LINE};

/// Item size limit of the fuzzed server: small, so the too-large paths are
/// easy to reach.
const ITEM_MAX: usize = 4096;
/// Memory limit of the fuzzed store: small, so eviction runs too.
const MEM_LIMIT: usize = 256 * 1024;
/// The input buffer's initial size (and the binary protocol's bound).
const INPUT_INITIAL: usize = 16 * 1024;
/// Largest input the mutator produces.
const MAX_INPUT: usize = 256 * 1024;

/// Which parser a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// memcached's text protocol.
    Text,
    /// memcached's binary protocol.
    Binary,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Text => "text",
            Target::Binary => "binary",
        }
    }

    /// Bound on the connection's input buffer.
    fn buffer_bound(self) -> usize {
        match self {
            Target::Text => MAX_GET_LINE,
            Target::Binary => INPUT_INITIAL,
        }
    }
}

/// A scripted stream that records the largest read it was asked for.
#[derive(Debug)]
struct Script<'a> {
    input: &'a [u8],
    pos: usize,
    chunk: usize,
    largest_read: usize,
    output: Vec<u8>,
}

impl Read for Script<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.largest_read = self.largest_read.max(buf.len());
        let n = buf.len().min(self.chunk).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Script<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Everything the server wrote.
    pub output: Vec<u8>,
    /// Input bytes the server read before it stopped.
    pub consumed: usize,
    /// The largest size the input buffer reached.
    pub high_water: usize,
}

/// Runs `input` as one session of `target` (delivered in reads of at most
/// `chunk` bytes) and checks the harness's invariants. Returns a
/// description of the first violation instead of panicking, so the caller
/// can report the input.
pub fn run_checked(target: Target, input: &[u8], chunk: usize) -> Result<Outcome, String> {
    let ctx = ctx_with(MEM_LIMIT, ITEM_MAX);
    let mut s = Script {
        input,
        pos: 0,
        chunk: chunk.max(1),
        largest_read: 0,
        output: Vec::new(),
    };
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut c = Conn::new(&mut s, &ctx);
        let r = (|| {
            if !c.fill(INPUT_INITIAL)? {
                return Ok(());
            }
            match target {
                Target::Text => text::serve(&mut c, &ctx)?,
                Target::Binary => binary::serve(&mut c, &ctx)?,
            }
            c.flush()
        })();
        (r, c.input_high_water())
    }));
    let (r, high_water) = match ran {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Err(format!("parser panicked: {msg}"));
        }
    };
    if let Err(e) = r {
        return Err(format!("session failed on a stream that never fails: {e}"));
    }
    let bound = target.buffer_bound();
    if high_water > bound {
        return Err(format!(
            "input buffer grew to {high_water} bytes, bound {bound}"
        ));
    }
    let read_bound = bound.max(ITEM_MAX + 2);
    if s.largest_read > read_bound {
        return Err(format!(
            "a read asked for {} bytes, bound {read_bound}",
            s.largest_read
        ));
    }
    Ok(Outcome {
        consumed: s.pos,
        high_water,
        output: s.output,
    })
}

/// A summary of the kinds of replies a run produced, for novelty.
fn signature(target: Target, out: &Outcome, input_len: usize) -> Vec<Vec<u8>> {
    let mut kinds: Vec<Vec<u8>> = Vec::new();
    match target {
        Target::Text => {
            for line in out.output.split(|&b| b == b'\n') {
                // The reply word, plus the message for errors.
                let words: Vec<&[u8]> = line.split(|&b| b == b' ').take(3).collect();
                let k = match words[0] {
                    b"CLIENT_ERROR" | b"SERVER_ERROR" => words.join(&b' '),
                    w if w
                        .iter()
                        .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'\r') =>
                    {
                        w.to_vec()
                    }
                    w if w.iter().all(|b| b.is_ascii_digit() || *b == b'\r') => b"<num>".to_vec(),
                    _ => continue,
                };
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        Target::Binary => {
            let mut b = &out.output[..];
            while b.len() >= HEADER && b[0] == RES_MAGIC {
                let body = u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
                // Unknown opcodes all answer the same way: one kind.
                let opcode = if b[1] <= op::GATKQ { b[1] } else { 0xff };
                let k = vec![opcode, b[6], b[7]];
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
                b = &b[(HEADER + body).min(b.len())..];
            }
        }
    }
    kinds.sort();
    // Whether the server stopped before the end of the input.
    kinds.push(vec![u8::from(out.consumed < input_len)]);
    kinds
}

/// xorshift64*: small, deterministic, good enough to drive mutations.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const TEXT_TOKENS: &[&[u8]] = &[
    b"set ",
    b"add ",
    b"replace ",
    b"append ",
    b"prepend ",
    b"cas ",
    b"get ",
    b"gets ",
    b"gat ",
    b"gats ",
    b"incr ",
    b"decr ",
    b"delete ",
    b"touch ",
    b"flush_all",
    b"verbosity ",
    b"cache_memlimit ",
    b"version",
    b"quit",
    b" noreply",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"0",
    b"1",
    b"-1",
    b"4096",
    b"4097",
    b"4294967295",
    b"4294967296",
    b"2147483647",
    b"18446744073709551615",
    b"18446744073709551616",
    b"+5",
    b"k",
    b"\x00",
    b"\x7f",
    b"\xff",
];

const NUMBERS: &[u32] = &[
    0,
    1,
    2,
    4,
    8,
    20,
    24,
    250,
    251,
    255,
    256,
    4096,
    4097,
    0x7fff_ffff,
    0xffff_ffff,
    16 * 1024,
    64 * 1024,
];

/// A binary request with the given parts.
fn bin_req(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let h = Header {
        opcode,
        keylen: key.len() as u16,
        extlen: extras.len() as u8,
        bodylen: (extras.len() + key.len() + value.len()) as u32,
        opaque: 0x0102_0304,
        cas,
    };
    let mut v = encode_header(&h).to_vec();
    v.extend_from_slice(extras);
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

/// Encodes a request header (the inverse of [`Header::parse`]).
pub fn encode_header(h: &Header) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[0] = REQ_MAGIC;
    b[1] = h.opcode;
    b[2..4].copy_from_slice(&h.keylen.to_be_bytes());
    b[4] = h.extlen;
    b[8..12].copy_from_slice(&h.bodylen.to_be_bytes());
    b[12..16].copy_from_slice(&h.opaque.to_be_bytes());
    b[16..24].copy_from_slice(&h.cas.to_be_bytes());
    b
}

/// The built-in seeds: one well-formed example of each request.
fn builtin_seeds(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::Text => [
            &b"set a 1 0 3\r\nabc\r\nget a b\r\n"[..],
            b"add b 0 0 1 noreply\r\nx\r\nappend b 0 0 2\r\nyz\r\nprepend b 0 0 1\r\nw\r\ngets b\r\n",
            b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\ncas n 0 0 1 1\r\nz\r\n",
            b"touch a 10\r\ngat 100 a\r\ngats 0 a b\r\ndelete a\r\ndelete a 0 noreply\r\n",
            b"flush_all\r\nflush_all 10 noreply\r\nversion\r\nverbosity 1\r\nstats settings\r\n",
            b"set big 0 0 4097\r\n",
            b"cache_memlimit 1\r\nreplace a 0 0 1\r\nq\r\nquit\r\n",
            b"ms m 2 T0 F5 c\r\nhi\r\nmg m v c f s t k O1 h l\r\nmg x q v\r\nmn\r\n",
            b"mg v N30 v c t\r\nmg v N30 t\r\nmd m I T30\r\nmg m v c\r\nms m 1 I C1\r\nx\r\n",
            b"ms c 1 ME\r\n1\r\nms c 1 MA q\r\n2\r\nma c N0 J5 D3 MD v t c\r\nma c M+ q\r\nme c\r\n",
            b"ms Zm9v 2 b k\r\nhi\r\nmg Zm9v b k v\r\nmd Zm9v b q\r\nmg foo zz\r\nms foo 2 MX\r\nhi\r\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect(),
        Target::Binary => {
            let set_ext = [0u8, 0, 0, 7, 0, 0, 0, 0];
            let mut delta_ext = [0u8; 20];
            delta_ext[7] = 3;
            delta_ext[15] = 10;
            vec![
                [
                    bin_req(op::SET, b"k", &set_ext, b"value", 0),
                    bin_req(op::GETK, b"k", &[], &[], 0),
                    bin_req(op::GETQ, b"missing", &[], &[], 0),
                    bin_req(op::NOOP, b"", &[], &[], 0),
                ]
                .concat(),
                [
                    bin_req(op::INCREMENT, b"n", &delta_ext, &[], 0),
                    bin_req(op::DECREMENTQ, b"n", &delta_ext, &[], 0),
                    bin_req(op::APPEND, b"n", &[], b"x", 0),
                    bin_req(op::DELETE, b"n", &[], &[], 5),
                ]
                .concat(),
                [
                    bin_req(op::ADDQ, b"a", &set_ext, b"1", 0),
                    bin_req(op::REPLACE, b"a", &set_ext, b"2", 0),
                    bin_req(op::TOUCH, b"a", &[0, 0, 0, 9], &[], 0),
                    bin_req(op::GATK, b"a", &[0, 0, 0, 9], &[], 0),
                    bin_req(op::FLUSHQ, b"", &[0, 0, 0, 1], &[], 0),
                    bin_req(op::VERSION, b"", &[], &[], 0),
                    bin_req(op::QUIT, b"", &[], &[], 0),
                ]
                .concat(),
                [
                    bin_req(op::SET, b"big", &set_ext, &[b'v'; 4097], 0),
                    bin_req(0x55, b"", &[], &[1, 2, 3], 0),
                    bin_req(op::STAT, b"settings", &[], &[], 0),
                    bin_req(op::VERBOSITY, b"", &[0, 0, 0, 1], &[], 0),
                ]
                .concat(),
            ]
        }
    }
}

/// Where the committed corpus of `target` lives.
pub fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kv/corpus")
        .join(target.name())
}

/// The committed corpus files of `target`, sorted by name.
pub fn corpus(target: Target) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// Applies one to four random mutations to `input`; `pool` supplies
/// material for splices.
fn mutate(target: Target, rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(10) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // An interesting byte.
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = *rng.pick(&[0u8, 0xff, 0x80, 0x81, b'\r', b'\n', b' ', b'0', b'9']);
            }
            // Insert a token (text) or a request header (binary).
            2 => {
                let at = rng.below(len + 1);
                let ins: Vec<u8> = match target {
                    Target::Text => rng.pick(TEXT_TOKENS).to_vec(),
                    Target::Binary => {
                        let opcode = if rng.below(4) == 0 {
                            rng.next() as u8
                        } else {
                            rng.below(0x25) as u8
                        };
                        let body = *rng.pick(NUMBERS);
                        let h = Header {
                            opcode,
                            keylen: (*rng.pick(NUMBERS)).min(body) as u16,
                            extlen: (*rng.pick(&[0u8, 4, 8, 20])).min(body.min(255) as u8),
                            bodylen: body,
                            opaque: 0,
                            cas: 0,
                        };
                        encode_header(&h).to_vec()
                    }
                };
                input.splice(at..at, ins);
            }
            // Delete a range.
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                input.drain(a..b);
            }
            // Duplicate a range, sometimes many times (long lines, deep
            // pipelines).
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(128)).min(len);
                let piece = input[a..b].to_vec();
                let times = if rng.below(8) == 0 {
                    1 + rng.below(4096)
                } else {
                    1
                };
                let at = rng.below(len + 1);
                let rep: Vec<u8> = piece.repeat(times);
                input.splice(at..at, rep);
            }
            // Splice with another input.
            5 if !pool.is_empty() => {
                let other = rng.pick(pool);
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(other.len() - a)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            // Truncate.
            6 if len > 1 => input.truncate(rng.below(len)),
            // Overwrite a big-endian 16- or 32-bit field with an edge value.
            7 if len >= 4 => {
                let v = *rng.pick(NUMBERS);
                let i = rng.below(len - 3);
                if rng.below(2) == 0 {
                    input[i..i + 4].copy_from_slice(&v.to_be_bytes());
                } else {
                    input[i..i + 2].copy_from_slice(&(v as u16).to_be_bytes());
                }
            }
            // Replace a decimal number with an edge value (text).
            8 if len > 0 && target == Target::Text => {
                if let Some(i) = (0..len)
                    .map(|k| (k + rng.below(len)) % len)
                    .find(|&k| input[k].is_ascii_digit())
                {
                    let mut j = i;
                    while j < len && input[j].is_ascii_digit() {
                        j += 1;
                    }
                    let t = rng.pick(TEXT_TOKENS).to_vec();
                    input.splice(i..j, t);
                }
            }
            // Random bytes.
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    if target == Target::Binary && input.first() != Some(&REQ_MAGIC) {
        input.insert(0, REQ_MAGIC);
    }
    input.truncate(MAX_INPUT);
}

/// What a fuzzing run did.
#[derive(Debug)]
pub struct Report {
    /// Inputs run.
    pub runs: usize,
    /// Inputs that showed new behaviour.
    pub novel: usize,
    /// The first violation, with the input that caused it.
    pub failure: Option<(String, Vec<u8>)>,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fuzzes `target` for `iters` inputs from `seed`.
pub fn fuzz(target: Target, iters: usize, seed: u64, save: Option<&Path>) -> Report {
    let mut rng = Rng::new(seed);
    let mut pool: Vec<Vec<u8>> = builtin_seeds(target);
    pool.extend(corpus(target).into_iter().map(|(_, b)| b));
    let mut seen: HashSet<Vec<Vec<u8>>> = HashSet::new();
    let mut kinds: HashSet<Vec<u8>> = HashSet::new();
    let mut report = Report {
        runs: 0,
        novel: 0,
        failure: None,
    };
    // The seeds themselves first.
    for s in pool.clone() {
        match run_checked(target, &s, usize::MAX) {
            Ok(out) => {
                let sig = signature(target, &out, s.len());
                kinds.extend(sig.iter().cloned());
                seen.insert(sig);
            }
            Err(e) => {
                report.failure = Some((e, s));
                return report;
            }
        }
        report.runs += 1;
    }
    for _ in 0..iters {
        let mut input = rng.pick(&pool).clone();
        mutate(target, &mut rng, &mut input, &pool);
        let chunk = match rng.below(4) {
            0 => 1 + rng.below(8),
            1 => 1 + rng.below(4096),
            _ => usize::MAX,
        };
        report.runs += 1;
        match run_checked(target, &input, chunk) {
            Ok(out) => {
                let sig = signature(target, &out, input.len());
                // A reply kind never seen before makes an input worth
                // keeping in the committed corpus; a new combination only
                // joins the working pool.
                let new_kind = sig.iter().any(|k| !kinds.contains(k));
                if new_kind {
                    kinds.extend(sig.iter().cloned());
                    if let Some(dir) = save {
                        save_input(&dir.join(target.name()), &input);
                    }
                }
                if seen.insert(sig) {
                    report.novel += 1;
                    pool.push(input);
                }
            }
            Err(e) => {
                report.failure = Some((e, input));
                return report;
            }
        }
    }
    report
}

/// FNV-1a, to name saved inputs by content.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn save_input(dir: &Path, input: &[u8]) {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(format!("{:016x}", fnv(input))), input);
}

fn fuzz_target(target: Target) {
    let iters = env_num("KV_FUZZ_ITERS", 3000) as usize;
    let seed = env_num("KV_FUZZ_SEED", 0x5eed_f00d);
    let save = std::env::var_os("KV_FUZZ_SAVE").map(PathBuf::from);
    let r = fuzz(target, iters, seed, save.as_deref());
    println!(
        "fuzz {}: {} inputs, {} with new behaviour (seed {seed:#x})",
        target.name(),
        r.runs,
        r.novel
    );
    if let Some((why, input)) = r.failure {
        let dir = std::env::temp_dir().join("kv-fuzz-failures");
        save_input(&dir, &input);
        panic!(
            "{} parser: {why}; input saved as {}/{:016x} ({} bytes): {:?}",
            target.name(),
            dir.display(),
            fnv(&input),
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(300)])
        );
    }
    assert!(r.runs > iters, "the seeds and every mutation ran");
}

#[test]
fn fuzz_text_parser() {
    fuzz_target(Target::Text);
}

#[test]
fn fuzz_binary_parser() {
    fuzz_target(Target::Binary);
}

#[test]
fn corpus_replays_cleanly() {
    for target in [Target::Text, Target::Binary] {
        let files = corpus(target);
        assert!(
            !files.is_empty(),
            "no corpus under {}",
            corpus_dir(target).display()
        );
        for (path, input) in files {
            for chunk in [usize::MAX, 7, 1] {
                if let Err(e) = run_checked(target, &input, chunk) {
                    panic!("{} (chunk {chunk}): {e}", path.display());
                }
            }
        }
    }
}

#[test]
fn long_lines_reach_but_never_pass_the_bound() {
    // A retrieval line longer than its limit grows the text buffer to its
    // bound, is rejected once, and the rest of it is dropped.
    let mut long = b"get ".to_vec();
    long.extend(std::iter::repeat_n(b'k', MAX_GET_LINE + 100 * 1024));
    long.extend_from_slice(b"\r\nversion\r\n");
    let out = run_checked(Target::Text, &long, usize::MAX).expect("bounded");
    assert_eq!(out.high_water, MAX_GET_LINE);
    assert!(out
        .output
        .starts_with(b"CLIENT_ERROR line too long\r\nVERSION "));
    // A binary body far larger than the buffer is skipped through it.
    let mut big = bin_req(0x55, b"", &[], &vec![7u8; 100 * 1024], 0);
    big.extend(bin_req(op::NOOP, b"", &[], &[], 0));
    let out = run_checked(Target::Binary, &big, 5000).expect("bounded");
    assert_eq!(out.high_water, INPUT_INITIAL);
    assert_eq!(out.output.len(), 2 * HEADER + b"Unknown command".len());
}

// Properties: the parsers give back what a serialised request carries.

fn text_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0x21u8..0x7f, 1..=250)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A binary request header parses back to the same fields.
    #[test]
    fn binary_header_round_trips(opcode: u8, keylen: u16, extlen: u8, bodylen: u32,
                                 opaque: u32, cas: u64) {
        let h = Header { opcode, keylen, extlen, bodylen, opaque, cas };
        prop_assert_eq!(Header::parse(&encode_header(&h)), Some(h));
    }

    /// A text `set` of any valid key, flags and binary value, then `gets`,
    /// gives back the same key, flags and value, however the bytes are
    /// split into reads.
    #[test]
    fn text_set_then_get_round_trips(key in text_key(), flags: u32,
                                     value in proptest::collection::vec(any::<u8>(), 0..600),
                                     chunk in 1usize..64, noreply: bool) {
        let k = String::from_utf8(key.clone()).unwrap();
        let mut input = format!("set {k} {flags} 0 {}{}\r\n", value.len(),
                                if noreply { " noreply" } else { "" }).into_bytes();
        input.extend_from_slice(&value);
        input.extend_from_slice(format!("\r\nget {k}\r\n").as_bytes());
        let out = run_checked(Target::Text, &input, chunk).map_err(TestCaseError::fail)?;
        let mut want = if noreply { Vec::new() } else { b"STORED\r\n".to_vec() };
        want.extend_from_slice(format!("VALUE {k} {flags} {}\r\n", value.len()).as_bytes());
        want.extend_from_slice(&value);
        want.extend_from_slice(b"\r\nEND\r\n");
        prop_assert_eq!(out.output, want);
    }

    /// A binary SET of any key bytes, flags and value, then GETK, gives
    /// back the same key, flags and value, and echoes the opaque.
    #[test]
    fn binary_set_then_getk_round_trips(key in proptest::collection::vec(any::<u8>(), 1..=250),
                                        flags: u32,
                                        value in proptest::collection::vec(any::<u8>(), 0..600),
                                        chunk in 1usize..64) {
        let mut ext = flags.to_be_bytes().to_vec();
        ext.extend_from_slice(&[0, 0, 0, 0]);
        let input = [
            bin_req(op::SET, &key, &ext, &value, 0),
            bin_req(op::GETK, &key, &[], &[], 0),
        ]
        .concat();
        let out = run_checked(Target::Binary, &input, chunk).map_err(TestCaseError::fail)?;
        let o = &out.output;
        prop_assert!(o.len() >= 2 * HEADER);
        prop_assert_eq!(&o[6..8], &[0u8, 0][..], "SET status");
        let r = &o[HEADER..];
        prop_assert_eq!(r[1], op::GETK);
        prop_assert_eq!(&r[6..8], &[0u8, 0][..], "GETK status");
        prop_assert_eq!(&r[12..16], &0x0102_0304u32.to_be_bytes()[..]);
        let keylen = u16::from_be_bytes([r[2], r[3]]) as usize;
        let extlen = r[4] as usize;
        let body = u32::from_be_bytes([r[8], r[9], r[10], r[11]]) as usize;
        prop_assert_eq!(r.len(), HEADER + body);
        prop_assert_eq!(extlen, 4);
        prop_assert_eq!(&r[HEADER..HEADER + 4], &flags.to_be_bytes()[..]);
        prop_assert_eq!(&r[HEADER + 4..HEADER + 4 + keylen], &key[..]);
        prop_assert_eq!(&r[HEADER + 4 + keylen..], &value[..]);
    }

    /// Arbitrary bytes never panic either parser, never fail the session
    /// and never push a buffer past its bound.
    #[test]
    fn arbitrary_bytes_are_handled(input in proptest::collection::vec(any::<u8>(), 0..2048),
                                   chunk in 1usize..4096) {
        run_checked(Target::Text, &input, chunk).map_err(TestCaseError::fail)?;
        let mut bin = vec![REQ_MAGIC];
        bin.extend_from_slice(&input);
        run_checked(Target::Binary, &bin, chunk).map_err(TestCaseError::fail)?;
    }

    /// A pipeline of valid text requests gets the same replies however the
    /// bytes are split into reads.
    #[test]
    fn text_replies_do_not_depend_on_read_sizes(
        reqs in proptest::collection::vec((0usize..6, 0u8..4, 0usize..40), 1..20),
        chunk in 1usize..32,
    ) {
        let mut input = Vec::new();
        for (kind, key, len) in reqs {
            let k = format!("key{key}");
            let line = match kind {
                0 => format!("set {k} 0 0 {len}\r\n{}\r\n", "v".repeat(len)),
                1 => format!("get {k} key0\r\n"),
                2 => format!("append {k} 0 0 1\r\n1\r\n"),
                3 => format!("incr {k} {len}\r\n"),
                4 => format!("delete {k}\r\n"),
                _ => format!("touch {k} {len}\r\n"),
            };
            input.extend_from_slice(line.as_bytes());
        }
        let whole = run_checked(Target::Text, &input, usize::MAX).map_err(TestCaseError::fail)?;
        let split = run_checked(Target::Text, &input, chunk).map_err(TestCaseError::fail)?;
        prop_assert_eq!(whole.output, split.output);
    }
}
