//! Message channels: unreliable, unreliable-sequenced, reliable-ordered and reliable-unordered.
//!
//! Snapshots are sent unreliably by their own module; everything else the game says (inputs,
//! events, chat, spawn commands) travels in messages on channels. One [`Channels`] value per
//! connection per side holds every channel of that connection; both sides must be built from
//! the same [`ChannelsConfig`].
//!
//! Like the rest of the core it is sans-IO. The packet layer drives it:
//!
//! 1. the application calls [`Channels::send`];
//! 2. when [`Channels::wants_to_send`] (or at its own pace) the packet layer numbers a packet
//!    and lets [`Channels::write_packet`] fill its channel section, then reports that packet
//!    exactly once as acked or lost through [`Channels::on_delivery`];
//! 3. on the other side, the section of every received packet goes to
//!    [`Channels::read_packet`] and the application drains [`Channels::receive`];
//! 4. [`Channels::handle_timeout`] runs at [`Channels::poll_timeout`].
//!
//! Each packet gives every channel a turn (rotating who goes first) up to its
//! `packet_budget_bytes`, then lets them share what is left, so a flood on one channel never
//! starves another. The section format is documented in the `wire` module source and in
//! `docs/PROTOCOL.md`.

mod config;
mod fragment;
mod reliable;
mod stats;
mod unreliable;
mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Sequence;
use crate::codec::{self, CodecError};

pub use config::{
    ChannelConfig, ChannelKind, ChannelsConfig, ConfigError, DEFAULT_MAX_REASSEMBLIES,
    DEFAULT_MAX_RELIABLE_MESSAGE_BYTES, DEFAULT_MAX_UNRELIABLE_MESSAGE_BYTES,
    DEFAULT_MIN_RESEND_INTERVAL, DEFAULT_MTU_PAYLOAD_BYTES, DEFAULT_REASSEMBLY_TIMEOUT,
    DEFAULT_RELIABLE_MEMORY_BYTES, DEFAULT_SEND_WINDOW_MESSAGES, DEFAULT_UNRELIABLE_MEMORY_BYTES,
    MAX_SEND_WINDOW_MESSAGES, MAX_UNRELIABLE_FRAGMENTS,
};
pub use stats::ChannelStats;

use config::Limits;
use fragment::Reassembler;
use reliable::{ReliableReceiver, ReliableSender};
use unreliable::{UnreliableReceiver, UnreliableSender};
use wire::{SECTION_HEADER_BYTES, SectionWriter};

/// Sent packets with reliable parts remembered for their delivery notice; beyond that the
/// oldest is forgotten and a notice for it ignored (its parts are resent on the timer
/// instead).
const SENT_PACKETS_TRACKED: usize = 1024;

/// Why [`Channels::send`] refused a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No channel has this index.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// The message exceeds the channel's `max_message_bytes`.
    #[error("message of {len} bytes exceeds the channel limit of {max}")]
    TooLarge {
        /// Size of the refused message.
        len: usize,
        /// The channel's limit.
        max: usize,
    },
    /// The channel's send queue is at its memory budget (the peer is not acking); retry later.
    #[error("send queue full")]
    Backpressure,
    /// The value could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a received channel section was rejected (all of it, or some of its records).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The section ends inside a record.
    #[error("section truncated")]
    Truncated,
    /// The section's count byte is zero.
    #[error("section counts no records")]
    EmptySection,
    /// A record sets flag bits this version does not define.
    #[error("reserved flags {0:#04x}")]
    ReservedFlags(u8),
    /// Bytes follow the last counted record.
    #[error("{0} bytes after the section")]
    TrailingBytes(usize),
    /// A record names a channel that is not configured.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// An unfragmented message is larger than one part.
    #[error("message of {len} bytes exceeds the part limit of {max}")]
    PartTooLarge {
        /// Claimed size.
        len: usize,
        /// The channel's part payload.
        max: usize,
    },
    /// A fragment count is below 2 or above the channel's limit.
    #[error("fragment count {count} outside 2..={max}")]
    FragmentCount {
        /// Claimed count.
        count: u16,
        /// The channel's limit.
        max: usize,
    },
    /// A fragment index is not below its count.
    #[error("fragment index {index} not below count {count}")]
    FragmentIndex {
        /// Claimed index.
        index: u16,
        /// Claimed count.
        count: u16,
    },
    /// A fragment's length does not fit its position or the message limit.
    #[error("fragment length does not match its position")]
    FragmentLength,
    /// The same message or fragment appears twice in one section.
    #[error("duplicate record in one section")]
    DuplicateRecord,
    /// A fragment or message disagrees with one received before under the same id.
    #[error("conflicting fragment")]
    ConflictingFragment,
    /// A reliable id lies beyond the receive window; a conforming sender never sends it.
    #[error("message id outside the receive window")]
    OutsideWindow,
}

#[derive(Debug)]
enum Sender {
    Reliable(ReliableSender),
    Unreliable(UnreliableSender),
}

#[derive(Debug)]
enum Receiver {
    Reliable(ReliableReceiver),
    Unreliable(UnreliableReceiver),
}

#[derive(Debug)]
struct Channel {
    limits: Limits,
    sender: Sender,
    receiver: Receiver,
    stats: ChannelStats,
}

impl Channel {
    fn new(limits: Limits, config: &ChannelsConfig) -> Self {
        let reassembler = || Reassembler::new(config.max_reassemblies, config.reassembly_timeout);
        let (sender, receiver) = match limits.kind {
            ChannelKind::ReliableOrdered | ChannelKind::ReliableUnordered => (
                Sender::Reliable(ReliableSender::new(limits.window)),
                Receiver::Reliable(ReliableReceiver::new(
                    &limits,
                    limits.kind == ChannelKind::ReliableOrdered,
                )),
            ),
            ChannelKind::Unreliable | ChannelKind::UnreliableSequenced => (
                Sender::Unreliable(UnreliableSender::default()),
                Receiver::Unreliable(UnreliableReceiver::new(
                    limits.kind == ChannelKind::UnreliableSequenced,
                    reassembler(),
                )),
            ),
        };
        Self {
            limits,
            sender,
            receiver,
            stats: ChannelStats::default(),
        }
    }

    fn memory_bytes(&self) -> usize {
        match &self.sender {
            Sender::Reliable(s) => s.memory_bytes(),
            Sender::Unreliable(s) => s.memory_bytes(),
        }
    }
}

/// Every message channel of one side of a connection.
#[derive(Debug)]
pub struct Channels {
    channels: Vec<Channel>,
    min_resend_interval: Duration,
    /// The sent packets that carried reliable parts, oldest first, with those parts. Only
    /// these: a packet with none (every snapshot datagram with no message beside it) is not
    /// recorded, so sending it and learning its fate touch no memory here but this struct.
    sent_packets: VecDeque<(Sequence, Vec<(u8, Sequence)>)>,
    inbox: VecDeque<(u8, Vec<u8>)>,
    /// Channel that goes first in the next packet.
    next_first: usize,
    invalid: u64,
    latest_now: Option<Instant>,
    /// [`Channels::poll_timeout`]'s last answer and the resend interval it was for, until
    /// the channels change (every change goes through `touch`, which forgets it). A server
    /// asks for each connection's timeout after every packet it sends or takes in, and with
    /// no message traffic the answer stays the same; working it out again read every
    /// channel's state, cold by each client's turn.
    deadline: Option<(Duration, Option<Instant>)>,
}

impl Channels {
    /// Ask for every channel's state to be brought into the caches (see
    /// [`crate::prefetch`]): a packet's write asks each of them for what it has to send.
    pub(crate) fn prefetch(&self) {
        crate::prefetch::slice(&self.channels);
    }

    /// Channels as configured.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`Channels::try_new`]); configurations are
    /// written by the programmer, not taken from the network.
    pub fn new(config: ChannelsConfig) -> Self {
        match Self::try_new(config) {
            Ok(channels) => channels,
            Err(e) => panic!("invalid channel configuration: {e}"),
        }
    }

    /// Channels as configured, or why the configuration cannot work.
    pub fn try_new(config: ChannelsConfig) -> Result<Self, ConfigError> {
        let limits = config.limits()?;
        Ok(Self {
            channels: limits
                .into_iter()
                .map(|l| Channel::new(l, &config))
                .collect(),
            min_resend_interval: config.min_resend_interval,
            sent_packets: VecDeque::new(),
            inbox: VecDeque::new(),
            next_first: 0,
            invalid: 0,
            latest_now: None,
            deadline: None,
        })
    }

    /// Every change to the channels goes through here: the remembered timeout is forgotten.
    fn touch(&mut self, now: Instant) {
        self.deadline = None;
        self.note_time(now);
    }

    fn note_time(&mut self, now: Instant) {
        if self.latest_now.is_none_or(|t| now > t) {
            self.latest_now = Some(now);
        }
    }

    /// The channel that goes first in this packet; the next packet starts with the one after.
    fn next_turn(&mut self) -> usize {
        let n = self.channels.len();
        let first = self.next_first % n;
        self.next_first = (first + 1) % n;
        first
    }

    /// The remembered timeout, if it was worked out for this resend interval.
    fn remembered(&self, interval: Duration) -> Option<Option<Instant>> {
        self.deadline
            .and_then(|(at, deadline)| (at == interval).then_some(deadline))
    }

    fn resend_interval(&self, rtt: Duration) -> Duration {
        rtt.max(self.min_resend_interval)
    }

    /// Queue `message` on `channel`; it is split into fragments when larger than one part.
    pub fn send(&mut self, now: Instant, channel: u8, message: &[u8]) -> Result<(), SendError> {
        self.touch(now);
        let ch = self
            .channels
            .get_mut(usize::from(channel))
            .ok_or(SendError::UnknownChannel(channel))?;
        let limits = ch.limits;
        if message.len() > limits.max_message_bytes {
            return Err(SendError::TooLarge {
                len: message.len(),
                max: limits.max_message_bytes,
            });
        }
        let parts = message.len().div_ceil(limits.part_payload_bytes).max(1);
        let cost = ReliableSender::cost(message.len(), parts);
        let queue_full = match &ch.sender {
            Sender::Reliable(s) => s.queued_parts() + parts > reliable::MAX_QUEUED_PARTS,
            Sender::Unreliable(_) => false,
        };
        if queue_full || ch.memory_bytes() + cost > limits.max_memory_bytes {
            ch.stats.backpressure += 1;
            return Err(SendError::Backpressure);
        }
        let pieces = fragment::split(message, limits.part_payload_bytes);
        match &mut ch.sender {
            Sender::Reliable(s) => pieces.for_each(|(f, chunk)| s.push(now, f, chunk)),
            Sender::Unreliable(s) => {
                let id = s.next_id();
                pieces.for_each(|(f, chunk)| s.push(now, id, f, chunk));
            }
        }
        ch.stats.sent += 1;
        Ok(())
    }

    /// Encode `value` with [`crate::codec`] and send it on `channel`.
    pub fn send_serde<T: Serialize>(
        &mut self,
        now: Instant,
        channel: u8,
        value: &T,
    ) -> Result<(), SendError> {
        let bytes = codec::encode(value)?;
        self.send(now, channel, &bytes)
    }

    /// True when something should go out now: queued unreliable messages, or reliable parts
    /// never sent, reported lost, or unacked for `max(rtt, min_resend_interval)`.
    pub fn wants_to_send(&self, now: Instant, rtt: Duration) -> bool {
        let interval = self.resend_interval(rtt);
        self.channels.iter().any(|ch| match &ch.sender {
            Sender::Reliable(s) => s.wants_to_send(now, interval),
            Sender::Unreliable(s) => s.queue_len() > 0,
        })
    }

    /// Append the channel section for packet `seq` to `out`, using at most `budget` bytes.
    ///
    /// Returns the bytes written; 0 means no section at all (nothing was due or nothing fit).
    /// The reliable parts written are remembered until [`Channels::on_delivery`] for `seq`.
    /// Parts are cut to each channel's `packet_budget_bytes`, so a budget smaller than that
    /// (plus one byte of section header) can leave a channel's full-size parts waiting.
    pub fn write_packet(
        &mut self,
        now: Instant,
        seq: Sequence,
        rtt: Duration,
        out: &mut Vec<u8>,
        budget: usize,
    ) -> usize {
        let interval = self.resend_interval(rtt);
        // Nothing is due before the remembered timeout (a send, a resend), and time has not
        // gone back: every channel would write nothing, so none is read. Most packets of a
        // game carry a snapshot and no message.
        let idle = self.latest_now.is_some_and(|t| now >= t)
            && self
                .remembered(interval)
                .is_some_and(|d| d.is_none_or(|d| d > now));
        if idle {
            self.note_time(now);
            if budget >= SECTION_HEADER_BYTES {
                // The turn moves on as when every channel is asked.
                self.next_turn();
            }
            return 0;
        }
        self.touch(now);
        let mut sent_parts = Vec::new();
        let mut written = 0;
        if let Some(mut remaining) = budget.checked_sub(SECTION_HEADER_BYTES) {
            let mut writer = SectionWriter::new(out);
            let n = self.channels.len();
            let first = self.next_turn();
            // Pass 0: every channel up to its own budget. Pass 1: the rest, first come.
            for pass in 0..2 {
                for k in 0..n {
                    let index = (first + k) % n;
                    // `index < n == channels.len()`, and n <= 256 so it fits a u8.
                    let ch = &mut self.channels[index];
                    let limit = if pass == 0 {
                        remaining.min(ch.limits.packet_budget_bytes)
                    } else {
                        remaining
                    };
                    let used = match &mut ch.sender {
                        Sender::Reliable(s) => {
                            let o = s.write(
                                now,
                                seq,
                                interval,
                                index as u8,
                                &mut writer,
                                limit,
                                &mut sent_parts,
                            );
                            ch.stats.resent += o.resends;
                            o.bytes
                        }
                        Sender::Unreliable(s) => s.write(index as u8, &mut writer, limit).0,
                    };
                    ch.stats.bytes_sent += used as u64;
                    remaining -= used;
                }
            }
            written = writer.finish();
        }
        if !sent_parts.is_empty() {
            if self.sent_packets.len() >= SENT_PACKETS_TRACKED {
                self.sent_packets.pop_front();
            }
            self.sent_packets.push_back((seq, sent_parts));
        }
        written
    }

    /// The packet layer's verdict on packet `seq`: exactly once per packet written (a packet
    /// whose section was empty, `write_packet` returned 0, may be left out).
    pub fn on_delivery(&mut self, now: Instant, seq: Sequence, acked: bool) {
        self.touch(now);
        // Notices come about in sending order, so the packet is near the front.
        let Some((_, parts)) = self
            .sent_packets
            .iter()
            .position(|(s, _)| *s == seq)
            .and_then(|at| self.sent_packets.remove(at))
        else {
            return;
        };
        for (channel, id) in parts {
            if let Some(Channel {
                sender: Sender::Reliable(s),
                ..
            }) = self.channels.get_mut(usize::from(channel))
            {
                s.on_delivery(now, seq, id, acked);
            }
        }
    }

    fn reject(&mut self, channel: Option<u8>, error: ChannelError) -> Result<(), ChannelError> {
        self.invalid += 1;
        if let Some(ch) = channel.and_then(|c| self.channels.get_mut(usize::from(c))) {
            ch.stats.dropped_invalid += 1;
        }
        Err(error)
    }

    /// Parse the channel section of a received packet and queue the messages it completes.
    ///
    /// The bytes are untrusted. A section that is malformed or breaks a channel limit is
    /// rejected whole; a well-formed section whose records contradict earlier ones (conflicting
    /// fragments, ids outside the receive window) has its valid records applied and the first
    /// problem returned. Every rejection counts once in [`Channels::invalid_count`].
    pub fn read_packet(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ChannelError> {
        self.touch(now);
        let records = match wire::parse_section(bytes) {
            Ok(records) => records,
            Err(e) => return self.reject(None, e),
        };
        let mut seen = HashSet::with_capacity(records.len());
        for r in &records {
            let Some(ch) = self.channels.get(usize::from(r.channel)) else {
                return self.reject(None, ChannelError::UnknownChannel(r.channel));
            };
            if let Err(e) = fragment::validate(&ch.limits, r.fragment, r.payload.len()) {
                return self.reject(Some(r.channel), e);
            }
            if !seen.insert((r.channel, r.id, r.fragment.map(|f| f.index))) {
                return self.reject(Some(r.channel), ChannelError::DuplicateRecord);
            }
        }
        let mut first_error = None;
        for r in &records {
            let Some(ch) = self.channels.get_mut(usize::from(r.channel)) else {
                continue; // Checked above.
            };
            ch.stats.bytes_received +=
                wire::record_bytes(r.fragment.is_some(), r.payload.len()) as u64;
            let inbox = &mut self.inbox;
            let mut delivered = 0;
            let mut deliver = |message| {
                inbox.push_back((r.channel, message));
                delivered += 1;
            };
            let result = match &mut ch.receiver {
                Receiver::Reliable(rx) => rx.on_record(r, &mut deliver),
                Receiver::Unreliable(rx) => rx.on_record(now, r, &mut deliver),
            };
            ch.stats.received += delivered;
            if let Err(e) = result {
                ch.stats.dropped_invalid += 1;
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => {
                self.invalid += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The next received message and its channel, in delivery order.
    ///
    /// The receive queue is not bounded by the channels: drain it after every input.
    pub fn receive(&mut self) -> Option<(u8, Vec<u8>)> {
        self.inbox.pop_front()
    }

    /// The next received message decoded as `T` with [`crate::codec`].
    ///
    /// A message that does not decode is consumed and returned as the error.
    pub fn receive_serde<T: DeserializeOwned>(&mut self) -> Option<Result<(u8, T), CodecError>> {
        let (channel, bytes) = self.receive()?;
        Some(codec::decode(&bytes).map(|v| (channel, v)))
    }

    /// Drop unreliable reassemblies that timed out; a spurious call is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        for ch in &mut self.channels {
            if let Receiver::Unreliable(rx) = &mut ch.receiver {
                rx.reassembler.handle_timeout(now);
            }
        }
    }

    /// The earliest instant something is due: a send, a resend or a reassembly expiry.
    ///
    /// An instant in the past means "now"; sending is the packet layer's decision, so after
    /// [`Channels::write_packet`] the answer moves on.
    pub fn poll_timeout(&self, rtt: Duration) -> Option<Instant> {
        let interval = self.resend_interval(rtt);
        self.remembered(interval)
            .unwrap_or_else(|| self.work_out_timeout(interval))
    }

    /// [`Channels::poll_timeout`], remembered until the channels next change.
    pub fn remember_timeout(&mut self, rtt: Duration) -> Option<Instant> {
        let interval = self.resend_interval(rtt);
        let deadline = self.poll_timeout(rtt);
        self.deadline = Some((interval, deadline));
        deadline
    }

    fn work_out_timeout(&self, interval: Duration) -> Option<Instant> {
        self.channels
            .iter()
            .flat_map(|ch| {
                let send = match &ch.sender {
                    Sender::Reliable(s) => s.poll_timeout(interval),
                    Sender::Unreliable(s) => s.oldest_queued(),
                };
                let expiry = match &ch.receiver {
                    Receiver::Unreliable(rx) => rx.reassembler.poll_timeout(),
                    Receiver::Reliable(_) => None,
                };
                [send, expiry]
            })
            .flatten()
            .min()
    }

    /// Counters of `channel`, or `None` when no such channel is configured.
    pub fn stats(&self, channel: u8) -> Option<ChannelStats> {
        let ch = self.channels.get(usize::from(channel))?;
        let mut stats = ch.stats.clone();
        let oldest = match &ch.sender {
            Sender::Reliable(s) => {
                stats.queue_len = s.queue_len();
                s.oldest_unacked()
            }
            Sender::Unreliable(s) => {
                stats.queue_len = s.queue_len();
                s.oldest_queued()
            }
        };
        stats.memory_bytes = ch.memory_bytes();
        stats.oldest_unacked_age = oldest
            .zip(self.latest_now)
            .map(|(t, now)| now.saturating_duration_since(t));
        if let Receiver::Unreliable(rx) = &ch.receiver {
            stats.reassemblies_dropped = rx.reassembler.dropped;
        }
        Some(stats)
    }

    /// Sections rejected so far (malformed, over a limit, or contradicting earlier data).
    pub fn invalid_count(&self) -> u64 {
        self.invalid
    }

    /// Bytes the receiving side holds for incomplete messages.
    #[cfg(test)]
    fn receive_held_bytes(&self) -> usize {
        self.channels
            .iter()
            .map(|ch| match &ch.receiver {
                Receiver::Reliable(rx) => rx.held_bytes(),
                Receiver::Unreliable(rx) => rx.reassembler.held_bytes(),
            })
            .sum()
    }

    /// Number of configured channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}
