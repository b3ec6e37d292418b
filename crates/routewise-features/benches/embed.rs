//! Latency benchmarks for the embedding featurizers (filled in below).
fn main() {}
