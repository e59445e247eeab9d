//! Secure mode end to end in virtual time: connections over netcode 1.02, under loss and
//! under an attacker on the path.

use std::time::{Duration, Instant};

use super::*;
use crate::conditioner::ConditionerConfig;
use crate::netcode::{self, Key, TokenSettings, generate_connect_token};
use crate::packet::{DisconnectReasonCode, Packet};
use crate::sim::Sim;

const PROTOCOL_ID: u64 = 0x5EC0_5E55_0000_0001;
const UNIX_NOW: u64 = 1_800_000_000;

fn key() -> Key {
    [7; 32]
}

fn secure_server_config(addr: std::net::SocketAddr) -> ServerConfig {
    ServerConfig {
        security: Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(PROTOCOL_ID, key(), addr),
            unix_secs_at_start: UNIX_NOW,
        }),
        ..ServerConfig::default()
    }
}

fn token(client_id: u64, server: std::net::SocketAddr, private_key: &Key) -> Vec<u8> {
    let settings = TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id,
        server_addresses: vec![server],
        expire_seconds: 60,
        timeout_seconds: 5,
        user_data: [0; netcode::USER_DATA_BYTES],
    };
    generate_connect_token(UNIX_NOW, &settings, private_key)
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn secure_sim(clients: usize, seed: u64) -> Sim {
    let addr: std::net::SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let mut sim = Sim::with_server(
        |now| Server::new(secure_server_config(addr), now, seed).unwrap(),
        seed,
    );
    assert_eq!(sim.server_addr, addr);
    for i in 0..clients {
        let t = token(100 + i as u64, addr, &key());
        sim.add_client_with(|server, now, seed| {
            let config = ClientConfig {
                security: ClientSecurity::Secure { token: t },
                ..ClientConfig::default()
            };
            Client::new(config, server, now, seed).unwrap()
        });
    }
    sim
}

fn connect_all(sim: &mut Sim) {
    let ok = sim.run_until_cond(Duration::from_secs(3), |s| {
        s.clients.iter().all(|c| c.client.is_connected())
    });
    assert!(ok, "secure clients did not connect");
}

#[test]
fn secure_clients_connect_exchange_in_order_under_loss_and_say_goodbye() {
    let mut sim = secure_sim(3, 4);
    let lossy = ConditionerConfig {
        enabled: true,
        loss_pct: 5.0,
        latency: Duration::from_millis(20),
        ..ConditionerConfig::off()
    };
    sim.set_all_links(lossy);
    connect_all(&mut sim);
    let ids: Vec<ClientId> = (0..3)
        .map(|i| match sim.clients[i].client.state() {
            ClientState::Connected(id) => id,
            s => panic!("{s:?}"),
        })
        .collect();
    // 200 reliable messages each way per client, over 4 s.
    for n in 0..200u32 {
        let now = sim.now;
        for (i, id) in ids.iter().enumerate() {
            sim.server
                .send_message(now, *id, 0, &n.to_le_bytes())
                .unwrap();
            sim.clients[i]
                .client
                .send_message(now, 0, &n.to_le_bytes())
                .unwrap();
        }
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(2));
    for (i, id) in ids.iter().enumerate() {
        let got: Vec<u32> = sim.clients[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => {
                    Some(u32::from_le_bytes(payload[..4].try_into().unwrap()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>(), "client {i}");
        let heard: Vec<u32> = sim
            .server_events
            .iter()
            .filter_map(|(from, e)| match e {
                Event::Message { payload, .. } if from == id => {
                    Some(u32::from_le_bytes(payload[..4].try_into().unwrap()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            heard,
            (0..200).collect::<Vec<_>>(),
            "server from client {i}"
        );
    }
    assert_eq!(
        sim.server.stats().invalid_secure,
        0,
        "loss is not an attack"
    );
    sim.clients[0].client.disconnect();
    sim.run_for(Duration::from_secs(1));
    let left = sim.server_events.iter().find_map(|(id, e)| match e {
        Event::Disconnected { reason } if *id == ids[0] => Some(*reason),
        _ => None,
    });
    assert_eq!(
        left,
        Some(DisconnectReason::Peer(DisconnectReasonCode::Requested))
    );
    assert_eq!(sim.server.client_count(), 2);
}

#[test]
fn an_attacker_on_the_path_cannot_forge_flip_or_replay_and_the_session_survives() {
    let mut sim = secure_sim(1, 9);
    connect_all(&mut sim);
    let server_addr = sim.server_addr;
    // Captured traffic: what the client sent the server (replayed and tampered copies).
    let mut captured = Vec::new();
    for _ in 0..50 {
        let now = sim.now;
        sim.clients[0]
            .client
            .send_message(now, 0, b"state")
            .unwrap();
        let mut buf = vec![0u8; crate::packet::MAX_PACKET_BYTES];
        while let Some(t) = sim.clients[0].client.poll_transmit(now, &mut buf) {
            captured.push(buf[..t.len].to_vec());
            sim.server
                .handle_datagram(now, sim.clients[0].addr, &buf[..t.len]);
        }
        sim.run_for(Duration::from_millis(10));
    }
    assert!(captured.len() >= 50);
    let from = sim.clients[0].addr;
    let before = sim.server.stats().invalid_secure;
    // Replays of real packets, bit flips in each byte position, and a plain-mode Disconnect
    // with a valid CRC (what forged a goodbye in plain mode).
    let mut attacks = 0u64;
    for p in &captured {
        sim.inject_to_server(from, p);
        attacks += 1;
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x10;
            sim.inject_to_server(from, &q);
            attacks += 1;
        }
    }
    let mut buf = vec![0u8; 64];
    let n = Packet::Disconnect {
        salt: 0,
        reason: DisconnectReasonCode::Requested,
    }
    .encode(&mut buf)
    .unwrap();
    sim.inject_to_server(from, &buf[..n]);
    attacks += 1;
    let dropped = sim.server.stats().invalid_secure - before;
    assert_eq!(
        dropped, attacks,
        "every forged, flipped or replayed datagram is dropped"
    );
    // The same towards the client: a forged disconnect from the server's address.
    let client_before = sim.clients[0]
        .client
        .secure_stats()
        .unwrap()
        .dropped
        .total();
    sim.clients[0]
        .client
        .handle_datagram(sim.now, server_addr, &buf[..n]);
    assert_eq!(
        sim.clients[0]
            .client
            .secure_stats()
            .unwrap()
            .dropped
            .total(),
        client_before + 1
    );
    sim.run_for(Duration::from_secs(2));
    assert!(
        sim.clients[0].client.is_connected(),
        "the real session is untouched"
    );
    assert_eq!(sim.server.client_count(), 1);
}

#[test]
fn tokens_for_another_key_or_server_or_a_plain_client_get_nowhere() {
    let addr: std::net::SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let elsewhere: std::net::SocketAddr = "127.0.0.1:9999".parse().unwrap();
    let mut sim = Sim::with_server(
        |now| Server::new(secure_server_config(addr), now, 3).unwrap(),
        3,
    );
    for t in [token(1, addr, &[9; 32]), token(2, elsewhere, &key())] {
        sim.add_client_with(|_, now, seed| {
            let config = ClientConfig {
                security: ClientSecurity::Secure { token: t },
                ..ClientConfig::default()
            };
            // The simulated network delivers whatever a client sends to our server: a token
            // for another server arrives here, as a stolen one would.
            Client::new(config, addr, now, seed).unwrap()
        });
    }
    sim.add_client(ClientConfig::default());
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.server.stats().connections_accepted, 0);
    let s = sim.server.secure_stats().unwrap();
    assert!(s.dropped.total() > 0);
    assert!(sim.clients.iter().all(|c| !c.client.is_connected()));
    assert!(matches!(
        sim.clients[2].client.state(),
        ClientState::Disconnected(DisconnectReason::ConnectTimedOut)
    ));
}

#[test]
fn a_token_that_does_not_parse_is_a_config_error() {
    let config = ClientConfig {
        security: ClientSecurity::Secure {
            token: vec![1, 2, 3],
        },
        ..ClientConfig::default()
    };
    let err = Client::new(config, "127.0.0.1:1".parse().unwrap(), Instant::now(), 1).unwrap_err();
    assert!(matches!(err, ConfigError::Token(_)));
}

#[test]
fn goodbyes_under_loss_end_both_sessions_and_count_nothing_invalid() {
    let mut sim = secure_sim(2, 5);
    let lossy = ConditionerConfig {
        enabled: true,
        loss_pct: 10.0,
        ..ConditionerConfig::off()
    };
    sim.set_all_links(lossy);
    connect_all(&mut sim);
    sim.run_for(Duration::from_secs(2));
    sim.clients[0].client.disconnect();
    sim.clients[1].client.disconnect();
    sim.run_for(Duration::from_secs(2));
    let s = sim.server.secure_stats().unwrap();
    // The redundant copies of each goodbye arrive after the first ended the session: late,
    // not invalid.
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert!(s.late_disconnects > 0);
    assert_eq!(sim.server.client_count(), 0);
    let mut buf = vec![0u8; crate::packet::MAX_PACKET_BYTES];
    for c in &mut sim.clients {
        assert!(matches!(
            c.client.state(),
            ClientState::Disconnected(DisconnectReason::Requested)
        ));
        // Nothing more leaves a client whose session is over: no keep-alives.
        let later = sim.now + Duration::from_secs(1);
        c.client.handle_timeout(later);
        assert!(c.client.poll_transmit(later, &mut buf).is_none());
    }
}

#[test]
fn handshake_retries_under_loss_are_not_counted_invalid() {
    // Half the server's packets lost: clients resend requests and responses that cross the
    // server's answers. None of that is an attack.
    let mut late = 0;
    for seed in 0..20 {
        let mut sim = secure_sim(2, 100 + seed);
        let lossy = ConditionerConfig {
            enabled: true,
            loss_pct: 50.0,
            latency: Duration::from_millis(30),
            ..ConditionerConfig::off()
        };
        for i in 0..2 {
            sim.set_link(i, ConditionerConfig::off(), lossy.clone());
        }
        let ok = sim.run_until_cond(Duration::from_secs(10), |s| {
            s.clients.iter().all(|c| c.client.is_connected())
        });
        assert!(ok, "seed {seed}: did not connect");
        let s = sim.server.secure_stats().unwrap();
        assert_eq!(s.dropped.total(), 0, "seed {seed}: {s:?}");
        late += s.late_handshakes;
    }
    assert!(late > 0, "no retry crossed an answer in 20 seeds");
}

#[test]
fn a_secure_handshake_reports_responding_once_the_server_answered() {
    // The stream fallback reads "still Requesting" as "the server never answered": secure
    // mode must leave Requesting at netcode's challenge, as plain mode does at its cookie.
    let mut sim = secure_sim(1, 11);
    // Latency, so the states last long enough for the 1 ms steps to see each.
    sim.set_all_links(ConditionerConfig {
        latency: Duration::from_millis(20),
        enabled: true,
        ..ConditionerConfig::off()
    });
    let mut seen = Vec::new();
    let ok = sim.run_until_cond(Duration::from_secs(3), |s| {
        let state = s.clients[0].client.state();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        s.clients[0].client.is_connected()
    });
    assert!(ok, "did not connect");
    let first = seen.first().copied();
    assert_eq!(first, Some(ClientState::Requesting), "{seen:?}");
    assert!(seen.contains(&ClientState::Responding), "{seen:?}");
}
