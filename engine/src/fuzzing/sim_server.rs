//! What the targets that speak to an endpoint by hand do alike with a step: strangers'
//! datagrams, connected packets, and the payloads inside them.

use std::net::SocketAddr;

use crate::Sequence;
use crate::packet::{ConnectedHeader, Packet};
use crate::sim::Sim;

/// `bytes` to the server from `stranger`: every reply goes back to it, none larger than what
/// it sent (the server is no amplifier). Datagrams waiting for `peer`, a client driven by hand
/// from `Sim::stray`, stay for it.
pub(super) fn from_stranger(
    sim: &mut Sim,
    stranger: SocketAddr,
    bytes: &[u8],
    peer: Option<SocketAddr>,
) {
    let for_peer = |to: &SocketAddr| Some(*to) == peer;
    sim.stray.retain(|(to, _)| for_peer(to));
    sim.inject_to_server(stranger, bytes);
    for (to, reply) in sim.stray.iter().filter(|(to, _)| !for_peer(to)) {
        assert_eq!(*to, stranger);
        assert!(
            reply.len() <= bytes.len(),
            "{} byte reply to a {} byte request",
            reply.len(),
            bytes.len()
        );
    }
    sim.stray.retain(|(to, _)| for_peer(to));
}

/// `bytes`, cut to `room`, as a connected payload packet written into `buf`; the acks come
/// from the step's selector so the ack parsers see varied values.
pub(super) fn connected_packet<'b>(
    buf: &'b mut [u8],
    salt: u32,
    sequence: Sequence,
    selector: u8,
    bytes: &[u8],
    room: usize,
) -> &'b [u8] {
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
    let n = packet.encode(buf).expect("fits one packet");
    &buf[..n]
}

/// The connection layer's flag for a payload that starts with an unreliable datagram.
const FLAG_DATAGRAM: u8 = 0x01;

/// A connected payload that carries `datagram` alone (at most 64 KiB - 1: its length is a
/// u16), as an endpoint's unreliable datagram.
pub(super) fn datagram_payload(datagram: &[u8]) -> Vec<u8> {
    let mut payload = vec![FLAG_DATAGRAM];
    payload.extend_from_slice(&(datagram.len() as u16).to_le_bytes());
    payload.extend_from_slice(datagram);
    payload
}

/// A connected payload that carries one message, `message` (shorter than 64 KiB), as the
/// message numbered `id` on `channel`: no datagram, then a channel section of one whole
/// (unfragmented) record.
pub(super) fn message_payload(channel: u8, id: u16, message: &[u8]) -> Vec<u8> {
    let mut payload = vec![0u8, 1, channel, 0];
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&(message.len() as u16).to_le_bytes());
    payload.extend_from_slice(message);
    payload
}
