//! Peer benchmarks for `caracal-verifier`; everything lives in `benches/peers.rs`.
//!
//! Run: `cargo bench --manifest-path benches/peers/Cargo.toml`
