//! The server endpoint: one socket, many clients, stateless handshake.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cookie::{CookieCheck, CookieJar};
use super::established::{Established, Spares, keep_spare};
use super::outbox::Outbox;
use super::table::{Client, ClientTable};
use super::{
    ClientId, ConfigError, ConnectionConfig, ConnectionStats, DisconnectReason, Event,
    InvalidPacket, SendError, Transmit,
};
use crate::Sequence;
use crate::packet::{DenyReason, DisconnectReasonCode, MAX_PACKET_BYTES, Packet};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most clients connected at once. Default 64.
    pub max_clients: usize,
    /// How long a challenge cookie stays valid. Default 10 s: long enough for a slow or
    /// lossy client to answer, short enough that a captured cookie is soon useless.
    pub cookie_lifetime: Duration,
    /// Handshake replies queued before further ones are dropped. Default 4096: a flood cannot
    /// grow the queue without bound between two drains.
    pub max_queued_replies: usize,
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// Plain or secure; see [`Security`]. Default plain, for labs and tests: a game on the
    /// internet ships [`Security::Secure`].
    pub security: Security,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_clients: 64,
            cookie_lifetime: Duration::from_secs(10),
            max_queued_replies: 4096,
            connection: ConnectionConfig::default(),
            security: Security::Plain,
        }
    }
}

impl ServerConfig {
    /// Largest datagram a connection of this server can carry.
    pub fn max_datagram_bytes(&self) -> usize {
        super::established::max_datagram_bytes(self.security.max_packet_bytes())
    }
}

/// How a server's connections are made and protected.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Security {
    /// The engine's own cookie handshake and session salt: cheap, and enough on a lab network,
    /// but the salt travels in clear text, so anyone who sees one packet can forge the
    /// connection's packets. For labs and tests.
    #[default]
    Plain,
    /// netcode 1.02 ([`crate::netcode`]): clients connect with a token from the game's
    /// backend, and every packet is encrypted and authenticated. The engine's packets ride
    /// inside netcode payloads of at most 1200 bytes.
    Secure(SecureServerConfig),
}

/// Settings of a secure server.
#[derive(Debug, Clone)]
pub struct SecureServerConfig {
    /// The netcode server: protocol id, the private key shared with the token backend, the
    /// public address tokens must name. Its client limit is the server's `max_clients`.
    pub netcode: crate::netcode::ServerConfig,
    /// Unix time in seconds at the `now` the server is built with: connect tokens expire in
    /// unix time, and the core reads no clock. The server counts on from it.
    pub unix_secs_at_start: u64,
}

impl Security {
    /// Largest packet of the engine's own a connection builds in this mode.
    pub(crate) fn max_packet_bytes(&self) -> usize {
        match self {
            Security::Plain => MAX_PACKET_BYTES,
            Security::Secure(_) => crate::netcode::MAX_PAYLOAD_BYTES,
        }
    }
}

/// Server-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams received (valid or not).
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams dropped as invalid, all reasons together.
    pub invalid_packets: u64,
    /// Of those: not a packet of this protocol (bad CRC, truncated, oversized, unknown kind).
    pub invalid_malformed: u64,
    /// Of those: connected traffic with the wrong session salt.
    pub invalid_wrong_salt: u64,
    /// Of those: connected traffic from an address with no connection.
    pub invalid_unknown_peer: u64,
    /// Of those: replayed or stale sequences.
    pub invalid_replay: u64,
    /// Of those: forged or expired cookies.
    pub invalid_cookie: u64,
    /// Of those: kinds a server never receives, unparsable payloads, or channel sections
    /// the channels refused.
    pub invalid_other: u64,
    /// Of those: dropped by the netcode layer in secure mode (tokens, decryption, replays;
    /// [`Server::secure_stats`] has them by reason).
    pub invalid_secure: u64,
    /// Disconnect packets from addresses with no connection: mostly the redundant copies of
    /// a goodbye already acted on. Not counted as invalid; they change nothing.
    pub late_disconnects: u64,
    /// Challenges queued for sending (not those dropped with a full reply queue).
    pub challenges_sent: u64,
    /// Handshake replies dropped because the reply queue was full.
    pub replies_dropped: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections denied.
    pub connections_denied: u64,
    /// Most clients connected at once.
    pub clients_peak: u64,
}

/// The sans-IO server: feed it datagrams and time, drain transmits and events.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    epoch: Instant,
    rng: ChaCha8Rng,
    cookies: CookieJar,
    next_client_id: u32,
    clients: ClientTable,
    by_addr: HashMap<SocketAddr, ClientId>,
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Datagram packets built by `send_datagram`, written out before anything else a
    /// connection sends.
    outbox: Outbox<ClientId>,
    /// Room to build a connection's other packets in (acks, keep-alives, messages).
    scratch: Vec<u8>,
    events: VecDeque<(ClientId, Event)>,
    /// Payload buffers handed back, for the next datagrams received.
    spares: Spares,
    stats: ServerStats,
    /// The netcode server underneath, in secure mode.
    secure: Option<SecureServer>,
    /// False while draining: new clients are denied (`ShuttingDown`), connected ones stay.
    accepting: bool,
}

/// The secure mode's state: the netcode server and which slot is which client.
#[derive(Debug)]
struct SecureServer {
    netcode: crate::netcode::Server,
    unix_secs_at_start: u64,
    by_index: HashMap<crate::netcode::ClientIndex, ClientId>,
}

/// A connection's id in secure mode: its netcode slot plus one (ids start at 1, as in plain
/// mode; the client learns its slot in the handshake, so both ends name it alike).
fn secure_client_id(index: crate::netcode::ClientIndex) -> ClientId {
    ClientId(index.0.wrapping_add(1))
}

fn secure_index(id: ClientId) -> crate::netcode::ClientIndex {
    crate::netcode::ClientIndex(id.0.wrapping_sub(1))
}

impl Server {
    /// A server whose clock starts at `now`. `seed` feeds the cookie key and session salts:
    /// give it the operating system's randomness (`rand::random()`) everywhere but in a
    /// test that must be reproducible. (`replication::Server` does so unless told a seed.)
    ///
    /// Fails when the config is unusable (channels, timeouts, a zero client limit).
    pub fn new(config: ServerConfig, now: Instant, seed: u64) -> Result<Self, ConfigError> {
        config.connection.validate()?;
        if config.max_clients == 0 || config.max_queued_replies == 0 {
            return Err(ConfigError::Invalid(
                "max clients and queued replies must be at least 1",
            ));
        }
        if config.cookie_lifetime.is_zero() {
            return Err(ConfigError::Invalid("cookie lifetime must be above zero"));
        }
        let secure = match &config.security {
            Security::Plain => None,
            Security::Secure(sec) => {
                let netcode = sec.netcode.clone().with_max_clients(config.max_clients);
                Some(SecureServer {
                    netcode: crate::netcode::Server::new(netcode, now)?,
                    unix_secs_at_start: sec.unix_secs_at_start,
                    by_index: HashMap::new(),
                })
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key: [u8; 16] = rng.random();
        Ok(Self {
            accepting: true,
            secure,
            cookies: CookieJar::new(key, config.cookie_lifetime),
            config,
            epoch: now,
            rng,
            next_client_id: 1,
            clients: ClientTable::default(),
            by_addr: HashMap::new(),
            replies: VecDeque::new(),
            outbox: Outbox::default(),
            scratch: Vec::new(),
            events: VecDeque::new(),
            spares: Spares::new(),
            stats: ServerStats::default(),
        })
    }

    /// The configuration this server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn count_invalid(&mut self, why: InvalidPacket) {
        let s = &mut self.stats;
        s.invalid_packets += 1;
        match why {
            InvalidPacket::Malformed(_) => s.invalid_malformed += 1,
            InvalidPacket::WrongSalt => s.invalid_wrong_salt += 1,
            InvalidPacket::UnknownPeer => s.invalid_unknown_peer += 1,
            InvalidPacket::Replay => s.invalid_replay += 1,
            InvalidPacket::ForgedCookie | InvalidPacket::ExpiredCookie => s.invalid_cookie += 1,
            InvalidPacket::UnexpectedKind | InvalidPacket::BadPayload | InvalidPacket::Stranger => {
                s.invalid_other += 1
            }
        }
        tracing::trace!(%why, "dropped datagram");
    }

    /// Feed one received datagram. Invalid ones are dropped and counted, never a panic.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.handle_datagram_inner(now, from, datagram);
        self.clients.reindex();
    }

    fn handle_datagram_inner(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if let Some(sec) = self.secure.as_mut() {
            let unix = sec.unix_secs_at_start + now.saturating_duration_since(self.epoch).as_secs();
            sec.netcode.handle_datagram(now, unix, from, datagram);
            self.pump_secure(now);
            return;
        }
        if let Err(why) = self.process(now, from, datagram) {
            if let Some(id) = self.by_addr.get(&from)
                && let Some(c) = self.clients.get_mut(id)
            {
                c.conn.stats.invalid_received += 1;
            }
            self.count_invalid(why);
        }
        if let Some(&id) = self.by_addr.get(&from) {
            self.remove_if_closed(id);
        }
    }

    fn process(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), InvalidPacket> {
        let packet = Packet::decode(datagram)?;
        match packet {
            Packet::ConnectionRequest { client_nonce } => {
                let timestamp_ms = self.now_ms(now);
                let mac = self.cookies.mac(from, client_nonce, timestamp_ms);
                let challenge = Packet::Challenge {
                    client_nonce,
                    timestamp_ms,
                    mac,
                };
                if self.reply(from, challenge) {
                    self.stats.challenges_sent += 1;
                }
                Ok(())
            }
            Packet::ChallengeResponse {
                client_nonce,
                timestamp_ms,
                mac,
            } => {
                match self
                    .cookies
                    .verify(from, client_nonce, timestamp_ms, mac, self.now_ms(now))
                {
                    CookieCheck::Valid => {}
                    CookieCheck::Forged => return Err(InvalidPacket::ForgedCookie),
                    CookieCheck::Expired => return Err(InvalidPacket::ExpiredCookie),
                }
                self.on_verified(now, from, client_nonce);
                Ok(())
            }
            Packet::Disconnect { .. } if !self.by_addr.contains_key(&from) => {
                self.stats.late_disconnects += 1;
                Ok(())
            }
            Packet::Payload { .. } | Packet::Disconnect { .. } => {
                let id = *self.by_addr.get(&from).ok_or(InvalidPacket::UnknownPeer)?;
                // by_addr and clients are kept in step by `on_verified` and `remove_if_closed`.
                let client = self
                    .clients
                    .get_mut(&id)
                    .ok_or(InvalidPacket::UnknownPeer)?;
                // A refused channel section is reported after the rest of the packet was
                // applied: hand its events on either way.
                let result =
                    client
                        .conn
                        .handle_packet(now, &packet, datagram.len(), &mut self.spares);
                Self::move_events(id, &mut client.conn, &mut self.events);
                result
            }
            Packet::Challenge { .. } | Packet::Accepted { .. } | Packet::Denied { .. } => {
                Err(InvalidPacket::UnexpectedKind)
            }
        }
    }

    /// Take the netcode server's events: connections made and ended, payloads (each one of
    /// the engine's own packets) for their connection.
    fn pump_secure(&mut self, now: Instant) {
        let Some(sec) = self.secure.as_mut() else {
            return;
        };
        // Connections a payload reached: only they can have closed here.
        let mut touched: Vec<ClientId> = Vec::new();
        while let Some(e) = sec.netcode.poll_event() {
            match e {
                crate::netcode::ServerEvent::ClientConnected {
                    client, address, ..
                } => {
                    let id = secure_client_id(client);
                    sec.by_index.insert(client, id);
                    // The salt is unused in secure mode (netcode authenticates every packet):
                    // zero on both ends.
                    let conn = Established::new(
                        address,
                        0,
                        self.config.connection.clone(),
                        now,
                        crate::netcode::MAX_PAYLOAD_BYTES,
                    );
                    self.clients.insert(id, Client { nonce: 0, conn });
                    self.stats.connections_accepted += 1;
                    self.stats.clients_peak =
                        self.stats.clients_peak.max(self.clients.len() as u64);
                    self.events
                        .push_back((id, Event::Connected { client_id: id }));
                }
                crate::netcode::ServerEvent::ClientDisconnected { client, reason, .. } => {
                    let Some(id) = sec.by_index.remove(&client) else {
                        continue;
                    };
                    self.outbox.forget(id);
                    if let Some(mut c) = self.clients.remove(&id) {
                        // The connection's own goodbye may have closed it already.
                        Self::move_events(id, &mut c.conn, &mut self.events);
                        if c.conn.closed_reason().is_none() {
                            let reason = match reason {
                                crate::netcode::DisconnectReason::TimedOut => {
                                    DisconnectReason::TimedOut
                                }
                                crate::netcode::DisconnectReason::ClientDisconnected => {
                                    DisconnectReason::Peer(DisconnectReasonCode::Requested)
                                }
                                _ => DisconnectReason::Requested,
                            };
                            self.events.push_back((id, Event::Disconnected { reason }));
                        }
                    }
                }
                crate::netcode::ServerEvent::Payload {
                    client, payload, ..
                } => {
                    let Some(&id) = sec.by_index.get(&client) else {
                        continue;
                    };
                    // A connection that already ended (the peer's goodbye came first): the
                    // redundant copies of that goodbye change nothing.
                    let Some(c) = self.clients.get_mut(&id) else {
                        continue;
                    };
                    touched.push(id);
                    let result = match Packet::decode(&payload) {
                        Ok(packet @ (Packet::Payload { .. } | Packet::Disconnect { .. })) => c
                            .conn
                            .handle_packet(now, &packet, payload.len(), &mut self.spares),
                        Ok(_) => Err(InvalidPacket::UnexpectedKind),
                        Err(e) => Err(InvalidPacket::Malformed(e)),
                    };
                    Self::move_events(id, &mut c.conn, &mut self.events);
                    if let Err(why) = result {
                        c.conn.stats.invalid_received += 1;
                        self.stats.invalid_packets += 1;
                        self.stats.invalid_other += 1;
                        tracing::trace!(%why, "dropped payload");
                    }
                }
            }
        }
        for id in touched {
            self.remove_if_closed_at(now, id);
        }
    }

    fn on_verified(&mut self, now: Instant, from: SocketAddr, client_nonce: u64) {
        if let Some(&id) = self.by_addr.get(&from) {
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            if c.nonce == client_nonce {
                // The client has not seen our Accepted yet: say it again.
                let reply = Packet::Accepted {
                    client_nonce,
                    client_id: id.0,
                    salt: c.conn.salt,
                };
                self.reply(from, reply);
                return;
            }
            // A new connection attempt from the same address: the old one is over.
            c.conn.events.clear();
            self.events.push_back((
                id,
                Event::Disconnected {
                    reason: DisconnectReason::Replaced,
                },
            ));
            self.clients.remove(&id);
            self.outbox.forget(id);
            self.by_addr.remove(&from);
        }
        if !self.accepting || self.clients.len() >= self.config.max_clients {
            self.stats.connections_denied += 1;
            let reason = if self.accepting {
                DenyReason::ServerFull
            } else {
                DenyReason::ShuttingDown
            };
            self.reply(
                from,
                Packet::Denied {
                    client_nonce,
                    reason,
                },
            );
            return;
        }
        let id = ClientId(self.next_client_id);
        self.next_client_id = self.next_client_id.wrapping_add(1).max(1);
        let salt = self.rng.random::<u32>();
        let conn = Established::new(
            from,
            salt,
            self.config.connection.clone(),
            now,
            MAX_PACKET_BYTES,
        );
        self.clients.insert(
            id,
            Client {
                nonce: client_nonce,
                conn,
            },
        );
        self.by_addr.insert(from, id);
        self.stats.connections_accepted += 1;
        self.stats.clients_peak = self.stats.clients_peak.max(self.clients.len() as u64);
        self.reply(
            from,
            Packet::Accepted {
                client_nonce,
                client_id: id.0,
                salt,
            },
        );
        self.events
            .push_back((id, Event::Connected { client_id: id }));
    }

    /// Queue a handshake reply; false when the queue is full and it was dropped.
    fn reply(&mut self, to: SocketAddr, packet: Packet<'_>) -> bool {
        if self.replies.len() >= self.config.max_queued_replies {
            self.stats.replies_dropped += 1;
            return false;
        }
        let mut buf = vec![0u8; packet.encoded_len()];
        // The buffer is exactly the packet's length and replies are far below the maximum.
        let Some(n) = packet.encode(&mut buf) else {
            return false;
        };
        buf.truncate(n);
        self.replies.push_back((to, buf));
        true
    }

    fn move_events(id: ClientId, conn: &mut Established, out: &mut VecDeque<(ClientId, Event)>) {
        out.extend(conn.events.drain(..).map(|e| (id, e)));
    }

    /// Remove `id` if its connection has closed (its Disconnected event is already queued).
    fn remove_if_closed(&mut self, id: ClientId) {
        if self.clients.get(&id).is_some_and(|c| c.conn.is_closed())
            && let Some(mut c) = self.clients.remove(&id)
        {
            self.outbox.forget(id);
            Self::move_events(id, &mut c.conn, &mut self.events);
            self.by_addr.remove(&c.conn.peer);
        }
    }

    /// [`remove_if_closed`](Self::remove_if_closed), and in secure mode end the netcode
    /// session too when this side ended the connection (it tells the client, redundantly,
    /// in its own disconnect packets). When the client said goodbye, its netcode disconnect
    /// follows its goodbye and frees the slot (or the token's timeout does); until then the
    /// rest of its redundant goodbyes land on the slot and are dropped quietly.
    fn remove_if_closed_at(&mut self, now: Instant, id: ClientId) {
        let reason = self.clients.get(&id).and_then(|c| c.conn.closed_reason());
        self.remove_if_closed(id);
        if let (Some(reason), Some(sec)) = (reason, self.secure.as_mut())
            && !matches!(reason, DisconnectReason::Peer(_))
        {
            let index = secure_index(id);
            if sec.by_index.remove(&index).is_some() {
                sec.netcode.disconnect(now, index);
            }
        }
    }

    /// The stream carrying `peer`'s packets (a TCP stream or a WebSocket) closed: nothing
    /// more can arrive from it, so its connection ends now with
    /// [`DisconnectReason::StreamClosed`] (and its slot is free) instead of at its timeout.
    /// An address with no connection is ignored.
    pub fn stream_closed(&mut self, now: Instant, peer: SocketAddr) {
        // Plain mode indexes connections by address; secure mode's are found by their peer
        // (a stream closing is rare, so the scan costs nothing that matters).
        let id = self.by_addr.get(&peer).copied().or_else(|| {
            self.clients
                .keys()
                .copied()
                .find(|id| self.clients.get(id).is_some_and(|c| c.conn.peer == peer))
        });
        let Some(id) = id else {
            return;
        };
        if let Some(c) = self.clients.get_mut(&id) {
            c.conn.close(DisconnectReason::StreamClosed);
            Self::move_events(id, &mut c.conn, &mut self.events);
        }
        self.remove_if_closed_at(now, id);
        self.clients.reindex();
    }

    /// Advance timers: keep-alives, loss detection, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(sec) = self.secure.as_mut() {
            sec.netcode.handle_timeout(now);
            self.pump_secure(now);
        }
        // Only connections whose timeout is due have anything to do (for the others the
        // call is a no-op), and only they can have closed.
        for id in self.clients.due(now) {
            if let Some(c) = self.clients.get_mut(&id) {
                c.conn.handle_timeout(now);
                Self::move_events(id, &mut c.conn, &mut self.events);
            }
            self.remove_if_closed_at(now, id);
        }
        self.clients.reindex();
    }

    /// Next datagram to send, written to `buf` (at least [`MAX_PACKET_BYTES`] long).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.poll_transmit_inner(now, buf);
        self.clients.reindex();
        t
    }

    fn poll_transmit_inner(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            return None;
        }
        if self.secure.is_some() {
            return self.poll_transmit_secure(now, buf);
        }
        if let Some((to, bytes)) = self.replies.pop_front() {
            buf[..bytes.len()].copy_from_slice(&bytes);
            self.count_out(bytes.len());
            return Some(Transmit {
                destination: to,
                len: bytes.len(),
            });
        }
        // Datagrams in the order they were sent: each connection's before its other packets.
        if let Some((_, destination, len)) = self.outbox.pop(buf) {
            self.count_out(len);
            return Some(Transmit { destination, len });
        }
        // Only a connection whose timeout is due has anything else to send, and the one that
        // has waited longest goes first, so no client's traffic waits behind another's.
        let scratch = &mut self.scratch;
        let sent = self.clients.first_due(now, |id, c| {
            c.conn
                .poll_transmit(now, buf, scratch)
                .map(|len| (id, c.conn.peer, len))
        });
        let (id, destination, len) = sent?;
        if let Some(c) = self.clients.get_mut(&id) {
            Self::move_events(id, &mut c.conn, &mut self.events);
        }
        self.count_out(len);
        self.remove_if_closed(id);
        Some(Transmit { destination, len })
    }

    /// Secure mode: netcode's own packets first (handshake replies, keep-alives,
    /// disconnects), then each connection's next packet, sealed into a netcode payload.
    fn poll_transmit_secure(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let sec = self.secure.as_mut()?;
            if let Some(t) = sec.netcode.poll_transmit(now, buf) {
                self.count_out(t.len);
                return Some(t);
            }
            // As in plain mode: datagrams in sending order, then the due connection that has
            // waited longest.
            if let Some((id, _, len)) = self.outbox.pop(buf) {
                // As below: a refusal (the slot just left) loses only this packet.
                let _ = sec.netcode.send_payload(now, secure_index(id), &buf[..len]);
                continue;
            }
            let scratch = &mut self.scratch;
            let (id, len) = self.clients.first_due(now, |id, c| {
                c.conn.poll_transmit(now, buf, scratch).map(|len| (id, len))
            })?;
            if let Some(c) = self.clients.get_mut(&id) {
                Self::move_events(id, &mut c.conn, &mut self.events);
            }
            // At most MAX_PAYLOAD_BYTES by the connection's packet limit; a refusal (the
            // slot just left) loses only this packet.
            let _ = sec.netcode.send_payload(now, secure_index(id), &buf[..len]);
            self.remove_if_closed_at(now, id);
        }
    }

    fn count_out(&mut self, len: usize) {
        self.stats.packets_out += 1;
        self.stats.bytes_out += len as u64;
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<(ClientId, Event)> {
        self.events.pop_front()
    }

    /// Hand back the payload of an [`Event::Datagram`] once read: the next datagram
    /// received, from any client, is written into its memory instead of a new buffer.
    /// Optional; a caller that keeps its payloads loses nothing but the reuse.
    pub fn recycle_payload(&mut self, payload: Vec<u8>) {
        keep_spare(&mut self.spares, payload);
    }

    /// When `handle_timeout` should next be called (or a transmit is ready to poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.replies.is_empty() || !self.outbox.is_empty() {
            return Some(self.epoch);
        }
        let netcode = self.secure.as_ref().and_then(|s| s.netcode.poll_timeout());
        self.clients.next_timeout().into_iter().chain(netcode).min()
    }

    /// Ask for what a send to `client` reads first to be brought into the caches, so that a
    /// server sending to many clients in turn overlaps the next one's misses with this
    /// one's work (see [`crate::prefetch`]).
    pub(crate) fn prefetch_send(&self, client: ClientId) {
        if let Some(c) = self.clients.get(&client) {
            c.conn.prefetch_send();
        }
    }

    /// Send an unreliable datagram (e.g. a snapshot part) to `client` now, in its own packet,
    /// with channel messages filling the rest. Returns the packet's sequence; an
    /// [`Event::Delivery`] with it reports whether the packet was acked or lost.
    pub fn send_datagram(
        &mut self,
        now: Instant,
        client: ClientId,
        datagram: &[u8],
    ) -> Result<Sequence, SendError> {
        let c = self
            .clients
            .get_mut(&client)
            .ok_or(SendError::UnknownClient)?;
        let peer = c.conn.peer;
        let r = self
            .outbox
            .push(client, peer, |out| c.conn.send_datagram(now, datagram, out));
        self.clients.reindex();
        r
    }

    /// Queue a message on `channel` for `client`.
    pub fn send_message(
        &mut self,
        now: Instant,
        client: ClientId,
        channel: u8,
        message: &[u8],
    ) -> Result<(), SendError> {
        let c = self
            .clients
            .get_mut(&client)
            .ok_or(SendError::UnknownClient)?;
        let r = c.conn.send_message(now, channel, message);
        self.clients.reindex();
        r
    }

    /// Disconnect one client cleanly (it is told, redundantly).
    pub fn disconnect(&mut self, client: ClientId, code: DisconnectReasonCode) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.conn.disconnect(code);
            // Its goodbye goes next, not the datagrams still waiting.
            self.outbox.forget(client);
        }
        self.clients.reindex();
    }

    /// Accept new clients or not. While not (draining), a new client is denied with
    /// `ShuttingDown` and the connected ones play on.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
        if let Some(sec) = self.secure.as_mut() {
            sec.netcode.set_accepting(accepting);
        }
    }

    /// True unless draining.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Disconnect every client, telling each the server is shutting down. Keep polling
    /// transmits until `client_count()` is zero to send the goodbyes.
    pub fn shutdown(&mut self) {
        for c in self.clients.values_mut() {
            c.conn.disconnect(DisconnectReasonCode::ServerShutdown);
        }
        self.outbox.clear();
        self.clients.reindex();
    }

    /// Connected clients, in id order.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.keys().copied()
    }

    /// How many clients are connected (including ones still saying goodbye).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The address a client connected from.
    pub fn client_addr(&self, client: ClientId) -> Option<SocketAddr> {
        self.clients.get(&client).map(|c| c.conn.peer)
    }

    /// Link figures for one client.
    pub fn connection_stats(&self, client: ClientId) -> Option<ConnectionStats> {
        self.clients.get(&client).map(|c| c.conn.link_snapshot())
    }

    /// Per-channel figures for one client.
    pub fn channel_stats(
        &self,
        client: ClientId,
        channel: u8,
    ) -> Option<crate::channel::ChannelStats> {
        self.clients
            .get(&client)
            .and_then(|c| c.conn.channels.stats(channel))
    }

    /// Server-wide counters (in secure mode the netcode layer's drops count as invalid).
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        if let Some(sec) = &self.secure {
            let dropped = sec.netcode.stats().dropped.total();
            s.invalid_packets += dropped;
            s.invalid_secure = dropped;
        }
        s
    }

    /// The netcode layer's own counters, in secure mode (drops by reason).
    pub fn secure_stats(&self) -> Option<crate::netcode::ServerStats> {
        self.secure.as_ref().map(|s| s.netcode.stats())
    }
}
