//! Time: the clock, expiry times, `flush_all` and the expiry sweep (see
//! "Expiry and flush" in the module docs).

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::aof::Record;

use super::*;

/// Where the store gets "now" from.
#[derive(Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A settable clock for tests, in Unix seconds.
    #[cfg(test)]
    Manual(AtomicU64),
}

/// Unix seconds from `CLOCK_REALTIME_COARSE`: the time of the last timer
/// tick (a few ms old at most), read from memory the kernel shares with
/// the process, without the time-stamp counter read and scaling that
/// `SystemTime::now` does. A request reads the clock about three times
/// (expiry, last access, the connection's last read), and on a virtual
/// machine the precise clock cost 30-40 ns a read; memcached reads a
/// clock variable a timer updates once a second.
fn coarse_unix_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is one
    // Linux has had since 2.6.32.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if r == 0 {
        ts.tv_sec.max(0) as u64
    } else {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

impl Clock {
    /// Now, in Unix seconds.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => coarse_unix_secs(),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    #[cfg(test)]
    pub fn advance(&self, secs: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}

impl Store {
    /// Converts a protocol expiry (0 = never, negative = already expired,
    /// up to 30 days = relative, beyond = absolute Unix time) to an absolute
    /// Unix time (0 = never).
    pub fn abs_expiry(&self, exptime: i64) -> u64 {
        if exptime == 0 {
            0
        } else if exptime < 0 {
            1
        } else if exptime <= REL_EXPIRY_MAX {
            self.now() + exptime as u64
        } else {
            exptime as u64
        }
    }

    /// `flush_all`: with `delay <= 0` everything goes now; otherwise items
    /// stored before now + delay become invalid at that time.
    pub fn flush(&self, delay: i64) -> Persisted<()> {
        bump(&self.stats.cmd_flush);
        self.journal_check()?;
        let at = if delay > 0 { self.abs_expiry(delay) } else { 0 };
        // All shard locks, in order, so the flush is one point in every
        // key's history and in the journal.
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            (0..self.shards.len()).map(|i| self.lock(i)).collect();
        self.apply_flush(&mut guards, at);
        let ticket = self.journal_submit(|| Record::Flush { at });
        drop(guards);
        match ticket {
            None => Ok(()),
            Some(t) => t.wait(),
        }
    }

    pub(crate) fn apply_flush(&self, guards: &mut [MutexGuard<'_, Shard>], at: u64) {
        if at == 0 {
            self.flush_at.store(0, Ordering::Relaxed);
            for g in guards.iter_mut() {
                g.clear(&self.stats);
            }
        } else {
            self.flush_at.store(at, Ordering::Relaxed);
        }
    }

    /// Removes expired and flushed items, examining at most `budget` slots
    /// (spread over the shards in turn). Returns how many were removed.
    pub fn sweep_expired(&self, budget: usize) -> usize {
        let now = self.now();
        let per_shard = budget.div_ceil(self.shards.len()).max(1);
        let mut removed = 0;
        let mut examined = 0;
        while examined < budget {
            let i = self.sweep_shard.fetch_add(1, Ordering::Relaxed) & (self.shards.len() - 1);
            let mut sh = self.lock(i);
            let len = sh.capacity();
            if sh.len() == 0 {
                examined += per_shard;
                continue;
            }
            let mut cursor = sh.sweep_cursor % len;
            for _ in 0..per_shard.min(len) {
                let dead = matches!(sh.slot(cursor), Some(e) if self.dead(e, now).is_some());
                if dead {
                    // The rest of the cluster shifts back into this slot:
                    // look at it again.
                    sh.remove(cursor, &self.stats);
                    bump(&self.stats.reclaimed);
                    removed += 1;
                } else {
                    cursor = (cursor + 1) % len;
                }
            }
            sh.sweep_cursor = cursor;
            examined += per_shard;
        }
        removed
    }

    /// A pending delayed flush (Unix seconds), if one is set.
    pub fn pending_flush(&self) -> u64 {
        self.flush_at.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse clock the store reads tells the same second as the
    /// precise one (give or take the tick it lags by, and a second
    /// boundary between the two reads).
    #[test]
    fn the_coarse_clock_keeps_unix_seconds() {
        for _ in 0..100 {
            let precise = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let coarse = Clock::System.now();
            assert!(
                coarse + 1 >= precise && coarse <= precise + 1,
                "{coarse} against {precise}"
            );
        }
    }
}
