//! The cost of encryption per packet in secure mode (netcode 1.02: ChaCha20-Poly1305 on every
//! packet, a replay window on receipt), against the plain connection's packet of the same
//! size, for a 1100-byte and a 200-byte payload.
//!
//! Run: `cargo bench -p benches --bench netcode`. Groups, all in memory (no sockets):
//!
//! - `netcode_packet/seal_open`: a connected netcode `Server` and `Client`; one iteration is
//!   `send_payload`, `poll_transmit` (the seal), and the client's `handle_datagram` (replay
//!   check, open) with its event drained.
//! - `plain_packet/encode_decode`: the plain packet of the same payload, `Packet::encode`
//!   then `Packet::decode` (header and CRC32): what the seal and open stand in for.
//! - `connection_packet/{plain,secure}`: the whole engine per datagram through the public
//!   API, a connected `snapsync::Server` and `Client`: `send_datagram`, `poll_transmit`,
//!   `handle_datagram`, the events drained. The difference is what secure mode adds per
//!   packet.
//! - `netcode_request/{replayed_token,poll_timeout}/N`: a server of N slots (1 and 1,024)
//!   whose token history (8 × N) is full of live tokens and whose handshakes (4 × N) are all
//!   open, as under a flood of valid requests. `replayed_token` is one request whose token
//!   another address used (opened, checked against the connected ids and the history,
//!   dropped) and the `poll_timeout` a driver asks after every datagram; `poll_timeout` is
//!   that call alone. Equal figures at 1 and 1,024 slots say the work does not grow with
//!   the server.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snapsync::connection::{ClientSecurity, SecureServerConfig, Security};
use snapsync::netcode::{self, ClientIndex, Key, TokenSettings, generate_connect_token};
use snapsync::packet::{ConnectedHeader, MAX_PACKET_BYTES, Packet};
use snapsync::sim::Sim;
use snapsync::{Client, ClientConfig, ClientId, Sequence, Server, ServerConfig};

/// A snapshot part near the MTU, and a small update.
const PAYLOAD_BYTES: [usize; 2] = [1100, 200];
const PROTOCOL_ID: u64 = 0x5EC0_BE4C;
const KEY: Key = [0x42; 32];
const UNIX: u64 = 1_800_000_000;

fn token(client_id: u64, server: SocketAddr) -> Vec<u8> {
    let settings = TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id,
        server_addresses: vec![server],
        expire_seconds: 600,
        timeout_seconds: 10,
        user_data: [0; netcode::USER_DATA_BYTES],
    };
    generate_connect_token(UNIX, &settings, &KEY)
        .expect("one server address")
        .to_bytes()
        .to_vec()
}

/// A netcode server and client, connected by exchanging their datagrams in memory.
struct NetcodePair {
    now: Instant,
    server: netcode::Server,
    client: netcode::Client,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    index: ClientIndex,
    buf: Vec<u8>,
}

impl NetcodePair {
    fn connected() -> Self {
        let server_addr = SocketAddr::from(([10, 0, 0, 1], 40_000));
        let client_addr = SocketAddr::from(([10, 0, 0, 2], 50_000));
        let now = Instant::now();
        let config = netcode::ServerConfig::new(PROTOCOL_ID, KEY, server_addr);
        let mut server = netcode::Server::new(config, now).expect("a valid config");
        let mut client = netcode::Client::new(now, &token(1, server_addr)).expect("a valid token");
        let mut buf = vec![0u8; netcode::MAX_PACKET_BYTES];
        let mut now = now;
        while !client.is_connected() {
            while let Some(t) = client.poll_transmit(now, &mut buf) {
                server.handle_datagram(now, UNIX, client_addr, &buf[..t.len]);
            }
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, server_addr, &buf[..t.len]);
            }
            now += Duration::from_millis(10);
        }
        let index = ClientIndex(client.client_index().expect("connected"));
        // Until a packet from the client confirms its slot, the server sends a keep-alive
        // before every payload; confirm it now so every measured payload is one packet.
        client.send_payload(now, &[0]).expect("connected");
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, UNIX, client_addr, &buf[..t.len]);
        }
        server
            .send_payload(now, index, &[0])
            .expect("a connected client");
        let mut packets = 0;
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_datagram(now, server_addr, &buf[..t.len]);
            packets += 1;
        }
        assert_eq!(packets, 1, "one packet per payload");
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
        Self {
            now,
            server,
            client,
            server_addr,
            client_addr,
            index,
            buf,
        }
    }

    /// One payload from the server to the client: sealed, sent, opened, handed out.
    fn seal_open(&mut self, payload: &[u8]) {
        self.server
            .send_payload(self.now, self.index, payload)
            .expect("a connected client");
        while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
            debug_assert_eq!(t.destination, self.client_addr);
            self.client
                .handle_datagram(self.now, self.server_addr, &self.buf[..t.len]);
        }
        while let Some(e) = self.client.poll_event() {
            black_box(e);
        }
    }
}

fn netcode_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("netcode_packet");
    for size in PAYLOAD_BYTES {
        let payload = vec![0xA5u8; size];
        let mut pair = NetcodePair::connected();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal_open", size), &payload, |b, p| {
            b.iter(|| pair.seal_open(black_box(p)));
        });
        // Every measured packet arrived and none was dropped.
        assert_eq!(pair.client.stats().dropped.total(), 0);
    }
    group.finish();
}

fn plain_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("plain_packet");
    for size in PAYLOAD_BYTES {
        let payload = vec![0xA5u8; size];
        let mut out = vec![0u8; MAX_PACKET_BYTES];
        let mut sequence = Sequence(0);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_decode", size), &payload, |b, p| {
            b.iter(|| {
                sequence = sequence.next();
                let packet = Packet::Payload {
                    header: ConnectedHeader {
                        salt: 0x5eed_1234,
                        sequence,
                        ack: Sequence(sequence.0.wrapping_sub(3)),
                        ack_bits: 0xffff_fff7,
                        ack_delay: 40,
                    },
                    payload: black_box(p),
                };
                // Payloads of at most 1100 bytes fit the packet.
                let len = packet.encode(&mut out).expect("fits MAX_PACKET_BYTES");
                black_box(Packet::decode(&out[..len]).is_ok())
            });
        });
    }
    group.finish();
}

/// A connected `Server` and `Client` in the simulated network; the id of the client.
fn connection_pair(secure: bool) -> (Sim, ClientId) {
    let server_addr = SocketAddr::from(([127, 0, 0, 1], 7777));
    let config = if secure {
        ServerConfig {
            security: Security::Secure(SecureServerConfig {
                netcode: netcode::ServerConfig::new(PROTOCOL_ID, KEY, server_addr),
                unix_secs_at_start: UNIX,
            }),
            ..ServerConfig::default()
        }
    } else {
        ServerConfig::default()
    };
    let mut sim = Sim::with_server(|now| Server::new(config, now, 1).expect("valid config"), 1);
    assert_eq!(sim.server_addr, server_addr);
    sim.add_client_with(|server, now, seed| {
        let config = if secure {
            ClientConfig {
                security: ClientSecurity::Secure {
                    token: token(1, server),
                },
                ..ClientConfig::default()
            }
        } else {
            ClientConfig::default()
        };
        Client::new(config, server, now, seed).expect("a valid config")
    });
    assert!(sim.run_until_cond(Duration::from_secs(2), |s| {
        s.clients[0].client.is_connected()
    }));
    sim.run_for(Duration::from_millis(200));
    let id = sim.client_id(0).expect("connected");
    sim.server_events.clear();
    sim.clients[0].events.clear();
    (sim, id)
}

fn connection_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("connection_packet");
    for secure in [false, true] {
        let mode = if secure { "secure" } else { "plain" };
        for size in PAYLOAD_BYTES {
            let payload = vec![0xA5u8; size];
            let (mut sim, id) = connection_pair(secure);
            let now = sim.now;
            let from = sim.server_addr;
            let mut buf = vec![0u8; MAX_PACKET_BYTES];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(mode, size), &payload, |b, p| {
                b.iter(|| {
                    sim.server
                        .send_datagram(now, id, black_box(p))
                        .expect("a connected client");
                    while let Some(t) = sim.server.poll_transmit(now, &mut buf) {
                        sim.clients[0]
                            .client
                            .handle_datagram(now, from, &buf[..t.len]);
                    }
                    while let Some(e) = sim.clients[0].client.poll_event() {
                        black_box(e);
                    }
                    while let Some(e) = sim.server.poll_event() {
                        black_box(e);
                    }
                });
            });
            assert!(sim.clients[0].client.is_connected());
        }
    }
    group.finish();
}

/// A connection request for a fresh token of `client_id`, as a client sends it.
fn request(client_id: u64, server: SocketAddr) -> Vec<u8> {
    let now = Instant::now();
    let mut client = netcode::Client::new(now, &token(client_id, server)).expect("a valid token");
    let mut buf = vec![0u8; netcode::MAX_PACKET_BYTES];
    let t = client.poll_transmit(now, &mut buf).expect("a request");
    buf[..t.len].to_vec()
}

/// A server of `slots` slots with its token history full and every handshake open, and a
/// request whose token an address in that history used.
fn flooded_server(slots: usize) -> (netcode::Server, Instant, Vec<u8>) {
    let server_addr = SocketAddr::from(([10, 0, 0, 1], 40_000));
    let config = netcode::ServerConfig::new(PROTOCOL_ID, KEY, server_addr).with_max_clients(slots);
    let (history, handshakes) = (config.token_history, config.max_handshakes);
    let now = Instant::now();
    let mut server = netcode::Server::new(config, now).expect("a valid config");
    let mut buf = vec![0u8; netcode::MAX_PACKET_BYTES];
    let address = |i: usize| SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 50_000));
    let mut replayed = Vec::new();
    for i in 0..history {
        let r = request(1_000 + i as u64, server_addr);
        server.handle_datagram(now, UNIX, address(i), &r);
        while server.poll_transmit(now, &mut buf).is_some() {}
        // The newest: an attacker replays what it just captured, and a list kept in
        // order of arrival would search all of it.
        if i == history - 1 {
            replayed = r;
        }
    }
    let stats = server.stats();
    assert_eq!(
        stats.challenges_sent as usize, handshakes,
        "every handshake open"
    );
    assert_eq!(stats.dropped.handshakes_full as usize, history - handshakes);
    (server, now, replayed)
}

fn netcode_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("netcode_request");
    let from = SocketAddr::from(([10, 9, 9, 9], 50_000));
    for slots in [1, netcode::MAX_CLIENTS] {
        let (mut server, now, replayed) = flooded_server(slots);
        group.bench_with_input(BenchmarkId::new("replayed_token", slots), &(), |b, _| {
            b.iter(|| {
                server.handle_datagram(now, UNIX, from, black_box(&replayed));
                black_box(server.poll_timeout())
            })
        });
        let reused = server.stats().dropped.token_reused;
        assert!(reused > 0, "the replay was refused as reused");
        group.bench_with_input(BenchmarkId::new("poll_timeout", slots), &(), |b, _| {
            b.iter(|| black_box(server.poll_timeout()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = netcode_packet, plain_packet, connection_packet, netcode_request
}
criterion_main!(benches);
