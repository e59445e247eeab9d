//! A secure `Server` (netcode 1.02 underneath) with a connected secure client (through the
//! simulated network) and a netcode peer connected by hand, fed arbitrary datagrams: from the
//! client's address, from strangers, and sealed into the peer's netcode payloads (as they
//! come, or wrapped in a connected packet) so the engine's parsers behind the decryption are
//! reached. Never panics, never holds more than those two connections, never answers a
//! stranger with more bytes than it sent, and the real client stays connected.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::secure_server_datagram(data));
