//! The client endpoint: handshake with retries, then one established connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::established::{Established, Spares, keep_spare};
use super::outbox::Outbox;
use super::{
    ClientId, ConfigError, ConnectionConfig, ConnectionStats, DisconnectReason, Event,
    InvalidPacket, SendError, Transmit,
};
use crate::Sequence;
use crate::packet::{DisconnectReasonCode, MAX_PACKET_BYTES, Packet};

/// Floor of the handshake resend interval: a zero interval would send on every poll and
/// never let the caller's loop finish.
const MIN_HANDSHAKE_RESEND_INTERVAL: Duration = Duration::from_millis(1);

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Give up connecting after this long without an `Accepted`. Default 5 s.
    pub connect_timeout: Duration,
    /// Interval at which the current handshake packet (the connection request, then the
    /// challenge response) is sent again until the server answers or the connect timeout
    /// passes. Default 100 ms (10 Hz, as netcode.io does): a steady rate, not a growing
    /// backoff, because the chance to connect within the timeout depends on how many attempts
    /// fit in it. At 30 % loss each way an attempt gets through both ways only half the time,
    /// and a backoff to 1 s leaves about ten attempts in 5 s; 10 Hz leaves fifty. The cost is
    /// at most 10 padded 1200-byte datagrams a second, for a few seconds. Values below 1 ms
    /// are treated as 1 ms.
    pub handshake_resend_interval: Duration,
    /// Per-connection settings (must match the server's channels).
    pub connection: ConnectionConfig,
    /// Plain, or secure with a connect token; must match the server's mode.
    pub security: ClientSecurity,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            handshake_resend_interval: Duration::from_millis(100),
            connection: ConnectionConfig::default(),
            security: ClientSecurity::Plain,
        }
    }
}

/// How a client connects; see [`super::Security`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum ClientSecurity {
    /// The engine's own cookie handshake, to a plain server.
    #[default]
    Plain,
    /// netcode 1.02 with this connect token (the 2048 bytes from the game's backend). The
    /// server is the token's first address that answers; the `server` given to
    /// [`Client::new`] is only used when it is one of the token's addresses.
    Secure {
        /// The connect token.
        token: Vec<u8>,
    },
}

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Sending connection requests, waiting for a challenge.
    Requesting,
    /// Sending the challenge response, waiting for accepted/denied.
    Responding,
    /// Connected with this id.
    Connected(ClientId),
    /// Done, for this reason.
    Disconnected(DisconnectReason),
}

#[derive(Debug)]
enum Phase {
    Handshake {
        cookie: Option<(u64, u64)>,
        next_send: Instant,
    },
    Connected {
        id: ClientId,
        conn: Box<Established>,
    },
    Done(DisconnectReason),
}

/// The sans-IO client: feed it datagrams and time, drain transmits and events.
#[derive(Debug)]
pub struct Client {
    /// The netcode client underneath, in secure mode.
    secure: Option<crate::netcode::Client>,
    /// The newest `now` seen, for the calls that take none (`disconnect`).
    last_now: Instant,
    config: ClientConfig,
    server: SocketAddr,
    nonce: u64,
    started: Instant,
    phase: Phase,
    /// Datagram packets built by `send_datagram`, written out before anything else.
    outbox: Outbox<()>,
    /// Room to build the connection's other packets in (acks, keep-alives, messages).
    scratch: Vec<u8>,
    events: VecDeque<Event>,
    /// Payload buffers handed back, for the next datagrams received.
    spares: Spares,
    invalid_packets: u64,
}

impl Client {
    /// Start connecting to `server` at `now`. `seed` makes the connection nonce: give it
    /// real entropy in production, a constant in tests.
    ///
    /// Fails when the config is unusable (channels, timeouts).
    pub fn new(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        config.connection.validate()?;
        if config.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid("connect timeout must be above zero"));
        }
        let (secure, server) = match &config.security {
            ClientSecurity::Plain => (None, server),
            ClientSecurity::Secure { token } => {
                let netcode = crate::netcode::Client::new(now, token)?;
                let server = netcode.server_address();
                (Some(netcode), server)
            }
        };
        let nonce = ChaCha8Rng::seed_from_u64(seed).random();
        Ok(Self {
            secure,
            last_now: now,
            config,
            server,
            nonce,
            started: now,
            phase: Phase::Handshake {
                cookie: None,
                next_send: now,
            },
            outbox: Outbox::default(),
            scratch: Vec::new(),
            events: VecDeque::new(),
            spares: Spares::new(),
            invalid_packets: 0,
        })
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The netcode layer's counters, in secure mode (drops by reason).
    pub fn secure_stats(&self) -> Option<crate::netcode::ClientStats> {
        self.secure.as_ref().map(|n| n.stats())
    }

    /// Current state. In secure mode the handshake is netcode's: `Responding` once its
    /// challenge arrived, so in both modes `Requesting` means the server has not answered.
    pub fn state(&self) -> ClientState {
        match &self.phase {
            Phase::Handshake { cookie: None, .. }
                if self.secure.as_ref().is_some_and(|n| {
                    n.state() == crate::netcode::ClientState::SendingConnectionResponse
                }) =>
            {
                ClientState::Responding
            }
            Phase::Handshake { cookie: None, .. } => ClientState::Requesting,
            Phase::Handshake {
                cookie: Some(_), ..
            } => ClientState::Responding,
            Phase::Connected { id, .. } => ClientState::Connected(*id),
            Phase::Done(r) => ClientState::Disconnected(*r),
        }
    }

    /// True once connected and until disconnected.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// Datagrams from the server's address that were dropped as invalid.
    pub fn invalid_packets(&self) -> u64 {
        self.invalid_packets
    }

    /// Feed one received datagram. Invalid ones are dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.last_now = now;
        if let Some(netcode) = self.secure.as_mut() {
            netcode.handle_datagram(now, from, datagram);
            self.pump_secure(now);
            self.after_connection_io();
            return;
        }
        if let Err(why) = self.process(now, from, datagram) {
            self.invalid_packets += 1;
            if let Phase::Connected { conn, .. } = &mut self.phase {
                conn.stats.invalid_received += 1;
            }
            tracing::trace!(%why, "client dropped datagram");
        }
        self.after_connection_io();
    }

    fn process(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), InvalidPacket> {
        if from != self.server {
            return Err(InvalidPacket::Stranger);
        }
        let packet = Packet::decode(datagram)?;
        match (&mut self.phase, packet) {
            (
                Phase::Handshake {
                    cookie, next_send, ..
                },
                Packet::Challenge {
                    client_nonce,
                    timestamp_ms,
                    mac,
                },
            ) if client_nonce == self.nonce => {
                if cookie.is_none() {
                    *cookie = Some((timestamp_ms, mac));
                    *next_send = now;
                }
                Ok(())
            }
            (
                Phase::Handshake { .. },
                Packet::Accepted {
                    client_nonce,
                    client_id,
                    salt,
                },
            ) if client_nonce == self.nonce => {
                let id = ClientId(client_id);
                let conn = Box::new(Established::new(
                    self.server,
                    salt,
                    self.config.connection.clone(),
                    now,
                    MAX_PACKET_BYTES,
                ));
                self.phase = Phase::Connected { id, conn };
                self.events.push_back(Event::Connected { client_id: id });
                Ok(())
            }
            (
                Phase::Handshake { .. },
                Packet::Denied {
                    client_nonce,
                    reason,
                },
            ) if client_nonce == self.nonce => {
                self.finish(DisconnectReason::Denied(reason));
                Ok(())
            }
            (Phase::Connected { .. }, Packet::Accepted { client_nonce, .. })
                if client_nonce == self.nonce =>
            {
                // A duplicate of the Accepted we already acted on.
                Ok(())
            }
            (
                Phase::Connected { conn, .. },
                p @ (Packet::Payload { .. } | Packet::Disconnect { .. }),
            ) => conn.handle_packet(now, &p, datagram.len(), &mut self.spares),
            (Phase::Done(_), _) => Ok(()),
            _ => Err(InvalidPacket::UnexpectedKind),
        }
    }

    /// Take the netcode client's events: connected, payloads (each one of the engine's own
    /// packets), disconnected.
    fn pump_secure(&mut self, now: Instant) {
        while let Some(e) = self.secure.as_mut().and_then(|n| n.poll_event()) {
            match e {
                crate::netcode::ClientEvent::Connected { client_index, .. } => {
                    if !matches!(self.phase, Phase::Handshake { .. }) {
                        continue;
                    }
                    // The server names this connection by its slot plus one, as here.
                    let id = ClientId(client_index.wrapping_add(1));
                    if let Some(n) = &self.secure {
                        self.server = n.server_address();
                    }
                    let conn = Box::new(Established::new(
                        self.server,
                        0,
                        self.config.connection.clone(),
                        now,
                        crate::netcode::MAX_PAYLOAD_BYTES,
                    ));
                    self.phase = Phase::Connected { id, conn };
                    self.events.push_back(Event::Connected { client_id: id });
                }
                crate::netcode::ClientEvent::Payload { payload, .. } => {
                    let Phase::Connected { conn, .. } = &mut self.phase else {
                        continue;
                    };
                    let result = match Packet::decode(&payload) {
                        Ok(packet @ (Packet::Payload { .. } | Packet::Disconnect { .. })) => {
                            conn.handle_packet(now, &packet, payload.len(), &mut self.spares)
                        }
                        Ok(_) => Err(InvalidPacket::UnexpectedKind),
                        Err(e) => Err(InvalidPacket::Malformed(e)),
                    };
                    if result.is_err() {
                        self.invalid_packets += 1;
                        conn.stats.invalid_received += 1;
                    }
                }
                crate::netcode::ClientEvent::Disconnected { state } => {
                    use crate::netcode::ClientState as S;
                    let reason = match state {
                        S::ConnectionDenied => {
                            DisconnectReason::Denied(crate::packet::DenyReason::ServerFull)
                        }
                        S::ConnectionRequestTimedOut | S::ConnectionResponseTimedOut => {
                            DisconnectReason::ConnectTimedOut
                        }
                        S::ConnectTokenExpired | S::InvalidConnectToken => {
                            DisconnectReason::TokenRefused
                        }
                        S::ConnectionTimedOut => DisconnectReason::TimedOut,
                        _ => DisconnectReason::Peer(DisconnectReasonCode::ServerShutdown),
                    };
                    // The engine's own goodbye, inside the last payloads, may have told the
                    // real reason already.
                    self.after_connection_io();
                    self.finish(reason);
                }
            }
        }
    }

    fn finish(&mut self, reason: DisconnectReason) {
        if !matches!(self.phase, Phase::Done(_)) {
            self.phase = Phase::Done(reason);
            self.events.push_back(Event::Disconnected { reason });
        }
    }

    /// Move the connection's events out and notice when it has closed.
    fn after_connection_io(&mut self) {
        if let Phase::Connected { conn, .. } = &mut self.phase {
            self.events.extend(conn.events.drain(..));
            if let Some(reason) = conn.closed_reason() {
                // The connection already queued its Disconnected event.
                self.phase = Phase::Done(reason);
                self.outbox.clear();
                // Secure mode: end the netcode session too (its own redundant disconnect
                // packets), so nothing more is sent for a connection that is over.
                if let Some(netcode) = self.secure.as_mut() {
                    netcode.disconnect(self.last_now);
                }
            }
        }
    }

    /// Advance timers: handshake resends, keep-alive, loss detection, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if let Some(netcode) = self.secure.as_mut() {
            netcode.handle_timeout(now);
            self.pump_secure(now);
        }
        match &mut self.phase {
            Phase::Handshake { .. } => {
                if now.saturating_duration_since(self.started) >= self.config.connect_timeout {
                    self.finish(DisconnectReason::ConnectTimedOut);
                }
            }
            Phase::Connected { conn, .. } => conn.handle_timeout(now),
            Phase::Done(_) => {}
        }
        self.after_connection_io();
    }

    /// Next datagram to send, written to `buf` (at least [`MAX_PACKET_BYTES`] long).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            return None;
        }
        if self.secure.is_some() {
            return self.poll_transmit_secure(now, buf);
        }
        let len = match &mut self.phase {
            Phase::Handshake { cookie, next_send } => {
                if now < *next_send {
                    return None;
                }
                *next_send = now
                    + self
                        .config
                        .handshake_resend_interval
                        .max(MIN_HANDSHAKE_RESEND_INTERVAL);
                let packet = match *cookie {
                    None => Packet::ConnectionRequest {
                        client_nonce: self.nonce,
                    },
                    Some((timestamp_ms, mac)) => Packet::ChallengeResponse {
                        client_nonce: self.nonce,
                        timestamp_ms,
                        mac,
                    },
                };
                packet.encode(buf)?
            }
            Phase::Connected { conn, .. } => match self.outbox.pop(buf) {
                Some((_, _, len)) => len,
                None => conn.poll_transmit(now, buf, &mut self.scratch)?,
            },
            Phase::Done(_) => return None,
        };
        self.after_connection_io();
        Some(Transmit {
            destination: self.server,
            len,
        })
    }

    /// Secure mode: netcode's own packets first, then the connection's next packet sealed
    /// into a netcode payload; once the connection's goodbye is out, netcode's own.
    fn poll_transmit_secure(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let netcode = self.secure.as_mut()?;
        if let Some(t) = netcode.poll_transmit(now, buf) {
            return Some(t);
        }
        let Phase::Connected { conn, .. } = &mut self.phase else {
            return None;
        };
        let len = match self.outbox.pop(buf) {
            Some((_, _, len)) => len,
            None => conn.poll_transmit(now, buf, &mut self.scratch)?,
        };
        // At most MAX_PAYLOAD_BYTES by the connection's packet limit.
        let _ = netcode.send_payload(now, &buf[..len]);
        self.last_now = now;
        self.after_connection_io();
        let netcode = self.secure.as_mut()?;
        netcode.poll_transmit(now, buf)
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Hand back the payload of an [`Event::Datagram`] once read: the next datagram
    /// received is written into its memory instead of a new buffer. Optional; a caller
    /// that keeps its payloads loses nothing but the reuse.
    pub fn recycle_payload(&mut self, payload: Vec<u8>) {
        keep_spare(&mut self.spares, payload);
    }

    /// When `handle_timeout` should next be called (or a transmit is ready to poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let netcode = self.secure.as_ref().and_then(|n| n.poll_timeout());
        let own = match &self.phase {
            // In secure mode netcode paces the handshake itself.
            Phase::Handshake { .. } if self.secure.is_some() => {
                Some(self.started + self.config.connect_timeout)
            }
            Phase::Handshake { next_send, .. } => {
                Some((*next_send).min(self.started + self.config.connect_timeout))
            }
            // Datagrams waiting: due now.
            Phase::Connected { .. } if !self.outbox.is_empty() => Some(self.started),
            Phase::Connected { conn, .. } => conn.poll_timeout(),
            Phase::Done(_) => None,
        };
        own.into_iter().chain(netcode).min()
    }

    /// Send an unreliable datagram now, in its own packet; see [`super::Server::send_datagram`].
    pub fn send_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<Sequence, SendError> {
        match &mut self.phase {
            Phase::Connected { conn, .. } => {
                let server = self.server;
                self.outbox
                    .push((), server, |out| conn.send_datagram(now, datagram, out))
            }
            _ => Err(SendError::NotConnected),
        }
    }

    /// Queue a message on `channel`.
    pub fn send_message(
        &mut self,
        now: Instant,
        channel: u8,
        message: &[u8],
    ) -> Result<(), SendError> {
        match &mut self.phase {
            Phase::Connected { conn, .. } => conn.send_message(now, channel, message),
            _ => Err(SendError::NotConnected),
        }
    }

    /// The stream under the connection (a TCP stream or a WebSocket) closed: nothing more can
    /// arrive, so the client ends now with [`DisconnectReason::StreamClosed`] instead of
    /// waiting out its timeout. A datagram client never calls this.
    pub fn stream_closed(&mut self, now: Instant) {
        self.last_now = now;
        match &mut self.phase {
            Phase::Connected { conn, .. } => conn.close(DisconnectReason::StreamClosed),
            Phase::Handshake { .. } => self.finish(DisconnectReason::StreamClosed),
            Phase::Done(_) => {}
        }
        self.after_connection_io();
    }

    /// Disconnect cleanly: the next polls send the goodbye (redundantly), then the client
    /// reports `Disconnected { reason: Requested }`. While still handshaking, stop at once.
    pub fn disconnect(&mut self) {
        match &mut self.phase {
            Phase::Connected { conn, .. } => {
                conn.disconnect(DisconnectReasonCode::Requested);
                // Its goodbye goes next, not the datagrams still waiting.
                self.outbox.clear();
            }
            Phase::Handshake { .. } => {
                if let Some(netcode) = self.secure.as_mut() {
                    netcode.disconnect(self.last_now);
                }
                self.finish(DisconnectReason::Requested)
            }
            Phase::Done(_) => {}
        }
    }

    /// Link figures, once connected.
    pub fn connection_stats(&self) -> Option<ConnectionStats> {
        match &self.phase {
            Phase::Connected { conn, .. } => Some(conn.link_snapshot()),
            _ => None,
        }
    }

    /// Per-channel figures, once connected.
    pub fn channel_stats(&self, channel: u8) -> Option<crate::channel::ChannelStats> {
        match &self.phase {
            Phase::Connected { conn, .. } => conn.channels.stats(channel),
            _ => None,
        }
    }
}
