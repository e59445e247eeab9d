//! `Packet::decode` on arbitrary bytes: never panics, and whatever decodes re-encodes to a
//! packet that decodes to the same value.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::packet_decode(data));
