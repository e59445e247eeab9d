//! Shared helpers for the benches.

pub mod cli;
