//! Time: [`sleep`], scoped deadlines ([`timeout`], [`timeout_at`]), and the
//! per-worker timers behind them and behind `park_timeout` and I/O
//! deadlines.
//!
//! A binary heap of deadlines over a slab of live entries. Inserting is
//! `O(log n)`, cancelling is `O(1)` (the slab slot is freed and its heap entry
//! goes stale), firing pops in deadline order and skips stale entries. When
//! stale entries outnumber live ones by more than two to one the heap is
//! rebuilt, so a connection that arms and cancels a read deadline on every
//! request cannot grow the heap without bound.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

mod sleep;
mod timeout;
pub use sleep::{sleep, sleep_until};
pub use timeout::{timeout, timeout_at, Elapsed};

/// Identifies one armed timer, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: u32,
    gen: u32,
}

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    value: Option<T>,
}

/// A set of timers, each carrying a `T` handed back when it fires.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Arms a timer firing at `deadline` with `value`.
    pub(crate) fn insert(&mut self, deadline: Instant, value: T) -> TimerKey {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.gen = entry.gen.wrapping_add(1);
        entry.value = Some(value);
        self.live += 1;
        self.heap.push(Reverse((deadline, slot, entry.gen)));
        TimerKey {
            slot,
            gen: entry.gen,
        }
    }

    /// Disarms a timer; returns its value if it had not fired yet.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let entry = self.slots.get_mut(key.slot as usize)?;
        if entry.gen != key.gen {
            return None;
        }
        let value = entry.value.take()?;
        self.live -= 1;
        self.free.push(key.slot);
        if self.heap.len() > 2 * self.live + 64 {
            self.compact();
        }
        Some(value)
    }

    fn is_live(&self, slot: u32, gen: u32) -> bool {
        let s = &self.slots[slot as usize];
        s.gen == gen && s.value.is_some()
    }

    fn compact(&mut self) {
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter(|Reverse((_, slot, gen))| self.is_live(*slot, *gen))
            .collect();
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, slot, gen))) = self.heap.peek().copied() {
            if self.is_live(slot, gen) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one timer due at `now`, earliest first.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        while let Some(Reverse((deadline, slot, gen))) = self.heap.peek().copied() {
            if !self.is_live(slot, gen) {
                self.heap.pop();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.heap.pop();
            return self.cancel(TimerKey { slot, gen });
        }
        None
    }

    /// Number of armed timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.insert(t0 + Duration::from_millis(30), 3);
        t.insert(t0 + Duration::from_millis(10), 1);
        t.insert(t0 + Duration::from_millis(20), 2);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(t.pop_expired(now), Some(1));
        assert_eq!(t.pop_expired(now), Some(2));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancel_prevents_firing_and_stale_keys_are_ignored() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(t0, 'a');
        assert_eq!(t.cancel(a), Some('a'));
        assert_eq!(t.cancel(a), None);
        // The slot is reused with a new generation: the old key stays dead.
        let b = t.insert(t0, 'b');
        assert_eq!(t.cancel(a), None);
        assert_eq!(t.pop_expired(t0), Some('b'));
        assert_eq!(t.cancel(b), None);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn heap_stays_bounded_under_arm_cancel_churn() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let keep = t.insert(t0 + Duration::from_secs(60), 0);
        for i in 0..100_000 {
            let k = t.insert(t0 + Duration::from_secs(30), i);
            t.cancel(k);
        }
        assert!(
            t.heap.len() <= 2 * t.live + 65,
            "heap grew to {}",
            t.heap.len()
        );
        assert_eq!(t.cancel(keep), Some(0));
    }
}
