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
    assert_eq!(st.stats.get_hits.get(), 1);
    assert_eq!(st.stats.get_misses.get(), 1);
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
    assert_eq!(st.stats.cas_hits.get(), 1);
    assert_eq!(st.stats.cas_badval.get(), 2);
    assert_eq!(st.stats.cas_misses.get(), 1);
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
    assert!(st.stats.get_expired.get() >= 3);
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
    let item = item_cost(3, 100);
    let st = Store::with_clock(item * 100, Clock::Manual(AtomicU64::new(1_700_000_000)));
    let big = Value::from(vec![b'x'; 100]);
    st.store(Mode::Set, b"hot", big.clone(), 0, 0).unwrap();
    for i in 0..1000 {
        st.store(Mode::Set, format!("{i:03}").as_bytes(), big.clone(), 0, 0)
            .unwrap();
        // Keep "hot" recently used.
        assert!(st.get(b"hot").is_some(), "hot key evicted at {i}");
        assert!(st.charged() as usize <= st.limit());
    }
    assert!(st.stats.evictions.get() >= 900);
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
        item_bytes(1, 1)
    );
    st.store(Mode::Append, b"k", v("23"), 0, 0).unwrap();
    assert_eq!(
        st.stats.bytes.load(Ordering::Relaxed) as usize,
        item_bytes(1, 3)
    );
    st.store(Mode::Append, b"k", Value::from(vec![b'4'; 40]), 0, 0)
        .unwrap();
    assert_eq!(
        st.stats.bytes.load(Ordering::Relaxed) as usize,
        item_bytes(1, 43)
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

#[test]
fn the_malloc_model_matches_glibc() {
    extern "C" {
        fn malloc_usable_size(p: *mut std::ffi::c_void) -> usize;
    }
    for n in [1usize, 8, 24, 25, 40, 41, 100, 1000, 4096, 100_000] {
        let mut v: Vec<u8> = Vec::with_capacity(n);
        // SAFETY: the pointer is the start of a live allocation made by
        // the system allocator (malloc, alignment 1).
        let usable = unsafe { malloc_usable_size(v.as_mut_ptr().cast()) };
        // A chunk is its usable bytes plus the 8-byte size header. glibc
        // hands out a free chunk whole when splitting it would leave less
        // than its 32-byte minimum, so a chunk may be one 16-byte step
        // bigger than the request needs (more often while other threads
        // allocate from the same arena).
        let real = usable + 8;
        assert!(
            (malloc_bytes(n)..=malloc_bytes(n) + 16).contains(&real),
            "request of {n} bytes: model {}, real {real}",
            malloc_bytes(n)
        );
    }
}

#[test]
fn the_index_is_charged_and_given_back() {
    let st = store();
    assert_eq!(st.stats.index_bytes.load(Ordering::Relaxed), 0);
    for i in 0..10_000 {
        st.store(Mode::Set, format!("k{i}").as_bytes(), v("x"), 0, 0)
            .unwrap();
    }
    let index = st.stats.index_bytes.load(Ordering::Relaxed) as usize;
    // At least one full slot per item, and not more than twice that.
    // At least one 8-byte slot per item, at most a just-doubled table
    // (twice the slots of a full one) plus a small table per shard.
    assert!(index >= 10_000 * 8);
    assert!(index <= 10_000 * 2 * 8 * 16 / 13 + 64 * 4096);
    // Deletes leave the slots allocated, and charged.
    for i in 0..10_000 {
        st.delete(format!("k{i}").as_bytes(), 0).unwrap();
    }
    assert_eq!(st.stats.bytes.load(Ordering::Relaxed), 0);
    assert!(st.stats.index_bytes.load(Ordering::Relaxed) as usize >= index);
    st.flush(0).unwrap();
    assert_eq!(st.stats.index_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn the_limit_holds_when_small_items_give_way_to_big_ones() {
    // Many small items grow the index; big ones then replace them, and
    // the index they leave behind is still charged, so fewer big ones fit.
    let limit = 4 << 20;
    let st = Store::with_clock(limit, Clock::Manual(AtomicU64::new(1_700_000_000)));
    for i in 0..100_000 {
        st.store(Mode::Set, format!("s{i}").as_bytes(), v("x"), 0, 0)
            .unwrap();
        assert!(st.charged() as usize <= limit + item_cost(7, 1));
    }
    let small_index = st.stats.index_bytes.load(Ordering::Relaxed);
    let big = Value::from(vec![b'b'; 1000]);
    for i in 0..10_000 {
        st.store(Mode::Set, format!("b{i}").as_bytes(), big.clone(), 0, 0)
            .unwrap();
        assert!(st.charged() as usize <= limit + item_cost(7, 1000));
    }
    assert!(st.stats.index_bytes.load(Ordering::Relaxed) >= small_index);
    let held = st.len();
    assert!(held > 500, "{held} big items held");
    assert!(held * item_bytes(1, 1000) <= limit);
}

/// The sum of every item's real allocation: `malloc_usable_size` of each
/// block plus malloc's 8-byte chunk header.
///
/// The charge is glibc's rule for a request, which is exact unless malloc
/// hands out a free chunk up to 16 bytes bigger than asked (it does not
/// split off a remainder too small to be a chunk); then the real figure is
/// a little higher.
fn real_item_bytes(st: &Store) -> u64 {
    extern "C" {
        fn malloc_usable_size(p: *mut std::ffi::c_void) -> usize;
    }
    let mut sum = 0;
    for i in 0..st.shards.len() {
        let sh = st.lock(i);
        for s in 0..sh.capacity() {
            if let Some(v) = sh.slot(s) {
                // SAFETY: `v` keeps its block alive; its address is the
                // start of a malloc'd chunk (alignment 16 = malloc's own).
                sum += unsafe { malloc_usable_size(v.block_ptr()) } as u64 + 8;
            }
        }
    }
    sum
}

/// `bytes` is the items' real allocations: never less, and more only by
/// the unsplit remainders (at most 16 bytes an item, rarely).
fn assert_bytes_real(st: &Store) {
    let charged = st.stats.bytes.load(Ordering::Relaxed);
    let real = real_item_bytes(st);
    assert!(charged <= real, "charged {charged}, real {real}");
    assert!(
        real - charged <= 16 * st.len() as u64 && real - charged <= real / 100,
        "charged {charged}, real {real}"
    );
}

#[test]
fn bytes_is_the_sum_of_real_allocations() {
    let st = store();
    for i in 0..5000usize {
        let v = vec![b'v'; i % 300];
        st.store(Mode::Set, format!("key{i}").as_bytes(), &v, 0, 0)
            .unwrap();
    }
    for i in (0..5000).step_by(3) {
        st.delete(format!("key{i}").as_bytes(), 0).unwrap();
    }
    for i in (1..5000).step_by(5) {
        st.store(Mode::Append, format!("key{i}").as_bytes(), v("tail"), 0, 0)
            .unwrap();
        st.delta(format!("n{i}").as_bytes(), true, 1, Some((i as u64, 0)), 0)
            .unwrap();
    }
    assert_bytes_real(&st);
    let index: usize = (0..st.shards.len()).map(|i| st.lock(i).index_bytes()).sum();
    assert_eq!(st.stats.index_bytes.load(Ordering::Relaxed) as usize, index);
}

#[test]
fn clock_eviction_keeps_recently_used_items() {
    // Room for about 2000 items; 200 of them are read between stores.
    let limit = item_cost(6, 100) * 2000 + 64 * 4096;
    let st = Store::with_clock(limit, Clock::Manual(AtomicU64::new(1_700_000_000)));
    let val = vec![b'x'; 100];
    for i in 0..200 {
        st.store(Mode::Set, format!("h{i:05}").as_bytes(), &val, 0, 0)
            .unwrap();
    }
    for i in 0..20_000 {
        st.store(Mode::Set, format!("c{i:05}").as_bytes(), &val, 0, 0)
            .unwrap();
        if i % 5 == 0 {
            for h in 0..200 {
                assert!(
                    st.get(format!("h{h:05}").as_bytes()).is_some(),
                    "hot key {h} evicted after {i} cold stores"
                );
            }
        }
        assert!(st.charged() as usize <= limit);
    }
    let evicted = st.stats.evictions.get();
    assert!(evicted >= 15_000, "{evicted} evictions");
    // Without reads the same stores evict the old keys.
    let held = (0..200)
        .filter(|h| st.meta_peek(format!("h{h:05}").as_bytes()).is_some())
        .count();
    assert_eq!(held, 200);
    for i in 20_000..60_000 {
        st.store(Mode::Set, format!("c{i:05}").as_bytes(), &val, 0, 0)
            .unwrap();
    }
    let held = (0..200)
        .filter(|h| st.meta_peek(format!("h{h:05}").as_bytes()).is_some())
        .count();
    assert!(held < 200, "unused keys are evicted in time");
}

/// Eight threads set, get, append, delete and evict on overlapping keys.
/// Every value names its key and is uniform, so a torn or misplaced value
/// shows; at the end the counters balance with what the table holds.
#[test]
fn stress_threads_on_overlapping_keys() {
    let limit = 2 << 20;
    let st = Arc::new(Store::with_clock(
        limit,
        Clock::Manual(AtomicU64::new(1_700_000_000)),
    ));
    let check = |key: &[u8], v: &[u8]| {
        // "<key>=" then one repeated byte (appends add more of it).
        let head = [key, b"="].concat();
        assert!(v.starts_with(&head), "value {:?} under key {:?}", v, key);
        let body = &v[head.len()..];
        assert!(body.windows(2).all(|w| w[0] == w[1]), "torn value {v:?}");
    };
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let st = &st;
            s.spawn(move || {
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..30_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("k{}", x % 3000).into_bytes();
                    let fill = b'a' + (x % 26) as u8;
                    match (x >> 20) % 8 {
                        0..=2 => {
                            let len = (x >> 30) as usize % 2000;
                            let mut v = [&key[..], b"="].concat();
                            v.resize(v.len() + len, fill);
                            st.store(Mode::Set, &key, &v, 0, 0).unwrap();
                        }
                        3..=5 => {
                            if let Some(it) = st.get(&key) {
                                check(&key, &it.value);
                            }
                        }
                        6 => {
                            st.delete(&key, 0).unwrap();
                        }
                        _ => {
                            // Extends the value with the byte it ends with,
                            // if nobody changed it since (CAS).
                            if let Some(it) = st.get(&key) {
                                let last = *it.value.last().unwrap();
                                let v = [&it.value[..], &[last; 8]].concat();
                                let _ = st.store(Mode::Cas(it.cas), &key, &v, 0, 0);
                            }
                        }
                    }
                }
            });
        }
    });
    assert!(st.stats.evictions.get() > 0, "the limit was hit");
    assert!(st.charged() as usize <= limit);
    let mut n = 0;
    for i in 0..st.shards.len() {
        let sh = st.lock(i);
        for s in 0..sh.capacity() {
            if let Some(v) = sh.slot(s) {
                check(v.key(), v);
                assert_eq!(sh.find(v.key()), Some(s));
                n += 1;
            }
        }
        assert_eq!(n_in(&sh), sh.len());
    }
    assert_eq!(st.len(), n);
    assert_bytes_real(&st);
}

fn n_in(sh: &Shard) -> usize {
    (0..sh.capacity()).filter(|&s| sh.slot(s).is_some()).count()
}

/// The compaction walk sees every item nobody touched while other threads
/// insert (growing tables) and delete (shifting clusters) other keys.
#[test]
fn the_walk_misses_no_untouched_item_under_churn() {
    let st = Arc::new(store());
    for i in 0..20_000 {
        st.store(Mode::Set, format!("keep{i}").as_bytes(), v("k"), 0, 0)
            .unwrap();
    }
    for round in 0..3 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut seen = std::collections::HashSet::new();
        std::thread::scope(|s| {
            let st2 = &st;
            let stop = &stop;
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("churn{round}-{i}");
                    st2.store(Mode::Set, k.as_bytes(), v("c"), 0, 0).unwrap();
                    if i >= 3 {
                        let old = format!("churn{round}-{}", i - 3);
                        st2.delete(old.as_bytes(), 0).unwrap();
                    }
                    i += 1;
                }
            });
            st.for_each_live(|k, _, _| {
                if k.starts_with(b"keep") {
                    seen.insert(k.to_vec());
                }
            });
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(seen.len(), 20_000, "round {round}");
    }
}

/// Items nobody used are gone once three times the limit of newer data
/// went in, even all within one second (the CAS unique orders them), for
/// any hash seed.
#[test]
fn old_unused_items_are_evicted_in_time() {
    for seed in 0..30 {
        let st = Store::with_clock(1 << 20, Clock::Manual(AtomicU64::new(1_700_000_000)));
        for k in 0..4 {
            st.store(Mode::Set, format!("old{k}").as_bytes(), v("10"), 0, 0)
                .unwrap();
        }
        let fill = vec![b'x'; 10_000];
        for i in 0..300 {
            st.store(Mode::Set, format!("fill{i}").as_bytes(), &fill, 0, 0)
                .unwrap();
        }
        for k in 0..4 {
            assert!(
                st.meta_peek(format!("old{k}").as_bytes()).is_none(),
                "old{k} survived (store {seed})"
            );
        }
    }
}

/// The same, deterministically: the walk's own callback (which runs
/// without locks, between batches) deletes keys of the shard being walked,
/// so clusters shift back across the walk's position, and twice adds
/// enough keys to double the tables.
#[test]
fn the_walk_misses_no_untouched_item_when_tables_grow_and_shift() {
    let st = store();
    let mut gone: Vec<Vec<String>> = vec![Vec::new(); st.shards.len()];
    for i in 0..20_000 {
        st.store(Mode::Set, format!("keep{i}").as_bytes(), v("k"), 0, 0)
            .unwrap();
        let g = format!("gone{i}");
        st.store(Mode::Set, g.as_bytes(), v("g"), 0, 0).unwrap();
        gone[st.shard_of(g.as_bytes())].push(g);
    }
    let caps_before: Vec<usize> = (0..st.shards.len())
        .map(|i| st.lock(i).capacity())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut calls = 0usize;
    st.for_each_live(|k, _, _| {
        calls += 1;
        if k.starts_with(b"keep") {
            seen.insert(k.to_vec());
        }
        for _ in 0..2 {
            if let Some(g) = gone[st.shard_of(k)].pop() {
                st.delete(g.as_bytes(), 0).unwrap();
            }
        }
        if calls == 5_000 || calls == 15_000 {
            for j in 0..40_000 {
                st.store(
                    Mode::Set,
                    format!("new{calls}-{j}").as_bytes(),
                    v("n"),
                    0,
                    0,
                )
                .unwrap();
            }
        }
    });
    let grown = (0..st.shards.len())
        .filter(|&i| st.lock(i).capacity() > caps_before[i])
        .count();
    assert!(grown > 0, "the tables grew during the walk");
    assert_eq!(seen.len(), 20_000);
}
