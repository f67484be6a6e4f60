//! An HTTP/1.1 server written as a plain function per connection: read,
//! parse with `httparse`, write. Keep-alive and pipelining come from the
//! shape of the loop (answer every complete request in the buffer, send the
//! answers in one write), not from a framework.
//!
//! Routes: `GET /` answers `Hello, World!`, `GET /json` a small JSON object,
//! anything else 404 (405 for a known path with another method). A request
//! that does not parse, or that is larger than the limits below, is answered
//! 400 (or 413/431/501) and the connection is closed.
//!
//! ```text
//! cargo run --release --example http -- --addr 127.0.0.1:8080 --workers 2
//! curl -i http://127.0.0.1:8080/
//! ```

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use weave::server::Server;

/// HTTP/1.1 server on weave fibers (keep-alive, pipelining).
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (it is read and discarded).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 32;
/// Write the answers gathered so far once they pass this size, even in the
/// middle of a pipelined batch.
const FLUSH_AT: usize = 64 * 1024;

/// What to do with the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

/// Serves one connection until the peer closes it, asks to close it, or
/// sends something that is not a valid request.
///
/// # Errors
///
/// I/O errors of the connection (a reset, a timeout).
pub fn serve_conn<S: Read + Write>(mut conn: S) -> io::Result<()> {
    let mut session = Session::default();
    let mut buf = vec![0u8; 4096];
    let mut start = 0; // first unparsed byte of `buf`
    let mut filled = 0; // end of the input in `buf`
    let mut out = Vec::with_capacity(4096);
    loop {
        // Answer every complete request already in the buffer, then send
        // all the answers in one write.
        let (used, step) = session.answer(&buf[start..filled], &mut out);
        start += used;
        if !out.is_empty() {
            conn.write_all(&out)?;
            out.clear();
        }
        match step {
            Step::Flush => continue,
            Step::Close => return Ok(()),
            Step::NeedInput => {}
        }
        // Keep the unparsed tail at the front of the buffer, and read more.
        buf.copy_within(start..filled, 0);
        filled -= start;
        start = 0;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = conn.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}

/// What a connection loop does after [`Session::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read more input: what is left is not a whole request yet.
    NeedInput,
    /// Write the answers so far, then call `answer` again before reading.
    Flush,
    /// Write the answers so far, then close the connection.
    Close,
}

/// The protocol state of one connection, independent of how its bytes are
/// read and written (the benchmark's tokio peer runs the same code).
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of a request body still to skip before the next request.
    skip: usize,
}

impl Session {
    /// Answers the complete requests at the front of `input`, appending the
    /// responses to `out`. Returns how many bytes of `input` were used and
    /// what to do next.
    pub fn answer(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Step) {
        let mut start = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(input.len() - start);
                self.skip -= n;
                start += n;
                if self.skip > 0 {
                    return (start, Step::NeedInput);
                }
            }
            match parse(&input[start..], out) {
                Parsed::Partial => {
                    if input.len() - start >= MAX_HEAD {
                        respond(
                            out,
                            431,
                            "Request Header Fields Too Large",
                            "text/plain",
                            b"request head too large\n",
                            After::Close,
                            false,
                        );
                        return (input.len(), Step::Close);
                    }
                    return (start, Step::NeedInput);
                }
                Parsed::Done { used, body, then } => {
                    start += used;
                    self.skip = body;
                    if then == After::Close {
                        return (start, Step::Close);
                    }
                }
            }
            if out.len() >= FLUSH_AT {
                return (start, Step::Flush);
            }
        }
    }
}

/// The outcome of parsing one request at the front of the buffer.
enum Parsed {
    /// Not a whole request head yet.
    Partial,
    /// A request was parsed and answered into `out`.
    Done {
        /// Bytes of the head.
        used: usize,
        /// Bytes of body that follow the head, to be skipped.
        body: usize,
        then: After,
    },
}

/// Parses one request from `input` and appends its answer to `out`.
fn parse(input: &[u8], out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => {
            let (status, reason) = match e {
                httparse::Error::TooManyHeaders => (431, "Request Header Fields Too Large"),
                _ => (400, "Bad Request"),
            };
            let msg = format!("bad request: {e}\n");
            respond(
                out,
                status,
                reason,
                "text/plain",
                msg.as_bytes(),
                After::Close,
                false,
            );
            return Parsed::Done {
                used: input.len(),
                body: 0,
                then: After::Close,
            };
        }
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        unreachable!("a complete request has a method, path and version")
    };
    // HTTP/1.1 keeps the connection by default, 1.0 closes it.
    let mut then = if version == 1 {
        After::KeepAlive
    } else {
        After::Close
    };
    let mut body = 0usize;
    let mut bad = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    then = After::Close;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    then = After::KeepAlive;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) if n <= MAX_BODY => body = n,
                Some(_) => bad = Some((413, "Content Too Large", "body too large\n")),
                None => bad = Some((400, "Bad Request", "bad content-length\n")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bad = Some((
                501,
                "Not Implemented",
                "transfer-encoding is not supported\n",
            ));
        }
    }
    if let Some((status, reason, msg)) = bad {
        respond(
            out,
            status,
            reason,
            "text/plain",
            msg.as_bytes(),
            After::Close,
            false,
        );
        return Parsed::Done {
            used,
            body: 0,
            then: After::Close,
        };
    }
    let head = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/") => {
            respond(out, 200, "OK", "text/plain", b"Hello, World!", then, head);
        }
        ("GET" | "HEAD", "/json") => {
            let json = serde_json::json!({ "message": "Hello, World!" });
            let bytes = serde_json::to_vec(&json).expect("a JSON value always serialises");
            respond(out, 200, "OK", "application/json", &bytes, then, head);
        }
        (_, "/" | "/json") => {
            respond(
                out,
                405,
                "Method Not Allowed",
                "text/plain",
                b"method not allowed\n",
                then,
                false,
            );
        }
        _ => respond(
            out,
            404,
            "Not Found",
            "text/plain",
            b"not found\n",
            then,
            head,
        ),
    }
    Parsed::Done { used, body, then }
}

/// Appends a whole response to `out`.
fn respond(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    then: After,
    head_only: bool,
) {
    // `write!` into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nServer: weave\r\nDate: ");
    with_date(|d| out.extend_from_slice(d));
    let _ = write!(
        out,
        "\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if then == After::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

thread_local! {
    /// The `Date` header of the current second, formatted once per second
    /// per worker. (A started fiber never changes thread, and this is read
    /// without parking, so a thread-local is fine here.)
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the current time as an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn with_date(f: impl FnOnce(&[u8])) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (cached, mut text) = DATE.get();
    if cached != secs {
        text = http_date(secs);
        DATE.set((secs, text));
    }
    f(&text);
}

/// Formats seconds since the Unix epoch as an IMF-fixdate.
pub fn http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let mut text = [b' '; 29];
    let n = s.len().min(29);
    text[..n].copy_from_slice(&s.as_bytes()[..n]);
    text
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let mut builder = Server::builder().bind(args.addr.to_string());
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let server = builder.build()?;
    log::info!("http listening on {:?}", server.local_addrs());
    let summary = server.serve(|conn| {
        conn.set_nodelay(true)?;
        serve_conn(conn)
    })?;
    log::info!("stopped: {summary:?}");
    Ok(())
}
