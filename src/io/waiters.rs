//! A socket's readiness word and its waiters, on their own.
//!
//! [`Waiters`] is the part of a registration the poller and the waiting
//! fibers share: the readiness word (see the [module docs](super) for the
//! bits and the tick), one lock-free slot per direction for the waiter that
//! is almost always alone, and, behind a mutex, whatever does not fit there
//! (a second waiter of one direction, the readability hook of request
//! mode).
//!
//! # The slot protocol
//!
//! The common case is one fiber waiting to read and the poller reporting
//! the socket readable. Neither side takes a lock:
//!
//! * the waiter puts its handle in its direction's slot (a CAS from empty,
//!   with a counted reference the slot then owns), then reads the word;
//! * the poller sets the word's bits (a read-modify-write), then empties the
//!   slot (a swap) and wakes whoever it finds there.
//!
//! If the swap comes first in the slot's order, the waiter's CAS reads what
//! the swap wrote and, acquiring it, sees the poller's bits when it reads
//! the word. If the CAS comes first, the swap finds the handle. So either
//! the waiter sees the bit, or the poller sees the waiter: no wakeup is
//! lost, and no `SeqCst` is needed. When the waiter finds the bit set it
//! takes its handle back with a CAS; if that fails the poller has taken it,
//! and its wakeup is on the way, so the waiter parks to consume it. A
//! handle is never in a slot without its count, and every count leaves
//! exactly one way: the poller's swap, the waiter's withdrawal, or the drop
//! of the registration.
//!
//! A second waiter of the same direction (two fibers reading one socket, a
//! [`Select`](crate::Select) watching it beside a reader), and the hook, go
//! into the locked list and set the word's `CROWDED` bit, with a
//! read-modify-write that also tells them whether their direction's bit is
//! set. The poller learns from its own read-modify-write of the word
//! whether `CROWDED` was set, and takes the lock only then. Both sides
//! write the one word, so one of them sees the other's.
//!
//! # Model checking
//!
//! This file takes its atomics and its mutex from `super::waiters_sync`:
//! std's in weave, loom's in the model crate `tests/loom_park`, which
//! compiles this very file and explores the interleavings of waiters, the
//! poller and withdrawals for lost wakeups and leaked or doubly released
//! counts. Keep it free of other dependencies so that crate can build it.

use super::waiters_sync::{AtomicUsize, Mutex, Ordering};

/// Read readiness (also set on hang-up and error).
pub(crate) const READ: usize = 0b001;
/// Write readiness (also set on hang-up and error).
pub(crate) const WRITE: usize = 0b010;
/// A read hang-up or an error was reported; never cleared.
pub(crate) const HUP: usize = 0b100;
/// The locked list holds a waiter or a hook.
const CROWDED: usize = 0b1000;
const TICK_SHIFT: u32 = 4;

/// A handle to something that can wait in a slot: a counted reference that
/// can be turned into a nonzero word and back.
pub(crate) trait Waiter: Clone {
    /// Gives up the handle for a nonzero word that owns its count.
    fn into_raw(self) -> usize;

    /// Takes back a handle given up by [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `raw` came from `into_raw`, and is taken back only once.
    unsafe fn from_raw(raw: usize) -> Self;

    /// The word `into_raw` gives for this handle or any clone of it, without
    /// giving anything up: the waiter's identity.
    fn raw(&self) -> usize;
}

/// Slot index of a direction bit.
fn slot_of(bit: usize) -> usize {
    debug_assert!(bit == READ || bit == WRITE);
    (bit == WRITE) as usize
}

/// What does not fit in the slots.
struct Rest<W, H> {
    /// Further waiters, per direction; boxed, since it is almost always
    /// absent and every registered socket carries the pointer.
    #[allow(clippy::type_complexity)]
    lists: Option<Box<[Vec<W>; 2]>>,
    /// Told once when the socket is next reported readable.
    hook: Option<H>,
}

impl<W: Waiter, H> Rest<W, H> {
    fn crowded(&self) -> bool {
        self.hook.is_some()
            || self
                .lists
                .as_ref()
                .is_some_and(|l| l.iter().any(|v| !v.is_empty()))
    }
}

/// The readiness word and the waiters of one registered socket (see the
/// module docs). `W` is the waiter handle, `H` the readability hook.
pub(crate) struct Waiters<W: Waiter, H> {
    /// Ready bits (`READ`, `WRITE`, `HUP`) and `CROWDED` in the low bits,
    /// the event tick above.
    word: AtomicUsize,
    /// The first waiter of each direction (`READ`, `WRITE`), as
    /// [`Waiter::into_raw`] gave it; 0 when empty.
    slots: [AtomicUsize; 2],
    rest: Mutex<Rest<W, H>>,
}

impl<W: Waiter, H> Default for Waiters<W, H> {
    fn default() -> Self {
        Waiters {
            word: AtomicUsize::new(0),
            slots: [AtomicUsize::new(0), AtomicUsize::new(0)],
            rest: Mutex::new(Rest {
                lists: None,
                hook: None,
            }),
        }
    }
}

impl<W: Waiter, H> Waiters<W, H> {
    fn lock(&self) -> super::waiters_sync::MutexGuard<'_, Rest<W, H>> {
        self.rest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The readiness word: a snapshot to try an operation against.
    pub(crate) fn load(&self) -> usize {
        self.word.load(Ordering::Acquire)
    }

    /// Clears `bit` if no event arrived since `snapshot` was read.
    pub(crate) fn clear(&self, bit: usize, snapshot: usize) {
        let _ = self.word.compare_exchange(
            snapshot,
            snapshot & !bit,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The poller's side: records `ready` (`READ`, `WRITE`, `HUP`) with a
    /// new tick, then wakes the waiters of the directions in it. Returns the
    /// hook when `ready` has `READ` and a hook was set.
    pub(crate) fn set(&self, ready: usize, mut wake: impl FnMut(W)) -> Option<H> {
        let before = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let tick = (v >> TICK_SHIFT).wrapping_add(1);
                Some((tick << TICK_SHIFT) | (v & !(usize::MAX << TICK_SHIFT)) | ready)
            })
            .unwrap_or_else(|v| v);
        for bit in [READ, WRITE] {
            if ready & bit != 0 {
                let raw = self.slots[slot_of(bit)].swap(0, Ordering::AcqRel);
                if raw != 0 {
                    // SAFETY: a nonzero slot holds a word from `into_raw`,
                    // and the swap took it out for this call alone.
                    wake(unsafe { W::from_raw(raw) });
                }
            }
        }
        if before & CROWDED == 0 {
            return None;
        }
        let mut rest = self.lock();
        if let Some(lists) = &mut rest.lists {
            for bit in [READ, WRITE] {
                if ready & bit != 0 {
                    lists[slot_of(bit)].drain(..).for_each(&mut wake);
                }
            }
        }
        let hook = if ready & READ != 0 {
            rest.hook.take()
        } else {
            None
        };
        self.uncrowd(&rest);
        hook
    }

    /// Clears `CROWDED` if `rest`, locked by the caller, holds nothing.
    fn uncrowd(&self, rest: &Rest<W, H>) {
        if !rest.crowded() {
            self.word.fetch_and(!CROWDED, Ordering::AcqRel);
        }
    }

    /// Sets `CROWDED`, with `rest` locked by the caller, and returns the
    /// word as it was.
    fn crowd(&self) -> usize {
        self.word.fetch_or(CROWDED, Ordering::AcqRel)
    }

    /// The waiter's side: adds `w` to `bit`'s waiters unless `bit` is set.
    /// Returns whether the caller should park: when it is false, `w` was
    /// not left behind; when it is true, the poller wakes `w` once `bit` is
    /// set (or has already).
    pub(crate) fn add(&self, bit: usize, w: &W) -> bool {
        if self.word.load(Ordering::Acquire) & bit != 0 {
            return false;
        }
        if !self.fill_slot(bit, w) {
            return self.add_crowded(bit, w);
        }
        if self.word.load(Ordering::Acquire) & bit == 0 {
            return true;
        }
        // Ready meanwhile. Take the handle back, unless the poller has
        // taken it: then its wakeup is on the way, and parking consumes it.
        !self.empty_slot(bit, w)
    }

    /// Puts `w` in `bit`'s slot, with a count of its own, if the slot is
    /// empty. Returns whether `w` is in the slot now: true as well when it
    /// still is from an earlier wait that ended otherwise (a timer, another
    /// unpark; the slot's count stands), false when another waiter holds it.
    fn fill_slot(&self, bit: usize, w: &W) -> bool {
        let owned = w.clone().into_raw();
        match self.slots[slot_of(bit)].compare_exchange(
            0,
            owned,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => true,
            Err(occupant) => {
                // SAFETY: `owned` came from `into_raw` just above and was
                // not stored.
                drop(unsafe { W::from_raw(owned) });
                occupant == w.raw()
            }
        }
    }

    /// Takes `w` out of `bit`'s slot, releasing the slot's count, if it is
    /// there. Returns whether it was.
    fn empty_slot(&self, bit: usize, w: &W) -> bool {
        let raw = w.raw();
        let taken = self.slots[slot_of(bit)]
            .compare_exchange(raw, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if taken {
            // SAFETY: the CAS took the slot's word, stored from `into_raw`.
            drop(unsafe { W::from_raw(raw) });
        }
        taken
    }

    /// Adds `w` to `bit`'s locked list (the caller holds `rest`) unless it
    /// is there already, and sets `CROWDED`; returns the word as it was.
    fn push_crowded(&self, rest: &mut Rest<W, H>, bit: usize, w: &W) -> usize {
        let list = &mut rest.lists.get_or_insert_with(Box::default)[slot_of(bit)];
        if !list.iter().any(|x| x.raw() == w.raw()) {
            list.push(w.clone());
        }
        self.crowd()
    }

    /// [`add`](Self::add) when the slot holds another waiter.
    fn add_crowded(&self, bit: usize, w: &W) -> bool {
        let mut rest = self.lock();
        if self.push_crowded(&mut rest, bit, w) & bit == 0 {
            return true;
        }
        self.pull_crowded(&mut rest, bit, w);
        false
    }

    /// Takes `w` out of `bit`'s locked list (the caller holds `rest`), and
    /// clears `CROWDED` if nothing is left there.
    fn pull_crowded(&self, rest: &mut Rest<W, H>, bit: usize, w: &W) {
        if let Some(lists) = &mut rest.lists {
            lists[slot_of(bit)].retain(|x| x.raw() != w.raw());
        }
        self.uncrowd(rest);
    }

    /// Adds `w` to `bit`'s waiters whatever the word says: for a caller that
    /// asks the kernel itself after watching (a [`Select`](crate::Select)).
    pub(crate) fn watch(&self, bit: usize, w: &W) {
        if !self.fill_slot(bit, w) {
            self.push_crowded(&mut self.lock(), bit, w);
        }
    }

    /// Withdraws `w` from `bit`'s waiters, wherever it is.
    pub(crate) fn remove(&self, bit: usize, w: &W) {
        self.empty_slot(bit, w);
        // Only the caller puts `w` in the list, so it sees `CROWDED` if `w`
        // may be there.
        if self.word.load(Ordering::Acquire) & CROWDED != 0 {
            self.pull_crowded(&mut self.lock(), bit, w);
        }
    }

    /// Hands over `hook`, to be returned by the [`set`](Self::set) that
    /// next reports `READ`, unless `READ` or `HUP` is set now (then returns
    /// false and drops it). At most one hook: a new one replaces the old.
    pub(crate) fn set_hook(&self, hook: H) -> bool {
        if self.word.load(Ordering::Acquire) & (READ | HUP) != 0 {
            return false;
        }
        let mut rest = self.lock();
        rest.hook = Some(hook);
        if self.crowd() & (READ | HUP) == 0 {
            return true;
        }
        rest.hook = None;
        self.uncrowd(&rest);
        false
    }
}

impl<W: Waiter, H> Drop for Waiters<W, H> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let raw = slot.swap(0, Ordering::Relaxed);
            if raw != 0 {
                // SAFETY: a nonzero slot holds a word from `into_raw`, taken
                // out by the swap; nothing else can reach it any more.
                drop(unsafe { W::from_raw(raw) });
            }
        }
    }
}
