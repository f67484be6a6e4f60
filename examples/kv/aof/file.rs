//! The log's file layer: every write, sync, cut-back, creation and rename
//! the writer and compaction make goes through [`LogFs`] and [`LogFile`].
//!
//! [`Disk`] is the real thing. The seam exists so that a test can stand in a
//! file system that loses, at a simulated power cut, every byte written
//! after the last successful `fdatasync` (what the page cache of a machine
//! that lost power does): `CrashFs` in the tests. A SIGKILL cannot show
//! that, since the page cache outlives the process.
//!
//! # The lock
//!
//! The log file is held under an exclusive `flock` for as long as the
//! process uses it, so a second kv on the same file refuses to start instead
//! of interleaving its writes. The lock belongs to the open file, so it ends
//! with the process however it exits. Compaction renames a new file over the
//! log: that file is locked before the rename, and [`lock`] checks after
//! locking that the path still names the file it locked (a process that
//! opened the old file just before a rename would otherwise get its lock
//! once the old file is closed).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// An open log file, as the writer uses it: appends, syncs, cut-backs.
pub trait LogFile: Send + fmt::Debug {
    /// Appends all of `buf`.
    ///
    /// # Errors
    ///
    /// The write failed (part of `buf` may have been written).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Makes every byte written so far durable (`fdatasync`).
    ///
    /// # Errors
    ///
    /// The sync failed: what was written since the last successful sync may
    /// be lost.
    fn sync_data(&mut self) -> io::Result<()>;

    /// Cuts the file to `len` bytes (after a failed write).
    ///
    /// # Errors
    ///
    /// The truncation failed.
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// The file's current length.
    ///
    /// # Errors
    ///
    /// `fstat` failed.
    fn len(&self) -> io::Result<u64>;
}

/// The file operations of the writer and compaction.
pub trait LogFs: Send + Sync + fmt::Debug {
    /// Takes over the log at `path`, already opened (and locked) by [`lock`]
    /// and replayed.
    fn adopt(&self, path: &Path, file: File) -> Box<dyn LogFile>;

    /// Creates `path` (removing any old file there), empty and locked, for a
    /// compaction to write.
    ///
    /// # Errors
    ///
    /// It cannot be created or locked.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;

    /// Renames `from` over `to`.
    ///
    /// # Errors
    ///
    /// The rename failed.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Syncs the directory holding `path` (to make a rename durable).
    ///
    /// # Errors
    ///
    /// It cannot be opened or synced.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct Disk;

impl LogFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl LogFs for Disk {
    fn adopt(&self, _path: &Path, file: File) -> Box<dyn LogFile> {
        Box::new(file)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)?;
        flock_exclusive(&f).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))
        })?;
        Ok(Box::new(f))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

/// `flock(LOCK_EX | LOCK_NB)`.
fn flock_exclusive(f: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this `File` owns and keeps open for
        // the duration of the call; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens the log at `path` for reading and appending (creating it if
/// missing) under an exclusive lock held until the returned file is closed.
///
/// # Errors
///
/// It cannot be opened, or another process holds the lock (the message
/// says so and names the file).
pub fn lock(path: &Path) -> io::Result<File> {
    // A compaction in another process may rename a new file over `path`
    // between our open and our lock; then the file we locked is no longer
    // the log. Retry a few times, then give up loudly.
    for _ in 0..100 {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if let Err(e) = flock_exclusive(&f) {
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked by another process (is another kv using this log?)",
                        path.display()
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))
            });
        }
        let ours = f.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => return Ok(f),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "{} keeps being replaced while it is opened (is another kv using this log?)",
            path.display()
        ),
    ))
}

/// A file system that keeps, for every file, how much of it was durable at
/// its last successful sync, and can simulate a power cut: [`CrashFs::crash`]
/// makes every later operation fail (the machine is gone: no more
/// acknowledgements) and [`CrashFs::apply`] cuts every file back to its
/// durable length, dropping what only reached the page cache. It can also
/// make the next syncs fail.
///
/// The log is append-only (bytes below a synced length are never written
/// again) and compaction writes a new file, syncs it and renames it over
/// the log, so "the durable length" is the whole durable state of a file.
/// Renames are taken as durable at once.
#[cfg(test)]
pub mod sim {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    #[derive(Debug)]
    struct Durable {
        len: AtomicU64,
        /// Where the file is now (renames move it).
        path: Mutex<PathBuf>,
    }

    #[derive(Debug, Default)]
    struct Shared {
        /// The log's path: syncs of this file are counted.
        log: Mutex<Option<PathBuf>>,
        created: AtomicU64,
        crashed: AtomicBool,
        fail_writes: AtomicU32,
        fail_syncs: AtomicU32,
        syncs: AtomicU64,
        failed_syncs: AtomicU64,
        /// When the last successful sync started.
        last_sync_start: Mutex<Option<Instant>>,
        files: Mutex<HashMap<PathBuf, Arc<Durable>>>,
    }

    /// See the [module](self) docs.
    #[derive(Debug, Default, Clone)]
    pub struct CrashFs(Arc<Shared>);

    #[derive(Debug)]
    struct SimFile {
        inner: Box<dyn LogFile>,
        durable: Arc<Durable>,
        fs: Arc<Shared>,
    }

    /// Takes one from a countdown of injected failures; true if there was
    /// one.
    fn take_one(n: &AtomicU32) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn gone() -> io::Error {
        io::Error::other("simulated power cut")
    }

    impl CrashFs {
        /// A fresh simulation.
        pub fn new() -> CrashFs {
            CrashFs::default()
        }

        /// The power goes: every operation from now on fails.
        pub fn crash(&self) {
            self.0.crashed.store(true, Ordering::SeqCst);
        }

        /// After [`CrashFs::crash`] and once the writer is stopped: cuts
        /// every file back to what was durable.
        pub fn apply(&self) {
            assert!(self.0.crashed.load(Ordering::SeqCst), "apply before crash");
            for (path, d) in self.0.files.lock().unwrap().iter() {
                let len = d.len.load(Ordering::SeqCst);
                if let Ok(f) = OpenOptions::new().write(true).open(path) {
                    if f.metadata().map(|m| m.len() > len).unwrap_or(false) {
                        f.set_len(len).expect("cut back to the durable length");
                    }
                }
            }
        }

        /// The next `n` writes fail with ENOSPC (nothing written).
        pub fn fail_next_writes(&self, n: u32) {
            self.0.fail_writes.store(n, Ordering::SeqCst);
        }

        /// The next `n` syncs fail with EIO.
        pub fn fail_next_syncs(&self, n: u32) {
            self.0.fail_syncs.store(n, Ordering::SeqCst);
        }

        /// Files created (compactions started).
        pub fn created(&self) -> u64 {
            self.0.created.load(Ordering::SeqCst)
        }

        /// Successful syncs of the log (not of a compaction's new file
        /// before it is renamed over the log) so far.
        pub fn syncs(&self) -> u64 {
            self.0.syncs.load(Ordering::SeqCst)
        }

        /// Failed syncs so far.
        pub fn failed_syncs(&self) -> u64 {
            self.0.failed_syncs.load(Ordering::SeqCst)
        }

        /// When the last successful sync of the log started: every byte
        /// written to it before then is durable.
        pub fn last_sync_start(&self) -> Option<Instant> {
            *self.0.last_sync_start.lock().unwrap()
        }

        fn track(&self, path: &Path, inner: Box<dyn LogFile>, len: u64) -> Box<dyn LogFile> {
            let durable = Arc::new(Durable {
                len: AtomicU64::new(len),
                path: Mutex::new(path.to_owned()),
            });
            self.0
                .files
                .lock()
                .unwrap()
                .insert(path.to_owned(), durable.clone());
            Box::new(SimFile {
                inner,
                durable,
                fs: self.0.clone(),
            })
        }
    }

    impl LogFs for CrashFs {
        fn adopt(&self, path: &Path, file: File) -> Box<dyn LogFile> {
            // What replay read is on disk.
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            *self.0.log.lock().unwrap() = Some(path.to_owned());
            self.track(path, Disk.adopt(path, file), len)
        }

        fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
            if self.0.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            let f = Disk.create(path)?;
            self.0.created.fetch_add(1, Ordering::SeqCst);
            Ok(self.track(path, f, 0))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            if self.0.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            Disk.rename(from, to)?;
            let mut files = self.0.files.lock().unwrap();
            if let Some(d) = files.remove(from) {
                *d.path.lock().unwrap() = to.to_owned();
                files.insert(to.to_owned(), d);
            }
            Ok(())
        }

        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            if self.0.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            Disk.sync_dir(path)
        }
    }

    impl LogFile for SimFile {
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            if self.fs.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            if take_one(&self.fs.fail_writes) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.inner.append(buf)
        }

        fn sync_data(&mut self) -> io::Result<()> {
            if self.fs.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            let start = Instant::now();
            if take_one(&self.fs.fail_syncs) {
                self.fs.failed_syncs.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let len = self.inner.len()?;
            self.inner.sync_data()?;
            self.durable.len.fetch_max(len, Ordering::SeqCst);
            let is_log = self.fs.log.lock().unwrap().as_deref()
                == Some(self.durable.path.lock().unwrap().as_path());
            if is_log {
                *self.fs.last_sync_start.lock().unwrap() = Some(start);
                self.fs.syncs.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.fs.crashed.load(Ordering::SeqCst) {
                return Err(gone());
            }
            self.inner.set_len(len)?;
            self.durable.len.fetch_min(len, Ordering::SeqCst);
            Ok(())
        }

        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
    }
}
