//! ASCII authentication (`-Y FILE`), as memcached 1.6 does it.
//!
//! # The file
//!
//! One `user:password` per line; the user is everything before the first
//! `:`, the password everything after it up to the end of the line (a
//! trailing `\r` is dropped). Blank lines are skipped; any other line
//! without a `:` makes the file malformed and the server refuses to start.
//! The file is read once, at start.
//!
//! # The handshake
//!
//! Until a connection has authenticated, every line it sends gets
//! `CLIENT_ERROR unauthenticated`, except a `set` line with at least five
//! fields whose fifth (the length) is a number: its data block carries
//! `user password` (key, flags and exptime are ignored). Then:
//!
//! - a block not ended by `\r\n` gets `CLIENT_ERROR bad command line
//!   termination`;
//! - a block with fewer than two space-separated fields gets
//!   `CLIENT_ERROR bad authentication token format`;
//! - a matching user and password gets `STORED` (even with `noreply`), and
//!   the connection is served normally from the next byte on;
//! - anything else gets `CLIENT_ERROR authentication failure`.
//!
//! Each checked pair counts in the `auth_cmds` stat, each failed one in
//! `auth_errors` too. A connection that sends more than 2048 bytes without
//! a newline, or announces a block larger than the 16 KiB memcached can
//! buffer (once that much has arrived), is closed without a reply, as
//! memcached closes it. The replies and the parsing of numbers (`+12` is
//! 12, `-1` is not a length, `12\tx` is 12) follow memcached 1.6.18 byte
//! for byte; `scripts/security_compare.py` compares the two. One difference
//! is deliberate: when several requests reach memcached in one read before
//! authentication, it sends only the reply to the last of them (the others
//! are overwritten); kv answers each request.
//!
//! Passwords are compared in constant time: every entry is compared, every
//! byte of the longer of the two strings is looked at, and no comparison
//! returns early.
//!
//! The binary protocol has no ASCII handshake; with `-Y`, a binary request
//! gets the binary status `0x20` (authentication error) and the connection
//! is closed (memcached instead treats every connection as text when `-Y`
//! is on).

use std::io::{self, Read, Write};
use std::path::Path;

use crate::conn::{Conn, Ctx};
use crate::text::mc_tokens as tokens;

/// Longest line memcached buffers before authentication, without a newline,
/// before it closes the connection.
const MAX_LINE: usize = 2048;
/// Largest data block (value and `\r\n`) the handshake can carry: memcached
/// reads it into its 16 KiB read buffer and closes a connection whose block
/// cannot fit.
const MAX_BLOCK: u64 = 16 * 1024;

const UNAUTHENTICATED: &[u8] = b"CLIENT_ERROR unauthenticated\r\n";

/// The users allowed in, from an auth file.
pub struct Users {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the passwords.
        f.debug_struct("Users")
            .field("count", &self.entries.len())
            .finish()
    }
}

impl Users {
    /// Reads an auth file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, holds no user, or has a line without `:`.
    pub fn load(path: &Path) -> io::Result<Users> {
        let text = std::fs::read(path)?;
        Users::parse(&text)
    }

    /// Parses the contents of an auth file.
    ///
    /// # Errors
    ///
    /// No user, or a non-blank line without `:` (the error names the line).
    pub fn parse(text: &[u8]) -> io::Result<Users> {
        let mut entries = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {} is not user:password", i + 1),
                ));
            };
            entries.push((line[..colon].to_vec(), line[colon + 1..].to_vec()));
        }
        if entries.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no user:password line",
            ));
        }
        Ok(Users { entries })
    }

    /// True if `user` and `pass` match an entry. Takes the same time
    /// whichever entry matches, and whether or not one does, for inputs of
    /// a given length.
    pub fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        let mut any = 0u8;
        for (u, p) in &self.entries {
            // Both must match: AND the two "equal" bits, OR over entries.
            any |= ct_eq(user, u) & ct_eq(pass, p);
        }
        any == 1
    }
}

/// 1 if `a == b`, else 0, without branching on the contents: every byte of
/// the longer slice is examined, and a length difference is folded into the
/// result rather than returned early.
fn ct_eq(a: &[u8], b: &[u8]) -> u8 {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // diff == 0 -> 1, anything else -> 0, without a data-dependent branch.
    let nonzero = (diff | diff.wrapping_neg()) >> 63;
    std::hint::black_box((1 ^ nonzero) as u8)
}

/// memcached's `safe_strtoul`: leading white space, an optional sign, at
/// least one decimal digit, then the end or white space. Overflow of 64
/// bits and negative numbers fail; the value is then cut to 32 bits.
fn strtoul(t: &[u8]) -> Option<u32> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = t.iter().take_while(|&&b| space(b)).count();
    let neg = match t.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = t[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in &t[i..i + digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if let Some(&b) = t.get(i + digits) {
        if !space(b) {
            return None;
        }
    }
    if neg {
        v = v.wrapping_neg();
        if (v as i64) < 0 {
            return None;
        }
    }
    Some(v as u32)
}

/// Runs the handshake on a text connection. Returns true once the client
/// has authenticated (the connection is then served normally, from the
/// input left in `c`), false when the connection is over: closed by the
/// client, or to be closed without a reply.
///
/// # Errors
///
/// I/O errors of the connection.
pub fn handshake<S: Read + Write>(
    c: &mut Conn<'_, S>,
    ctx: &Ctx,
    users: &Users,
) -> io::Result<bool> {
    loop {
        // memcached waits for two bytes: no request is shorter.
        while c.data().len() < 2 {
            if !c.fill(MAX_BLOCK as usize)? {
                return Ok(false);
            }
        }
        let data = c.data();
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            if data.len() > MAX_LINE {
                return Ok(false);
            }
            if !c.fill(MAX_BLOCK as usize)? {
                return Ok(false);
            }
            continue;
        };
        let line = data[..nl].to_vec();
        c.consume(nl + 1);
        let t = tokens(&line);
        // The length may carry the line's '\r': white space ends a number.
        let len = match t.as_slice() {
            [b"set", _, _, _, len, ..] => strtoul(len),
            _ => None,
        };
        let Some(len) = len else {
            c.put(UNAUTHENTICATED);
            continue;
        };
        let block = u64::from(len) + 2;
        if block > MAX_BLOCK {
            // memcached waits until its buffer is full, then gives up.
            while (c.data().len() as u64) < MAX_BLOCK {
                if !c.fill(MAX_BLOCK as usize)? {
                    break;
                }
            }
            return Ok(false);
        }
        let block = block as usize;
        while c.data().len() < block {
            if !c.fill(MAX_BLOCK as usize)? {
                return Ok(false);
            }
        }
        let data = &c.data()[..block];
        if &data[block - 2..] != b"\r\n" {
            c.consume(block);
            c.put(b"CLIENT_ERROR bad command line termination\r\n");
            continue;
        }
        let payload = data[..block - 2].to_vec();
        c.consume(block);
        let t = tokens(&payload);
        if t.len() < 2 {
            c.put(b"CLIENT_ERROR bad authentication token format\r\n");
            continue;
        }
        ctx.auth_cmds.add(1);
        if users.check(t[0], t[1]) {
            c.put(b"STORED\r\n");
            return Ok(true);
        }
        ctx.auth_errors.add(1);
        c.put(b"CLIENT_ERROR authentication failure\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::mock::{ctx, run};
    use std::sync::Arc;

    fn users() -> Arc<Users> {
        Arc::new(Users::parse(b"alice:secret\r\nbob:hunter2\n\ncarol:pa:ss\n").unwrap())
    }

    /// Runs `input` on an auth-enabled context, whole and one byte at a
    /// time (same replies), and returns the replies and the context.
    fn session(input: &[u8]) -> (String, Ctx) {
        let mut byte = ctx();
        byte.auth = Some(users());
        let bytewise = run(&byte, input, 1);
        let mut whole = ctx();
        whole.auth = Some(users());
        let out = run(&whole, input, usize::MAX);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytewise),
            "chunking changed the replies"
        );
        (String::from_utf8(out).unwrap(), whole)
    }

    #[test]
    fn parse_file() {
        let u = users();
        assert!(u.check(b"alice", b"secret"));
        assert!(u.check(b"bob", b"hunter2"));
        assert!(u.check(b"carol", b"pa:ss"));
        assert!(!u.check(b"alice", b"hunter2"));
        assert!(!u.check(b"alice", b"secre"));
        assert!(!u.check(b"alice", b"secrets"));
        assert!(!u.check(b"alic", b"secret"));
        assert!(!u.check(b"", b""));
        assert!(Users::parse(b"alice:x\nnocolon\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(Users::parse(b"\n\n").is_err());
        assert!(!format!("{:?}", u).contains("secret"));
    }

    #[test]
    fn ct_eq_is_equality() {
        for (a, b) in [
            (&b""[..], &b""[..]),
            (b"a", b"a"),
            (b"a", b"b"),
            (b"ab", b"a"),
            (b"a", b"ab"),
            (b"\0", b""),
            (b"secret", b"secret"),
        ] {
            assert_eq!(ct_eq(a, b) == 1, a == b, "{a:?} {b:?}");
        }
    }

    #[test]
    fn strtoul_as_memcached() {
        assert_eq!(strtoul(b"12"), Some(12));
        assert_eq!(strtoul(b"12\r"), Some(12));
        assert_eq!(strtoul(b"+12"), Some(12));
        assert_eq!(strtoul(b"\t12\tx"), Some(12));
        assert_eq!(strtoul(b"-0"), Some(0));
        assert_eq!(strtoul(b"-1"), None);
        assert_eq!(strtoul(b"12x"), None);
        assert_eq!(strtoul(b"x"), None);
        assert_eq!(strtoul(b"+"), None);
        assert_eq!(strtoul(b""), None);
        assert_eq!(strtoul(b"18446744073709551616"), None);
        assert_eq!(strtoul(b"4294967298"), Some(2));
    }

    #[test]
    fn everything_is_refused_before_auth() {
        let (out, ctx) = session(
            b"get a\r\nversion\r\nstats\r\nquit\r\nbogus\r\n\r\nset a\r\nadd a 0 0 12\r\n\
              GET / HTTP/1.1\r\nSET a 0 0 12\r\nset a 0 0 -1\r\nset a 0 0 12x\r\n",
        );
        assert_eq!(out, "CLIENT_ERROR unauthenticated\r\n".repeat(12));
        assert_eq!(ctx.auth_cmds.get(), 0);
    }

    #[test]
    fn good_and_bad_credentials() {
        let (out, ctx) = session(
            b"set a 0 0 12\r\nalice secreT\r\nget a\r\nset a 0 0 5\r\nalice\r\n\
              set a 0 0 12\r\nalice:secret\r\nset a 0 0 3\r\nabcd\r\n\
              set k 5 100 12 noreply\r\nalice secret\r\nget a\r\nset a 0 0 1\r\nx\r\nget a\r\nversion\r\n",
        );
        assert_eq!(
            out,
            format!(
                "CLIENT_ERROR authentication failure\r\nCLIENT_ERROR unauthenticated\r\n\
                 CLIENT_ERROR bad authentication token format\r\n\
                 CLIENT_ERROR bad authentication token format\r\n\
                 CLIENT_ERROR bad command line termination\r\n\
                 CLIENT_ERROR unauthenticated\r\n\
                 STORED\r\nEND\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nVERSION {}\r\n",
                crate::conn::VERSION
            )
        );
        // The "\n" left over after the bad block waited for a second byte,
        // then made an empty line of its own.
        assert_eq!(ctx.auth_cmds.get(), 2);
        assert_eq!(ctx.auth_errors.get(), 1);
        assert!(ctx.store.get(b"k").is_none(), "the auth set stores nothing");
    }

    #[test]
    fn token_rules() {
        for ok in [
            &b"set a 0 0 13\r\nalice  secret\r\n"[..],
            b"set a 0 0 13\r\nalice secret \r\n",
            b"set a 0 0 13\r\n alice secret\r\n",
            b"set a 0 0 18\r\nalice secret extra\r\n",
            b"set  a  0 0 12 \r\nalice secret\r\n",
            b"set a x y +12\r\nalice secret\r\n",
            b"set a 0 0 12\nalice secret\r\n",
            b"set a 0 0 12\tx\r\nalice secret\r\n",
            b"set a 0 0 11\r\ncarol pa:ss\r\n",
        ] {
            assert_eq!(
                session(ok).0,
                "STORED\r\n",
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"set a 0 0 12\r\nalice\x00secret\r\n"[..],
            b"set a 0 0 12\r\nalice\tsecret\r\n",
            b"set a 0 0 6\r\nalice \r\n",
            b"set a 0 0 0\r\n\r\n",
        ] {
            assert_eq!(
                session(bad).0,
                "CLIENT_ERROR bad authentication token format\r\n",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn junk_and_huge_blocks_close_silently() {
        // 3000 bytes without a newline, read 1000 at a time: closed once
        // more than 2048 are buffered. (Read at once, the line is complete
        // and merely refused, in memcached too.)
        let mut long = vec![b'x'; 3000];
        long.extend_from_slice(b"\r\nset a 0 0 12\r\nalice secret\r\n");
        let mut c = ctx();
        c.auth = Some(users());
        assert_eq!(run(&c, &long, 1000), b"");
        assert_eq!(
            run(&c, &long, usize::MAX),
            b"CLIENT_ERROR unauthenticated\r\nSTORED\r\n"
        );
        let (out, _) = session(b"set a 0 0 100000\r\nalice secret\r\nversion\r\n");
        assert_eq!(out, "");
        // A short unfinished line just waits (here: for input that never
        // comes).
        assert_eq!(session(&[b'x'; 2000]).0, "");
        assert_eq!(session(b"\n").0, "");
    }

    #[test]
    fn binary_request_is_refused() {
        let mut ctx = ctx();
        ctx.auth = Some(users());
        let mut req = vec![
            0x80, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef,
        ];
        req.extend_from_slice(&[0; 8]);
        req.push(b'a');
        let out = run(&ctx, &req, usize::MAX);
        assert_eq!(out[0], 0x81);
        assert_eq!(&out[6..8], &[0x00, 0x20], "auth error status");
        assert_eq!(&out[12..16], &[0xde, 0xad, 0xbe, 0xef], "opaque echoed");
        assert_eq!(&out[24..], b"Auth failure.");
    }
}
