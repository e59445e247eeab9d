//! `SnapshotReceiver::read_part` fed a sequence of arbitrary parts: never panics, and every
//! part is counted exactly once.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snapsync::snapshot::{ReceiverConfig, SnapshotReceiver};

/// Splits the input into parts: a u16 little-endian length, then that many bytes.
fn parts(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (part, rest) = rest.split_at(len);
        data = rest;
        Some(part)
    })
}

fuzz_target!(|data: &[u8]| {
    let base = Instant::now();
    let mut receiver =
        SnapshotReceiver::new(ReceiverConfig::default()).expect("the default config is valid");
    let mut fed = 0;
    for (i, part) in parts(data).enumerate() {
        let now = base + Duration::from_millis(16 * i as u64);
        let _ = receiver.read_part(now, part);
        fed += 1;
        let _ = receiver.live_world();
        let _ = receiver.estimated_server_tick(now);
    }
    assert_eq!(receiver.stats().parts_received, fed);
});
