//! State of one established connection, the same on both sides: acks, estimates, channels,
//! datagrams, keep-alive and timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ConnectionConfig, DisconnectReason, Event, InvalidPacket, SendError};
use crate::Sequence;
use crate::channel::Channels;
use crate::packet::{
    AckTracker, ConnectedHeader, DisconnectReasonCode, LinkStats, MAX_PACKET_BYTES, Packet,
    RttEstimator,
};

/// Payload flag: a datagram section follows.
const FLAG_DATAGRAM: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_DATAGRAM;
/// Bytes of the flags byte plus the datagram length prefix.
const DATAGRAM_FRAMING_BYTES: usize = 3;

/// Largest datagram [`send_datagram`](super::Client::send_datagram) accepts, in bytes: one
/// packet's room after the connected header and the datagram framing.
pub const MAX_DATAGRAM_BYTES: usize =
    MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES - DATAGRAM_FRAMING_BYTES;

/// RTT assumed before the first sample, for loss timeouts and resends.
const INITIAL_RTT: Duration = Duration::from_millis(250);
/// Floor of the jitter allowance in the loss timeout.
const MIN_JITTER_ALLOWANCE: Duration = Duration::from_millis(25);
/// Send an ack as soon as this many packets arrived since we last sent anything: the 32
/// ack bits only reach back 33 packets, so a peer that sends in bursts must hear back often.
const ACK_EVERY_PACKETS: u32 = 16;
/// Tags on sent packets ([`AckTracker::on_send`]), so that a notice reaches only the layers
/// the packet carried something for: a packet with no channel section costs the channels
/// nothing when its fate is known.
const TAG_DATAGRAM: u8 = 0x01;
const TAG_CHANNELS: u8 = 0x02;

/// One live connection's state.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) peer: SocketAddr,
    pub(crate) salt: u32,
    config: ConnectionConfig,
    acks: AckTracker,
    pub(crate) rtt: RttEstimator,
    pub(crate) stats: LinkStats,
    pub(crate) channels: Channels,
    last_received: Instant,
    last_sent: Instant,
    received_since_sent: u32,
    pub(crate) events: VecDeque<Event>,
    /// Disconnect packets still to send before the connection is gone.
    goodbyes_left: usize,
    goodbye_reason: DisconnectReasonCode,
    closed: Option<DisconnectReason>,
    /// Largest packet this connection builds: [`MAX_PACKET_BYTES`] on its own, less when it
    /// rides inside another protocol's payload (secure mode).
    max_packet_bytes: usize,
}

/// Payload buffers an endpoint's user handed back (`recycle_payload`), to hold the next
/// datagrams received: a client takes in 30 to 60 snapshot parts a second, a server an
/// input a tick from every client, and a buffer each would be as many allocations.
pub(crate) type Spares = Vec<Vec<u8>>;

/// Most spare payload buffers an endpoint keeps.
const MAX_SPARES: usize = 64;

/// Keep `payload` for a later datagram, unless enough are kept.
pub(crate) fn keep_spare(spares: &mut Spares, payload: Vec<u8>) {
    // A datagram is at most a packet, and a buffer grown for one at most twice that: a
    // larger one is not one this endpoint made.
    if spares.len() < MAX_SPARES && payload.capacity() <= 2 * MAX_PACKET_BYTES {
        spares.push(payload);
    }
}

/// Largest datagram a connection whose packets are at most `max_packet_bytes` can carry.
pub(crate) fn max_datagram_bytes(max_packet_bytes: usize) -> usize {
    max_packet_bytes.saturating_sub(Packet::CONNECTED_HEADER_BYTES + DATAGRAM_FRAMING_BYTES)
}

impl Established {
    /// A connection whose packets are at most `max_packet_bytes` (at most
    /// [`MAX_PACKET_BYTES`]); `config` was checked when the endpoint was built.
    pub(crate) fn new(
        peer: SocketAddr,
        salt: u32,
        config: ConnectionConfig,
        now: Instant,
        max_packet_bytes: usize,
    ) -> Self {
        let channels = Channels::new(config.channels.clone());
        Self {
            max_packet_bytes: max_packet_bytes.min(MAX_PACKET_BYTES),
            peer,
            salt,
            config,
            // Numbers packets from 1, so the ack of a peer that has received nothing (ack 0)
            // confirms nothing; see `AckTracker::new`.
            acks: AckTracker::new(),
            rtt: RttEstimator::default(),
            stats: LinkStats::default(),
            channels,
            last_received: now,
            last_sent: now,
            received_since_sent: 0,
            events: VecDeque::new(),
            goodbyes_left: 0,
            goodbye_reason: DisconnectReasonCode::Requested,
            closed: None,
        }
    }

    pub(crate) fn rtt_or_default(&self) -> Duration {
        self.rtt.smoothed_or(INITIAL_RTT)
    }

    /// How long an unacked packet waits before it is declared lost: one RTT, a jitter
    /// allowance, and one keep-alive interval (a quiet peer acks at keep-alive pace).
    fn loss_timeout(&self) -> Duration {
        self.rtt_or_default()
            + (self.rtt.jitter() * 4).max(MIN_JITTER_ALLOWANCE)
            + self.config.keepalive_interval
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    pub(crate) fn closed_reason(&self) -> Option<DisconnectReason> {
        self.closed
    }

    /// Handle a decoded packet from the peer (the caller checked the address).
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        packet: &Packet<'_>,
        datagram_len: usize,
        spares: &mut Spares,
    ) -> Result<(), InvalidPacket> {
        if self.closed.is_some() {
            return Ok(());
        }
        match *packet {
            Packet::Payload { header, payload } => {
                if header.salt != self.salt {
                    return Err(InvalidPacket::WrongSalt);
                }
                // Parse before committing anything: a bad body must not move acks.
                let (datagram, channel_section) = split_payload(payload)?;
                if !self.acks.on_receive(now, header.sequence) {
                    return Err(InvalidPacket::Replay);
                }
                self.last_received = now;
                self.received_since_sent += 1;
                self.stats.on_received(now, datagram_len);
                self.acks.on_ack(
                    now,
                    header.ack,
                    header.ack_bits,
                    header.ack_delay,
                    &mut self.rtt,
                );
                self.drain_notices(now);
                if let Some(d) = datagram {
                    let mut payload = spares.pop().unwrap_or_default();
                    payload.clear();
                    payload.extend_from_slice(d);
                    self.events.push_back(Event::Datagram {
                        sequence: header.sequence,
                        payload,
                        received_at: now,
                    });
                }
                let mut result = Ok(());
                if !channel_section.is_empty() {
                    // The acks and the datagram stand, but the endpoint must count the
                    // refused section like any other bad input (a fragment bomb from a
                    // verified peer would otherwise show in no server-wide counter).
                    if self.channels.read_packet(now, channel_section).is_err() {
                        result = Err(InvalidPacket::BadPayload);
                    }
                    while let Some((channel, payload)) = self.channels.receive() {
                        self.events.push_back(Event::Message {
                            channel,
                            payload,
                            received_at: now,
                        });
                    }
                }
                result
            }
            Packet::Disconnect { salt, reason } => {
                if salt != self.salt {
                    return Err(InvalidPacket::WrongSalt);
                }
                self.close(DisconnectReason::Peer(reason));
                Ok(())
            }
            _ => Err(InvalidPacket::UnexpectedKind),
        }
    }

    fn drain_notices(&mut self, now: Instant) {
        while let Some(n) = self.acks.poll_notice() {
            self.stats.on_notice(n.acked);
            if n.tag & TAG_CHANNELS != 0 {
                self.channels.on_delivery(now, n.sequence, n.acked);
            }
            if n.tag & TAG_DATAGRAM != 0 {
                self.events.push_back(Event::Delivery {
                    sequence: n.sequence,
                    acked: n.acked,
                });
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if now.saturating_duration_since(self.last_received) >= self.config.timeout {
            self.close(DisconnectReason::TimedOut);
            return;
        }
        self.acks
            .handle_timeout(now, self.loss_timeout(), &self.rtt);
        self.drain_notices(now);
        self.channels.handle_timeout(now);
    }

    /// [`Self::poll_timeout`], with the channels' part remembered until they next change: a
    /// server asks this after every packet each connection sends or takes in.
    pub(crate) fn refresh_timeout(&mut self) -> Option<Instant> {
        if self.timeout_without_timers().is_none() {
            self.channels.remember_timeout(self.rtt_or_default());
        }
        self.poll_timeout()
    }

    /// The timeout when the timers need not be asked: none once closed, now while there is
    /// something to send.
    fn timeout_without_timers(&self) -> Option<Option<Instant>> {
        if self.closed.is_some() {
            return Some(None);
        }
        if self.goodbyes_left > 0 || self.received_since_sent >= ACK_EVERY_PACKETS {
            return Some(Some(self.last_sent));
        }
        None
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if let Some(t) = self.timeout_without_timers() {
            return t;
        }
        let rtt = self.rtt_or_default();
        [
            Some(self.last_received + self.config.timeout),
            Some(self.last_sent + self.config.keepalive_interval),
            self.acks.next_loss_deadline(self.loss_timeout(), &self.rtt),
            self.channels.poll_timeout(rtt),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Ask for the state a send reads first to be brought into the caches (see
    /// [`crate::prefetch`]).
    pub(crate) fn prefetch_send(&self) {
        crate::prefetch::value(self);
        crate::prefetch::value(&self.acks);
        crate::prefetch::value(&self.channels);
        crate::prefetch::value(&self.stats);
        crate::prefetch::value(&self.last_sent);
        self.acks.prefetch_send();
        self.channels.prefetch();
    }

    /// Build one packet now carrying `datagram` plus whatever channel messages fit, appended
    /// to `out` (the owner's [`Outbox`](super::outbox::Outbox)). The packet counts as sent
    /// now: its owner writes it out with the rest of the tick's, and drops it if the
    /// connection ends first.
    pub(crate) fn send_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Sequence, SendError> {
        if self.closed.is_some() || self.goodbyes_left > 0 {
            return Err(SendError::NotConnected);
        }
        if datagram.len() > max_datagram_bytes(self.max_packet_bytes) {
            return Err(SendError::DatagramTooLarge(datagram.len()));
        }
        let start = out.len();
        let seq = self.build_payload_packet(now, Some(datagram), out);
        self.note_sent(now, out.len() - start);
        Ok(seq)
    }

    pub(crate) fn send_message(
        &mut self,
        now: Instant,
        channel: u8,
        message: &[u8],
    ) -> Result<(), SendError> {
        if self.closed.is_some() || self.goodbyes_left > 0 {
            return Err(SendError::NotConnected);
        }
        self.channels.send(now, channel, message)?;
        Ok(())
    }

    /// Start a clean disconnect: the next polls send the goodbye copies, then the
    /// connection is closed with `reason`.
    pub(crate) fn disconnect(&mut self, code: DisconnectReasonCode) {
        if self.closed.is_none() && self.goodbyes_left == 0 {
            self.goodbyes_left = super::DISCONNECT_REDUNDANCY;
            self.goodbye_reason = code;
        }
    }

    pub(crate) fn close(&mut self, reason: DisconnectReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.events.push_back(Event::Disconnected { reason });
        }
    }

    /// Next datagram for the peer (its goodbye, an ack, a keep-alive or channel messages
    /// due), written to `buf`; `scratch` is room to build it in. Datagrams already built wait
    /// in the owner's outbox, which goes first.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Option<usize> {
        if self.closed.is_some() {
            return None;
        }
        if self.goodbyes_left > 0 {
            self.goodbyes_left -= 1;
            let p = Packet::Disconnect {
                salt: self.salt,
                reason: self.goodbye_reason,
            };
            // A disconnect packet is 10 bytes; every caller's buffer holds MAX_PACKET_BYTES.
            let len = p.encode(buf)?;
            self.note_sent(now, len);
            if self.goodbyes_left == 0 {
                // The side that says goodbye reports that it left by request.
                self.close(DisconnectReason::Requested);
            }
            return Some(len);
        }
        let rtt = self.rtt_or_default();
        let keepalive_due = now.saturating_duration_since(self.last_sent)
            >= self.config.keepalive_interval
            || self.received_since_sent >= ACK_EVERY_PACKETS;
        if self.channels.wants_to_send(now, rtt) || keepalive_due {
            scratch.clear();
            self.build_payload_packet(now, None, scratch);
            let len = scratch.len().min(buf.len());
            buf[..len].copy_from_slice(&scratch[..len]);
            self.note_sent(now, len);
            return Some(len);
        }
        None
    }

    fn note_sent(&mut self, now: Instant, len: usize) {
        self.last_sent = now;
        self.received_since_sent = 0;
        self.stats.on_sent(now, len);
    }

    /// Build one packet and append it to `out`: its sequence.
    fn build_payload_packet(
        &mut self,
        now: Instant,
        datagram: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Sequence {
        // The sequence is taken once the packet's tag (what it carries) is known, below.
        let seq = self.acks.peek_next_sequence();
        let (ack, ack_bits, ack_delay) = self.acks.ack_fields(now);
        // The packet is written in place: room for the header, then the payload, then the
        // header and CRC over it. Copying the payload into a packet of its own (and zeroing
        // that first) showed in the send path's profile.
        let start = out.len();
        out.resize(start + Packet::CONNECTED_HEADER_BYTES, 0);
        if let Some(d) = datagram {
            out.push(FLAG_DATAGRAM);
            // MAX_DATAGRAM_BYTES < u16::MAX, checked by the caller.
            out.extend_from_slice(&(d.len() as u16).to_le_bytes());
            out.extend_from_slice(d);
        } else {
            out.push(0);
        }
        let room = self.max_packet_bytes.saturating_sub(out.len() - start);
        let rtt = self.rtt_or_default();
        let written = self.channels.write_packet(now, seq, rtt, out, room);
        if datagram.is_none() && written == 0 {
            // A bare keep-alive: no flags byte at all.
            out.truncate(start + Packet::CONNECTED_HEADER_BYTES);
        }
        let tag = if datagram.is_some() { TAG_DATAGRAM } else { 0 }
            | if written > 0 { TAG_CHANNELS } else { 0 };
        self.acks.on_send(now, tag);
        let header = ConnectedHeader {
            salt: self.salt,
            sequence: seq,
            ack,
            ack_bits,
            ack_delay,
        };
        // The payload was sized to fit `max_packet_bytes` (at most MAX_PACKET_BYTES) above,
        // so sealing cannot fail; an empty packet would only be dropped, never corrupt state.
        if !header.seal_payload_packet(&mut out[start..]) {
            out.truncate(start);
        }
        seq
    }

    pub(crate) fn link_snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            rtt: self.rtt.smoothed(),
            min_rtt: self.rtt.min(),
            jitter: self.rtt.jitter(),
            link: self.stats,
        }
    }
}

/// Split a payload into its optional datagram and its channel section.
pub(super) fn split_payload(payload: &[u8]) -> Result<(Option<&[u8]>, &[u8]), InvalidPacket> {
    let Some((&flags, rest)) = payload.split_first() else {
        return Ok((None, &[]));
    };
    if flags & !KNOWN_FLAGS != 0 {
        return Err(InvalidPacket::BadPayload);
    }
    if flags & FLAG_DATAGRAM == 0 {
        return Ok((None, rest));
    }
    let (len_bytes, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(InvalidPacket::BadPayload)?;
    let len = usize::from(u16::from_le_bytes(*len_bytes));
    if len > rest.len() {
        return Err(InvalidPacket::BadPayload);
    }
    let (d, channels) = rest.split_at(len);
    Ok((Some(d), channels))
}

/// A connection's quality figures at a moment.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionStats {
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Smallest round-trip time seen.
    pub min_rtt: Option<Duration>,
    /// Round-trip variation (jitter).
    pub jitter: Duration,
    /// Traffic counters and loss.
    pub link: LinkStats,
}
