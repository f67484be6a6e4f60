//! A dropped runtime gives back its descriptors (each worker's epoll and
//! eventfd), even when fibers are spawned on it after the drop. Alone in its
//! binary, because it counts the process's open descriptors and parallel
//! tests would disturb the count.

use std::time::Duration;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn dropped_runtime_closes_its_descriptors_after_late_spawns() {
    // Warm up what is created once per process (the blocking pool, the
    // overflow handler's state), so it is not counted as a leak.
    {
        let rt = weave::Runtime::builder().workers(2).build().unwrap();
        rt.block_on(|| weave::sleep(Duration::from_millis(1)));
    }
    let before = open_fds();
    for _ in 0..20 {
        let rt = weave::Runtime::builder().workers(2).build().unwrap();
        let handle = rt.handle();
        rt.block_on(|| weave::sleep(Duration::from_millis(1)));
        drop(rt);
        // Detached, anywhere and pinned: nothing may keep the runtime alive.
        drop(handle.spawn(|| 1));
        drop(handle.spawn_on_worker(0, || 1));
        let joined = handle.spawn(|| 2);
        assert!(joined.join().is_err(), "a late fiber must not run");
        drop(handle);
    }
    assert_eq!(open_fds(), before, "descriptors leaked by dropped runtimes");
}
