//! A secure `Server` (netcode 1.02 underneath) with a connected secure client (through the
//! simulated network) and a netcode peer connected by hand, fed arbitrary datagrams: from the
//! client's address, from strangers, and sealed into the peer's netcode payloads (as they
//! come, or wrapped in a connected packet) so the engine's parsers behind the decryption are
//! reached. Never panics, never holds more than those two connections, never answers a
//! stranger with more bytes than it sent, and the real client stays connected.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use snapsync::connection::{ClientSecurity, SecureServerConfig, Security};
use snapsync::netcode::{self, Key, TokenSettings, generate_connect_token};
use snapsync::packet::{ConnectedHeader, MAX_PACKET_BYTES, Packet};
use snapsync::sim::Sim;
use snapsync::{Client, ClientConfig, Sequence, Server, ServerConfig};

const KEY: Key = [0x42; 32];
const PROTOCOL_ID: u64 = 0x5EC0_F022;
const UNIX: u64 = 1_800_000_000;

fn server_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7777))
}

fn peer_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 9000))
}

/// Tokens for client ids 1 (the simulated client) and 2 (the hand-driven peer), minted once.
fn tokens() -> &'static [Vec<u8>; 2] {
    static TOKENS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    TOKENS.get_or_init(|| {
        [1, 2].map(|client_id| {
            let settings = TokenSettings {
                protocol_id: PROTOCOL_ID,
                client_id,
                server_addresses: vec![server_addr()],
                expire_seconds: 600,
                timeout_seconds: 5,
                user_data: [0; netcode::USER_DATA_BYTES],
            };
            generate_connect_token(UNIX, &settings, &KEY)
                .expect("one address")
                .to_bytes()
                .to_vec()
        })
    })
}

/// Hand the peer what the server sent it, and send the server what the peer has to send.
fn pump_peer(sim: &mut Sim, peer: &mut netcode::Client) {
    let now = sim.now;
    let (mine, rest) = std::mem::take(&mut sim.stray)
        .into_iter()
        .partition(|(to, _)| *to == peer_addr());
    sim.stray = rest;
    for (_, d) in mine {
        peer.handle_datagram(now, server_addr(), &d);
    }
    peer.handle_timeout(now);
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    while let Some(t) = peer.poll_transmit(now, &mut buf) {
        let d = buf[..t.len].to_vec();
        sim.inject_to_server(peer_addr(), &d);
    }
    while peer.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let config = ServerConfig {
        security: Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(PROTOCOL_ID, KEY, server_addr()),
            unix_secs_at_start: UNIX,
        }),
        ..ServerConfig::default()
    };
    let mut sim = Sim::with_server(|now| Server::new(config, now, 1).expect("valid config"), 1);
    let token = tokens()[0].clone();
    sim.add_client_with(|server, now, seed| {
        let config = ClientConfig {
            security: ClientSecurity::Secure { token },
            ..ClientConfig::default()
        };
        Client::new(config, server, now, seed).expect("a valid token")
    });
    let mut peer = netcode::Client::new(sim.now, &tokens()[1]).expect("a valid token");
    for _ in 0..100 {
        pump_peer(&mut sim, &mut peer);
        if peer.is_connected() && sim.clients[0].client.is_connected() {
            break;
        }
        sim.run_for(Duration::from_millis(10));
    }
    assert!(sim.clients[0].client.is_connected() && peer.is_connected());
    let client_addr = sim.clients[0].addr;
    let mut sequence = Sequence(0);
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut rest = data;
    while let Some((&selector, tail)) = rest.split_first() {
        let Some((len, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        match selector % 4 {
            0 => sim.inject_to_server(client_addr, bytes),
            1 => {
                let stranger =
                    SocketAddr::from(([10, 0, 0, 2], 40_000 + u16::from(selector >> 2) % 4));
                sim.stray.retain(|(to, _)| *to == peer_addr());
                sim.inject_to_server(stranger, bytes);
                for (to, reply) in sim.stray.iter().filter(|(to, _)| *to != peer_addr()) {
                    assert_eq!(*to, stranger);
                    assert!(
                        reply.len() <= bytes.len(),
                        "{} byte reply to a {} byte request",
                        reply.len(),
                        bytes.len()
                    );
                }
            }
            2 => {
                // Sealed by the peer: the engine's packet parser is what refuses or takes it.
                let payload = if selector & 4 == 0 {
                    bytes[..bytes.len().min(netcode::MAX_PAYLOAD_BYTES)].to_vec()
                } else {
                    sequence = sequence.next();
                    let room = netcode::MAX_PAYLOAD_BYTES - Packet::CONNECTED_HEADER_BYTES;
                    let packet = Packet::Payload {
                        header: ConnectedHeader {
                            salt: 0,
                            sequence,
                            ack: Sequence(u16::from(selector)),
                            ack_bits: u32::from(selector).wrapping_mul(0x0101_0101),
                            ack_delay: 0,
                        },
                        payload: &bytes[..bytes.len().min(room)],
                    };
                    let n = packet.encode(&mut buf).expect("fits one packet");
                    buf[..n].to_vec()
                };
                if peer.send_payload(sim.now, &payload).is_ok() {
                    pump_peer(&mut sim, &mut peer);
                }
            }
            _ => {
                sim.run_for(Duration::from_millis(u64::from(selector >> 2)));
                pump_peer(&mut sim, &mut peer);
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
});
