//! Property-test twins of the cargo-fuzz targets in `fuzz/`, so CI covers the same entry
//! points without a nightly toolchain, plus the crashes fuzzing found, as regressions.
//!
//! Random bytes rarely pass a CRC, so the strategies start from valid encodings and mutate
//! them (truncate, extend, flip bits, overwrite), which reaches the parsers behind the check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use glam::{Quat, Vec3};
use proptest::prelude::*;
use snapsync::channel::{Channels, ChannelsConfig};
use snapsync::connection::{ClientSecurity, SecureServerConfig, Security};
use snapsync::netcode::{
    self, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES, CONNECT_TOKEN_PRIVATE_BYTES,
    ConnectToken, Key, PrivateConnectToken, TokenSettings, generate_connect_token,
};
use snapsync::packet::{
    ConnectedHeader, DenyReason, DisconnectReasonCode, HeaderError, MAX_PACKET_BYTES, Packet,
};
use snapsync::sim::Sim;
use snapsync::snapshot::{
    EntityId, EntityState, QuantizedWorld, ReceiverConfig, SenderConfig, SnapshotReceiver,
    SnapshotSender, Tick, Transform, World,
};
use snapsync::{ClientConfig, Sequence, ServerConfig};

/// A change applied to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Append(Vec<u8>),
    FlipBit(usize),
    Overwrite(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        any::<usize>().prop_map(Mutation::FlipBit),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(n) => bytes.truncate(n % bytes.len()),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::FlipBit(i) => {
            let bit = i % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        Mutation::Overwrite(i, b) => {
            let at = i % bytes.len();
            bytes[at] = *b;
        }
    }
}

/// Re-encode a packet with a fresh CRC, so mutations of the body reach the field parsers.
fn with_fixed_crc(body: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&snapsync::packet::PROTOCOL_ID.to_le_bytes());
    h.update(body);
    let mut out = h.finalize().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn packet() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u16>(),
    );
    prop_oneof![
        any::<u64>().prop_map(|n| encode(&Packet::ConnectionRequest { client_nonce: n })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(n, t, m)| encode(
            &Packet::Challenge {
                client_nonce: n,
                timestamp_ms: t,
                mac: m
            }
        )),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(n, t, m)| encode(
            &Packet::ChallengeResponse {
                client_nonce: n,
                timestamp_ms: t,
                mac: m
            }
        )),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(n, id, salt)| encode(
            &Packet::Accepted {
                client_nonce: n,
                client_id: id,
                salt
            }
        )),
        (any::<u64>(), any::<u8>()).prop_map(|(n, r)| encode(&Packet::Denied {
            client_nonce: n,
            reason: match r % 3 {
                0 => DenyReason::ServerFull,
                1 => DenyReason::ShuttingDown,
                _ => DenyReason::Other(r),
            }
        })),
        (header, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |((salt, s, a, bits, delay), payload)| encode(&Packet::Payload {
                header: ConnectedHeader {
                    salt,
                    sequence: Sequence(s),
                    ack: Sequence(a),
                    ack_bits: bits,
                    ack_delay: delay,
                },
                payload: &payload,
            })
        ),
        any::<u32>().prop_map(|salt| encode(&Packet::Disconnect {
            salt,
            reason: DisconnectReasonCode::Kicked
        })),
    ]
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let n = p.encode(&mut buf).expect("test packets fit");
    buf.truncate(n);
    buf
}

/// The property of the `packet_decode` target.
fn check_packet_decode(bytes: &[u8]) {
    let Ok(packet) = Packet::decode(bytes) else {
        return;
    };
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let len = packet
        .encode(&mut buf)
        .expect("a decoded packet fits the maximum size");
    assert_eq!(len, bytes.len(), "re-encoding keeps the length");
    assert_eq!(Packet::decode(&buf[..len]), Ok(packet));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn packet_decode_round_trips_whatever_it_accepts(
        mut bytes in packet(),
        m in mutation(),
        recrc in any::<bool>(),
    ) {
        mutate(&mut bytes, &m);
        if recrc && bytes.len() > 4 {
            bytes = with_fixed_crc(&bytes[4..]);
        }
        check_packet_decode(&bytes);
    }

    #[test]
    fn packet_decode_survives_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        check_packet_decode(&bytes);
        if bytes.len() > MAX_PACKET_BYTES {
            prop_assert_eq!(Packet::decode(&bytes), Err(HeaderError::Oversized));
        }
    }
}

/// Found by `cargo fuzz run packet_decode`: a Denied packet with two bytes after its
/// fields decoded, so two different datagrams meant the same packet.
#[test]
fn regression_fixed_size_packet_with_trailing_bytes_is_rejected() {
    let crash = [
        132, 169, 232, 149, 5, 161, 10, 29, 10, 10, 65, 91, 91, 91, 92, 10,
    ];
    assert_eq!(Packet::decode(&crash), Err(HeaderError::TrailingBytes));
    check_packet_decode(&crash);
    // Every fixed-size kind, extended by a byte with a valid CRC.
    for p in [
        Packet::Challenge {
            client_nonce: 1,
            timestamp_ms: 2,
            mac: 3,
        },
        Packet::Accepted {
            client_nonce: 1,
            client_id: 2,
            salt: 3,
        },
        Packet::Denied {
            client_nonce: 1,
            reason: DenyReason::ServerFull,
        },
        Packet::Disconnect {
            salt: 1,
            reason: DisconnectReasonCode::Requested,
        },
    ] {
        let mut bytes = encode(&p);
        bytes.push(0);
        let bytes = with_fixed_crc(&bytes[4..]);
        assert_eq!(
            Packet::decode(&bytes),
            Err(HeaderError::TrailingBytes),
            "{p:?}"
        );
    }
}

/// One channel record, loosely shaped: any channel, flags, id, fragment fields and length.
fn record() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..6,
        0u8..4,
        any::<u16>(),
        any::<(u16, u16)>(),
        proptest::collection::vec(any::<u8>(), 0..48),
        any::<bool>(),
    )
        .prop_map(
            |(channel, flags, id, (index, count), payload, honest_len)| {
                let mut r = vec![channel, flags];
                r.extend_from_slice(&id.to_le_bytes());
                if flags & 1 == 1 {
                    r.extend_from_slice(&(index % 20).to_le_bytes());
                    r.extend_from_slice(&(count % 20).to_le_bytes());
                }
                let len = if honest_len {
                    payload.len() as u16
                } else {
                    u16::MAX - payload.len() as u16
                };
                r.extend_from_slice(&len.to_le_bytes());
                r.extend_from_slice(&payload);
                r
            },
        )
}

fn section() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(record(), 0..6),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(records, count, honest_count)| {
            let mut s = vec![if honest_count {
                records.len() as u8
            } else {
                count
            }];
            for r in records {
                s.extend_from_slice(&r);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The property of the `channel_read` target.
    #[test]
    fn channel_read_counts_every_rejection_and_bounds_messages(
        sections in proptest::collection::vec((section(), mutation()), 1..12),
    ) {
        let base = Instant::now();
        let mut channels = Channels::new(ChannelsConfig::default());
        for (i, (mut section, m)) in sections.into_iter().enumerate() {
            if i % 3 == 2 {
                mutate(&mut section, &m);
            }
            let now = base + Duration::from_millis(10 * i as u64);
            let before = channels.invalid_count();
            let result = channels.read_packet(now, &section);
            prop_assert_eq!(result.is_err(), channels.invalid_count() == before + 1);
            while let Some((channel, message)) = channels.receive() {
                prop_assert!(usize::from(channel) < channels.channel_count());
                prop_assert!(message.len() <= snapsync::codec::MAX_DECODE_BYTES);
            }
            channels.handle_timeout(now);
        }
    }
}

/// Real snapshot parts for a small moving world, one tick after another.
fn real_parts(ticks: u32) -> Vec<Vec<u8>> {
    let mut sender = SnapshotSender::new(SenderConfig::default()).expect("default config");
    let quantize = SenderConfig::default().quantize;
    let mut out = Vec::new();
    for t in 1..=ticks {
        let mut world = World::new();
        for id in 0..20u32 {
            let x = id as f32 + t as f32 * 0.1;
            world.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position: Vec3::new(x, 1.0, -x),
                    rotation: Quat::from_rotation_y(x),
                    velocity: Some(Vec3::X),
                }),
            );
        }
        let q = QuantizedWorld::from_world(&world, &quantize);
        let parts = sender.build(Tick(t), &q, 300).expect("builds");
        for (index, _) in parts.iter().enumerate() {
            // Every part is acked, so later ticks are deltas against acked baselines.
            let seq = Sequence((t * 8 + index as u32) as u16);
            sender.on_part_sent(Tick(t), index, seq);
            sender.on_delivery(seq, true);
        }
        out.extend(parts);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The property of the `snapshot_read` target, on mutated real parts.
    #[test]
    fn snapshot_read_counts_every_part_once(
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), mutation()), 0..8),
        extra in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
    ) {
        let mut parts = real_parts(4);
        for (which, m) in &mutations {
            let i = which.index(parts.len());
            mutate(&mut parts[i], m);
        }
        parts.extend(extra);
        let base = Instant::now();
        let mut receiver = SnapshotReceiver::new(ReceiverConfig::default()).expect("default");
        for (i, part) in parts.iter().enumerate() {
            let now = base + Duration::from_millis(16 * i as u64);
            let _ = receiver.read_part(now, part);
            let _ = receiver.live_world();
        }
        prop_assert_eq!(receiver.stats().parts_received, parts.len() as u64);
        if mutations.is_empty() {
            // Untouched parts all apply.
            prop_assert_eq!(receiver.stats().ticks_completed, 4);
        }
    }
}

const RAW_PEER_NONCE: u64 = 0xF00D;

fn fuzz_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port)
}

/// The `server_datagram` target: a connected sim client, a verified raw peer, and a script
/// of datagrams from the client's address, strangers, and the raw peer (with its salt).
fn run_server_script(script: &[(u8, Vec<u8>)]) {
    let mut sim = Sim::new(ServerConfig::default(), 1);
    sim.add_client(ClientConfig::default());
    assert!(sim.run_until_cond(Duration::from_secs(1), |s| {
        s.clients[0].client.is_connected()
    }));
    let raw_peer = fuzz_addr(9000);
    let salt = sim
        .handshake_by_hand(raw_peer, RAW_PEER_NONCE)
        .expect("the server accepts a hand-made handshake");
    let client_addr = sim.clients[0].addr;
    let mut sequence = Sequence(0);
    for (selector, bytes) in script {
        let selector = *selector;
        match selector % 4 {
            0 => sim.inject_to_server(client_addr, bytes),
            1 => {
                let stranger = fuzz_addr(40_000 + u16::from(selector >> 2) % 4);
                sim.stray.clear();
                sim.inject_to_server(stranger, bytes);
                for (to, reply) in sim.stray.drain(..) {
                    assert_eq!(to, stranger);
                    assert!(reply.len() <= bytes.len(), "amplifying reply");
                }
            }
            2 => {
                sequence = sequence.next();
                let room = MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES;
                let packet = Packet::Payload {
                    header: ConnectedHeader {
                        salt,
                        sequence,
                        ack: Sequence(u16::from(selector)),
                        ack_bits: u32::from(selector).wrapping_mul(0x0101_0101),
                        ack_delay: 0,
                    },
                    payload: &bytes[..bytes.len().min(room)],
                };
                sim.inject_to_server(raw_peer, &encode(&packet));
            }
            _ => sim.run_for(Duration::from_millis(u64::from(selector >> 2))),
        }
        assert!(sim.server.client_count() <= 2);
    }
    // Garbage never takes the real client's connection down: it cannot know the salt.
    sim.run_for(Duration::from_millis(200));
    assert!(sim.clients[0].client.is_connected());
}

/// Bodies for the raw peer: flags byte, optional datagram framing, then a channel section.
fn payload_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        section().prop_map(|s| {
            let mut b = vec![0u8];
            b.extend_from_slice(&s);
            b
        }),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..32)).prop_map(|(len, d)| {
            let mut b = vec![1u8];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&d);
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn server_datagram_script_never_breaks_the_server(
        script in proptest::collection::vec(
            (any::<u8>(), prop_oneof![
                packet(),
                payload_body(),
                proptest::collection::vec(any::<u8>(), 0..1500),
            ]),
            1..24,
        ),
    ) {
        run_server_script(&script);
    }
}

// Secure mode (netcode 1.02): the twins of `netcode_token`, `netcode_packet` and
// `secure_server_datagram`.

const SECURE_KEY: Key = [0x42; 32];
const SECURE_PROTOCOL_ID: u64 = 0x5EC0_F022;
const SECURE_UNIX: u64 = 1_800_000_000;
const SECURE_EXPIRE: u64 = SECURE_UNIX + 60;
const SECURE_NONCE: [u8; CONNECT_TOKEN_NONCE_BYTES] = [9; CONNECT_TOKEN_NONCE_BYTES];

fn netcode_server_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 40_000))
}

fn netcode_client_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 50_000))
}

fn mint(client_id: u64, server: SocketAddr) -> Vec<u8> {
    let settings = TokenSettings {
        protocol_id: SECURE_PROTOCOL_ID,
        client_id,
        server_addresses: vec![server],
        expire_seconds: 600,
        timeout_seconds: 5,
        user_data: [0; netcode::USER_DATA_BYTES],
    };
    generate_connect_token(SECURE_UNIX, &settings, &SECURE_KEY)
        .expect("one address")
        .to_bytes()
        .to_vec()
}

/// A private token's plaintext for `netcode_server_addr`, as a backend writes it.
fn private_plaintext(client_id: u64) -> Vec<u8> {
    let mut p = client_id.to_le_bytes().to_vec();
    p.extend_from_slice(&5u32.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(1); // IPv4
    p.extend_from_slice(&[10, 0, 0, 1]);
    p.extend_from_slice(&40_000u16.to_le_bytes());
    p.extend_from_slice(&[1; 32]);
    p.extend_from_slice(&[2; 32]);
    p.extend_from_slice(&[3; netcode::USER_DATA_BYTES]);
    p
}

/// The private token's plaintext (up to 1008 bytes), sealed under the key as a backend would.
fn seal_private(plain: &[u8]) -> [u8; CONNECT_TOKEN_PRIVATE_BYTES] {
    let mut buf = [0u8; CONNECT_TOKEN_PRIVATE_BYTES];
    let n = plain
        .len()
        .min(CONNECT_TOKEN_PRIVATE_BYTES - netcode::MAC_BYTES);
    buf[..n].copy_from_slice(&plain[..n]);
    let mut aad = netcode::VERSION_INFO.to_vec();
    aad.extend_from_slice(&SECURE_PROTOCOL_ID.to_le_bytes());
    aad.extend_from_slice(&SECURE_EXPIRE.to_le_bytes());
    let (message, mac) = buf
        .split_last_chunk_mut::<{ netcode::MAC_BYTES }>()
        .expect("the private token is longer than its tag");
    let tag = XChaCha20Poly1305::new(&SECURE_KEY.into())
        .encrypt_inout_detached(&SECURE_NONCE.into(), &aad, message.into())
        .expect("1008 bytes are within the cipher's limit");
    mac.copy_from_slice(&tag);
    buf
}

fn connection_request(private: &[u8; CONNECT_TOKEN_PRIVATE_BYTES]) -> Vec<u8> {
    let mut r = vec![0u8];
    r.extend_from_slice(&netcode::VERSION_INFO);
    r.extend_from_slice(&SECURE_PROTOCOL_ID.to_le_bytes());
    r.extend_from_slice(&SECURE_EXPIRE.to_le_bytes());
    r.extend_from_slice(&SECURE_NONCE);
    r.extend_from_slice(private);
    r
}

/// The property of the `netcode_token` target. Returns the challenges the server sent.
fn check_netcode_token(data: &[u8]) -> u64 {
    let mut padded = data.to_vec();
    padded.resize(CONNECT_TOKEN_BYTES, 0);
    for bytes in [data, &padded[..]] {
        if let Ok(token) = ConnectToken::from_bytes(bytes) {
            assert_eq!(
                ConnectToken::from_bytes(&token.to_bytes()[..]),
                Ok(token.clone())
            );
            // Only what the key's holder sealed opens: sealing what opened gives back the
            // same bytes.
            if let Ok(p) = token.open_private(&SECURE_KEY) {
                let sealed = p.seal(
                    token.protocol_id,
                    token.expire_timestamp,
                    &token.nonce,
                    &SECURE_KEY,
                );
                assert_eq!(sealed.as_ref(), Ok(&token.private_data));
            }
        }
    }
    let private = seal_private(data);
    if let Ok(p) = PrivateConnectToken::open(
        &private,
        SECURE_PROTOCOL_ID,
        SECURE_EXPIRE,
        &SECURE_NONCE,
        &SECURE_KEY,
    ) {
        let again = p
            .seal(
                SECURE_PROTOCOL_ID,
                SECURE_EXPIRE,
                &SECURE_NONCE,
                &SECURE_KEY,
            )
            .expect("a token that parsed has 1 to 32 addresses");
        assert_eq!(
            PrivateConnectToken::open(
                &again,
                SECURE_PROTOCOL_ID,
                SECURE_EXPIRE,
                &SECURE_NONCE,
                &SECURE_KEY
            ),
            Ok(p)
        );
    }
    let now = Instant::now();
    let config = netcode::ServerConfig::new(SECURE_PROTOCOL_ID, SECURE_KEY, netcode_server_addr());
    let mut server = netcode::Server::new(config, now).expect("a valid config");
    let from = netcode_client_addr();
    let sealed = connection_request(&private);
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    for (i, d) in [data, &sealed[..]].iter().enumerate() {
        server.handle_datagram(now, SECURE_UNIX, from, d);
        let s = server.stats();
        assert_eq!(s.packets_in, i as u64 + 1);
        // A disconnect from an address with no connection is a late goodbye, not a drop.
        let answered = s.challenges_sent + s.late_disconnects;
        assert_eq!(s.dropped.total() + answered, i as u64 + 1, "{s:?}");
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            assert_eq!(t.destination, from);
            assert!(
                t.len <= d.len(),
                "{} byte reply to {} bytes",
                t.len,
                d.len()
            );
        }
    }
    assert_eq!(server.client_count(), 0);
    server.stats().challenges_sent
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The property of the `netcode_token` target: real tokens and real private plaintexts,
    /// mutated, and random bytes.
    #[test]
    fn netcode_token_parses_or_refuses_and_requests_are_counted(
        which in 0u8..3,
        m in mutation(),
        random in proptest::collection::vec(any::<u8>(), 0..2100),
    ) {
        let mut bytes = match which {
            0 => mint(1, netcode_server_addr()),
            1 => private_plaintext(1),
            _ => random,
        };
        mutate(&mut bytes, &m);
        check_netcode_token(&bytes);
    }
}

/// An unmutated private plaintext for this server goes through: the sealed path is live.
#[test]
fn netcode_token_twin_reaches_a_challenge() {
    assert_eq!(check_netcode_token(&private_plaintext(1)), 1);
}

/// A netcode server and client connected with a fixed key: the `netcode_packet` target.
struct NetcodePair {
    now: Instant,
    server: netcode::Server,
    client: netcode::Client,
    /// Every packet delivered so far: (to the server?, bytes).
    delivered: Vec<(bool, Vec<u8>)>,
}

impl NetcodePair {
    fn connected(token: &[u8]) -> Self {
        let now = Instant::now();
        let config =
            netcode::ServerConfig::new(SECURE_PROTOCOL_ID, SECURE_KEY, netcode_server_addr());
        let mut pair = Self {
            now,
            server: netcode::Server::new(config, now).expect("a valid config"),
            client: netcode::Client::new(now, token).expect("a valid token"),
            delivered: Vec::new(),
        };
        for _ in 0..50 {
            pair.exchange();
            if pair.client.is_connected() {
                break;
            }
            pair.now += Duration::from_millis(10);
        }
        assert!(pair.client.is_connected());
        while pair.server.poll_event().is_some() {}
        while pair.client.poll_event().is_some() {}
        pair.delivered.clear();
        pair
    }

    /// Timers, then everything both sides want to send, delivered; all of it is accepted.
    fn exchange(&mut self) {
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        let dropped = self.drops();
        while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
            let d = buf[..t.len].to_vec();
            self.server
                .handle_datagram(self.now, SECURE_UNIX, netcode_client_addr(), &d);
            self.delivered.push((true, d));
        }
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, netcode_client_addr());
            let d = buf[..t.len].to_vec();
            self.client
                .handle_datagram(self.now, netcode_server_addr(), &d);
            self.delivered.push((false, d));
        }
        assert_eq!(self.drops(), dropped, "real packets are accepted");
    }

    fn drops(&self) -> (u64, u64) {
        (
            self.server.stats().dropped.total(),
            self.client.stats().dropped.total(),
        )
    }

    /// `d` to the server from `from`: dropped once (or, from a stranger, a late goodbye).
    fn forged_to_server(&mut self, from: SocketAddr, d: &[u8]) {
        let before = self.server.stats();
        self.server.handle_datagram(self.now, SECURE_UNIX, from, d);
        let after = self.server.stats();
        assert_eq!(after.packets_in, before.packets_in + 1);
        let counted = (after.dropped.total() - before.dropped.total())
            + (after.late_disconnects - before.late_disconnects);
        assert_eq!(counted, 1, "{before:?} {after:?}");
        assert!(
            self.server.poll_event().is_none(),
            "a forgery made an event"
        );
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            // Only the connection's own keep-alives may be due.
            assert_eq!(t.destination, netcode_client_addr());
            let reply = buf[..t.len].to_vec();
            self.client
                .handle_datagram(self.now, netcode_server_addr(), &reply);
        }
    }

    /// `d` to the client from `from`: dropped once.
    fn forged_to_client(&mut self, from: SocketAddr, d: &[u8]) {
        let before = self.client.stats();
        self.client.handle_datagram(self.now, from, d);
        let after = self.client.stats();
        assert_eq!(after.packets_in, before.packets_in + 1);
        assert_eq!(after.dropped.total(), before.dropped.total() + 1);
        assert!(
            self.client.poll_event().is_none(),
            "a forgery made an event"
        );
    }
}

/// The `netcode_packet` target's script.
fn run_netcode_packet_script(token: &[u8], script: &[(u8, Vec<u8>)]) {
    let mut pair = NetcodePair::connected(token);
    let index = netcode::ClientIndex(pair.client.client_index().expect("connected"));
    for (selector, bytes) in script {
        let selector = *selector;
        let payload = &bytes[..bytes.len().min(netcode::MAX_PAYLOAD_BYTES)];
        match selector % 8 {
            0 => pair.forged_to_server(netcode_client_addr(), bytes),
            1 => pair.forged_to_client(netcode_server_addr(), bytes),
            2 => {
                let stranger = SocketAddr::from(([10, 0, 0, 9], u16::from(selector)));
                pair.forged_to_server(stranger, bytes);
                pair.forged_to_client(stranger, bytes);
            }
            3 if !payload.is_empty() => {
                pair.client
                    .send_payload(pair.now, payload)
                    .expect("connected");
                pair.exchange();
                let got = std::iter::from_fn(|| pair.server.poll_event()).find_map(|e| match e {
                    netcode::ServerEvent::Payload { payload, .. } => Some(payload),
                    _ => None,
                });
                assert_eq!(got.as_deref(), Some(payload));
            }
            4 if !payload.is_empty() => {
                pair.server
                    .send_payload(pair.now, index, payload)
                    .expect("connected");
                pair.exchange();
                let got = std::iter::from_fn(|| pair.client.poll_event()).find_map(|e| match e {
                    netcode::ClientEvent::Payload { payload, .. } => Some(payload),
                    _ => None,
                });
                assert_eq!(got.as_deref(), Some(payload));
            }
            5 | 6 if !pair.delivered.is_empty() => {
                // A packet already delivered, replayed as is (5) or with one bit flipped (6).
                let pick = usize::from(selector >> 3) % pair.delivered.len();
                let (to_server, mut d) = pair.delivered[pick].clone();
                if selector % 8 == 6 {
                    let at = bytes.first().copied().unwrap_or(0) as usize
                        | (bytes.get(1).copied().unwrap_or(0) as usize) << 8;
                    let bit = at % (d.len() * 8);
                    d[bit / 8] ^= 1 << (bit % 8);
                }
                if to_server {
                    pair.forged_to_server(netcode_client_addr(), &d);
                } else {
                    pair.forged_to_client(netcode_server_addr(), &d);
                }
            }
            _ => {
                pair.now += Duration::from_millis(u64::from(selector >> 3));
                pair.exchange();
            }
        }
        assert!(pair.client.is_connected(), "the session ended");
        assert_eq!(pair.server.client_count(), 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The property of the `netcode_packet` target.
    #[test]
    fn netcode_packet_accepts_only_real_packets_and_counts_every_drop(
        script in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..1400)),
            1..32,
        ),
    ) {
        thread_local! {
            static TOKEN: Vec<u8> = mint(7, netcode_server_addr());
        }
        TOKEN.with(|t| run_netcode_packet_script(t, &script));
    }
}

fn secure_sim_server_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7777))
}

fn raw_netcode_peer_addr() -> SocketAddr {
    fuzz_addr(9000)
}

/// Hand the peer what the server sent it, and send the server what the peer has to send.
fn pump_netcode_peer(sim: &mut Sim, peer: &mut netcode::Client) {
    let now = sim.now;
    let (mine, rest) = std::mem::take(&mut sim.stray)
        .into_iter()
        .partition(|(to, _)| *to == raw_netcode_peer_addr());
    sim.stray = rest;
    for (_, d) in mine {
        peer.handle_datagram(now, secure_sim_server_addr(), &d);
    }
    peer.handle_timeout(now);
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    while let Some(t) = peer.poll_transmit(now, &mut buf) {
        let d = buf[..t.len].to_vec();
        sim.inject_to_server(raw_netcode_peer_addr(), &d);
    }
    while peer.poll_event().is_some() {}
}

/// The `secure_server_datagram` target: a secure server, a connected secure sim client, a
/// netcode peer connected by hand, and a script of datagrams from the client's address,
/// strangers, and sealed by the peer (raw, or wrapped in a connected packet).
fn run_secure_server_script(script: &[(u8, Vec<u8>)]) {
    let config = ServerConfig {
        security: Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(
                SECURE_PROTOCOL_ID,
                SECURE_KEY,
                secure_sim_server_addr(),
            ),
            unix_secs_at_start: SECURE_UNIX,
        }),
        ..ServerConfig::default()
    };
    let mut sim = Sim::with_server(
        |now| snapsync::Server::new(config, now, 1).expect("valid config"),
        1,
    );
    let token = mint(1, secure_sim_server_addr());
    sim.add_client_with(|server, now, seed| {
        let config = ClientConfig {
            security: ClientSecurity::Secure { token },
            ..ClientConfig::default()
        };
        snapsync::Client::new(config, server, now, seed).expect("a valid token")
    });
    let mut peer =
        netcode::Client::new(sim.now, &mint(2, secure_sim_server_addr())).expect("a valid token");
    for _ in 0..100 {
        pump_netcode_peer(&mut sim, &mut peer);
        if peer.is_connected() && sim.clients[0].client.is_connected() {
            break;
        }
        sim.run_for(Duration::from_millis(10));
    }
    assert!(sim.clients[0].client.is_connected() && peer.is_connected());
    let client_addr = sim.clients[0].addr;
    let mut sequence = Sequence(0);
    for (selector, bytes) in script {
        let selector = *selector;
        match selector % 4 {
            0 => sim.inject_to_server(client_addr, bytes),
            1 => {
                let stranger = fuzz_addr(40_000 + u16::from(selector >> 2) % 4);
                sim.stray.retain(|(to, _)| *to == raw_netcode_peer_addr());
                sim.inject_to_server(stranger, bytes);
                for (to, reply) in sim
                    .stray
                    .iter()
                    .filter(|(to, _)| *to != raw_netcode_peer_addr())
                {
                    assert_eq!(*to, stranger);
                    assert!(reply.len() <= bytes.len(), "amplifying reply");
                }
            }
            2 => {
                let payload = if selector & 4 == 0 {
                    bytes[..bytes.len().min(netcode::MAX_PAYLOAD_BYTES)].to_vec()
                } else {
                    sequence = sequence.next();
                    let room = netcode::MAX_PAYLOAD_BYTES - Packet::CONNECTED_HEADER_BYTES;
                    encode(&Packet::Payload {
                        header: ConnectedHeader {
                            salt: 0,
                            sequence,
                            ack: Sequence(u16::from(selector)),
                            ack_bits: u32::from(selector).wrapping_mul(0x0101_0101),
                            ack_delay: 0,
                        },
                        payload: &bytes[..bytes.len().min(room)],
                    })
                };
                if peer.send_payload(sim.now, &payload).is_ok() {
                    pump_netcode_peer(&mut sim, &mut peer);
                }
            }
            _ => {
                sim.run_for(Duration::from_millis(u64::from(selector >> 2)));
                pump_netcode_peer(&mut sim, &mut peer);
            }
        }
        assert!(sim.server.client_count() <= 2);
        // Checked on the server: a client whose connection was dropped there would only
        // notice at its timeout.
        let server = &sim.server;
        assert!(
            server
                .clients()
                .any(|id| server.client_addr(id) == Some(client_addr)),
            "garbage ended the real client's connection on the server"
        );
    }
    sim.run_for(Duration::from_millis(200));
    assert!(
        sim.clients[0].client.is_connected(),
        "garbage ended the real session"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The property of the `secure_server_datagram` target.
    #[test]
    fn secure_server_datagram_script_never_breaks_the_server(
        script in proptest::collection::vec(
            (any::<u8>(), prop_oneof![
                packet(),
                payload_body(),
                proptest::collection::vec(any::<u8>(), 0..1400),
            ]),
            1..24,
        ),
    ) {
        run_secure_server_script(&script);
    }
}
