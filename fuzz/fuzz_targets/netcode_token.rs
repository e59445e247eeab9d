//! Connect tokens from arbitrary bytes. `ConnectToken::from_bytes` on the bytes (and on them
//! zero-padded to a token's 2048, so the parser behind the length check is reached), then
//! `open_private` with a fixed key; and the bytes sealed for real as a private token's
//! plaintext, so the parser behind the decryption is reached too. The same private parts go
//! to a netcode `Server` as connection requests, with the raw bytes as a datagram of their
//! own. Never panics; whatever parses writes back to the same token, and what opens with the
//! key seals back to the same bytes; every request is either answered with one challenge no
//! larger than itself, or dropped and counted once (a disconnect from a stranger counts as a
//! late goodbye).
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::netcode_token(data));
