//! The programs `durable` must make easy: the distributed calculator.

pub mod calculator;
