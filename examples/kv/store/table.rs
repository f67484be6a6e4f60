//! A shard's index: an open-addressing hash table of item pointers (see
//! "Layout" in the module docs).
//!
//! Each slot is one `Option<Value>`, 8 bytes (a thin pointer, null when
//! empty). Lookups probe linearly from `hash & mask` and compare keys
//! inside the items. Deletion shifts the following entries of the cluster
//! back (no tombstones), so the invariant of linear probing always holds:
//! every slot from an entry's home to its position is occupied. The table
//! doubles when it passes [`LOAD_NUM`]/[`LOAD_DEN`] full and never shrinks
//! (a `flush_all` drops it whole).

use super::{malloc_bytes, Value};

/// Smallest table.
const MIN_SLOTS: usize = 16;
/// Grow past this load (13/16 = 81%).
const LOAD_NUM: usize = 13;
/// See [`LOAD_NUM`].
const LOAD_DEN: usize = 16;

/// An open-addressing table of items, keyed by the key inside each.
#[derive(Debug, Default)]
pub(crate) struct Table {
    slots: Box<[Option<Value>]>,
    len: usize,
}

impl Table {
    /// Slots (a power of two, or zero before the first insert).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Items held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the slot array takes from malloc (0 when unallocated).
    pub(crate) fn bytes(&self) -> usize {
        match self.slots.len() {
            0 => 0,
            n => malloc_bytes(n * std::mem::size_of::<Option<Value>>()),
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key` (whose hash is `hash`), if any.
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // Ends: the load stays below 1, so some slot is empty.
        loop {
            match &self.slots[i] {
                None => return None,
                Some(v) if v.key() == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The item in slot `i`, if any.
    pub(crate) fn slot(&self, i: usize) -> Option<&Value> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    /// The item in an occupied slot.
    ///
    /// # Panics
    ///
    /// If the slot is empty (a bug in the caller).
    pub(crate) fn get(&self, i: usize) -> &Value {
        self.slots[i].as_ref().expect("an occupied slot")
    }

    /// Puts `v` in occupied slot `i` (an item with the same key), returning
    /// the one it replaces.
    pub(crate) fn replace(&mut self, i: usize, v: Value) -> Value {
        debug_assert_eq!(self.get(i).key(), v.key());
        self.slots[i].replace(v).expect("an occupied slot")
    }

    /// Inserts an item whose key is not present; `hash` is its key's hash
    /// and `rehash` hashes any key (to place entries when the table grows).
    /// Returns its slot.
    pub(crate) fn insert(&mut self, hash: u64, v: Value, rehash: impl Fn(&[u8]) -> u64) -> usize {
        if (self.len + 1) * LOAD_DEN > self.slots.len() * LOAD_NUM {
            self.grow(&rehash);
        }
        self.len += 1;
        self.place(hash, v)
    }

    fn place(&mut self, hash: u64, v: Value) -> usize {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some(v);
        i
    }

    fn grow(&mut self, rehash: &impl Fn(&[u8]) -> u64) {
        let cap = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, (0..cap).map(|_| None).collect());
        for v in old.into_vec().into_iter().flatten() {
            let h = rehash(v.key());
            self.place(h, v);
        }
    }

    /// Removes the item in occupied slot `i` and shifts the rest of its
    /// cluster back so no probe sequence is broken; `rehash` hashes a key.
    pub(crate) fn remove(&mut self, i: usize, rehash: impl Fn(&[u8]) -> u64) -> Value {
        let out = self.slots[i].take().expect("removing an occupied slot");
        self.len -= 1;
        let mask = self.mask();
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some(v) = &self.slots[j] else { break };
            let home = rehash(v.key()) as usize & mask;
            // The entry at `j` may fill the hole unless its home lies in
            // the cyclic range (hole, j]: then it would sit before its home.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
        out
    }

    /// Drops every item and the slot array.
    pub(crate) fn clear(&mut self) {
        *self = Table::default();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use proptest::prelude::*;

    use super::*;

    fn item(k: &[u8], v: u32) -> Value {
        Value::build(k, &[&v.to_le_bytes()], 0, 0, 0, 0)
    }

    /// Every entry is reachable from its home without crossing an empty
    /// slot (the invariant lookups and deletion rely on).
    fn check_invariant(t: &Table, h: &impl Fn(&[u8]) -> u64) {
        let n = t.capacity();
        let mut count = 0;
        for pos in 0..n {
            if let Some(v) = t.slot(pos) {
                count += 1;
                let mut i = h(v.key()) as usize & (n - 1);
                while i != pos {
                    assert!(t.slot(i).is_some(), "gap between home and entry");
                    i = (i + 1) & (n - 1);
                }
            }
        }
        assert_eq!(count, t.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small key space, so inserts, removes and gets collide.
        prop_oneof![
            (0..600u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0..600u16).prop_map(Op::Remove),
            (0..600u16).prop_map(Op::Get),
        ]
    }

    fn run(ops: &[Op], hash: impl Fn(&[u8]) -> u64) {
        let mut t = Table::default();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        for op in ops {
            match *op {
                Op::Insert(k, v) => {
                    let key = k.to_string().into_bytes();
                    let h = hash(&key);
                    match t.find(h, &key) {
                        Some(i) => {
                            t.replace(i, item(&key, v));
                        }
                        None => {
                            let i = t.insert(h, item(&key, v), &hash);
                            assert_eq!(t.find(h, &key), Some(i));
                        }
                    }
                    model.insert(key, v);
                }
                Op::Remove(k) => {
                    let key = k.to_string().into_bytes();
                    let got = t.find(hash(&key), &key).map(|i| t.remove(i, &hash));
                    let want = model.remove(&key);
                    assert_eq!(
                        got.map(|v| v[..].to_vec()),
                        want.map(|v| v.to_le_bytes().to_vec())
                    );
                }
                Op::Get(k) => {
                    let key = k.to_string().into_bytes();
                    let got = t.find(hash(&key), &key).map(|i| t.get(i)[..].to_vec());
                    assert_eq!(got, model.get(&key).map(|v| v.to_le_bytes().to_vec()));
                }
            }
            assert_eq!(t.len(), model.len());
            assert!(t.len() * LOAD_DEN <= t.capacity() * LOAD_NUM);
        }
        check_invariant(&t, &hash);
        for (k, v) in &model {
            let i = t.find(hash(k), k).expect("every model key is found");
            assert_eq!(&t.get(i)[..], &v.to_le_bytes()[..]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The table agrees with a `HashMap` over random inserts, removes
        /// and lookups, with a real hash.
        #[test]
        fn matches_a_hashmap(ops in prop::collection::vec(op(), 1..3000)) {
            let s = RandomState::new();
            run(&ops, |k| s.hash_one(k));
        }

        /// The same with a weak hash (few distinct homes), so clusters are
        /// long and wrap around the end: deletion's back shift is tested
        /// hard.
        #[test]
        fn matches_a_hashmap_with_collisions(ops in prop::collection::vec(op(), 1..2000)) {
            let s = RandomState::new();
            run(&ops, |k| (s.hash_one(k) % 7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }

    #[test]
    fn grows_by_doubling_and_keeps_everything() {
        let s = RandomState::new();
        let h = |k: &[u8]| s.hash_one(k);
        let mut t = Table::default();
        assert_eq!((t.capacity(), t.bytes()), (0, 0));
        for i in 0..100_000u32 {
            let k = i.to_string().into_bytes();
            t.insert(h(&k), item(&k, i), h);
        }
        assert_eq!(t.capacity(), 131_072);
        assert_eq!(t.bytes(), malloc_bytes(131_072 * 8));
        check_invariant(&t, &h);
        for i in (0..100_000u32).step_by(3) {
            let k = i.to_string().into_bytes();
            let slot = t.find(h(&k), &k).unwrap();
            t.remove(slot, h);
        }
        check_invariant(&t, &h);
        for i in 0..100_000u32 {
            let k = i.to_string().into_bytes();
            assert_eq!(t.find(h(&k), &k).is_some(), i % 3 != 0, "key {i}");
        }
        assert_eq!(t.capacity(), 131_072, "the table never shrinks");
    }
}
