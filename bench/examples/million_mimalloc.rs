//! The million-fiber example (`examples/million.rs`) with mimalloc as the
//! global allocator instead of glibc's malloc: the same program, line for
//! line, so running both side by side measures the allocator.
//!
//! The main fiber allocates every fiber's closure, join slot, record and
//! channel on one worker, and the fibers free them on the other. glibc
//! frees a chunk that another thread's arena owns under that arena's lock
//! once the freeing thread's cache is full; mimalloc hands such a free
//! back to the owning heap without a lock.
//!
//! ```text
//! cargo run -p weave-bench --release --example million_mimalloc -- --fibers 1000000 --workers 2
//! ```
//!
//! mimalloc marks its arenas for transparent huge pages; on the 2-core
//! machine of `docs/scale.md` that cost more CPU than glibc's malloc;
//! with `MIMALLOC_ALLOW_THP=0` in the environment it cost less, and a
//! million fibers took 2.63-2.77 s on 2 workers (glibc: 3.52-3.64 s).
//!
//! The "heap" figure the program prints comes from glibc's `mallinfo2`, so
//! under mimalloc it counts only what glibc still allocates (next to
//! nothing): mimalloc's heap is in "stacks and the rest", and the resident
//! total is the figure to compare.

#[path = "../../examples/million.rs"]
mod million;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    println!(
        "allocator: mimalloc (the heap figures below are glibc's and miss mimalloc's heap; \
         --malloc-top-pad tunes glibc's malloc, which Rust allocations here do not use)"
    );
    million::main()
}
