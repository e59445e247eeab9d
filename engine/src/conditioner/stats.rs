//! Counters of what the link did to the datagrams pushed into it.

/// What the link did so far; counters only grow, `in_flight_*` go up and down.
///
/// At any time `pushed + duplicated == passed + dropped + in_flight_packets`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionerStats {
    /// Datagrams that entered the link (`push` calls).
    pub pushed: u64,
    /// Datagrams handed out by `poll`, duplicate copies included.
    pub passed: u64,
    /// Datagrams that never come out: `dropped_loss + dropped_overflow`.
    pub dropped: u64,
    /// Datagrams lost by the loss model.
    pub dropped_loss: u64,
    /// Datagrams dropped because the bandwidth queue or the in-flight limit was full.
    pub dropped_overflow: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Datagrams handed out after one pushed later than them (copies not counted).
    pub reordered: u64,
    /// Datagrams handed out later than they were pushed.
    pub delayed: u64,
    /// Datagrams inside the link now (waiting for bandwidth or delayed).
    pub in_flight_packets: usize,
    /// Bytes inside the link now, as given to `push`.
    pub in_flight_bytes: usize,
    /// Bytes waiting in the bandwidth queue, as of the last `push`.
    pub queued_bytes: usize,
}
