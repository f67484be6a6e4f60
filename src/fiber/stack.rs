//! Fiber stacks: carved from large mappings, guarded without a mapping each.
//!
//! # Why not one mapping per stack
//!
//! The obvious stack (corosensei's `DefaultStack`) is its own `mmap` with an
//! `mprotect`ed guard page below it: two kernel memory areas (VMAs) per
//! fiber. Linux caps a process at `vm.max_map_count` areas, 65,530 by
//! default, so such a runtime cannot hold more than about 32,000 fibers at
//! once on a stock kernel, however much memory it has.
//!
//! # Layout
//!
//! Stacks of one size live in *chunks*: anonymous mappings of about 64 MiB,
//! reserved with `MAP_NORESERVE` (no commit charge; a page costs memory only
//! once it is touched), cut into equal *slots*:
//!
//! ```text
//!  chunk (one mapping, one VMA; adjacent chunks merge into it)
//!  +-------+------------------+-------+------------------+-------+----
//!  | guard |  stack 0  <-grows| guard |  stack 1  <-grows| guard | ...
//!  +-------+------------------+-------+------------------+-------+----
//!  ^ limit                    ^ base
//! ```
//!
//! A slot is one guard page plus the stack size rounded up to whole pages;
//! the stack grows down from `base` towards its guard. A fiber that touches
//! one page of its stack costs one page of memory.
//!
//! # Guards
//!
//! The guard page is installed with `madvise(MADV_GUARD_INSTALL)` (Linux
//! 6.13+): a marker in the page table that makes any access fault with
//! `SIGSEGV`, without splitting the mapping, so a million guarded stacks
//! still take a handful of VMAs. New slots are prepared 32 at a time, and
//! their guards go in with a single `process_madvise` call on `PIDFD_SELF`
//! (Linux 6.15+; one `madvise` per guard where that call is refused), which
//! saves a system call per fiber. The markers survive `MADV_DONTNEED`, so the
//! pool can drop a stack's pages without reinstalling its guard. The
//! overflow report ([`overflow`](super::overflow)) only compares the fault
//! address with the guard's range, so it works the same with either kind of
//! guard.
//!
//! On an older kernel `madvise` answers `EINVAL`; the pool then falls back to
//! an `mprotect(PROT_NONE)` guard page per stack, which splits the chunk and
//! costs two VMAs per stack, and says so once, loudly (through `log` when a
//! logger takes warnings, on stderr otherwise), with the number of fibers
//! that allows and the sysctl that raises it. Setting `WEAVE_STACK_GUARD=mprotect`
//! in the environment forces the fallback, to test it on a new kernel.
//!
//! # Reuse and giving memory back
//!
//! Slots are never unmapped (that would split the chunk); a finished fiber's
//! stack goes back to a free list of its size, process-wide. The most
//! recently freed stacks are reused first, their pages still resident. Up to
//! a high-water mark of free stacks (the largest
//! [`stack_pool`](crate::runtime::Builder::stack_pool) × workers of any
//! runtime) keep their pages; stacks freed beyond it are *trimmed*: in
//! batches of 256, sorted by address and merged into runs of adjacent
//! slots, their pages go back to the kernel with `MADV_DONTNEED`, all runs
//! of a batch in one `process_madvise` call (one call per run where that
//! is refused). One call is one TLB flush: while the process's other
//! threads run, a flush interrupts their cores, and in a virtual machine
//! that interrupt is expensive. A trimmed stack costs no memory until it is
//! used again.
//!
//! # Failure
//!
//! A stack is taken when a fiber is *spawned*, not when it first runs, so a
//! failure (address space, or VMAs under the `mprotect` fallback) reaches the
//! caller of `spawn` as an `io::Error` instead of dropping the fiber later.

use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use corosensei::stack::valgrind::ValgrindStackRegistration;
use corosensei::stack::{Stack, StackPointer};

/// `madvise` advice that installs guard markers (Linux 6.13+).
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Bytes of address space per chunk (at least one slot).
const CHUNK_BYTES: usize = 64 << 20;

/// Never-used slots are prepared this many at a time, their guards
/// installed with one system call.
const CARVE_BATCH: usize = 32;

/// `process_madvise(2)`'s pidfd for the calling process (Linux 6.15+): no
/// descriptor to open, and it cannot go stale across `fork`.
const PIDFD_SELF: libc::c_int = -10001;

/// Set once `process_madvise` on `PIDFD_SELF` failed: every range is then
/// advised with its own `madvise`.
static NO_BATCH_ADVICE: AtomicBool = AtomicBool::new(false);

/// Stacks freed past the high-water mark are trimmed this many at a time,
/// in one system call.
const TRIM_BATCH: usize = 256;

/// Default high-water mark: free stacks that keep their pages.
const DEFAULT_HIGH_WATER: usize = 1024;

const GUARD_UNKNOWN: u8 = 0;
const GUARD_MADVISE: u8 = 1;
const GUARD_MPROTECT: u8 = 2;

/// Which kind of guard the pool installs (decided on the first stack).
static GUARD_KIND: AtomicU8 = AtomicU8::new(GUARD_UNKNOWN);

/// Free stacks of one size that keep their pages.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(DEFAULT_HIGH_WATER);

/// The free lists and chunk cursors, one entry per slot size.
static POOL: Mutex<Vec<Class>> = Mutex::new(Vec::new());

/// Slots of one size.
struct Class {
    slot_len: usize,
    /// Freed under the high-water mark: pages still resident, reused first.
    warm: Vec<usize>,
    /// Freed above it, waiting for the next trim (still reusable).
    dirty: Vec<usize>,
    /// Trimmed: no resident pages.
    clean: Vec<usize>,
    /// Never used, prepared by the last carve: guard installed, no page
    /// resident.
    fresh: Vec<usize>,
    /// Next never-used slot of the current chunk, and the chunk's end.
    next: usize,
    end: usize,
}

/// A fiber stack from the pool; goes back to it on drop.
pub(crate) struct FiberStack {
    /// The guard page's lowest address, which is the slot's.
    limit: usize,
    /// One past the stack's highest byte.
    base: usize,
    valgrind: ManuallyDrop<ValgrindStackRegistration>,
}

impl std::fmt::Debug for FiberStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FiberStack")
            .field("limit", &format_args!("{:#x}", self.limit))
            .field("base", &format_args!("{:#x}", self.base))
            .finish()
    }
}

pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            PAGE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// Raises the number of free stacks that keep their pages to at least `n`.
pub(crate) fn raise_high_water(n: usize) {
    HIGH_WATER.fetch_max(n, Ordering::Relaxed);
}

fn lock() -> MutexGuard<'static, Vec<Class>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

impl FiberStack {
    /// Takes a stack of at least `size` usable bytes (plus a guard page).
    ///
    /// # Errors
    ///
    /// The size overflows, or the kernel refuses a chunk (address space) or
    /// a guard page (VMAs, under the `mprotect` fallback).
    pub(crate) fn new(size: usize) -> io::Result<FiberStack> {
        let page = page_size();
        let slot_len = size
            .max(corosensei::stack::MIN_STACK_SIZE)
            .checked_add(2 * page - 1)
            .map(|n| n & !(page - 1))
            .ok_or_else(|| stack_error(size, io::ErrorKind::InvalidInput.into()))?;
        let limit = {
            let mut pool = lock();
            let i = match pool.iter().position(|c| c.slot_len == slot_len) {
                Some(i) => i,
                None => {
                    pool.push(Class {
                        slot_len,
                        warm: Vec::new(),
                        dirty: Vec::new(),
                        clean: Vec::new(),
                        fresh: Vec::new(),
                        next: 0,
                        end: 0,
                    });
                    pool.len() - 1
                }
            };
            let class = &mut pool[i];
            let reused = class
                .warm
                .pop()
                .or_else(|| class.dirty.pop())
                .or_else(|| class.fresh.pop())
                .or_else(|| class.clean.pop());
            match reused {
                Some(slot) => slot,
                None => {
                    class.carve().map_err(|e| stack_error(size, e))?;
                    class
                        .fresh
                        .pop()
                        .expect("a carve prepares at least one slot")
                }
            }
        };
        let valgrind = ValgrindStackRegistration::new(limit as *mut u8, slot_len);
        Ok(FiberStack {
            limit,
            base: limit + slot_len,
            valgrind: ManuallyDrop::new(valgrind),
        })
    }

    /// The guard page: `[lo, hi)`.
    pub(crate) fn guard(&self) -> (usize, usize) {
        (self.limit, self.limit + page_size())
    }
}

impl Class {
    /// Prepares up to [`CARVE_BATCH`] never-used slots into `fresh`, mapping
    /// a new chunk when the current one is used up, and installs their
    /// guards with one system call for the whole batch where the kernel
    /// allows it.
    fn carve(&mut self) -> io::Result<()> {
        if self.next == self.end {
            let len = (CHUNK_BYTES / self.slot_len).max(1) * self.slot_len;
            let chunk = map_chunk(len)?;
            self.next = chunk;
            self.end = chunk + len;
        }
        let n = ((self.end - self.next) / self.slot_len).min(CARVE_BATCH);
        let mut slots = [0usize; CARVE_BATCH];
        for (i, s) in slots[..n].iter_mut().enumerate() {
            *s = self.next + i * self.slot_len;
        }
        let slots = &slots[..n];
        install_guards(slots)?;
        // Only now are the slots guarded: none is handed out before.
        self.next += n * self.slot_len;
        // Popped from the back: hand out the lowest address first.
        self.fresh.extend(slots.iter().rev());
        Ok(())
    }
}

/// Most ranges per `process_madvise` call (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// Applies `advice` to the page at each address (see [`advise_ranges`]).
fn advise_pages(pages: impl Iterator<Item = usize>, advice: libc::c_int) -> io::Result<()> {
    let page = page_size();
    let ranges: Vec<(usize, usize)> = pages.map(|p| (p, page)).collect();
    advise_ranges(&ranges, advice)
}

/// Applies `advice` to each `(address, length)` range: one
/// `process_madvise` call per [`MAX_IOV`] ranges where the kernel supports
/// it on `PIDFD_SELF`, one `madvise` per range otherwise. One call also
/// means one TLB flush for all its ranges (Linux 6.16+), where a `madvise`
/// per range interrupts every other core running the process each time.
///
/// Every range must lie in a chunk this module mapped and belong to no
/// live stack.
fn advise_ranges(ranges: &[(usize, usize)], advice: libc::c_int) -> io::Result<()> {
    let mut done = 0;
    if !NO_BATCH_ADVICE.load(Ordering::Relaxed) {
        while done < ranges.len() {
            let iov: Vec<libc::iovec> = ranges[done..]
                .iter()
                .take(MAX_IOV)
                .map(|&(p, len)| libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            // SAFETY: every iovec names pages of a chunk this module mapped
            // that belong to no live stack (guard pages, slots not handed
            // out, or free slots); the kernel reads the array, which
            // outlives the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    PIDFD_SELF,
                    iov.as_ptr(),
                    iov.len(),
                    advice,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if done == 0 {
                    // No batching here (an older kernel, or a seccomp
                    // filter): fall back for this call and every later one.
                    NO_BATCH_ADVICE.store(true, Ordering::Relaxed);
                    break;
                }
                return Err(e);
            }
            // The kernel advises whole ranges in order; count the ones the
            // bytes it reports cover.
            let mut bytes = r as usize;
            for &(_, len) in &ranges[done..] {
                if bytes < len {
                    break;
                }
                bytes -= len;
                done += 1;
            }
            if bytes > 0 {
                // Part of a range: finish it, and the rest, one by one.
                break;
            }
        }
    }
    for &(p, len) in &ranges[done..] {
        loop {
            // SAFETY: as above: pages of ours that no live stack uses.
            let r = unsafe { libc::madvise(p as *mut libc::c_void, len, advice) };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Installs the guard page at the start of each slot: the first one alone,
/// which settles the kind of guard this kernel supports, then the rest in
/// one batch when that kind is `MADV_GUARD_INSTALL`.
fn install_guards(slots: &[usize]) -> io::Result<()> {
    let Some((&first, rest)) = slots.split_first() else {
        return Ok(());
    };
    install_guard(first)?;
    if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MADVISE
        && advise_pages(rest.iter().copied(), MADV_GUARD_INSTALL).is_ok()
    {
        return Ok(());
    }
    // The mprotect fallback, or a batch that failed part-way: guards are
    // idempotent, so do every remaining one singly.
    rest.iter().try_for_each(|&s| install_guard(s))
}

fn stack_error(size: usize, e: io::Error) -> io::Error {
    let hint = if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MPROTECT
        && e.raw_os_error() == Some(libc::ENOMEM)
    {
        " (this kernel lacks MADV_GUARD_INSTALL, so each stack costs two memory \
         mappings; raise vm.max_map_count)"
    } else {
        ""
    };
    io::Error::new(
        e.kind(),
        format!("cannot allocate a fiber stack of {size} bytes: {e}{hint}"),
    )
}

/// Reserves `len` bytes of address space, readable and writable, committed
/// only as pages are touched.
fn map_chunk(len: usize) -> io::Result<usize> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Stacks touch a page or two each: a transparent huge page would turn
    // that into 2 MiB. Advice only; a failure changes nothing else.
    // SAFETY: `addr..addr + len` is the mapping made just above.
    unsafe {
        libc::madvise(addr, len, libc::MADV_NOHUGEPAGE);
    }
    Ok(addr as usize)
}

/// Makes the page at `slot` fault on any access.
fn install_guard(slot: usize) -> io::Result<()> {
    let page = page_size();
    let mut kind = GUARD_KIND.load(Ordering::Relaxed);
    if kind == GUARD_UNKNOWN {
        kind = if std::env::var_os("WEAVE_STACK_GUARD").is_some_and(|v| v == "mprotect") {
            GUARD_MPROTECT
        } else {
            GUARD_MADVISE
        };
        GUARD_KIND.store(kind, Ordering::Relaxed);
        if kind == GUARD_MPROTECT {
            warn_mprotect_fallback("WEAVE_STACK_GUARD=mprotect is set");
        }
    }
    if kind == GUARD_MADVISE {
        loop {
            // SAFETY: `slot` is the first page of a slot of a chunk we
            // mapped; the page belongs to no stack.
            let r = unsafe { libc::madvise(slot as *mut libc::c_void, page, MADV_GUARD_INSTALL) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => continue,
                Some(libc::EINVAL) => {
                    GUARD_KIND.store(GUARD_MPROTECT, Ordering::Relaxed);
                    warn_mprotect_fallback("this kernel has no MADV_GUARD_INSTALL (Linux 6.13+)");
                    break;
                }
                _ => return Err(e),
            }
        }
    }
    // SAFETY: as above; the page becomes inaccessible and belongs to no
    // stack.
    let r = unsafe { libc::mprotect(slot as *mut libc::c_void, page, libc::PROT_NONE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Says once that stacks use `mprotect` guards, and what that limits.
fn warn_mprotect_fallback(why: &str) {
    let max_maps: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530);
    let msg = format!(
        "weave: {why}; fiber stacks use mprotect guard pages, two memory mappings \
         per stack, so with vm.max_map_count = {max_maps} at most about {} fibers can \
         be alive at once (spawn fails beyond that). Raise the limit with \
         `sysctl -w vm.max_map_count=<n>` (about 2 per fiber, plus the process's own), \
         or run on Linux 6.13 or later.",
        max_maps / 2
    );
    let meta = log::Metadata::builder()
        .level(log::Level::Warn)
        .target("weave")
        .build();
    if log::Level::Warn <= log::max_level() && log::logger().enabled(&meta) {
        log::warn!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

impl Drop for FiberStack {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.valgrind) };
        let slot_len = self.base - self.limit;
        let batch = {
            let mut pool = lock();
            let Some(class) = pool.iter_mut().find(|c| c.slot_len == slot_len) else {
                return; // Unreachable: every stack comes from a class.
            };
            let kept: usize = class.warm.len();
            if kept < HIGH_WATER.load(Ordering::Relaxed) {
                class.warm.push(self.limit);
                return;
            }
            class.dirty.push(self.limit);
            if class.dirty.len() < TRIM_BATCH {
                return;
            }
            std::mem::take(&mut class.dirty)
        };
        // Trim outside the lock: the slots are in no list meanwhile.
        let batch = trim(batch, slot_len);
        let mut pool = lock();
        if let Some(class) = pool.iter_mut().find(|c| c.slot_len == slot_len) {
            class.clean.extend(batch);
        }
    }
}

/// Gives the pages of free slots back to the kernel, one `madvise` per run
/// of adjacent slots (guard markers survive it).
fn trim(mut slots: Vec<usize>, slot_len: usize) -> Vec<usize> {
    let page = page_size();
    slots.sort_unstable();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let start = slots[i];
        let mut j = i + 1;
        while j < slots.len() && slots[j] == slots[j - 1] + slot_len {
            j += 1;
        }
        // From above the first guard to the end of the run: the guards
        // inside it survive `MADV_DONTNEED`.
        let lo = start + page;
        let hi = slots[j - 1] + slot_len;
        runs.push((lo, hi - lo));
        i = j;
    }
    // Advice only: a failure leaves the pages resident, which costs memory
    // but nothing else.
    let _ = advise_ranges(&runs, libc::MADV_DONTNEED);
    slots
}

// SAFETY: `base` is one past the top of `slot_len - page` writable bytes
// (at least `MIN_STACK_SIZE`), page-aligned, and `limit` is the slot's
// start, which includes the guard page below the stack.
unsafe impl Stack for FiberStack {
    #[inline]
    fn base(&self) -> StackPointer {
        StackPointer::new(self.base).expect("stack base is not null")
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        StackPointer::new(self.limit).expect("stack limit is not null")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(addr: usize, len: usize) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; len / page];
        // SAFETY: `addr..addr + len` is mapped (a stack slot) and `vec` has
        // one byte per page.
        let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    fn count_maps() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn smoke() {
        let s = FiberStack::new(16 * 1024).unwrap();
        let (lo, hi) = s.guard();
        assert_eq!(lo, s.limit);
        assert_eq!(hi - lo, page_size());
        assert_eq!(s.base - hi, 16 * 1024);
        // The stack is writable end to end.
        // SAFETY: `hi..base` is the stack's writable part, which we own.
        unsafe { std::ptr::write_bytes(hi as *mut u8, 0xa5, s.base - hi) };
    }

    #[test]
    fn distinct_stacks_do_not_overlap() {
        let stacks: Vec<_> = (0..200)
            .map(|_| FiberStack::new(8 * 1024).unwrap())
            .collect();
        let mut ranges: Vec<_> = stacks.iter().map(|s| (s.limit, s.base)).collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap: {:x?} {:x?}", w[0], w[1]);
        }
    }

    /// Many live stacks take a few mappings, not one or two each.
    #[test]
    fn stacks_do_not_spend_a_mapping_each() {
        if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MPROTECT
            || std::env::var_os("WEAVE_STACK_GUARD").is_some()
        {
            return; // The fallback spends two per stack by design.
        }
        let _probe = FiberStack::new(12 * 1024).unwrap();
        if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MPROTECT {
            return; // Old kernel.
        }
        let before = count_maps();
        let stacks: Vec<_> = (0..20_000)
            .map(|_| FiberStack::new(12 * 1024).unwrap())
            .collect();
        let after = count_maps();
        assert!(
            after < before + 100,
            "20,000 stacks added {} mappings",
            after - before
        );
        drop(stacks);
    }

    /// Stacks freed beyond the high-water mark give their pages back.
    #[test]
    fn trimmed_stacks_give_pages_back() {
        // A size no other test uses, so this class's lists are ours alone.
        let size = 20 * 1024;
        // Well past the mark, even if a runtime built meanwhile raises it.
        let n = HIGH_WATER.load(Ordering::Relaxed).max(8192) + 4 * TRIM_BATCH;
        let touch = |s: &FiberStack, v: u8| {
            let (_, hi) = s.guard();
            // SAFETY: the lowest and the highest page of a stack we own.
            unsafe {
                *(hi as *mut u8) = v;
                *((s.base - 1) as *mut u8) = v;
            }
        };
        let stacks: Vec<_> = (0..n).map(|_| FiberStack::new(size).unwrap()).collect();
        stacks.iter().for_each(|s| touch(s, 1));
        let slots: Vec<_> = stacks.iter().map(|s| (s.limit, s.base)).collect();
        let touched: usize = slots.iter().map(|&(l, b)| resident(l, b - l)).sum();
        assert_eq!(touched, 2 * n);
        drop(stacks);
        let left: usize = slots.iter().map(|&(l, b)| resident(l, b - l)).sum();
        // At most the high-water mark stays resident (plus a partial batch).
        let high = HIGH_WATER.load(Ordering::Relaxed);
        let bound = 2 * (high + TRIM_BATCH);
        assert!(left <= bound, "{left} pages still resident, bound {bound}");
        assert!(left < touched, "nothing was given back");
        // Trimmed stacks are reused, zeroed, and still writable.
        let again: Vec<_> = (0..n).map(|_| FiberStack::new(size).unwrap()).collect();
        let zeroed = again
            .iter()
            .filter(|s| {
                // SAFETY: the top byte of a stack we own.
                unsafe { *((s.base - 1) as *const u8) == 0 }
            })
            .count();
        assert!(
            zeroed >= n - high - TRIM_BATCH,
            "only {zeroed} trimmed stacks"
        );
        again.iter().for_each(|s| touch(s, 2));
    }

    /// The page-map entry of the page at `addr` (`/proc/self/pagemap`).
    fn pagemap(addr: usize) -> u64 {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
        f.seek(SeekFrom::Start((addr / page_size() * 8) as u64))
            .unwrap();
        let mut b = [0u8; 8];
        f.read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    }

    /// Bit of a page-map entry set for a guard marker (Linux 6.15+).
    const PM_GUARD_REGION: u64 = 1 << 58;
    /// Bit of a page-map entry set for a resident page.
    const PM_PRESENT: u64 = 1 << 63;

    /// Every stack of a carved batch has its guard, and only its guard.
    #[test]
    fn carved_batches_are_guarded_and_not_resident() {
        // A size no other test uses: every stack below is freshly carved.
        let stacks: Vec<_> = (0..3 * CARVE_BATCH + 5)
            .map(|_| FiberStack::new(28 * 1024).unwrap())
            .collect();
        if GUARD_KIND.load(Ordering::Relaxed) != GUARD_MADVISE {
            return; // mprotect guards do not show in the page map.
        }
        if pagemap(stacks[0].limit) & PM_GUARD_REGION == 0 {
            return; // This kernel does not report guard markers.
        }
        for (i, s) in stacks.iter().enumerate() {
            assert_ne!(
                pagemap(s.limit) & PM_GUARD_REGION,
                0,
                "stack {i} has no guard"
            );
            assert_eq!(
                pagemap(s.limit + page_size()) & PM_GUARD_REGION,
                0,
                "stack {i}: the guard reaches into the stack"
            );
            assert_eq!(
                pagemap(s.base - page_size()) & PM_PRESENT,
                0,
                "stack {i}: a page is resident before use"
            );
        }
    }

    /// Without `process_madvise` (an older kernel, a seccomp filter), the
    /// one-call-per-range path guards and trims the same. The flag is
    /// process-wide, but both paths are correct, so tests running
    /// meanwhile are unaffected.
    #[test]
    fn advice_falls_back_to_one_call_per_range() {
        NO_BATCH_ADVICE.store(true, Ordering::Relaxed);
        // A size no other test uses.
        let stacks: Vec<_> = (0..2 * CARVE_BATCH + 3)
            .map(|_| FiberStack::new(44 * 1024).unwrap())
            .collect();
        let page = page_size();
        if GUARD_KIND.load(Ordering::Relaxed) == GUARD_MADVISE
            && pagemap(stacks[0].limit) & PM_GUARD_REGION != 0
        {
            for (i, s) in stacks.iter().enumerate() {
                assert_ne!(
                    pagemap(s.limit) & PM_GUARD_REGION,
                    0,
                    "stack {i} has no guard"
                );
            }
        }
        for s in &stacks {
            // SAFETY: the top byte of a stack we own.
            unsafe { *((s.base - 1) as *mut u8) = 1 };
        }
        let runs: Vec<_> = stacks
            .iter()
            .map(|s| (s.limit + page, s.base - s.limit - page))
            .collect();
        let resident_before: usize = runs.iter().map(|&(a, l)| resident(a, l)).sum();
        assert_eq!(resident_before, stacks.len());
        // What `trim` does to free slots; these are ours and idle.
        advise_ranges(&runs, libc::MADV_DONTNEED).unwrap();
        let resident_after: usize = runs.iter().map(|&(a, l)| resident(a, l)).sum();
        NO_BATCH_ADVICE.store(false, Ordering::Relaxed);
        assert_eq!(resident_after, 0, "pages left after the per-range trim");
    }

    #[test]
    fn absurd_size_is_an_error() {
        let e = FiberStack::new(usize::MAX - 10).unwrap_err();
        assert!(
            e.to_string().contains("cannot allocate a fiber stack"),
            "{e}"
        );
    }

    #[test]
    fn stress_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let v: Vec<_> = (0..50)
                            .map(|_| FiberStack::new(8 * 1024).unwrap())
                            .collect();
                        for s in &v {
                            let (_, hi) = s.guard();
                            // SAFETY: each thread writes only its own stacks.
                            unsafe { *(hi as *mut u64) = (t * 1000 + round) as u64 };
                        }
                        for s in &v {
                            let (_, hi) = s.guard();
                            // SAFETY: as above.
                            let got = unsafe { *(hi as *const u64) };
                            assert_eq!(got, (t * 1000 + round) as u64, "stack shared");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
