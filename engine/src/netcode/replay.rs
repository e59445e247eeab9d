//! Replay protection: a 256-entry window of received sequences per connection.
//!
//! The receiver asks [`ReplayWindow::already_received`] before decrypting (cheap, and an
//! attacker's replays never reach the cipher), and calls [`ReplayWindow::advance`] only after
//! the packet decrypted, so forged packets cannot move the window. Every comparison is written
//! without `sequence + WINDOW`, which would overflow near `u64::MAX` and let old packets in;
//! empty entries are `None` rather than a sentinel value that a real sequence could equal.

use super::REPLAY_WINDOW_PACKETS;

/// Which of the last [`REPLAY_WINDOW_PACKETS`] sequences arrived.
#[derive(Debug, Clone)]
pub(super) struct ReplayWindow {
    most_recent: u64,
    received: [Option<u64>; REPLAY_WINDOW_PACKETS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            most_recent: 0,
            received: [None; REPLAY_WINDOW_PACKETS],
        }
    }
}

impl ReplayWindow {
    /// True when `sequence` is a duplicate, or too old to tell from one.
    pub(super) fn already_received(&self, sequence: u64) -> bool {
        if sequence < self.most_recent
            && self.most_recent - sequence >= REPLAY_WINDOW_PACKETS as u64
        {
            return true;
        }
        match self.received[Self::index(sequence)] {
            None => false,
            Some(stored) => stored >= sequence,
        }
    }

    /// Records `sequence` as received; call only after the packet carrying it decrypted.
    pub(super) fn advance(&mut self, sequence: u64) {
        if sequence > self.most_recent {
            self.most_recent = sequence;
        }
        self.received[Self::index(sequence)] = Some(sequence);
    }

    fn index(sequence: u64) -> usize {
        (sequence % REPLAY_WINDOW_PACKETS as u64) as usize
    }
}
