//! A replication `Client` fed arbitrary snapshot parts, control messages (welcomes, owned
//! entities, reliable parts) and payloads by a server played by hand: never panics, every
//! bad control message is counted, every part is read or rejected once, and the view the
//! game would draw stays finite.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::replication_client(data));
