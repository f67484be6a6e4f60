//! The kv_proxy example in front of three kv instances (child processes on
//! loopback): a real memcached client sees what one server would say, keys
//! spread over the backends, a dead backend affects only its keys, bad
//! input gets memcached's errors.

mod kv_common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kv_common::{Client, Server};

/// The kv_proxy example binary (see `kv_common::example_binary`).
fn proxy_binary() -> PathBuf {
    kv_common::example_binary("kv_proxy")
}

/// A running proxy; killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(backends: &[SocketAddr]) -> Proxy {
        let bin = proxy_binary();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cmd = Command::new(&bin);
            cmd.args(["--listen", &addr.to_string(), "-t", "2"])
                .args(["--retry-ms", "100", "--timeout-ms", "5000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for b in backends {
                cmd.args(["--backend", &b.to_string()]);
            }
            let mut proxy = Proxy {
                child: cmd.spawn().expect("spawn kv_proxy"),
                addr,
            };
            for _ in 0..3000 {
                if proxy.child.try_wait().unwrap().is_some() {
                    break; // port taken: try another
                }
                if let Ok(s) = std::net::TcpStream::connect(addr) {
                    drop(s);
                    let mut c = Client::connect(addr);
                    c.send("version\r\n");
                    if c.line().starts_with("VERSION ") {
                        return proxy;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("kv_proxy did not start");
    }

    fn memcache(&self) -> memcache::Client {
        let url = format!("memcache://{}?protocol=ascii&timeout=30", self.addr);
        memcache::Client::with_pool_size(url.as_str(), 1).expect("memcache client")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn three() -> (Vec<Server>, Vec<SocketAddr>) {
    let servers: Vec<Server> = (0..3).map(|_| Server::start(&["-t", "1"])).collect();
    let addrs = servers.iter().map(|s| s.addr).collect();
    (servers, addrs)
}

/// The same operations through `c`, with every result written down (cas
/// ids differ between servers, so only their presence is recorded).
fn script(c: &memcache::Client) -> Vec<String> {
    let mut log = Vec::new();
    macro_rules! rec {
        ($e:expr) => {
            log.push(format!("{} => {:?}", stringify!($e), $e))
        };
    }
    let keys: Vec<String> = (0..40).map(|i| format!("key:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        rec!(c.set(k, format!("value-{i}").as_str(), 0));
    }
    for k in keys.iter().step_by(7) {
        rec!(c.get::<String>(k));
    }
    rec!(c.get::<String>("missing"));
    rec!(c.add("key:1", "x", 0));
    rec!(c.add("new-key", "fresh", 0));
    rec!(c.replace("key:2", "replaced", 0));
    rec!(c.replace("absent", "nope", 0));
    rec!(c.append("key:3", "-tail"));
    rec!(c.prepend("key:3", "head-"));
    rec!(c.append("absent", "x"));
    rec!(c.get::<String>("key:3"));
    rec!(c.set("counter", 10u64, 0));
    rec!(c.increment("counter", 5));
    rec!(c.decrement("counter", 20));
    rec!(c.increment("key:4", 1));
    rec!(c.increment("absent", 1));
    rec!(c.delete("key:5"));
    rec!(c.delete("key:5"));
    rec!(c.touch("key:6", 100));
    rec!(c.touch("absent", 100));
    // A multi-key get spanning backends, with misses: compare as a sorted
    // map (the client returns a HashMap).
    let mut asked: Vec<&str> = keys.iter().map(String::as_str).collect();
    asked.push("absent");
    asked.push("new-key");
    let got: HashMap<String, String> = c.gets(&asked).unwrap();
    let mut got: Vec<_> = got.into_iter().collect();
    got.sort();
    log.push(format!("gets => {got:?}"));
    // cas: a fresh id succeeds, a stale one fails.
    let with_cas: HashMap<String, (Vec<u8>, u32, Option<u64>)> = c.gets(&["key:7"]).unwrap();
    let id = with_cas["key:7"].2.expect("gets returns a cas id");
    rec!(c.cas("key:7", "cas-1", 0, id));
    rec!(c.cas("key:7", "cas-2", 0, id));
    rec!(c.get::<String>("key:7"));
    log
}

#[test]
fn same_results_as_one_server() {
    let (_servers, addrs) = three();
    let proxy = Proxy::start(&addrs);
    let single = Server::start(&["-t", "1"]);
    let direct = memcache::Client::with_pool_size(
        format!("memcache://{}?protocol=ascii&timeout=30", single.addr).as_str(),
        1,
    )
    .unwrap();
    let through_proxy = script(&proxy.memcache());
    let one_server = script(&direct);
    assert_eq!(through_proxy.len(), one_server.len());
    for (a, b) in through_proxy.iter().zip(&one_server) {
        assert_eq!(a, b);
    }
    // Sanity: the script did observe real values.
    assert!(one_server
        .iter()
        .any(|l| l.contains("Some(\"head-value-3-tail\")")));
}

#[test]
fn keys_spread_over_three_backends_in_client_order() {
    let (_servers, addrs) = three();
    let proxy = Proxy::start(&addrs);
    let mut c = Client::connect(proxy.addr);
    for i in 0..300 {
        c.expect(format!("set k{i} {i} 0 2\r\nv{}\r\n", i % 10), "STORED\r\n");
    }
    // Every key lives on exactly one backend; every backend has some.
    let mut direct: Vec<Client> = addrs.iter().map(|a| Client::connect(*a)).collect();
    let mut per_backend = [0usize; 3];
    for i in 0..300 {
        let mut owners = 0;
        for (b, d) in direct.iter_mut().enumerate() {
            d.send(format!("get k{i}\r\n"));
            let l = d.line();
            if l.starts_with("VALUE ") {
                owners += 1;
                per_backend[b] += 1;
                d.line();
                assert_eq!(d.line(), "END\r\n");
            } else {
                assert_eq!(l, "END\r\n");
            }
        }
        assert_eq!(owners, 1, "k{i}");
    }
    assert!(per_backend.iter().all(|&n| n > 0), "{per_backend:?}");

    // A multi-key get comes back in the client's order, misses left out,
    // a repeated key repeated.
    let order = [17, 3, 250, 99, 3, 42, 1];
    let mut req = String::from("get");
    let mut want = String::new();
    for (j, i) in order.iter().enumerate() {
        req.push_str(&format!(" k{i}"));
        if j == 2 {
            req.push_str(" missing");
        }
        want.push_str(&format!("VALUE k{i} {i} 2\r\nv{}\r\n", i % 10));
    }
    want.push_str("END\r\n");
    c.expect(format!("{req}\r\n"), &want);

    // Pipelined requests (one write) come back in order too.
    let mut req = String::new();
    let mut want = String::new();
    for i in 0..50 {
        req.push_str(&format!("get k{i}\r\nincr nothing{i} 1\r\n"));
        want.push_str(&format!(
            "VALUE k{i} {i} 2\r\nv{}\r\nEND\r\nNOT_FOUND\r\n",
            i % 10
        ));
    }
    c.expect(req, &want);
}

#[test]
fn killing_a_backend_affects_only_its_keys() {
    let (mut servers, addrs) = three();
    let proxy = Proxy::start(&addrs);
    let mut c = Client::connect(proxy.addr);
    for i in 0..200 {
        c.expect(format!("set k{i} 0 0 1\r\nx\r\n"), "STORED\r\n");
    }
    // Which keys live on backend 1?
    let mut on_victim = Vec::new();
    let mut d = Client::connect(addrs[1]);
    for i in 0..200 {
        d.send(format!("get k{i}\r\n"));
        if d.line().starts_with("VALUE ") {
            on_victim.push(i);
            d.line();
            d.line();
        }
    }
    assert!(!on_victim.is_empty() && on_victim.len() < 200);
    drop(d);
    servers.remove(1).kill();

    for round in 0..2 {
        for i in 0..200 {
            c.send(format!("get k{i}\r\n"));
            let l = c.line();
            if on_victim.contains(&i) {
                assert!(l.starts_with("SERVER_ERROR"), "round {round} k{i}: {l:?}");
            } else {
                assert_eq!(l, format!("VALUE k{i} 0 1\r\n"), "round {round} k{i}");
                assert_eq!(c.line(), "x\r\n");
                assert_eq!(c.line(), "END\r\n");
            }
        }
        let victim_key = on_victim[0];
        c.expect(
            format!("set k{victim_key} 0 0 1\r\ny\r\n"),
            "SERVER_ERROR backend unavailable\r\n",
        );
        // Writes to the live backends go on.
        let live: Vec<_> = (0..200).filter(|i| !on_victim.contains(i)).collect();
        c.expect(format!("delete k{}\r\n", live[round]), "DELETED\r\n");
        c.expect(format!("get k{}\r\n", live[round]), "END\r\n");
        c.expect(format!("set k{} 0 0 1\r\nx\r\n", live[round]), "STORED\r\n");
        // A multi-key get over live keys only is answered in full.
        c.expect(
            format!("get k{} k{}\r\n", live[10], live[11]),
            &format!(
                "VALUE k{} 0 1\r\nx\r\nVALUE k{} 0 1\r\nx\r\nEND\r\n",
                live[10], live[11]
            ),
        );
        // One that touches the dead backend fails as a whole.
        c.send(format!("get k{} k{}\r\n", live[10], victim_key));
        assert!(c.line().starts_with("SERVER_ERROR"));
        // Past the retry delay, the backend is tried (and fails) again.
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn bad_input_gets_memcached_errors() {
    let (_servers, addrs) = three();
    let proxy = Proxy::start(&addrs);
    let mut c = Client::connect(proxy.addr);
    c.expect("bogus command\r\n", "ERROR\r\n");
    c.expect("\r\n", "ERROR\r\n");
    c.expect("get\r\n", "ERROR\r\n");
    let long_key = "k".repeat(251);
    c.expect(
        format!("get {long_key}\r\n"),
        "CLIENT_ERROR bad command line format\r\n",
    );
    c.expect("set k 0 0\r\n", "CLIENT_ERROR bad command line format\r\n");
    c.expect(
        "set k 0 0 notanumber\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    );
    // Too large: refused, and its data skipped rather than parsed.
    let big = "x".repeat(2 << 20);
    c.expect(
        format!("set k 0 0 {}\r\n{big}\r\nversion\r\n", big.len()),
        "SERVER_ERROR object too large for cache\r\n",
    );
    assert!(c.line().starts_with("VERSION "));
    // As memcached: the announced length is taken, the rest is parsed as
    // the next command (here an empty line).
    c.expect(
        "set k 0 0 3\r\nabcde\r\n",
        "CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    let long_line = format!("touch {}\r\n", "y".repeat(5000));
    c.expect(long_line, "CLIENT_ERROR line too long\r\n");
    // Errors from the backend pass through.
    c.expect("set n 0 0 1\r\n5\r\n", "STORED\r\n");
    c.expect(
        "incr n notanumber\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    // noreply: nothing back, but the command ran.
    c.expect(
        "set q 0 0 1 noreply\r\n7\r\nget q\r\n",
        "VALUE q 0 1\r\n7\r\nEND\r\n",
    );
    // Still serving, and quit closes.
    c.expect("get n\r\n", "VALUE n 0 1\r\n5\r\nEND\r\n");
    c.send("quit\r\n");
    let mut rest = Vec::new();
    use std::io::Read;
    assert_eq!(c.r.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn help_names_each_program() {
    for (bin, first) in [
        (
            kv_common::kv_binary(),
            "A memcached-compatible key-value server",
        ),
        (proxy_binary(), "A memcached text-protocol proxy"),
    ] {
        let out = Command::new(&bin)
            .arg("--help")
            .output()
            .expect("run --help");
        assert!(
            out.status.success(),
            "{} --help: {:?}",
            bin.display(),
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or("");
        assert!(
            line.starts_with(first),
            "{}: first line {line:?}",
            bin.display()
        );
    }
}
