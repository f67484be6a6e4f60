//! # weave
//!
//! A server framework on stackful fibers: handlers are plain functions written
//! as straight-line, blocking-style code over `std::io::Read`/`Write`, and a
//! multi-threaded event loop runs them. When a call would block, the fiber
//! parks and its worker thread runs other fibers; when the socket (or timer,
//! or channel) is ready, the fiber resumes where it stopped.
//!
//! ```no_run
//! use std::io::{self, Read, Write};
//! use weave::net::{TcpListener, TcpStream};
//!
//! fn echo(mut conn: TcpStream) -> io::Result<()> {
//!     let mut buf = [0u8; 4096];
//!     loop {
//!         let n = conn.read(&mut buf)?;
//!         if n == 0 {
//!             return Ok(());
//!         }
//!         conn.write_all(&buf[..n])?;
//!     }
//! }
//!
//! fn main() -> io::Result<()> {
//!     let rt = weave::Runtime::new()?;
//!     rt.block_on(|| {
//!         let listener = TcpListener::bind("127.0.0.1:7000")?;
//!         loop {
//!             let (conn, _peer) = listener.accept()?;
//!             weave::spawn(move || echo(conn));
//!         }
//!     })
//! }
//! ```
//!
//! ## The pieces
//!
//! - [`spawn`], [`JoinHandle`], [`park`], [`yield_now`], [`sleep`],
//!   [`current`]: fibers, shaped like `std::thread`.
//! - [`Runtime`]: worker threads, each with its own epoll instance, run queue,
//!   timers and stack pool; new fibers spread across workers by work
//!   stealing.
//! - [`net`]: `TcpListener`, `TcpStream`, `UdpSocket`, `UnixListener`,
//!   `UnixStream`, shaped like `std::net`.
//! - [`pool`]: client connections pooled per peer, bounded, with idle
//!   expiry and counters.
//! - [`fiber_local!`]: per-fiber storage.
//! - [`JoinHandle::cancel`], [`time::timeout`]: stopping a fiber, or a piece
//!   of work, at its next blocking point (see [`fiber::cancel`]).
//!
//! ## Rules worth knowing
//!
//! **A started fiber never changes thread.** New fibers may be stolen by an
//! idle worker before they first run; after that they stay on their worker
//! (see [`runtime`] for why). So `Rc`, `RefCell` borrows and
//! `thread_local!` values held across a park are sound.
//!
//! **`thread_local!` is per thread, not per fiber.** Many fibers share a
//! worker thread, so a `thread_local!` value is shared by all of them; it is
//! safe to use across a park (see above) but it is not private to the fiber.
//! Use [`fiber_local!`] for per-fiber state.
//!
//! **Don't block the worker.** A fiber that computes for long, or calls a
//! truly blocking function (file I/O, `std::thread::sleep`, a `std` mutex held
//! for long), delays every fiber on its worker. Call [`yield_now`] in long
//! loops. A fiber that runs for more than 100 ms without parking is logged.
//!
//! **Stacks are fixed-size.** A fiber gets 256 KiB of address space by default
//! (pages are committed only when touched) with a guard page below, carved
//! from large shared mappings, so the number of live fibers is bounded by
//! memory, not by the kernel's mapping count (a fiber parked at a shallow
//! depth holds about 4.7 KiB; `docs/scale.md` has the figures). Overflow
//! prints the fiber's name and stack size and aborts the process. Rust code
//! touches a large frame page by page from the top (stack probes), so even a
//! frame larger than the guard page faults in it rather than jumping over it
//! into the next stack. Code in other languages called from a fiber (C
//! through FFI) gets the same guarantee only if it was compiled with
//! stack-clash protection (`-fstack-clash-protection`); give fibers that run
//! C code with large frames a stack big enough for them. Raise it with
//! [`fiber::Builder::stack_size`] or [`runtime::Builder::stack_size`].
//!
//! **A worker is never lost to user code.** A panic in a fiber, in a
//! fiber-local destructor or in the drop of a fiber's result is caught and
//! delivered to the fiber's [`JoinHandle`] (or logged when nobody joins);
//! the worker keeps running its other fibers. Every fiber ends exactly once:
//! its handle gets its value, its panic, or
//! [`Cancelled`](fiber::Cancelled) when it was cancelled or its runtime shut
//! down before it finished, also for fibers spawned after the runtime was
//! dropped.
//!
//! **Cancellation unwinds.** [`JoinHandle::cancel`] and an expired
//! [`time::timeout`] stop the fiber at its next blocking point by unwinding
//! its stack from there (POSIX-style deferred cancellation, not an error
//! code): destructors run, and third-party code that retries I/O errors
//! cannot turn it into a loop. Code that catches panics must let a
//! cancellation through ([`fiber::catch_unwind`] does); an unwind cannot
//! cross an `extern "C"` frame. [`fiber::cancel`] explains the model and
//! why it was chosen over per-call errors.
//!
//! **Outside a runtime**, the blocking calls block the calling thread:
//! [`park`] is `std::thread::park`, [`sleep`] is `std::thread::sleep`, socket
//! operations wait in `poll(2)`. [`spawn`] called outside any runtime starts a
//! default runtime (one worker per core, or `WEAVE_WORKERS`). A socket also
//! outlives the runtime it was used on: after that runtime is dropped, it
//! works in plain blocking mode wherever it is used.

#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod sys;

pub mod blocking;
pub mod fiber;
pub(crate) mod io;
pub mod net;
pub mod pool;
pub mod runtime;
pub mod select;
pub mod server;
pub mod sync;
pub mod time;

pub use fiber::{
    current, park, park_timeout, scope, spawn, spawn_local, yield_now, Fiber, FiberId, JoinHandle,
};
pub use runtime::{Handle, Runtime};
pub use select::Select;
pub use server::{Conn, Server, ServerHandle};
pub use time::{sleep, sleep_until};
