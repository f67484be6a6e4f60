//! Set-up shared by the criterion benches that compare weave with `may`.

use std::sync::Once;
use std::time::Duration;

use criterion::Criterion;

/// Short runs: the numbers are compared within one run, side by side.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args()
}

/// `may` with one unpinned worker, configured once before its first use.
pub fn may_one_worker() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        may::config().set_workers(1).set_worker_pin(false);
    });
}

/// Spawns a `may` coroutine.
pub fn may_spawn<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: may's spawn is unsafe because coroutines may migrate between
    // threads (so thread-locals read across a switch can be stale) and
    // because their stacks have no overflow check. Every closure the benches
    // spawn only touches atomics, `Instant` and may's own primitives (locks,
    // channels), uses far less than may's default stack, and holds no
    // thread-local across a switch.
    unsafe { may::coroutine::spawn(f) }
}

/// A weave runtime with `workers` workers.
pub fn weave_rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder()
        .workers(workers)
        .build()
        .expect("weave runtime")
}
