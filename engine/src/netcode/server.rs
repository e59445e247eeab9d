//! The server: client slots, the token-checked handshake, keep-alives, timeouts.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::{self, Packet, PacketType, Request};
use super::replay::ReplayWindow;
use super::stats::{DropCounts, Dropped};
use super::token::{ChallengeToken, PrivateConnectToken};
use super::{
    DISCONNECT_PACKETS, GLOBAL_SEQUENCE_START, Key, MAC_BYTES, MAX_CLIENTS, MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES, SEND_INTERVAL, SendError, Transmit, UserData, crypto, token_timeout,
};
use crate::timers::Timers;

/// How long a handshake with timeouts disabled in its token may stay half-open.
const HANDSHAKE_LIFETIME_NO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's slot on the server, in `0..max_clients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientIndex(pub u32);

/// Server settings, checked by [`Server::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The game's protocol id; tokens and packets of another are dropped.
    pub protocol_id: u64,
    /// The key shared with the backend that mints tokens.
    pub private_key: Key,
    /// The address clients reach this server at; it must be in a token for the token to be
    /// accepted here, so a token for one server is useless at another.
    pub public_address: SocketAddr,
    /// Client slots, 1 to [`MAX_CLIENTS`] (1,024). Default 64.
    pub max_clients: usize,
    /// Handshakes in progress at once (addresses that sent a valid request but have not
    /// connected). Default `4 * max_clients`: room for slow clients, yet bounded memory
    /// under a flood of valid-looking requests.
    pub max_handshakes: usize,
    /// Connect tokens remembered to refuse their reuse from another address. Default
    /// `8 * max_clients`; entries are forgotten once their token expires.
    pub token_history: usize,
}

impl ServerConfig {
    /// A config with the documented defaults.
    pub fn new(protocol_id: u64, private_key: Key, public_address: SocketAddr) -> Self {
        Self {
            protocol_id,
            private_key,
            public_address,
            max_clients: 64,
            max_handshakes: 256,
            token_history: 512,
        }
    }

    /// Sets `max_clients`, and the handshake and history bounds that follow from it.
    pub fn with_max_clients(mut self, max_clients: usize) -> Self {
        self.max_clients = max_clients;
        self.max_handshakes = 4 * max_clients;
        self.token_history = 8 * max_clients;
        self
    }
}

/// A config the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_clients` outside 1..=[`MAX_CLIENTS`].
    #[error("max_clients {0} outside 1..={MAX_CLIENTS}")]
    MaxClients(usize),
    /// `max_handshakes` or `token_history` zero.
    #[error("max_handshakes and token_history must be at least 1")]
    ZeroBound,
}

/// Server-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Datagrams received, valid or not.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Dropped datagrams by reason.
    pub dropped: DropCounts,
    /// Challenges sent.
    pub challenges_sent: u64,
    /// Connection denied packets sent.
    pub denied_sent: u64,
    /// Replies not sent because they would have been larger than the request (never happens
    /// with the standard's packet sizes; counted so a change that breaks the rule shows).
    pub replies_suppressed: u64,
    /// Clients connected.
    pub connections_accepted: u64,
    /// Disconnect packets from addresses with no connection: mostly the redundant copies of
    /// a goodbye already acted on. Not dropped as invalid; they change nothing.
    pub late_disconnects: u64,
    /// A connected client's own connection request or response, sent again before it read
    /// that it was connected (under loss). Not dropped as invalid; they change nothing.
    pub late_handshakes: u64,
}

/// Why a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Nothing arrived from it within the token's timeout.
    TimedOut,
    /// It sent a disconnect packet.
    ClientDisconnected,
    /// The server application disconnected it.
    ServerDisconnected,
}

/// Something that happened on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client completed the handshake.
    ClientConnected {
        /// Its slot.
        client: ClientIndex,
        /// Its id from the token.
        client_id: u64,
        /// Its address.
        address: SocketAddr,
        /// The user data from its token.
        user_data: Box<UserData>,
    },
    /// A client left; its slot is free.
    ClientDisconnected {
        /// Its slot.
        client: ClientIndex,
        /// Its id.
        client_id: u64,
        /// Why.
        reason: DisconnectReason,
    },
    /// A payload from a client.
    Payload {
        /// Its slot.
        client: ClientIndex,
        /// The packet's sequence.
        sequence: u64,
        /// The payload.
        payload: Vec<u8>,
    },
}

#[derive(Debug)]
struct Slot {
    client_id: u64,
    address: SocketAddr,
    send_key: Key,
    recv_key: Key,
    /// Silence after which the slot is freed (from the token): its deadline is in
    /// [`Server::timeouts`], moved on by every packet that opens.
    timeout: Option<Duration>,
    sequence: u64,
    replay: ReplayWindow,
    /// False until the client shows it has the keep-alive that told it its index.
    confirmed: bool,
}

/// An address whose request was valid: the keys from its token, until it connects.
#[derive(Debug)]
struct Handshake {
    send_key: Key,
    recv_key: Key,
    timeout: Option<Duration>,
    expires: Instant,
}

/// The sans-IO netcode server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    challenge_key: Key,
    challenge_sequence: u64,
    /// Sequence of challenges and denials; see [`GLOBAL_SEQUENCE_START`].
    global_sequence: u64,
    slots: Vec<Option<Slot>>,
    /// By slot: when its next keep-alive is due (a send interval after its last packet).
    /// With the timeouts, indexed so that finding what is due, and when anything next is,
    /// costs a look at the first timer, not a scan of every slot: `poll_transmit` looks for
    /// due keep-alives before each packet it hands out, and a server is asked for its next
    /// timeout after every datagram.
    keep_alives: Timers<u32>,
    /// By slot: when it times out (its timeout after its last packet that opened).
    timeouts: Timers<u32>,
    by_address: HashMap<SocketAddr, usize>,
    /// The slot of each connected client id: a request or response asks whether its id is
    /// connected, which a scan of every slot (each about 2 KB, its replay window) answered
    /// from a thousand cache lines.
    by_client_id: HashMap<u64, usize>,
    /// Free slots, lowest first (the slot a new client takes).
    free: BTreeSet<usize>,
    handshakes: HashMap<SocketAddr, Handshake>,
    /// The same handshakes by when they expire, earliest first: what the next timeout is,
    /// and what goes when the handshakes are full, without a pass over them all (the server
    /// is asked for its next timeout after every datagram).
    handshake_expiry: BTreeSet<(Instant, SocketAddr)>,
    /// The address each token was first used from, by the token's MAC. The MAC is not a
    /// secret (the request carries it in the clear after the encrypted token), so a hashed
    /// lookup, which compares keys in variable time, tells an attacker nothing the server's
    /// answer does not; and only a request whose token opened, which took the private key
    /// to make, gets here.
    history: HashMap<[u8; MAC_BYTES], SocketAddr>,
    /// The same tokens by when they expire, earliest first: what is forgotten first.
    history_expiry: BTreeSet<(u64, [u8; MAC_BYTES])>,
    outgoing: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    last_now: Instant,
    /// False while draining: new clients are denied as if the server were full.
    accepting: bool,
}

impl Server {
    /// A server whose clock starts at `now`, with a fresh challenge key from the OS.
    pub fn new(config: ServerConfig, now: Instant) -> Result<Self, ConfigError> {
        Self::with_challenge_key(config, now, crypto::generate_key())
    }

    pub(super) fn with_challenge_key(
        config: ServerConfig,
        now: Instant,
        challenge_key: Key,
    ) -> Result<Self, ConfigError> {
        if !(1..=MAX_CLIENTS).contains(&config.max_clients) {
            return Err(ConfigError::MaxClients(config.max_clients));
        }
        if config.max_handshakes == 0 || config.token_history == 0 {
            return Err(ConfigError::ZeroBound);
        }
        Ok(Self {
            slots: (0..config.max_clients).map(|_| None).collect(),
            free: (0..config.max_clients).collect(),
            keep_alives: Timers::with_slots(config.max_clients),
            timeouts: Timers::with_slots(config.max_clients),
            config,
            challenge_key,
            challenge_sequence: 0,
            global_sequence: GLOBAL_SEQUENCE_START,
            accepting: true,
            by_address: HashMap::new(),
            by_client_id: HashMap::new(),
            handshakes: HashMap::new(),
            handshake_expiry: BTreeSet::new(),
            history: HashMap::new(),
            history_expiry: BTreeSet::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            last_now: now,
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.by_address.len()
    }

    /// The slots in use.
    pub fn clients(&self) -> impl Iterator<Item = ClientIndex> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| ClientIndex(i as u32))
    }

    /// The address of a connected client.
    pub fn client_address(&self, client: ClientIndex) -> Option<SocketAddr> {
        self.slot(client).map(|s| s.address)
    }

    /// The token's client id of a connected client.
    pub fn client_id(&self, client: ClientIndex) -> Option<u64> {
        self.slot(client).map(|s| s.client_id)
    }

    fn slot(&self, client: ClientIndex) -> Option<&Slot> {
        self.slots.get(client.0 as usize)?.as_ref()
    }

    /// A datagram from `from`. `unix_secs` is the current unix time in seconds, against which
    /// connect tokens expire; `now` drives the timers.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        self.last_now = now;
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if let Err(reason) = self.process(now, unix_secs, from, datagram) {
            self.stats.dropped.count(reason);
        }
    }

    fn process(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Dropped> {
        match datagram.first() {
            None => return Err(Dropped::TooSmall),
            Some(0) => return self.process_request(now, unix_secs, from, datagram),
            Some(_) => {}
        }
        let header = packet::peek(datagram)?;
        match header.kind {
            PacketType::Response => self.process_response(now, from, datagram, header),
            PacketType::Disconnect if !self.by_address.contains_key(&from) => {
                // Most likely one of the redundant copies of a goodbye already acted on:
                // nothing to do, and not counted as invalid (as in plain mode).
                self.stats.late_disconnects += 1;
                Ok(())
            }
            PacketType::KeepAlive | PacketType::Payload | PacketType::Disconnect => {
                let index = *self.by_address.get(&from).ok_or(Dropped::UnknownAddress)?;
                // The index map and the slots change together.
                let Some(slot) = self.slots[index].as_mut() else {
                    return Err(Dropped::UnknownAddress);
                };
                let mut scratch = [0u8; MAX_PACKET_BYTES];
                let (sequence, packet) = packet::open(
                    datagram,
                    header,
                    self.config.protocol_id,
                    &slot.recv_key,
                    Some(&mut slot.replay),
                    &mut scratch,
                )?;
                // Slots are fewer than MAX_CLIENTS, far below u32::MAX.
                let at = slot.timeout.map(|t| now + t);
                self.timeouts.set(index as u32, index as u32, at);
                match packet {
                    Packet::KeepAlive { .. } => slot.confirmed = true,
                    Packet::Payload(payload) => {
                        slot.confirmed = true;
                        self.events.push_back(ServerEvent::Payload {
                            client: ClientIndex(index as u32),
                            sequence,
                            payload: payload.to_vec(),
                        });
                    }
                    _ => self.free_slot(index, DisconnectReason::ClientDisconnected),
                }
                Ok(())
            }
            // Request has prefix 0, handled above; challenges and denials go to clients.
            PacketType::Request | PacketType::Challenge | PacketType::Denied => {
                Err(Dropped::UnexpectedType)
            }
        }
    }

    fn process_request(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Dropped> {
        let request = Request::read(datagram, self.config.protocol_id)?;
        if request.expire_timestamp <= unix_secs {
            return Err(Dropped::TokenExpired);
        }
        let token = PrivateConnectToken::open(
            &request.private_data,
            request.protocol_id,
            request.expire_timestamp,
            &request.nonce,
            &self.config.private_key,
        )
        .map_err(|e| match e {
            super::TokenError::DecryptFailed => Dropped::TokenInvalid,
            _ => Dropped::TokenMalformed,
        })?;
        if !token.server_addresses.contains(&self.config.public_address) {
            return Err(Dropped::WrongServerAddress);
        }
        if let Some(&index) = self.by_address.get(&from)
            && self.slots[index]
                .as_ref()
                .is_some_and(|s| s.client_id == token.client_id)
        {
            // The connected client's own request, sent again before it learnt it was in:
            // harmless, and not invalid.
            self.stats.late_handshakes += 1;
            return Ok(());
        }
        if self.by_address.contains_key(&from) || self.connected_id(token.client_id) {
            return Err(Dropped::AlreadyConnected);
        }
        self.remember_token(
            unix_secs,
            request.token_mac(),
            from,
            request.expire_timestamp,
        )?;
        if !self.accepting || self.free_slot_index().is_none() {
            self.deny(from, &token.server_to_client_key, datagram.len());
            return Err(Dropped::ServerFull);
        }
        let timeout = token_timeout(token.timeout_seconds);
        if !self.handshakes.contains_key(&from)
            && self.handshakes.len() >= self.config.max_handshakes
        {
            self.expire_handshakes(now);
            if self.handshakes.len() >= self.config.max_handshakes {
                return Err(Dropped::HandshakesFull);
            }
        }
        let expires = now + timeout.unwrap_or(HANDSHAKE_LIFETIME_NO_TIMEOUT);
        let handshake = Handshake {
            send_key: token.server_to_client_key,
            recv_key: token.client_to_server_key,
            timeout,
            expires,
        };
        if let Some(old) = self.handshakes.insert(from, handshake) {
            self.handshake_expiry.remove(&(old.expires, from));
        }
        self.handshake_expiry.insert((expires, from));
        let challenge = ChallengeToken {
            client_id: token.client_id,
            user_data: token.user_data,
        }
        .seal(&self.challenge_key, self.challenge_sequence);
        let packet = Packet::Challenge {
            sequence: self.challenge_sequence,
            token: &challenge,
        };
        self.challenge_sequence += 1;
        let sequence = self.next_global_sequence();
        if let Some(bytes) = write_vec(
            &packet,
            sequence,
            self.config.protocol_id,
            &token.server_to_client_key,
        ) && self.reply(from, bytes, datagram.len())
        {
            self.stats.challenges_sent += 1;
        }
        Ok(())
    }

    /// Adds the token to the history, or refuses it if another address used it before.
    fn remember_token(
        &mut self,
        unix_secs: u64,
        mac: [u8; MAC_BYTES],
        from: SocketAddr,
        expire_timestamp: u64,
    ) -> Result<(), Dropped> {
        if let Some(&used) = self.history.get(&mac) {
            return if used == from {
                Ok(())
            } else {
                Err(Dropped::TokenReused)
            };
        }
        if self.history.len() >= self.config.token_history {
            // Expired tokens first: the server refuses them anyway.
            while let Some(&(expires, old)) = self.history_expiry.first()
                && expires <= unix_secs
            {
                self.history_expiry.pop_first();
                self.history.remove(&old);
            }
        }
        if self.history.len() >= self.config.token_history {
            // Full of live tokens: forget the one that expires first, the least useful to
            // an attacker replaying it.
            if let Some((_, old)) = self.history_expiry.pop_first() {
                self.history.remove(&old);
            }
        }
        self.history.insert(mac, from);
        self.history_expiry.insert((expire_timestamp, mac));
        Ok(())
    }

    fn process_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        header: packet::Header,
    ) -> Result<(), Dropped> {
        if let Some(&index) = self.by_address.get(&from) {
            // A response from a connected address: most likely the client's own, sent again
            // before it read the keep-alive that connected it (a loss, or packets crossing).
            // If it opens with the connection's key it is that: harmless, and not invalid.
            let slot = self.slots[index]
                .as_ref()
                .ok_or(Dropped::AlreadyConnected)?;
            let mut scratch = [0u8; MAX_PACKET_BYTES];
            return match packet::open(
                datagram,
                header,
                self.config.protocol_id,
                &slot.recv_key,
                None,
                &mut scratch,
            ) {
                Ok(_) => {
                    self.stats.late_handshakes += 1;
                    Ok(())
                }
                Err(_) => Err(Dropped::AlreadyConnected),
            };
        }
        let handshake = self.handshakes.get(&from).ok_or(Dropped::UnknownAddress)?;
        let mut scratch = [0u8; MAX_PACKET_BYTES];
        let (_, packet) = packet::open(
            datagram,
            header,
            self.config.protocol_id,
            &handshake.recv_key,
            None,
            &mut scratch,
        )?;
        let Packet::Response { sequence, token } = packet else {
            return Err(Dropped::UnexpectedType);
        };
        let challenge = ChallengeToken::open(token, &self.challenge_key, sequence)
            .ok_or(Dropped::ChallengeInvalid)?;
        if self.connected_id(challenge.client_id) {
            return Err(Dropped::AlreadyConnected);
        }
        let send_key = handshake.send_key;
        let Some(index) = self.free_slot_index().filter(|_| self.accepting) else {
            self.deny(from, &send_key, datagram.len());
            return Err(Dropped::ServerFull);
        };
        // Checked above that a handshake exists for this address.
        let Some(handshake) = self.handshakes.remove(&from) else {
            return Err(Dropped::UnknownAddress);
        };
        self.handshake_expiry.remove(&(handshake.expires, from));
        self.free.remove(&index);
        self.by_client_id.insert(challenge.client_id, index);
        self.slots[index] = Some(Slot {
            client_id: challenge.client_id,
            address: from,
            send_key: handshake.send_key,
            recv_key: handshake.recv_key,
            timeout: handshake.timeout,
            sequence: 0,
            replay: ReplayWindow::default(),
            confirmed: false,
        });
        let slot = index as u32;
        self.keep_alives.set(slot, slot, Some(now + SEND_INTERVAL));
        self.timeouts
            .set(slot, slot, handshake.timeout.map(|t| now + t));
        self.by_address.insert(from, index);
        self.stats.connections_accepted += 1;
        self.events.push_back(ServerEvent::ClientConnected {
            client: ClientIndex(index as u32),
            client_id: challenge.client_id,
            address: from,
            user_data: Box::new(challenge.user_data),
        });
        if let Some(bytes) = self.slot_packet(index, &self.keep_alive(index)) {
            self.reply(from, bytes, datagram.len());
        }
        Ok(())
    }

    fn keep_alive(&self, index: usize) -> Packet<'static> {
        Packet::KeepAlive {
            client_index: index as u32,
            max_clients: self.config.max_clients as u32,
        }
    }

    fn connected_id(&self, client_id: u64) -> bool {
        self.by_client_id.contains_key(&client_id)
    }

    fn free_slot_index(&self) -> Option<usize> {
        self.free.first().copied()
    }

    /// Drops the handshakes that expired by `now`, earliest first.
    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(expires, address)) = self.handshake_expiry.first()
            && expires <= now
        {
            self.handshake_expiry.pop_first();
            self.handshakes.remove(&address);
        }
    }

    fn next_global_sequence(&mut self) -> u64 {
        let s = self.global_sequence;
        self.global_sequence = self.global_sequence.wrapping_add(1);
        s
    }

    fn deny(&mut self, to: SocketAddr, key: &Key, request_len: usize) {
        let sequence = self.next_global_sequence();
        if let Some(bytes) = write_vec(&Packet::Denied, sequence, self.config.protocol_id, key)
            && self.reply(to, bytes, request_len)
        {
            self.stats.denied_sent += 1;
        }
    }

    /// Queues a reply to a datagram of `request_len` bytes, unless it is larger: the server
    /// never amplifies.
    fn reply(&mut self, to: SocketAddr, bytes: Vec<u8>, request_len: usize) -> bool {
        if bytes.len() > request_len {
            self.stats.replies_suppressed += 1;
            return false;
        }
        self.outgoing.push_back((to, bytes));
        true
    }

    /// Encrypts a connection packet for slot `index` with its next sequence.
    fn slot_packet(&mut self, index: usize, packet: &Packet<'_>) -> Option<Vec<u8>> {
        let protocol_id = self.config.protocol_id;
        let slot = self.slots.get_mut(index)?.as_mut()?;
        let sequence = slot.sequence;
        slot.sequence += 1;
        write_vec(packet, sequence, protocol_id, &slot.send_key)
    }

    fn queue_for_slot(&mut self, index: usize, packet: &Packet<'_>, now: Instant) {
        let bytes = self.slot_packet(index, packet);
        if let Some(slot) = self.slots[index].as_ref() {
            // The next keep-alive is due a send interval on (moved even if the packet could
            // not be written, so a due keep-alive is never looked at twice in one poll).
            self.keep_alives
                .set(index as u32, index as u32, Some(now + SEND_INTERVAL));
            if let Some(bytes) = bytes {
                self.outgoing.push_back((slot.address, bytes));
            }
        } else {
            // (A free slot has no timers; should one be left, it must not be due forever.)
            self.keep_alives.set(index as u32, index as u32, None);
        }
    }

    fn free_slot(&mut self, index: usize, reason: DisconnectReason) {
        if let Some(slot) = self.slots[index].take() {
            self.keep_alives.set(index as u32, index as u32, None);
            self.timeouts.set(index as u32, index as u32, None);
            self.by_address.remove(&slot.address);
            self.by_client_id.remove(&slot.client_id);
            self.free.insert(index);
            self.events.push_back(ServerEvent::ClientDisconnected {
                client: ClientIndex(index as u32),
                client_id: slot.client_id,
                reason,
            });
        }
    }

    /// Accept new clients or not (draining: connected clients stay, new ones get a
    /// connection denied packet, counted as [`Dropped::ServerFull`]).
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Sends a payload (1 to 1200 bytes) to a connected client.
    pub fn send_payload(
        &mut self,
        now: Instant,
        client: ClientIndex,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if payload.is_empty() {
            return Err(SendError::EmptyPayload);
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::PayloadTooLarge(payload.len()));
        }
        let index = client.0 as usize;
        let confirmed = self.slot(client).ok_or(SendError::UnknownClient)?.confirmed;
        if !confirmed {
            // Until the client answers, every payload is preceded by the keep-alive that
            // tells it its index; a client that lost the first one still connects.
            self.queue_for_slot(index, &self.keep_alive(index), now);
        }
        self.queue_for_slot(index, &Packet::Payload(payload), now);
        Ok(())
    }

    /// Disconnects a client: ten disconnect packets go out, and its slot is free at once.
    pub fn disconnect(&mut self, now: Instant, client: ClientIndex) {
        let index = client.0 as usize;
        if self.slot(client).is_none() {
            return;
        }
        for _ in 0..DISCONNECT_PACKETS {
            self.queue_for_slot(index, &Packet::Disconnect, now);
        }
        self.free_slot(index, DisconnectReason::ServerDisconnected);
    }

    /// Disconnects every client.
    pub fn disconnect_all(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            self.disconnect(now, ClientIndex(index as u32));
        }
    }

    /// Applies timeouts: silent clients and stale handshakes are dropped. A spurious call is
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        // Earliest first; freeing a slot takes its timer out.
        while let Some(&t) = self.timeouts.first()
            && t.at <= now
        {
            self.free_slot(t.slot as usize, DisconnectReason::TimedOut);
        }
        self.expire_handshakes(now);
    }

    /// Next datagram to send, written to `buf` (at least [`MAX_PACKET_BYTES`] long). Keep-alives
    /// that are due are made here.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            return None;
        }
        if self.outgoing.is_empty() {
            // Earliest first; queueing one moves its timer a send interval on.
            while let Some(&t) = self.keep_alives.first()
                && t.at <= now
            {
                let index = t.slot as usize;
                self.queue_for_slot(index, &self.keep_alive(index), now);
            }
        }
        let (destination, bytes) = self.outgoing.pop_front()?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        Some(Transmit {
            destination,
            len: bytes.len(),
        })
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` (or `poll_transmit`) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.outgoing.is_empty() {
            return Some(self.last_now);
        }
        [self.keep_alives.first(), self.timeouts.first()]
            .into_iter()
            .flatten()
            .map(|t| t.at)
            .chain(self.handshake_expiry.first().map(|&(at, _)| at))
            .min()
    }
}

fn write_vec(packet: &Packet<'_>, sequence: u64, protocol_id: u64, key: &Key) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let len = packet::write(packet, sequence, protocol_id, key, &mut buf)?;
    Some(buf[..len].to_vec())
}

#[cfg(test)]
impl Server {
    pub(super) fn global_sequence(&self) -> u64 {
        self.global_sequence
    }
}
