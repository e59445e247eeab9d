//! Property-test twins of the cargo-fuzz targets in `fuzz/`, so CI covers the same entry
//! points without a nightly toolchain, plus the crashes fuzzing found, as regressions.
//!
//! The checks themselves are the targets' own, in `snapsync::fuzzing`: a twin differs from
//! its target only in where the input comes from. Random bytes rarely pass a CRC, so the
//! strategies start from valid encodings and mutate them (truncate, extend, flip bits,
//! overwrite), which reaches the parsers behind the check, and frame them as the target
//! reads its input ([`fuzzing::sections`], [`fuzzing::steps`]).

use std::net::IpAddr;
use std::ops::Range;
use std::sync::LazyLock;

use glam::{Quat, Vec3};
use proptest::prelude::*;
use snapsync::Sequence;
use snapsync::fuzzing;
use snapsync::netcode;
use snapsync::packet::{
    ConnectedHeader, DenyReason, DisconnectReasonCode, HeaderError, MAX_PACKET_BYTES, Packet,
};
use snapsync::snapshot::{
    EntityId, EntityState, QuantizedWorld, SenderConfig, SnapshotSender, Tick, Transform, World,
};

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
        fuzzing::packet_decode(&bytes);
    }

    #[test]
    fn packet_decode_survives_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        fuzzing::packet_decode(&bytes);
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
    fuzzing::packet_decode(&crash);
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

    /// The `channel_read` target on sections, every third one mutated.
    #[test]
    fn channel_read_counts_every_rejection_and_bounds_messages(
        sections in proptest::collection::vec((section(), mutation()), 1..12),
    ) {
        let sections = sections.into_iter().enumerate().map(|(i, (mut section, m))| {
            if i % 3 == 2 {
                mutate(&mut section, &m);
            }
            section
        });
        fuzzing::channel_read(&fuzzing::sections(sections));
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

    /// The `snapshot_read` target on mutated real parts.
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
        let stats = fuzzing::snapshot_read_stats(&fuzzing::sections(&parts));
        if mutations.is_empty() {
            // Untouched parts all apply.
            prop_assert_eq!(stats.ticks_completed, 4);
        }
    }
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

/// A script for a target that reads steps: selector bytes, each with the bytes its step
/// uses, framed as the fuzzer's input (so a failing case replays with the target itself).
fn script(
    bytes: impl Strategy<Value = Vec<u8>>,
    steps: Range<usize>,
) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<u8>(), bytes), steps).prop_map(fuzzing::steps)
}

/// What the server targets are sent: valid packets, bodies for the raw peer, random bytes.
fn datagram(random_bytes: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        packet(),
        payload_body(),
        proptest::collection::vec(any::<u8>(), 0..random_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The `server_datagram` target.
    #[test]
    fn server_datagram_script_never_breaks_the_server(input in script(datagram(1500), 1..24)) {
        fuzzing::server_datagram(&input);
    }
}

/// An input frame as the replication client encodes one (bincode's standard config: a
/// bool, then varints, each below 251 here so one byte each): whether it asks for a full
/// snapshot, the first input's tick, then each input with its length.
fn input_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        0u8..251,
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..8),
    )
        .prop_map(|(resync, first_tick, inputs)| {
            let mut b = vec![u8::from(resync), first_tick, inputs.len() as u8];
            for input in inputs {
                b.push(input.len() as u8);
                b.extend_from_slice(&input);
            }
            b
        })
}

/// Input frames that decode but break a limit of the server's default config: more than
/// 64 inputs, or an input longer than 256 bytes (its length a varint of three bytes).
fn limit_breaking_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (65u8..80).prop_map(|n| {
            let mut b = vec![0, 0, n];
            b.extend(std::iter::repeat_n(0, usize::from(n)));
            b
        }),
        (257u16..300).prop_map(|len| {
            let mut b = vec![0, 0, 1, 251];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend(std::iter::repeat_n(7, usize::from(len)));
            b
        }),
    ]
}

/// What the `replication_datagram` target's steps carry: input frames (as sent, beyond a
/// limit, or mutated), control messages (the one valid one is `[0]`, the client's "ready"), channel
/// sections, bodies and random bytes for the raw peer.
fn replication_step_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        input_frame(),
        limit_breaking_frame(),
        (input_frame(), mutation()).prop_map(|(mut b, m)| {
            mutate(&mut b, &m);
            b
        }),
        proptest::collection::vec(any::<u8>(), 0..4),
        payload_body(),
        proptest::collection::vec(any::<u8>(), 0..600),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The `replication_datagram` target.
    #[test]
    fn replication_datagram_counts_every_bad_frame_and_message_once(
        input in script(replication_step_bytes(), 1..32),
    ) {
        fuzzing::replication_datagram(&input);
    }
}

/// The real parts of [`real_parts`]`(4)`, made once: their quantization is the default
/// config's, which the default welcome announces.
static CLIENT_PARTS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| real_parts(4));

/// A part as a datagram from a replication server: the input-ack prefix (one byte, a code
/// below 128), then the part.
fn part_datagram(prefix: u8, part: &[u8]) -> Vec<u8> {
    let mut b = vec![prefix];
    b.extend_from_slice(part);
    b
}

/// One step of the `replication_client` target with the bytes its selector reads: real
/// parts (as sent, or mutated), control messages (the default welcome as sent or mutated,
/// "owned" messages, random bytes), raw bodies, and time passing.
fn client_step() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let part = (
        any::<prop::sample::Index>(),
        0u8..128,
        proptest::option::of(mutation()),
    )
        .prop_map(|(which, prefix, m)| {
            let mut b = part_datagram(prefix, &CLIENT_PARTS[which.index(CLIENT_PARTS.len())]);
            if let Some(m) = m {
                mutate(&mut b, &m);
            }
            b
        });
    let control = prop_oneof![
        Just(fuzzing::default_welcome()),
        mutation().prop_map(|m| {
            let mut b = fuzzing::default_welcome();
            mutate(&mut b, &m);
            b
        }),
        // `ControlMsg::Owned`: variant 1, then an option of a varint id.
        (0u8..2, 0u8..40).prop_map(|(some, id)| vec![1, some, id]),
        proptest::collection::vec(any::<u8>(), 0..48),
    ];
    prop_oneof![
        (0u8..64, part).prop_map(|(k, b)| (k * 4, b)),
        (0u8..64, control).prop_map(|(k, b)| (k * 4 + 1, b)),
        (0u8..64, payload_body()).prop_map(|(k, b)| (k * 4 + 2, b)),
        (0u8..64).prop_map(|k| (k * 4 + 3, Vec::new())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The `replication_client` target.
    #[test]
    fn replication_client_reads_or_rejects_every_part_and_counts_bad_control(
        steps in proptest::collection::vec(client_step(), 1..32),
    ) {
        fuzzing::replication_client(&fuzzing::steps(steps));
    }
}

/// The twin's pipeline is live: after the default welcome (the first selector is odd),
/// untouched parts all arrive, so the mutated ones above reach the snapshot decoder.
#[test]
fn replication_client_takes_untouched_parts() {
    let mut steps = vec![(3u8 + 4 * 4, Vec::new())];
    for part in CLIENT_PARTS.iter() {
        steps.push((0, part_datagram(0, part)));
        steps.push((3 + 4 * 16, Vec::new()));
    }
    let stats = fuzzing::replication_client_stats(&fuzzing::steps(steps));
    assert_eq!(stats.parts_rejected, 0, "{stats:?}");
    assert_eq!(stats.snapshots_received, 4, "{stats:?}");
}

// Secure mode (netcode 1.02): the twins of `netcode_token`, `netcode_packet` and
// `secure_server_datagram`.

/// A private token's plaintext naming the `netcode_token` target's server, as a backend
/// writes it.
fn private_plaintext(client_id: u64) -> Vec<u8> {
    let server = fuzzing::NETCODE_SERVER_ADDR;
    let IpAddr::V4(ip) = server.ip() else {
        panic!("the target's server has an IPv4 address");
    };
    let mut p = client_id.to_le_bytes().to_vec();
    p.extend_from_slice(&5u32.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(1); // IPv4
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&server.port().to_le_bytes());
    p.extend_from_slice(&[1; 32]);
    p.extend_from_slice(&[2; 32]);
    p.extend_from_slice(&[3; netcode::USER_DATA_BYTES]);
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The `netcode_token` target: real tokens and real private plaintexts, mutated, and
    /// random bytes.
    #[test]
    fn netcode_token_parses_or_refuses_and_requests_are_counted(
        which in 0u8..3,
        m in mutation(),
        random in proptest::collection::vec(any::<u8>(), 0..2100),
    ) {
        let mut bytes = match which {
            0 => fuzzing::connect_token(1, fuzzing::NETCODE_SERVER_ADDR),
            1 => private_plaintext(1),
            _ => random,
        };
        mutate(&mut bytes, &m);
        fuzzing::netcode_token(&bytes);
    }
}

/// An unmutated private plaintext for this server goes through: the sealed path is live.
#[test]
fn netcode_token_twin_reaches_a_challenge() {
    let stats = fuzzing::netcode_token_stats(&private_plaintext(1));
    assert_eq!(stats.challenges_sent, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The `netcode_packet` target.
    #[test]
    fn netcode_packet_accepts_only_real_packets_and_counts_every_drop(
        input in script(proptest::collection::vec(any::<u8>(), 0..1400), 1..32),
    ) {
        fuzzing::netcode_packet(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The `secure_server_datagram` target.
    #[test]
    fn secure_server_datagram_script_never_breaks_the_server(
        input in script(datagram(1400), 1..24),
    ) {
        fuzzing::secure_server_datagram(&input);
    }
}
