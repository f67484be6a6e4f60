//! Behaviour that must be observed from outside the process: stack overflow
//! aborts with a message, panics name their fiber, an idle runtime uses no
//! CPU. Each test re-runs this test binary as a child with `WEAVE_CHILD` set;
//! the child runs one scenario and exits.

use std::process::{Command, Output};
use std::time::Duration;

const CHILD_ENV: &str = "WEAVE_CHILD";

fn run_child(scenario: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
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
        "panic" => panic_named(),
        "idle" => idle(),
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

#[test]
fn stack_overflow_aborts_with_a_clear_message() {
    let out = run_child("overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child should abort, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("fiber 'deep-recursion'")
            && stderr.contains("overflowed its stack of 65536 bytes"),
        "missing overflow message; stderr:\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("child survived"));
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
