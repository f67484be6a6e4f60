//! A fiber that runs too long without parking is reported by name. Alone in
//! its binary because it installs a process-wide logger.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static LOGS: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn hog_is_logged_with_its_name() {
    log::set_logger(&LOGS).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let rt = weave::Runtime::builder()
        .workers(1)
        .hog_threshold(Duration::from_millis(50))
        .build()
        .unwrap();
    rt.block_on(|| {
        weave::fiber::Builder::new()
            .name("busy-loop")
            .spawn(|| {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(150) {
                    std::hint::spin_loop();
                }
            })
            .unwrap()
            .join()
            .unwrap();
        // A well-behaved fiber that parks often is not reported.
        weave::fiber::Builder::new()
            .name("polite")
            .spawn(|| {
                for _ in 0..20 {
                    weave::sleep(Duration::from_millis(5));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    });
    let logs = LOGS.0.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("fiber 'busy-loop'") && l.contains("without parking")),
        "no hog report in {logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("'polite'")), "{logs:?}");
}
