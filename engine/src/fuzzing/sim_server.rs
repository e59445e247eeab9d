//! What the two targets on a `Server` in a `Sim` do alike with a step.

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
