//! A `Server` with a connected client (through the simulated network) and a verified raw
//! peer, fed arbitrary datagrams from a few addresses: never panics, never holds more than
//! those two connections, never answers a stranger with more bytes than it sent, and the real
//! client stays connected.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::server_datagram(data));
