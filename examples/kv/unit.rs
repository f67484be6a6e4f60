//! The `kv` example's unit tests.
//!
//! `cargo test` builds an example either as its program or as a test
//! harness, never both, and the integration tests under `tests/` start the
//! program. So the `kv` target is the program (`test = false`) and this
//! target, `kv_unit`, compiles the same modules as a test harness.

// In the test harness what only `main` reaches is unused; the program
// target checks it.
#![allow(dead_code)]

#[path = "main.rs"]
mod kv;

// The modules refer to each other as `crate::<module>`.
#[allow(unused_imports)]
use kv::{aof, auth, binary, conn, meta, stats, store, text, tls};

/// Built as a program (`cargo build --examples`), this target is `kv`.
fn main() {
    kv::main()
}
