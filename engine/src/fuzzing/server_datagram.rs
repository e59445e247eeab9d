//! The `server_datagram` target.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::input::split_steps;
use super::sim_server::{connected_packet, from_stranger};
use crate::packet::{MAX_PACKET_BYTES, Packet};
use crate::sim::Sim;
use crate::{ClientConfig, Sequence, ServerConfig};

const RAW_PEER_NONCE: u64 = 0xF00D;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port))
}

/// A `Server` with a connected client (through the simulated network) and a raw peer that
/// completed the handshake by hand, fed the input's steps: by selector, a datagram from the
/// client's address, one from a stranger, one from the raw peer wrapped in a connected
/// packet with its salt (so the payload parsers are reached), or time passing. The server
/// never holds more than those two connections, never answers a stranger with more bytes than
/// it sent, and the real client stays connected.
pub fn server_datagram(data: &[u8]) {
    let mut sim = Sim::new(ServerConfig::default(), 1);
    sim.add_client(ClientConfig::default());
    assert!(sim.run_until_cond(Duration::from_secs(1), |s| {
        s.clients[0].client.is_connected()
    }));
    let raw_peer = addr(9000);
    let salt = sim
        .handshake_by_hand(raw_peer, RAW_PEER_NONCE)
        .expect("the server accepts a hand-made handshake");
    let client_addr = sim.clients[0].addr;
    let mut sequence = Sequence(0);
    let mut buf = [0u8; MAX_PACKET_BYTES];
    for (selector, bytes) in split_steps(data) {
        match selector % 4 {
            0 => sim.inject_to_server(client_addr, bytes),
            1 => {
                let stranger = addr(40_000 + u16::from(selector >> 2) % 4);
                from_stranger(&mut sim, stranger, bytes, None);
            }
            2 => {
                // With the peer's salt, so the payload parsers are reached.
                sequence = sequence.next();
                let room = MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES;
                let packet = connected_packet(&mut buf, salt, sequence, selector, bytes, room);
                sim.inject_to_server(raw_peer, packet);
            }
            _ => sim.run_for(Duration::from_millis(u64::from(selector >> 2))),
        }
        assert!(sim.server.client_count() <= 2);
    }
    // Garbage never takes the real client's connection down: it cannot know the salt.
    sim.run_for(Duration::from_millis(200));
    assert!(
        sim.clients[0].client.is_connected(),
        "garbage ended the real session"
    );
}
