//! Side-by-side benchmarks of weave; nothing to link against.
//!
//! `examples/` holds the peer echo servers the echo benchmark
//! (`scripts/bench-echo.sh`) runs beside weave's own: `echo_tokio`,
//! `echo_may` and `echo_mio` (a hand-written mio server, the ceiling).
//! `benches/` holds the criterion benchmarks: `fiber` (spawn, yield,
//! park/unpark against may, threads and tokio), `sync` (channels against
//! may, crossbeam and tokio) and `pool` (the connection pool).
//! `src/bin/bench_report.rs` draws the load benchmarks' JSON as SVG charts
//! (`scripts/bench-report.sh`).
//!
//! ```text
//! cargo bench -p weave-bench --bench fiber
//! cargo run -p weave-bench --release --example echo_tokio -- --help
//! ```
