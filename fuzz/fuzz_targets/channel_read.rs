//! `Channels::read_packet` on a default config, fed a sequence of arbitrary sections with
//! time moving between them: never panics, and the receive queue only holds what the
//! channel limits allow.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::channel_read(data));
