//! Descriptor and fiber hygiene: alone in its binary, because it counts the
//! process's open descriptors and parallel tests would disturb the count.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use weave::net::{TcpListener, TcpStream};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

#[test]
fn ten_thousand_connect_close_cycles_leak_nothing() {
    let rt = rt(2);
    let handle = rt.handle();
    rt.block_on(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = weave::spawn(move || {
            for _ in 0..10_000 {
                let (mut c, _) = listener.accept().unwrap();
                weave::spawn(move || {
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(&b);
                });
            }
        });
        // Warm up once so lazily created state (stack pool, epoll) exists.
        {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"x").unwrap();
            c.read_exact(&mut [0u8; 1]).unwrap();
        }
        let fds_before = open_fds();
        for _ in 1..10_000 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"y").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"y");
        }
        server.join().unwrap();
        // Server-side fibers close their sockets as they finish: wait for
        // them (bounded) by yielding, not sleeping.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.live_fibers() > 1 && Instant::now() < deadline {
            weave::yield_now();
        }
        assert_eq!(handle.live_fibers(), 1, "fibers left behind");
        assert!(
            open_fds() <= fds_before,
            "descriptors leaked: {} -> {}",
            fds_before,
            open_fds()
        );
    });
}
