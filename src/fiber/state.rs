//! The park/unpark state word of a fiber, on its own.
//!
//! [`ParkState`] holds nothing but the atomic word and its transitions; the
//! fiber object ([`RawFiber`](super::raw::RawFiber)) owns one and does the
//! scheduling that the transitions ask for. See the `raw` module for the
//! protocol.
//!
//! # Model checking
//!
//! This file takes its atomics from `super::state_atomic`: std's in weave,
//! loom's in the model crate `tests/loom_park`, which compiles this very file
//! and explores every interleaving of a parking fiber, its worker and
//! concurrent unparkers. Run it with
//!
//! ```text
//! CARGO_TARGET_DIR=target/loom cargo test --release --manifest-path tests/loom_park/Cargo.toml
//! ```
//!
//! Keep this file free of other dependencies so the model crate can build it.

use super::state_atomic::{AtomicU8, Ordering};

/// Running now, or queued to run; no unpark token pending.
pub(crate) const RUNNING: u8 = 0;
/// As `RUNNING`, with an unpark token pending.
pub(crate) const NOTIFIED: u8 = 1;
/// Switched out and in no queue: only an unpark can requeue it.
pub(crate) const PARKED: u8 = 2;
/// Finished; unparks are ignored.
pub(crate) const DONE: u8 = 3;

/// Cancellation word: nobody asked the fiber to stop.
const CANCEL_NONE: u8 = 0;
/// Cancellation word: [`ParkState::request_cancel`] was called.
const CANCEL_REQUESTED: u8 = 1;

/// A fiber's state word (`RUNNING`, `NOTIFIED`, `PARKED` or `DONE`) and its
/// cancellation word.
///
/// # Cancellation
///
/// Cancelling is "set the word, then unpark" ([`request_cancel`] then
/// [`unpark`]); the fiber checks the word on entry to every park and after
/// every switch back (see `fiber::cancel`). No request is lost: if the
/// fiber's check ran before the word was set, the unpark that follows either
/// finds it `PARKED` and requeues it, or leaves a token that its park
/// consumes, and both the requeue and the token's consumption are acquire
/// operations ordered after the release store of the word. Either way the
/// fiber's next check sees the request. The loom model checks this
/// (`cancel_is_never_lost`).
///
/// [`request_cancel`]: ParkState::request_cancel
/// [`unpark`]: ParkState::unpark
pub(crate) struct ParkState(AtomicU8, AtomicU8);

impl ParkState {
    /// A fiber that is about to run (or queued to), with no token.
    #[inline]
    pub(crate) fn new() -> ParkState {
        ParkState(AtomicU8::new(RUNNING), AtomicU8::new(CANCEL_NONE))
    }

    /// Records a cancellation request. Returns `true` for the first request
    /// (the caller then unparks the fiber), `false` if one was already made.
    #[inline]
    pub(crate) fn request_cancel(&self) -> bool {
        self.1.swap(CANCEL_REQUESTED, Ordering::Release) == CANCEL_NONE
    }

    /// True once a cancellation was requested (it stays requested).
    #[inline]
    pub(crate) fn cancel_requested(&self) -> bool {
        self.1.load(Ordering::Acquire) == CANCEL_REQUESTED
    }

    /// Consumes a pending token, if any. Called by the fiber before it
    /// switches out to park.
    #[inline]
    pub(crate) fn try_consume_token(&self) -> bool {
        self.0
            .compare_exchange(NOTIFIED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Second phase of parking, run by the worker after the fiber switched
    /// out. Returns `true` if the fiber is now parked, `false` if a token
    /// arrived and the fiber must be requeued.
    #[inline]
    pub(crate) fn publish_parked(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(NOTIFIED) => {
                // Consume the token with a read-modify-write, not a store:
                // another unparker may rewrite the token between the failed
                // compare-exchange and here, and its writes must become
                // visible to the fiber, which is about to run again.
                self.0.swap(RUNNING, Ordering::AcqRel);
                false
            }
            Err(s) => unreachable!("fiber parked in state {s}"),
        }
    }

    /// Gives the fiber a token. Returns `true` if the fiber was parked: it is
    /// `RUNNING` again and the caller must requeue it (exactly one unpark
    /// gets `true` per park).
    #[inline]
    pub(crate) fn unpark(&self) -> bool {
        let mut s = self.0.load(Ordering::Acquire);
        loop {
            let next = match s {
                RUNNING => NOTIFIED,
                PARKED => RUNNING,
                // A token is already there, but this unpark must still
                // publish the caller's earlier writes to the park that will
                // consume it (as std's `unpark` does): rewrite the token with
                // release ordering. A plain load here would let the fiber
                // consume the other unparker's token without seeing them, and
                // park again for good.
                NOTIFIED => NOTIFIED,
                _ => return false, // DONE: too late.
            };
            match self
                .0
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return s == PARKED,
                Err(actual) => s = actual,
            }
        }
    }

    /// The fiber finished (or was dropped): every later unpark is ignored.
    ///
    /// A swap, not a store: the effect is the same, and loom models an RMW
    /// racing a concurrent `unpark`'s compare-exchange exactly, where it can
    /// let a plain store land between that compare-exchange's read and write.
    #[inline]
    pub(crate) fn mark_done(&self) {
        self.0.swap(DONE, Ordering::Release);
    }
}

impl std::fmt::Debug for ParkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0.load(Ordering::Acquire) {
            RUNNING => "Running",
            NOTIFIED => "Notified",
            PARKED => "Parked",
            DONE => "Done",
            _ => "Invalid",
        };
        f.write_str(name)
    }
}
