//! A `Server` with a connected client (through the simulated network) and a verified raw
//! peer, fed arbitrary datagrams from a few addresses: never panics, never holds more than
//! those two connections, and never answers a stranger with more bytes than it sent.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use snapsync::packet::{ConnectedHeader, MAX_PACKET_BYTES, Packet};
use snapsync::sim::Sim;
use snapsync::{ClientConfig, Sequence, ServerConfig};

const RAW_PEER_NONCE: u64 = 0xF00D;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port)
}

fuzz_target!(|data: &[u8]| {
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
    let mut rest = data;
    let mut buf = [0u8; MAX_PACKET_BYTES];
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
                let stranger = addr(40_000 + u16::from(selector >> 2) % 4);
                sim.stray.clear();
                sim.inject_to_server(stranger, bytes);
                for (to, reply) in sim.stray.drain(..) {
                    assert_eq!(to, stranger);
                    assert!(
                        reply.len() <= bytes.len(),
                        "{} byte reply to a {} byte request",
                        reply.len(),
                        bytes.len()
                    );
                }
            }
            2 => {
                // A connected packet with the right salt, so the payload parsers are reached.
                sequence = sequence.next();
                let packet = Packet::Payload {
                    header: ConnectedHeader {
                        salt,
                        sequence,
                        ack: Sequence(u16::from(selector)),
                        ack_bits: u32::from(selector).wrapping_mul(0x0101_0101),
                        ack_delay: 0,
                    },
                    payload: &bytes[..bytes
                        .len()
                        .min(MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES)],
                };
                if let Some(n) = packet.encode(&mut buf) {
                    sim.inject_to_server(raw_peer, &buf[..n]);
                }
            }
            _ => sim.run_for(Duration::from_millis(u64::from(selector >> 2))),
        }
        assert!(sim.server.client_count() <= 2);
    }
});
