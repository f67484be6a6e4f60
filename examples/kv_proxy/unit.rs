//! The `kv_proxy` example's unit tests.
//!
//! `cargo test` builds an example either as its program or as a test
//! harness, never both, and the integration tests under `tests/` start the
//! program. So the `kv_proxy` target is the program (`test = false`) and this
//! target, `kv_proxy_unit`, compiles the same modules as a test harness.

// In the test harness what only `main` reaches is unused; the program
// target checks it.
#![allow(dead_code)]

#[path = "main.rs"]
mod kv_proxy;

// The modules refer to each other, and to the program's constants, as
// `crate::<name>`.
#[allow(unused_imports)]
use kv_proxy::*;

/// Built as a program (`cargo build --examples`), this target is `kv_proxy`.
fn main() {
    kv_proxy::main()
}
