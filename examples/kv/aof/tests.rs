use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::file::sim::CrashFs;
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
    Config::new(path.to_owned(), fsync)
}

/// Replays the log into `st` and attaches a journal with `cfg`.
fn attach(st: &Arc<Store>, cfg: Config) {
    let r = replay(&cfg.path, st, None).unwrap();
    st.attach_journal(Journal::start(cfg, r.file, r.report.len, st).unwrap());
}

fn open(path: &Path, fsync: Fsync) -> Arc<Store> {
    let st = store();
    attach(&st, cfg(path, fsync));
    st
}

/// Replays the log into `st` (and closes it).
fn replay_into(path: &Path, st: &Store) -> ReplayReport {
    replay(path, st, None).unwrap().report
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
            cas: 1 << 40,
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
        cas: 0,
    }
    .encode(&mut rec);
    f.write_all(&rec[..rec.len() / 2]).unwrap();
    drop(f);
    let st = store();
    let rep = replay_into(&p, &st);
    // The ten sets and the CAS floor the journal logged at start.
    assert_eq!(rep.records, 11);
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
    let rep = replay_into(&p, &st);
    assert_eq!(rep.records, 11);
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
    let err = replay(&p, &store(), None).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains("offset 8,"), "{msg}");
    assert!(msg.contains("--aof-truncate-corrupt 8"), "{msg}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "refusing changed the file"
    );
    // Asked to cut elsewhere: still refused.
    assert!(replay(&p, &store(), Some(9)).is_err());
    // Asked to cut there: cut, nothing replayed.
    let st = store();
    let r = replay(&p, &st, Some(8)).unwrap();
    assert_eq!((r.report.records, r.report.len), (0, 8));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8);
    assert_eq!(get(&st, "k0"), None);
    drop(r);
    std::fs::write(&p, b"not a log at all").unwrap();
    assert!(replay(&p, &store(), None).is_err());
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
    let mut c = cfg(&p, Fsync::Always);
    c.rewrite_min = 64 << 10;
    attach(&st, c);
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
    replay_into(&p, &st2);
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
fn compaction_keeps_cas_uniques() {
    let d = tmpdir("compact-cas");
    let p = d.join("c.aof");
    let st = open(&p, Fsync::Always);
    let mut uniques = Vec::new();
    for round in 0..3 {
        uniques.clear();
        for i in 0..20 {
            let r = st
                .store(
                    Mode::Set,
                    format!("k{i}").as_bytes(),
                    Value::from(&b"v"[..]),
                    round,
                    0,
                )
                .unwrap();
            uniques.push(r);
        }
    }
    // compact() waits for the compaction it asked for: no timing.
    st.journal().unwrap().compact().unwrap();
    assert_eq!(st.journal().unwrap().compaction(), (false, 1));
    drop(st);
    let st2 = store();
    replay_into(&p, &st2);
    for (i, stored) in uniques.iter().enumerate() {
        let it = st2.get(format!("k{i}").as_bytes()).unwrap();
        assert_eq!(
            crate::store::StoreStatus::Stored(it.cas),
            *stored,
            "k{i}: CAS unique kept by compaction"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn start_removes_an_unfinished_compaction() {
    let d = tmpdir("stale-rewrite");
    let p = d.join("s.aof");
    let st = store();
    std::fs::write(rewrite_path(&p), b"half a compaction").unwrap();
    attach(&st, cfg(&p, Fsync::Always));
    assert!(!rewrite_path(&p).exists());
    drop(st);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn write_failure_is_reported_and_not_acknowledged() {
    let d = tmpdir("write-fail");
    let p = d.join("w.aof");
    let fs = CrashFs::new();
    let st = store();
    let mut c = cfg(&p, Fsync::Always);
    c.fs = Arc::new(fs.clone());
    attach(&st, c);
    st.store(Mode::Set, b"old", Value::from(&b"1"[..]), 0, 0)
        .unwrap();
    fs.fail_next_writes(1);
    let r = st.store(Mode::Set, b"k", Value::from(&b"v"[..]), 0, 0);
    assert!(r.is_err(), "a failed log write must not be acknowledged");
    assert_eq!(get(&st, "k"), None, "the unlogged value is not served");
    // A delete of an absent key is logged too, so it fails as well.
    fs.fail_next_writes(1);
    assert!(st.delete(b"nothing", 0).is_err());
    let j = st.journal().unwrap();
    assert_eq!(j.health().write_errors.load(Ordering::Relaxed), 2);
    // The next write works, and the failed ones were cut back.
    st.store(Mode::Set, b"k2", Value::from(&b"v"[..]), 0, 0)
        .unwrap();
    drop(st);
    let st = store();
    replay_into(&p, &st);
    assert_eq!(get(&st, "old").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&st, "k"), None);
    assert_eq!(get(&st, "k2").as_deref(), Some(&b"v"[..]));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn everysec_refuses_writes_after_a_failed_fsync_until_one_succeeds() {
    let d = tmpdir("fsync-fail");
    let p = d.join("f.aof");
    let fs = CrashFs::new();
    let st = store();
    let mut c = cfg(&p, Fsync::Everysec);
    c.fs = Arc::new(fs.clone());
    attach(&st, c);
    let j = st.journal().unwrap();
    let h = j.health();
    fs.fail_next_syncs(1);
    st.store(Mode::Set, b"before", Value::from(&b"1"[..]), 0, 0)
        .unwrap();
    // The writer syncs about a second later and fails (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h.sync_failed.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "the failed fsync was not noticed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Make the retries fail too, for as long as we look.
    fs.fail_next_syncs(u32::MAX);
    let r = st.store(Mode::Set, b"during", Value::from(&b"2"[..]), 0, 0);
    let e = r.expect_err("a write after a failed fsync must be refused");
    assert!(e.to_string().contains("fsync"), "{e}");
    assert!(st.delete(b"before", 0).is_err());
    assert!(st.delta(b"before", true, 1, None, 0).is_err());
    assert!(st.touch(b"before", 10).is_err());
    assert!(st.flush(0).is_err());
    // Refused up front: nothing changed.
    assert_eq!(get(&st, "before").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&st, "during"), None);
    assert!(h.fsync_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(h.fsync_errors.load(Ordering::Relaxed), fs.failed_syncs());
    assert_eq!(h.refused.load(Ordering::Relaxed), 5);
    // The disk recovers: the next retry succeeds and writes are taken.
    fs.fail_next_syncs(0);
    while h.sync_failed.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "writes never accepted again");
        std::thread::sleep(Duration::from_millis(5));
    }
    st.store(Mode::Set, b"after", Value::from(&b"3"[..]), 0, 0)
        .unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_second_opener_of_a_locked_log_is_refused() {
    let d = tmpdir("lock");
    let p = d.join("l.aof");
    let st = open(&p, Fsync::Always);
    let e = replay(&p, &store(), None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert!(e.to_string().contains("locked"), "{e}");
    // Compaction replaces the file; the new one is locked as well.
    st.journal().unwrap().compact().unwrap();
    let e = replay(&p, &store(), None).unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    drop(st);
    // Closing the journal releases it.
    drop(replay(&p, &store(), None).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn zero_filled_or_garbage_tail_is_cut() {
    let d = tmpdir("zeros");
    let p = d.join("z.aof");
    {
        let st = open(&p, Fsync::Always);
        for i in 0..10 {
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
    let good = std::fs::metadata(&p).unwrap().len();
    // Zeros (a power cut after the file grew), then noise without a valid
    // record in it (a torn write).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for tail in [
        vec![0u8; 100_000],
        (0..100_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>(),
    ] {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&tail).unwrap();
        drop(f);
        let st = store();
        let r = replay_into(&p, &st);
        assert_eq!(r.truncated, tail.len() as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), good);
        assert_eq!(get(&st, "k9").as_deref(), Some(&b"v"[..]));
    }
    // A file whose every byte is zero was never written: started afresh.
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let r = replay_into(&p, &store());
    assert_eq!((r.truncated, r.len), (4096, 8));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn deletes_and_misses_of_evicted_keys_stay_after_restart() {
    let d = tmpdir("evicted");
    let p = d.join("e.aof");
    let item = crate::store::item_cost(3, 100);
    {
        // Room for ten items: the victims are evicted by the fill.
        let st = Arc::new(Store::with_clock(
            item * 10,
            Clock::Manual(AtomicU64::new(1_700_000_000)),
        ));
        attach(&st, cfg(&p, Fsync::Always));
        let v = Value::from(vec![b'1'; 100]);
        for k in ["vd0", "vi0", "vt0", "vc0", "vr0", "va0", "vp0", "vg0"] {
            st.store(Mode::Set, k.as_bytes(), v.clone(), 0, 0).unwrap();
        }
        for i in 0..20 {
            st.store(Mode::Set, format!("f{i:02}").as_bytes(), v.clone(), 0, 0)
                .unwrap();
        }
        assert!(st.stats.evictions.get() >= 8);
        use crate::store::{DeleteStatus, DeltaStatus, StoreStatus};
        let x = || Value::from(&b"x"[..]);
        assert_eq!(st.delete(b"vd0", 0).unwrap(), DeleteStatus::NotFound);
        assert_eq!(
            st.delta(b"vi0", true, 1, None, 0).unwrap(),
            DeltaStatus::NotFound
        );
        assert!(!st.touch(b"vt0", 100).unwrap());
        assert_eq!(
            st.store(Mode::Cas(1), b"vc0", x(), 0, 0).unwrap(),
            StoreStatus::NotFound
        );
        assert_eq!(
            st.store(Mode::Replace, b"vr0", x(), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert_eq!(
            st.store(Mode::Append, b"va0", x(), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert_eq!(
            st.store(Mode::Prepend, b"vp0", x(), 0, 0).unwrap(),
            StoreStatus::NotStored
        );
        assert_eq!(st.get_and_touch(b"vg0", 100).unwrap(), None);
    }
    // Restart with room for everything.
    let st = store();
    replay_into(&p, &st);
    for k in ["vd0", "vi0", "vt0", "vc0", "vr0", "va0", "vp0", "vg0"] {
        assert_eq!(get(&st, k), None, "{k} came back");
    }
    assert!(get(&st, "f19").is_some());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cas_uniques_survive_restarts_and_are_never_reused() {
    let d = tmpdir("cas");
    let p = d.join("c.aof");
    let (a, b_old, b);
    {
        let st = open(&p, Fsync::Everysec);
        let uniq = |r| match r {
            crate::store::StoreStatus::Stored(c) => c,
            other => panic!("{other:?}"),
        };
        a = uniq(
            st.store(Mode::Set, b"a", Value::from(&b"1"[..]), 0, 0)
                .unwrap(),
        );
        b_old = uniq(
            st.store(Mode::Set, b"b", Value::from(&b"1"[..]), 0, 0)
                .unwrap(),
        );
        b = uniq(
            st.store(Mode::Set, b"b", Value::from(&b"2"[..]), 0, 0)
                .unwrap(),
        );
        st.journal().unwrap().sync().unwrap();
    }
    let mut seen = vec![a, b_old, b];
    for round in 0..3 {
        let st = open(&p, Fsync::Everysec);
        assert_eq!(st.get(b"a").unwrap().cas, a, "round {round}");
        assert_eq!(st.get(b"b").unwrap().cas, b, "round {round}");
        assert_eq!(
            st.store(Mode::Cas(b_old), b"b", Value::from(&b"x"[..]), 0, 0)
                .unwrap(),
            crate::store::StoreStatus::Exists
        );
        // A unique handed out now and lost (never synced: the file is cut
        // back as a power cut would) must not come back next time.
        let len = std::fs::metadata(&p).unwrap().len();
        let crate::store::StoreStatus::Stored(lost) = st
            .store(Mode::Set, b"lost", Value::from(&b"l"[..]), 0, 0)
            .unwrap()
        else {
            panic!("not stored")
        };
        assert!(!seen.contains(&lost), "round {round}: unique {lost} reused");
        seen.push(lost);
        drop(st);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    // Logs from before uniques were logged (opcode 1) still replay.
    let mut old = Vec::new();
    Record::Set {
        key: b"legacy"[..].into(),
        value: Value::from(&b"v"[..]),
        flags: 0,
        exptime: 0,
        stored: 0,
        cas: 0,
    }
    .encode(&mut old);
    old[8] = OP_SET;
    old.drain(8 + 1 + 20..8 + 1 + 28);
    let crc = crc32(&old[8..]);
    let len = (old.len() - 8) as u32;
    old[..4].copy_from_slice(&len.to_le_bytes());
    old[4..8].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        Record::decode(&old[8..]),
        Some(Record::Set {
            key: b"legacy"[..].into(),
            value: Value::from(&b"v"[..]),
            flags: 0,
            exptime: 0,
            stored: 0,
            cas: 0,
        })
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn meta_invalidation_and_vivify_survive_a_restart() {
    use crate::store::{DeleteStatus, MetaGetOpts};
    let d = tmpdir("meta");
    let p = d.join("m.aof");
    let (invalidated, vivified);
    {
        let st = open(&p, Fsync::Always);
        st.store(Mode::Set, b"k", Value::from(&b"v"[..]), 0, 0)
            .unwrap();
        let before = st.get(b"k").unwrap().cas;
        let exp = st.now() + 100;
        assert_eq!(
            st.meta_delete(b"k", 0, true, Some(exp), None).unwrap(),
            DeleteStatus::Deleted
        );
        invalidated = st.get(b"k").unwrap();
        assert_ne!(invalidated.cas, before);
        let o = MetaGetOpts {
            vivify: Some(exp),
            ..Default::default()
        };
        vivified = st.meta_get(b"new", o).unwrap().unwrap().item;
        // An invalidating delete of an absent key is logged like a delete.
        assert_eq!(
            st.meta_delete(b"absent", 0, true, None, None).unwrap(),
            DeleteStatus::NotFound
        );
    }
    let st = store();
    replay_into(&p, &st);
    assert_eq!(st.get(b"k").unwrap(), invalidated);
    assert_eq!(st.get(b"new").unwrap(), vivified);
    let _ = std::fs::remove_dir_all(&d);
}
