use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::store::{Clock, Mode};
use crate::store::{Store, Value};

use super::record::OP_SET;
use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kv-aof-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn store() -> Arc<Store> {
    Arc::new(Store::with_clock(
        64 << 20,
        Clock::Manual(AtomicU64::new(1_700_000_000)),
    ))
}

fn cfg(path: &Path, fsync: Fsync) -> Config {
    Config {
        path: path.to_owned(),
        fsync,
        rewrite_min: 64 << 20,
    }
}

fn open(path: &Path, fsync: Fsync) -> Arc<Store> {
    let st = store();
    let rep = replay(path, &st).unwrap();
    st.attach_journal(Journal::start(cfg(path, fsync), rep.len, &st).unwrap());
    st
}

fn get(st: &Store, k: &str) -> Option<Vec<u8>> {
    st.get(k.as_bytes()).map(|i| i.value.to_vec())
}

#[test]
fn crc32_known_values() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(
        crc32(b"The quick brown fox jumps over the lazy dog"),
        0x414F_A339
    );
}

#[test]
fn records_round_trip() {
    let recs = vec![
        Record::Set {
            key: b"k"[..].into(),
            value: Value::from(&b"v\r\n\0"[..]),
            flags: 9,
            exptime: 77,
            stored: 5,
        },
        Record::Delete {
            key: b"k"[..].into(),
        },
        Record::Touch {
            key: b"kk"[..].into(),
            exptime: 3,
        },
        Record::Flush { at: 0 },
    ];
    for r in recs {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 8);
        assert_eq!(Record::decode(&buf[8..]), Some(r));
    }
    assert_eq!(Record::decode(&[]), None);
    assert_eq!(Record::decode(&[99]), None);
    assert_eq!(Record::decode(&[OP_SET, 1, 2]), None);
}

#[test]
fn mutations_survive_restart() {
    let d = tmpdir("restart");
    let p = d.join("a.aof");
    {
        let st = open(&p, Fsync::Always);
        st.store(Mode::Set, b"a", Value::from(&b"1"[..]), 3, 0)
            .unwrap();
        st.store(Mode::Set, b"b", Value::from(&b"2"[..]), 0, 0)
            .unwrap();
        st.store(Mode::Append, b"a", Value::from(&b"x"[..]), 0, 0)
            .unwrap();
        st.store(Mode::Set, b"n", Value::from(&b"41"[..]), 0, 0)
            .unwrap();
        st.delta(b"n", true, 1, None, 0).unwrap();
        st.delete(b"b", 0).unwrap();
        st.touch(b"a", 100).unwrap();
    }
    let st = open(&p, Fsync::Always);
    assert_eq!(get(&st, "a").as_deref(), Some(&b"1x"[..]));
    assert_eq!(st.get(b"a").unwrap().flags, 3);
    assert_eq!(st.get(b"a").unwrap().exptime, st.now() + 100);
    assert_eq!(get(&st, "b"), None);
    assert_eq!(get(&st, "n").as_deref(), Some(&b"42"[..]));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn flush_is_replayed_in_order() {
    let d = tmpdir("flush");
    let p = d.join("f.aof");
    {
        let st = open(&p, Fsync::No);
        st.store(Mode::Set, b"old", Value::from(&b"1"[..]), 0, 0)
            .unwrap();
        st.flush(0).unwrap();
        st.store(Mode::Set, b"new", Value::from(&b"2"[..]), 0, 0)
            .unwrap();
        st.journal().unwrap().sync().unwrap();
    }
    let st = open(&p, Fsync::No);
    assert_eq!(get(&st, "old"), None);
    assert_eq!(get(&st, "new").as_deref(), Some(&b"2"[..]));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn torn_last_record_is_cut() {
    let d = tmpdir("torn");
    let p = d.join("t.aof");
    {
        let st = open(&p, Fsync::Always);
        for i in 0..10 {
            st.store(
                Mode::Set,
                format!("k{i}").as_bytes(),
                Value::from(&b"value"[..]),
                0,
                0,
            )
            .unwrap();
        }
    }
    let full = std::fs::metadata(&p).unwrap().len();
    // A half-written record: a frame promising more than follows.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    let mut rec = Vec::new();
    Record::Set {
        key: b"torn"[..].into(),
        value: Value::from(vec![7u8; 100]),
        flags: 0,
        exptime: 0,
        stored: 0,
    }
    .encode(&mut rec);
    f.write_all(&rec[..rec.len() / 2]).unwrap();
    drop(f);
    let st = store();
    let rep = replay(&p, &st).unwrap();
    assert_eq!(rep.records, 10);
    assert_eq!(rep.truncated, (rec.len() / 2) as u64);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), full);
    assert_eq!(get(&st, "k9").as_deref(), Some(&b"value"[..]));
    assert_eq!(get(&st, "torn"), None);

    // A complete last record with a bad checksum is cut too.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 0xff;
    f.write_all(&rec).unwrap();
    drop(f);
    let st = store();
    let rep = replay(&p, &st).unwrap();
    assert_eq!(rep.records, 10);
    assert_eq!(rep.truncated, rec.len() as u64);
    assert_eq!(get(&st, "torn"), None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn corruption_in_the_middle_refuses_to_start() {
    let d = tmpdir("mid");
    let p = d.join("m.aof");
    {
        let st = open(&p, Fsync::Always);
        for i in 0..3 {
            st.store(
                Mode::Set,
                format!("k{i}").as_bytes(),
                Value::from(&b"v"[..]),
                0,
                0,
            )
            .unwrap();
        }
    }
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8 + 8 + 2] ^= 0x55; // inside the first record's payload
    std::fs::write(&p, &bytes).unwrap();
    let err = replay(&p, &store()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    std::fs::write(&p, b"not a log at all").unwrap();
    assert!(replay(&p, &store()).is_err());
    let _ = std::fs::remove_dir_all(&d);
}

/// Waits until no compaction is running (bounded: a hang becomes a
/// failure); returns how many have replaced the log.
fn compaction_settled(j: &Journal) -> u64 {
    for _ in 0..6000 {
        // Two syncs in a row: after the second, the writer has decided
        // whether the batch before the first starts a compaction.
        j.sync().unwrap();
        j.sync().unwrap();
        let (running, done) = j.compaction();
        if !running {
            return done;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("a compaction did not finish within a minute");
}

#[test]
fn compaction_keeps_live_data_and_shrinks() {
    let d = tmpdir("compact");
    let p = d.join("c.aof");
    let st = store();
    let rep = replay(&p, &st).unwrap();
    let mut c = cfg(&p, Fsync::Always);
    c.rewrite_min = 64 << 10;
    st.attach_journal(Journal::start(c, rep.len, &st).unwrap());
    let j = st.journal().unwrap();
    let big = Value::from(vec![b'x'; 1000]);
    for round in 0..20 {
        for i in 0..50 {
            st.store(Mode::Set, format!("k{i}").as_bytes(), big.clone(), round, 0)
                .unwrap();
        }
    }
    st.delete(b"k0", 0).unwrap();
    // ~1 MB was written: the log was compacted at least once on the way
    // (how much was appended while a compaction ran depends on timing).
    let done = compaction_settled(j);
    assert!(done >= 1, "log never compacted");
    // With nothing else being logged, one more compaction leaves the live
    // data alone: 49 items of ~1 KB, plus the record that started it.
    let pad = Value::from(vec![b'p'; 16 << 10]);
    let mut writes = 0;
    while j.compaction() == (false, done) {
        st.store(Mode::Set, b"pad", pad.clone(), 0, 0).unwrap();
        j.sync().unwrap();
        writes += 1;
        assert!(writes < 1000, "no compaction after {writes} writes");
    }
    compaction_settled(j);
    let len = std::fs::metadata(&p).unwrap().len();
    assert!(len < 150_000, "log not compacted: {len} bytes");
    assert!(
        !rewrite_path(&p).exists(),
        "a compaction left its temp file behind"
    );
    drop(st);
    let st2 = store();
    replay(&p, &st2).unwrap();
    assert_eq!(get(&st2, "k0"), None);
    for i in 1..50 {
        let it = st2.get(format!("k{i}").as_bytes()).unwrap();
        assert_eq!(it.flags, 19);
        assert_eq!(it.value.len(), 1000);
    }
    assert_eq!(st2.get(b"pad").unwrap().value.len(), 16 << 10);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn start_removes_an_unfinished_compaction() {
    let d = tmpdir("stale-rewrite");
    let p = d.join("s.aof");
    let st = store();
    let rep = replay(&p, &st).unwrap();
    std::fs::write(rewrite_path(&p), b"half a compaction").unwrap();
    st.attach_journal(Journal::start(cfg(&p, Fsync::Always), rep.len, &st).unwrap());
    assert!(!rewrite_path(&p).exists());
    drop(st);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn write_failure_is_reported_and_not_acknowledged() {
    // /dev/full accepts opens and fails every write with ENOSPC.
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let st = store();
    st.attach_journal(Journal::start(cfg(full, Fsync::Always), 0, &st).unwrap());
    let r = st.store(Mode::Set, b"k", Value::from(&b"v"[..]), 0, 0);
    assert!(r.is_err(), "a failed log write must not be acknowledged");
    assert_eq!(get(&st, "k"), None, "the unlogged value is not served");
    assert!(
        st.delete(b"nothing", 0).is_ok(),
        "a no-op delete logs nothing"
    );
}
