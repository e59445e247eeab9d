//! A server and a client in memory and virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::{self, Packet};
use super::replay::ReplayWindow;
use super::token::seal_connect_token;
use super::*;

const PROTOCOL_ID: u64 = 0x1122_3344_5566_7788;
const PRIVATE_KEY: Key = [7; 32];
const UNIX: u64 = 1_700_000_000;

fn server_addr() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "10.0.0.2:50000".parse().unwrap()
}

fn settings(client_id: u64) -> TokenSettings {
    TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id,
        server_addresses: vec![server_addr()],
        expire_seconds: 30,
        timeout_seconds: 5,
        user_data: std::array::from_fn(|i| i as u8),
    }
}

fn token(client_id: u64) -> ConnectToken {
    generate_connect_token(UNIX, &settings(client_id), &PRIVATE_KEY).unwrap()
}

/// Datagrams in flight, both ways, delivered on `step`.
struct Pair {
    now: Instant,
    unix: u64,
    server: Server,
    client: Client,
    client_addr: SocketAddr,
    /// Every datagram the server sent, with the length of the datagram it answered (0 when
    /// it was not an answer).
    to_client: Vec<Vec<u8>>,
    to_server: Vec<Vec<u8>>,
    deliver: bool,
}

impl Pair {
    fn new(config: ServerConfig, token: ConnectToken) -> Self {
        let now = Instant::now();
        Self {
            now,
            unix: UNIX,
            server: Server::new(config, now).unwrap(),
            client: Client::with_token(now, token),
            client_addr: client_addr(),
            to_client: Vec::new(),
            to_server: Vec::new(),
            deliver: true,
        }
    }

    fn default() -> Self {
        Self::new(
            ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr()),
            token(42),
        )
    }

    /// Drains both sides' transmits, then delivers them (unless delivery is off).
    fn step(&mut self) {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        let mut to_server = Vec::new();
        while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
            to_server.push(buf[..t.len].to_vec());
        }
        let mut to_client = Vec::new();
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, self.client_addr);
            to_client.push(buf[..t.len].to_vec());
        }
        if self.deliver {
            for d in &to_server {
                self.server
                    .handle_datagram(self.now, self.unix, self.client_addr, d);
            }
            for d in &to_client {
                self.client.handle_datagram(self.now, server_addr(), d);
            }
        }
        self.to_server.extend(to_server);
        self.to_client.extend(to_client);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn run(&mut self, for_: Duration) {
        let end = self.now + for_;
        while self.now < end {
            self.step();
            self.advance(Duration::from_millis(10));
        }
    }

    fn server_events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn client_events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn connect(&mut self) {
        for _ in 0..10 {
            self.step();
            if self.client.is_connected() {
                return;
            }
        }
        panic!("did not connect: {:?}", self.client.state());
    }

    /// A connection packet from the client as the server would receive it next.
    fn client_packet(&mut self, p: &Packet<'_>, sequence: u64) -> Vec<u8> {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let key = token_keys(&self.client).0;
        let len = packet::write(p, sequence, PROTOCOL_ID, &key, &mut buf).unwrap();
        buf[..len].to_vec()
    }
}

fn token_keys(client: &Client) -> (Key, Key) {
    let t = client.token();
    (t.client_to_server_key, t.server_to_client_key)
}

fn request_bytes(token: &ConnectToken) -> Vec<u8> {
    let mut client = Client::with_token(Instant::now(), token.clone());
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let t = client.poll_transmit(Instant::now(), &mut buf).unwrap();
    buf[..t.len].to_vec()
}

fn fresh_server() -> Server {
    Server::new(
        ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr()),
        Instant::now(),
    )
    .unwrap()
}

fn drain(server: &mut Server, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = [0u8; MAX_PACKET_BYTES];
    std::iter::from_fn(|| {
        server
            .poll_transmit(now, &mut buf)
            .map(|t| buf[..t.len].to_vec())
    })
    .collect()
}

#[test]
fn token_round_trip() {
    let mut s = settings(99);
    s.server_addresses = vec![server_addr(), "[2001:db8::1:2]:40001".parse().unwrap()];
    let token = seal_connect_token(UNIX, &s, &PRIVATE_KEY, [3; 24], [1; 32], [2; 32]).unwrap();
    let bytes = token.to_bytes();
    assert_eq!(bytes.len(), CONNECT_TOKEN_BYTES);
    let read = ConnectToken::from_bytes(&bytes[..]).unwrap();
    assert_eq!(read, token);
    assert_eq!(read.expire_timestamp, UNIX + 30);
    let private = read.open_private(&PRIVATE_KEY).unwrap();
    assert_eq!(private.client_id, 99);
    assert_eq!(private.timeout_seconds, 5);
    assert_eq!(private.server_addresses, s.server_addresses);
    assert_eq!(private.client_to_server_key, [1; 32]);
    assert_eq!(private.server_to_client_key, [2; 32]);
    assert_eq!(private.user_data, s.user_data);
    // The public addresses follow the private part and the timeout: count, then an IPv4
    // entry (7 bytes), then the IPv6 one whose segments are little-endian numbers.
    let at = 13 + 8 + 8 + 8 + 24 + 1024 + 4;
    assert_eq!(&bytes[at..at + 4], &2u32.to_le_bytes());
    assert_eq!(&bytes[at + 4..at + 11], &[1, 10, 0, 0, 1, 0x40, 0x9c]);
    let v6 = &bytes[at + 11..at + 11 + 19];
    assert_eq!(v6[0], 2);
    assert_eq!(
        &v6[1..5],
        &[0x01, 0x20, 0xb8, 0x0d],
        "2001:db8 as LE u16s, not octets"
    );
    assert_eq!(&v6[15..17], &[0x02, 0x00]);
    assert_eq!(&v6[17..19], &40001u16.to_le_bytes());
}

#[test]
fn token_refused_when_malformed() {
    let token = token(1);
    let mut bytes = token.to_bytes();
    assert_eq!(
        ConnectToken::from_bytes(&bytes[..100]),
        Err(TokenError::Malformed)
    );
    bytes[0] = b'X';
    assert_eq!(
        ConnectToken::from_bytes(&bytes[..]),
        Err(TokenError::BadVersion)
    );
    let mut s = settings(1);
    s.server_addresses.clear();
    assert_eq!(
        generate_connect_token(UNIX, &s, &PRIVATE_KEY),
        Err(TokenError::AddressCount(0))
    );
    s.server_addresses = vec![server_addr(); 33];
    assert_eq!(
        generate_connect_token(UNIX, &s, &PRIVATE_KEY),
        Err(TokenError::AddressCount(33))
    );
    let mut early = token.clone();
    early.create_timestamp = early.expire_timestamp + 1;
    assert_eq!(
        ConnectToken::from_bytes(&early.to_bytes()[..]),
        Err(TokenError::CreatedAfterExpiry)
    );
    assert_eq!(token.open_private(&[8; 32]), Err(TokenError::DecryptFailed));
}

#[test]
fn connects_exchanges_payloads_past_the_timeout_and_disconnects() {
    let mut pair = Pair::default();
    pair.connect();
    let events = pair.server_events();
    let Some(ServerEvent::ClientConnected {
        client,
        client_id: 42,
        user_data,
        ..
    }) = events.first()
    else {
        panic!("{events:?}");
    };
    let client = *client;
    assert_eq!(user_data[5], 5);
    assert_eq!(
        pair.client_events()[0],
        ClientEvent::Connected {
            client_index: 0,
            max_clients: 64
        }
    );
    // Ten seconds (twice the token's timeout), payloads both ways now and then.
    for i in 0..100u32 {
        if i % 10 == 0 {
            pair.client
                .send_payload(pair.now, &i.to_le_bytes())
                .unwrap();
            pair.server
                .send_payload(pair.now, client, &[i as u8; 1200])
                .unwrap();
        }
        pair.run(Duration::from_millis(100));
    }
    let to_server: Vec<_> = pair.server_events();
    assert_eq!(to_server.len(), 10);
    assert!(
        matches!(&to_server[3], ServerEvent::Payload { payload, .. } if payload == &30u32.to_le_bytes())
    );
    let to_client = pair.client_events();
    assert_eq!(to_client.len(), 10);
    assert!(pair.client.is_connected());
    assert_eq!(pair.server.client_count(), 1);
    assert_eq!(pair.server.stats().dropped.total(), 0);
    assert_eq!(pair.client.stats().dropped.total(), 0);

    let sent = pair.to_server.len();
    pair.client.disconnect(pair.now);
    pair.step();
    assert_eq!(pair.to_server.len() - sent, DISCONNECT_PACKETS);
    assert_eq!(pair.client.state(), ClientState::Disconnected);
    assert_eq!(
        pair.server_events(),
        vec![ServerEvent::ClientDisconnected {
            client,
            client_id: 42,
            reason: DisconnectReason::ClientDisconnected
        }]
    );
    // The other nine copies are from an address with no connection now: late goodbyes,
    // not invalid packets.
    assert_eq!(
        pair.server.stats().late_disconnects,
        DISCONNECT_PACKETS as u64 - 1
    );
    assert_eq!(pair.server.stats().dropped.total(), 0);
}

#[test]
fn server_disconnect_reaches_the_client() {
    let mut pair = Pair::default();
    pair.connect();
    pair.server.disconnect(pair.now, ClientIndex(0));
    let sent = pair.to_client.len();
    pair.step();
    assert_eq!(pair.to_client.len() - sent, DISCONNECT_PACKETS);
    assert_eq!(pair.client.state(), ClientState::Disconnected);
    assert_eq!(pair.server.client_count(), 0);
}

#[test]
fn idle_timeout_from_the_token() {
    let mut pair = Pair::default();
    pair.connect();
    pair.deliver = false;
    pair.run(Duration::from_millis(4900));
    assert!(pair.client.is_connected());
    assert_eq!(pair.server.client_count(), 1);
    pair.run(Duration::from_millis(200));
    assert_eq!(pair.client.state(), ClientState::ConnectionTimedOut);
    assert_eq!(pair.server.client_count(), 0);
    assert!(pair.server_events().iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected {
            reason: DisconnectReason::TimedOut,
            ..
        }
    )));
}

#[test]
fn request_timeout_moves_to_the_next_server() {
    let mut s = settings(5);
    let other: SocketAddr = "10.0.0.9:40000".parse().unwrap();
    s.server_addresses = vec![other, server_addr()];
    let token = generate_connect_token(UNIX, &s, &PRIVATE_KEY).unwrap();
    let now = Instant::now();
    let mut client = Client::with_token(now, token);
    assert_eq!(client.server_address(), other);
    client.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(client.server_address(), server_addr());
    assert_eq!(client.state(), ClientState::SendingConnectionRequest);
    client.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(client.state(), ClientState::ConnectionRequestTimedOut);
}

#[test]
fn bad_requests_are_dropped_and_counted() {
    let now = Instant::now();
    let from = client_addr();
    let good = request_bytes(&token(1));

    let mut server = fresh_server();
    type Counter = fn(&DropCounts) -> u64;
    let cases: Vec<(Vec<u8>, u64, Counter)> = vec![
        (good[..1077].to_vec(), UNIX, |d| d.bad_request_size),
        (
            {
                let mut b = good.clone();
                b[1] ^= 1;
                b
            },
            UNIX,
            |d| d.bad_version,
        ),
        (
            {
                let mut b = good.clone();
                b[14] ^= 1;
                b
            },
            UNIX,
            |d| d.bad_protocol_id,
        ),
        // The expiry is authenticated: moving it forward breaks decryption.
        (
            {
                let mut b = good.clone();
                b[22] ^= 1;
                b
            },
            UNIX,
            |d| d.token_invalid,
        ),
        (
            {
                let mut b = good.clone();
                b[600] ^= 1;
                b
            },
            UNIX,
            |d| d.token_invalid,
        ),
        (good.clone(), UNIX + 30, |d| d.token_expired),
    ];
    for (bytes, unix, counter) in cases {
        let before = counter(&server.stats().dropped);
        server.handle_datagram(now, unix, from, &bytes);
        assert_eq!(counter(&server.stats().dropped), before + 1);
        assert!(drain(&mut server, now).is_empty());
    }
    assert_eq!(server.stats().challenges_sent, 0);
}

#[test]
fn token_for_another_key_or_server_is_refused() {
    let now = Instant::now();
    let wrong_key = generate_connect_token(UNIX, &settings(1), &[9; 32]).unwrap();
    let mut s = settings(1);
    s.server_addresses = vec!["10.0.0.1:40001".parse().unwrap()];
    let wrong_server = generate_connect_token(UNIX, &s, &PRIVATE_KEY).unwrap();
    let mut server = fresh_server();
    server.handle_datagram(now, UNIX, client_addr(), &request_bytes(&wrong_key));
    server.handle_datagram(now, UNIX, client_addr(), &request_bytes(&wrong_server));
    assert_eq!(server.stats().dropped.token_invalid, 1);
    assert_eq!(server.stats().dropped.wrong_server_address, 1);
    assert!(drain(&mut server, now).is_empty());
}

#[test]
fn token_used_from_another_address_is_refused() {
    let now = Instant::now();
    let request = request_bytes(&token(1));
    let mut server = fresh_server();
    server.handle_datagram(now, UNIX, client_addr(), &request);
    // Resending from the same address is how a client retries: answered again.
    server.handle_datagram(now, UNIX, client_addr(), &request);
    assert_eq!(drain(&mut server, now).len(), 2);
    let thief: SocketAddr = "10.0.0.66:50000".parse().unwrap();
    server.handle_datagram(now, UNIX, thief, &request);
    assert_eq!(server.stats().dropped.token_reused, 1);
    assert!(drain(&mut server, now).is_empty());
}

#[test]
fn connected_client_cannot_connect_again() {
    let mut pair = Pair::default();
    pair.connect();
    let request = pair.to_server[0].clone();
    let now = pair.now;
    // The client's own request again (a retry that crossed the keep-alive): harmless, not
    // invalid, and it connects nothing.
    pair.server
        .handle_datagram(now, UNIX, client_addr(), &request);
    assert_eq!(pair.server.stats().late_handshakes, 1);
    assert_eq!(pair.server.stats().dropped.total(), 0);
    // Same client id from a new address with a fresh token.
    pair.server.handle_datagram(
        now,
        UNIX,
        "10.0.0.3:1".parse().unwrap(),
        &request_bytes(&token(42)),
    );
    assert_eq!(pair.server.stats().dropped.already_connected, 1);
    assert_eq!(pair.server.client_count(), 1);
}

#[test]
fn full_server_denies() {
    let config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr()).with_max_clients(1);
    let mut first = Pair::new(config, token(1));
    first.connect();
    let mut second = Client::with_token(first.now, token(2));
    let second_addr: SocketAddr = "10.0.0.3:50000".parse().unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let t = second.poll_transmit(first.now, &mut buf).unwrap();
    first
        .server
        .handle_datagram(first.now, UNIX, second_addr, &buf[..t.len]);
    assert_eq!(first.server.stats().dropped.server_full, 1);
    assert_eq!(first.server.stats().denied_sent, 1);
    let now = first.now;
    let denied = drain(&mut first.server, now);
    assert_eq!(denied.len(), 1);
    second.handle_datagram(now, server_addr(), &denied[0]);
    assert_eq!(second.state(), ClientState::ConnectionDenied);
}

/// Many clients of one server, each at its own address; every datagram arrives at once,
/// but those to or from a client that fell silent.
struct Crowd {
    now: Instant,
    server: Server,
    clients: Vec<Client>,
    silent: Vec<bool>,
}

impl Crowd {
    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 40_000))
    }

    fn index_of(address: SocketAddr) -> usize {
        let SocketAddr::V4(a) = address else {
            panic!("not a client's address");
        };
        let [_, _, high, low] = a.ip().octets();
        usize::from(high) << 8 | usize::from(low)
    }

    fn new(max_clients: usize, tokens: impl Iterator<Item = ConnectToken>) -> Self {
        let config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr())
            .with_max_clients(max_clients);
        let now = Instant::now();
        let clients: Vec<Client> = tokens.map(|t| Client::with_token(now, t)).collect();
        Self {
            now,
            server: Server::new(config, now).unwrap(),
            silent: vec![false; clients.len()],
            clients,
        }
    }

    /// The clients that are not silent send what is due, then the server does; returns the
    /// clients the server sent to, and those whose datagrams it was given, in order.
    fn step(&mut self) -> (Vec<usize>, Vec<usize>) {
        let (now, mut buf) = (self.now, [0u8; MAX_PACKET_BYTES]);
        let mut from = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            if self.silent[i] {
                continue;
            }
            c.handle_timeout(now);
            while let Some(t) = c.poll_transmit(now, &mut buf) {
                self.server
                    .handle_datagram(now, UNIX, Self::addr(i), &buf[..t.len]);
                from.push(i);
            }
        }
        self.server.handle_timeout(now);
        let mut to = Vec::new();
        while let Some(t) = self.server.poll_transmit(now, &mut buf) {
            let i = Self::index_of(t.destination);
            if !self.silent[i] {
                self.clients[i].handle_datagram(now, server_addr(), &buf[..t.len]);
            }
            to.push(i);
        }
        (to, from)
    }

    fn connect_all(&mut self) {
        for _ in 0..8 {
            self.step();
            self.now += Duration::from_millis(10);
        }
    }
}

#[test]
fn every_slot_up_to_the_most_a_server_may_have_takes_a_client() {
    // netcode's wire names a slot and the slot count as 32-bit numbers; the reference
    // server stops at 256, this one at MAX_CLIENTS, so that one secure server can hold a
    // thousand players.
    const { assert!(MAX_CLIENTS >= 1_000, "room for a thousand players") };
    let tokens = (0..=MAX_CLIENTS).map(|i| token(1_000 + i as u64));
    let mut crowd = Crowd::new(MAX_CLIENTS, tokens);
    crowd.connect_all();
    // The first MAX_CLIENTS hold a slot each, told the slot count; the one after is denied.
    let (fitted, late) = crowd.clients.split_at(MAX_CLIENTS);
    let mut slots: Vec<u32> = fitted
        .iter()
        .map(|c| c.client_index().expect("connected"))
        .collect();
    slots.sort_unstable();
    assert!(slots.iter().copied().eq(0..MAX_CLIENTS as u32));
    assert!(
        fitted
            .iter()
            .all(|c| c.max_clients() == Some(MAX_CLIENTS as u32))
    );
    assert_eq!(crowd.server.client_count(), MAX_CLIENTS);
    assert_eq!(late[0].state(), ClientState::ConnectionDenied);
}

#[test]
fn keep_alives_and_timeouts_come_due_when_each_slots_last_packets_say() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // Two dozen clients whose tokens give them 1, 2 or 3 s of silence before a timeout.
    let n = 24;
    let tokens = (0..n).map(|i| {
        let mut s = settings(100 + i as u64);
        s.timeout_seconds = 1 + (i % 3) as i32;
        generate_connect_token(UNIX, &s, &PRIVATE_KEY).unwrap()
    });
    let mut crowd = Crowd::new(32, tokens);
    crowd.connect_all();
    let slot_of: Vec<ClientIndex> = crowd
        .clients
        .iter()
        .map(|c| ClientIndex(c.client_index().expect("connected")))
        .collect();
    let timeout = |i: usize| Duration::from_secs(1 + (i % 3) as u64);
    // What each slot's timers must say, from the packets seen: one exchange with everyone
    // starts the count.
    for (i, c) in crowd.clients.iter_mut().enumerate() {
        c.send_payload(crowd.now, &[1]).unwrap();
        crowd
            .server
            .send_payload(crowd.now, slot_of[i], &[2])
            .unwrap();
    }
    crowd.step();
    let mut last_send = vec![crowd.now; n];
    let mut last_recv = vec![crowd.now; n];
    let mut connected = vec![true; n];
    let mut timed_out = 0;
    while std::iter::from_fn(|| crowd.server.poll_event())
        .next()
        .is_some()
    {}
    for round in 0..600 {
        crowd.now += Duration::from_millis(rng.random_range(1..15));
        let now = crowd.now;
        if round == 100 {
            // Six fall silent: each must time out after its own timeout, and no other.
            crowd.silent[..6].fill(true);
        }
        // What is due before this step: each such slot gets a packet now.
        let due: Vec<usize> = (0..n)
            .filter(|&i| connected[i] && last_send[i] + SEND_INTERVAL <= now)
            .collect();
        let expired: Vec<usize> = (0..n)
            .filter(|&i| connected[i] && last_recv[i] + timeout(i) <= now)
            .collect();
        for i in 0..n {
            if !crowd.silent[i] && rng.random_bool(0.2) {
                crowd.clients[i].send_payload(now, &[3]).unwrap();
            }
            if connected[i] && !expired.contains(&i) && rng.random_bool(0.1) {
                crowd.server.send_payload(now, slot_of[i], &[4]).unwrap();
            }
        }
        let (to, from) = crowd.step();
        for &i in &from {
            last_recv[i] = now;
        }
        for &i in &to {
            last_send[i] = now;
        }
        for &i in &due {
            assert!(
                expired.contains(&i) || to.contains(&i),
                "round {round}: slot of {i} due"
            );
        }
        // Exactly the expired slots were freed, for their silence.
        let mut freed: Vec<usize> = std::iter::from_fn(|| crowd.server.poll_event())
            .filter_map(|e| match e {
                ServerEvent::ClientDisconnected { client, reason, .. } => {
                    assert_eq!(reason, DisconnectReason::TimedOut);
                    slot_of.iter().position(|&s| s == client)
                }
                _ => None,
            })
            .collect();
        freed.sort_unstable();
        assert_eq!(freed, expired, "round {round}");
        for &i in &expired {
            connected[i] = false;
            timed_out += 1;
        }
        // And the next deadline is the earliest any slot's last packets give.
        let next = (0..n)
            .filter(|&i| connected[i])
            .flat_map(|i| [last_send[i] + SEND_INTERVAL, last_recv[i] + timeout(i)])
            .min();
        assert_eq!(crowd.server.poll_timeout(), next, "round {round}");
    }
    assert_eq!(timed_out, 6, "the silent ones, and no other");
}

/// An address of its own for request `i` of a test.
fn nth_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 2, (i >> 8) as u8, i as u8], 41_000))
}

#[test]
fn the_token_history_forgets_expired_tokens_then_the_one_that_expires_first() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // Room for six tokens; 120 tokens, each expiring at its own second (so "the one that
    // expires first" is one token), used in a random order, with time going on.
    let history = 6;
    let mut config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr());
    config.token_history = history;
    config.max_handshakes = 1_000;
    let now = Instant::now();
    let mut server = Server::new(config, now).unwrap();
    let mut lifetimes: Vec<u64> = (20..140).collect();
    lifetimes.shuffle(&mut rng);
    let requests: Vec<(u64, Vec<u8>)> = lifetimes
        .iter()
        .enumerate()
        .map(|(i, &life)| {
            let mut s = settings(500 + i as u64);
            s.expire_seconds = life;
            let token = generate_connect_token(UNIX, &s, &PRIVATE_KEY).unwrap();
            (UNIX + life, request_bytes(&token))
        })
        .collect();
    // The model: each remembered token's request, where it was first used from, and when
    // it expires.
    let mut model: Vec<(usize, SocketAddr, u64)> = Vec::new();
    let mut unix = UNIX;
    let mut next_addr = 0;
    let mut fresh = 0;
    let (mut reused, mut forgotten_and_taken) = (0, 0);
    for round in 0..600 {
        unix += u64::from(rng.random_bool(0.2));
        // A token seen before (from its own address or another), or a new one.
        let i = if fresh < requests.len() && (fresh == 0 || rng.random_bool(0.3)) {
            fresh += 1;
            fresh - 1
        } else {
            rng.random_range(0..fresh)
        };
        let (expires, request) = &requests[i];
        let remembered = model.iter().position(|&(r, _, _)| r == i);
        let from = match remembered {
            Some(m) if rng.random_bool(0.3) => model[m].1,
            _ => {
                next_addr += 1;
                nth_addr(next_addr)
            }
        };
        let before = server.stats().dropped;
        server.handle_datagram(now, unix, from, request);
        drain(&mut server, now);
        let after = server.stats().dropped;
        if *expires <= unix {
            assert_eq!(
                after.token_expired,
                before.token_expired + 1,
                "round {round}"
            );
            continue;
        }
        match remembered {
            Some(m) => {
                let reuse = model[m].1 != from;
                assert_eq!(after.token_reused - before.token_reused, u64::from(reuse));
                reused += u64::from(reuse);
            }
            None => {
                assert_eq!(after.token_reused, before.token_reused, "round {round}");
                forgotten_and_taken += u64::from(i < fresh - 1);
                if model.len() >= history {
                    model.retain(|&(_, _, e)| e > unix);
                }
                if model.len() >= history {
                    let first = (0..model.len()).min_by_key(|&m| model[m].2).unwrap();
                    model.remove(first);
                }
                model.push((i, from, *expires));
            }
        }
    }
    // Both ways were taken many times: replays refused, and forgotten tokens taken anew.
    assert!(
        reused > 30 && forgotten_and_taken > 120,
        "{reused} {forgotten_and_taken}"
    );
}

#[test]
fn handshakes_expire_earliest_first_and_a_full_table_takes_one_only_when_one_expired() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let max = 5;
    let mut config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr());
    config.max_handshakes = max;
    config.token_history = 10_000;
    let mut now = Instant::now();
    let mut server = Server::new(config, now).unwrap();
    // Tokens with 1 to 4 s timeouts, each from its own address; none is ever answered.
    let requests: Vec<(Duration, Vec<u8>)> = (0..300)
        .map(|i| {
            let mut s = settings(900 + i as u64);
            s.timeout_seconds = 1 + rng.random_range(0..4);
            s.expire_seconds = 600;
            let token = generate_connect_token(UNIX, &s, &PRIVATE_KEY).unwrap();
            let timeout = Duration::from_secs(s.timeout_seconds as u64);
            (timeout, request_bytes(&token))
        })
        .collect();
    // The model: each open handshake's address and when it expires, as the server holds
    // them (an expired one stays until a timeout pass or a full table drops it).
    let mut model: Vec<(SocketAddr, Instant)> = Vec::new();
    let (mut full, mut taken_when_full) = (0, 0);
    for (i, (timeout, request)) in requests.iter().enumerate() {
        now += Duration::from_millis(rng.random_range(0..400));
        if rng.random_bool(0.2) {
            server.handle_timeout(now);
            model.retain(|&(_, e)| e > now);
        }
        // Sometimes the same address asks again: its handshake starts over, in place.
        let again = !model.is_empty() && rng.random_bool(0.2);
        let from = if again {
            model[rng.random_range(0..model.len())].0
        } else {
            nth_addr(i)
        };
        let request = if again {
            // Its own token again: the one it was first seen with (the history binds it).
            let k = (0..i).rev().find(|&k| nth_addr(k) == from).unwrap();
            &requests[k].1
        } else {
            request
        };
        let timeout = if again {
            requests[(0..i).rev().find(|&k| nth_addr(k) == from).unwrap()].0
        } else {
            *timeout
        };
        let before = server.stats().dropped.handshakes_full;
        server.handle_datagram(now, UNIX, from, request);
        drain(&mut server, now);
        let refused = server.stats().dropped.handshakes_full - before;
        let known = model.iter().position(|&(a, _)| a == from);
        if known.is_none() && model.len() >= max {
            let was_full = model.iter().all(|&(_, e)| e > now);
            model.retain(|&(_, e)| e > now);
            if was_full {
                assert_eq!(
                    refused, 1,
                    "request {i}: the table is full of live handshakes"
                );
                full += 1;
            } else {
                taken_when_full += 1;
            }
        }
        if model.len() < max || known.is_some() {
            assert_eq!(refused, 0, "request {i}");
            model.retain(|&(a, _)| a != from);
            model.push((from, now + timeout));
        }
        // The next deadline is the earliest handshake's (no client is connected).
        let next = model.iter().map(|&(_, e)| e).min();
        assert_eq!(server.poll_timeout(), next, "request {i}");
    }
    assert!(
        full > 80 && taken_when_full > 20,
        "{full} {taken_when_full}"
    );
}

#[test]
fn a_freed_slot_is_the_next_taken_and_its_client_id_may_come_back() {
    let tokens = (0..4).map(|i| token(100 + i));
    let mut crowd = Crowd::new(4, tokens);
    crowd.connect_all();
    assert_eq!(crowd.server.client_count(), 4);
    // Slot 2 (client id 102) leaves; the same id comes back with a new token from a new
    // address and takes slot 2 again, the only free one. Client id 101, still connected,
    // cannot connect twice.
    let index = ClientIndex(crowd.clients[2].client_index().unwrap());
    assert_eq!(index, ClientIndex(2));
    crowd.server.disconnect(crowd.now, index);
    crowd.silent[2] = true;
    let before = crowd.server.stats().dropped.already_connected;
    for id in [102, 101] {
        crowd.clients.push(Client::with_token(crowd.now, token(id)));
        crowd.silent.push(false);
    }
    crowd.connect_all();
    assert_eq!(crowd.clients[4].client_index(), Some(2));
    assert!(!crowd.clients[5].is_connected());
    assert!(crowd.server.stats().dropped.already_connected > before);
    assert_eq!(crowd.server.client_count(), 4);
}

#[test]
fn no_reply_is_larger_than_its_request() {
    // Every datagram an unconnected address can make the server answer, with each answer's
    // size against the request's.
    let config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr()).with_max_clients(1);
    let mut pair = Pair::new(config, token(1));
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut checked = 0;
    for _ in 0..5 {
        let now = pair.now;
        while let Some(t) = pair.client.poll_transmit(now, &mut buf) {
            let request = buf[..t.len].to_vec();
            pair.server
                .handle_datagram(now, UNIX, client_addr(), &request);
            for reply in drain(&mut pair.server, now) {
                assert!(
                    reply.len() <= request.len(),
                    "{} > {}",
                    reply.len(),
                    request.len()
                );
                pair.client.handle_datagram(now, server_addr(), &reply);
                checked += 1;
            }
        }
        pair.advance(SEND_INTERVAL);
    }
    assert!(pair.client.is_connected());
    // A denial from the full server.
    let now = pair.now;
    let mut other = Client::with_token(now, token(2));
    let t = other.poll_transmit(pair.now, &mut buf).unwrap();
    pair.server
        .handle_datagram(pair.now, UNIX, "10.0.0.3:1".parse().unwrap(), &buf[..t.len]);
    for reply in drain(&mut pair.server, now) {
        assert!(reply.len() <= t.len);
        checked += 1;
    }
    assert!(checked >= 3);
    assert_eq!(pair.server.stats().replies_suppressed, 0);
}

#[test]
fn replay_window() {
    let mut w = ReplayWindow::default();
    assert!(!w.already_received(0));
    w.advance(0);
    assert!(w.already_received(0), "duplicate");
    w.advance(300);
    assert!(w.already_received(300));
    assert!(w.already_received(44), "older than the window");
    assert!(
        !w.already_received(45),
        "oldest in the window, never received"
    );
    w.advance(45);
    assert!(w.already_received(45));
    assert!(!w.already_received(299));
    // Out of order inside the window is fine, once.
    w.advance(299);
    assert!(w.already_received(299));

    // Near the top of the sequence space nothing overflows.
    let mut w = ReplayWindow::default();
    w.advance(u64::MAX - 10);
    assert!(!w.already_received(u64::MAX));
    w.advance(u64::MAX);
    assert!(
        w.already_received(u64::MAX),
        "u64::MAX is a sequence like any other"
    );
    assert!(w.already_received(u64::MAX - 10));
    assert!(w.already_received(5), "far below: too old");
    assert!(w.already_received(u64::MAX - 256));
    assert!(!w.already_received(u64::MAX - 255));
}

#[test]
fn replayed_packets_are_dropped() {
    let mut pair = Pair::default();
    pair.connect();
    pair.server_events();
    pair.client.send_payload(pair.now, b"fire").unwrap();
    pair.step();
    let payload = pair.to_server.last().unwrap().clone();
    assert_eq!(pair.server_events().len(), 1);
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &payload);
    assert_eq!(pair.server.stats().dropped.replayed, 1);
    assert!(pair.server_events().is_empty());
    // Same on the client side.
    pair.server
        .send_payload(pair.now, ClientIndex(0), b"hit")
        .unwrap();
    pair.step();
    let payload = pair.to_client.last().unwrap().clone();
    pair.client_events();
    pair.client
        .handle_datagram(pair.now, server_addr(), &payload);
    assert_eq!(pair.client.stats().dropped.replayed, 1);
    assert!(pair.client_events().is_empty());
}

#[test]
fn forged_packets_do_not_move_the_replay_window() {
    let mut pair = Pair::default();
    pair.connect();
    pair.server_events();
    // A forged packet with a high sequence fails to decrypt and leaves the window alone.
    let mut forged = pair.client_packet(&Packet::Payload(b"x"), 1000);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &forged);
    assert_eq!(pair.server.stats().dropped.decrypt_failed, 1);
    let genuine = pair.client_packet(&Packet::Payload(b"y"), 500);
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &genuine);
    assert_eq!(pair.server_events().len(), 1);
}

#[test]
fn bit_flips_are_refused() {
    let mut pair = Pair::default();
    pair.connect();
    pair.server_events();
    let genuine = pair.client_packet(&Packet::Payload(b"payload"), 77);
    for i in 0..genuine.len() {
        for bit in [0x01, 0x80] {
            let mut flipped = genuine.clone();
            flipped[i] ^= bit;
            pair.server
                .handle_datagram(pair.now, UNIX, client_addr(), &flipped);
        }
    }
    assert!(pair.server_events().is_empty());
    assert_eq!(
        pair.server.stats().dropped.total(),
        2 * genuine.len() as u64
    );
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &genuine);
    assert_eq!(pair.server_events().len(), 1);
}

#[test]
fn forged_disconnect_is_ignored() {
    let mut pair = Pair::default();
    pair.connect();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    for sequence in [1000, 5000, GLOBAL_SEQUENCE_START, u64::MAX] {
        let len = packet::write(
            &Packet::Disconnect,
            sequence,
            PROTOCOL_ID,
            &[0; 32],
            &mut buf,
        )
        .unwrap();
        pair.client
            .handle_datagram(pair.now, server_addr(), &buf[..len]);
        pair.server
            .handle_datagram(pair.now, UNIX, client_addr(), &buf[..len]);
    }
    assert!(pair.client.is_connected());
    assert_eq!(pair.server.client_count(), 1);
    assert_eq!(pair.client.stats().dropped.decrypt_failed, 4);
    assert_eq!(pair.server.stats().dropped.decrypt_failed, 4);
}

#[test]
fn short_and_unknown_packets_are_dropped() {
    let mut pair = Pair::default();
    pair.connect();
    let genuine = pair.client_packet(
        &Packet::KeepAlive {
            client_index: 0,
            max_clients: 64,
        },
        90,
    );
    for len in 0..MIN_ENCRYPTED_PACKET_BYTES {
        pair.server
            .handle_datagram(pair.now, UNIX, client_addr(), &genuine[..len]);
        pair.client
            .handle_datagram(pair.now, server_addr(), &genuine[..len]);
    }
    // Under 18 bytes is the first check: nothing else about such a datagram is looked at.
    let junk = [0xffu8; MIN_ENCRYPTED_PACKET_BYTES - 1];
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &junk);
    pair.client.handle_datagram(pair.now, server_addr(), &junk);
    assert_eq!(
        pair.server.stats().dropped.too_small,
        MIN_ENCRYPTED_PACKET_BYTES as u64 + 1
    );
    assert_eq!(
        pair.client.stats().dropped.too_small,
        MIN_ENCRYPTED_PACKET_BYTES as u64 + 1
    );
    for kind in 7..16u8 {
        let mut p = genuine.clone();
        p[0] = (p[0] & 0xf0) | kind;
        pair.server
            .handle_datagram(pair.now, UNIX, client_addr(), &p);
        pair.client.handle_datagram(pair.now, server_addr(), &p);
    }
    assert_eq!(pair.server.stats().dropped.unknown_type, 9);
    assert_eq!(pair.client.stats().dropped.unknown_type, 9);
    for n in [0u8, 9, 15] {
        let mut p = genuine.clone();
        p[0] = (p[0] & 0x0f) | (n << 4);
        pair.server
            .handle_datagram(pair.now, UNIX, client_addr(), &p);
    }
    assert_eq!(pair.server.stats().dropped.bad_sequence_bytes, 3);
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &[0u8; MAX_PACKET_BYTES + 1]);
    assert_eq!(pair.server.stats().dropped.bad_request_size, 1);
    pair.server
        .handle_datagram(pair.now, UNIX, "10.0.0.3:1".parse().unwrap(), &genuine);
    assert_eq!(pair.server.stats().dropped.unknown_address, 1);
    pair.client
        .handle_datagram(pair.now, "10.0.0.3:1".parse().unwrap(), &genuine);
    assert_eq!(pair.client.stats().dropped.unknown_address, 1);
    // The genuine one still goes through.
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &genuine);
    assert_eq!(
        pair.server.stats().dropped.total(),
        MIN_ENCRYPTED_PACKET_BYTES as u64 + 1 + 9 + 3 + 1 + 1
    );
}

#[test]
fn payloads_over_1200_bytes_are_refused_and_dropped() {
    let mut pair = Pair::default();
    pair.connect();
    pair.server_events();
    assert_eq!(
        pair.client.send_payload(pair.now, &[0; 1201]),
        Err(SendError::PayloadTooLarge(1201))
    );
    assert_eq!(
        pair.client.send_payload(pair.now, &[]),
        Err(SendError::EmptyPayload)
    );
    assert_eq!(
        pair.server
            .send_payload(pair.now, ClientIndex(0), &[0; 1201]),
        Err(SendError::PayloadTooLarge(1201))
    );
    let big = pair.client_packet(&Packet::Payload(&[1; 1201]), 100);
    pair.server
        .handle_datagram(pair.now, UNIX, client_addr(), &big);
    assert_eq!(pair.server.stats().dropped.payload_too_large, 1);
    assert!(pair.server_events().is_empty());
}

#[test]
fn challenges_and_denials_use_the_top_half_of_the_sequence_space() {
    for _ in 0..2 {
        // Every start, not only the first: a restarted server must not reuse low sequences
        // under a key a connected client's packets also use.
        let now = Instant::now();
        let mut server = fresh_server();
        assert_eq!(server.global_sequence(), GLOBAL_SEQUENCE_START);
        server.handle_datagram(now, UNIX, client_addr(), &request_bytes(&token(1)));
        let challenge = &drain(&mut server, now)[0];
        assert_eq!(challenge[0], 0x80 | 2, "eight sequence bytes, type 2");
        assert_eq!(&challenge[1..9], &GLOBAL_SEQUENCE_START.to_le_bytes());
        assert_eq!(server.global_sequence(), GLOBAL_SEQUENCE_START + 1);
    }
}

#[test]
fn config_is_checked_at_construction() {
    for max in [0, MAX_CLIENTS + 1] {
        let config =
            ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, server_addr()).with_max_clients(max);
        assert_eq!(
            Server::new(config, Instant::now()).err(),
            Some(ConfigError::MaxClients(max))
        );
    }
}

#[test]
fn random_datagrams_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut pair = Pair::default();
    pair.connect();
    for _ in 0..5000 {
        let len = rng.random_range(0..1400);
        let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if len > 0 && rng.random_bool(0.5) {
            d[0] = rng.random_range(0..7) | (rng.random_range(1..9) << 4);
        }
        pair.server
            .handle_datagram(pair.now, UNIX, client_addr(), &d);
        pair.client.handle_datagram(pair.now, server_addr(), &d);
    }
    assert!(pair.client.is_connected());
    assert_eq!(pair.server.stats().dropped.total(), 5000);
    assert_eq!(pair.client.stats().dropped.total(), 5000);
}

#[test]
fn quiet_connection_stays_up_on_keep_alives() {
    let mut pair = Pair::default();
    pair.connect();
    pair.run(Duration::from_secs(20));
    assert!(pair.client.is_connected());
    assert_eq!(pair.server.client_count(), 1);
    // About ten keep-alives a second each way, no more.
    let n = pair.to_client.len();
    assert!((190..=215).contains(&n), "{n}");
}
