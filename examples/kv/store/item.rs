//! One item in one allocation: a 32-byte header, the key, the value (see
//! "Layout" in the module docs).
//!
//! ```text
//!  0        4        8                16       20       24       28  29  30  32
//! +--------+--------+----------------+--------+--------+--------+---+---+---+----------+------------+
//! | refs   | vlen   | cas            | flags  | exptime| time   |kln|bit|pad| key ...  | value ...  |
//! +--------+--------+----------------+--------+--------+--------+---+---+---+----------+------------+
//! ```
//!
//! [`Value`] is a thin (8-byte) counted pointer to such a block, like an
//! `Arc` with a 4-byte count and no weak count: the shard's index holds one
//! reference, and a read clones another under the shard lock, so the value
//! bytes are copied to the socket after the lock is gone, even if the item
//! is replaced or evicted meanwhile. Key, value, lengths and flags never
//! change after the block is built; the fields a command changes in place
//! (CAS unique, expiry, last access, the bits) are atomics, written only
//! under the shard lock, so a reader holding a clone never races a plain
//! write.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::malloc_bytes;

/// Bytes of the header in front of key and value.
pub const HEADER: usize = 32;
/// Alignment of an item block (glibc's malloc alignment, so the system
/// allocator hands the request to `malloc` as it is).
const ALIGN: usize = 16;
/// Longest value one item can hold.
pub const VALUE_MAX: usize = u32::MAX as usize;
/// Longest key one item can hold.
pub const KEY_LEN_MAX: usize = u8::MAX as usize;
/// References beyond this abort the process (as `Arc` does past
/// `isize::MAX`): a count that wrapped would free a live block.
const REFS_MAX: u32 = i32::MAX as u32;

/// The item's per-item flag bits.
pub(crate) mod bit {
    /// Read since it was stored (meta `h`).
    pub const FETCHED: u8 = 1;
    /// Invalidated (`md ... I`): still served, marked stale.
    pub const STALE: u8 = 2;
    /// A client was told it won the right to recache it.
    pub const TOKEN_SENT: u8 = 4;
    /// The key was stored in base64 (`ms ... b`).
    pub const BINARY_KEY: u8 = 8;
    /// CLOCK's reference bit: used since the hand last passed.
    pub const REFERENCED: u8 = 16;
}

#[repr(C)]
struct Header {
    /// Live [`Value`]s pointing here.
    refs: AtomicU32,
    vlen: u32,
    cas: AtomicU64,
    flags: u32,
    /// Absolute expiry, Unix seconds, 0 = never.
    exptime: AtomicU32,
    /// Stored or last accessed, Unix seconds.
    time: AtomicU32,
    klen: u8,
    bits: AtomicU8,
    _pad: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER);
const _: () = assert!(std::mem::align_of::<Header>() <= ALIGN);

/// An item's value bytes (it derefs to them), shared so reads copy them
/// outside the lock; in the store it is the whole item (header, key and
/// value in one allocation). A `Value` made from bytes alone
/// (`Value::from`) is an item with an empty key.
pub struct Value {
    ptr: NonNull<Header>,
}

// SAFETY: a `Value` is a counted shared reference like `Arc<[u8]>`: the
// count is atomic (release on drop, acquire before the free), the key,
// value, lengths and flags are never written after `build` returns, and
// every field written later is an atomic. Nothing in it is tied to a
// thread.
unsafe impl Send for Value {}
// SAFETY: as above: `&Value` only reads immutable bytes or atomics.
unsafe impl Sync for Value {}

/// Unix seconds as the header keeps them: clamped to `u32` (the year
/// 2106), which for an expiry reads as "far future".
pub(crate) fn secs(t: u64) -> u32 {
    t.min(u32::MAX as u64) as u32
}

impl Value {
    /// A new item block holding `key` and the concatenation of `parts`.
    ///
    /// # Panics
    ///
    /// If the key is longer than [`KEY_LEN_MAX`] or the value longer than
    /// [`VALUE_MAX`] (the store checks both first).
    pub(crate) fn build(
        key: &[u8],
        parts: &[&[u8]],
        flags: u32,
        exptime: u64,
        time: u64,
        cas: u64,
    ) -> Value {
        let vlen: usize = parts.iter().map(|p| p.len()).sum();
        let klen = u8::try_from(key.len()).expect("key longer than an item holds");
        let vlen32 = u32::try_from(vlen).expect("value longer than an item holds");
        let layout = layout(key.len(), vlen);
        // SAFETY: the layout's size is at least HEADER, never zero.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(layout)
        };
        // SAFETY: (1) `raw` is a fresh allocation of HEADER + key + value
        // bytes aligned to 16, enough for a `Header` (size HEADER, align
        // 8) at its start; (2) the copies fill exactly the key.len() + vlen
        // bytes after the header, from slices that cannot overlap a fresh
        // allocation.
        unsafe {
            ptr.as_ptr().write(Header {
                refs: AtomicU32::new(1),
                vlen: vlen32,
                cas: AtomicU64::new(cas),
                flags,
                exptime: AtomicU32::new(secs(exptime)),
                time: AtomicU32::new(secs(time)),
                klen,
                bits: AtomicU8::new(0),
                _pad: [0; 2],
            });
            let mut at = raw.add(HEADER);
            std::ptr::copy_nonoverlapping(key.as_ptr(), at, key.len());
            at = at.add(key.len());
            for p in parts {
                std::ptr::copy_nonoverlapping(p.as_ptr(), at, p.len());
                at = at.add(p.len());
            }
        }
        Value { ptr }
    }

    fn header(&self) -> &Header {
        // SAFETY: `self` holds a reference, so the block is live; the
        // header was initialised by `build` and is only changed through
        // its atomics.
        unsafe { self.ptr.as_ref() }
    }

    fn bytes_at(&self, offset: usize, len: usize) -> &[u8] {
        // SAFETY: the block is live while `self` is (see `header`), and
        // callers pass a range inside the key or value, which `build`
        // initialised and nothing writes again.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(offset), len) }
    }

    /// The item's key (empty for a bare value).
    pub(crate) fn key(&self) -> &[u8] {
        self.bytes_at(HEADER, self.header().klen as usize)
    }

    /// The value bytes (also what `Deref` gives).
    pub fn bytes(&self) -> &[u8] {
        let h = self.header();
        self.bytes_at(HEADER + h.klen as usize, h.vlen as usize)
    }

    /// Bytes glibc's malloc takes for this block (what the store charges).
    pub(crate) fn charge(&self) -> usize {
        let h = self.header();
        item_bytes(h.klen as usize, h.vlen as usize)
    }

    /// The client's opaque flags.
    pub(crate) fn flags(&self) -> u32 {
        self.header().flags
    }

    /// The CAS unique.
    pub(crate) fn cas(&self) -> u64 {
        self.header().cas.load(Ordering::Relaxed)
    }

    /// Sets the CAS unique (under the shard lock).
    pub(crate) fn set_cas(&self, cas: u64) {
        self.header().cas.store(cas, Ordering::Relaxed)
    }

    /// Absolute expiry in Unix seconds, 0 for never.
    pub(crate) fn exptime(&self) -> u64 {
        self.header().exptime.load(Ordering::Relaxed) as u64
    }

    /// Sets the absolute expiry (under the shard lock).
    pub(crate) fn set_exptime(&self, exptime: u64) {
        self.header()
            .exptime
            .store(secs(exptime), Ordering::Relaxed)
    }

    /// When the item was stored or last accessed, Unix seconds.
    pub(crate) fn time(&self) -> u64 {
        self.header().time.load(Ordering::Relaxed) as u64
    }

    /// Sets the last-access time (under the shard lock).
    pub(crate) fn set_time(&self, t: u64) {
        self.header().time.store(secs(t), Ordering::Relaxed)
    }

    /// Whether all of `mask`'s bits are set.
    pub(crate) fn has(&self, mask: u8) -> bool {
        self.header().bits.load(Ordering::Relaxed) & mask == mask
    }

    /// Sets (`on`) or clears the bits in `mask` (under the shard lock).
    pub(crate) fn set_bits(&self, mask: u8, on: bool) {
        let b = &self.header().bits;
        if on {
            if b.load(Ordering::Relaxed) & mask != mask {
                b.fetch_or(mask, Ordering::Relaxed);
            }
        } else if b.load(Ordering::Relaxed) & mask != 0 {
            b.fetch_and(!mask, Ordering::Relaxed);
        }
    }

    /// The block's address (for tests that ask malloc about it).
    #[cfg(test)]
    pub(crate) fn block_ptr(&self) -> *mut std::ffi::c_void {
        self.ptr.as_ptr().cast()
    }

    /// Live references to this block (for tests).
    #[cfg(test)]
    pub(crate) fn refs(&self) -> u32 {
        self.header().refs.load(Ordering::Relaxed)
    }
}

/// The allocation layout of an item with a `klen`-byte key and a
/// `vlen`-byte value.
fn layout(klen: usize, vlen: usize) -> Layout {
    Layout::from_size_align(HEADER + klen + vlen, ALIGN).expect("item size fits a layout")
}

/// Bytes one item block of this key and value length takes from malloc.
pub fn item_bytes(klen: usize, vlen: usize) -> usize {
    malloc_bytes(HEADER + klen + vlen)
}

impl Clone for Value {
    fn clone(&self) -> Value {
        // Relaxed as `Arc::clone`: the new reference comes from an existing
        // one, which keeps the block alive meanwhile.
        let old = self.header().refs.fetch_add(1, Ordering::Relaxed);
        if old > REFS_MAX {
            std::process::abort();
        }
        Value { ptr: self.ptr }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        let h = self.header();
        if h.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other holder's last use happened before its release
        // decrement; acquire them before the block goes.
        fence(Ordering::Acquire);
        let layout = layout(h.klen as usize, h.vlen as usize);
        // SAFETY: the count reached zero, so this was the last reference
        // and nothing can reach the block any more; it was allocated by
        // `build` with this very layout (same key and value lengths), and
        // the header holds no fields that need dropping.
        unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), layout) }
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::build(b"", &[v], 0, 0, 0, 0)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::from(&v[..])
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Value {}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.bytes().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        let v = Value::build(b"key", &[b"hel", b"", b"lo"], 7, 99, 5, 42);
        assert_eq!(v.key(), b"key");
        assert_eq!(&v[..], b"hello");
        assert_eq!((v.flags(), v.exptime(), v.time(), v.cas()), (7, 99, 5, 42));
        assert_eq!(v.charge(), malloc_bytes(HEADER + 8));
        v.set_cas(43);
        v.set_exptime(u64::MAX);
        assert_eq!((v.cas(), v.exptime()), (43, u32::MAX as u64));
        v.set_bits(bit::STALE | bit::FETCHED, true);
        assert!(v.has(bit::STALE) && v.has(bit::FETCHED) && !v.has(bit::REFERENCED));
        v.set_bits(bit::STALE, false);
        assert!(!v.has(bit::STALE) && v.has(bit::FETCHED));
        let bare = Value::from(&b"x"[..]);
        assert_eq!((bare.key(), &bare[..]), (&b""[..], &b"x"[..]));
        let empty = Value::from(Vec::new());
        assert!(empty.is_empty());
    }

    #[test]
    fn longest_key_and_empty_value() {
        let key = vec![b'k'; KEY_LEN_MAX];
        let v = Value::build(&key, &[], 0, 0, 0, 0);
        assert_eq!(v.key(), &key[..]);
        assert!(v.is_empty());
    }

    #[test]
    fn clones_count_and_the_last_one_frees() {
        let v = Value::build(b"k", &[b"v"], 0, 0, 0, 0);
        let c = v.clone();
        assert_eq!(v.refs(), 2);
        drop(v);
        assert_eq!(c.refs(), 1);
        assert_eq!(&c[..], b"v");
    }

    /// The item allocations are what the charge says they are: malloc's
    /// usable size plus its 8-byte chunk header.
    #[test]
    fn the_charge_is_the_real_allocation() {
        extern "C" {
            fn malloc_usable_size(p: *mut std::ffi::c_void) -> usize;
        }
        // Heap sizes only: after a mapped chunk is freed glibc raises its
        // mmap threshold, and a bigger request then comes from the heap,
        // taking less than the whole pages charged for it.
        for (k, v) in [
            (0, 0),
            (1, 1),
            (14, 10),
            (14, 11),
            (250, 1000),
            (10, 100_000),
        ] {
            let it = Value::build(&vec![b'k'; k], &[&vec![b'v'; v]], 0, 0, 0, 0);
            // SAFETY: the pointer is the start of a live block allocated
            // through the system allocator, which passed the request to
            // malloc (alignment 16 = malloc's own).
            let usable = unsafe { malloc_usable_size(it.block_ptr()) };
            // One 16-byte step more when glibc hands out a free chunk
            // whole rather than leave a remainder below its minimum.
            let real = usable + 8;
            assert!(
                (it.charge()..=it.charge() + 16).contains(&real),
                "key {k}, value {v}: charged {}, real {real}",
                it.charge()
            );
        }
    }

    /// Clones travel between threads and are dropped there in any order;
    /// every thread sees its item's own bytes. A wrong count would free a
    /// block early (valgrind or the allocator's checks catch the reuse) or
    /// leave the count off at the end.
    #[test]
    fn stress_clones_across_threads() {
        let items: Vec<Value> = (0..64u8)
            .map(|i| Value::build(&[i], &[&vec![i; 100 + i as usize]], 0, 0, 0, 0))
            .collect();
        std::thread::scope(|s| {
            for t in 0..8 {
                let items = &items;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..20_000usize {
                        let it = &items[(round * 7 + t) % items.len()];
                        held.push(it.clone());
                        if held.len() > 32 {
                            let v = held.swap_remove(round % held.len());
                            let k = v.key()[0];
                            assert_eq!(v.len(), 100 + k as usize);
                            assert!(v.iter().all(|&b| b == k));
                        }
                    }
                });
            }
        });
        for it in &items {
            assert_eq!(it.refs(), 1);
        }
    }
}
