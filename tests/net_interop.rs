//! Interop with std and the ecosystem: descriptor traits and std
//! conversions on the socket types, socket options through `socket2` (via
//! `AsFd`), timeouts shared between clones, placement (`spawn_local`,
//! `current_worker`), and a server on a runtime the caller built.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave::net::{TcpListener, TcpStream, UdpSocket, UnixStream};

fn rt(workers: usize) -> weave::Runtime {
    weave::Runtime::builder().workers(workers).build().unwrap()
}

/// A connected pair: a weave stream and the std stream at the other end.
fn pair() -> (TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (TcpStream::from(server), client)
}

#[test]
fn socket_options_through_socket2_and_as_fd() {
    let (s, _peer) = pair();
    let sock = socket2::SockRef::from(&s);
    sock.set_nodelay(true).unwrap();
    assert!(s.nodelay().unwrap());
    sock.set_keepalive(true).unwrap();
    assert!(sock.keepalive().unwrap());
    sock.set_linger(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(sock.linger().unwrap(), Some(Duration::from_secs(3)));
    sock.set_send_buffer_size(64 * 1024).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    // Linux doubles what is asked for bookkeeping.
    assert!(sock.send_buffer_size().unwrap() >= 64 * 1024);
    assert!(sock.recv_buffer_size().unwrap() >= 64 * 1024);
    assert_eq!(s.as_fd().as_raw_fd(), s.as_raw_fd());
}

#[test]
fn std_conversions_round_trip_and_keep_working() {
    let rt = rt(2);
    // From<std::net::TcpListener>, then accept on a fiber.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = TcpListener::from(std_listener);
    let accepted = rt.spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        // A read that parks registers the socket with the poller.
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"one");
        c
    });
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.write_all(b"one").unwrap();
    let c = accepted.join().unwrap();
    // into_std: deregistered, blocking again, usable as a std stream.
    let mut s = c.into_std().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    client.write_all(b"two").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"two");
    // IntoRawFd / FromRawFd back into a weave stream, used on a fiber.
    let fd = s.into_raw_fd();
    // SAFETY: `fd` is the open socket we just released.
    let w = unsafe { TcpStream::from_raw_fd(fd) };
    let echoed = rt.spawn(move || {
        let mut w = w;
        let mut b = [0u8; 5];
        w.read_exact(&mut b).unwrap();
        w.write_all(&b).unwrap();
    });
    client.write_all(b"three").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"three");
    echoed.join().unwrap();

    // The other socket types convert too.
    let u = UdpSocket::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let u = u.into_std().unwrap();
    assert!(u.local_addr().is_ok());
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let a = UnixStream::from(a);
    (&b).write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    (&a).read_exact(&mut one).unwrap();
    let mut a = a.into_std().unwrap();
    (&b).write_all(b"y").unwrap();
    a.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"y");
}

#[test]
fn timeouts_are_shared_between_clones() {
    let (s, _peer) = pair();
    let clone = s.try_clone().unwrap();
    clone
        .set_read_timeout(Some(Duration::from_millis(30)))
        .unwrap();
    assert_eq!(s.read_timeout().unwrap(), Some(Duration::from_millis(30)));
    // And it applies: a read on the original times out.
    let e = (&s).read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    s.set_write_timeout(Some(Duration::from_secs(7))).unwrap();
    assert_eq!(clone.write_timeout().unwrap(), Some(Duration::from_secs(7)));
    s.set_read_timeout(None).unwrap();
    assert_eq!(clone.read_timeout().unwrap(), None);
    // A clone of a clone shares them too.
    let third = clone.try_clone().unwrap();
    third
        .set_write_timeout(Some(Duration::from_secs(9)))
        .unwrap();
    assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_secs(9)));
}

#[test]
fn timeouts_set_before_the_first_clone_carry_over() {
    let (s, _peer) = pair();
    s.set_read_timeout(Some(Duration::from_millis(40))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let clone = s.try_clone().unwrap();
    assert_eq!(
        clone.read_timeout().unwrap(),
        Some(Duration::from_millis(40))
    );
    assert_eq!(clone.write_timeout().unwrap(), Some(Duration::from_secs(3)));
    // And from then on they are one: a change on the original reaches the
    // clone, and applies to reads on it.
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let e = (&clone).read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(
        clone.read_timeout().unwrap(),
        Some(Duration::from_millis(20))
    );
}

/// One thread sets a socket's read timeout while another makes the
/// socket's first clone, the two started together and offset by a varying
/// spin, many rounds: afterwards the original and the clone both report
/// the value set (a set landing while the clone copies the timeouts is not
/// lost).
#[test]
fn a_timeout_set_while_the_first_clone_is_made_is_not_lost() {
    let set = Some(Duration::from_millis(7));
    for round in 0..2_000u64 {
        let (s, _peer) = pair();
        let s = Arc::new(s);
        let go = Arc::new(std::sync::Barrier::new(2));
        let setter = {
            let (s, go) = (s.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                s.set_read_timeout(set).unwrap();
            })
        };
        go.wait();
        for _ in 0..round % 64 {
            std::hint::spin_loop();
        }
        let clone = s.try_clone().unwrap();
        setter.join().unwrap();
        assert_eq!(s.read_timeout().unwrap(), set, "round {round}: original");
        assert_eq!(clone.read_timeout().unwrap(), set, "round {round}: clone");
    }
}

#[test]
fn current_worker_is_known_on_fibers_only() {
    assert_eq!(weave::runtime::current_worker(), None);
    let rt = rt(3);
    for _ in 0..20 {
        let w = rt.spawn(weave::runtime::current_worker).join().unwrap();
        assert!(w.is_some_and(|w| w < 3));
    }
}

/// A fiber spawned with `spawn_local` runs on its spawner's worker even
/// when that worker is busy and others are idle (which would steal a fiber
/// spawned with `spawn` at once).
#[test]
fn spawn_local_stays_on_the_spawners_worker() {
    let rt = rt(4);
    let ran_elsewhere = Arc::new(AtomicUsize::new(0));
    let r = ran_elsewhere.clone();
    rt.block_on(move || {
        for _ in 0..20 {
            let here = weave::runtime::current_worker();
            let started = Arc::new(AtomicBool::new(false));
            let s = started.clone();
            let child = weave::spawn_local(move || {
                s.store(true, Ordering::SeqCst);
                weave::runtime::current_worker()
            });
            // Keep this worker busy for a while without parking: only
            // another worker could start the child meanwhile.
            let until = Instant::now() + Duration::from_millis(20);
            while Instant::now() < until {
                if started.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                std::hint::spin_loop();
            }
            assert_eq!(child.join().unwrap(), here);
        }
    });
    assert_eq!(ran_elsewhere.load(Ordering::SeqCst), 0);
}

#[test]
fn server_runs_on_a_runtime_the_caller_built() {
    let rt = rt(2);
    let ticks = Arc::new(AtomicUsize::new(0));
    let t = ticks.clone();
    // A background fiber on the caller's runtime, alive across the server.
    let ticker = rt.spawn(move || loop {
        t.fetch_add(1, Ordering::SeqCst);
        weave::sleep(Duration::from_millis(1));
    });
    let server = weave::Server::builder()
        .bind("127.0.0.1:0")
        .handle_signals(false)
        .runtime(rt.handle())
        .build()
        .unwrap();
    let addr = server.local_addrs()[0];
    let stop = server.handle();
    // A hook on the server's runtime: the same runtime here.
    let on_server_rt = server
        .runtime_handle()
        .spawn(weave::runtime::current_worker)
        .join()
        .unwrap();
    assert!(on_server_rt.is_some());
    let serving = std::thread::spawn(move || {
        server
            .serve(|mut c| {
                let mut b = [0u8; 4];
                c.read_exact(&mut b)?;
                c.write_all(&b)
            })
            .unwrap()
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    drop(c);
    stop.stop();
    let summary = serving.join().unwrap();
    assert_eq!(summary.counters.accepted, 1);
    // The caller's runtime and its fiber outlive the server.
    let before = ticks.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks.load(Ordering::SeqCst) == before {
        assert!(
            Instant::now() < deadline,
            "the ticker stopped with the server"
        );
        std::thread::yield_now();
    }
    assert!(!ticker.is_finished());
    assert_eq!(rt.block_on(|| 5), 5);
}
