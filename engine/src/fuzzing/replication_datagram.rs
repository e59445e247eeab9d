//! The `replication_datagram` target.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::input::split_steps;
use super::sim_server::{connected_packet, datagram_payload, message_payload};
use crate::codec;
use crate::connection::ClientId;
use crate::packet::{MAX_PACKET_BYTES, Packet};
use crate::replication::wire::{ClientControl, InputFrame, MAX_INPUTS_PER_FRAME};
use crate::replication::{Client, ClientConfig, Server, ServerConfig, ServerEvent};
use crate::sim::Sim;
use crate::snapshot::{EntityId, EntityState, Transform, World};
use crate::{Sequence, connection};

/// A server tick.
const TICK: Duration = Duration::from_millis(16);
/// Longest input frame or control message a step sends framed: short enough that the
/// connection layer hands it up whole, so the replication layer's verdict is the only one.
const FRAMED_BYTES: usize = 512;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), port))
}

/// A peer driven by hand: its session salt, id, and the next packet sequence and control
/// message id it sends.
struct RawPeer {
    addr: SocketAddr,
    salt: u32,
    id: ClientId,
    sequence: Sequence,
    message: u16,
}

impl RawPeer {
    fn connect(sim: &mut Sim<Server, Client<u8>>, addr: SocketAddr, nonce: u64) -> Self {
        let salt = sim
            .handshake_by_hand(addr, nonce)
            .expect("the server accepts a hand-made handshake");
        let id = sim
            .server_events
            .iter()
            .rev()
            .find_map(|e| match e {
                ServerEvent::ClientJoined { client } => Some(*client),
                _ => None,
            })
            .expect("a hand-made handshake makes a client");
        RawPeer {
            addr,
            salt,
            id,
            sequence: Sequence(0),
            message: 0,
        }
    }

    /// `payload` (flags byte onward) to the server in a connected packet with a fresh
    /// sequence.
    fn send(&mut self, sim: &mut Sim<Server, Client<u8>>, selector: u8, payload: &[u8]) {
        self.sequence = self.sequence.next();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let room = MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES;
        let packet = connected_packet(&mut buf, self.salt, self.sequence, selector, payload, room);
        sim.inject_to_server(self.addr, packet);
    }
}

/// The connection layer's refusals so far: a step it refused never reached the replication
/// layer.
fn refused(stats: &connection::ServerStats) -> u64 {
    stats.invalid_packets
}

/// Whether the replication server takes `bytes` as an input frame (the limits of the
/// default config). Written here again on purpose, from the wire type and the limits: an
/// oracle that called the server's own check could not see that check lose a limit.
fn is_valid_frame(bytes: &[u8], max_input_bytes: usize) -> bool {
    codec::decode_borrowed::<InputFrame<'_>>(bytes).is_ok_and(|f| {
        f.inputs.len() <= MAX_INPUTS_PER_FRAME
            && f.inputs.iter().all(|i| i.len() <= max_input_bytes)
    })
}

/// A replication `Server` in a `Sim` with a playing client (welcomed, an input every tick,
/// the server ticking a small world) and two peers that completed the handshake by hand,
/// fed the input's steps: by selector, the bytes as peer A's unreliable datagram (the
/// input-frame parser), as peer A's next message on the control channel (the control
/// parser), as peer B's whole payload (flags and channel sections as given), or ticks
/// passing. Each of peer A's frames and control messages that the connection layer hands up
/// is counted as invalid exactly when it does not decode (or breaks a limit), and never
/// twice; at the end the real client is still connected, its inputs still reach the game
/// and its snapshots still arrive.
pub fn replication_datagram(data: &[u8]) {
    let config = ServerConfig {
        seed: Some(3),
        ..ServerConfig::default()
    };
    let max_input_bytes = config.max_input_bytes;
    let control = config.validate().expect("the default config is valid");
    let mut sim: Sim<Server, Client<u8>> = Sim::replication(config, 3).expect("valid config");
    sim.add_replication_client(ClientConfig::default())
        .expect("valid config");
    let mut world = World::new();
    for id in 0..8u32 {
        world.insert(
            EntityId(id),
            EntityState::new(Transform {
                position: glam::Vec3::new(id as f32, 0.0, 0.0),
                ..Transform::default()
            }),
        );
    }
    let tick = |sim: &mut Sim<Server, Client<u8>>, world: &mut World, n: u32| {
        for _ in 0..n {
            sim.run_for(TICK);
            let now = sim.now;
            let _ = sim.clients[0].client.send_input(now, 1);
            // Something moves, so every tick has changes to send.
            if let Some(e) = world.get_mut(EntityId(0)) {
                e.transform.position.x += 0.1;
            }
            sim.server.tick(now, world);
            sim.server_events.clear();
            sim.clients[0].events.clear();
        }
    };
    // The real client is welcomed and plays.
    for _ in 0..200 {
        if sim.clients[0].client.welcome().is_some() {
            break;
        }
        tick(&mut sim, &mut world, 1);
    }
    let real = sim.clients[0]
        .client
        .welcome()
        .map(|w| w.client_id)
        .expect("the real client is welcomed");
    let mut a = RawPeer::connect(&mut sim, addr(9001), 0xA);
    let mut b = RawPeer::connect(&mut sim, addr(9002), 0xB);

    for (selector, bytes) in split_steps(data) {
        let conn_before = refused(&sim.server.connection().stats());
        let before = sim.server.stats();
        let a_before = sim.server.client_summary(a.id);
        match selector % 4 {
            0 => {
                let frame = &bytes[..bytes.len().min(FRAMED_BYTES)];
                a.send(&mut sim, selector, &datagram_payload(frame));
                let handed_up = refused(&sim.server.connection().stats()) == conn_before;
                let after = sim.server.stats();
                let counted = after.invalid_input_frames - before.invalid_input_frames;
                assert!(counted <= 1, "one frame counted {counted} times");
                if let (true, Some(s), Some(t)) =
                    (handed_up, &a_before, sim.server.client_summary(a.id))
                {
                    let invalid = !is_valid_frame(frame, max_input_bytes);
                    assert_eq!(counted, u64::from(invalid), "frame {frame:?}");
                    assert_eq!(t.invalid_input_frames - s.invalid_input_frames, counted);
                }
            }
            1 => {
                let message = &bytes[..bytes.len().min(FRAMED_BYTES)];
                a.send(
                    &mut sim,
                    selector,
                    &message_payload(control, a.message, message),
                );
                let handed_up = refused(&sim.server.connection().stats()) == conn_before;
                if handed_up {
                    a.message = a.message.wrapping_add(1);
                }
                let counted = sim.server.stats().invalid_control - before.invalid_control;
                assert!(counted <= 1, "one message counted {counted} times");
                // A message is handed up once the ones before it were (reliable, ordered):
                // every earlier step's was, while the session lasts.
                if handed_up && a_before.is_some() && sim.server.client_summary(a.id).is_some() {
                    let invalid = codec::decode::<ClientControl>(message).is_err();
                    assert_eq!(counted, u64::from(invalid), "message {message:?}");
                }
            }
            2 => b.send(&mut sim, selector, bytes),
            _ => tick(&mut sim, &mut world, 1 + u32::from(selector >> 5)),
        }
        assert!(sim.server.client_count() <= 3);
    }

    // Nothing the peers sent touched the real client's session.
    let before = sim
        .server
        .client_summary(real)
        .expect("the real client is connected");
    let received = sim.clients[0].client.stats().snapshots_received;
    tick(&mut sim, &mut world, 12);
    let after = sim
        .server
        .client_summary(real)
        .expect("the real client is still connected");
    assert!(
        after.inputs_applied > before.inputs_applied,
        "the real client's inputs stopped reaching the game"
    );
    assert!(
        sim.clients[0].client.stats().snapshots_received > received,
        "the real client's snapshots stopped"
    );
    assert_eq!(after.invalid_input_frames, 0);
}
