//! Per-channel counters.

use std::time::Duration;

/// Counters and gauges of one channel, as of the latest input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages delivered to the application's receive queue.
    pub received: u64,
    /// Parts (messages or fragments) written again after their first transmission.
    pub resent: u64,
    /// Record bytes written to packets, headers and resends included.
    pub bytes_sent: u64,
    /// Record bytes read from valid sections, headers and duplicates included.
    pub bytes_received: u64,
    /// Parts waiting to be sent (unreliable) or to be acked (reliable).
    pub queue_len: usize,
    /// Send-queue memory in bytes, as charged against `max_memory_bytes`: payload plus one
    /// part record per queued part (the queue's spare capacity is not counted).
    pub memory_bytes: usize,
    /// Age of the oldest part not yet acked (reliable) or not yet sent (unreliable), measured
    /// at the latest `now` given to any input.
    pub oldest_unacked_age: Option<Duration>,
    /// Records for this channel that were malformed or violated its limits.
    pub dropped_invalid: u64,
    /// Incomplete unreliable messages dropped (timeout, eviction, or superseded).
    pub reassemblies_dropped: u64,
    /// `send` calls refused for lack of memory budget.
    pub backpressure: u64,
}
