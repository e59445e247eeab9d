//! The `snapshot_read` target.

use std::time::{Duration, Instant};

use super::input::split_sections;
use crate::snapshot::{ReceiverConfig, ReceiverStats, SnapshotReceiver};

/// `SnapshotReceiver::read_part` fed each of the input's sections as a part, 16 ms apart:
/// every part is counted exactly once.
pub fn snapshot_read(data: &[u8]) {
    snapshot_read_stats(data);
}

/// [`snapshot_read`], returning the receiver's counters for a caller that knows more about
/// its input (a twin fed untouched parts expects them all to apply).
pub fn snapshot_read_stats(data: &[u8]) -> ReceiverStats {
    let base = Instant::now();
    let mut receiver =
        SnapshotReceiver::new(ReceiverConfig::default()).expect("the default config is valid");
    let mut fed = 0;
    for (i, part) in split_sections(data).enumerate() {
        let now = base + Duration::from_millis(16 * i as u64);
        let _ = receiver.read_part(now, part);
        fed += 1;
        let _ = receiver.live_world();
        let _ = receiver.estimated_server_tick(now);
    }
    let stats = receiver.stats();
    assert_eq!(stats.parts_received, fed);
    stats
}
