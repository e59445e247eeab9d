//! The `replication_client` target.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::input::split_steps;
use super::sim_server::{connected_packet, datagram_payload, message_payload};
use crate::Sequence;
use crate::codec;
use crate::packet::{MAX_PACKET_BYTES, Packet};
use crate::replication::wire::{ControlMsg, QuantizeWire, WelcomeWire};
use crate::replication::{Client, ClientConfig, ClientStats, REPLICATION_VERSION};
use crate::snapshot::QuantizeConfig;

/// Longest datagram or control message a step sends framed: short enough that the
/// connection layer hands it up whole, so the replication layer's verdict is the only one.
const FRAMED_BYTES: usize = 1000;
/// The session salt the hand-made server gives the client.
const SALT: u32 = 0x5EED_5A17;

/// The welcome a server with the default config sends: the one a fuzzed input starts with
/// when its first selector is odd, so the snapshot parser is live from the first step.
pub fn default_welcome() -> Vec<u8> {
    let welcome = ControlMsg::Welcome(WelcomeWire {
        version: REPLICATION_VERSION,
        client_id: 1,
        owned: Some(0),
        server_tick: 0,
        send_interval_ticks: 1,
        ring_ticks: 64,
        quantize: QuantizeWire::from(&QuantizeConfig::default()),
        app: Vec::new(),
    });
    codec::encode(&welcome).expect("a welcome encodes")
}

/// A server played by hand: where it is, and the next packet sequence and control message
/// id it sends.
struct HandServer {
    addr: SocketAddr,
    sequence: Sequence,
    message: u16,
    now: Instant,
}

impl HandServer {
    /// `payload` (flags byte onward) to the client in a connected packet with a fresh
    /// sequence.
    fn send(&mut self, client: &mut Client<u8>, selector: u8, payload: &[u8]) {
        self.sequence = self.sequence.next();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let room = MAX_PACKET_BYTES - Packet::CONNECTED_HEADER_BYTES;
        let packet = connected_packet(&mut buf, SALT, self.sequence, selector, payload, room);
        client.handle_datagram(self.now, self.addr, packet);
    }

    /// `message` as the next message on the control channel; whether the connection layer
    /// took the packet.
    fn control(
        &mut self,
        client: &mut Client<u8>,
        control: u8,
        selector: u8,
        message: &[u8],
    ) -> bool {
        let payload = message_payload(control, self.message, message);
        let refused = client.connection().invalid_packets();
        self.send(client, selector, &payload);
        let taken = client.connection().invalid_packets() == refused;
        if taken {
            self.message = self.message.wrapping_add(1);
        }
        taken
    }

    /// Drain what the client sends (its handshake, acks, inputs): a server that listens.
    fn drain(&mut self, client: &mut Client<u8>) -> Vec<Vec<u8>> {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let mut out = Vec::new();
        // A client sends a bounded number of packets at one instant.
        for _ in 0..64 {
            let Some(t) = client.poll_transmit(self.now, &mut buf) else {
                break;
            };
            out.push(buf[..t.len].to_vec());
        }
        while client.poll_event().is_some() {}
        out
    }
}

/// Every transform the client would draw is finite: whatever the server sent, the view
/// holds positions inside the welcome's box and unit rotations, never NaN.
fn view_is_finite(client: &mut Client<u8>, now: Instant) {
    let view = client.view(now);
    for (id, t) in &view.entities {
        assert!(
            t.position.is_finite() && t.rotation.is_finite(),
            "entity {id:?} drawn at {t:?}"
        );
    }
}

/// A replication `Client` (predicting its owned entity) connected to a server played by
/// hand, fed the input's steps from that server: by selector, the bytes as an unreliable
/// datagram (a snapshot part behind its input-ack prefix), as the next message on the
/// control channel (welcome, owned entity, reliable part), as a whole payload (flags and
/// channel sections as given), or time passing with an input sent. When the first selector
/// is odd, the session starts with the default server's welcome. Every control message
/// the connection layer hands up is counted as invalid when it does not decode, and never
/// twice; every datagram handed up is read as a part or rejected, once; the view the game
/// would draw stays finite.
pub fn replication_client(data: &[u8]) {
    replication_client_stats(data);
}

/// [`replication_client`], returning the client's counters for a caller that knows more
/// about its input (a twin fed untouched parts expects them all to arrive).
pub fn replication_client_stats(data: &[u8]) -> ClientStats {
    let config = ClientConfig {
        seed: Some(5),
        ..ClientConfig::default()
    };
    let control = config.validate().expect("the default config is valid");
    let mut server = HandServer {
        addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 3), 7000)),
        sequence: Sequence(0),
        message: 0,
        now: Instant::now(),
    };
    let mut client =
        Client::<u8>::new(config, server.addr, server.now).expect("the default config is valid");
    client.set_step(|state, input, dt| {
        state.transform.position.x += f32::from(*input) * dt;
    });
    client.set_prediction(true);

    // The handshake, answered by hand: the client cannot check the challenge's MAC.
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut answer = |client: &mut Client<u8>, server: &mut HandServer, reply: Packet<'_>| {
        let n = reply.encode(&mut buf).expect("a handshake packet fits");
        client.handle_datagram(server.now, server.addr, &buf[..n]);
    };
    let request = server.drain(&mut client);
    let Some(Ok(Packet::ConnectionRequest { client_nonce })) =
        request.first().map(|r| Packet::decode(r))
    else {
        panic!("the client starts with a connection request");
    };
    answer(
        &mut client,
        &mut server,
        Packet::Challenge {
            client_nonce,
            timestamp_ms: 0,
            mac: 7,
        },
    );
    server.drain(&mut client);
    answer(
        &mut client,
        &mut server,
        Packet::Accepted {
            client_nonce,
            client_id: 1,
            salt: SALT,
        },
    );
    server.drain(&mut client);
    assert!(
        client.connection().is_connected(),
        "the hand-made handshake connects"
    );

    let mut steps = split_steps(data).peekable();
    if steps.peek().is_some_and(|(selector, _)| selector % 2 == 1) {
        let welcome = default_welcome();
        assert!(server.control(&mut client, control, 0, &welcome));
        server.drain(&mut client);
        assert!(client.welcome().is_some(), "the default welcome is taken");
    }

    // A whole payload may hold records on the control channel with any id: from then on
    // which message is handed up when is the channel's business, not the step's.
    let mut raw_sent = false;
    for (selector, bytes) in steps {
        let open = client.close_reason().is_none();
        let before = client.stats();
        let read_before = client.receiver().map(|r| r.stats().parts_received);
        match selector % 4 {
            0 => {
                let part = &bytes[..bytes.len().min(FRAMED_BYTES)];
                let refused = client.connection().invalid_packets();
                server.send(&mut client, selector, &datagram_payload(part));
                let taken = client.connection().invalid_packets() == refused;
                let rejected = client.stats().parts_rejected - before.parts_rejected;
                let read_after = client.receiver().map(|r| r.stats().parts_received);
                assert!(rejected <= 1, "one part rejected {rejected} times");
                if taken && open {
                    match (read_before, read_after) {
                        // A session: the part is read once (and perhaps rejected), or its
                        // prefix is malformed and it is rejected unread.
                        (Some(r), Some(a)) => {
                            assert!(a - r <= 1, "one part read {} times", a - r);
                            assert!(a - r + rejected >= 1, "a part neither read nor rejected");
                        }
                        // No welcome yet: nothing can be decoded.
                        (None, None) => assert_eq!(rejected, 1),
                        (r, a) => panic!("a part changed the session: {r:?} then {a:?}"),
                    }
                }
            }
            1 => {
                let message = &bytes[..bytes.len().min(FRAMED_BYTES)];
                let taken = server.control(&mut client, control, selector, message);
                let counted = client.stats().invalid_control - before.invalid_control;
                // A message is handed up once the ones before it were (reliable, ordered):
                // every earlier step's was, while the session lasts.
                if !raw_sent {
                    assert!(counted <= 1, "one message counted {counted} times");
                    if taken && open && codec::decode::<ControlMsg>(message).is_err() {
                        assert_eq!(counted, 1, "message {message:?}");
                    }
                }
            }
            2 => {
                server.send(&mut client, selector, bytes);
                raw_sent = true;
            }
            _ => {
                server.now += Duration::from_millis(u64::from(selector >> 2));
                client.handle_timeout(server.now);
                let _ = client.send_input(server.now, selector);
            }
        }
        server.drain(&mut client);
        view_is_finite(&mut client, server.now);
    }
    client.stats()
}
