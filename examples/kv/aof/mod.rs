//! Optional persistence: an append-only log of every mutation, replayed at
//! start, compacted in the background.
//!
//! # File format
//!
//! An 8-byte header (`WKVAOF1\n`), then records:
//!
//! ```text
//! len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! ```
//!
//! Payloads start with an opcode byte: `1` set (flags u32, expiry u64,
//! stored-at u64, key length u16, key, value), `2` delete (key), `3` touch
//! (expiry u64, key), `4` flush (time u64, 0 = immediate). Numbers are
//! little-endian; times are absolute Unix seconds. Every storage command
//! (set, add, replace, append, prepend, cas, incr, decr) is logged as a `set`
//! of the resulting item, so replay never depends on earlier values.
//!
//! # Writing
//!
//! One dedicated writer thread owns the file. A connection applies its
//! mutation to the store and, still under the shard lock, queues the record
//! (so records of one key are in the order the store applied them); then it
//! releases the lock and waits for its [`Ticket`]. The writer takes every
//! queued record at once, writes them with one `write`, and with
//! `--fsync always` makes them durable with one `fdatasync` before
//! acknowledging any of them (group commit). With `everysec` it acknowledges
//! after the write and syncs once a second; with `no` it leaves syncing to
//! the kernel. A failed write or sync truncates the file back to the last
//! good record and fails every ticket of the batch: those clients get
//! `SERVER_ERROR`, never an acknowledgement, and the keys are dropped from
//! memory.
//!
//! # Compaction
//!
//! When the file is larger than twice its size after the last rewrite and
//! than a minimum (64 MiB by default), the writer starts a rewrite thread
//! that dumps the live dataset to `PATH.rewrite` and syncs it. Meanwhile the
//! writer keeps appending to the old file and also keeps a copy of what it
//! appended. When the dump is done, the writer appends that copy to the new
//! file, syncs it, renames it over the old one and syncs the directory.
//! Replaying the copied tail over the dump is correct because every record
//! sets a key's complete state.
//!
//! # Replay
//!
//! A torn or corrupt *last* record (a crash during a write) is cut off with a
//! warning. A bad record followed by more data is corruption in the middle of
//! the file: the server refuses to start rather than silently drop the rest.
//!
//! Evictions are not logged: after a restart the same memory limit evicts
//! again, possibly other items (it is a cache).
//!
//! # Files
//!
//! [`record`] holds the file format, [`writer`] the writer thread and the
//! journal, [`compact`] compaction, [`replay`] the start-up replay.

use std::path::PathBuf;

mod compact;
mod record;
mod replay;
#[cfg(test)]
mod tests;
mod writer;

use compact::{rewrite_path, Rewrite};
use record::MAX_RECORD;
pub use record::{crc32, Record, MAGIC};
pub use replay::replay;
pub use writer::{Journal, Ticket};
use writer::{Msg, Writer};

/// When the log is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// `fdatasync` before every acknowledgement (grouped across clients).
    Always,
    /// Acknowledge after the write; `fdatasync` once a second.
    Everysec,
    /// Never sync explicitly.
    No,
}

/// Settings of the log writer.
#[derive(Debug, Clone)]
pub struct Config {
    /// The log file.
    pub path: PathBuf,
    /// Sync policy.
    pub fsync: Fsync,
    /// No compaction below this size.
    pub rewrite_min: u64,
}
