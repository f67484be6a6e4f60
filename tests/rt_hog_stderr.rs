//! Without a logger installed, the first hog report still reaches stderr,
//! once per process. Each test re-runs this binary as a child with
//! `WEAVE_CHILD` set (no logger can be uninstalled, so each scenario needs a
//! fresh process).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
        "no-logger" => hogs(3),
        "logger" => {
            env_logger::Builder::new()
                .filter_level(log::LevelFilter::Warn)
                .target(env_logger::Target::Stdout)
                .init();
            hogs(2);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs `n` fibers that each spin past the hog threshold, one after another
/// and then two at once on two workers.
fn hogs(n: usize) {
    let rt = weave::Runtime::builder()
        .workers(2)
        .hog_threshold(Duration::from_millis(20))
        .build()
        .unwrap();
    fn spin() {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(60) {
            std::hint::spin_loop();
        }
    }
    rt.block_on(move || {
        for i in 0..n {
            weave::fiber::Builder::new()
                .name(format!("spinner-{i}"))
                .spawn(spin)
                .unwrap()
                .join()
                .unwrap();
        }
        let a = weave::fiber::Builder::new()
            .name("pair-a")
            .spawn(spin)
            .unwrap();
        let b = weave::fiber::Builder::new()
            .name("pair-b")
            .spawn(spin)
            .unwrap();
        a.join().unwrap();
        b.join().unwrap();
    });
    println!("child done");
}

#[test]
fn first_hog_reaches_stderr_once_without_a_logger() {
    let out = run_child("no-logger");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("child done"), "{stdout}");
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("without parking"))
        .collect();
    assert_eq!(reports.len(), 1, "expected one report on stderr: {stderr}");
    // Normally spinner-0; on a loaded machine a fiber preempted for longer
    // than the threshold may be reported first, and that is the one printed.
    assert!(reports[0].contains("weave: fiber '"), "{}", reports[0]);
    assert!(
        reports[0].contains("no logger is installed"),
        "{}",
        reports[0]
    );
}

#[test]
fn with_a_logger_reports_go_through_log_only() {
    let out = run_child("logger");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Nothing on stderr: the logger (writing to stdout here) got them all.
    assert!(!stderr.contains("without parking"), "{stderr}");
    let logged = stdout
        .lines()
        .filter(|l| l.contains("without parking"))
        .count();
    assert!(logged >= 4, "every hog logged: {stdout}");
    for name in ["spinner-0", "spinner-1", "pair-a", "pair-b"] {
        assert!(
            stdout.contains(&format!("fiber '{name}'")),
            "{name} missing: {stdout}"
        );
    }
}
