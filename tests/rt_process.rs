//! Behaviour that must be observed from outside the process: stack overflow
//! aborts with a message (with either kind of guard page), panics name their
//! fiber, an idle runtime uses no CPU, running out of stacks is reported to
//! the spawner. Each test re-runs this test binary as a child with `WEAVE_CHILD` set;
//! the child runs one scenario and exits.

use std::process::{Command, Output};
use std::time::Duration;

const CHILD_ENV: &str = "WEAVE_CHILD";

fn run_child(scenario: &str) -> Output {
    run_child_env(scenario, &[])
}

fn run_child_env(scenario: &str, env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The child side: does nothing unless `WEAVE_CHILD` names a scenario.
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    match scenario.as_str() {
        "overflow" => overflow(),
        "overflow_big_frame" => overflow_big_frame(),
        "panic" => panic_named(),
        "idle" => idle(),
        "exhaustion" => exhaustion(),
        other => panic!("unknown scenario {other}"),
    }
}

fn overflow() {
    #[inline(never)]
    #[allow(unconditional_recursion)] // overflowing the stack is the point
    fn recurse(depth: u64, buf: &mut [u8; 1024]) -> u64 {
        let mut local = [depth as u8; 1024];
        local[0] = buf[1];
        std::hint::black_box(&mut local);
        recurse(depth + 1, &mut local) + local[2] as u64
    }
    let rt = weave::Runtime::builder().workers(2).build().unwrap();
    let h = rt.block_on(|| {
        weave::fiber::Builder::new()
            .name("deep-recursion")
            .stack_size(64 * 1024)
            .spawn(|| recurse(0, &mut [0; 1024]))
            .unwrap()
    });
    let _ = h.join();
    println!("child survived an overflow");
}

/// One frame far larger than the guard page (and the stack): Rust's stack
/// probes touch it page by page from the top, so the first touch below the
/// stack lands in the guard page instead of jumping over it.
fn overflow_big_frame() {
    #[inline(never)]
    fn big_frame() -> u8 {
        let mut local = [1u8; 1 << 20];
        std::hint::black_box(&mut local);
        local[12345]
    }
    let rt = weave::Runtime::builder().workers(1).build().unwrap();
    let h = rt.block_on(|| {
        weave::fiber::Builder::new()
            .name("big-frame")
            .stack_size(64 * 1024)
            .spawn(big_frame)
            .unwrap()
    });
    let _ = h.join();
    println!("child survived an overflow");
}

fn panic_named() {
    let rt = weave::Runtime::builder().workers(1).build().unwrap();
    let h = rt.block_on(|| {
        weave::fiber::Builder::new()
            .name("handler-42")
            .spawn(|| panic!("bad input"))
            .unwrap()
    });
    assert!(h.join().is_err());
    // The worker survived and keeps running fibers.
    assert_eq!(rt.block_on(|| 5), 5);
    println!("child done");
}

fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn idle() {
    let rt = weave::Runtime::builder().workers(4).build().unwrap();
    // Some activity first, then quiet, with a timer armed on a parked fiber.
    rt.block_on(|| {
        for _ in 0..100 {
            weave::spawn(weave::yield_now).join().unwrap();
        }
    });
    let _sleeper = rt.spawn(|| weave::sleep(Duration::from_secs(30)));
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time() - before;
    println!("IDLE_CPU_US={}", used.as_micros());
}

/// Caps the process's address space at what it uses now plus `extra`.
fn limit_address_space(extra: u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let cap = vm_kib * 1024 + extra;
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setting a resource limit of our own process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
}

/// Spawns parked fibers until no stack can be had: the spawner gets the
/// error (never a fiber dropped later), every fiber spawned before it still
/// runs to completion, and the plain `spawn` panics with the reason.
fn exhaustion() {
    let rt = weave::Runtime::builder()
        .workers(2)
        .stack_size(1 << 20)
        .build()
        .unwrap();
    rt.block_on(|| {
        // Warm up everything but stacks (allocator arenas, timers) first.
        weave::spawn(weave::yield_now).join().unwrap();
    });
    // Under the limit, the default hook's backtrace (RUST_BACKTRACE=1 in CI)
    // could not allocate what symbolizing needs, and the expected panic of
    // the plain spawn below would abort the child: print the message only.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    limit_address_space(512 << 20);
    rt.block_on(|| {
        let mut parked = Vec::new();
        let err = loop {
            let (tx, rx) = weave::sync::channel::<u64>();
            match weave::fiber::Builder::new().spawn(move || rx.recv().unwrap() * 2) {
                Ok(h) => parked.push((tx, h)),
                Err(e) => break e,
            }
            assert!(parked.len() < 100_000, "address space limit did not bite");
        };
        println!("SPAWNED={} ERR={err}", parked.len());
        assert!(err.to_string().contains("cannot allocate a fiber stack"));
        let plain = std::panic::catch_unwind(|| weave::spawn(|| 1));
        let payload = plain.expect_err("plain spawn should panic without a stack");
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            msg.contains("weave::spawn: cannot allocate a fiber stack"),
            "{msg}"
        );
        let n = parked.len() as u64;
        let handles: Vec<_> = parked
            .into_iter()
            .enumerate()
            .map(|(i, (tx, h))| {
                tx.send(i as u64).unwrap();
                h
            })
            .collect();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, n * (n - 1));
        // Their stacks are free again: spawning works once more.
        assert_eq!(weave::spawn(|| 7).join().unwrap(), 7);
    });
    println!("child done");
}

#[test]
fn running_out_of_stacks_is_reported_to_the_spawner() {
    // No backtraces in the child: capturing one for the expected panic
    // allocates, and with the address space used up that can abort the
    // child (CI runs with RUST_BACKTRACE=1).
    let out = run_child_env("exhaustion", &[("RUST_BACKTRACE", "0")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("child done"),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let spawned: usize = stdout
        .split("SPAWNED=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(spawned > 100, "only {spawned} fibers before the limit");
}

/// Checks that the child aborted (SIGABRT) after reporting the overflow of
/// the fiber `fiber` with a message containing `overflow`, and did not
/// survive it; returns its stderr for further checks.
fn assert_overflow_abort(out: &Output, fiber: &str, overflow: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child should abort, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("fiber '{fiber}'")) && stderr.contains(overflow),
        "missing overflow message; stderr:\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("child survived"));
    stderr
}

#[test]
fn stack_overflow_with_mprotect_guards_aborts_with_a_clear_message() {
    let out = run_child_env("overflow", &[("WEAVE_STACK_GUARD", "mprotect")]);
    let stderr = assert_overflow_abort(
        &out,
        "deep-recursion",
        "overflowed its stack of 65536 bytes",
    );
    // The fallback says so once, on stderr (no logger is installed).
    assert_eq!(
        stderr
            .matches("fiber stacks use mprotect guard pages")
            .count(),
        1,
        "fallback warning missing or repeated; stderr:\n{stderr}"
    );
    assert!(stderr.contains("vm.max_map_count"), "{stderr}");
}

#[test]
fn stack_overflow_aborts_with_a_clear_message() {
    let out = run_child("overflow");
    assert_overflow_abort(
        &out,
        "deep-recursion",
        "overflowed its stack of 65536 bytes",
    );
}

#[test]
fn frame_larger_than_the_guard_page_still_hits_it() {
    let out = run_child("overflow_big_frame");
    assert_overflow_abort(&out, "big-frame", "overflowed its stack");
}

#[test]
fn panic_message_names_the_fiber() {
    let out = run_child("panic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed; stderr:\n{stderr}");
    assert!(
        stderr.contains("fiber 'handler-42'") && stderr.contains("bad input"),
        "panic report should name the fiber; stderr:\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("child done"));
}

#[test]
fn idle_runtime_uses_almost_no_cpu() {
    let out = run_child("idle");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let us: u64 = stdout
        .lines()
        .find_map(|l| l.split("IDLE_CPU_US=").nth(1))
        .expect("child printed its CPU time")
        .trim()
        .parse()
        .unwrap();
    // Under 5% of one core over one second.
    assert!(us < 50_000, "idle runtime used {us} us of CPU in 1 s");
}
