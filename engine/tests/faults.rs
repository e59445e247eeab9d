//! Faults in virtual time: vanished clients, a restarted server, partitions shorter and
//! longer than the timeout.

use std::time::Duration;

use snapsync::packet::DenyReason;
use snapsync::sim::Sim;
use snapsync::{
    Client, ClientConfig, ClientId, ClientState, DisconnectReason, Event, Server, ServerConfig,
};

/// Simulated frame period of the test applications (60 Hz).
const TICK: Duration = Duration::from_micros(16_667);
/// The default connection timeout the scenarios are built around.
const TIMEOUT: Duration = Duration::from_secs(5);

fn connect_all(sim: &mut Sim) {
    let ok = sim.run_until_cond(Duration::from_secs(2), |s| {
        s.clients.iter().all(|c| c.client.is_connected())
    });
    assert!(ok, "clients did not connect");
}

fn disconnects(events: &[Event]) -> Vec<DisconnectReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { reason } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn server_disconnects(sim: &Sim, id: ClientId) -> Vec<DisconnectReason> {
    sim.server_events
        .iter()
        .filter_map(|(who, e)| match e {
            Event::Disconnected { reason } if *who == id => Some(*reason),
            _ => None,
        })
        .collect()
}

/// Replace client `i` with a fresh one (same address), as an application reconnecting does.
fn restart_client(sim: &mut Sim, i: usize, config: ClientConfig, seed: u64) {
    let server = sim.server_addr;
    let now = sim.now;
    let c = &mut sim.clients[i];
    c.client = Client::new(config, server, now, seed).unwrap();
    c.events.clear();
}

#[test]
fn vanished_client_frees_its_slot_after_the_timeout() {
    let config = ServerConfig {
        max_clients: 2,
        ..ServerConfig::default()
    };
    let mut sim = Sim::new(config, 11);
    sim.add_client(ClientConfig::default());
    sim.add_client(ClientConfig::default());
    connect_all(&mut sim);
    let gone = sim.client_id(0).expect("connected");
    let vanished_at = sim.now;
    // The client is gone without a word: nothing more from it, nothing reaches it.
    sim.clients[0].partitioned = true;

    // While the dead client holds its slot, the server is full.
    let late = sim.add_client(ClientConfig::default());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.clients[late].client.state(),
        ClientState::Disconnected(DisconnectReason::Denied(DenyReason::ServerFull))
    );
    assert_eq!(sim.server.client_count(), 2);

    let freed = sim.run_until_cond(TIMEOUT, |s| s.server.client_count() == 1);
    assert!(freed, "the vanished client's slot was not freed");
    let waited = sim.now - vanished_at;
    assert!(
        // The timeout runs from the last packet heard, at most one keep-alive interval
        // (100 ms) before the client vanished.
        waited >= TIMEOUT - Duration::from_millis(100)
            && waited <= TIMEOUT + Duration::from_millis(200),
        "slot freed after {waited:?}"
    );
    assert_eq!(
        server_disconnects(&sim, gone),
        vec![DisconnectReason::TimedOut]
    );
    assert!(sim.server.clients().all(|id| id != gone));
    // The survivor never noticed.
    assert!(sim.clients[1].client.is_connected());
    assert!(disconnects(&sim.clients[1].events).is_empty());

    // Now the newcomer gets in.
    restart_client(&mut sim, late, ClientConfig::default(), 77);
    let ok = sim.run_until_cond(Duration::from_secs(2), |s| {
        s.clients[late].client.is_connected()
    });
    assert!(ok, "newcomer did not connect after the slot freed");
    assert_eq!(sim.server.client_count(), 2);
}

#[test]
fn server_restart_is_noticed_and_clients_reconnect_with_backoff() {
    let mut sim = Sim::new(ServerConfig::default(), 21);
    sim.add_client(ClientConfig::default());
    sim.add_client(ClientConfig::default());
    connect_all(&mut sim);
    // The server process dies: nothing answers for 8 s, then a new process (new key, new
    // salts, no memory of anyone) comes up on the same address.
    for c in &mut sim.clients {
        c.partitioned = true;
    }
    let crashed_at = sim.now;
    let restart_at = crashed_at + Duration::from_secs(8);

    // Each client runs the reconnect loop an application would: on disconnect, wait
    // 0.5 s, 1 s, 2 s, ... (capped at 4 s), then try again with a fresh `Client` that gives
    // up after 1 s.
    let retry_config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let mut backoff = [Duration::from_millis(500); 2];
    let mut retry_at = [None; 2];
    let mut attempts = [0u32; 2];
    let mut timed_out = [false; 2];
    let mut restarted = false;
    let end = crashed_at + Duration::from_secs(30);
    while sim.now < end && !(restarted && sim.clients.iter().all(|c| c.client.is_connected())) {
        if !restarted && sim.now >= restart_at {
            sim.server = Server::new(ServerConfig::default(), sim.now, 22).unwrap();
            for c in &mut sim.clients {
                c.partitioned = false;
            }
            restarted = true;
        }
        for i in 0..2 {
            if let ClientState::Disconnected(reason) = sim.clients[i].client.state() {
                match retry_at[i] {
                    None => {
                        if reason == DisconnectReason::TimedOut {
                            timed_out[i] = true;
                        } else {
                            assert_eq!(reason, DisconnectReason::ConnectTimedOut);
                        }
                        retry_at[i] = Some(sim.now + backoff[i]);
                        backoff[i] = (backoff[i] * 2).min(Duration::from_secs(4));
                    }
                    Some(t) if sim.now >= t => {
                        retry_at[i] = None;
                        attempts[i] += 1;
                        let seed = 1000 + u64::from(attempts[i]) * 2 + i as u64;
                        restart_client(&mut sim, i, retry_config.clone(), seed);
                    }
                    Some(_) => {}
                }
            }
        }
        sim.run_for(TICK);
    }
    assert!(restarted);
    for i in 0..2 {
        assert!(timed_out[i], "client {i} never noticed the crash");
        assert!(
            sim.clients[i].client.is_connected(),
            "client {i} did not get back in"
        );
        // The first attempt (5.5 s to 6.5 s) fell in the outage; a later one got in.
        assert!(attempts[i] >= 2, "client {i}: {} attempts", attempts[i]);
    }
    assert_eq!(sim.server.client_count(), 2);
    assert_eq!(sim.server.stats().connections_accepted, 2);
}

#[test]
fn restarted_server_drops_old_sessions_as_unknown_peers() {
    let mut sim = Sim::new(ServerConfig::default(), 23);
    sim.add_client(ClientConfig::default());
    connect_all(&mut sim);
    // A restart with no outage: the old session keeps talking to a server that never heard
    // of it.
    sim.server = Server::new(ServerConfig::default(), sim.now, 24).unwrap();
    sim.clients[0].events.clear();
    sim.run_for(Duration::from_secs(1));
    let stats = sim.server.stats();
    assert!(stats.invalid_unknown_peer > 5, "{stats:?}");
    assert_eq!(stats.invalid_packets, stats.invalid_unknown_peer);
    assert_eq!(stats.packets_out, 0, "nothing is sent to an unknown peer");
    assert_eq!(sim.server.client_count(), 0);
    // The client hears nothing back and times out.
    sim.run_for(TIMEOUT);
    assert_eq!(
        disconnects(&sim.clients[0].events),
        vec![DisconnectReason::TimedOut]
    );
}

/// Run at 60 Hz until `end`, each side sending a counter on reliable-ordered channel 0
/// while `sending`, and collecting what arrives.
fn exchange_counters(
    sim: &mut Sim,
    ticks: u32,
    sending: impl Fn(u32) -> bool,
    next: &mut [u32; 2],
    got: &mut [Vec<u32>; 2],
) {
    let id = sim.client_id(0).expect("connected");
    for t in 0..ticks {
        if sending(t) {
            let now = sim.now;
            if sim.clients[0]
                .client
                .send_message(now, 0, &next[0].to_le_bytes())
                .is_ok()
            {
                next[0] += 1;
            }
            if sim
                .server
                .send_message(now, id, 0, &next[1].to_le_bytes())
                .is_ok()
            {
                next[1] += 1;
            }
        }
        sim.run_for(TICK);
        for e in sim.server_events.drain(..) {
            if let (
                _,
                Event::Message {
                    channel: 0,
                    payload,
                    ..
                },
            ) = e
            {
                got[0].push(u32::from_le_bytes(payload.try_into().expect("4 bytes")));
            }
        }
        for e in sim.clients[0].events.drain(..) {
            if let Event::Message {
                channel: 0,
                payload,
                ..
            } = e
            {
                got[1].push(u32::from_le_bytes(payload.try_into().expect("4 bytes")));
            }
        }
    }
}

#[test]
fn partition_shorter_than_the_timeout_loses_no_reliable_message() {
    let mut sim = Sim::new(ServerConfig::default(), 31);
    sim.add_client(ClientConfig::default());
    connect_all(&mut sim);
    sim.clients[0].events.clear();
    sim.server_events.clear();
    let mut next = [0u32; 2];
    let mut got = [Vec::new(), Vec::new()];
    // 1 s clean, 3 s partitioned, 2 s clean, then 3 s without new sends to drain.
    exchange_counters(&mut sim, 60, |_| true, &mut next, &mut got);
    sim.clients[0].partitioned = true;
    exchange_counters(&mut sim, 180, |_| true, &mut next, &mut got);
    sim.clients[0].partitioned = false;
    exchange_counters(&mut sim, 120, |_| true, &mut next, &mut got);
    exchange_counters(&mut sim, 180, |_| false, &mut next, &mut got);

    assert!(sim.clients[0].client.is_connected());
    assert_eq!(sim.server.client_count(), 1);
    assert!(disconnects(&sim.clients[0].events).is_empty());
    // Every message sent, including those queued during the partition, arrived exactly
    // once and in order, both ways.
    for (side, name) in [(0, "client→server"), (1, "server→client")] {
        assert_eq!(next[side], 360, "{name}: every send was accepted");
        let want: Vec<u32> = (0..next[side]).collect();
        assert_eq!(got[side], want, "{name}");
    }
}

#[test]
fn partition_longer_than_the_timeout_disconnects_both_sides() {
    let mut sim = Sim::new(ServerConfig::default(), 41);
    sim.add_client(ClientConfig::default());
    connect_all(&mut sim);
    let id = sim.client_id(0).expect("connected");
    sim.clients[0].partitioned = true;
    sim.run_for(TIMEOUT + Duration::from_secs(1));
    sim.clients[0].partitioned = false;
    sim.run_for(Duration::from_secs(1));

    assert_eq!(
        disconnects(&sim.clients[0].events),
        vec![DisconnectReason::TimedOut]
    );
    assert_eq!(
        sim.clients[0].client.state(),
        ClientState::Disconnected(DisconnectReason::TimedOut)
    );
    assert_eq!(
        server_disconnects(&sim, id),
        vec![DisconnectReason::TimedOut]
    );
    assert_eq!(sim.server.client_count(), 0);
    // Once both sides have given up, the healed link carries nothing that revives either.
    assert_eq!(sim.server.stats().connections_accepted, 1);
}
