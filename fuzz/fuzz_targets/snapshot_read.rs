//! `SnapshotReceiver::read_part` fed a sequence of arbitrary parts: never panics, and every
//! part is counted exactly once.
//!
//! The checks live in `snapsync::fuzzing`, shared with this target's property-test twin in
//! `engine/tests/fuzz_equivalents.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapsync::fuzzing::snapshot_read(data));
