//! The `netcode_packet` target.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::backend::{
    KEY, NETCODE_CLIENT_ADDR, NETCODE_SERVER_ADDR, PROTOCOL_ID, UNIX, connect_token,
};
use super::input::split_steps;
use crate::netcode::{self, Client, ClientEvent, ClientIndex, Server, ServerConfig, ServerEvent};

/// One token for the whole run: the fuzzer sees the same keys on every input.
fn token() -> &'static [u8] {
    static TOKEN: OnceLock<Vec<u8>> = OnceLock::new();
    TOKEN.get_or_init(|| connect_token(7, NETCODE_SERVER_ADDR))
}

struct Pair {
    now: Instant,
    server: Server,
    client: Client,
    /// Every packet delivered so far: (to the server?, bytes).
    delivered: Vec<(bool, Vec<u8>)>,
}

impl Pair {
    fn connected() -> Self {
        let now = Instant::now();
        let config = ServerConfig::new(PROTOCOL_ID, KEY, NETCODE_SERVER_ADDR);
        let mut pair = Self {
            now,
            server: Server::new(config, now).expect("a valid config"),
            client: Client::new(now, token()).expect("a valid token"),
            delivered: Vec::new(),
        };
        for _ in 0..50 {
            pair.exchange();
            if pair.client.is_connected() {
                break;
            }
            pair.now += Duration::from_millis(10);
        }
        assert!(pair.client.is_connected());
        while pair.server.poll_event().is_some() {}
        while pair.client.poll_event().is_some() {}
        pair.delivered.clear();
        pair
    }

    /// Timers, then everything both sides want to send, delivered; all of it is accepted.
    fn exchange(&mut self) {
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        let dropped = self.drops();
        while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
            let d = buf[..t.len].to_vec();
            self.server
                .handle_datagram(self.now, UNIX, NETCODE_CLIENT_ADDR, &d);
            self.delivered.push((true, d));
        }
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, NETCODE_CLIENT_ADDR);
            let d = buf[..t.len].to_vec();
            self.client
                .handle_datagram(self.now, NETCODE_SERVER_ADDR, &d);
            self.delivered.push((false, d));
        }
        assert_eq!(self.drops(), dropped, "real packets are accepted");
    }

    fn drops(&self) -> (u64, u64) {
        (
            self.server.stats().dropped.total(),
            self.client.stats().dropped.total(),
        )
    }

    /// `d` to the server from `from`: dropped once (or, from a stranger, a late goodbye).
    fn forged_to_server(&mut self, from: SocketAddr, d: &[u8]) {
        let before = self.server.stats();
        self.server.handle_datagram(self.now, UNIX, from, d);
        let after = self.server.stats();
        assert_eq!(after.packets_in, before.packets_in + 1);
        let counted = (after.dropped.total() - before.dropped.total())
            + (after.late_disconnects - before.late_disconnects);
        assert_eq!(counted, 1, "{before:?} {after:?}");
        assert!(
            self.server.poll_event().is_none(),
            "a forgery made an event"
        );
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            // Only the connection's own keep-alives may be due.
            assert_eq!(t.destination, NETCODE_CLIENT_ADDR);
            let reply = buf[..t.len].to_vec();
            self.client
                .handle_datagram(self.now, NETCODE_SERVER_ADDR, &reply);
        }
    }

    /// `d` to the client from `from`: dropped once.
    fn forged_to_client(&mut self, from: SocketAddr, d: &[u8]) {
        let before = self.client.stats();
        self.client.handle_datagram(self.now, from, d);
        let after = self.client.stats();
        assert_eq!(after.packets_in, before.packets_in + 1);
        assert_eq!(after.dropped.total(), before.dropped.total() + 1);
        assert!(
            self.client.poll_event().is_none(),
            "a forgery made an event"
        );
    }
}

/// The decrypt path: a netcode `Server` and `Client` connected with a fixed key and token,
/// fed the input's steps: by selector, a datagram to either side (from the peer's address or
/// a stranger's), a real payload each way, a replay or a bit flip of a packet already
/// delivered, or time passing. Every datagram is either accepted (only what the peer really
/// sent, once, handed out unchanged) or counted once in `stats().dropped`; a forgery makes
/// no event, and garbage never ends the session.
pub fn netcode_packet(data: &[u8]) {
    let mut pair = Pair::connected();
    let index = ClientIndex(pair.client.client_index().expect("connected"));
    for (selector, bytes) in split_steps(data) {
        let payload = &bytes[..bytes.len().min(netcode::MAX_PAYLOAD_BYTES)];
        match selector % 8 {
            0 => pair.forged_to_server(NETCODE_CLIENT_ADDR, bytes),
            1 => pair.forged_to_client(NETCODE_SERVER_ADDR, bytes),
            2 => {
                let stranger = SocketAddr::from(([10, 0, 0, 9], u16::from(selector)));
                pair.forged_to_server(stranger, bytes);
                pair.forged_to_client(stranger, bytes);
            }
            3 if !payload.is_empty() => {
                pair.client
                    .send_payload(pair.now, payload)
                    .expect("connected");
                pair.exchange();
                let got = std::iter::from_fn(|| pair.server.poll_event()).find_map(|e| match e {
                    ServerEvent::Payload { payload, .. } => Some(payload),
                    _ => None,
                });
                assert_eq!(got.as_deref(), Some(payload));
            }
            4 if !payload.is_empty() => {
                pair.server
                    .send_payload(pair.now, index, payload)
                    .expect("connected");
                pair.exchange();
                let got = std::iter::from_fn(|| pair.client.poll_event()).find_map(|e| match e {
                    ClientEvent::Payload { payload, .. } => Some(payload),
                    _ => None,
                });
                assert_eq!(got.as_deref(), Some(payload));
            }
            5 | 6 if !pair.delivered.is_empty() => {
                // A packet already delivered, replayed as is (5) or with one bit flipped (6)
                // at the place the step's first two bytes name.
                let pick = usize::from(selector >> 3) % pair.delivered.len();
                let (to_server, mut d) = pair.delivered[pick].clone();
                if selector % 8 == 6 {
                    let byte = |i| bytes.get(i).copied().unwrap_or(0);
                    let at = usize::from(u16::from_le_bytes([byte(0), byte(1)]));
                    let bit = at % (d.len() * 8);
                    d[bit / 8] ^= 1 << (bit % 8);
                }
                if to_server {
                    pair.forged_to_server(NETCODE_CLIENT_ADDR, &d);
                } else {
                    pair.forged_to_client(NETCODE_SERVER_ADDR, &d);
                }
            }
            _ => {
                pair.now += Duration::from_millis(u64::from(selector >> 3));
                pair.exchange();
            }
        }
        assert!(pair.client.is_connected(), "the session ended");
        assert_eq!(pair.server.client_count(), 1);
    }
}
