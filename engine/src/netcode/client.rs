//! The client: request, response, connected; moving on to the token's next server on failure.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::{self, Packet, PacketType, Request};
use super::replay::ReplayWindow;
use super::stats::{DropCounts, Dropped};
use super::token::{ConnectToken, TokenError};
use super::{
    CHALLENGE_TOKEN_BYTES, DISCONNECT_PACKETS, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, SEND_INTERVAL,
    SendError, Transmit, token_timeout,
};

/// The client's states, with the standard's numbers (negative: failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// The token expired before any server accepted it.
    ConnectTokenExpired = -6,
    /// The token did not parse.
    InvalidConnectToken = -5,
    /// Connected, then nothing arrived within the timeout.
    ConnectionTimedOut = -4,
    /// No keep-alive answered the challenge response within the timeout.
    ConnectionResponseTimedOut = -3,
    /// No challenge answered the request within the timeout.
    ConnectionRequestTimedOut = -2,
    /// The server was full.
    ConnectionDenied = -1,
    /// Not connected, by either side's choice.
    Disconnected = 0,
    /// Sending connection requests.
    SendingConnectionRequest = 1,
    /// Sending challenge responses.
    SendingConnectionResponse = 2,
    /// Connected.
    Connected = 3,
}

impl ClientState {
    /// True while connecting.
    pub fn is_connecting(self) -> bool {
        matches!(
            self,
            Self::SendingConnectionRequest | Self::SendingConnectionResponse
        )
    }
}

/// Something that happened on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected to the server.
    Connected {
        /// This client's slot on the server.
        client_index: u32,
        /// The server's slot count.
        max_clients: u32,
    },
    /// A payload from the server.
    Payload {
        /// The packet's sequence.
        sequence: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// The connection ended or failed; the state says how. No more events follow.
    Disconnected {
        /// The final state: [`ClientState::Disconnected`] or an error state.
        state: ClientState,
    },
}

/// Client counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Datagrams received, valid or not.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Dropped datagrams by reason.
    pub dropped: DropCounts,
}

/// The sans-IO netcode client, for one connect token.
#[derive(Debug)]
pub struct Client {
    token: ConnectToken,
    request: Vec<u8>,
    server_index: usize,
    state: ClientState,
    /// One sequence for the token's whole life: the client-to-server key stays the same from
    /// one server address to the next, so restarting at 0 would reuse nonces.
    sequence: u64,
    replay: ReplayWindow,
    timeout: Option<Duration>,
    token_lifetime: Duration,
    connect_start: Instant,
    last_recv: Instant,
    last_send: Option<Instant>,
    challenge: Option<(u64, [u8; CHALLENGE_TOKEN_BYTES])>,
    client_index: u32,
    max_clients: u32,
    outgoing: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
    last_now: Instant,
}

impl Client {
    /// A client that starts connecting at `now` with the 2048 token bytes from the backend.
    pub fn new(now: Instant, token: &[u8]) -> Result<Self, TokenError> {
        Ok(Self::with_token(now, ConnectToken::from_bytes(token)?))
    }

    /// [`Client::new`] with a token already read.
    pub fn with_token(now: Instant, token: ConnectToken) -> Self {
        let request = Request {
            protocol_id: token.protocol_id,
            expire_timestamp: token.expire_timestamp,
            nonce: token.nonce,
            private_data: *token.private_data,
        }
        .write();
        Self {
            timeout: token_timeout(token.timeout_seconds),
            token_lifetime: Duration::from_secs(
                token
                    .expire_timestamp
                    .saturating_sub(token.create_timestamp),
            ),
            token,
            request,
            server_index: 0,
            state: ClientState::SendingConnectionRequest,
            sequence: 0,
            replay: ReplayWindow::default(),
            connect_start: now,
            last_recv: now,
            last_send: None,
            challenge: None,
            client_index: 0,
            max_clients: 0,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
            last_now: now,
        }
    }

    /// The connect token it connects with.
    pub fn token(&self) -> &ConnectToken {
        &self.token
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// True when connected.
    pub fn is_connected(&self) -> bool {
        self.state == ClientState::Connected
    }

    /// The server being tried, or connected to.
    pub fn server_address(&self) -> SocketAddr {
        // Tokens are read with at least one address, and the index never passes the last.
        self.token.server_addresses[self.server_index]
    }

    /// This client's slot on the server, once connected.
    pub fn client_index(&self) -> Option<u32> {
        self.is_connected().then_some(self.client_index)
    }

    /// How many client slots the server has, as its keep-alive said, once connected.
    pub fn max_clients(&self) -> Option<u32> {
        self.is_connected().then_some(self.max_clients)
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// A datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.last_now = now;
        self.stats.packets_in += 1;
        if let Err(reason) = self.process(now, from, datagram) {
            self.stats.dropped.count(reason);
        }
    }

    fn process(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Result<(), Dropped> {
        if from != self.server_address() {
            return Err(Dropped::UnknownAddress);
        }
        let header = packet::peek(datagram)?;
        let expected = match (header.kind, self.state) {
            (PacketType::Request | PacketType::Response, _) => false,
            (PacketType::Denied, s) => s.is_connecting(),
            (PacketType::Challenge, s) => s == ClientState::SendingConnectionRequest,
            (PacketType::KeepAlive, s) => {
                matches!(
                    s,
                    ClientState::SendingConnectionResponse | ClientState::Connected
                )
            }
            (PacketType::Payload | PacketType::Disconnect, s) => s == ClientState::Connected,
        };
        if !expected {
            return Err(Dropped::UnexpectedType);
        }
        let mut scratch = [0u8; MAX_PACKET_BYTES];
        let (sequence, packet) = packet::open(
            datagram,
            header,
            self.token.protocol_id,
            &self.token.server_to_client_key,
            Some(&mut self.replay),
            &mut scratch,
        )?;
        match packet {
            Packet::Denied => self.next_server_or(now, ClientState::ConnectionDenied),
            Packet::Challenge { sequence, token } => {
                self.challenge = Some((sequence, *token));
                self.state = ClientState::SendingConnectionResponse;
                self.last_recv = now;
                self.last_send = None;
            }
            Packet::KeepAlive {
                client_index,
                max_clients,
            } => {
                self.last_recv = now;
                if self.state == ClientState::SendingConnectionResponse {
                    self.state = ClientState::Connected;
                    self.client_index = client_index;
                    self.max_clients = max_clients;
                    self.events.push_back(ClientEvent::Connected {
                        client_index,
                        max_clients,
                    });
                }
            }
            Packet::Payload(payload) => {
                self.last_recv = now;
                self.events.push_back(ClientEvent::Payload {
                    sequence,
                    payload: payload.to_vec(),
                });
            }
            Packet::Disconnect => self.finish(ClientState::Disconnected),
            Packet::Response { .. } => return Err(Dropped::UnexpectedType),
        }
        Ok(())
    }

    /// A failure while connecting: try the token's next server, or end in `error`.
    fn next_server_or(&mut self, now: Instant, error: ClientState) {
        if self.server_index + 1 < self.token.server_addresses.len() {
            self.server_index += 1;
            self.state = ClientState::SendingConnectionRequest;
            self.challenge = None;
            self.replay = ReplayWindow::default();
            self.last_recv = now;
            self.last_send = None;
        } else {
            self.finish(error);
        }
    }

    fn finish(&mut self, state: ClientState) {
        self.state = state;
        self.outgoing.retain(|_| false);
        self.events.push_back(ClientEvent::Disconnected { state });
    }

    /// Applies timeouts and token expiry. A spurious call is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if self.state.is_connecting() && now >= self.connect_start + self.token_lifetime {
            self.finish(ClientState::ConnectTokenExpired);
            return;
        }
        let Some(timeout) = self.timeout else { return };
        if now < self.last_recv + timeout {
            return;
        }
        match self.state {
            ClientState::SendingConnectionRequest => {
                self.next_server_or(now, ClientState::ConnectionRequestTimedOut)
            }
            ClientState::SendingConnectionResponse => {
                self.next_server_or(now, ClientState::ConnectionResponseTimedOut)
            }
            ClientState::Connected => self.finish(ClientState::ConnectionTimedOut),
            _ => {}
        }
    }

    fn next_packet(&mut self, packet: &Packet<'_>) -> Option<Vec<u8>> {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let sequence = self.sequence;
        self.sequence += 1;
        let len = packet::write(
            packet,
            sequence,
            self.token.protocol_id,
            &self.token.client_to_server_key,
            &mut buf,
        )?;
        Some(buf[..len].to_vec())
    }

    fn queue(&mut self, now: Instant, packet: &Packet<'_>) {
        if let Some(bytes) = self.next_packet(packet) {
            self.outgoing.push_back(bytes);
            self.last_send = Some(now);
        }
    }

    /// Sends a payload (1 to 1200 bytes) to the server.
    pub fn send_payload(&mut self, now: Instant, payload: &[u8]) -> Result<(), SendError> {
        if self.state != ClientState::Connected {
            return Err(SendError::NotConnected);
        }
        if payload.is_empty() {
            return Err(SendError::EmptyPayload);
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::PayloadTooLarge(payload.len()));
        }
        self.queue(now, &Packet::Payload(payload));
        Ok(())
    }

    /// Disconnects: when connected, ten disconnect packets go out (drain `poll_transmit`).
    pub fn disconnect(&mut self, now: Instant) {
        if self.state == ClientState::Connected {
            for _ in 0..DISCONNECT_PACKETS {
                self.queue(now, &Packet::Disconnect);
            }
            let copies = std::mem::take(&mut self.outgoing);
            self.finish(ClientState::Disconnected);
            self.outgoing = copies;
        } else if self.state.is_connecting() {
            self.finish(ClientState::Disconnected);
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.last_send.is_none_or(|t| now >= t + SEND_INTERVAL)
    }

    /// Next datagram to send, written to `buf` (at least [`MAX_PACKET_BYTES`] long).
    /// Requests, responses and keep-alives that are due are made here.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            return None;
        }
        if self.outgoing.is_empty() && self.due(now) {
            match self.state {
                ClientState::SendingConnectionRequest => {
                    self.outgoing.push_back(self.request.clone());
                    self.last_send = Some(now);
                }
                ClientState::SendingConnectionResponse => {
                    if let Some((sequence, token)) = self.challenge {
                        self.queue(
                            now,
                            &Packet::Response {
                                sequence,
                                token: &token,
                            },
                        );
                    }
                }
                ClientState::Connected => {
                    let keep_alive = Packet::KeepAlive {
                        client_index: self.client_index,
                        max_clients: self.max_clients,
                    };
                    self.queue(now, &keep_alive);
                }
                _ => {}
            }
        }
        let bytes = self.outgoing.pop_front()?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.stats.packets_out += 1;
        Some(Transmit {
            destination: self.server_address(),
            len: bytes.len(),
        })
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` (or `poll_transmit`) next; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.outgoing.is_empty() {
            return Some(self.last_now);
        }
        if !(self.state.is_connecting() || self.state == ClientState::Connected) {
            return None;
        }
        let send = self.last_send.map_or(self.last_now, |t| t + SEND_INTERVAL);
        let mut next = send;
        if let Some(t) = self.timeout {
            next = next.min(self.last_recv + t);
        }
        if self.state.is_connecting() {
            next = next.min(self.connect_start + self.token_lifetime);
        }
        Some(next)
    }
}
