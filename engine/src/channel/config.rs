//! Channel configuration: kinds, limits, budgets and their documented defaults.
//!
//! Both ends of a connection must use identical channel configurations: the receiver checks
//! fragment sizes and counts against its own copy of the sender's limits.

use std::time::Duration;

use super::wire::{FRAGMENT_HEADER_BYTES, SECTION_HEADER_BYTES};

/// Largest channel section one packet may carry, in bytes.
///
/// 1200 bytes of payload keeps a datagram with its packet header, IPv6 and UDP headers under
/// the 1280-byte minimum IPv6 MTU, so no path fragments it.
pub const DEFAULT_MTU_PAYLOAD_BYTES: usize = 1200;

/// Largest reliable message by default, in bytes (the codec's decode limit, 256 KiB).
pub const DEFAULT_MAX_RELIABLE_MESSAGE_BYTES: usize = crate::codec::MAX_DECODE_BYTES;

/// Largest unreliable message by default, in bytes.
///
/// With the default per-channel budget this is 15 fragments: an unreliable message survives
/// only when every fragment does, so at loss rate `p` it arrives with probability
/// `(1 - p)^n` for `n` fragments (15 fragments at 5 % loss: 46 %).
pub const DEFAULT_MAX_UNRELIABLE_MESSAGE_BYTES: usize = 4 * 1024;

/// Most fragments an unreliable message may be split into.
///
/// Loss amplifies with every fragment (`P(message) = (1 - p)^n`); beyond 16 an unreliable
/// message is mostly lost on any real link, so bigger payloads belong on a reliable channel.
pub const MAX_UNRELIABLE_FRAGMENTS: usize = 16;

/// Reliable parts in flight per channel by default (each fragment is one part).
///
/// Must cover the fragments of the largest message: 256 KiB at the default 289-byte part
/// payload is 908 parts.
pub const DEFAULT_SEND_WINDOW_MESSAGES: usize = 1024;

/// Largest allowed send window; far below half the u16 id space so wrapping ids stay unambiguous.
pub const MAX_SEND_WINDOW_MESSAGES: usize = 16 * 1024;

/// Default per-channel send-queue memory for reliable channels, in bytes (three 256 KiB
/// messages with their 908 part records of 96 bytes each).
pub const DEFAULT_RELIABLE_MEMORY_BYTES: usize = 1024 * 1024;

/// Default per-channel send-queue memory for unreliable channels, in bytes.
pub const DEFAULT_UNRELIABLE_MEMORY_BYTES: usize = 64 * 1024;

/// Resends happen no more often than this, even when the RTT estimate is lower.
pub const DEFAULT_MIN_RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// An unreliable message whose fragments have not all arrived after this long is dropped.
pub const DEFAULT_REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Unreliable messages reassembled at once per channel; the oldest is evicted beyond this.
pub const DEFAULT_MAX_REASSEMBLIES: usize = 8;

/// Smallest accepted per-channel packet budget, in bytes.
const MIN_PACKET_BUDGET_BYTES: usize = FRAGMENT_HEADER_BYTES + 16;

/// Delivery guarantee of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// At most once, in any order: duplicates are dropped, losses are not repaired.
    Unreliable,
    /// At most once, newest wins: a message older than one already delivered is dropped.
    UnreliableSequenced,
    /// Exactly once, in send order: a loss holds back later messages (head-of-line blocking).
    ReliableOrdered,
    /// Exactly once, in arrival order.
    ReliableUnordered,
}

impl ChannelKind {
    /// True for the kinds that resend lost messages.
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::ReliableOrdered | Self::ReliableUnordered)
    }
}

/// Limits and budget of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Delivery guarantee.
    pub kind: ChannelKind,
    /// Largest message `send` accepts, in bytes; larger ones are split into fragments.
    pub max_message_bytes: usize,
    /// Reliable kinds: how many parts (messages or fragments) may be unacknowledged at once.
    /// Ignored by unreliable kinds.
    pub send_window_messages: usize,
    /// Send-queue memory (payload plus bookkeeping) above which `send` reports backpressure.
    pub max_memory_bytes: usize,
    /// Bytes of each packet this channel may fill before other channels had their turn; also
    /// the size of its fragments (record header included).
    pub packet_budget_bytes: usize,
}

impl ChannelConfig {
    /// A channel of `kind` with the defaults for that kind.
    pub fn new(kind: ChannelKind) -> Self {
        let reliable = kind.is_reliable();
        Self {
            kind,
            max_message_bytes: if reliable {
                DEFAULT_MAX_RELIABLE_MESSAGE_BYTES
            } else {
                DEFAULT_MAX_UNRELIABLE_MESSAGE_BYTES
            },
            send_window_messages: DEFAULT_SEND_WINDOW_MESSAGES,
            max_memory_bytes: if reliable {
                DEFAULT_RELIABLE_MEMORY_BYTES
            } else {
                DEFAULT_UNRELIABLE_MEMORY_BYTES
            },
            // Four channels of this size fill one default packet exactly, so every channel
            // gets a turn in every packet.
            packet_budget_bytes: (DEFAULT_MTU_PAYLOAD_BYTES - SECTION_HEADER_BYTES) / 4,
        }
    }
}

/// Configuration of every channel of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelsConfig {
    /// The channels, addressed by their index (0..=255).
    pub channels: Vec<ChannelConfig>,
    /// Largest budget the packet layer will ever pass to `write_packet`, in bytes.
    pub mtu_payload_bytes: usize,
    /// Floor of the resend interval (the interval is `max(rtt, min_resend_interval)`).
    pub min_resend_interval: Duration,
    /// How long an incomplete unreliable message waits for its missing fragments.
    pub reassembly_timeout: Duration,
    /// Incomplete unreliable messages kept per channel.
    pub max_reassemblies: usize,
}

impl Default for ChannelsConfig {
    /// Four channels: 0 = `ReliableOrdered`, 1 = `UnreliableSequenced`, 2 = `Unreliable`,
    /// 3 = `ReliableUnordered`, each with [`ChannelConfig::new`] defaults, 1200-byte packets.
    fn default() -> Self {
        Self {
            channels: vec![
                ChannelConfig::new(ChannelKind::ReliableOrdered),
                ChannelConfig::new(ChannelKind::UnreliableSequenced),
                ChannelConfig::new(ChannelKind::Unreliable),
                ChannelConfig::new(ChannelKind::ReliableUnordered),
            ],
            mtu_payload_bytes: DEFAULT_MTU_PAYLOAD_BYTES,
            min_resend_interval: DEFAULT_MIN_RESEND_INTERVAL,
            reassembly_timeout: DEFAULT_REASSEMBLY_TIMEOUT,
            max_reassemblies: DEFAULT_MAX_REASSEMBLIES,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// There must be between 1 and 256 channels.
    #[error("need 1 to 256 channels, got {0}")]
    ChannelCount(usize),
    /// The MTU payload is too small for one fragment or too large for a u16 length.
    #[error("mtu payload of {0} bytes out of range")]
    Mtu(usize),
    /// A channel's packet budget cannot hold a fragment.
    #[error("channel {0}: packet budget too small")]
    PacketBudget(u8),
    /// A channel's message limit needs more fragments than allowed (16 unreliable, the send
    /// window for reliable channels).
    #[error("channel {0}: max message needs too many fragments")]
    TooManyFragments(u8),
    /// A reliable channel's window is 0 or above [`MAX_SEND_WINDOW_MESSAGES`].
    #[error("channel {0}: send window out of range")]
    Window(u8),
    /// A channel's memory budget cannot hold one largest message.
    #[error("channel {0}: memory budget below one max message")]
    Memory(u8),
    /// The resend interval floor must be positive.
    #[error("min resend interval must be positive")]
    ResendInterval,
    /// At least one reassembly slot is needed.
    #[error("max reassemblies must be positive")]
    Reassemblies,
}

/// Limits of one channel derived from its config, used by both sender and receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) kind: ChannelKind,
    /// Payload bytes of one part (an unfragmented message or one fragment).
    pub(crate) part_payload_bytes: usize,
    /// Most parts one message may have.
    pub(crate) max_parts: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) window: usize,
    pub(crate) max_memory_bytes: usize,
    pub(crate) packet_budget_bytes: usize,
}

impl ChannelsConfig {
    /// Check the configuration and derive per-channel limits.
    pub(crate) fn limits(&self) -> Result<Vec<Limits>, ConfigError> {
        if self.channels.is_empty() || self.channels.len() > 256 {
            return Err(ConfigError::ChannelCount(self.channels.len()));
        }
        let min_mtu = SECTION_HEADER_BYTES + MIN_PACKET_BUDGET_BYTES;
        if self.mtu_payload_bytes < min_mtu || self.mtu_payload_bytes > usize::from(u16::MAX) {
            return Err(ConfigError::Mtu(self.mtu_payload_bytes));
        }
        if self.min_resend_interval.is_zero() {
            return Err(ConfigError::ResendInterval);
        }
        if self.max_reassemblies == 0 {
            return Err(ConfigError::Reassemblies);
        }
        let mut out = Vec::with_capacity(self.channels.len());
        for (i, c) in self.channels.iter().enumerate() {
            // The count check above keeps i below 256.
            let id = i as u8;
            if c.packet_budget_bytes < MIN_PACKET_BUDGET_BYTES {
                return Err(ConfigError::PacketBudget(id));
            }
            let record_bytes = c
                .packet_budget_bytes
                .min(self.mtu_payload_bytes - SECTION_HEADER_BYTES);
            let part_payload_bytes = record_bytes - FRAGMENT_HEADER_BYTES;
            let max_parts = c.max_message_bytes.div_ceil(part_payload_bytes).max(1);
            let reliable = c.kind.is_reliable();
            if reliable
                && (c.send_window_messages == 0
                    || c.send_window_messages > MAX_SEND_WINDOW_MESSAGES)
            {
                return Err(ConfigError::Window(id));
            }
            let parts_limit = if reliable {
                c.send_window_messages
            } else {
                MAX_UNRELIABLE_FRAGMENTS
            };
            if max_parts > parts_limit {
                return Err(ConfigError::TooManyFragments(id));
            }
            let worst_message_memory =
                c.max_message_bytes + max_parts * super::reliable::PART_OVERHEAD_BYTES;
            if c.max_memory_bytes < worst_message_memory {
                return Err(ConfigError::Memory(id));
            }
            out.push(Limits {
                kind: c.kind,
                part_payload_bytes,
                max_parts,
                max_message_bytes: c.max_message_bytes,
                window: c.send_window_messages,
                max_memory_bytes: c.max_memory_bytes,
                packet_budget_bytes: c.packet_budget_bytes,
            });
        }
        Ok(out)
    }
}
