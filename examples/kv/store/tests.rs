use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

fn store() -> Store {
    Store::with_clock(64 << 20, Clock::Manual(AtomicU64::new(1_700_000_000)))
}

fn v(s: &str) -> Value {
    Value::from(s.as_bytes())
}

fn val(st: &Store, k: &str) -> Option<String> {
    st.get(k.as_bytes())
        .map(|i| String::from_utf8(i.value.to_vec()).unwrap())
}

#[test]
fn set_get_delete() {
    let st = store();
    assert!(matches!(
        st.store(Mode::Set, b"a", v("1"), 5, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
    let it = st.get(b"a").unwrap();
    assert_eq!(&it.value[..], b"1");
    assert_eq!(it.flags, 5);
    assert_eq!(st.delete(b"a", 0).unwrap(), DeleteStatus::Deleted);
    assert_eq!(st.delete(b"a", 0).unwrap(), DeleteStatus::NotFound);
    assert!(st.get(b"a").is_none());
    assert_eq!(st.stats.get_hits.load(Ordering::Relaxed), 1);
    assert_eq!(st.stats.get_misses.load(Ordering::Relaxed), 1);
    assert_eq!(st.len(), 0);
    assert_eq!(st.stats.bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn add_replace_append_prepend() {
    let st = store();
    assert_eq!(
        st.store(Mode::Replace, b"k", v("x"), 0, 0).unwrap(),
        StoreStatus::NotStored
    );
    assert_eq!(
        st.store(Mode::Append, b"k", v("x"), 0, 0).unwrap(),
        StoreStatus::NotStored
    );
    assert_eq!(
        st.store(Mode::Prepend, b"k", v("x"), 0, 0).unwrap(),
        StoreStatus::NotStored
    );
    assert!(matches!(
        st.store(Mode::Add, b"k", v("b"), 7, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
    assert_eq!(
        st.store(Mode::Add, b"k", v("z"), 0, 0).unwrap(),
        StoreStatus::NotStored
    );
    assert!(matches!(
        st.store(Mode::Append, b"k", v("c"), 1, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
    assert!(matches!(
        st.store(Mode::Prepend, b"k", v("a"), 1, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
    let it = st.get(b"k").unwrap();
    assert_eq!(&it.value[..], b"abc");
    assert_eq!(it.flags, 7, "append/prepend keep flags");
    assert!(matches!(
        st.store(Mode::Replace, b"k", v("r"), 2, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
    assert_eq!(val(&st, "k").as_deref(), Some("r"));
}

#[test]
fn cas_rules() {
    let st = store();
    assert_eq!(
        st.store(Mode::Cas(1), b"k", v("x"), 0, 0).unwrap(),
        StoreStatus::NotFound
    );
    let StoreStatus::Stored(c1) = st.store(Mode::Set, b"k", v("a"), 0, 0).unwrap() else {
        panic!("set failed")
    };
    assert_eq!(st.get(b"k").unwrap().cas, c1);
    assert_eq!(
        st.store(Mode::Cas(c1 + 100), b"k", v("b"), 0, 0).unwrap(),
        StoreStatus::Exists
    );
    let StoreStatus::Stored(c2) = st.store(Mode::Cas(c1), b"k", v("b"), 0, 0).unwrap() else {
        panic!("cas failed")
    };
    assert!(c2 > c1);
    assert_eq!(
        st.store(Mode::Cas(c1), b"k", v("c"), 0, 0).unwrap(),
        StoreStatus::Exists
    );
    assert_eq!(st.delete(b"k", c1).unwrap(), DeleteStatus::Exists);
    assert_eq!(st.delete(b"k", c2).unwrap(), DeleteStatus::Deleted);
    assert_eq!(st.stats.cas_hits.load(Ordering::Relaxed), 1);
    assert_eq!(st.stats.cas_badval.load(Ordering::Relaxed), 2);
    assert_eq!(st.stats.cas_misses.load(Ordering::Relaxed), 1);
}

#[test]
fn incr_decr_rules() {
    let st = store();
    assert_eq!(
        st.delta(b"n", true, 1, None, 0).unwrap(),
        DeltaStatus::NotFound
    );
    st.store(Mode::Set, b"n", v("18446744073709551614"), 3, 0)
        .unwrap();
    assert!(matches!(
        st.delta(b"n", true, 1, None, 0).unwrap(),
        DeltaStatus::Value(u64::MAX, _)
    ));
    assert!(
        matches!(
            st.delta(b"n", true, 2, None, 0).unwrap(),
            DeltaStatus::Value(1, _)
        ),
        "incr wraps at 2^64"
    );
    assert!(
        matches!(
            st.delta(b"n", false, 5, None, 0).unwrap(),
            DeltaStatus::Value(0, _)
        ),
        "decr floors at 0"
    );
    assert_eq!(st.get(b"n").unwrap().flags, 3);
    st.store(Mode::Set, b"t", v("abc"), 0, 0).unwrap();
    assert_eq!(
        st.delta(b"t", true, 1, None, 0).unwrap(),
        DeltaStatus::NonNumeric
    );
    st.store(Mode::Set, b"t", v("18446744073709551616"), 0, 0)
        .unwrap();
    assert_eq!(
        st.delta(b"t", true, 1, None, 0).unwrap(),
        DeltaStatus::NonNumeric,
        "2^64 is not a u64"
    );
    st.store(Mode::Set, b"t", v("12 "), 0, 0).unwrap();
    assert!(matches!(
        st.delta(b"t", false, 3, None, 0).unwrap(),
        DeltaStatus::Value(9, _)
    ));
    // A shorter result keeps the old length, padded (as memcached).
    assert_eq!(val(&st, "t").as_deref(), Some("9  "));
    // Binary protocol: create with initial value.
    assert!(matches!(
        st.delta(b"new", true, 5, Some((10, 0)), 0).unwrap(),
        DeltaStatus::Value(10, _)
    ));
    assert!(matches!(
        st.delta(b"new", true, 5, Some((10, 0)), 0).unwrap(),
        DeltaStatus::Value(15, _)
    ));
    assert_eq!(
        st.delta(b"new", true, 5, None, 12345678).unwrap(),
        DeltaStatus::Exists
    );
}

#[test]
fn parse_decimal_cases() {
    assert_eq!(parse_decimal(b"0"), Some(0));
    assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_decimal(b"18446744073709551616"), None);
    assert_eq!(parse_decimal(b""), None);
    assert_eq!(parse_decimal(b"-1"), None);
    // memcached's strtoull rule: white space, a sign, digits, then white
    // space and anything.
    assert_eq!(parse_decimal(b"1 2"), Some(1));
    assert_eq!(parse_decimal(b"7   "), Some(7));
    assert_eq!(parse_decimal(b" \t12"), Some(12));
    assert_eq!(parse_decimal(b"+5"), Some(5));
    assert_eq!(parse_decimal(b"-0"), Some(0));
    assert_eq!(parse_decimal(b"12abc"), None);
    assert_eq!(parse_decimal(b" "), None);
    assert_eq!(parse_decimal(b"+"), None);
}

#[test]
fn expiry_relative_absolute_negative() {
    let st = store();
    let now = st.now();
    st.store(Mode::Set, b"rel", v("x"), 0, 10).unwrap();
    st.store(Mode::Set, b"abs", v("x"), 0, (now + 20) as i64)
        .unwrap();
    st.store(Mode::Set, b"neg", v("x"), 0, -1).unwrap();
    st.store(Mode::Set, b"past", v("x"), 0, REL_EXPIRY_MAX + 1)
        .unwrap();
    st.store(Mode::Set, b"forever", v("x"), 0, 0).unwrap();
    assert!(st.get(b"neg").is_none());
    assert!(
        st.get(b"past").is_none(),
        "absolute time in 1970 is expired"
    );
    assert!(st.get(b"rel").is_some());
    st.clock().advance(10);
    assert!(st.get(b"rel").is_none());
    assert!(st.get(b"abs").is_some());
    st.clock().advance(10);
    assert!(st.get(b"abs").is_none());
    assert!(st.get(b"forever").is_some());
    assert!(st.stats.get_expired.load(Ordering::Relaxed) >= 3);
}

#[test]
fn touch_and_gat() {
    let st = store();
    assert!(!st.touch(b"k", 10).unwrap());
    st.store(Mode::Set, b"k", v("x"), 0, 5).unwrap();
    assert!(st.touch(b"k", 100).unwrap());
    st.clock().advance(50);
    let it = st.get_and_touch(b"k", 10).unwrap().unwrap();
    assert_eq!(&it.value[..], b"x");
    st.clock().advance(11);
    assert!(st.get(b"k").is_none());
    assert_eq!(st.get_and_touch(b"k", 10).unwrap(), None);
}

#[test]
fn expired_items_do_not_satisfy_add_or_replace() {
    let st = store();
    st.store(Mode::Set, b"k", v("x"), 0, 1).unwrap();
    st.clock().advance(2);
    assert_eq!(
        st.store(Mode::Replace, b"k", v("y"), 0, 0).unwrap(),
        StoreStatus::NotStored
    );
    assert!(matches!(
        st.store(Mode::Add, b"k", v("y"), 0, 0).unwrap(),
        StoreStatus::Stored(_)
    ));
}

#[test]
fn flush_now_and_delayed() {
    let st = store();
    st.store(Mode::Set, b"a", v("1"), 0, 0).unwrap();
    st.flush(0).unwrap();
    assert!(st.get(b"a").is_none());
    assert_eq!(st.len(), 0);
    st.store(Mode::Set, b"a", v("1"), 0, 0).unwrap();
    assert!(st.get(b"a").is_some(), "items stored after a flush live");
    st.flush(10).unwrap();
    assert!(st.get(b"a").is_some(), "delayed flush has not happened yet");
    st.clock().advance(10);
    assert!(st.get(b"a").is_none());
    st.store(Mode::Set, b"b", v("2"), 0, 0).unwrap();
    assert!(st.get(b"b").is_some(), "stored after the flush time");
}

#[test]
fn sweep_reclaims_expired() {
    let st = store();
    for i in 0..1000 {
        st.store(
            Mode::Set,
            format!("k{i}").as_bytes(),
            v("x"),
            0,
            if i % 2 == 0 { 5 } else { 0 },
        )
        .unwrap();
    }
    st.clock().advance(6);
    let mut removed = 0;
    for _ in 0..20 {
        removed += st.sweep_expired(1000);
    }
    assert_eq!(removed, 500);
    assert_eq!(st.len(), 500);
}

#[test]
fn lru_eviction_respects_limit_and_recency() {
    // Room for about 100 items of 100 bytes.
    let item = 100 + 3 + ITEM_OVERHEAD;
    let st = Store::with_clock(item * 100, Clock::Manual(AtomicU64::new(1_700_000_000)));
    let big = Value::from(vec![b'x'; 100]);
    st.store(Mode::Set, b"hot", big.clone(), 0, 0).unwrap();
    for i in 0..1000 {
        st.store(Mode::Set, format!("{i:03}").as_bytes(), big.clone(), 0, 0)
            .unwrap();
        // Keep "hot" recently used.
        assert!(st.get(b"hot").is_some(), "hot key evicted at {i}");
        assert!(st.stats.bytes.load(Ordering::Relaxed) as usize <= st.limit());
    }
    assert!(st.stats.evictions.load(Ordering::Relaxed) >= 900);
    assert!(st.get(b"999").is_some(), "the newest item survives");
    assert!(st.get(b"000").is_none(), "an old item was evicted");
}

#[test]
fn item_bigger_than_memory_is_refused() {
    let st = Store::with_clock(1000, Clock::Manual(AtomicU64::new(0)));
    let r = st
        .store(Mode::Set, b"k", Value::from(vec![0u8; 2000]), 0, 0)
        .unwrap();
    assert_eq!(r, StoreStatus::NoMemory);
}

#[test]
fn stats_bytes_follow_replacements() {
    let st = store();
    st.store(Mode::Set, b"k", v("1234567890"), 0, 0).unwrap();
    st.store(Mode::Set, b"k", v("1"), 0, 0).unwrap();
    assert_eq!(
        st.stats.bytes.load(Ordering::Relaxed) as usize,
        1 + 1 + ITEM_OVERHEAD
    );
    st.store(Mode::Append, b"k", v("23"), 0, 0).unwrap();
    assert_eq!(
        st.stats.bytes.load(Ordering::Relaxed) as usize,
        1 + 3 + ITEM_OVERHEAD
    );
}

#[test]
fn concurrent_incr_is_exact() {
    let st = Arc::new(store());
    st.store(Mode::Set, b"c", v("0"), 0, 0).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let st = st.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    st.delta(b"c", true, 1, None, 0).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(val(&st, "c").as_deref(), Some("4000"));
}
