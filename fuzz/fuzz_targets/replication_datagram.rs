//! A replication `Server` fed arbitrary input frames, control messages and payloads from
//! peers that completed the handshake: never panics, every bad frame and control message is
//! counted exactly once, and the real client's session goes on.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::replication_datagram(data));
