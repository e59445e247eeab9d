//! The `secure_server_datagram` target.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use super::backend::{KEY, PROTOCOL_ID, UNIX, connect_token};
use super::input::split_steps;
use super::sim_server::{connected_packet, from_stranger};
use crate::connection::{ClientSecurity, SecureServerConfig, Security};
use crate::netcode;
use crate::packet::{MAX_PACKET_BYTES, Packet};
use crate::sim::Sim;
use crate::{Client, ClientConfig, Sequence, Server, ServerConfig};

const SERVER_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7777));
const PEER_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 9000));

/// Tokens for client ids 1 (the simulated client) and 2 (the hand-driven peer), minted once:
/// the fuzzer sees the same keys on every input.
fn tokens() -> &'static [Vec<u8>; 2] {
    static TOKENS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    TOKENS.get_or_init(|| [1, 2].map(|client_id| connect_token(client_id, SERVER_ADDR)))
}

/// Hand the peer what the server sent it, and send the server what the peer has to send.
fn pump_peer(sim: &mut Sim, peer: &mut netcode::Client) {
    let now = sim.now;
    let (mine, rest) = std::mem::take(&mut sim.stray)
        .into_iter()
        .partition(|(to, _)| *to == PEER_ADDR);
    sim.stray = rest;
    for (_, d) in mine {
        peer.handle_datagram(now, SERVER_ADDR, &d);
    }
    peer.handle_timeout(now);
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    while let Some(t) = peer.poll_transmit(now, &mut buf) {
        let d = buf[..t.len].to_vec();
        sim.inject_to_server(PEER_ADDR, &d);
    }
    while peer.poll_event().is_some() {}
}

/// A secure `Server` (netcode 1.02 underneath) with a connected secure client (through the
/// simulated network) and a netcode peer connected by hand, fed the input's steps: by
/// selector, a datagram from the client's address, one from a stranger, one sealed into the
/// peer's netcode payloads (as it comes, or wrapped in a connected packet) so the engine's
/// parsers behind the decryption are reached, or time passing. The server never holds more
/// than those two connections, never answers a stranger with more bytes than it sent, and
/// keeps the real client's connection (checked on the server after every step, and on the
/// client at the end).
pub fn secure_server_datagram(data: &[u8]) {
    let config = ServerConfig {
        security: Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(PROTOCOL_ID, KEY, SERVER_ADDR),
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
    for (selector, bytes) in split_steps(data) {
        match selector % 4 {
            0 => sim.inject_to_server(client_addr, bytes),
            1 => {
                let stranger = SocketAddr::from((
                    Ipv4Addr::new(10, 0, 0, 2),
                    40_000 + u16::from(selector >> 2) % 4,
                ));
                from_stranger(&mut sim, stranger, bytes, Some(PEER_ADDR));
            }
            2 => {
                // Sealed by the peer: the engine's packet parser is what refuses or takes it.
                let payload = if selector & 4 == 0 {
                    bytes[..bytes.len().min(netcode::MAX_PAYLOAD_BYTES)].to_vec()
                } else {
                    sequence = sequence.next();
                    let room = netcode::MAX_PAYLOAD_BYTES - Packet::CONNECTED_HEADER_BYTES;
                    connected_packet(&mut buf, 0, sequence, selector, bytes, room).to_vec()
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
}
