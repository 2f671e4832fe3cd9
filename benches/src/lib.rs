//! Benchmarks of durable.
