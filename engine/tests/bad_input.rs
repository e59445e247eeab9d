//! Bad input against a server while real clients play: in virtual time through
//! [`Sim`], with one loopback test for what only a socket can show.
//!
//! Every virtual-time test runs the same game: the server sends each client a 64-byte
//! datagram every 60 Hz tick and a reliable message every sixth tick, and the clients do the
//! same back. Client 0 is driven by hand through a recorder, so the tests hold its captured
//! valid packets and can send from its own address. After a clean second, an attack is
//! injected in bursts between ticks; the tests then check that the real clients stayed
//! connected and received every datagram and every reliable message sent to them (the
//! simulated link loses nothing, so the counts are exact), that the server's counters moved
//! for the attack's reason, by exactly the attack's size, and for no other, that no
//! connection exists for an unverified address, and that no unverified address got a reply
//! larger than its request. The same game runs again in secure mode (`mod secure`), against
//! the attacks on tokens and encrypted packets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use snapsync::connection::ServerStats;
use snapsync::net::NetServer;
use snapsync::packet::{
    ConnectedHeader, HANDSHAKE_PACKET_BYTES, HeaderError, MAX_PACKET_BYTES, PROTOCOL_ID, Packet,
};
use snapsync::sim::Sim;
use snapsync::{Client, ClientConfig, ClientId, Event, Sequence, Server, ServerConfig, codec};

/// Game tick (60 Hz).
const TICK: Duration = Duration::from_micros(16_667);
/// A reliable message every this many ticks.
const MESSAGE_EVERY_TICKS: u64 = 6;
/// Real clients in every test: client 0 recorded, the others simulated.
const REAL_CLIENTS: usize = 3;
/// Ticks of clean play before an attack.
const CLEAN_TICKS: u32 = 60;
/// Ticks after an attack for the last replies and resends to settle.
const SETTLE_TICKS: u32 = 30;
/// Attack datagrams injected between two ticks.
const BURST_DATAGRAMS: usize = 48;

/// What the game's reliable messages carry (both ways).
#[derive(Debug, Serialize, Deserialize)]
struct GameMessage {
    counter: u64,
    text: String,
}

/// An address of the attacker's; `n` tells them apart.
fn stranger(n: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 40_000 + n)
}

/// Client 0: a real `Client` whose datagrams the test sees, as a recording proxy would.
struct Recorded {
    client: Client,
    addr: SocketAddr,
    captured: Vec<Vec<u8>>,
    /// Secure mode's on-path attacker: each packet the client sends is preceded by a copy
    /// with one bit of its ciphertext or tag flipped.
    flip_before_sending: bool,
    /// Flipped copies sent so far.
    flipped: u64,
    events: Vec<Event>,
    buf: Vec<u8>,
}

impl Recorded {
    /// Run its timers, carry what it sends to the server (recording it), and hand it what
    /// the server sent to its address.
    fn step(&mut self, sim: &mut Sim) {
        let now = sim.now;
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        while let Some(t) = self.client.poll_transmit(now, &mut self.buf) {
            let d = self.buf[..t.len].to_vec();
            if self.flip_before_sending
                && let Some(flipped) = secure::flip_ciphertext_bit(&d, self.flipped)
            {
                sim.inject_to_server(self.addr, &flipped);
                self.flipped += 1;
            }
            sim.inject_to_server(self.addr, &d);
            self.captured.push(d);
        }
        let addr = self.addr;
        let (mine, rest) = std::mem::take(&mut sim.stray)
            .into_iter()
            .partition(|(to, _)| *to == addr);
        sim.stray = rest;
        for (_, d) in mine {
            self.client.handle_datagram(now, sim.server_addr, &d);
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
    }
}

/// What one real client received and sent.
#[derive(Debug, Default)]
struct Seen {
    datagrams: u64,
    messages: Vec<u64>,
    disconnected: bool,
}

/// A game in virtual time with the handles an attack needs.
struct Game {
    sim: Sim,
    recorded: Recorded,
    tick: u64,
    /// Per real client (0 = recorded): datagrams and messages the server sent it.
    sent: [(u64, u64); REAL_CLIENTS],
    seen: [Seen; REAL_CLIENTS],
    /// Messages the server's game could not decode with `codec` (hostile length prefixes).
    app_decode_errors: u64,
    /// Messages the server's game received, by client.
    app_messages: std::collections::BTreeMap<ClientId, u64>,
}

impl Game {
    fn start(seed: u64) -> Self {
        Self::start_in(seed, false)
    }

    /// The same game with the server and every real client in secure mode (netcode 1.02).
    fn start_secure(seed: u64) -> Self {
        Self::start_in(seed, true)
    }

    fn start_in(seed: u64, secure: bool) -> Self {
        let mut sim = if secure {
            Sim::with_server(
                |now| Server::new(secure::server_config(), now, seed).unwrap(),
                seed,
            )
        } else {
            Sim::new(ServerConfig::default(), seed)
        };
        // Client ids in the tokens: 1 for the recorded client, then 2, 3.
        let config = |i: u64| {
            if secure {
                secure::client_config(i + 1)
            } else {
                ClientConfig::default()
            }
        };
        let now = sim.now;
        let recorded = Recorded {
            client: Client::new(config(0), sim.server_addr, now, seed * 100).unwrap(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 30_000),
            captured: Vec::new(),
            flip_before_sending: false,
            flipped: 0,
            events: Vec::new(),
            buf: vec![0; MAX_PACKET_BYTES],
        };
        for i in 1..REAL_CLIENTS {
            sim.add_client_with(|server, now, seed| {
                Client::new(config(i as u64), server, now, seed).unwrap()
            });
        }
        let mut game = Self {
            sim,
            recorded,
            tick: 0,
            sent: [(0, 0); REAL_CLIENTS],
            seen: Default::default(),
            app_decode_errors: 0,
            app_messages: Default::default(),
        };
        for _ in 0..CLEAN_TICKS {
            game.step();
        }
        assert_eq!(
            game.ids().len(),
            REAL_CLIENTS,
            "every real client connected"
        );
        game
    }

    /// The server-side ids of the real clients, client 0 first.
    fn ids(&self) -> Vec<ClientId> {
        let s = &self.sim.server;
        let mut ids = Vec::new();
        ids.extend(
            s.clients()
                .find(|&id| s.client_addr(id) == Some(self.recorded.addr)),
        );
        for c in &self.sim.clients {
            ids.extend(s.clients().find(|&id| s.client_addr(id) == Some(c.addr)));
        }
        ids
    }

    /// One tick of the game on both sides, then a tick of virtual time.
    fn step(&mut self) {
        self.tick += 1;
        let tick = self.tick;
        let now = self.sim.now;
        let message = |text: &str| {
            codec::encode(&GameMessage {
                counter: tick,
                text: text.into(),
            })
            .expect("encodes")
        };
        let ids = self.ids();
        if ids.len() == REAL_CLIENTS {
            for (i, &id) in ids.iter().enumerate() {
                let mut datagram = tick.to_le_bytes().to_vec();
                datagram.resize(64, 0xAB);
                self.sim.server.send_datagram(now, id, &datagram).unwrap();
                self.sent[i].0 += 1;
                if tick.is_multiple_of(MESSAGE_EVERY_TICKS) {
                    let m = message("server says hi");
                    self.sim.server.send_message(now, id, 0, &m).unwrap();
                    self.sent[i].1 += 1;
                }
            }
        }
        let input = tick.to_le_bytes();
        let m = message("client input");
        let every = tick.is_multiple_of(MESSAGE_EVERY_TICKS);
        if self.recorded.client.is_connected() {
            let _ = self.recorded.client.send_datagram(now, &input);
            if every {
                self.recorded.client.send_message(now, 0, &m).unwrap();
            }
        }
        for c in &mut self.sim.clients[..REAL_CLIENTS - 1] {
            if c.client.is_connected() {
                let _ = c.client.send_datagram(now, &input);
                if every {
                    c.client.send_message(now, 0, &m).unwrap();
                }
            }
        }
        self.recorded.step(&mut self.sim);
        self.sim.run_for(TICK);
        self.recorded.step(&mut self.sim);
        self.collect();
    }

    fn collect(&mut self) {
        for (id, e) in self.sim.server_events.drain(..) {
            if let Event::Message { payload, .. } = e {
                *self.app_messages.entry(id).or_insert(0) += 1;
                if codec::decode::<GameMessage>(&payload).is_err() {
                    self.app_decode_errors += 1;
                }
            }
        }
        let recorded = std::mem::take(&mut self.recorded.events);
        let sims = self.sim.clients[..REAL_CLIENTS - 1]
            .iter_mut()
            .map(|c| std::mem::take(&mut c.events));
        for (i, events) in std::iter::once(recorded).chain(sims).enumerate() {
            let seen = &mut self.seen[i];
            for e in events {
                match e {
                    Event::Datagram { .. } => seen.datagrams += 1,
                    Event::Message {
                        channel: 0,
                        payload,
                        ..
                    } => {
                        let m: GameMessage =
                            codec::decode(&payload).expect("server messages decode");
                        seen.messages.push(m.counter);
                    }
                    Event::Disconnected { .. } => seen.disconnected = true,
                    _ => {}
                }
            }
        }
    }

    fn stats(&self) -> ServerStats {
        self.sim.server.stats()
    }

    /// Inject `attack` from `from`, `BURST_DATAGRAMS` between two ticks.
    fn attack(&mut self, from: SocketAddr, attack: &[Vec<u8>]) {
        for burst in attack.chunks(BURST_DATAGRAMS) {
            for d in burst {
                self.sim.inject_to_server(from, d);
            }
            self.step();
        }
    }

    /// Replies the server sent to `to` (taken).
    fn replies(&mut self, to: SocketAddr) -> Vec<Vec<u8>> {
        let (mine, rest) = std::mem::take(&mut self.sim.stray)
            .into_iter()
            .partition(|(t, _)| *t == to);
        self.sim.stray = rest;
        mine.into_iter().map(|(_, d)| d).collect()
    }

    /// Let the last resends settle, then check the real clients came through untouched.
    fn finish(&mut self) {
        for _ in 0..SETTLE_TICKS {
            self.step();
        }
        assert_eq!(
            self.ids().len(),
            REAL_CLIENTS,
            "a real client lost its connection"
        );
        // Everything sent in the last tick is still in flight; flush it through.
        self.sim.run_for(TICK);
        self.recorded.step(&mut self.sim);
        self.collect();
        for (i, seen) in self.seen.iter().enumerate() {
            assert!(!seen.disconnected, "client {i} was disconnected");
            let (datagrams, messages) = self.sent[i];
            assert_eq!(
                seen.datagrams, datagrams,
                "client {i}: every datagram arrived"
            );
            assert_eq!(
                seen.messages.len() as u64,
                messages,
                "client {i}: every message"
            );
            assert!(
                seen.messages.windows(2).all(|w| w[0] < w[1]),
                "client {i}: reliable-ordered stays in order"
            );
        }
    }
}

/// A peer that completed the handshake by hand: it may send anything with the right salt.
struct RawPeer {
    addr: SocketAddr,
    salt: u32,
    sequence: Sequence,
}

impl RawPeer {
    fn connect(game: &mut Game, addr: SocketAddr, nonce: u64) -> Self {
        let salt = game
            .sim
            .handshake_by_hand(addr, nonce)
            .expect("the server accepts a hand-made handshake");
        Self {
            addr,
            salt,
            sequence: Sequence(0),
        }
    }

    /// A connected packet carrying `body` (flags byte onwards).
    fn packet(&mut self, body: &[u8]) -> Vec<u8> {
        self.sequence = self.sequence.next();
        encode(&Packet::Payload {
            header: ConnectedHeader {
                salt: self.salt,
                sequence: self.sequence,
                ack: Sequence(0),
                ack_bits: 0,
                ack_delay: 0,
            },
            payload: body,
        })
    }
}

/// The counters that moved between two readings.
fn delta(before: &ServerStats, after: &ServerStats) -> ServerStats {
    ServerStats {
        packets_in: after.packets_in - before.packets_in,
        packets_out: after.packets_out - before.packets_out,
        bytes_in: after.bytes_in - before.bytes_in,
        bytes_out: after.bytes_out - before.bytes_out,
        invalid_packets: after.invalid_packets - before.invalid_packets,
        invalid_malformed: after.invalid_malformed - before.invalid_malformed,
        invalid_wrong_salt: after.invalid_wrong_salt - before.invalid_wrong_salt,
        invalid_unknown_peer: after.invalid_unknown_peer - before.invalid_unknown_peer,
        invalid_replay: after.invalid_replay - before.invalid_replay,
        invalid_cookie: after.invalid_cookie - before.invalid_cookie,
        invalid_other: after.invalid_other - before.invalid_other,
        invalid_secure: after.invalid_secure - before.invalid_secure,
        late_disconnects: after.late_disconnects - before.late_disconnects,
        challenges_sent: after.challenges_sent - before.challenges_sent,
        replies_dropped: after.replies_dropped - before.replies_dropped,
        connections_accepted: after.connections_accepted - before.connections_accepted,
        connections_denied: after.connections_denied - before.connections_denied,
        clients_peak: after.clients_peak,
    }
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let n = p.encode(&mut buf).expect("test packets fit");
    buf.truncate(n);
    buf
}

/// `body` with a CRC computed for `protocol_id`.
fn with_crc(protocol_id: u64, body: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&protocol_id.to_le_bytes());
    h.update(body);
    let mut out = h.finalize().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Kind byte of a datagram that passed its CRC (offset 4).
fn kind_of(d: &[u8]) -> Option<u8> {
    d.get(4).copied()
}

/// A channel section of one record.
fn section(
    channel: u8,
    id: u16,
    fragment: Option<(u16, u16)>,
    len: u16,
    payload: &[u8],
) -> Vec<u8> {
    // No datagram: flags byte 0, then the section.
    let mut b = vec![0u8, 1, channel, u8::from(fragment.is_some())];
    b.extend_from_slice(&id.to_le_bytes());
    if let Some((index, count)) = fragment {
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
    }
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Payload bytes of one fragment on a default channel: a quarter of the 1200-byte packet
/// budget after the section count byte, less the 10-byte fragment record header.
const PART_PAYLOAD_BYTES: usize = 289;
/// Channel, flags, id, fragment index and count, and length, before a fragment's payload.
const FRAGMENT_RECORD_HEADER_BYTES: usize = 10;

const KIND_CONNECTION_REQUEST: u8 = 1;
const KIND_CHALLENGE_RESPONSE: u8 = 3;
const KIND_PAYLOAD: u8 = 6;

#[test]
fn random_datagrams_and_wrong_protocol_ids_are_malformed() {
    let mut game = Game::start(1);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut attack: Vec<Vec<u8>> = (0..1500)
        .map(|_| {
            let len = rng.random_range(0..=MAX_PACKET_BYTES);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect();
    // Valid packets of another protocol (or version): the CRC folds in the protocol id.
    let wrong_id: Vec<Vec<u8>> = game
        .recorded
        .captured
        .iter()
        .map(|d| with_crc(PROTOCOL_ID ^ 1, &d[4..]))
        .collect();
    assert!(wrong_id.len() > 40, "{} captured", wrong_id.len());
    attack.extend(wrong_id);
    let before = game.stats();
    let strangers = [stranger(1), stranger(2), stranger(3)];
    for (i, chunk) in attack.chunks(attack.len().div_ceil(3)).enumerate() {
        game.attack(strangers[i], chunk);
    }
    // Also from the real client's own address.
    let own = game.recorded.addr;
    game.attack(own, &attack[..200]);
    game.finish();
    let d = delta(&before, &game.stats());
    assert_eq!(d.invalid_malformed, (attack.len() + 200) as u64);
    assert_eq!(d.invalid_packets, d.invalid_malformed, "{d:?}");
    assert_eq!(d.challenges_sent, 0);
    assert_eq!(game.sim.server.client_count(), REAL_CLIENTS);
    for s in strangers {
        assert!(game.replies(s).is_empty(), "garbage got a reply");
    }
}

#[test]
fn every_truncation_of_captured_packets_is_refused_by_its_parser() {
    let mut game = Game::start(2);
    let captured = game.recorded.captured.clone();
    // One of each kind the client sends: request, response, a datagram packet, a keep-alive
    // or message packet.
    let mut originals = Vec::new();
    for kind in [KIND_CONNECTION_REQUEST, KIND_CHALLENGE_RESPONSE] {
        originals.extend(captured.iter().find(|d| kind_of(d) == Some(kind)).cloned());
    }
    let payloads: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_PAYLOAD))
        .collect();
    originals.extend(payloads.iter().take(2).map(|d| (*d).clone()));
    originals.extend(
        payloads
            .iter()
            .min_by_key(|d| d.len())
            .map(|d| (*d).clone()),
    );
    assert_eq!(originals.len(), 5, "captured every kind");
    // Every truncation with its CRC recomputed, so the length checks behind the checksum are
    // what refuses it (kept as is when too short to hold a kind byte).
    let attack: Vec<Vec<u8>> = originals
        .iter()
        .flat_map(|d| {
            (0..d.len()).map(|n| match n {
                0..=4 => d[..n].to_vec(),
                _ => with_crc(PROTOCOL_ID, &d[4..n]),
            })
        })
        .collect();
    // What the parsers make of them: a handshake of the wrong size or a packet shorter than
    // its fields is malformed; a payload packet cut after its header is a well-formed packet
    // from a stranger.
    let (mut malformed, mut stranger_payloads) = (0, 0);
    for a in &attack {
        match Packet::decode(a) {
            Err(HeaderError::Truncated | HeaderError::BadHandshakeSize) => malformed += 1,
            Ok(Packet::Payload { .. }) => stranger_payloads += 1,
            other => panic!("{} bytes decoded as {other:?}", a.len()),
        }
    }
    let before = game.stats();
    game.attack(stranger(1), &attack);
    game.finish();
    let d = delta(&before, &game.stats());
    assert_eq!(d.invalid_malformed, malformed, "truncations");
    assert_eq!(d.invalid_unknown_peer, stranger_payloads, "cut payloads");
    assert_eq!(
        d.invalid_packets,
        d.invalid_malformed + d.invalid_unknown_peer,
        "{d:?}"
    );
    assert_eq!(d.challenges_sent, 0, "no truncated request is answered");
    assert!(game.replies(stranger(1)).is_empty());
}

#[test]
fn oversized_datagrams_are_dropped_and_counted() {
    let mut game = Game::start(3);
    let mut attack: Vec<Vec<u8>> = (MAX_PACKET_BYTES + 1..=1472)
        .map(|n| vec![0x5A; n])
        .collect();
    // A valid packet's bytes padded past the limit must not pass either.
    let valid = game.recorded.captured[0].clone();
    for n in [1401usize, 2000, 9000, 65_000] {
        let mut d = valid.clone();
        d.resize(n, 0);
        attack.push(d);
    }
    let before = game.stats();
    game.attack(stranger(1), &attack);
    game.finish();
    let d = delta(&before, &game.stats());
    assert_eq!(d.invalid_malformed, attack.len() as u64, "oversized");
    assert_eq!(d.invalid_packets, d.invalid_malformed);
    assert!(game.replies(stranger(1)).is_empty());
}

#[test]
fn wrong_salts_and_replays_are_dropped_by_reason() {
    let mut game = Game::start(4);
    let captured = game.recorded.captured.clone();
    let payloads: Vec<Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_PAYLOAD))
        .cloned()
        .collect();
    assert!(payloads.len() > 40, "{} captured", payloads.len());
    let handshakes: Vec<Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_CHALLENGE_RESPONSE))
        .cloned()
        .collect();
    // Wrong salt: the client's own packets, salt changed, CRC fixed up.
    let wrong_salt: Vec<Vec<u8>> = payloads
        .iter()
        .map(|d| {
            let mut body = d[4..].to_vec();
            body[1] ^= 0x5A; // first salt byte, after the kind byte
            with_crc(PROTOCOL_ID, &body)
        })
        .collect();
    let own = game.recorded.addr;
    let before = game.stats();
    let peers_before = game.ids();
    // From the client's own address: wrong salts, then replays of its old packets.
    game.attack(own, &wrong_salt);
    game.attack(own, &payloads);
    let before_handshakes = game.stats();
    // Its handshake replayed from its own address changes nothing (same nonce).
    game.attack(own, &handshakes);
    let mid = game.stats();
    assert_eq!(game.ids(), peers_before, "no connection replaced or added");
    // From another address: payloads are unknown peers, responses carry a cookie bound to
    // the client's address.
    let other = stranger(1);
    game.attack(other, &payloads);
    game.attack(other, &handshakes);
    game.finish();
    let after = game.stats();

    let own_d = delta(&before, &before_handshakes);
    assert_eq!(own_d.invalid_wrong_salt, wrong_salt.len() as u64);
    assert_eq!(own_d.invalid_replay, payloads.len() as u64);
    assert_eq!(
        own_d.invalid_packets,
        own_d.invalid_wrong_salt + own_d.invalid_replay,
        "{own_d:?}"
    );
    // The own-address handshake replay moves no counter: each is a verified response with the
    // connection's nonce, answered with the same Accepted.
    assert!(!handshakes.is_empty());
    let handshake_d = delta(&before_handshakes, &mid);
    assert_eq!(handshake_d.invalid_packets, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.connections_accepted, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.connections_denied, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.challenges_sent, 0, "{handshake_d:?}");
    let other_d = delta(&mid, &after);
    assert_eq!(other_d.invalid_unknown_peer, payloads.len() as u64);
    assert_eq!(other_d.invalid_cookie, handshakes.len() as u64);
    let d = delta(&before, &after);
    assert_eq!(
        d.invalid_packets,
        d.invalid_wrong_salt + d.invalid_replay + d.invalid_unknown_peer + d.invalid_cookie,
        "{d:?}"
    );
    assert_eq!(d.invalid_malformed + d.invalid_other, 0, "{d:?}");
    assert_eq!(d.connections_accepted, 0, "no replay opened a connection");
    assert_eq!(game.sim.server.client_count(), REAL_CLIENTS);
    // The recorded client's connection saw the bad packets and kept its slot.
    let id = game.ids()[0];
    let link = game
        .sim
        .server
        .connection_stats(id)
        .expect("connected")
        .link;
    assert!(link.invalid_received >= own_d.invalid_wrong_salt + own_d.invalid_replay);
    assert!(game.replies(other).is_empty());
}

#[test]
fn fragment_bombs_from_a_verified_peer_stay_bounded() {
    let mut game = Game::start(5);
    let mut peer = RawPeer::connect(&mut game, stranger(1), 0xB0B);
    let before = game.stats();
    let mut attack = Vec::new();
    // Fragments claiming the most fragments a count can say: refused by the limit.
    for i in 0..200u16 {
        attack.push(peer.packet(&section(0, i, Some((i, u16::MAX)), 8, &[0; 8])));
        attack.push(peer.packet(&section(2, i, Some((0, u16::MAX)), 8, &[0; 8])));
    }
    // Valid first fragments of 500 different unreliable messages, each claiming the most
    // fragments a 4 KiB message needs: reassembly slots are capped, so old ones are evicted.
    let part = [7u8; PART_PAYLOAD_BYTES];
    for id in 0..500u16 {
        attack.push(peer.packet(&section(2, id, Some((0, 15)), part.len() as u16, &part)));
    }
    // Reliable fragments far outside the receive window: dropped.
    for i in 0..200u16 {
        let f = Some((0, 100));
        attack.push(peer.packet(&section(0, 30_000 + i, f, part.len() as u16, &part)));
    }
    game.attack(peer.addr, &attack);
    game.finish();

    let d = delta(&before, &game.stats());
    // Well-formed packets whose channel sections were refused: counted server-wide too.
    let refused = 400 + 200;
    assert_eq!(d.invalid_other, refused, "refused sections");
    assert_eq!(d.invalid_packets, d.invalid_other, "{d:?}");
    let server = &game.sim.server;
    let bomber = server
        .clients()
        .find(|&id| server.client_addr(id) == Some(peer.addr))
        .expect("the bomber is connected");
    let link = server.connection_stats(bomber).expect("connected").link;
    assert_eq!(link.invalid_received, refused);
    let ch0 = server.channel_stats(bomber, 0).expect("channel 0");
    let ch2 = server.channel_stats(bomber, 2).expect("channel 2");
    assert_eq!(ch0.dropped_invalid, 200 + 200, "{ch0:?}");
    assert_eq!(ch2.dropped_invalid, 200, "{ch2:?}");
    // At most `DEFAULT_MAX_REASSEMBLIES` incomplete messages are held. The first fragments
    // that reached channel 2 are its received record bytes over one record's size (the
    // refused u16::MAX-count records are not counted there), and none has completed or
    // timed out (1 s) by now, so what they started and the channel did not drop is held.
    let held_max = snapsync::channel::DEFAULT_MAX_REASSEMBLIES as u64;
    let record_bytes = (FRAGMENT_RECORD_HEADER_BYTES + PART_PAYLOAD_BYTES) as u64;
    assert_eq!(ch2.bytes_received % record_bytes, 0, "{ch2:?}");
    let started = ch2.bytes_received / record_bytes;
    assert_eq!(started, 500, "first fragments");
    let held = started - ch2.reassemblies_dropped;
    assert!(held <= held_max, "{held} reassemblies held: {ch2:?}");
    assert!(
        !game.app_messages.contains_key(&bomber),
        "no bomb completed a message"
    );
    assert_eq!(game.sim.server.client_count(), REAL_CLIENTS + 1);
}

#[test]
fn huge_length_prefixes_are_refused_without_allocating() {
    let mut game = Game::start(6);
    let mut peer = RawPeer::connect(&mut game, stranger(1), 0xC0C);
    let before = game.stats();
    let mut framing = Vec::new();
    let mut records = Vec::new();
    let mut messages = Vec::new();
    for i in 0..100u16 {
        // A datagram section claiming 65535 bytes: the packet is refused.
        framing.push(peer.packet(&[1, 0xFF, 0xFF, 1, 2, 3]));
        // A channel record claiming 65535 bytes: the section is refused.
        records.push(peer.packet(&section(1, i, None, u16::MAX, &[1, 2, 3])));
        // Well-framed reliable messages whose bodies are codec values with hostile length
        // prefixes: they reach the game, whose decode refuses them without allocating.
        let mut body = Vec::new();
        if i % 2 == 0 {
            // A struct whose first field is fine and whose string claims ~2^62 bytes.
            body.push(5);
            body.push(0xFD);
            body.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        } else {
            body.push(5);
            body.push(0xFC);
            body.extend_from_slice(&(u32::MAX).to_le_bytes());
            body.extend_from_slice(b"short");
        }
        messages.push(peer.packet(&section(0, i, None, body.len() as u16, &body)));
    }
    game.attack(peer.addr, &framing);
    game.attack(peer.addr, &records);
    game.attack(peer.addr, &messages);
    game.finish();

    let d = delta(&before, &game.stats());
    // Framing errors drop the packet, record errors the section: both are counted, on the
    // server and on the peer's connection.
    let refused = (framing.len() + records.len()) as u64;
    assert_eq!(d.invalid_other, refused, "length prefixes");
    assert_eq!(d.invalid_packets, d.invalid_other, "{d:?}");
    let server = &game.sim.server;
    let id = server
        .clients()
        .find(|&id| server.client_addr(id) == Some(peer.addr))
        .expect("the peer is connected");
    assert_eq!(
        server
            .connection_stats(id)
            .expect("connected")
            .link
            .invalid_received,
        refused
    );
    // The game saw every hostile message and refused each.
    assert_eq!(game.app_decode_errors, messages.len() as u64);
    assert_eq!(game.sim.server.client_count(), REAL_CLIENTS + 1);
}

#[test]
fn handshake_flood_from_a_thousand_addresses_is_never_amplified() {
    const PORTS: u16 = 1000;
    let mut game = Game::start(7);
    let before = game.stats();
    let before_count = game.sim.server.client_count();
    // Per address: a proper request (answered with a small challenge), a short request
    // (malformed, unanswered), and a response with a forged cookie (unanswered).
    let short = {
        let full = encode(&Packet::ConnectionRequest { client_nonce: 9 });
        with_crc(PROTOCOL_ID, &full[4..100])
    };
    let nonce = |i: u16| 0xF100_0000 + u64::from(i);
    for i in 0..PORTS {
        let request = encode(&Packet::ConnectionRequest {
            client_nonce: nonce(i),
        });
        let forged = encode(&Packet::ChallengeResponse {
            client_nonce: nonce(i),
            timestamp_ms: 0,
            mac: nonce(i).wrapping_mul(31),
        });
        for d in [&request, &short, &forged] {
            game.sim.inject_to_server(stranger(i), d);
        }
        if i % 16 == 15 {
            game.step();
        }
    }
    let mid_count = game.sim.server.client_count();
    let (mut answered, mut reply_bytes) = (0u64, 0);
    for i in 0..PORTS {
        for r in game.replies(stranger(i)) {
            reply_bytes += r.len();
            // Every reply is the challenge for this address's full-size request, and smaller.
            assert!(r.len() <= HANDSHAKE_PACKET_BYTES, "{} byte reply", r.len());
            assert!(
                r.len() < short.len(),
                "a reply as large as the short request"
            );
            match Packet::decode(&r) {
                Ok(Packet::Challenge { client_nonce, .. }) => assert_eq!(client_nonce, nonce(i)),
                other => panic!("unexpected reply {other:?}"),
            }
            answered += 1;
        }
    }
    game.finish();
    let d = delta(&before, &game.stats());
    assert_eq!(d.challenges_sent, u64::from(PORTS));
    assert_eq!(answered, u64::from(PORTS));
    assert_eq!(d.invalid_malformed, u64::from(PORTS), "short requests");
    assert_eq!(d.invalid_cookie, u64::from(PORTS), "forged cookies");
    assert_eq!(
        d.invalid_packets,
        d.invalid_malformed + d.invalid_cookie,
        "{d:?}"
    );
    assert_eq!(d.connections_accepted, 0);
    // No state for any unverified address.
    assert_eq!(before_count, REAL_CLIENTS);
    assert_eq!(mid_count, REAL_CLIENTS);
    assert_eq!(game.sim.server.client_count(), REAL_CLIENTS);
    // Bytes out to the flood were less than a tenth of the bytes in.
    let flood_in = usize::from(PORTS) * (2 * HANDSHAKE_PACKET_BYTES + short.len());
    assert!(
        reply_bytes * 10 < flood_in,
        "{reply_bytes} bytes of replies to {flood_in} bytes of flood"
    );
}

/// Datagrams of the loopback test: past the packet limit, up to near UDP's maximum.
const OVERSIZED_BYTES: [usize; 5] = [MAX_PACKET_BYTES + 1, 1472, 2000, 9000, 65_000];
/// Longest the loopback test waits for its datagrams; only a hang reaches it.
const LOOPBACK_LIMIT: Duration = Duration::from_secs(20);

/// The one thing here only a socket shows: datagrams larger than any packet are cut off by
/// the driver's receive buffer check, counted in `SocketStats::oversized` and as malformed,
/// and never answered.
#[tokio::test(flavor = "current_thread")]
async fn oversized_datagrams_on_a_real_socket_are_counted_and_unanswered() {
    let mut server = NetServer::bind(
        "127.0.0.1:0".parse().expect("literal"),
        ServerConfig::default(),
        8,
    )
    .await
    .expect("bind server");
    let addr = server.local_addr().expect("addr");
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let valid = encode(&Packet::ConnectionRequest { client_nonce: 1 });
    for n in OVERSIZED_BYTES {
        // A valid request padded: only the size is wrong.
        let mut d = valid.clone();
        d.resize(n, 0);
        s.send_to(&d, addr).await.expect("loopback send");
    }
    let end = tokio::time::Instant::now() + LOOPBACK_LIMIT;
    while server.socket_stats().received < OVERSIZED_BYTES.len() as u64
        && tokio::time::Instant::now() < end
    {
        let step = tokio::time::Instant::now() + Duration::from_millis(5);
        server.drive_until(step).await.expect("server socket");
    }
    let sock = server.socket_stats();
    let stats = server.endpoint().stats();
    assert_eq!(sock.received, OVERSIZED_BYTES.len() as u64, "{sock:?}");
    assert_eq!(sock.oversized, sock.received, "{sock:?}");
    assert_eq!(stats.invalid_malformed, sock.oversized, "{stats:?}");
    assert_eq!(stats.invalid_packets, stats.invalid_malformed);
    assert_eq!(stats.challenges_sent, 0);
    assert_eq!(stats.packets_out, 0, "no reply");
    assert_eq!(sock.sent, 0, "nothing left the socket");
}

/// Secure mode (netcode 1.02): the same game with every packet encrypted, and the attacks
/// only a secure server meets. Drops are counted by reason in the netcode layer
/// (`Server::secure_stats`), and in `ServerStats::invalid_secure` in all.
mod secure {
    use snapsync::connection::{ClientSecurity, SecureServerConfig, Security};
    use snapsync::netcode::{self, DropCounts, Key, TokenSettings, generate_connect_token};

    use super::*;

    const SECURE_PROTOCOL_ID: u64 = 0x5EC0_BAD1;
    const KEY: Key = [0x4B; 32];
    /// Unix time at the server's start; tokens are minted against it.
    const UNIX_AT_START: u64 = 1_800_000_000;
    /// Offset of the expire timestamp in a connection request (after prefix, version
    /// info, protocol id).
    const REQUEST_EXPIRE_AT: usize = 1 + 13 + 8;
    /// Offset of the nonce, then of the encrypted private token, in a connection request.
    const REQUEST_NONCE_AT: usize = REQUEST_EXPIRE_AT + 8;
    const REQUEST_PRIVATE_AT: usize = REQUEST_NONCE_AT + netcode::CONNECT_TOKEN_NONCE_BYTES;
    const TYPE_RESPONSE: u8 = 3;
    const TYPE_KEEP_ALIVE: u8 = 4;
    const TYPE_PAYLOAD: u8 = 5;
    const TYPE_DISCONNECT: u8 = 6;

    /// The address `Sim::with_server` gives its server: the one tokens name.
    fn server_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7777)
    }

    pub(super) fn server_config() -> ServerConfig {
        ServerConfig {
            security: Security::Secure(SecureServerConfig {
                netcode: netcode::ServerConfig::new(SECURE_PROTOCOL_ID, KEY, server_addr()),
                unix_secs_at_start: UNIX_AT_START,
            }),
            ..ServerConfig::default()
        }
    }

    fn settings(client_id: u64) -> TokenSettings {
        TokenSettings {
            protocol_id: SECURE_PROTOCOL_ID,
            client_id,
            server_addresses: vec![server_addr()],
            expire_seconds: 60,
            timeout_seconds: 5,
            user_data: [0; netcode::USER_DATA_BYTES],
        }
    }

    fn mint(unix_secs: u64, settings: &TokenSettings, key: &Key) -> Vec<u8> {
        generate_connect_token(unix_secs, settings, key)
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    pub(super) fn client_config(client_id: u64) -> ClientConfig {
        ClientConfig {
            security: ClientSecurity::Secure {
                token: mint(UNIX_AT_START, &settings(client_id), &KEY),
            },
            ..ClientConfig::default()
        }
    }

    /// The connection request a netcode client sends with `token`.
    fn request(token: &[u8]) -> Vec<u8> {
        let now = std::time::Instant::now();
        let mut client = netcode::Client::new(now, token).unwrap();
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        let t = client.poll_transmit(now, &mut buf).expect("a request");
        assert_eq!(t.len, netcode::CONNECTION_REQUEST_BYTES);
        buf[..t.len].to_vec()
    }

    /// `d` (an encrypted packet) with bit `n` of its ciphertext and tag flipped; `None` for a
    /// connection request, which has neither.
    pub(super) fn flip_ciphertext_bit(d: &[u8], n: u64) -> Option<Vec<u8>> {
        if d.first() == Some(&0) {
            return None;
        }
        let sealed_at = 1 + usize::from(d[0] >> 4);
        let bits = (d.len() - sealed_at) as u64 * 8;
        let bit = (n.wrapping_mul(0x9E37_79B9) % bits) as usize;
        let mut q = d.to_vec();
        q[sealed_at + bit / 8] ^= 1 << (bit % 8);
        Some(q)
    }

    fn packet_type(d: &[u8]) -> u8 {
        d[0] & 0x0f
    }

    fn drops(game: &Game) -> netcode::ServerStats {
        game.sim.server.secure_stats().expect("a secure server")
    }

    /// After `game.finish()`: the netcode drops moved by exactly `expected` and no other
    /// reason, every drop is in `invalid_secure` and nothing else invalid moved, and no
    /// connection was made.
    fn assert_dropped(
        game: &Game,
        before: (&ServerStats, &netcode::ServerStats),
        expected: impl FnOnce(&mut DropCounts),
    ) {
        let mut want = before.1.dropped;
        expected(&mut want);
        let after = drops(game);
        assert_eq!(after.dropped, want);
        let d = delta(before.0, &game.stats());
        assert_eq!(
            d.invalid_secure,
            want.total() - before.1.dropped.total(),
            "{d:?}"
        );
        assert_eq!(d.invalid_packets, d.invalid_secure, "{d:?}");
        assert_eq!(d.connections_accepted, 0, "{d:?}");
        assert_eq!(
            after.connections_accepted, before.1.connections_accepted,
            "{after:?}"
        );
        assert_eq!(game.sim.server.client_count(), REAL_CLIENTS);
    }

    #[test]
    fn secure_game_runs_clean() {
        let mut game = Game::start_secure(10);
        let before = (game.stats(), drops(&game));
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |_| {});
        assert_eq!(drops(&game).dropped.total(), 0);
    }

    #[test]
    fn secure_expired_and_tampered_tokens_are_dropped_by_reason() {
        let mut game = Game::start_secure(11);
        let expired: Vec<Vec<u8>> = (0..48)
            .map(|i| request(&mint(UNIX_AT_START - 120, &settings(1000 + i), &KEY)))
            .collect();
        // One bit flipped in the expire timestamp (still in the future), the nonce, or the
        // encrypted private token, including its tag.
        let valid = request(&mint(UNIX_AT_START, &settings(2000), &KEY));
        let private_bytes = netcode::CONNECT_TOKEN_PRIVATE_BYTES;
        let tampered: Vec<Vec<u8>> = (0..96usize)
            .map(|i| {
                let at = match i % 3 {
                    0 => REQUEST_EXPIRE_AT,
                    1 => REQUEST_NONCE_AT + i % netcode::CONNECT_TOKEN_NONCE_BYTES,
                    _ => REQUEST_PRIVATE_AT + (i * 37) % private_bytes,
                };
                let mut d = valid.clone();
                d[at] ^= 1 << (i % 8);
                if at == REQUEST_EXPIRE_AT {
                    // Only the lowest bit: the timestamp moves by one second.
                    d[at] = valid[at] ^ 1;
                }
                d
            })
            .collect();
        let before = (game.stats(), drops(&game));
        game.attack(stranger(1), &expired);
        game.attack(stranger(2), &tampered);
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.token_expired += expired.len() as u64;
            want.token_invalid += tampered.len() as u64;
        });
        assert_eq!(drops(&game).challenges_sent, before.1.challenges_sent);
        assert!(game.replies(stranger(1)).is_empty());
        assert!(game.replies(stranger(2)).is_empty());
    }

    #[test]
    fn secure_tokens_for_another_protocol_key_or_server_are_dropped_by_reason() {
        let mut game = Game::start_secure(12);
        let other_protocol: Vec<Vec<u8>> = (0..48)
            .map(|i| {
                let mut s = settings(3000 + i);
                s.protocol_id ^= 1;
                request(&mint(UNIX_AT_START, &s, &KEY))
            })
            .collect();
        let other_key: Vec<Vec<u8>> = (0..48)
            .map(|i| request(&mint(UNIX_AT_START, &settings(4000 + i), &[0x99; 32])))
            .collect();
        let other_server: Vec<Vec<u8>> = (0..48)
            .map(|i| {
                let mut s = settings(5000 + i);
                s.server_addresses = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9999)];
                request(&mint(UNIX_AT_START, &s, &KEY))
            })
            .collect();
        let before = (game.stats(), drops(&game));
        game.attack(stranger(1), &other_protocol);
        game.attack(stranger(2), &other_key);
        game.attack(stranger(3), &other_server);
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.bad_protocol_id += other_protocol.len() as u64;
            want.token_invalid += other_key.len() as u64;
            want.wrong_server_address += other_server.len() as u64;
        });
        assert_eq!(drops(&game).challenges_sent, before.1.challenges_sent);
        for n in 1..=3 {
            assert!(game.replies(stranger(n)).is_empty());
        }
    }

    #[test]
    fn secure_reused_tokens_from_a_second_address_are_dropped() {
        let mut game = Game::start_secure(13);
        // A fresh token's request: its first address gets a challenge, every other is a reuse.
        let fresh = request(&mint(UNIX_AT_START, &settings(6000), &KEY));
        // The recorded client's own request, captured: its client id is connected.
        let captured = game
            .recorded
            .captured
            .iter()
            .find(|d| d[0] == 0)
            .expect("the client's connection request")
            .clone();
        let before = (game.stats(), drops(&game));
        game.sim.inject_to_server(stranger(1), &fresh);
        for n in 2..50 {
            game.sim.inject_to_server(stranger(n), &fresh);
        }
        for n in 100..148 {
            game.sim.inject_to_server(stranger(n), &captured);
        }
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.token_reused += 48;
            want.already_connected += 48;
        });
        assert_eq!(drops(&game).challenges_sent, before.1.challenges_sent + 1);
        let challenge = game.replies(stranger(1));
        assert_eq!(
            challenge.len(),
            1,
            "one challenge for the token's first use"
        );
        assert!(challenge[0].len() <= fresh.len());
        for n in (2..50).chain(100..148) {
            assert!(game.replies(stranger(n)).is_empty(), "a reply to {n}");
        }
    }

    #[test]
    fn secure_a_flood_of_valid_requests_opens_handshakes_up_to_the_bound_and_no_more() {
        let mut game = Game::start_secure(16);
        let Security::Secure(secure) = server_config().security else {
            unreachable!("a secure config");
        };
        let bound = secure.netcode.max_handshakes;
        // Valid, fresh tokens, each from its own address, 40 more than the server keeps
        // handshakes for (the real clients' handshakes ended when they connected).
        let extra = 40;
        let flood: Vec<(SocketAddr, Vec<u8>)> = (0..bound + extra)
            .map(|i| {
                let from = stranger(1 + i as u16);
                (
                    from,
                    request(&mint(UNIX_AT_START, &settings(7000 + i as u64), &KEY)),
                )
            })
            .collect();
        let before = (game.stats(), drops(&game));
        for burst in flood.chunks(BURST_DATAGRAMS) {
            for (from, d) in burst {
                game.sim.inject_to_server(*from, d);
            }
            game.step();
        }
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.handshakes_full += extra as u64;
        });
        let after = drops(&game);
        assert_eq!(
            after.challenges_sent,
            before.1.challenges_sent + bound as u64
        );
        // The first `bound` addresses got one challenge each, no larger than the request;
        // the rest nothing.
        for (i, (from, d)) in flood.iter().enumerate() {
            let replies = game.replies(*from);
            if i < bound {
                assert_eq!(replies.len(), 1, "address {i}");
                assert!(replies[0].len() <= d.len());
            } else {
                assert!(replies.is_empty(), "a reply to address {i}");
            }
        }
    }

    #[test]
    fn secure_short_and_unknown_type_packets_are_dropped_by_reason() {
        let mut game = Game::start_secure(14);
        // Under 18 bytes, of every encrypted type with a one-byte sequence, and empty.
        let mut short: Vec<Vec<u8>> = vec![Vec::new()];
        for kind in 1..=6u8 {
            for len in 1..netcode::MIN_ENCRYPTED_PACKET_BYTES {
                let mut d = vec![0x10 | kind];
                d.resize(len, 0x77);
                short.push(d);
            }
        }
        // Types 7 to 15, long enough to be a packet.
        let mut unknown = Vec::new();
        for kind in 7..=15u8 {
            for len in [18usize, 19, 40, 64, 200, 600, 1100, 1225] {
                let mut d = vec![0x10 | kind];
                d.resize(len, 0x77);
                unknown.push(d);
            }
        }
        let before = (game.stats(), drops(&game));
        let own = game.recorded.addr;
        for from in [own, stranger(1)] {
            game.attack(from, &short);
            game.attack(from, &unknown);
        }
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.too_small += 2 * short.len() as u64;
            want.unknown_type += 2 * unknown.len() as u64;
        });
        assert!(game.replies(stranger(1)).is_empty());
    }

    #[test]
    fn secure_replays_and_bit_flips_are_dropped_by_reason() {
        let mut game = Game::start_secure(15);
        // Everything the client sent once connected: keep-alives and payloads.
        let connected: Vec<Vec<u8>> = game
            .recorded
            .captured
            .iter()
            .filter(|d| matches!(packet_type(d), TYPE_KEEP_ALIVE | TYPE_PAYLOAD))
            .cloned()
            .collect();
        assert!(connected.len() > 40, "{} captured", connected.len());
        let responses = game
            .recorded
            .captured
            .iter()
            .filter(|d| d[0] != 0 && packet_type(d) == TYPE_RESPONSE)
            .count();
        assert!(responses > 0);
        let before = (game.stats(), drops(&game));
        let own = game.recorded.addr;
        // Replays from the client's own address, then from another.
        game.attack(own, &connected);
        game.attack(stranger(1), &connected);
        // An attacker on the path: every packet of the next second goes first with one bit
        // of its ciphertext or tag flipped, then as sent.
        game.recorded.flip_before_sending = true;
        for _ in 0..60 {
            game.step();
        }
        game.recorded.flip_before_sending = false;
        let flipped = game.recorded.flipped;
        assert!(flipped >= 60, "{flipped} flipped");
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.replayed += connected.len() as u64;
            want.unknown_address += connected.len() as u64;
            want.decrypt_failed += flipped;
        });
        assert!(game.replies(stranger(1)).is_empty());
    }

    #[test]
    fn secure_forged_disconnects_end_no_session() {
        let mut game = Game::start_secure(16);
        // Disconnect packets with fresh sequences and a made-up tag: the server cannot tell
        // them from a flipped real one, and drops them at decryption.
        let forged: Vec<Vec<u8>> = (0..48u16)
            .map(|i| {
                let mut d = vec![0x20 | TYPE_DISCONNECT];
                d.extend_from_slice(&(60_000 + i).to_le_bytes());
                d.extend_from_slice(&[i as u8; netcode::MAC_BYTES]);
                d
            })
            .collect();
        let before = (game.stats(), drops(&game));
        game.attack(game.recorded.addr, &forged);
        // From a stranger a disconnect is a late goodbye: counted, and it changes nothing.
        game.attack(stranger(1), &forged);
        // And towards the recorded client, from the server's address.
        let client_before = game.recorded.client.secure_stats().unwrap().dropped;
        let now = game.sim.now;
        for d in &forged {
            game.recorded.client.handle_datagram(now, server_addr(), d);
        }
        let client_after = game.recorded.client.secure_stats().unwrap().dropped;
        let mut want = client_before;
        want.decrypt_failed += forged.len() as u64;
        assert_eq!(client_after, want);
        game.finish();
        assert_dropped(&game, (&before.0, &before.1), |want| {
            want.decrypt_failed += forged.len() as u64;
        });
        assert_eq!(
            drops(&game).late_disconnects,
            before.1.late_disconnects + forged.len() as u64
        );
        assert!(game.replies(stranger(1)).is_empty());
    }
}
