//! Fiber-aware synchronisation: channels, a oneshot, `Mutex`, `RwLock`,
//! `Condvar`, `Semaphore`, `WaitGroup` and `Barrier`.
//!
//! Every primitive here works from fibers **and** plain OS threads, in any
//! mix: a fiber that has to wait parks and its worker runs other fibers; a
//! thread that has to wait blocks. So a thread can feed a fiber through a
//! channel, a fiber can release a thread waiting on a semaphore, and so on.
//! The shapes follow `std::sync` (and `std::sync::mpsc`), with the same error
//! types and poisoning rules.
//!
//! | type | what for |
//! |------|----------|
//! | [`channel`], [`sync_channel`] ([`mpsc`]) | many senders, one receiver; unbounded, bounded, rendezvous |
//! | [`mpmc::channel`], [`mpmc::sync_channel`] | the same with a cloneable receiver (a work queue) |
//! | [`oneshot::channel`] | one value, once |
//! | [`Mutex`], [`RwLock`], [`Condvar`] | shared state; guards may be held across a park |
//! | [`Semaphore`] | bound concurrency (at most `n` inside) |
//! | [`WaitGroup`], [`Barrier`] | wait for a group to finish, or to meet |
//!
//! # How waiting works
//!
//! All primitives are built on one waiter queue (`waiter.rs`): each keeps its
//! state and FIFO queues of waiters under a `std::sync::Mutex` held for a few
//! instructions and never across a park. A waiter checks its condition and
//! enqueues itself under that lock, releases it, and parks until a flag in its
//! queue node says it was woken; a notifier changes the state, pops waiters
//! and sets their flags under the same lock, and unparks them after releasing
//! it. So a wakeup can never fall between "checked the condition" and
//! "parked", and a wakeup given to a waiter whose timeout fired at the same
//! moment is not lost: the waiter finds the flag set and acts on it (it owns
//! the lock or permit it was handed, or re-checks the condition before it
//! gives up). Waiters are woken in arrival order. (The receiver of an
//! [`mpsc`] channel, alone of its kind, waits in one slot of the channel
//! instead of a queue node, under the same lock and the same rules.)
//!
//! # Compared with `std::sync`
//!
//! - A std `Mutex` or channel used from a fiber blocks the whole worker
//!   thread, and every fiber on it; these park only the fiber.
//! - Holding a [`MutexGuard`] across a park (a socket read, a `sleep`) is
//!   fine here: the other fibers of that worker keep running. (A started
//!   fiber never changes thread, so guards, which are `!Send` like std's, stay
//!   on their thread.)
//! - [`Mutex`] and [`RwLock`] hand the lock to the next waiter directly when
//!   there is one: no waiter can be starved by newcomers.
//!
//! # Examples
//!
//! A fiber and a plain thread talking over two channels:
//!
//! ```
//! use weave::sync;
//! let rt = weave::Runtime::builder().workers(2).build()?;
//! let (to_fiber, from_thread) = sync::channel::<u32>();
//! let (to_thread, from_fiber) = sync::sync_channel::<u32>(1);
//! let fiber = rt.spawn(move || {
//!     for n in from_thread {
//!         to_thread.send(n * 2).unwrap();
//!     }
//! });
//! for n in 0..10 {
//!     to_fiber.send(n).unwrap();
//!     assert_eq!(from_fiber.recv().unwrap(), n * 2);
//! }
//! drop(to_fiber);
//! fiber.join().unwrap();
//! # Ok::<(), std::io::Error>(())
//! ```

mod barrier;
pub mod broadcast;
mod chan;
mod condvar;
mod error;
pub mod mpmc;
pub mod mpsc;
mod mutex;
pub mod oneshot;
mod rwlock;
mod semaphore;
mod wait_group;
pub(crate) mod waiter;

pub use barrier::{Barrier, BarrierWaitResult};
pub use condvar::{Condvar, WaitTimeoutResult};
pub use error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::{Semaphore, SemaphorePermit};
pub use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};
pub use wait_group::WaitGroup;
