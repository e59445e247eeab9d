//! The decrypt path: a netcode `Server` and `Client` connected with a fixed key and token,
//! fed a script of arbitrary datagrams to either side (from the peer's address or a
//! stranger's), real payloads each way, replays and bit flips of packets already delivered,
//! and time passing. Never panics; every datagram is either accepted (only what the peer
//! really sent, once) or counted once in `stats().dropped`; garbage never ends the session.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::netcode_packet(data));
