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
//! Payloads start with an opcode byte: `5` set (flags u32, expiry u64,
//! stored-at u64, CAS unique u64, key length u16, key, value), `2` delete
//! (key), `3` touch (expiry u64, key), `4` flush (time u64, 0 = immediate),
//! `6` CAS floor (u64); `1`, a set without its unique, is still read. Numbers
//! are little-endian; times are absolute Unix seconds. Every storage command
//! (set, add, replace, append, prepend, cas, incr, decr) is logged as a `set`
//! of the resulting item, so replay never depends on earlier values.
//!
//! # What is logged
//!
//! Replay must end in the state clients saw. So besides every change, a
//! command that found its key absent and said so (`delete` answering
//! `NOT_FOUND`; `touch`, `incr`/`decr`, `cas`, `replace`, `append`,
//! `prepend` missing) logs a delete: the log may still hold an older value
//! of that key, which was evicted, expired or lost to a failed write, and
//! must not come back after a restart. Evictions themselves are not logged:
//! after a restart the same memory limit evicts again, possibly other items
//! (it is a cache).
//!
//! CAS uniques are logged with each set and restored by replay. Each start
//! logs a floor 2^32 above the highest unique seen (a compacted log starts
//! with one too), and uniques continue above it: a unique handed out before
//! a crash, even one whose write was lost, is never handed out again.
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
//! A failed sync with `everysec` is not only logged: until a sync succeeds
//! (the writer retries every second) every mutation is refused with
//! `SERVER_ERROR` before it changes anything, as Redis does, and `stats`
//! counts it (`aof_fsync_errors`, `aof_writes_refused`). The kernel may drop
//! the pages whose write-back failed, so acknowledging more writes would
//! promise durability it cannot give.
//!
//! The journal's sender is a channel send (no process-wide lock on the
//! write path); the writer stops when the journal is dropped.
//!
//! # Compaction
//!
//! When the file is larger than twice its size after the last rewrite and
//! than a minimum (64 MiB by default), the writer starts a rewrite thread
//! that dumps the live dataset to `PATH.rewrite` and syncs it. Meanwhile the
//! writer keeps appending to the old file and also keeps a copy of what it
//! appended. The dump copies items out a few hundred slots at a time, never
//! holding a shard's lock for longer. When the dump is done, the writer
//! appends that copy to the new file, syncs it, renames it over the old one
//! and syncs the directory. Replaying the copied tail over the dump is correct because every record
//! sets a key's complete state.
//!
//! # Replay and the lock
//!
//! The log is locked (`flock`, exclusive) before replay and for as long as
//! the process runs: a second kv on the same file refuses to start.
//!
//! After the last complete record, a torn record (a crash during a write)
//! or zero bytes (a power cut after the file grew but before its blocks
//! were written, which ext4 and XFS can leave even with fsync) are cut off
//! with a warning. A zero-length frame is never valid (every payload has an
//! opcode), so zeros cannot pass for records. A bad record *followed by
//! valid ones* is corruption in the middle of the file: the server refuses
//! to start, naming the offset, rather than silently drop the rest;
//! `--aof-truncate-corrupt OFFSET` cuts the log there deliberately.
//!
//! # Files
//!
//! [`record`] holds the file format, [`writer`] the writer thread and the
//! journal, [`compact`] compaction, [`replay`] the start-up replay, [`file`]
//! the file layer (and the lock) under all of them, with the power-cut
//! simulation its seam allows (`crash_tests`).

use std::path::PathBuf;
use std::sync::Arc;

mod compact;
#[cfg(test)]
mod crash_tests;
pub mod file;
mod record;
mod replay;
#[cfg(test)]
mod tests;
mod writer;

use compact::{rewrite_path, Rewrite};
use file::{LogFile, LogFs};
use record::MAX_RECORD;
pub use record::{crc32, Record, MAGIC};
#[cfg(test)]
pub use replay::ReplayReport;
pub use replay::{replay, Replayed};
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
    /// The file layer ([`file::Disk`] but in tests).
    pub fs: Arc<dyn LogFs>,
}

impl Config {
    /// Settings for the log at `path` on disk, compacted from 64 MiB on.
    pub fn new(path: PathBuf, fsync: Fsync) -> Config {
        Config {
            path,
            fsync,
            rewrite_min: 64 << 20,
            fs: Arc::new(file::Disk),
        }
    }
}
